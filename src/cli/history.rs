//! `history [--json]`: past deploys, flips and rollbacks, oldest first.

use super::{client, client_exit_code, exit, query_failed, Cli};
use crate::admin::api::HistoryEntry;

/// `switchctl history`
pub async fn run(cli: &Cli, json: bool) -> i32 {
    let client = match client(cli) {
        Ok(c) => c,
        Err(e) => return query_failed(json, &format!("config: {e}"), exit::USAGE),
    };
    let entries: Vec<HistoryEntry> = match client.get("/v1/history").await {
        Ok(e) => e,
        Err(e) => return query_failed(json, &e.to_string(), client_exit_code(&e)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
        return exit::OK;
    }
    println!(
        "{:<24} {:<10} {:<16} {:<14} {:<12} {:>9}  REASON",
        "STARTED", "KIND", "TAG", "FROM → TO", "OUTCOME", "TOOK"
    );
    for e in &entries {
        let from = e.from.as_ref().map_or("-".to_string(), |f| f.color.to_string());
        println!(
            "{:<24} {:<10} {:<16} {:<14} {:<12} {:>7}ms  {}",
            e.started,
            e.kind,
            e.tag,
            format!("{from} → {}", e.to),
            serde_json::to_value(e.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            e.duration_ms,
            e.reason.as_deref().unwrap_or("")
        );
    }
    exit::OK
}
