//! `status [--json]`: the active color and tag, the standby, the operation
//! in progress, and each service's upstreams with health and in-flight counts.

use super::{client, client_exit_code, exit, query_failed, Cli};
use crate::admin::api::{ColorStatus, ColorTag, Status};

/// `switchctl status`
pub async fn run(cli: &Cli, json: bool) -> i32 {
    let client = match client(cli) {
        Ok(c) => c,
        Err(e) => return query_failed(json, &format!("config: {e}"), exit::USAGE),
    };
    let status: Status = match client.get("/v1/status").await {
        Ok(s) => s,
        Err(e) => return query_failed(json, &e.to_string(), client_exit_code(&e)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        print!("{}", render(&status));
    }
    exit::OK
}

/// The human-readable status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let ct = |c: &Option<ColorTag>| match c {
        Some(c) => format!("{} ({})", c.color, c.tag),
        None => "none".into(),
    };
    out.push_str(&format!("active:    {}\n", ct(&s.active)));
    out.push_str(&format!("standby:   {}\n", ct(&s.standby)));
    let op = match &s.operation {
        Some(op) => format!(
            "{}{} (phase {})",
            op.kind,
            op.tag.as_deref().map(|t| format!(" of {t}")).unwrap_or_default(),
            op.phase
        ),
        None => "none".into(),
    };
    out.push_str(&format!("operation: {op}\n"));
    let driver = match &s.driver.error {
        None => format!("{:?} (reachable)", s.driver.kind).to_lowercase(),
        Some(e) => format!("{:?}: {e}", s.driver.kind).to_lowercase(),
    };
    out.push_str(&format!("driver:    {driver}\n\n"));
    out.push_str(&format!(
        "{:<16} {:<7} {:<16} {:<22} {:<8} {:>9}  {}\n",
        "SERVICE", "COLOR", "TAG", "UPSTREAM", "HEALTHY", "IN-FLIGHT", "STATE"
    ));
    let active = s.active.as_ref().map(|a| a.color);
    for svc in &s.services {
        let rows: [(&str, &Option<ColorStatus>); 2] = [("blue", &svc.blue), ("green", &svc.green)];
        for (color, c) in rows {
            let Some(c) = c else { continue };
            let marker = if active.map(|a| a.as_str()) == Some(color) {
                "*"
            } else {
                ""
            };
            out.push_str(&format!(
                "{:<16} {:<7} {:<16} {:<22} {:<8} {:>9}  {}\n",
                svc.name,
                format!("{color}{marker}"),
                c.tag,
                c.upstream,
                if c.healthy { "yes" } else { "no" },
                c.in_flight,
                c.state
            ));
        }
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    out
}
