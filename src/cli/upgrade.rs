//! `upgrade`: ask the daemon for a hitless self-upgrade (`crate::upgrade`):
//! a new daemon from the installed binary takes the listening sockets, the
//! old one drains. Exit 0 when the new daemon took over, 1 when it failed
//! (the old one keeps serving), 3 unreachable, 4 another operation runs.
//! `systemctl reload switchctl` runs this (`ExecReload=`).

use super::deploy::run_operation;
use super::{Cli, SocketLookup};

/// `switchctl upgrade`
pub async fn run(cli: &Cli, json: bool) -> i32 {
    run_operation(cli, SocketLookup::Checked, "/v1/upgrade", &serde_json::json!({}), json).await
}
