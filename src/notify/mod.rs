//! Notifications: telling people and systems how a deploy, flip or rollback
//! ended, without ever delaying or failing it.
//!
//! This module owns:
//! - the schema of one `[[notify]]` entry ([`NotifyConfig`]): the common
//!   `events`, `timeout`, `retries`, and one kind, [`webhook`](WebhookConfig),
//!   [`telegram`](TelegramConfig) or [`email`](EmailConfig);
//! - secrets: read from environment variables or files only, held in
//!   [`Secret`], whose `Debug` and `Display` print `***`, and scrubbed from
//!   every warning;
//! - the payload every kind sends ([`Notification`], DESIGN's webhook JSON);
//! - delivery ([`Notifier`]): in the background, each entry with its own
//!   timeout and retries with backoff, so a hanging endpoint costs at most
//!   its [`budget`](Notifier::budget); a failure becomes a warning in a
//!   [`Report`] for the controller to print and record in history.
//!
//! It knows nothing of the controller or the config file around it: the
//! config embeds `Vec<NotifyConfig>`, the controller builds a [`Notifier`]
//! and calls [`Notifier::notify`] once an outcome is decided.

mod client;
mod email;
mod telegram;
mod webhook;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::task::JoinHandle;

pub use email::EmailConfig;
pub use telegram::{TelegramConfig, DEFAULT_TELEGRAM_API};
pub use webhook::WebhookConfig;

/// Default time one attempt may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries after a failed first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default wait before the first retry; it doubles for each next one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Most retries an entry may ask for.
const MAX_RETRIES: u32 = 10;
/// Longest timeout an entry may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Events and the payload
// ---------------------------------------------------------------------------

/// What happened, as entries name it in `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A new release serves traffic.
    Deployed,
    /// A deploy failed before the flip; the previous release still serves.
    RolledBack,
    /// An operation failed in a way that left nothing to roll back.
    Failed,
    /// Traffic moved to the standby color (`switchctl flip back`).
    Flipped,
    /// The post-flip watch saw too many 5xx and flipped back by itself.
    AutoFlippedBack,
}

impl Event {
    /// Every event, the default of `events`.
    pub const ALL: [Event; 5] = [
        Event::Deployed,
        Event::RolledBack,
        Event::Failed,
        Event::Flipped,
        Event::AutoFlippedBack,
    ];

    /// The name used in config and payloads (`"rolled_back"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Deployed => "deployed",
            Event::RolledBack => "rolled_back",
            Event::Failed => "failed",
            Event::Flipped => "flipped",
            Event::AutoFlippedBack => "auto_flipped_back",
        }
    }

    /// The outcome this event usually reports.
    pub fn outcome(self) -> Outcome {
        match self {
            Event::Deployed | Event::Flipped => Outcome::Success,
            Event::RolledBack | Event::Failed | Event::AutoFlippedBack => Outcome::Failure,
        }
    }

    /// Words for a human: `"deployed"`, `"rolled back"`, `"auto-flipped back"`.
    fn words(self) -> &'static str {
        match self {
            Event::Deployed => "deployed",
            Event::RolledBack => "rolled back",
            Event::Failed => "failed",
            Event::Flipped => "flipped",
            Event::AutoFlippedBack => "auto-flipped back",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the release the notification is about is serving as intended:
/// the payload's `outcome`, for receivers that only sort good from bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It went as asked.
    Success,
    /// It did not.
    Failure,
}

/// What every kind sends: DESIGN's webhook JSON, `{"event", "outcome",
/// "tag", "previous_tag", "color", "duration_ms", "message", "host", "at"}`,
/// with `at` in RFC 3339 (milliseconds, UTC) and `previous_tag` `null` when
/// there was none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// What happened.
    pub event: Event,
    /// Good or bad.
    pub outcome: Outcome,
    /// The tag the operation was about.
    pub tag: String,
    /// The tag serving before, if any.
    pub previous_tag: Option<String>,
    /// The color the operation moved to (or tried to): `blue` or `green`.
    pub color: String,
    /// How long the operation took.
    pub duration_ms: u64,
    /// One line for humans: the reason of a failure, what was cut, ...
    pub message: String,
    /// This machine's host name.
    pub host: String,
    /// When the outcome was decided.
    #[serde(serialize_with = "ser_rfc3339", deserialize_with = "de_rfc3339")]
    pub at: SystemTime,
}

impl Notification {
    /// A notification of `event` about `tag` on `color`, at this moment on
    /// this host, with the event's usual outcome; the `with_*` methods fill
    /// in the rest.
    pub fn new(event: Event, tag: impl Into<String>, color: impl Into<String>) -> Self {
        Notification {
            event,
            outcome: event.outcome(),
            tag: tag.into(),
            previous_tag: None,
            color: color.into(),
            duration_ms: 0,
            message: String::new(),
            host: hostname().to_string(),
            at: SystemTime::now(),
        }
    }

    /// Sets the tag that served before.
    pub fn with_previous_tag(mut self, tag: Option<impl Into<String>>) -> Self {
        self.previous_tag = tag.map(Into::into);
        self
    }

    /// Sets how long the operation took.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.duration_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the line for humans.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Overrides the outcome.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// The variables DESIGN gives hooks and notifications:
    /// `SWITCHCTL_TAG`, `SWITCHCTL_PREVIOUS_TAG` (empty when none),
    /// `SWITCHCTL_COLOR`, `SWITCHCTL_EVENT`.
    pub fn env_vars(&self) -> [(&'static str, String); 4] {
        [
            ("SWITCHCTL_TAG", self.tag.clone()),
            ("SWITCHCTL_PREVIOUS_TAG", self.previous_tag.clone().unwrap_or_default()),
            ("SWITCHCTL_COLOR", self.color.clone()),
            ("SWITCHCTL_EVENT", self.event.as_str().to_string()),
        ]
    }

    /// `switchctl: deployed v2 on web-1`: an e-mail subject, a chat headline.
    pub fn subject(&self) -> String {
        format!("switchctl: {} {} on {}", self.event.words(), self.tag, self.host)
    }

    /// The plain-text body (e-mail, Telegram): the subject line, then one
    /// line per field a human wants.
    pub fn text(&self) -> String {
        let mut out = self.subject();
        out.push('\n');
        if !self.message.is_empty() {
            out.push_str(&self.message);
            out.push('\n');
        }
        out.push_str(&format!("\nevent: {}\n", self.event));
        out.push_str(&format!(
            "outcome: {}\n",
            match self.outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
            }
        ));
        out.push_str(&format!("tag: {}\n", self.tag));
        out.push_str(&format!(
            "previous tag: {}\n",
            self.previous_tag.as_deref().unwrap_or("(none)")
        ));
        out.push_str(&format!("color: {}\n", self.color));
        out.push_str(&format!(
            "duration: {}\n",
            humantime::format_duration(Duration::from_millis(self.duration_ms))
        ));
        out.push_str(&format!("host: {}\n", self.host));
        out.push_str(&format!("at: {}\n", humantime::format_rfc3339_millis(self.at)));
        out
    }
}

fn ser_rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn de_rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s).map_err(D::Error::custom)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`,
/// else `localhost`), read once.
pub fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "localhost".to_string())
    })
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A value that must never be printed or logged: `Debug` and `Display`
/// show `***`. Read it with [`Secret::expose`] where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads the secret that `<name>_env` or `<name>_file` points at. `None`
/// when neither is set; an error naming the key and the variable or file
/// when the one set gives nothing.
fn read_secret(
    name: &str,
    env_var: Option<&str>,
    file: Option<&Path>,
    env: Env<'_>,
) -> Result<Option<Secret>, Invalid> {
    match (env_var, file) {
        (Some(_), Some(_)) => Err(Invalid::new(
            format!("{name}_env"),
            format!("set {name}_env or {name}_file, not both"),
        )),
        (Some(var), None) => {
            if var.is_empty() {
                return Err(Invalid::new(format!("{name}_env"), "names no variable"));
            }
            match env(var) {
                Some(v) if !v.is_empty() => Ok(Some(Secret(v))),
                _ => Err(Invalid::new(
                    format!("{name}_env"),
                    format!("environment variable {var} is not set (or is empty)"),
                )),
            }
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Invalid::new(format!("{name}_file"), format!("cannot read {}: {e}", path.display())))?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(Invalid::new(
                    format!("{name}_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(Secret(value.to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// Like [`read_secret`], for a secret the kind cannot do without.
fn require_secret(name: &str, env_var: Option<&str>, file: Option<&Path>, env: Env<'_>) -> Result<Secret, Invalid> {
    read_secret(name, env_var, file, env)?.ok_or_else(|| {
        Invalid::new(
            format!("{name}_env"),
            format!("required: name the environment variable ({name}_env) or file ({name}_file) holding it"),
        )
    })
}

/// How secrets are looked up: `std::env::var` in production, a closure in tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether `host` (a URL's host, brackets allowed) is this machine:
/// `localhost` or a loopback address. Secrets may cross cleartext only there.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// One `[[notify]]` entry.
///
/// ```toml
/// [[notify]]
/// kind = "webhook"          # webhook | telegram | email
/// url = "https://hooks.example.org/deploys"
/// events = ["failed", "auto_flipped_back"]   # default: all five
/// timeout = "10s"           # per attempt (default 10s)
/// retries = 3               # after the first attempt (default 3)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// The events this entry wants.
    pub events: Vec<Event>,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Retries after a failed first attempt (`0`: one attempt only).
    pub retries: u32,
    /// Where and how to send.
    pub kind: NotifyKind,
}

/// The kind of an entry, with its own settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NotifyKind {
    /// POST the JSON payload to a URL.
    Webhook(WebhookConfig),
    /// A Telegram chat, through the Bot API's `sendMessage`.
    Telegram(TelegramConfig),
    /// E-mail over SMTP.
    Email(EmailConfig),
}

impl NotifyKind {
    /// `"webhook"`, `"telegram"` or `"email"`.
    pub fn name(&self) -> &'static str {
        match self {
            NotifyKind::Webhook(_) => "webhook",
            NotifyKind::Telegram(_) => "telegram",
            NotifyKind::Email(_) => "email",
        }
    }
}

/// The keys every kind takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    #[serde(default = "all_events")]
    events: Vec<Event>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_retries")]
    retries: u32,
}

const COMMON_KEYS: [&str; 3] = ["events", "timeout", "retries"];

fn all_events() -> Vec<Event> {
    Event::ALL.to_vec()
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

// The common keys and the kind's keys share one table, and every key must be
// known. Serde cannot deny unknown keys across a `flatten`, so the table is
// split by hand: the common keys go to `Common`, the rest (with `kind`) to
// the internally tagged `NotifyKind`, whose structs deny unknown keys.
impl<'de> Deserialize<'de> for NotifyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = serde_json::Map::deserialize(d)?;
        let mut common = serde_json::Map::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(key) {
                common.insert(key.to_string(), v);
            }
        }
        let common: Common = serde_json::from_value(serde_json::Value::Object(common)).map_err(D::Error::custom)?;
        let kind: NotifyKind = serde_json::from_value(serde_json::Value::Object(table)).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with("unknown field") {
                D::Error::custom(format!("{msg} (every kind also takes `events`, `timeout`, `retries`)"))
            } else {
                D::Error::custom(msg)
            }
        })?;
        Ok(NotifyConfig {
            events: common.events,
            timeout: common.timeout,
            retries: common.retries,
            kind,
        })
    }
}

/// A value that parses but is wrong: the key (within the entry) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Invalid {
    /// The key within the entry, e.g. `bot_token_env`.
    pub key: String,
    /// What is wrong, e.g. `environment variable TELEGRAM_BOT_TOKEN is not set`.
    pub message: String,
}

impl Invalid {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// An entry is wrong; `index` counts `[[notify]]` entries from 0.
    #[error("notify[{index}] ({kind}).{}: {}", .invalid.key, .invalid.message)]
    Invalid {
        /// Position of the entry in the file.
        index: usize,
        /// Its kind.
        kind: &'static str,
        /// The key and why.
        invalid: Invalid,
    },
    /// rustls refused its own defaults (should not happen).
    #[error("notify: cannot set up TLS: {0}")]
    Tls(String),
}

impl NotifyError {
    /// The dotted key, `notify[1].bot_token_env`, for a config error that
    /// names keys.
    pub fn key(&self) -> Option<String> {
        match self {
            NotifyError::Invalid { index, invalid, .. } => Some(format!("notify[{index}].{}", invalid.key)),
            NotifyError::Tls(_) => None,
        }
    }
}

impl NotifyConfig {
    /// Checks everything that can be checked without sending: URLs, mail
    /// addresses, headers, limits, and that every secret's variable or file
    /// gives a value (read from the process environment).
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_with(&process_env)
    }

    /// [`validate`](Self::validate) with `env` in place of the process
    /// environment.
    pub fn validate_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Invalid> {
        self.prepare(env).map(|_| ())
    }

    /// Whether this entry wants `event`.
    pub fn wants(&self, event: Event) -> bool {
        self.events.contains(&event)
    }

    /// Makes relative `*_file` paths relative to `base` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        match &mut self.kind {
            NotifyKind::Webhook(w) => fix(&mut w.url_file),
            NotifyKind::Telegram(t) => fix(&mut t.bot_token_file),
            NotifyKind::Email(e) => {
                fix(&mut e.username_file);
                fix(&mut e.password_file);
            }
        }
    }

    fn check_common(&self) -> Result<(), Invalid> {
        if self.events.is_empty() {
            return Err(Invalid::new("events", "is empty: leave it out for every event"));
        }
        if self.timeout.is_zero() {
            return Err(Invalid::new("timeout", "must be greater than 0"));
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(Invalid::new(
                "timeout",
                format!("at most {}", humantime::format_duration(MAX_TIMEOUT)),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(Invalid::new("retries", format!("at most {MAX_RETRIES}")));
        }
        Ok(())
    }

    /// Validates and reads secrets: what a [`Notifier`] sends with.
    fn prepare(&self, env: Env<'_>) -> Result<Target, Invalid> {
        self.check_common()?;
        let sender = match &self.kind {
            NotifyKind::Webhook(c) => Sender::Webhook(c.prepare(env)?),
            NotifyKind::Telegram(c) => Sender::Telegram(c.prepare(env)?),
            NotifyKind::Email(c) => Sender::Email(c.prepare(env, self.timeout)?),
        };
        Ok(Target {
            label: sender.label(),
            events: self.events.clone(),
            timeout: self.timeout,
            attempts: self.retries + 1,
            sender,
        })
    }
}

/// Validates every entry, the error naming the entry (`notify[1] (telegram)`)
/// and the key.
pub fn validate_all(entries: &[NotifyConfig]) -> Result<(), NotifyError> {
    validate_all_with(entries, &process_env)
}

/// [`validate_all`] with `env` in place of the process environment.
pub fn validate_all_with(entries: &[NotifyConfig], env: &dyn Fn(&str) -> Option<String>) -> Result<(), NotifyError> {
    for (index, entry) in entries.iter().enumerate() {
        entry.validate_with(env).map_err(|invalid| NotifyError::Invalid {
            index,
            kind: entry.kind.name(),
            invalid,
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The endpoint answered with an error status (`detail` may be empty).
    #[error("HTTP {}{}", .status.as_u16(), if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
    Status {
        status: http::StatusCode,
        detail: String,
        retry: bool,
    },
    /// No answer: DNS, connect, TLS, reset, SMTP transient error.
    #[error("{0}")]
    Transport(String),
    /// An answer that will not change by trying again.
    #[error("{0}")]
    Rejected(String),
}

impl SendError {
    fn retryable(&self) -> bool {
        match self {
            SendError::Status { retry, .. } => *retry,
            SendError::Transport(_) => true,
            SendError::Rejected(_) => false,
        }
    }
}

/// One entry ready to send.
struct Target {
    label: String,
    events: Vec<Event>,
    timeout: Duration,
    attempts: u32,
    sender: Sender,
}

enum Sender {
    Webhook(webhook::Webhook),
    Telegram(telegram::Telegram),
    Email(email::Email),
}

impl Sender {
    /// How warnings name the entry, with nothing secret in it.
    fn label(&self) -> String {
        match self {
            Sender::Webhook(w) => w.label(),
            Sender::Telegram(t) => t.label(),
            Sender::Email(e) => e.label(),
        }
    }

    fn secrets(&self) -> Vec<&Secret> {
        match self {
            Sender::Webhook(w) => w.secrets(),
            Sender::Telegram(t) => t.secrets(),
            Sender::Email(e) => e.secrets(),
        }
    }

    fn needs_http(&self) -> bool {
        matches!(self, Sender::Webhook(_) | Sender::Telegram(_))
    }

    async fn send(&self, http: Option<&client::HttpClient>, n: &Notification) -> Result<(), SendError> {
        let http = || http.ok_or_else(|| SendError::Rejected("no HTTP client".into()));
        match self {
            Sender::Webhook(w) => w.send(http()?, n).await,
            Sender::Telegram(t) => t.send(http()?, n).await,
            Sender::Email(e) => e.send(n).await,
        }
    }
}

/// Sends notifications to the configured entries. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    targets: Arc<[Target]>,
    http: Option<client::HttpClient>,
    backoff: Duration,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("targets", &self.targets.iter().map(|t| &t.label).collect::<Vec<_>>())
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::disabled()
    }
}

impl Notifier {
    /// A notifier for `entries`, reading secrets from the process
    /// environment and files. Fails like [`validate_all`].
    pub fn new(entries: &[NotifyConfig]) -> Result<Self, NotifyError> {
        Self::with_env(entries, &process_env)
    }

    /// [`new`](Self::new) with `env` in place of the process environment.
    pub fn with_env(entries: &[NotifyConfig], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, NotifyError> {
        let mut targets = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let target = entry.prepare(env).map_err(|invalid| NotifyError::Invalid {
                index,
                kind: entry.kind.name(),
                invalid,
            })?;
            targets.push(target);
        }
        let http = if targets.iter().any(|t| t.sender.needs_http()) {
            Some(client::HttpClient::new()?)
        } else {
            None
        };
        Ok(Notifier {
            targets: targets.into(),
            http,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// A notifier with no entry: [`notify`](Self::notify) sends nothing.
    pub fn disabled() -> Self {
        Notifier {
            targets: Arc::new([]),
            http: None,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Sets the wait before the first retry (doubling after, capped at 4 s).
    pub fn with_backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// Whether no entry is configured.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Whether any entry wants `event` (else [`notify`](Self::notify) sends nothing).
    pub fn wants(&self, event: Event) -> bool {
        self.targets.iter().any(|t| t.events.contains(&event))
    }

    /// How warnings name the entries, in config order (nothing secret).
    pub fn labels(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.label.clone()).collect()
    }

    /// The longest a notification of `event` can take to succeed or fail:
    /// for the slowest entry wanting it, every attempt's timeout plus the
    /// waits between them (entries are sent to at the same time).
    pub fn budget(&self, event: Event) -> Duration {
        self.targets
            .iter()
            .filter(|t| t.events.contains(&event))
            .map(|t| target_budget(t.timeout, t.attempts, self.backoff))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Sends `n` to every entry wanting its event, in the background, and
    /// returns at once. Await the [`Pending`] (with a bound) for the
    /// [`Report`], or drop it: the sends go on and end within their budget.
    /// Outside a Tokio runtime nothing is sent and the report says so.
    pub fn notify(&self, n: Notification) -> Pending {
        let wanted: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].events.contains(&n.event))
            .collect();
        let budget = self.budget(n.event);
        if wanted.is_empty() {
            return Pending {
                tasks: Vec::new(),
                early: Vec::new(),
                budget,
            };
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Pending {
                tasks: Vec::new(),
                early: vec![format!("notify: {} not sent: no async runtime", n.event)],
                budget,
            };
        };
        let n = Arc::new(n);
        let tasks = wanted
            .into_iter()
            .map(|i| {
                let me = self.clone();
                let n = Arc::clone(&n);
                let label = self.targets[i].label.clone();
                let handle = rt.spawn(async move { me.deliver(i, &n).await });
                (label, handle)
            })
            .collect();
        Pending {
            tasks,
            early: Vec::new(),
            budget,
        }
    }

    /// Sends to one entry with retries; `Err` is the finished warning.
    async fn deliver(&self, i: usize, n: &Notification) -> Result<(), String> {
        let t = &self.targets[i];
        let mut last = String::new();
        let mut tried = 0;
        for attempt in 1..=t.attempts {
            tried = attempt;
            let err = match tokio::time::timeout(t.timeout, t.sender.send(self.http.as_ref(), n)).await {
                Ok(Ok(())) => {
                    tracing::debug!(target = %t.label, event = %n.event, attempt, "notification sent");
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => SendError::Transport(format!("no answer within {}", humantime::format_duration(t.timeout))),
            };
            last = err.to_string();
            if !err.retryable() {
                break;
            }
            if attempt < t.attempts {
                tokio::time::sleep(backoff_before(attempt + 1, self.backoff)).await;
            }
        }
        let how = if tried < t.attempts {
            " (not retried)".to_string()
        } else if tried == 1 {
            " after 1 attempt".to_string()
        } else {
            format!(" after {tried} attempts")
        };
        let mut warning = format!("notify {} ({}): {last}{how}", t.label, n.event);
        for s in t.sender.secrets() {
            if !s.expose().is_empty() {
                warning = warning.replace(s.expose(), "***");
            }
        }
        tracing::warn!("{warning}");
        Err(warning)
    }
}

/// The wait before attempt `attempt` (2, 3, ...): `first`, doubling, capped.
fn backoff_before(attempt: u32, first: Duration) -> Duration {
    let doublings = attempt.saturating_sub(2).min(16);
    first.saturating_mul(1 << doublings).min(MAX_BACKOFF.max(first))
}

fn target_budget(timeout: Duration, attempts: u32, first: Duration) -> Duration {
    let waits: Duration = (2..=attempts).map(|a| backoff_before(a, first)).sum();
    timeout.saturating_mul(attempts) + waits
}

/// What came of one notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The entries it reached (their labels).
    pub sent: Vec<String>,
    /// One line per entry it did not reach, e.g. `notify webhook
    /// https://hooks.example.org/… (deployed): HTTP 500 after 4 attempts`.
    pub warnings: Vec<String>,
}

/// Notifications on their way, from [`Notifier::notify`].
#[must_use = "dropping it lets the sends go on unobserved; await `wait` to get the warnings"]
pub struct Pending {
    tasks: Vec<(String, JoinHandle<Result<(), String>>)>,
    early: Vec<String>,
    budget: Duration,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("targets", &self.tasks.iter().map(|(l, _)| l).collect::<Vec<_>>())
            .field("budget", &self.budget)
            .finish()
    }
}

impl Pending {
    /// The longest the sends can take (see [`Notifier::budget`]).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether nothing is being sent (no entry wanted the event).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether every send has ended (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|(_, h)| h.is_finished())
    }

    /// Waits for every send; they end within [`budget`](Self::budget) by
    /// construction (a second of slack guards against a send that ignores
    /// cancellation).
    pub async fn wait(self) -> Report {
        let limit = self.budget + Duration::from_secs(1);
        self.wait_within(limit).await
    }

    /// Waits at most `limit` in all. A send still going then is reported as
    /// a warning and left to finish (or time out) in the background.
    pub async fn wait_within(self, limit: Duration) -> Report {
        let deadline = tokio::time::Instant::now() + limit;
        let mut report = Report {
            sent: Vec::new(),
            warnings: self.early,
        };
        for (label, handle) in self.tasks {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(()))) => report.sent.push(label),
                Ok(Ok(Err(warning))) => report.warnings.push(warning),
                Ok(Err(join)) => report
                    .warnings
                    .push(format!("notify {label}: the send stopped: {join}")),
                Err(_) => report.warnings.push(format!(
                    "notify {label}: still not sent after {}; left to finish in the background",
                    humantime::format_duration(limit)
                )),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<NotifyConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            notify: Vec<NotifyConfig>,
        }
        let f: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Ok(f.notify.into_iter().next().expect("one entry"))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_for_the_common_keys() {
        let c = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.org/x\"\n").unwrap();
        assert_eq!(c.events, Event::ALL.to_vec());
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.retries, 3);
        assert!(matches!(c.kind, NotifyKind::Webhook(_)));
        c.validate_with(&no_env).unwrap();
    }

    #[test]
    fn common_keys_parse() {
        let c = parse(
            "[[notify]]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\nevents = [\"failed\", \"auto_flipped_back\"]\ntimeout = \"2s 500ms\"\nretries = 0\n",
        )
        .unwrap();
        assert_eq!(c.events, vec![Event::Failed, Event::AutoFlippedBack]);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.retries, 0);
        assert!(c.wants(Event::Failed));
        assert!(!c.wants(Event::Deployed));
    }

    #[test]
    fn unknown_event_kind_and_key_are_errors() {
        let e = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://h/x\"\nevents = [\"deploy\"]\n").unwrap_err();
        assert!(e.contains("unknown variant `deploy`"), "{e}");
        assert!(e.contains("auto_flipped_back"), "{e}");

        let e = parse("[[notify]]\nkind = \"slack\"\nurl = \"https://h/x\"\n").unwrap_err();
        assert!(e.contains("unknown variant `slack`"), "{e}");

        let e = parse("[[notify]]\nurl = \"https://h/x\"\n").unwrap_err();
        assert!(e.contains("missing field `kind`"), "{e}");

        let e = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://h/x\"\nchat_id = 1\n").unwrap_err();
        assert!(e.contains("unknown field `chat_id`"), "{e}");
        assert!(e.contains("`events`, `timeout`, `retries`"), "{e}");

        let e = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://h/x\"\ntimeout = \"soon\"\n").unwrap_err();
        assert!(e.contains("soon") || e.contains("unknown time unit"), "{e}");
    }

    #[test]
    fn common_limits_are_checked() {
        let mut c = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\nevents = []\n").unwrap();
        assert_eq!(c.validate_with(&no_env).unwrap_err().key, "events");
        c.events = vec![Event::Deployed];
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate_with(&no_env).unwrap_err().key, "timeout");
        c.timeout = Duration::from_secs(3600);
        assert_eq!(c.validate_with(&no_env).unwrap_err().key, "timeout");
        c.timeout = Duration::from_secs(1);
        c.retries = 50;
        assert_eq!(c.validate_with(&no_env).unwrap_err().key, "retries");
    }

    #[test]
    fn errors_name_the_entry_and_the_variable() {
        let ok = parse("[[notify]]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\n").unwrap();
        let tg = parse("[[notify]]\nkind = \"telegram\"\nbot_token_env = \"TG_TOKEN_FOR_TEST\"\nchat_id = \"42\"\n")
            .unwrap();
        let err = validate_all_with(&[ok, tg], &no_env).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "notify[1] (telegram).bot_token_env: environment variable TG_TOKEN_FOR_TEST is not set (or is empty)"
        );
        assert_eq!(err.key().as_deref(), Some("notify[1].bot_token_env"));
    }

    #[test]
    fn secrets_print_as_stars() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_sources() {
        let env = |k: &str| (k == "SET").then(|| "value".to_string());
        assert_eq!(
            read_secret("token", Some("SET"), None, &env).unwrap().unwrap().expose(),
            "value"
        );
        assert!(read_secret("token", None, None, &env).unwrap().is_none());
        let e = read_secret("token", Some("UNSET"), None, &env).unwrap_err();
        assert_eq!(e.key, "token_env");
        assert!(e.message.contains("UNSET"));
        let e = read_secret("token", Some("SET"), Some(Path::new("/x")), &env).unwrap_err();
        assert!(e.message.contains("not both"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "from-file\n").unwrap();
        assert_eq!(
            read_secret("token", None, Some(&p), &env).unwrap().unwrap().expose(),
            "from-file"
        );
        std::fs::write(&p, "\n").unwrap();
        let e = read_secret("token", None, Some(&p), &env).unwrap_err();
        assert_eq!(e.key, "token_file");
        assert!(e.message.contains("is empty"));
        let missing = dir.path().join("missing");
        let e = read_secret("token", None, Some(&missing), &env).unwrap_err();
        assert_eq!(e.key, "token_file");
        assert!(e.message.contains(&missing.display().to_string()), "{}", e.message);
    }

    #[test]
    fn relative_secret_files_resolve_against_the_config_dir() {
        let mut c = parse("[[notify]]\nkind = \"telegram\"\nbot_token_file = \"tg.token\"\nchat_id = 1\n").unwrap();
        c.resolve_paths(Path::new("/etc/switchctl"));
        let NotifyKind::Telegram(t) = &c.kind else {
            panic!("telegram")
        };
        assert_eq!(t.bot_token_file.as_deref(), Some(Path::new("/etc/switchctl/tg.token")));
    }

    #[test]
    fn payload_is_designs_json() {
        let at = humantime::parse_rfc3339("2026-11-26T04:05:06.789Z").unwrap();
        let mut n = Notification::new(Event::RolledBack, "v2", "green")
            .with_previous_tag(Some("v1"))
            .with_duration(Duration::from_millis(1234))
            .with_message("health check failed");
        n.at = at;
        n.host = "web-1".into();
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event": "rolled_back",
                "outcome": "failure",
                "tag": "v2",
                "previous_tag": "v1",
                "color": "green",
                "duration_ms": 1234,
                "message": "health check failed",
                "host": "web-1",
                "at": "2026-11-26T04:05:06.789Z",
            })
        );
        let back: Notification = serde_json::from_value(v).unwrap();
        assert_eq!(back, n);

        let first = Notification::new(Event::Deployed, "v1", "blue");
        let v = serde_json::to_value(&first).unwrap();
        assert!(v["previous_tag"].is_null());
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["host"], hostname());
    }

    #[test]
    fn subject_and_text() {
        let mut n = Notification::new(Event::AutoFlippedBack, "v3", "blue").with_message("5xx ratio 0.40 > 0.05");
        n.host = "web-1".into();
        assert_eq!(n.subject(), "switchctl: auto-flipped back v3 on web-1");
        let t = n.text();
        assert!(t.starts_with("switchctl: auto-flipped back v3 on web-1\n5xx ratio 0.40 > 0.05\n"));
        assert!(t.contains("event: auto_flipped_back\n"));
        assert!(t.contains("previous tag: (none)\n"));
    }

    #[test]
    fn env_vars_for_hooks() {
        let n = Notification::new(Event::Flipped, "v1", "blue").with_previous_tag(Some("v2"));
        assert_eq!(
            n.env_vars(),
            [
                ("SWITCHCTL_TAG", "v1".to_string()),
                ("SWITCHCTL_PREVIOUS_TAG", "v2".to_string()),
                ("SWITCHCTL_COLOR", "blue".to_string()),
                ("SWITCHCTL_EVENT", "flipped".to_string()),
            ]
        );
        let first = Notification::new(Event::Deployed, "v1", "blue");
        assert_eq!(first.env_vars()[1], ("SWITCHCTL_PREVIOUS_TAG", String::new()));
    }

    #[test]
    fn every_event_name_round_trips() {
        for e in Event::ALL {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff_before(2, b), Duration::from_millis(500));
        assert_eq!(backoff_before(3, b), Duration::from_secs(1));
        assert_eq!(backoff_before(4, b), Duration::from_secs(2));
        assert_eq!(backoff_before(9, b), MAX_BACKOFF);
        // Defaults: 4 attempts of 10 s, waits of 0.5 + 1 + 2 s.
        assert_eq!(target_budget(DEFAULT_TIMEOUT, 4, b), Duration::from_millis(43_500));
        assert_eq!(target_budget(Duration::from_secs(1), 1, b), Duration::from_secs(1));
    }

    #[test]
    fn budget_is_the_slowest_entry_wanting_the_event() {
        let a =
            parse("[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/a\"\ntimeout = \"1s\"\nretries = 0\n")
                .unwrap();
        let b = parse(
            "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/b\"\ntimeout = \"2s\"\nretries = 1\nevents = [\"failed\"]\n",
        )
        .unwrap();
        let n = Notifier::with_env(&[a, b], &no_env)
            .unwrap()
            .with_backoff(Duration::from_millis(100));
        assert!(n.wants(Event::Deployed) && n.wants(Event::Failed));
        assert!(!Notifier::disabled().wants(Event::Failed));
        assert_eq!(n.budget(Event::Deployed), Duration::from_secs(1));
        assert_eq!(n.budget(Event::Failed), Duration::from_millis(4100));
        assert!(Notifier::disabled().budget(Event::Failed).is_zero());
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.1.2.3"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("10.0.0.1"));
        assert!(!is_loopback_host("example.org"));
    }

    #[tokio::test]
    async fn nothing_to_send_is_an_empty_report() {
        let n = Notifier::disabled();
        let p = n.notify(Notification::new(Event::Deployed, "v1", "blue"));
        assert!(p.is_empty());
        assert!(p.is_finished());
        assert_eq!(p.wait().await, Report::default());
    }

    #[test]
    fn outside_a_runtime_nothing_is_sent_and_it_says_so() {
        let c = parse("[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/a\"\n").unwrap();
        let n = Notifier::with_env(&[c], &no_env).unwrap();
        let p = n.notify(Notification::new(Event::Deployed, "v1", "blue"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(p.wait());
        assert!(r.sent.is_empty());
        assert_eq!(
            r.warnings,
            vec!["notify: deployed not sent: no async runtime".to_string()]
        );
    }
}
