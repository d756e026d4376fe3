//! `kind = "telegram"`: a message to a chat through the Bot API's
//! `sendMessage` (`POST {api_url}/bot<token>/sendMessage`, JSON `{chat_id,
//! text}`). Owns the entry's settings, the token (from an environment
//! variable or a file) and the one request per attempt. The token is part
//! of the request URL, so the URL is never logged or shown: warnings name
//! the chat only, and any echo of the token is scrubbed.

use std::path::PathBuf;

use http::{HeaderMap, Uri};
use serde::{Deserialize, Deserializer};

use super::client::{retryable, snippet, HttpClient};
use super::{is_loopback_host, require_secret, Env, Invalid, Notification, Outcome, Secret, SendError};

/// The real Bot API.
pub const DEFAULT_TELEGRAM_API: &str = "https://api.telegram.org";

/// Telegram's longest message, in characters.
const MAX_TEXT: usize = 4096;

/// `[[notify]] kind = "telegram"`.
///
/// ```toml
/// [[notify]]
/// kind = "telegram"
/// bot_token_env = "TELEGRAM_BOT_TOKEN"   # or bot_token_file = "/etc/switchctl/telegram.token"
/// chat_id = "-1001234567890"            # or an integer, or "@channelname"
/// # api_url = "https://api.telegram.org" (default; tests point it at a fake)
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The environment variable holding the bot token.
    #[serde(default)]
    pub bot_token_env: Option<String>,
    /// The file holding the bot token (one line).
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    /// The chat: a numeric id (string or integer) or `@channelname`.
    #[serde(deserialize_with = "chat_id")]
    pub chat_id: String,
    /// The Bot API's base URL.
    #[serde(default = "default_api")]
    pub api_url: String,
}

fn default_api() -> String {
    DEFAULT_TELEGRAM_API.to_string()
}

/// A chat id written as a string or as an integer.
fn chat_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Int(i64),
        Text(String),
    }
    Ok(match Id::deserialize(d)? {
        Id::Int(i) => i.to_string(),
        Id::Text(s) => s,
    })
}

impl TelegramConfig {
    pub(super) fn prepare(&self, env: Env<'_>) -> Result<Telegram, Invalid> {
        let token = require_secret(
            "bot_token",
            self.bot_token_env.as_deref(),
            self.bot_token_file.as_deref(),
            env,
        )?;
        let token_key = if self.bot_token_env.is_some() {
            "bot_token_env"
        } else {
            "bot_token_file"
        };
        // A bot token is `<digits>:<letters, digits, - and _>`; anything else
        // would not fit in the URL path (and is not a token).
        let valid = token.expose().split_once(':').is_some_and(|(id, rest)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid {
            return Err(Invalid::new(
                token_key,
                "does not hold a bot token (expected `<digits>:<letters and digits>`, as BotFather gives it)",
            ));
        }

        let chat = self.chat_id.trim();
        let chat_ok = match chat.strip_prefix('@') {
            Some(name) => !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            None => chat.parse::<i64>().is_ok(),
        };
        if !chat_ok {
            return Err(Invalid::new("chat_id", "must be a numeric chat id or @channelname"));
        }

        let base = self.api_url.trim_end_matches('/');
        let api: Uri = base
            .parse()
            .map_err(|e| Invalid::new("api_url", format!("not a URL: {e}")))?;
        let host = api.host().unwrap_or_default();
        match api.scheme_str() {
            Some("https") if !host.is_empty() => {}
            Some("http") if is_loopback_host(host) => {}
            Some("http") => {
                return Err(Invalid::new(
                    "api_url",
                    "the bot token travels in the URL: use https (plain http only to this machine)",
                ))
            }
            _ => return Err(Invalid::new("api_url", "must start with https://")),
        }
        if api.query().is_some() {
            return Err(Invalid::new("api_url", "must not have a query"));
        }
        let endpoint: Uri = format!("{base}/bot{}/sendMessage", token.expose())
            .parse()
            .map_err(|_| Invalid::new("api_url", "does not make a valid URL with the token"))?;

        Ok(Telegram {
            endpoint,
            chat: chat.to_string(),
            token,
        })
    }
}

/// A Telegram entry ready to send. No `Debug`: its endpoint holds the token.
pub(super) struct Telegram {
    endpoint: Uri,
    chat: String,
    token: Secret,
}

/// What the Bot API answers.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    description: Option<String>,
}

impl Telegram {
    pub(super) fn label(&self) -> String {
        format!("telegram chat {}", self.chat)
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.token]
    }

    /// The JSON body: `chat_id` as a number when it is one, the text plain
    /// (no parse mode, so nothing in a message needs escaping).
    pub(super) fn body(&self, n: &Notification) -> serde_json::Value {
        let chat = match self.chat.parse::<i64>() {
            Ok(id) => serde_json::Value::from(id),
            Err(_) => serde_json::Value::from(self.chat.clone()),
        };
        let icon = match n.outcome {
            Outcome::Success => "✅",
            Outcome::Failure => "❌",
        };
        let text: String = format!("{icon} {}", n.text()).chars().take(MAX_TEXT).collect();
        serde_json::json!({
            "chat_id": chat,
            "text": text,
            "disable_web_page_preview": true,
        })
    }

    /// One attempt: success is a 2xx with `"ok": true`.
    pub(super) async fn send(&self, client: &HttpClient, n: &Notification) -> Result<(), SendError> {
        let body = serde_json::to_vec(&self.body(n)).map_err(|e| SendError::Rejected(format!("cannot encode: {e}")))?;
        let answer = client
            .post_json(self.endpoint.clone(), &HeaderMap::new(), body)
            .await
            .map_err(|e| self.scrub(e))?;
        let parsed: Option<Answer> = serde_json::from_slice(&answer.body).ok();
        let detail = match &parsed {
            Some(Answer {
                description: Some(d), ..
            }) => d.clone(),
            _ => snippet(&answer.body),
        };
        let detail = detail.replace(self.token.expose(), "***");
        if answer.status.is_success() {
            return match parsed {
                Some(Answer { ok: true, .. }) => Ok(()),
                _ => Err(SendError::Rejected(format!("the Bot API did not say ok: {detail}"))),
            };
        }
        Err(SendError::Status {
            status: answer.status,
            detail,
            retry: retryable(answer.status),
        })
    }

    fn scrub(&self, e: SendError) -> SendError {
        let t = self.token.expose();
        match e {
            SendError::Transport(m) => SendError::Transport(m.replace(t, "***")),
            SendError::Rejected(m) => SendError::Rejected(m.replace(t, "***")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Event;

    const TOKEN: &str = "123456:ABC-def_ghi";

    fn env(k: &str) -> Option<String> {
        match k {
            "TG" => Some(TOKEN.into()),
            "TG_BAD" => Some("not a token/..".into()),
            _ => None,
        }
    }

    fn config() -> TelegramConfig {
        TelegramConfig {
            bot_token_env: Some("TG".into()),
            bot_token_file: None,
            chat_id: "-1001234".into(),
            api_url: DEFAULT_TELEGRAM_API.into(),
        }
    }

    #[test]
    fn chat_id_as_integer_or_string() {
        let c: TelegramConfig = toml::from_str("bot_token_env = \"TG\"\nchat_id = -42\n").unwrap();
        assert_eq!(c.chat_id, "-42");
        assert_eq!(c.api_url, DEFAULT_TELEGRAM_API);
        let c: TelegramConfig = toml::from_str("bot_token_env = \"TG\"\nchat_id = \"@deploys\"\n").unwrap();
        assert_eq!(c.chat_id, "@deploys");
    }

    #[test]
    fn endpoint_has_the_token_label_does_not() {
        let t = config().prepare(&env).unwrap();
        assert_eq!(
            t.endpoint.to_string(),
            format!("https://api.telegram.org/bot{TOKEN}/sendMessage")
        );
        assert_eq!(t.label(), "telegram chat -1001234");
        let mut c = config();
        c.api_url = "http://127.0.0.1:9/".into();
        let t = c.prepare(&env).unwrap();
        assert_eq!(
            t.endpoint.to_string(),
            format!("http://127.0.0.1:9/bot{TOKEN}/sendMessage")
        );
    }

    #[test]
    fn token_problems_name_the_key_not_the_value() {
        let mut c = config();
        c.bot_token_env = Some("NOPE".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "bot_token_env");
        assert!(e.message.contains("NOPE"));

        c.bot_token_env = Some("TG_BAD".into());
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "bot_token_env");
        assert!(!e.message.contains("not a token"), "{}", e.message);

        c.bot_token_env = None;
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "bot_token_env");
        assert!(e.message.contains("required"));
    }

    #[test]
    fn api_url_must_be_https_unless_loopback() {
        let mut c = config();
        c.api_url = "http://api.telegram.org".into();
        let e = c.prepare(&env).err().unwrap();
        assert_eq!(e.key, "api_url");
        assert!(e.message.contains("https"));
        c.api_url = "api.telegram.org".into();
        assert_eq!(c.prepare(&env).err().unwrap().key, "api_url");
        c.api_url = "http://localhost:8081".into();
        c.prepare(&env).unwrap();
    }

    #[test]
    fn bad_chat_ids() {
        for id in ["", "abc", "@", "@bad name"] {
            let mut c = config();
            c.chat_id = id.into();
            assert_eq!(c.prepare(&env).err().unwrap().key, "chat_id", "{id:?}");
        }
    }

    #[test]
    fn body_has_chat_id_and_text() {
        let t = config().prepare(&env).unwrap();
        let n = Notification::new(Event::Failed, "v9", "green").with_message("x".repeat(5000));
        let b = t.body(&n);
        assert_eq!(b["chat_id"], -1001234);
        let text = b["text"].as_str().unwrap();
        assert!(text.starts_with("❌ switchctl: failed v9 on "));
        assert_eq!(text.chars().count(), MAX_TEXT);

        let mut c = config();
        c.chat_id = "@deploys".into();
        let t = c.prepare(&env).unwrap();
        assert_eq!(t.body(&n)["chat_id"], "@deploys");
    }
}
