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
