//! A build context as the Docker CLI sends it: the context directory as a
//! tar archive, without what `.dockerignore` excludes (patterns matched
//! relative to the context, `*`, `?`, `**`, `!` exceptions, last match
//! wins, a matched directory excludes what is under it). The Dockerfile
//! and `.dockerignore` are always sent, as the CLI does.

use std::path::Path;

/// One `.dockerignore` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// Path segments, `**` kept as its own segment.
    segments: Vec<String>,
    /// A `!` line: re-include.
    exception: bool,
}

/// The rules of one `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    /// Parse `.dockerignore` text.
    pub fn parse(text: &str) -> Ignore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (exception, l) = match l.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, l),
                };
                let segments = l
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(String::from)
                    .collect();
                Pattern { segments, exception }
            })
            .filter(|p| !p.segments.is_empty())
            .collect();
        Ignore { patterns }
    }

    /// Is `rel` (a `/`-separated path in the context) left out?
    pub fn excluded(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut out = false;
        for p in &self.patterns {
            // A pattern naming a directory matches everything under it.
            let hit = (1..=path.len()).any(|n| matches(&p.segments, &path[..n]));
            if hit {
                out = !p.exception;
            }
        }
        out
    }

    /// Can anything under excluded directory `rel` be re-included?
    fn may_reinclude(&self, rel: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.exception
                && (p.segments.first().is_some_and(|s| s.contains('*'))
                    || p.segments.join("/").starts_with(&format!("{rel}/")))
        })
    }
}

/// Do pattern segments match path segments exactly (all of them)?
fn matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => glob(first.as_bytes(), seg.as_bytes()) && matches(rest, path_rest),
            None => false,
        },
    }
}

/// `*` and `?` within one segment; `\` escapes; `[...]` taken literally.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => s.first() == rest.first() && glob(&rest[1..], &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// The context at `dir` as a tar archive; `dockerfile` (relative to `dir`)
/// is always included.
pub fn tar_context(dir: &Path, dockerfile: &str) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("build context {} is not a directory", dir.display()));
    }
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(format!("cannot read {}/.dockerignore: {e}", dir.display())),
    };
    let keep = |rel: &str| !ignore.excluded(rel) || rel == dockerfile || rel == ".dockerignore";
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs = if rel_dir.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&rel_dir)
        };
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(|e| format!("cannot read {}: {e}", abs.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            let file_type = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            if file_type.is_dir() {
                if keep(&rel) {
                    builder
                        .append_dir(&rel, entry.path())
                        .map_err(|e| format!("cannot add {rel} to the build context: {e}"))?;
                    stack.push(rel);
                } else if ignore.may_reinclude(&rel) {
                    stack.push(rel);
                }
            } else if keep(&rel) {
                builder
                    .append_path_with_name(entry.path(), &rel)
                    .map_err(|e| format!("cannot add {rel} to the build context: {e}"))?;
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| format!("cannot finish the build context: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_patterns_follow_the_docker_cli() {
        let i = Ignore::parse("# c\n*.log\ntarget\n**/secret*\n!keep.log\ndocs/*.md\n");
        assert!(i.excluded("a.log"));
        assert!(!i.excluded("keep.log"), "exception, last match wins");
        assert!(!i.excluded("sub/a.log"), "`*.log` is anchored at the root");
        assert!(i.excluded("target/debug/x"), "a directory excludes its contents");
        assert!(i.excluded("deep/down/secret.txt"));
        assert!(i.excluded("secret.txt"));
        assert!(i.excluded("docs/a.md"));
        assert!(!i.excluded("docs/sub/a.md"));
        assert!(!i.excluded("src/main.rs"));
    }

    #[test]
    fn the_context_leaves_out_ignored_files_but_never_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".dockerignore"), "*\n!app\n!sub/keep\n").unwrap();
        std::fs::write(d.join("Dockerfile.x"), "FROM scratch\n").unwrap();
        std::fs::write(d.join("app"), "bin").unwrap();
        std::fs::write(d.join("junk"), "no").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/keep"), "yes").unwrap();
        std::fs::write(d.join("sub/drop"), "no").unwrap();
        let tar = tar_context(d, "Dockerfile.x").unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile.x", "app", "sub/keep"]);
    }
}
