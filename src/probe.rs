//! Probes of the environment a config needs, for `switchctl check`: the
//! state and socket directories writable, the driver's runtime reachable,
//! each process-driver command present, each listen port free (TLS ones
//! too), each certificate file loadable. They live in the library, next to
//! the driver they ask, so the CLI only prints results.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, DriverKind, ServiceConfig};
use crate::driver::Driver;

/// One probe: what was looked at, and either a note to print after "ok" or
/// why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What was probed, e.g. `state_dir /var/lib/switchctl`.
    pub what: String,
    /// `Ok(note)` (often empty) or `Err(why)`.
    pub result: Result<String, String>,
}

/// Every probe of `config`'s environment, in the order `check` prints them.
/// `daemon_running`: a daemon answers on the admin socket, so the listen
/// ports are expected to be taken (by it).
pub async fn environment(config: &Config, daemon_running: bool) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut add = |what: String, result: Result<String, String>| probes.push(Probe { what, result });
    add(
        format!("state_dir {}", config.state_dir.display()),
        writable(&config.state_dir),
    );
    let socket_dir = config.proxy.admin_socket.parent().unwrap_or(Path::new("/"));
    add(
        format!("admin socket directory {}", socket_dir.display()),
        writable(socket_dir),
    );
    let tls_listen = config
        .proxy
        .tls
        .iter()
        .flat_map(|t| t.listen.iter().map(|a| (a, " (TLS)")));
    for (addr, kind) in config.proxy.listen.iter().map(|a| (a, "")).chain(tls_listen) {
        let result = if daemon_running {
            Ok(" (served by the running daemon)".into())
        } else {
            listen_free(*addr)
        };
        add(format!("listen {addr}{kind}"), result);
    }
    for report in switchctl_proxy::CertStore::load(&config.tls_sources()).1 {
        let result = report
            .result
            .map(|d| {
                format!(
                    " ({}; expires {})",
                    d.names.join(", "),
                    crate::acme::rfc3339(d.not_after)
                )
            })
            .map_err(|e| e.to_string());
        add(format!("certificate {}", report.source.cert.display()), result);
    }
    add(
        format!("driver {:?}", config.driver).to_lowercase(),
        Driver::new(config)
            .ping()
            .await
            .map(|_| String::new())
            .map_err(|e| e.to_string()),
    );
    if config.driver == DriverKind::Process {
        for s in &config.services {
            add(format!("service {} command", s.name), command_exists(config, s));
        }
    }
    probes
}

/// Can `addr` be listened on?
pub fn listen_free(addr: SocketAddr) -> Result<String, String> {
    std::net::TcpListener::bind(addr)
        .map(|_| String::new())
        .map_err(|e| format!("cannot listen: {e}"))
}

/// Can files be created in `dir` (created if missing)?
pub fn writable(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
    let probe = dir.join(".switchctl-check");
    std::fs::write(&probe, b"").map_err(|e| format!("not writable: {e}"))?;
    let _ = std::fs::remove_file(probe);
    Ok(String::new())
}

/// Does the program of `s`'s command exist (relative to its cwd, or in PATH)?
pub fn command_exists(config: &Config, s: &ServiceConfig) -> Result<String, String> {
    let program = s.command.as_ref().and_then(|c| c.first()).ok_or("no command")?;
    if program.contains('/') {
        let cwd = s
            .cwd
            .as_deref()
            .map(|c| config.resolve(c))
            .unwrap_or_else(|| config.resolve(Path::new(".")));
        let p = if program.starts_with('/') {
            Path::new(program).to_path_buf()
        } else {
            cwd.join(program)
        };
        return if p.is_file() {
            Ok(String::new())
        } else {
            Err(format!("{} not found", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(program).is_file()) {
        Ok(String::new())
    } else {
        Err(format!("{program} not found in PATH"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_not_free() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listen_free(taken.local_addr().unwrap()).unwrap_err();
        assert!(err.starts_with("cannot listen"), "{err}");
    }

    #[tokio::test]
    async fn tls_ports_and_certificate_files_are_probed() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "driver = \"process\"\nstate_dir = {:?}\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n\
             [proxy.tls]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [{{ cert = \"missing.pem\", key = \"missing.key\" }}]\n",
            dir.path().display().to_string()
        );
        let config = Config::parse(&dir.path().join("switchctl.toml"), &text).unwrap();
        let probes = environment(&config, false).await;
        assert!(
            probes.iter().any(|p| p.what == "listen 127.0.0.1:0 (TLS)"),
            "{probes:?}"
        );
        let cert = probes.iter().find(|p| p.what.starts_with("certificate ")).unwrap();
        assert!(cert.what.ends_with("/missing.pem"), "{cert:?}");
        assert!(cert.result.as_ref().unwrap_err().contains("cannot read"), "{cert:?}");
    }

    #[test]
    fn commands_are_found_relative_to_cwd_or_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "driver = \"process\"\nstate_dir = {:?}\n[[service]]\nname = \"web\"\ncommand = [\"./app\", \"{{port}}\"]\n",
            dir.path().display().to_string()
        );
        let mut config = Config::parse(&dir.path().join("switchctl.toml"), &text).unwrap();
        let err = command_exists(&config, &config.services[0]).unwrap_err();
        assert!(err.ends_with("/app not found"), "{err}");
        std::fs::write(dir.path().join("app"), "").unwrap();
        assert_eq!(command_exists(&config, &config.services[0]), Ok(String::new()));
        config.services[0].command = Some(vec!["sh".into()]);
        assert_eq!(command_exists(&config, &config.services[0]), Ok(String::new()));
        config.services[0].command = Some(vec!["no-such-program-here".into()]);
        let err = command_exists(&config, &config.services[0]).unwrap_err();
        assert_eq!(err, "no-such-program-here not found in PATH");
    }
}
