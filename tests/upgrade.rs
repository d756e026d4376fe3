//! `switchctl upgrade`: a new daemon takes the listening sockets while the
//! old one drains. Under load (keep-alive and fresh connections), with a
//! slow request and a WebSocket open, no request fails or stalls, the old
//! daemon finishes what it has and exits, and the new one serves and
//! deploys. A new daemon that cannot start changes nothing.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::{events, get, process_service, text, wait_for, Daemon, Load};

const HANG: &str = r#"HANG_HEALTH_VERSIONS = "v5""#;

fn daemon() -> Daemon {
    Daemon::start("process", "timeout = \"30s\"", &process_service("web", HANG))
}

async fn deploy_ok(d: &Daemon, tag: &str) {
    let out = d.cli(&["deploy", tag]).await;
    assert_eq!(out.status.code(), Some(0), "deploy {tag}: {}", text(&out));
}

async fn daemon_pid(d: &Daemon) -> i32 {
    d.status().await["daemon_pid"].as_i64().expect("status has daemon_pid") as i32
}

/// The whole upgrade, checked from the outside, on a daemon serving v1.
async fn upgrade_under_load(d: &mut Daemon) {
    let old_pid = daemon_pid(d).await;
    let keep_alive = Load::start(d.proxy, 10);
    let fresh = Load::start_fresh(d.proxy, 2);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.proxy))
        .await
        .expect("WebSocket through the proxy");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let proxy = d.proxy;
    let slow = tokio::spawn(async move { get(proxy, "/slow?ms=8000").await });
    // The slow request and the tunnel are in flight on the old daemon.
    wait_for("the slow request to reach v1", Duration::from_secs(30), || async {
        d.status().await["services"][0]["blue"]["in_flight"].as_u64() >= Some(2)
    })
    .await;

    let out = d.cli(&["upgrade", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let evs = events(&out);
    let done = evs.last().unwrap();
    assert_eq!(done["phase"], "done");
    assert_eq!(done["outcome"], "upgraded");
    let new_pid = daemon_pid(d).await;
    d.follow(new_pid);
    assert_ne!(new_pid, old_pid, "status answers from the new daemon");

    // No stall: new connections are served while the slow request still runs.
    for _ in 0..20 {
        assert_eq!(get(d.proxy, "/").await, (200, "v1\n".into()));
    }
    assert!(
        !slow.is_finished(),
        "requests after the upgrade completed while the slow one was in flight"
    );
    // The tunnel lives on in the old daemon's drain.
    ws.send(Message::text("during")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("during"));
    assert_eq!(slow.await.unwrap(), (200, "v1\n".into()), "the old daemon finished it");

    // At the end of the drain the WebSocket gets a close frame, not a bare EOF.
    let closing = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return Some(frame),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the drain ends");
    assert!(closing.is_some(), "the WebSocket ended with a close frame");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    assert!(!common::alive(old_pid));
    // The state_dir lock went over with the sockets and outlived the old daemon.
    let refused = d.another_daemon_on_the_same_state_dir().await;
    assert!(refused.contains(&format!("pid {new_pid}")), "{refused}");

    // The new daemon runs operations.
    deploy_ok(d, "v2").await;
    assert_eq!(get(d.proxy, "/").await, (200, "v2\n".into()));
    assert_eq!(daemon_pid(d).await, new_pid);
    assert!(
        d.log().contains("deployed v2"),
        "the new daemon logs where the old one did, after the old one is gone"
    );
    let (keep_alive, fresh) = (keep_alive.stop().await, fresh.stop().await);
    assert_eq!(keep_alive.failed, 0, "{keep_alive:?}");
    assert_eq!(fresh.failed, 0, "{fresh:?}");
    assert!(
        fresh.bodies.contains_key("v1") && fresh.bodies.contains_key("v2"),
        "{fresh:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_over_the_sockets_without_failing_or_stalling_a_request() {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    upgrade_under_load(&mut d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_activated_daemon_upgrades_on_the_socket_systemd_passed() {
    let mut d = Daemon::start_socket_activated("process", "timeout = \"30s\"", &process_service("web", HANG));
    deploy_ok(&d, "v1").await;
    upgrade_under_load(&mut d).await;
    // The new daemon can hand over again.
    let out = d.cli(&["upgrade"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = daemon_pid(&d).await;
    d.follow(pid);
    assert_eq!(get(d.proxy, "/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_starts_the_binary_now_installed_where_the_daemon_was_started_from() {
    let mut d = daemon();
    let bin = d.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = bin.join("switchctl");
    std::fs::copy(common::switchctl(), &installed).unwrap();
    d.kill9();
    d.exe = installed.clone();
    d.spawn();
    deploy_ok(&d, "v1").await;
    let old_pid = daemon_pid(&d).await;
    // A package upgrade: a new file takes the path; the old one lives on
    // only as the running daemon's deleted inode.
    let staged = bin.join("switchctl.new");
    if std::fs::hard_link(common::switchctl(), &staged).is_err() {
        std::fs::copy(common::switchctl(), &staged).unwrap();
    }
    std::fs::rename(&staged, &installed).unwrap();
    let old_exe = std::fs::read_link(format!("/proc/{old_pid}/exe")).unwrap();
    assert!(old_exe.to_string_lossy().ends_with("(deleted)"), "{old_exe:?}");

    let out = d.cli(&["upgrade"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let new_pid = daemon_pid(&d).await;
    d.follow(new_pid);
    assert_ne!(new_pid, old_pid);
    let new_exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(new_exe, installed, "the new daemon runs the installed file");
    assert_eq!(get(d.proxy, "/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_daemon_that_cannot_start_leaves_the_old_one_serving() {
    let d = daemon();
    deploy_ok(&d, "v1").await;
    let old_pid = daemon_pid(&d).await;
    let load = Load::start(d.proxy, 10);
    let good = d.config_text();
    std::fs::write(&d.config, format!("{good}\nthis is not toml\n")).unwrap();
    let socket = d.socket.display().to_string();
    let out = d.cli(&["--socket", &socket, "upgrade"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keeps serving"),
        "{}",
        text(&out)
    );
    let out = d.cli(&["--socket", &socket, "upgrade", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let done = events(&out).last().unwrap().clone();
    assert_eq!(done["outcome"], "failed");
    let why = done["message"].as_str().unwrap();
    assert!(why.contains("config"), "the new daemon's reason is shown: {why}");
    assert!(why.contains("keeps serving"), "{why}");

    std::fs::write(&d.config, good).unwrap();
    assert_eq!(daemon_pid(&d).await, old_pid);
    assert!(d.status().await["operation"].is_null(), "the lock is released");
    deploy_ok(&d, "v2").await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    let staged: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".upgrade-"))
        .collect();
    assert!(staged.is_empty(), "no staging socket left behind: {staged:?}");
}

/// A daemon serving v1, started from `<dir>/bin/switchctl` (the path a
/// package would replace).
async fn daemon_started_from_its_own_path() -> (Daemon, std::path::PathBuf) {
    let mut d = daemon();
    let bin = d.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let installed = bin.join("switchctl");
    if std::fs::hard_link(common::switchctl(), &installed).is_err() {
        std::fs::copy(common::switchctl(), &installed).unwrap();
    }
    d.kill9();
    d.exe = installed.clone();
    d.spawn();
    deploy_ok(&d, "v1").await;
    (d, installed)
}

/// Replace the binary at `path` with a shell script running `body`.
fn install_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_daemon_that_crashes_is_reported_with_its_last_output() {
    let (d, installed) = daemon_started_from_its_own_path().await;
    let old_pid = daemon_pid(&d).await;
    install_script(&installed, "echo 'thread main panicked: boom' >&2\nexit 101");
    let out = d.cli(&["upgrade", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let why = events(&out).last().unwrap()["message"].as_str().unwrap().to_string();
    assert!(why.contains("exited"), "{why}");
    assert!(
        why.contains("thread main panicked: boom"),
        "its stderr tail is shown: {why}"
    );
    assert_eq!(daemon_pid(&d).await, old_pid);
    assert!(
        d.log().contains("thread main panicked: boom"),
        "and logged by the old daemon"
    );
    assert_eq!(get(d.proxy, "/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_daemon_that_is_never_ready_is_killed_after_the_grace_period() {
    let (d, installed) = daemon_started_from_its_own_path().await;
    let old_pid = daemon_pid(&d).await;
    // The "new binary" hangs: it holds the sockets and never says ready.
    install_script(&installed, "exec sleep 300");

    let load = Load::start(d.proxy, 10);
    let out = d.cli(&["upgrade", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let evs = events(&out);
    let done = evs.last().unwrap();
    assert_eq!(done["outcome"], "failed");
    let why = done["message"].as_str().unwrap();
    assert!(why.contains("not ready within 30s"), "{why}");
    // The hung child (named in the progress) is gone.
    let child: i32 = evs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find_map(|m| m.strip_prefix("new daemon pid ")?.split(' ').next()?.parse().ok())
        .expect("the progress names the new daemon's pid");
    d.follow(child);
    assert!(!common::alive(child), "the late child was killed");

    assert_eq!(daemon_pid(&d).await, old_pid);
    assert!(d.status().await["operation"].is_null(), "the lock is released");
    deploy_ok(&d, "v2").await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(get(d.proxy, "/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_during_a_deploy_is_refused_with_exit_4_then_goes_through() {
    let mut d = daemon();
    deploy_ok(&d, "v1").await;
    let deploy = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(["deploy", "v5"])
        .env("DEPLOY_TIMEOUT", "5")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the deploy to hold the lock", Duration::from_secs(30), || async {
        !d.status().await["operation"].is_null()
    })
    .await;
    let out = d.cli(&["upgrade"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deploy of v5"), "{stderr}");
    let deploy = deploy.wait_with_output().await.unwrap();
    assert_eq!(deploy.status.code(), Some(1));
    // Once the deploy is over, the upgrade goes through. With nothing to
    // drain the old daemon exits at once, and the new one lives on.
    let out = d.cli(&["upgrade"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = daemon_pid(&d).await;
    d.follow(pid);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    assert_eq!(get(d.proxy, "/").await, (200, "v1\n".into()));
    assert_eq!(daemon_pid(&d).await, pid);
}
