//! `[proxy.tls]` and `[proxy.tls.acme]`: TLS listeners, certificate files,
//! and automatic certificates. The schema and its checks live together here;
//! `validate.rs` calls [`TlsSection::check`]. Paths are relative to the
//! config file's directory, like every path in the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use switchctl_proxy::{CertSource, HostPattern};

use super::Config;

/// `[proxy.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// TLS listen addresses (default `0.0.0.0:443`).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Certificate files, served by SNI; the first is the default.
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// Plain listeners answer `308` to https (ACME HTTP-01 paths excepted).
    #[serde(default)]
    pub redirect_http: bool,
    /// Time a client has to finish its TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Automatic certificates.
    #[serde(default)]
    pub acme: Option<AcmeSection>,
}

/// `certificates = [{ cert, key }]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
}

/// `[proxy.tls.acme]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The ACME server's directory URL (default: Let's Encrypt production).
    #[serde(default = "default_directory")]
    pub directory: String,
    /// Contact URLs for the account (`mailto:ops@example.com`), one or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub contact: Vec<String>,
    /// Names to obtain certificates for, one certificate each (default:
    /// every exact host named in the routes).
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// An extra trust root for the ACME server's own HTTPS (a test CA,
    /// Pebble's); the public roots stay trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How domains are proven: `http-01` on the plain listeners (port 80)
    /// or `tls-alpn-01` on the TLS listeners (port 443).
    #[serde(default)]
    pub challenge: ChallengeKind,
}

/// The ACME challenge answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// HTTP-01: `GET /.well-known/acme-challenge/<token>` on port 80.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01: a handshake offering `acme-tls/1` on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 443))]
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_directory() -> String {
    LETS_ENCRYPT.to_owned()
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Config {
    /// The certificate files of `[proxy.tls]`, paths resolved.
    pub fn tls_sources(&self) -> Vec<CertSource> {
        let Some(tls) = &self.proxy.tls else { return Vec::new() };
        tls.certificates
            .iter()
            .map(|c| CertSource::new(self.resolve(&c.cert), self.resolve(&c.key)))
            .collect()
    }

    /// The domains ACME obtains certificates for: `domains`, else every
    /// exact host of the routes (wildcards need DNS-01, which switchctl
    /// does not answer), in order, without repeats.
    pub fn acme_domains(&self) -> Vec<String> {
        let Some(acme) = self.proxy.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            return Vec::new();
        };
        let named: Vec<String> = match &acme.domains {
            Some(domains) => domains.iter().map(|d| d.trim().to_ascii_lowercase()).collect(),
            // Hosts of Traefik routers with a certresolver (Compose labels)
            // come first; every route (its own or its labels') follows.
            None => self
                .project
                .iter()
                .flat_map(|p| p.acme_hosts.iter())
                .chain(
                    self.services
                        .iter()
                        .flat_map(|s| s.routes().into_iter().flat_map(|r| r.hosts.iter())),
                )
                .filter_map(|h| match HostPattern::parse(h) {
                    Ok(HostPattern::Exact(name)) => Some(name),
                    _ => None,
                })
                .collect(),
        };
        let mut out: Vec<String> = Vec::with_capacity(named.len());
        for d in named {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The ACME server's extra trust root, path resolved.
    pub fn acme_ca_file(&self) -> Option<PathBuf> {
        let acme = self.proxy.tls.as_ref()?.acme.as_ref()?;
        acme.ca_file.as_ref().map(|p| self.resolve(p))
    }
}

impl TlsSection {
    /// Values that parse but make no sense: `(key, message)`.
    pub(super) fn check(&self, config: &Config) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("proxy.tls.{key}"), message));
        if self.listen.is_empty() {
            return bad("listen", "needs at least one address (e.g. \"0.0.0.0:443\")".into());
        }
        for addr in &self.listen {
            if config.proxy.listen.contains(addr) {
                return bad(
                    "listen",
                    format!("{addr} is also in proxy.listen; a port serves either plain HTTP or TLS"),
                );
            }
        }
        if self.certificates.is_empty() && self.acme.is_none() {
            return bad(
                "certificates",
                "TLS needs certificates: list files (certificates = [{ cert = \"site.pem\", key = \"site.key\" }]) \
                 or add [proxy.tls.acme] to obtain them automatically"
                    .into(),
            );
        }
        for (i, c) in self.certificates.iter().enumerate() {
            if c.cert.as_os_str().is_empty() || c.key.as_os_str().is_empty() {
                return bad(
                    &format!("certificates[{i}]"),
                    "cert and key must both name a file".into(),
                );
            }
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be greater than 0".into());
        }
        if let Some(acme) = &self.acme {
            acme.check(config)?;
        }
        Ok(())
    }
}

impl AcmeSection {
    fn check(&self, config: &Config) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("proxy.tls.acme.{key}"), message));
        if !self.directory.starts_with("https://") {
            return bad(
                "directory",
                format!(
                    "{:?} is not an https URL; ACME servers speak HTTPS (Let's Encrypt: {LETS_ENCRYPT})",
                    self.directory
                ),
            );
        }
        for c in &self.contact {
            if !c.starts_with("mailto:") {
                return bad(
                    "contact",
                    format!("{c:?} must be a mailto: URL, e.g. \"mailto:ops@example.com\""),
                );
            }
        }
        if let Some(domains) = &self.domains {
            for d in domains {
                match HostPattern::parse(d) {
                    Ok(HostPattern::Exact(_)) => {}
                    Ok(_) => {
                        return bad(
                            "domains",
                            format!("{d:?}: wildcard certificates need the DNS-01 challenge, which switchctl does not answer; list each name"),
                        )
                    }
                    Err(e) => return bad("domains", e.to_string()),
                }
            }
        }
        if let Some(path) = config.acme_ca_file() {
            match std::fs::read(&path) {
                Err(e) => return bad("ca_file", format!("cannot read {}: {e}", path.display())),
                Ok(pem) if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    return bad(
                        "ca_file",
                        format!(
                            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ),
                    )
                }
                Ok(_) => {}
            }
        }
        if config.acme_domains().is_empty() {
            return bad(
                "domains",
                "no domain to obtain a certificate for: list them in domains, or give routes exact hosts".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};

    fn with_tls(tls: &str) -> String {
        GOOD.replace("[deploy]", &format!("{tls}\n[deploy]"))
    }

    #[test]
    fn tls_section_parses_with_defaults_and_relative_paths() {
        let text = with_tls(
            "[proxy.tls]\ncertificates = [{ cert = \"certs/site.pem\", key = \"/abs/site.key\" }]\nredirect_http = true",
        );
        let c = parse(&text).unwrap();
        let tls = c.proxy.tls.as_ref().unwrap();
        assert_eq!(tls.listen, vec!["0.0.0.0:443".parse().unwrap()]);
        assert!(tls.redirect_http);
        assert_eq!(tls.handshake_timeout, std::time::Duration::from_secs(10));
        let sources = c.tls_sources();
        assert_eq!(sources[0].cert, std::path::Path::new("/etc/certs/site.pem"));
        assert_eq!(sources[0].key, std::path::Path::new("/abs/site.key"));
    }

    #[test]
    fn tls_without_certificates_or_acme_is_refused() {
        let err = parse(&with_tls("[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proxy.tls.certificates") && err.contains("[proxy.tls.acme]"),
            "{err}"
        );
    }

    #[test]
    fn tls_listen_must_not_reuse_a_plain_address() {
        let text = with_tls(
            "[proxy.tls]\nlisten = [\"127.0.0.1:8080\"]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("also in proxy.listen"), "{err}");
    }

    #[test]
    fn acme_domains_default_to_the_exact_route_hosts() {
        let text = with_tls(
            "[proxy.tls]\n[proxy.tls.acme]\ncontact = \"mailto:ops@example.com\"\nchallenge = \"tls-alpn-01\"",
        )
        .replace(
            "health = { path = \"/up\", healthy_threshold = 2 }",
            "health = { path = \"/up\", healthy_threshold = 2 }\nroute = { hosts = [\"App.example.org\", \"*.example.org\", \"www.example.org\"] }",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.acme_domains(), vec!["app.example.org", "www.example.org"]);
        let acme = c.proxy.tls.unwrap().acme.unwrap();
        assert_eq!(acme.contact, vec!["mailto:ops@example.com"]);
        assert_eq!(acme.challenge, super::ChallengeKind::TlsAlpn01);
        assert_eq!(acme.directory, super::LETS_ENCRYPT);
    }

    #[test]
    fn acme_without_any_domain_or_with_a_wildcard_is_refused() {
        let err = parse(&with_tls("[proxy.tls]\n[proxy.tls.acme]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proxy.tls.acme.domains") && err.contains("no domain"),
            "{err}"
        );
        let err = parse(&with_tls(
            "[proxy.tls]\n[proxy.tls.acme]\ndomains = [\"*.example.org\"]",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("DNS-01"), "{err}");
        let err = parse(&with_tls(
            "[proxy.tls]\n[proxy.tls.acme]\ndomains = [\"a.example.org\"]\ndirectory = \"http://x/dir\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("https URL"), "{err}");
    }

    #[test]
    fn acme_ca_file_must_hold_a_certificate() {
        let text =
            with_tls("[proxy.tls]\n[proxy.tls.acme]\ndomains = [\"a.example.org\"]\nca_file = \"no-such-root.pem\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("proxy.tls.acme.ca_file") && err.contains("/etc/no-such-root.pem"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies_must_be_cidrs() {
        let text = GOOD.replace(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.proxy.proxy_config().trusted_proxies.len(), 2);
        let text = GOOD.replace(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\ntrusted_proxies = [\"10.0.0.0/40\"]",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("proxy.trusted_proxies[0]") && err.contains("CIDR"),
            "{err}"
        );
    }
}
