//! Progress events: the controller's vocabulary for telling what a deploy,
//! flip or rollback is doing. The admin API streams them as NDJSON and the
//! CLI renders them; nothing here knows about either.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How an event should be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Progress.
    Info,
    /// A step succeeded.
    Success,
    /// Something worth a look, not fatal.
    Warn,
    /// A failure.
    Error,
}

/// How an operation ended (the last event carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new release serves traffic.
    Deployed,
    /// The new release failed before the flip; the old one still serves.
    RolledBack,
    /// Traffic moved to the standby color.
    Flipped,
    /// The operation was not started (busy, or nothing to flip to).
    Refused,
    /// It failed in a way that left nothing to roll back.
    Failed,
    /// The post-flip watch saw too many 5xx from the new release and flipped
    /// back to the previous one. History records it so; a `done` event says
    /// `rolled_back` (DESIGN's outcomes), its message naming the watch.
    AutoFlippedBack,
    /// A new daemon took over the sockets (`switchctl upgrade`); the old
    /// one drains and exits.
    Upgraded,
}

impl Outcome {
    /// The CLI's exit status for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Deployed | Outcome::Flipped | Outcome::Upgraded => 0,
            Outcome::RolledBack | Outcome::Failed | Outcome::Refused | Outcome::AutoFlippedBack => 1,
        }
    }
}

/// The step of an operation an event (or `status`) speaks of. Serialized as
/// the lowercase name (`"health"`), the `phase` strings of the `--json`
/// interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The operation lock is taken (or refused).
    Lock,
    /// A deploy checks it can start (runtime reachable, images present).
    Preflight,
    /// Images of the release are built (services with Compose `build:`).
    Build,
    /// A `[[hook]]` runs.
    Hook,
    /// The idle color is cleared of an old standby.
    Prepare,
    /// The new color's upstreams start.
    Start,
    /// They are health-checked (or the standby is, for a flip back).
    Health,
    /// Traffic moves in one route swap.
    Flip,
    /// The color that lost traffic finishes its requests.
    Drain,
    /// That color is kept warm or stopped.
    Standby,
    /// Old images are removed.
    Cleanup,
    /// A deploy failed before the flip and is undone.
    Rollback,
    /// The last lines of output of a failed upstream.
    Logs,
    /// The history file is written.
    History,
    /// Start-up recovery of the daemon.
    Recover,
    /// After a deploy's flip, the new color's answers are watched.
    Watch,
    /// Notifications of the outcome are sent.
    Notify,
    /// Upstreams are stopped.
    Stop,
    /// A new daemon takes over the sockets (`switchctl upgrade`).
    Upgrade,
    /// The final event, with the outcome.
    Done,
}

impl Phase {
    /// The wire name, e.g. `"health"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Lock => "lock",
            Phase::Preflight => "preflight",
            Phase::Build => "build",
            Phase::Hook => "hook",
            Phase::Prepare => "prepare",
            Phase::Start => "start",
            Phase::Health => "health",
            Phase::Flip => "flip",
            Phase::Drain => "drain",
            Phase::Standby => "standby",
            Phase::Cleanup => "cleanup",
            Phase::Rollback => "rollback",
            Phase::Logs => "logs",
            Phase::History => "history",
            Phase::Recover => "recover",
            Phase::Watch => "watch",
            Phase::Notify => "notify",
            Phase::Stop => "stop",
            Phase::Upgrade => "upgrade",
            Phase::Done => "done",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so the CLI's `{:<9}` columns line up.
        f.pad(self.as_str())
    }
}

/// One line of progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 time.
    pub ts: String,
    /// Severity.
    pub level: Level,
    /// Step of the operation.
    pub phase: Phase,
    /// The service concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
    /// Human-readable text.
    pub message: String,
    /// Set on the final (`done`) event only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outcome: Option<Outcome>,
}

impl Event {
    /// An event stamped now.
    pub fn new(level: Level, phase: Phase, service: Option<&str>, message: impl Into<String>) -> Self {
        Event {
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            level,
            phase,
            service: service.map(String::from),
            message: message.into(),
            outcome: None,
        }
    }

    /// The final event of an operation.
    pub fn done(outcome: Outcome, message: impl Into<String>) -> Self {
        let level = match outcome {
            Outcome::Deployed | Outcome::Flipped | Outcome::Upgraded => Level::Success,
            _ => Level::Error,
        };
        let outcome = match outcome {
            Outcome::AutoFlippedBack => Outcome::RolledBack,
            other => other,
        };
        Event {
            outcome: Some(outcome),
            ..Event::new(level, Phase::Done, None, message)
        }
    }
}

/// Where an operation sends its events. Sending never fails: when nobody
/// listens any more (the CLI went away), the operation carries on.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Reporter {
    /// A reporter and the stream of its events.
    pub fn channel() -> (Reporter, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reporter { tx: Some(tx) }, rx)
    }

    /// A reporter that only logs (for work nobody watches).
    pub fn silent() -> Reporter {
        Reporter { tx: None }
    }

    /// Whether nobody can be listening (work started by the daemon itself).
    pub fn is_silent(&self) -> bool {
        self.tx.is_none()
    }

    /// Send an event (and log it).
    pub fn send(&self, event: Event) {
        let service = event.service.as_deref().unwrap_or("-");
        match event.level {
            Level::Error => tracing::error!(phase = %event.phase, service = %service, "{}", event.message),
            Level::Warn => tracing::warn!(phase = %event.phase, service = %service, "{}", event.message),
            _ => tracing::info!(phase = %event.phase, service = %service, "{}", event.message),
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }

    /// Progress.
    pub fn info(&self, phase: Phase, service: Option<&str>, message: impl Into<String>) {
        self.send(Event::new(Level::Info, phase, service, message));
    }
    /// A step succeeded.
    pub fn success(&self, phase: Phase, service: Option<&str>, message: impl Into<String>) {
        self.send(Event::new(Level::Success, phase, service, message));
    }
    /// Worth a look.
    pub fn warn(&self, phase: Phase, service: Option<&str>, message: impl Into<String>) {
        self.send(Event::new(Level::Warn, phase, service, message));
    }
    /// A failure.
    pub fn error(&self, phase: Phase, service: Option<&str>, message: impl Into<String>) {
        self.send(Event::new(Level::Error, phase, service, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_to_the_documented_shape() {
        let e = Event::new(Level::Info, Phase::Health, Some("web"), "probing");
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["phase"], "health");
        assert_eq!(v["service"], "web");
        assert!(v.get("outcome").is_none());
        assert!(humantime::parse_rfc3339(v["ts"].as_str().unwrap()).is_ok());
        let d = serde_json::to_value(Event::done(Outcome::RolledBack, "x")).unwrap();
        assert_eq!(d["phase"], "done");
        assert_eq!(d["outcome"], "rolled_back");
        assert!(d.get("service").is_none());
        let auto = serde_json::to_value(Event::done(Outcome::AutoFlippedBack, "the watch flipped back")).unwrap();
        assert_eq!(auto["outcome"], "rolled_back", "the done event keeps DESIGN's outcomes");
        assert_eq!(
            serde_json::to_value(Outcome::AutoFlippedBack).unwrap(),
            "auto_flipped_back"
        );
        let u = serde_json::to_value(Event::done(Outcome::Upgraded, "x")).unwrap();
        assert_eq!(u["outcome"], "upgraded");
        assert_eq!(u["level"], "success");
        assert_eq!(Outcome::Upgraded.exit_code(), 0);
    }

    #[test]
    fn phases_serialize_as_their_names() {
        let all = [
            Phase::Lock,
            Phase::Preflight,
            Phase::Prepare,
            Phase::Start,
            Phase::Health,
            Phase::Flip,
            Phase::Drain,
            Phase::Standby,
            Phase::Cleanup,
            Phase::Rollback,
            Phase::Logs,
            Phase::History,
            Phase::Recover,
            Phase::Watch,
            Phase::Notify,
            Phase::Stop,
            Phase::Upgrade,
            Phase::Done,
        ];
        for phase in all {
            let json = serde_json::to_value(phase).unwrap();
            assert_eq!(json, phase.as_str());
            assert_eq!(serde_json::from_value::<Phase>(json).unwrap(), phase);
        }
    }
}
