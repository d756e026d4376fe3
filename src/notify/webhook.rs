//! `kind = "webhook"`: POST the [`Notification`] as JSON (DESIGN's payload)
//! to a URL. Owns the entry's settings (`url` or `url_env`/`url_file`,
//! `headers`, `headers_env`), their validation, and the one request per
//! attempt. Many hook URLs are themselves secrets (Slack, Discord and Teams
//! put the token in the path), hence `url_env`/`url_file`; header values
//! that are secrets come from environment variables (`headers_env`) and are
//! marked sensitive. The URL's path and query are left out of every warning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, PROXY_AUTHORIZATION, TRANSFER_ENCODING,
};
use http::{HeaderMap, Uri};
use serde::Deserialize;

use super::client::{retryable, snippet, HttpClient};
use super::{is_loopback_host, read_secret, Env, Invalid, Notification, Secret, SendError};

/// `[[notify]] kind = "webhook"`.
///
/// ```toml
/// [[notify]]
/// kind = "webhook"
/// url = "https://hooks.example.org/deploys"      # or url_env / url_file when the URL holds a token
/// headers = { "X-Team" = "web" }                   # optional, not secret
/// headers_env = { "Authorization" = "HOOK_AUTH" }  # optional: value from $HOOK_AUTH
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (`https://`, or `http://`).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL, when it holds a token.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The file holding the URL, when it holds a token.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Extra headers with plain values (nothing secret: see `headers_env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra headers whose values are read from environment variables:
    /// header name → variable name.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
}

/// Headers that carry credentials: their values belong in `headers_env`.
const SECRET_HEADERS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];
/// Headers the client sets itself.
const OWN_HEADERS: [HeaderName; 3] = [HOST, CONTENT_LENGTH, TRANSFER_ENCODING];

impl WebhookConfig {
    pub(super) fn prepare(&self, env: Env<'_>) -> Result<Webhook, Invalid> {
        let from_secret = read_secret("url", self.url_env.as_deref(), self.url_file.as_deref(), env)?;
        let (url, url_key, url_secret) = match (&self.url, from_secret) {
            (Some(url), None) => (url.clone(), "url", None),
            (None, Some(secret)) => {
                let key = if self.url_env.is_some() { "url_env" } else { "url_file" };
                (secret.expose().trim().to_string(), key, Some(secret))
            }
            (Some(_), Some(_)) => return Err(Invalid::new("url", "set one of url, url_env and url_file")),
            (None, None) => {
                return Err(Invalid::new(
                    "url",
                    "required (or url_env / url_file, to keep a URL that holds a token out of the config)",
                ))
            }
        };
        // Messages below never quote the URL: it may be a secret.
        let uri: Uri = if url.contains("://") {
            url.parse()
                .map_err(|e| Invalid::new(url_key, format!("not a URL: {e}")))?
        } else {
            return Err(Invalid::new(url_key, "must start with https:// (or http://)"));
        };
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Invalid::new(url_key, "must start with https:// (or http://)")),
        };
        let Some(authority) = uri.authority() else {
            return Err(Invalid::new(url_key, "has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(Invalid::new(
                url_key,
                "credentials in the URL are not supported: send them as a header from headers_env",
            ));
        }
        if authority.host().is_empty() {
            return Err(Invalid::new(url_key, "has no host"));
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            let name = header_name(&key, name)?;
            if SECRET_HEADERS.contains(&name) {
                return Err(Invalid::new(
                    key,
                    "carries credentials: read its value from an environment variable with headers_env",
                ));
            }
            let value = HeaderValue::from_str(value).map_err(|_| Invalid::new(key, "not a valid header value"))?;
            headers.insert(name, value);
        }
        let mut secrets: Vec<Secret> = Vec::new();
        if let Some(whole) = url_secret {
            // An endpoint may echo the path (the token) back: scrub it too.
            let path = uri.path_and_query().map_or("", |p| p.as_str());
            if path.len() > 1 {
                secrets.push(Secret::new(path));
            }
            secrets.push(whole);
        }
        for (name, var) in &self.headers_env {
            let key = format!("headers_env.{name}");
            let name = header_name(&key, name)?;
            if headers.contains_key(&name) {
                return Err(Invalid::new(key, "also set in headers: keep one"));
            }
            let value = match env(var) {
                Some(v) if !v.is_empty() => Secret::new(v),
                _ => {
                    return Err(Invalid::new(
                        key,
                        format!("environment variable {var} is not set (or is empty)"),
                    ))
                }
            };
            let mut hv = HeaderValue::from_str(value.expose())
                .map_err(|_| Invalid::new(key, format!("the value of {var} is not a valid header value")))?;
            hv.set_sensitive(true);
            headers.insert(name, hv);
            secrets.push(value);
        }
        if !https && !secrets.is_empty() && !is_loopback_host(authority.host()) {
            return Err(Invalid::new(
                url_key,
                "plain http would send secrets (a secret URL or headers_env values) in clear: \
                 use https (http only to this machine)",
            ));
        }

        let path = uri.path_and_query().map_or("", |p| p.as_str());
        let label = format!(
            "webhook {}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            host_port(authority),
            if path.is_empty() || path == "/" { "" } else { "/…" }
        );
        Ok(Webhook {
            uri,
            headers,
            secrets,
            label,
        })
    }
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, Invalid> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Invalid::new(key, "not a valid header name"))?;
    if OWN_HEADERS.contains(&parsed) {
        return Err(Invalid::new(key, "set by switchctl itself"));
    }
    Ok(parsed)
}

/// `host` or `host:port`, without credentials.
fn host_port(a: &http::uri::Authority) -> String {
    match a.port_u16() {
        Some(p) => format!("{}:{p}", a.host()),
        None => a.host().to_string(),
    }
}

/// A webhook entry ready to send.
pub(super) struct Webhook {
    uri: Uri,
    headers: HeaderMap,
    secrets: Vec<Secret>,
    label: String,
}

impl Webhook {
    pub(super) fn label(&self) -> String {
        self.label.clone()
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        self.secrets.iter().collect()
    }

    /// One attempt: POST the payload, any 2xx is success.
    pub(super) async fn send(&self, client: &HttpClient, n: &Notification) -> Result<(), SendError> {
        let body = serde_json::to_vec(n).map_err(|e| SendError::Rejected(format!("cannot encode: {e}")))?;
        let answer = client.post_json(self.uri.clone(), &self.headers, body).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(SendError::Status {
            status: answer.status,
            detail: snippet(&answer.body),
            retry: retryable(answer.status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: Some(url.into()),
            url_env: None,
            url_file: None,
            headers: BTreeMap::new(),
            headers_env: BTreeMap::new(),
        }
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "HOOK_AUTH" => Some("Bearer s3cr3t-hook".into()),
            "HOOK_URL" => Some("https://hooks.slack.example/services/T0/B0/s3cr3tpath\n".into()),
            "PLAIN_HOOK_URL" => Some("http://hooks.example.org/services/s3cr3tpath".into()),
            "BAD_HOOK_URL" => Some("hooks.example.org/s3cr3tpath".into()),
            _ => None,
        }
    }

    #[test]
    fn url_from_env_or_file_is_a_secret() {
        let mut c = config("x");
        c.url = None;
        c.url_env = Some("HOOK_URL".into());
        let w = c.prepare(&env).unwrap();
        assert_eq!(w.label(), "webhook https://hooks.slack.example/…");
        assert_eq!(w.uri.path(), "/services/T0/B0/s3cr3tpath");
        assert_eq!(w.secrets().len(), 2, "the URL and its path");

        c.url_env = Some("PLAIN_HOOK_URL".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "url_env");
        assert!(e.message.contains("use https") && !e.message.contains("s3cr3t"), "{e}");

        c.url_env = Some("BAD_HOOK_URL".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "url_env");
        assert!(!e.message.contains("s3cr3t"), "{e}");

        c.url_env = Some("UNSET_HOOK_URL".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "url_env");
        assert!(e.message.contains("UNSET_HOOK_URL"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hook.url");
        std::fs::write(&p, "https://hooks.example.org/s3cr3t\n").unwrap();
        c.url_env = None;
        c.url_file = Some(p);
        assert_eq!(c.prepare(&env).unwrap().uri.path(), "/s3cr3t");

        c.url = Some("https://h.example/x".into());
        assert!(c.prepare(&env).err().unwrap().message.contains("one of"));
        c.url = None;
        c.url_file = None;
        assert!(c.prepare(&env).err().unwrap().message.starts_with("required"));
    }

    #[test]
    fn labels_leave_out_path_query_and_credentials() {
        let w = config("https://hooks.example.org/services/T000/B000/XXXX?x=1")
            .prepare(&env)
            .unwrap();
        assert_eq!(w.label(), "webhook https://hooks.example.org/…");
        let w = config("http://127.0.0.1:8080").prepare(&env).unwrap();
        assert_eq!(w.label(), "webhook http://127.0.0.1:8080");
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("hooks.example.org/x", "must start with https://"),
            ("ftp://h/x", "must start with https://"),
            ("https://user:pw@h.example/x", "credentials in the URL"),
            ("https:// bad", "not a URL"),
        ] {
            let e = config(url)
                .prepare(&env)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.key, "url");
            assert!(e.message.contains(want), "{url}: {}", e.message);
        }
    }

    #[test]
    fn headers_plain_and_secret() {
        let mut c = config("https://h.example/x");
        c.headers.insert("X-Team".into(), "web".into());
        c.headers_env.insert("Authorization".into(), "HOOK_AUTH".into());
        let w = c.prepare(&env).unwrap();
        assert_eq!(w.headers["x-team"], "web");
        assert_eq!(w.headers["authorization"], "Bearer s3cr3t-hook");
        assert!(w.headers["authorization"].is_sensitive());
        assert_eq!(w.secrets().len(), 1);
        assert!(!format!("{:?}", w.secrets()).contains("s3cr3t"));
    }

    #[test]
    fn header_mistakes() {
        let mut c = config("https://h.example/x");
        c.headers.insert("Authorization".into(), "Bearer x".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "headers.Authorization");
        assert!(e.message.contains("headers_env"));

        let mut c = config("https://h.example/x");
        c.headers.insert("bad header".into(), "x".into());
        assert!(c.prepare(&env).err().unwrap().message.contains("header name"));

        let mut c = config("https://h.example/x");
        c.headers.insert("Host".into(), "x".into());
        assert!(c.prepare(&env).err().unwrap().message.contains("switchctl itself"));

        let mut c = config("https://h.example/x");
        c.headers_env.insert("X-Token".into(), "MISSING_VAR".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "headers_env.X-Token");
        assert!(e.message.contains("MISSING_VAR"));
    }

    #[test]
    fn secret_headers_need_https_unless_loopback() {
        let mut c = config("http://hooks.example.org/x");
        c.headers_env.insert("Authorization".into(), "HOOK_AUTH".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "url");
        assert!(e.message.contains("use https"));
        c.url = Some("http://127.0.0.1:9000/x".into());
        c.prepare(&env).unwrap();
        c.url = Some("https://hooks.example.org/x".into());
        c.prepare(&env).unwrap();
        // Without secrets, plain http is the operator's choice.
        config("http://hooks.internal/x").prepare(&env).unwrap();
    }
}
