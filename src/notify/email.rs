//! `kind = "email"`: a plain-text mail per notification over SMTP, through
//! lettre (Tokio, rustls with ring). Owns the entry's settings, the SMTP
//! credentials (from environment variables or files), and the transport:
//! STARTTLS on submission (587) by default, TLS from the first byte on 465,
//! and plain SMTP only when `starttls = false` — allowed with credentials
//! only to this machine, so a password never crosses a network in clear.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::client::error_chain;
use super::{hostname, is_loopback_host, read_secret, Env, Invalid, Notification, Secret, SendError};

/// The submission port.
pub const DEFAULT_SMTP_PORT: u16 = 587;
/// The port of SMTP over TLS from the first byte (SMTPS).
const SMTPS_PORT: u16 = 465;

/// `[[notify]] kind = "email"`.
///
/// ```toml
/// [[notify]]
/// kind = "email"
/// smtp_host = "smtp.example.org"
/// smtp_port = 587                 # default; 465 means TLS from the first byte
/// starttls = true                 # default; false: plain SMTP (local relays, tests)
/// from = "switchctl <deploy@example.org>"
/// to = ["ops@example.org"]
/// username_env = "SMTP_USER"      # or username_file; optional, with a password
/// password_env = "SMTP_PASSWORD"  # or password_file
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's name (also the name its certificate must have).
    pub smtp_host: String,
    /// Its port.
    #[serde(default = "default_port")]
    pub smtp_port: u16,
    /// Encrypt (STARTTLS, or TLS at once on 465) and check the certificate.
    #[serde(default = "yes")]
    pub starttls: bool,
    /// The sender, `Name <addr>` or `addr`.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// The environment variable holding the SMTP user name.
    #[serde(default)]
    pub username_env: Option<String>,
    /// The file holding the SMTP user name.
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    /// The environment variable holding the SMTP password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The file holding the SMTP password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    DEFAULT_SMTP_PORT
}

fn yes() -> bool {
    true
}

impl EmailConfig {
    pub(super) fn prepare(&self, env: Env<'_>, timeout: Duration) -> Result<Email, Invalid> {
        let host = self.smtp_host.trim();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(Invalid::new(
                "smtp_host",
                "must be a host name or address, e.g. smtp.example.org",
            ));
        }
        if self.smtp_port == 0 {
            return Err(Invalid::new("smtp_port", "must not be 0"));
        }
        let from: Mailbox = self
            .from
            .parse()
            .map_err(|e| Invalid::new("from", format!("not a mail address: {e}")))?;
        if self.to.is_empty() {
            return Err(Invalid::new("to", "needs at least one recipient"));
        }
        let to = self
            .to
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<Mailbox>()
                    .map_err(|e| Invalid::new(format!("to[{i}]"), format!("not a mail address: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let username = read_secret(
            "username",
            self.username_env.as_deref(),
            self.username_file.as_deref(),
            env,
        )?;
        let password = read_secret(
            "password",
            self.password_env.as_deref(),
            self.password_file.as_deref(),
            env,
        )?;
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => return Err(Invalid::new("password_env", "a username needs a password")),
            (None, Some(_)) => return Err(Invalid::new("username_env", "a password needs a username")),
        };
        if !self.starttls && credentials.is_some() && !is_loopback_host(host) {
            return Err(Invalid::new(
                "starttls",
                "false would send the password in clear to a host other than this machine",
            ));
        }

        let builder = if !self.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        } else if self.smtp_port == SMTPS_PORT {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| Invalid::new("smtp_host", e.to_string()))?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| Invalid::new("smtp_host", e.to_string()))?
        };
        let mut builder = builder
            .port(self.smtp_port)
            .timeout(Some(timeout))
            .hello_name(ClientId::Domain(hostname().to_string()));
        let mut secrets = Vec::new();
        if let Some((u, p)) = credentials {
            builder = builder.credentials(Credentials::new(u.expose().to_string(), p.expose().to_string()));
            secrets.push(u);
            secrets.push(p);
        }
        Ok(Email {
            transport: builder.build(),
            from,
            to,
            secrets,
            label: format!("email {host}:{}", self.smtp_port),
        })
    }
}

/// An e-mail entry ready to send. No `Debug`: the transport holds the
/// credentials.
pub(super) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    secrets: Vec<Secret>,
    label: String,
}

impl Email {
    pub(super) fn label(&self) -> String {
        self.label.clone()
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        self.secrets.iter().collect()
    }

    /// The mail: subject `switchctl: deployed v2 on web-1`, the text body.
    pub(super) fn message(&self, n: &Notification) -> Result<Message, SendError> {
        let mut b = Message::builder().from(self.from.clone());
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.subject(n.subject())
            .header(ContentType::TEXT_PLAIN)
            .body(n.text())
            .map_err(|e| SendError::Rejected(format!("cannot build the mail: {e}")))
    }

    /// One attempt. A permanent SMTP error (5xx) is not retried.
    pub(super) async fn send(&self, n: &Notification) -> Result<(), SendError> {
        let message = self.message(n)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Rejected(error_chain(&e))),
            Err(e) => Err(SendError::Transport(error_chain(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Event;

    fn config() -> EmailConfig {
        toml::from_str("smtp_host = \"smtp.example.org\"\nfrom = \"switchctl <deploy@example.org>\"\nto = [\"ops@example.org\", \"Dev <dev@example.org>\"]\n").unwrap()
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "SMTP_USER" => Some("mailer".into()),
            "SMTP_PASSWORD" => Some("pa55word".into()),
            _ => None,
        }
    }

    #[test]
    fn defaults_and_message() {
        let c = config();
        assert_eq!(c.smtp_port, 587);
        assert!(c.starttls);
        let e = c.prepare(&env, Duration::from_secs(5)).unwrap();
        assert_eq!(e.label(), "email smtp.example.org:587");
        let mut n = Notification::new(Event::Deployed, "v2", "green");
        n.host = "web-1".into();
        let raw = String::from_utf8(e.message(&n).unwrap().formatted()).unwrap();
        assert!(raw.contains("Subject: switchctl: deployed v2 on web-1\r\n"), "{raw}");
        assert!(
            raw.contains("To: ops@example.org, \"Dev\" <dev@example.org>")
                || raw.contains("To: ops@example.org, Dev <dev@example.org>"),
            "{raw}"
        );
        assert!(raw.contains("tag: v2"), "{raw}");
    }

    #[test]
    fn addresses_are_checked() {
        let mut c = config();
        c.to.clear();
        assert_eq!(c.prepare(&env, Duration::from_secs(1)).err().unwrap().key, "to");
        let mut c = config();
        c.to.push("not an address".into());
        assert_eq!(c.prepare(&env, Duration::from_secs(1)).err().unwrap().key, "to[2]");
        let mut c = config();
        c.from = "nobody".into();
        assert_eq!(c.prepare(&env, Duration::from_secs(1)).err().unwrap().key, "from");
        let mut c = config();
        c.smtp_host = "smtp://x".into();
        assert_eq!(c.prepare(&env, Duration::from_secs(1)).err().unwrap().key, "smtp_host");
    }

    #[test]
    fn credentials_come_in_pairs_and_never_in_clear_off_this_machine() {
        let mut c = config();
        c.username_env = Some("SMTP_USER".into());
        assert_eq!(
            c.prepare(&env, Duration::from_secs(1)).err().unwrap().key,
            "password_env"
        );
        c.password_env = Some("SMTP_PASSWORD".into());
        let e = c.prepare(&env, Duration::from_secs(1)).unwrap();
        assert_eq!(e.secrets().len(), 2);
        c.password_env = Some("NOT_SET".into());
        let err = c.prepare(&env, Duration::from_secs(1)).err().unwrap();
        assert_eq!(err.key, "password_env");
        assert!(err.message.contains("NOT_SET"));

        c.password_env = Some("SMTP_PASSWORD".into());
        c.starttls = false;
        assert_eq!(c.prepare(&env, Duration::from_secs(1)).err().unwrap().key, "starttls");
        c.smtp_host = "127.0.0.1".into();
        c.prepare(&env, Duration::from_secs(1)).unwrap();
        // Without credentials plain SMTP anywhere is the operator's choice.
        let mut c = config();
        c.starttls = false;
        c.prepare(&env, Duration::from_secs(1)).unwrap();
    }
}
