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

/// Deploy v1 then v2 (green active, blue v1 standby), then SIGKILL the daemon.
async fn two_releases_then_crash() -> Daemon {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    d.kill9();
    d
}

fn state_file(d: &Daemon, name: &str) -> std::path::PathBuf {
    d.state_dir().join(name)
}

async fn problems(d: &Daemon) -> String {
    d.status().await["problems"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbage_state_file_is_recovered_from_its_previous_copy_and_serves() {
    let mut d = two_releases_then_crash().await;
    std::fs::write(state_file(&d, "state.json"), b"{\"active\": \"gr").unwrap();
    d.spawn();
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let p = problems(&d).await;
    assert!(p.contains("corrupt") && p.contains("state.json.bak"), "{p}");
    assert!(d.log().contains("corrupt"), "said loudly in the log too");
    assert!(
        state_file(&d, "state.json.corrupt").exists(),
        "the bad file is kept for a look"
    );
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_both_state_copies_corrupt_the_state_is_rebuilt_from_the_running_processes() {
    let mut d = two_releases_then_crash().await;
    let pids = d.pids();
    std::fs::write(state_file(&d, "state.json"), b"").unwrap();
    std::fs::write(state_file(&d, "state.json.bak"), b"\xff\xff").unwrap();
    d.spawn();
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v2", "{status}");
    assert_eq!(status["standby"]["tag"], "v1", "{status}");
    assert!(status["problems"].to_string().contains("rebuilt"), "{status}");
    for pid in pids {
        assert!(common::alive(pid), "upstream {pid} was adopted, not stopped");
    }
    assert_eq!(d.cli(&["flip", "back"]).await.status.code(), Some(0));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_between_the_route_swap_and_the_state_save_completes_the_flip_forward() {
    let mut d = two_releases_then_crash().await;
    // The state as the flip persisted it just before the swap.
    let mut state = d.state();
    state["active"] = "blue".into();
    state["pending"] = "green".into();
    state["flipping_to"] = "green".into();
    std::fs::write(state_file(&d, "state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    let load = Load::start(d.proxy, 4);
    d.spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    assert!(
        !report.bodies.contains_key("v1"),
        "never back to the older color: {report:?}"
    );
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v2", "{status}");
    assert_eq!(status["services"][0]["green"]["state"], "running", "{status}");
    assert!(status["problems"].to_string().contains("completed"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unrecorded_upstream_of_an_interrupted_deploy_is_found_stopped_and_recorded() {
    let mut d = two_releases_then_crash().await;
    let green_pid = d.state()["colors"]["green"]["services"]["web"]["handle"]["pid"]
        .as_i64()
        .unwrap() as i32;
    // As if killed after spawning v2 but before saving it: blue active, green
    // pending with no upstream recorded.
    let mut state = d.state();
    state["active"] = "blue".into();
    state["pending"] = "green".into();
    state["colors"]["green"]["services"] = serde_json::json!({});
    std::fs::write(state_file(&d, "state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    d.spawn();
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    common::wait_for("the orphan to be stopped", Duration::from_secs(20), || async {
        !common::alive(green_pid)
    })
    .await;
    let history: serde_json::Value = serde_json::from_slice(&d.cli(&["history", "--json"]).await.stdout).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "deploy", "{last}");
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["reason"], "interrupted by a daemon restart", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_dir_refuses_to_start_naming_the_first() {
    let d = daemon();
    let other = d.dir.path().join("other.toml");
    let config = d
        .config_text()
        .replace(
            &d.socket.display().to_string(),
            &d.dir.path().join("other.sock").display().to_string(),
        )
        .replace(
            &format!("127.0.0.1:{}", d.proxy.port()),
            &format!("127.0.0.1:{}", common::free_port()),
        );
    std::fs::write(&other, config).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::switchctl())
            .arg("--config")
            .arg(&other)
            .arg("proxy")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second daemon exits at once")
    .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state_dir") && err.contains("pid"), "{err}");
    assert_eq!(d.status().await["operation"], serde_json::Value::Null);
}
