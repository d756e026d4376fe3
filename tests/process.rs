//! End to end with the process driver: the real daemon, the real CLI, the
//! testapp as upstream, and a load loop through the proxy that must see
//! zero failed requests.

mod common;

use std::time::{Duration, Instant};

use common::{alive, events, process_service, text, wait_for, Daemon, Load};

const BROKEN: &str = r#"FAIL_HEALTH_VERSIONS = "v3", EXIT_AT_START_VERSIONS = "v4", HANG_HEALTH_VERSIONS = "v5""#;

fn daemon() -> Daemon {
    Daemon::start("process", "timeout = \"30s\"", &process_service("web", BROKEN))
}

async fn deploy_ok(d: &Daemon, tag: &str) {
    let out = d.cli(&["deploy", tag]).await;
    assert_eq!(out.status.code(), Some(0), "deploy {tag}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_switches_versions_with_zero_failed_requests() {
    let d = daemon();
    assert_eq!(d.get("/").await, (503, "no active release\n".into()));
    deploy_ok(&d, "v1").await;
    assert_eq!(d.get("/").await, (200, "v1\n".into()));

    let load = Load::start(d.proxy, 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    deploy_ok(&d, "v2").await;
    // Every request that starts after `deploy` returned sees v2.
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        report.bodies.contains_key("v1") && report.bodies.contains_key("v2"),
        "{report:?}"
    );

    let status = d.status().await;
    assert_eq!(status["active"]["color"], "green");
    assert_eq!(status["active"]["tag"], "v2");
    assert_eq!(status["standby"]["color"], "blue");
    assert_eq!(status["standby"]["tag"], "v1");
    assert!(status["operation"].is_null());
    let web = &status["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["green"]["tag"], "v2");
    assert_eq!(web["green"]["healthy"], true);
    assert_eq!(web["green"]["in_flight"], 0);
    assert!(web["blue"]["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_health_rolls_back_and_keeps_the_old_version_serving() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    let out = d.cli_env(&["deploy", "v3"], &[("DEPLOY_TIMEOUT", "2")]).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("answered 503"), "{stdout}");
    assert!(stdout.contains("rolled back"), "{stdout}");
    assert!(stdout.contains("blue (v1) keeps serving"), "{stdout}");
    assert!(
        stdout.contains("testapp v3 listening"),
        "the failed upstream's log is shown: {stdout}"
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.bodies.keys().collect::<Vec<_>>(), ["v1"], "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v1");
    assert!(status["services"][0]["green"].is_null(), "the new color was removed");

    let history = d.cli(&["history", "--json"]).await;
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["tag"], "v3");
    assert_eq!(last["outcome"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_exits_at_start_fails_without_waiting_for_the_timeout() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    // A deadline far beyond the test's patience: only exit detection ends it.
    let out = d
        .cli_env(&["deploy", "v4", "--json"], &[("DEPLOY_TIMEOUT", "3600")])
        .await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let evs = events(&out);
    let done = evs.last().unwrap();
    assert_eq!(done["phase"], "done");
    assert_eq!(done["outcome"], "rolled_back");
    let msg = done["message"].as_str().unwrap();
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(!msg.contains("timeout"), "{msg}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_that_never_becomes_healthy_times_out() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    let out = d
        .cli_env(
            &["deploy", "v5"],
            &[("DEPLOY_TIMEOUT", "3"), ("HEALTH_CHECK_INTERVAL", "0.5")],
        )
        .await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("timeout 3s, health check every 500ms"),
        "env overrides apply: {stdout}"
    );
    assert!(stdout.contains("not healthy before the deploy timeout"), "{stdout}");
    assert!(stdout.contains("no answer within 1s"), "{stdout}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flip_back_returns_to_the_standby_with_zero_failed_requests() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let load = Load::start(d.proxy, 20);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let out = d.cli(&["flip", "back", "--json"]).await;
    let took = t.elapsed();
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "flipped");
    assert_eq!(report.failed, 0, "{report:?}");
    println!("flip back end to end: {:.1} ms", took.as_secs_f64() * 1000.0);
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v1");
    assert_eq!(status["standby"]["tag"], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flip_back_reads_only_the_socket_so_a_half_edited_config_does_not_block_it() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    // Someone is halfway through an edit: a key the schema does not know.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("half_typed_key = 1\n{good}")).unwrap();
    let status = d.cli(&["status"]).await;
    assert_eq!(status.status.code(), Some(2), "{}", text(&status));
    assert!(
        text(&status).contains("unknown field `half_typed_key`"),
        "{}",
        text(&status)
    );
    let out = d.cli(&["flip", "back", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "flipped");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    // Not TOML at all: no socket can be read from it, exit 2 naming the line.
    std::fs::write(&d.config, format!("{good}\n[proxy\n")).unwrap();
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let lines = good.lines().count();
    assert!(
        text(&out).contains(&format!("{}:{}:", d.config.display(), lines + 2)),
        "{}",
        text(&out)
    );
    std::fs::write(&d.config, good).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flip_back_to_an_unhealthy_standby_is_refused() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let status = d.status().await;
    let standby = status["services"][0]["blue"]["upstream"].as_str().unwrap().to_string();
    // Tell the standby to fail its health check from now on.
    let stream = tokio::net::TcpStream::connect(&standby).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/health/fail")
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert!(sender.send_request(req).await.unwrap().status().is_success());

    let load = Load::start(d.proxy, 20);
    let out = d.cli(&["flip", "back"]).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("is not healthy, traffic stays where it is"), "{stdout}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_deploys_a_named_tag_or_returns_to_the_previous_release() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let load = Load::start(d.proxy, 20);
    let out = d.cli(&["rollback", "v0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v0\n".into()));
    // No tag: the previous successful release (v2, the warm standby) by a flip.
    let out = d.cli(&["rollback", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "flipped");
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_operation_is_refused_with_exit_4() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    let first = {
        let cmd = tokio::process::Command::new(common::switchctl())
            .arg("--config")
            .arg(&d.config)
            .args(["deploy", "v5"])
            .env("DEPLOY_TIMEOUT", "4")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cmd
    };
    wait_for("the first deploy to hold the lock", Duration::from_secs(30), || async {
        !d.status().await["operation"].is_null()
    })
    .await;
    let status = d.status().await;
    assert_eq!(status["operation"]["kind"], "deploy");
    assert_eq!(status["operation"]["tag"], "v5");
    let out = d.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another operation is in progress: deploy of v5"),
        "{stderr}"
    );
    let out = d.cli(&["flip", "back", "--json"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "refused");
    let first = first.wait_with_output().await.unwrap();
    assert_eq!(first.status.code(), Some(1));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_deploy_restarts_serving_the_last_active_color() {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    let deploy = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(["deploy", "v3"])
        .env("DEPLOY_TIMEOUT", "600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the deploy to reach its health phase",
        Duration::from_secs(30),
        || async { d.status().await["operation"]["phase"] == "health" },
    )
    .await;
    let before = load.stop().await;
    assert_eq!(before.failed, 0, "{before:?}");
    let pending = d.state();
    assert_eq!(pending["pending"], "green");
    let v3_pid = pending["colors"]["green"]["services"]["web"]["handle"]["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(alive(v3_pid));

    d.kill9();
    let deploy = deploy.wait_with_output().await.unwrap();
    assert_ne!(
        deploy.status.code(),
        Some(0),
        "the interrupted deploy did not report success"
    );
    d.spawn();
    // Served at once from the persisted state, before any recovery finishes.
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let load = Load::start(d.proxy, 20);
    wait_for(
        "the leftover upstream to be reaped",
        Duration::from_secs(30),
        || async { !alive(v3_pid) },
    )
    .await;
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v1");
    assert!(status["operation"].is_null());
    assert!(status["services"][0]["green"].is_null());
    assert!(d.state()["pending"].is_null());
    deploy_ok(&d, "v2").await;
    let after = load.stop().await;
    assert_eq!(after.failed, 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_daemon_adopts_running_upstreams_without_losing_requests_before_or_after() {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let pids = d.pids();
    assert_eq!(d.terminate(), Some(0), "SIGTERM exits 0:\n{}", d.log());
    for pid in &pids {
        assert!(alive(*pid), "upstreams outlive the daemon");
    }
    d.spawn();
    let load = Load::start(d.proxy, 20);
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "adopted standby can be flipped to: {}",
        text(&out)
    );
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_activated_daemon_restarts_without_failing_a_request() {
    let mut d = Daemon::start_socket_activated("process", "timeout = \"30s\"", &process_service("web", BROKEN));
    deploy_ok(&d, "v1").await;
    let load = Load::start(d.proxy, 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What `systemctl restart switchctl` does: SIGTERM, wait, start again on
    // the socket systemd kept open.
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    d.spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    deploy_ok(&d, "v2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        report.bodies.contains_key("v1") && report.bodies.contains_key("v2"),
        "{report:?}"
    );
    // The upstreams did not inherit the public socket.
    use std::os::fd::AsRawFd;
    let fd = d.inherited.as_ref().unwrap().as_raw_fd();
    let public = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    for pid in d.pids() {
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
            assert_ne!(target, public, "upstream {pid} holds the public socket");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_stop_stops_the_old_color() {
    let d = Daemon::start("process", "standby = \"stop\"", &process_service("web", ""));
    deploy_ok(&d, "v1").await;
    let v1 = d.pids();
    deploy_ok(&d, "v2").await;
    wait_for("v1 to stop", Duration::from_secs(30), || async { !alive(v1[0]) }).await;
    let status = d.status().await;
    assert!(status["standby"].is_null());
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no standby to flip back to"));
}

#[tokio::test]
async fn a_malformed_config_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchctl.toml");
    std::fs::write(
        &path,
        "driver = \"process\"\n\n[deploy]\ntimeout = \"30s\"\nhealth_interval = \"1s\"\n",
    )
    .unwrap();
    for args in [&["deploy", "v1"][..], &["check"], &["proxy"], &["status"]] {
        let out = tokio::process::Command::new(common::switchctl())
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{}:5:", path.display())), "{args:?}: {stderr}");
        assert!(stderr.contains("unknown field `health_interval`"), "{stderr}");
    }
}

#[tokio::test]
async fn a_missing_admin_group_is_refused_at_start_and_leaves_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchctl.toml");
    let socket = dir.path().join("admin.sock");
    std::fs::write(
        &path,
        format!(
            "driver = \"process\"\nstate_dir = \"{}\"\n[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\
             admin_socket = \"{}\"\nadmin_group = \"switchctl-test-no-such-group\"\n{}",
            dir.path().join("state").display(),
            common::free_port(),
            socket.display(),
            process_service("web", "")
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&path)
        .arg("proxy")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("group \"switchctl-test-no-such-group\" is not in /etc/group"),
        "{}",
        text(&out)
    );
    assert!(!socket.exists(), "a refused start left {} behind", socket.display());
}

#[tokio::test]
async fn an_unreachable_daemon_exits_3() {
    let out = tokio::process::Command::new(common::switchctl())
        .args(["--socket", "/nonexistent/switchctl.sock", "deploy", "v1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the switchctl daemon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_exit_2_and_changes_nothing() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let out = d.cli(&["deploy", "../etc"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tag"));
    let out = d.cli_env(&["deploy", "v2"], &[("DEPLOY_TIMEOUT", "soon")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEPLOY_TIMEOUT"));
    assert_eq!(d.status().await["active"]["tag"], "v1");
    // The admin API rejects malformed requests with a precise 400.
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/deploy")
        .header("host", "switchctl")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"tagg\": 1}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("malformed request") && body.contains("tagg"), "{body}");
    assert_eq!(d.status().await["active"]["tag"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_json_is_ndjson_ending_in_done() {
    let d = daemon();
    let out = d.cli(&["deploy", "v1", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let evs = events(&out);
    for e in &evs {
        assert!(
            e["ts"].is_string() && e["phase"].is_string() && e["message"].is_string(),
            "{e}"
        );
        assert!(
            ["info", "success", "warn", "error"].contains(&e["level"].as_str().unwrap()),
            "{e}"
        );
    }
    assert!(evs.iter().any(|e| e["phase"] == "health" && e["service"] == "web"));
    let done = evs.last().unwrap();
    assert_eq!(done["phase"], "done");
    assert_eq!(done["outcome"], "deployed");
    assert_eq!(evs.iter().filter(|e| e["phase"] == "done").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_config_and_environment() {
    let d = daemon();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the admin socket is group-writable only");
    let out = d.cli(&["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("served by the running daemon"), "{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_all_stops_both_colors_and_the_proxy_answers_503() {
    use switchctl::admin::{api::StopAllAnswer, client::Client};
    let d = daemon();
    deploy_ok(&d, "v1").await;
    deploy_ok(&d, "v2").await;
    let pids = d.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let answer: StopAllAnswer = Client::new(&d.socket)
        .post("/v1/stop-all", &serde_json::json!({}))
        .await
        .unwrap();
    let mut stopped = answer.stopped;
    stopped.sort();
    assert_eq!(stopped, ["web (blue, v1)", "web (green, v2)"]);
    for pid in pids {
        assert!(!alive(pid), "upstream {pid} still runs");
    }
    assert_eq!(d.get("/").await.0, 503);
    let status = d.status().await;
    assert!(status["active"].is_null() && status["standby"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_log_is_plain_text_with_fields_as_values() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let log = d.log();
    assert!(!log.contains('\x1b'), "no colour codes when stderr is a file:\n{log}");
    assert!(log.contains("service=web"), "{log}");
    assert!(!log.contains("Some("), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_refused_as_busy_leaves_the_config_unread() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let mut first = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(["deploy", "v5"])
        .env("DEPLOY_TIMEOUT", "3")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first deploy to hold the lock", Duration::from_secs(30), || async {
        !d.status().await["operation"].is_null()
    })
    .await;
    // A broken file: a deploy that read it would be refused as bad config
    // (exit 2); the lock is taken first, so it is refused as busy (exit 4).
    let good = d.config_text();
    std::fs::write(&d.config, "driver = [not toml").unwrap();
    let socket = d.socket.display().to_string();
    let out = d.cli(&["--socket", &socket, "deploy", "v2"]).await;
    std::fs::write(&d.config, good).unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(first.wait().await.unwrap().code(), Some(1));
}

/// `--config switchctl.toml` (no directory part) with relative state_dir
/// and admin_socket: the daemon starts processes (their default working
/// directory is the config's), and `status`/`deploy` work from another
/// directory too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_path_without_a_directory_part_works_from_anywhere() {
    let dir = tempfile::Builder::new().prefix("switchctl-test-").tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(
        dir.path().join("switchctl.toml"),
        format!(
            "driver = \"process\"\nstate_dir = \"state\"\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_socket = \"admin.sock\"\ndrain_timeout = \"5s\"\nworkers = 2\n\
             [deploy]\nhealth_check_interval = \"100ms\"\n{}",
            process_service("web", "")
        ),
    )
    .unwrap();
    let cwd = dir.path().to_path_buf();
    let socket = cwd.join("admin.sock");
    let d = Daemon::start_in(
        dir,
        "switchctl.toml".into(),
        Some(cwd.clone()),
        socket,
        ([127, 0, 0, 1], port).into(),
    );
    deploy_ok(&d, "v1").await;
    assert!(cwd.join("state/state.json").exists());

    let load = Load::start(d.proxy, 5);
    let parent = cwd.parent().unwrap();
    let config = format!("{}/switchctl.toml", cwd.file_name().unwrap().to_string_lossy());
    for args in [&["status"][..], &["deploy", "v2"][..]] {
        let out = std::process::Command::new(common::switchctl())
            .current_dir(parent)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?} from elsewhere: {}", text(&out));
    }
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chatty_upstreams_log_is_rotated_while_it_runs() {
    // 17 MB of output at start (past the 16 MiB bound), then the app.
    let service =
        common::shell_service("head -c 17000000 /dev/zero | tr '\\0' 'x'; echo; echo chatty-done; exec {app}");
    let d = Daemon::start("process", "timeout = \"30s\"", &service);
    deploy_ok(&d, "v1").await;
    let log = d.state_dir().join("logs/web-blue.log");
    let kept = d.state_dir().join("logs/web-blue.log.1");
    wait_for("the log to be rotated", Duration::from_secs(30), || async {
        kept.exists() && std::fs::metadata(&log).map(|m| m.len()).unwrap_or(u64::MAX) < 1_000_000
    })
    .await;
    let old = std::fs::read(&kept).unwrap();
    assert!(
        old.len() > 17_000_000,
        "the rotated copy holds the output: {} bytes",
        old.len()
    );
    assert!(String::from_utf8_lossy(&old[old.len() - 4096..]).contains("chatty-done"));
    // The upstream still runs and serves, and the daemon said what it did.
    assert_eq!(d.get("/").await.0, 200);
    assert!(d.log().contains("web-blue.log.1"), "{}", d.log_tail(20));
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_daemon_runs_the_allocators_background_thread() {
    const PURGER: &str = "jemalloc_bg_thd";
    // The daemon hands freed memory back through it.
    let d = daemon();
    let pid = d.status().await["daemon_pid"].as_u64().expect("status has daemon_pid") as u32;
    let names = thread_names(pid);
    assert!(names.iter().any(|n| n == PURGER), "daemon threads: {names:?}");

    // A command waiting on its answer has started none: a socket that
    // accepts and never answers holds the CLI there.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    // Killed on drop: also when an assertion below fails.
    let cli = tokio::process::Command::new(common::switchctl())
        .arg("--socket")
        .arg(&socket)
        .args(["flip", "back"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = cli.id().expect("the CLI is running");
    // Held open, so that the CLI keeps waiting for its answer.
    let accepted = std::cell::RefCell::new(None);
    wait_for(
        "the CLI to connect to the silent socket",
        Duration::from_secs(10),
        || async {
            accepted.replace(listener.accept().ok());
            accepted.borrow().is_some()
        },
    )
    .await;
    let names = thread_names(pid);
    assert!(!names.is_empty(), "the CLI's threads could not be read");
    assert!(!names.iter().any(|n| n == PURGER), "CLI threads: {names:?}");
}
