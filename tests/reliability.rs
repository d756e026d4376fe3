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
    // The disk as a flip to green leaves it when the daemon dies right
    // after the swap: the state still says blue, the intent says green.
    let mut state = d.state();
    state["active"] = "blue".into();
    state["pending"] = "green".into();
    std::fs::write(state_file(&d, "state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    std::fs::write(state_file(&d, "flip.intent"), br#"{"color":"green","tag":"v2"}"#).unwrap();
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
    let err = d.another_daemon_on_the_same_state_dir().await;
    assert!(err.contains("state_dir") && err.contains("pid"), "{err}");
    assert_eq!(d.status().await["operation"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_deploy_keeps_the_warm_standby_for_flip_back() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let load = Load::start(d.proxy, 4);
    // v3 never gets healthy, v4 exits at start: both fail before the flip.
    for bad in ["v3", "v4"] {
        let out = d.cli_env(&["deploy", bad], &[("DEPLOY_TIMEOUT", "2")]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let status = d.status().await;
        assert_eq!(status["active"]["tag"], "v2", "{status}");
        assert_eq!(status["standby"]["color"], "blue", "after {bad}: {status}");
        assert_eq!(status["standby"]["tag"], "v1", "after {bad}: {status}");
        assert_eq!(status["services"][0]["blue"]["healthy"], true, "{status}");
    }
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

/// A daemon whose upstreams answer their health check only after 1 s.
fn slow_daemon(deploy: &str) -> Daemon {
    Daemon::start("process", deploy, &process_service("web", r#"HEALTHY_AFTER = "1""#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_message_claims_a_standby_that_does_not_run() {
    let d = slow_daemon("timeout = \"30s\"");
    deploy_ok(&d, "v1").await;
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        !said.contains("standby = \"stop\""),
        "wrong reason with standby = keep: {said}"
    );
    assert!(said.contains("no earlier release runs in green"), "{said}");

    // The old color dies during the deploy that flips away from it (while
    // an operation runs, supervision leaves the upstreams alone).
    let v1 = d.pids()[0];
    let deploy = {
        let (config, exe) = (d.config.clone(), common::switchctl());
        tokio::spawn(async move {
            tokio::process::Command::new(exe)
                .arg("--config")
                .arg(config)
                .args(["deploy", "v2"])
                .env("NO_COLOR", "1")
                .output()
                .await
                .unwrap()
        })
    };
    common::wait_for("the deploy's health phase", Duration::from_secs(20), || async {
        d.status().await["operation"]["phase"] == "health"
    })
    .await;
    common::signal(-v1, 9);
    let out = deploy.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(!said.contains("kept running as standby"), "{said}");
    assert!(said.contains("is not running"), "{said}");
    assert!(d.status().await["standby"].is_null());
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no earlier release runs in blue"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_answers_while_a_standby_is_slow_to_stop() {
    // An upstream whose group ignores SIGTERM: stopping it takes the whole
    // stop_timeout (3 s in the harness).
    let service = common::shell_service("trap '' TERM; {app} & while true; do sleep 1; done");
    let d = Daemon::start("process", "timeout = \"30s\"", &service);
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let deploy = {
        let (config, exe) = (d.config.clone(), common::switchctl());
        tokio::spawn(async move {
            tokio::process::Command::new(exe)
                .arg("--config")
                .arg(config)
                .args(["deploy", "v3"])
                .output()
                .await
                .unwrap()
        })
    };
    // `status` reads the operation after the state: had it waited for the
    // state lock across the stop, it could not see the `prepare` phase.
    let mut saw_prepare = false;
    while !deploy.is_finished() && !saw_prepare {
        let status = d.status().await;
        saw_prepare = status["operation"]["phase"] == "prepare";
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = deploy.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(saw_prepare, "status never answered during the standby's stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_active_upstream_is_restarted_and_counted_in_status() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let v1 = d.pids()[0];
    common::signal(-v1, 9);
    common::wait_for("v1 restarted and served", Duration::from_secs(30), || async {
        !common::alive(v1) && d.get("/").await == (200, "v1\n".into())
    })
    .await;
    let status = d.status().await;
    let blue = &status["services"][0]["blue"];
    assert_eq!(blue["restarts"], 1, "{status}");
    assert_eq!(blue["state"], "running", "{status}");
    assert_eq!(status["active"]["tag"], "v1", "{status}");
    assert!(!d.pids().contains(&v1), "the state records the new process");
    assert!(d.log().contains("restarted"), "logged as an event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_standby_serves_from_the_standby_while_the_active_restarts() {
    let d = slow_daemon("timeout = \"30s\"\nfailover_to_standby = true");
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let green = d.state()["colors"]["green"]["services"]["web"]["handle"]["pid"]
        .as_i64()
        .unwrap() as i32;
    common::signal(-green, 9);
    // The restarted v2 needs 1 s to be healthy: meanwhile v1 serves.
    common::wait_for("the standby to take the traffic", Duration::from_secs(20), || async {
        d.get("/").await == (200, "v1\n".into())
    })
    .await;
    common::wait_for(
        "the restarted active color to serve again",
        Duration::from_secs(30),
        || async { d.get("/").await == (200, "v2\n".into()) },
    )
    .await;
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v2", "{status}");
    assert_eq!(status["services"][0]["green"]["restarts"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_write_that_fails_before_the_flip_refuses_the_deploy_with_routes_unchanged() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    // The next state write cannot create its temporary file.
    let blocker = state_file(&d, "state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let load = Load::start(d.proxy, 4);
    let out = d.cli(&["deploy", "v2"]).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot write state file"), "{}", text(&out));
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.bodies.keys().collect::<Vec<_>>(), ["v1"], "{report:?}");
    assert_eq!(d.status().await["active"]["tag"], "v1");
    std::fs::remove_dir(&blocker).unwrap();
    deploy_ok(&d, "v2").await;
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_whose_intent_cannot_be_recorded_is_refused_with_routes_unchanged() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    // The intent file cannot be written: a directory stands in its place.
    let blocker = state_file(&d, "flip.intent");
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let load = Load::start(d.proxy, 4);
    let out = d.cli(&["flip", "back"]).await;
    let report = load.stop().await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("flip.intent"), "{}", text(&out));
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.bodies.keys().collect::<Vec<_>>(), ["v2"], "{report:?}");
    assert_eq!(d.status().await["active"]["tag"], "v2");
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(d.cli(&["flip", "back"]).await.status.code(), Some(0));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_problems_say_what_is_wrong_now_not_everything_that_ever_was() {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    // The daemon and its upstream die together: the next start finds the
    // upstream gone (a problem), and supervision brings it back (no longer one).
    let v1 = d.pids()[0];
    d.kill9();
    common::signal(-v1, 9);
    d.spawn();
    common::wait_for(
        "v1 restarted after the daemon start",
        Duration::from_secs(30),
        || async {
            d.status().await["services"][0]["blue"]["restarts"] == 1 && d.get("/").await == (200, "v1\n".into())
        },
    )
    .await;
    let status = d.status().await;
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
    assert!(d.log().contains("web (blue, v1): exited"), "it was said: {}", d.log());
    // Crash after crash: still nothing listed once each is back.
    for n in 2..=3 {
        let pid = d.pids()[0];
        common::signal(-pid, 9);
        common::wait_for("the crashed upstream restarted", Duration::from_secs(30), || async {
            d.status().await["services"][0]["blue"]["restarts"] == n && d.get("/").await == (200, "v1\n".into())
        })
        .await;
    }
    let status = d.status().await;
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_still_answering_at_the_drain_timeout_finishes_from_the_kept_standby() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    // Longer than the harness's 10 s drain_timeout.
    let proxy = d.proxy;
    let slow = tokio::spawn(async move { common::get(proxy, "/slow?ms=12000").await });
    common::wait_for("the slow request to reach v1", Duration::from_secs(30), || async {
        d.status().await["services"][0]["blue"]["in_flight"].as_u64() >= Some(1)
    })
    .await;
    let out = d.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("requests still being answered go on until blue stops"),
        "{}",
        text(&out)
    );
    // The old color runs on as the standby: the request was not cut.
    assert_eq!(slow.await.unwrap(), (200, "v1\n".into()));
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}
