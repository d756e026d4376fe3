//! The admin API's wire format: every JSON document the daemon and the CLI
//! exchange besides the progress events themselves (requests, `status`,
//! `history`, refusals). Admin re-exports it as `admin::api`; the controller
//! fills these types; the CLI reads them. It imports only leaves (the
//! release vocabulary, the config's driver kind, the controller's progress
//! vocabulary), never the admin server or the controller's machinery, so
//! every arrow into it runs one way.
//!
//! Field names and shapes here are the `--json` interface of docs/design.md:
//! change them and scripts break.

use serde::{Deserialize, Serialize};

use crate::config::DriverKind;
use crate::controller::event::{Outcome, Phase};
use crate::release::Color;

/// Body of `POST /v1/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The tag to deploy.
    pub tag: String,
    /// Overrides `deploy.timeout` (the CLI's `DEPLOY_TIMEOUT`), seconds.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Overrides `deploy.health_check_interval` (`HEALTH_CHECK_INTERVAL`), seconds.
    #[serde(default)]
    pub health_check_interval_secs: Option<f64>,
    /// Skip the post-flip watch (`deploy --no-watch`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_watch: bool,
}

/// Body of `POST /v1/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The tag to return to; none: the previous successful release.
    #[serde(default)]
    pub tag: Option<String>,
    /// As in [`DeployRequest`].
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// As in [`DeployRequest`].
    #[serde(default)]
    pub health_check_interval_secs: Option<f64>,
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and what to do.
    pub error: String,
    /// For 409: the operation holding the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<OperationInfo>,
}

/// The operation holding the lock, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationInfo {
    /// `deploy`, `flip_back`, `rollback` or `recover`
    pub kind: String,
    /// the tag it works on
    pub tag: Option<String>,
    /// its current phase
    pub phase: Phase,
}

/// `status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The color serving traffic, with its tag.
    pub active: Option<ColorTag>,
    /// The warm standby, with its tag.
    pub standby: Option<ColorTag>,
    /// The operation in progress.
    pub operation: Option<OperationInfo>,
    /// Per service: what each color runs.
    pub services: Vec<ServiceStatus>,
    /// Whether the driver's runtime is reachable.
    pub driver: DriverStatus,
    /// Problems found at start (upstreams gone...).
    pub problems: Vec<String>,
    /// The post-flip watch in progress, if one.
    #[serde(default)]
    pub watch: Option<WatchInfo>,
    /// The pid of the daemon that answered (it changes with `upgrade`).
    #[serde(default)]
    pub daemon_pid: u32,
    /// The TLS certificates, files first, then ACME's (empty without TLS).
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
}

/// One TLS certificate in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The DNS names it serves (its SANs); for an ACME domain with no
    /// certificate yet, the domain.
    pub names: Vec<String>,
    /// The issuer's distinguished name; none when nothing is served.
    pub issuer: Option<String>,
    /// When the served certificate expires (RFC 3339).
    pub not_after: Option<String>,
    /// `file` or `acme`.
    pub source: String,
    /// The certificate file, or the ACME cache file.
    pub path: Option<String>,
    /// Why the last load failed (the previous certificate, if any, serves).
    pub last_error: Option<String>,
    /// ACME: why the last order failed; cleared by a success.
    pub acme_error: Option<String>,
    /// ACME: when the next order (renewal or retry) is due (RFC 3339).
    pub acme_next_attempt: Option<String>,
}

/// One service in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// name
    pub name: String,
    /// the blue upstream
    pub blue: Option<ColorStatus>,
    /// the green upstream
    pub green: Option<ColorStatus>,
}

/// One upstream in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColorStatus {
    /// its tag
    pub tag: String,
    /// its address
    pub upstream: String,
    /// did it answer its health check just now
    pub healthy: bool,
    /// requests and tunnels in flight
    pub in_flight: usize,
    /// `running`, or how it ended
    pub state: String,
    /// times supervision restarted it since the daemon started
    #[serde(default)]
    pub restarts: u64,
}

/// The driver in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverStatus {
    /// which driver
    pub kind: DriverKind,
    /// reachable
    pub ok: bool,
    /// why not
    pub error: Option<String>,
}

/// One finished operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When it started (RFC 3339).
    pub started: String,
    /// `deploy`, `flip_back` or `rollback`.
    pub kind: String,
    /// The tag that was to be served.
    pub tag: String,
    /// Color and tag serving before.
    pub from: Option<ColorTag>,
    /// Color the operation moved to (or tried to).
    pub to: Color,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Total time.
    pub duration_ms: u64,
    /// Time to start and health-check the new color.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ready_ms: Option<u64>,
    /// Time the route swap took, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub flip_us: Option<u64>,
    /// Time the old color took to drain.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drain_ms: Option<u64>,
    /// Time spent building images (Compose `build:`), when a deploy built any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub build_ms: Option<u64>,
    /// What the post-flip watch counted, when one ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub watch: Option<WatchInfo>,
    /// Notifications that failed, and other warnings about the outcome.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

#[cfg(test)]
impl HistoryEntry {
    /// A finished entry with only what tests vary filled in.
    pub(crate) fn sample(kind: &str, tag: &str, to: Color, outcome: Outcome) -> Self {
        HistoryEntry {
            started: "2026-01-01T00:00:00Z".into(),
            kind: kind.into(),
            tag: tag.into(),
            from: None,
            to,
            outcome,
            reason: None,
            duration_ms: 1,
            ready_ms: None,
            flip_us: None,
            drain_ms: None,
            build_ms: None,
            watch: None,
            warnings: Vec::new(),
        }
    }
}

/// The post-flip watch: in `status` while it runs, in history after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchInfo {
    /// The color watched (the one the deploy flipped to).
    pub color: Color,
    /// When the window ends (RFC 3339).
    pub until: String,
    /// Answers of that color since the flip, every service.
    pub requests: u64,
    /// Of them, 5xx (the proxy's own 502/504 for that color included).
    pub errors_5xx: u64,
    /// The same per service.
    pub services: Vec<WatchService>,
    /// The service past the threshold, when the watch flipped back.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tripped: Option<String>,
    /// Why the watch ended before its window did (a human's `flip back`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended: Option<String>,
}

/// One service's figures in [`WatchInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchService {
    /// The service.
    pub name: String,
    /// Answers since the flip.
    pub requests: u64,
    /// Of them, 5xx.
    pub errors_5xx: u64,
}

/// A color and the tag it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorTag {
    /// color
    pub color: Color,
    /// tag
    pub tag: String,
}

/// Answer of `POST /v1/stop-all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAllAnswer {
    /// The upstreams stopped, as `service (color, tag)`.
    pub stopped: Vec<String>,
}
