//! What ACME leaves on disk, under `state_dir/acme/<server>/`: the account
//! (`account.json`) and one `<domain>.pem` per certificate (its private key
//! and chain in one file, so a crash never pairs a new key with an old
//! chain). Directories are 0700, files 0600, written to a temporary file
//! and renamed. `<server>` comes from the directory URL, so certificates
//! from a staging server are never served once production is configured.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The cache of one ACME server.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache for the server at `directory_url`, under `state_dir/acme`;
    /// creates it (0700) if needed.
    pub fn open(state_dir: &Path, directory_url: &str) -> anyhow::Result<Cache> {
        let root = state_dir.join("acme");
        let dir = root.join(server_slug(directory_url));
        for d in [state_dir, root.as_path(), dir.as_path()] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for d in [&root, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (chmod 0700)", d.display()))?;
        }
        Ok(Cache { dir })
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The account's credentials (JSON), if saved.
    pub fn account(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("account.json")).ok()
    }

    /// Save the account's credentials.
    pub fn save_account(&self, json: &[u8]) -> anyhow::Result<()> {
        self.write("account.json", json)
    }

    /// The cached key and chain of `domain` (one PEM file), if any.
    pub fn certificate(&self, domain: &str) -> Option<Vec<u8>> {
        std::fs::read(self.cert_path(domain)).ok()
    }

    /// Save `domain`'s private key and chain.
    pub fn save_certificate(&self, domain: &str, key_pem: &str, chain_pem: &str) -> anyhow::Result<()> {
        let mut pem = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        pem.push_str(chain_pem);
        self.write(&format!("{domain}.pem"), pem.as_bytes())
    }

    /// The file of `domain`'s certificate.
    pub fn cert_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.pem"))
    }

    /// Replace `name` atomically, private to the daemon (0600), as the
    /// state file is written.
    fn write(&self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        crate::controller::state::write_atomic(&path, data).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`.
fn server_slug(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let slug: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.is_empty() {
        "server".into()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_get_directories_of_their_own() {
        assert_eq!(
            server_slug("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            server_slug("https://acme-staging-v02.api.letsencrypt.org/directory"),
            "acme-staging-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(server_slug("https://127.0.0.1:14000/dir"), "127.0.0.1_14000_dir");
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), "https://127.0.0.1:14000/dir").unwrap();
        cache.save_account(b"{}").unwrap();
        cache.save_certificate("a.test", "KEY\n", "CHAIN\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("acme")), 0o700);
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(mode(&cache.dir().join("account.json")), 0o600);
        assert_eq!(mode(&cache.cert_path("a.test")), 0o600);
        assert_eq!(cache.certificate("a.test").unwrap(), b"KEY\nCHAIN\n");
    }
}
