//! `completions <shell>` and the hidden `man <dir>`: shell completions and
//! man pages generated from the clap definitions, so they never drift from
//! the commands they describe. Packaging (`packaging/build-deb.sh`) installs
//! both.

use std::path::Path;

use clap::{CommandFactory, ValueEnum};

use super::{exit, output, Cli};

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash (bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// `switchctl completions <shell>`: the script on stdout.
pub fn completions(shell: Shell) -> i32 {
    let mut cmd = Cli::command();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, "switchctl", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        // A reader that stopped early (`| head`) is not a failure.
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("{}", output::error_line(&format!("cannot write the completions: {e}")));
            exit::FAILED
        }
    }
}

/// `switchctl man <dir>`: `switchctl.1` and one `switchctl-<command>.1` per
/// visible command (`switchctl-flip-back.1` for nested ones) into `dir`.
pub fn man_pages(dir: &Path) -> i32 {
    match write_man_pages(dir) {
        Ok(written) => {
            for page in written {
                println!("{}", page.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "{}",
                output::error_line(&format!("cannot write man pages to {}: {e}", dir.display()))
            );
            exit::FAILED
        }
    }
}

fn write_man_pages(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let root = Cli::command();
    let mut written = Vec::new();
    // (page name, how it is invoked, the command)
    let mut pages = vec![("switchctl".to_string(), "switchctl".to_string(), root.clone())];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let (name, invoked) = (
            format!("switchctl-{}", sub.get_name()),
            format!("switchctl {}", sub.get_name()),
        );
        for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let n = nested.get_name();
            pages.push((format!("{name}-{n}"), format!("{invoked} {n}"), nested.clone()));
        }
        pages.push((name, invoked, sub.clone()));
    }
    for (name, invoked, cmd) in pages {
        let cmd = cmd
            .name(name.clone())
            .bin_name(invoked)
            .version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "switchctl.1",
            "switchctl-deploy.1",
            "switchctl-flip-back.1",
            "switchctl-status.1",
            "switchctl-upgrade.1",
        ] {
            assert!(names.contains(&want.to_string()), "{want} missing from {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("demo-app") || n.contains("-man.")),
            "{names:?}"
        );
        let deploy = std::fs::read_to_string(dir.path().join("switchctl-deploy.1")).unwrap();
        assert!(deploy.contains(".TH") && deploy.contains("json"), "{deploy}");
    }
}
