//! The admin API: HTTP + JSON over the daemon's Unix socket. [`server`]
//! answers it inside the daemon; [`client`] is what the CLI uses. The types
//! here are the wire format both sides share.
//!
//! | request                 | answer                                          |
//! |-------------------------|-------------------------------------------------|
//! | `GET /v1/status`        | [`Status`](crate::controller::Status)           |
//! | `GET /v1/history`       | `[HistoryEntry]`                                |
//! | `POST /v1/deploy`       | [`DeployRequest`] → NDJSON events               |
//! | `POST /v1/flip-back`    | NDJSON events                                   |
//! | `POST /v1/rollback`     | [`RollbackRequest`] → NDJSON events             |
//!
//! Refusals before an operation starts: 400 (bad request or config, the CLI
//! exits 2) and 409 (another operation holds the lock, exit 4), each with an
//! [`ApiError`] body.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::controller::OperationInfo;

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
