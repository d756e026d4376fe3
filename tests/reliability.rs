//! End to end, the guarantees of docs/reliability.md that need a real
//! daemon: no input kills it, corrupt files do not take the site down, a
//! failed deploy keeps the warm standby, crashes leave nothing behind.

mod common;

use std::time::Duration;

use common::{admin, process_service, text, Daemon, Load};

const BROKEN: &str = r#"FAIL_HEALTH_VERSIONS = "v3", EXIT_AT_START_VERSIONS = "v4""#;

fn daemon() -> Daemon {
    Daemon::start("process", "timeout = \"30s\"", &process_service("web", BROKEN))
}

async fn deploy_ok(d: &Daemon, tag: &str) {
    let out = d.cli(&["deploy", tag]).await;
    assert_eq!(out.status.code(), Some(0), "deploy {tag}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_timeouts_are_refused_and_the_daemon_keeps_serving() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 4);
    for huge in ["1e19", "1e300", "1e400"] {
        let out = d.cli_env(&["deploy", "v2"], &[("DEPLOY_TIMEOUT", huge)]).await;
        assert_eq!(out.status.code(), Some(2), "DEPLOY_TIMEOUT={huge}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("DEPLOY_TIMEOUT"),
            "{}",
            text(&out)
        );
    }
    for body in [
        r#"{"tag": "v2", "timeout_secs": 1e300}"#,
        r#"{"tag": "v2", "timeout_secs": 1e19}"#,
        r#"{"tag": "v2", "health_check_interval_secs": 1e300}"#,
        r#"{"tag": "v2", "timeout_secs": -1}"#,
    ] {
        let (status, answer) = admin(&d.socket, "POST", "/v1/deploy", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains("at most"), "{body}: {answer}");
        let (status, answer) = admin(&d.socket, "POST", "/v1/rollback", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    deploy_ok(&d, "v2").await;
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_history_line_is_skipped_by_history_and_rollback() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let path = d.state_dir().join("history.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\xff\n{\"torn\": \n");
    std::fs::write(&path, bytes).unwrap();
    let out = d.cli(&["history", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2, "{entries}");
    // `rollback` reads history to find the previous release.
    let out = d.cli(&["rollback"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_with_a_long_interval_flips_soon_after_the_app_is_ready() {
    let d = daemon();
    // The first probe comes before the app listens; the next ones back off
    // from 50 ms instead of waiting the whole 5 s interval.
    let out = d
        .cli_env(&["deploy", "v1", "--json"], &[("HEALTH_CHECK_INTERVAL", "5")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let history: serde_json::Value = serde_json::from_slice(&d.cli(&["history", "--json"]).await.stdout).unwrap();
    let ready_ms = history[0]["ready_ms"].as_u64().unwrap();
    assert!(ready_ms < 4_000, "ready after {ready_ms} ms with a 5 s interval");
}
