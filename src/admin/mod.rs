//! The admin API: HTTP + JSON over the daemon's Unix socket. [`server`]
//! answers it inside the daemon; [`client`] is what the CLI uses. The wire
//! format both sides share is [`api`].
//!
//! | request                 | answer                                          |
//! |-------------------------|-------------------------------------------------|
//! | `GET /v1/status`        | [`api::Status`]                                 |
//! | `GET /v1/history`       | `[`[`api::HistoryEntry`]`]`                     |
//! | `POST /v1/deploy`       | [`DeployRequest`] → NDJSON events               |
//! | `POST /v1/flip-back`    | NDJSON events                                   |
//! | `POST /v1/rollback`     | [`RollbackRequest`] → NDJSON events             |
//! | `POST /v1/stop-all`     | [`api::StopAllAnswer`]: every upstream stopped  |
//! | `POST /v1/upgrade`      | NDJSON events: a new daemon takes over ([`crate::upgrade`]) |
//!
//! Refusals before an operation starts: 400 (bad request or config, the CLI
//! exits 2) and 409 (another operation holds the lock, exit 4), each with an
//! [`ApiError`] body.

pub mod client;
pub mod group;
pub mod server;

pub use crate::api;
pub use crate::api::{ApiError, DeployRequest, RollbackRequest};
