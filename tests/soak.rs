//! Soak: continuous load of every kind (keep-alive and fresh connections,
//! slow requests, WebSocket sessions) across more than 100 operations:
//! deploys, failed deploys (an upstream that exits at start, one that never
//! gets healthy), flips back, rollbacks, one proxy restart on a
//! socket-activated listener and one hitless self-upgrade. No request
//! fails, no response ever comes from a release that was not healthy, and
//! the daemon's file descriptors and memory stay flat (both are printed).
//! Bounded: a fixed number of operations, each load loop bounded in time.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::{process_service, text, Daemon, Load};

/// Releases that must never serve: one exits at start, one never passes
/// its health check.
const BROKEN: &str = r#"EXIT_AT_START_VERSIONS = "bad-exit", FAIL_HEALTH_VERSIONS = "bad-health""#;
/// Cycles of five operations each (deploy, flip back, flip back, failed
/// deploy, rollback).
const CYCLES: usize = 20;
/// No loop outlives this, whatever happens to the test.
const LOOP_LIMIT: Duration = Duration::from_secs(600);

/// The daemon's open file descriptors and resident memory (KiB).
struct Usage {
    fds: usize,
    rss_kib: u64,
}

fn usage(pid: i32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Usage { fds, rss_kib }
}

async fn daemon_pid(d: &Daemon) -> i32 {
    d.status().await["daemon_pid"].as_i64().expect("status has daemon_pid") as i32
}

/// A loop of WebSocket echo sessions, each short so that no drain waits
/// for long. Counts sessions and failures, and the release of each.
struct WebSockets {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    versions: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebSockets {
    fn start(d: &Daemon) -> WebSockets {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let proxy = d.proxy;
        let started = std::time::Instant::now();
        let task = tokio::spawn({
            let (stop, done, failures, versions) = (stop.clone(), done.clone(), failures.clone(), versions.clone());
            async move {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LOOP_LIMIT {
                    match ws_session(proxy).await {
                        Ok(version) => versions.lock().unwrap().push(version),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        WebSockets {
            stop,
            done,
            failures,
            versions,
            task,
        }
    }

    async fn stop(self) -> (u64, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failures = self.failures.lock().unwrap().clone();
        let versions = self.versions.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures, versions)
    }
}

/// One WebSocket session: three echoes 50 ms apart, then a clean close.
async fn ws_session(proxy: std::net::SocketAddr) -> Result<String, String> {
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws"))
        .await
        .map_err(|e| format!("WebSocket connect: {e}"))?;
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .ok_or("the 101 names no x-version")?
        .to_string();
    for i in 0..3 {
        let msg = Message::text(format!("m{i}"));
        ws.send(msg.clone()).await.map_err(|e| format!("WebSocket send: {e}"))?;
        match ws.next().await {
            Some(Ok(echo)) if echo == msg => {}
            other => return Err(format!("WebSocket echo {i}: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.close(None).await.map_err(|e| format!("WebSocket close: {e}"))?;
    Ok(version)
}

async fn run(d: &Daemon, args: &[&str], expect: i32) {
    let out = d.cli(args).await;
    assert_eq!(out.status.code(), Some(expect), "{args:?}: {}\n{}", text(&out), d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_operations_under_mixed_load_fail_no_request_and_leak_nothing() {
    let deploy = "timeout = \"3s\"\nstandby = \"keep\"";
    let mut d = Daemon::start_socket_activated("process", deploy, &process_service("web", BROKEN));
    run(&d, &["deploy", "v1"], 0).await;

    let keep_alive = Load::start(d.proxy, 6);
    let fresh = Load::start_fresh(d.proxy, 2);
    let slow = Load::start_fresh_path(d.proxy, 2, "/slow?ms=200");
    let websockets = WebSockets::start(&d);
    let mut ops = 0;

    // A proxy restart, as `systemctl restart` does on the socket systemd
    // keeps: new connections wait in the backlog meanwhile.
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    d.spawn();
    ops += 1;
    run(&d, &["deploy", "v2"], 0).await;
    ops += 1;

    // A hitless self-upgrade: the old daemon drains, the new one serves.
    run(&d, &["upgrade"], 0).await;
    let pid = daemon_pid(&d).await;
    d.follow(pid);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    ops += 1;

    let mut samples = Vec::new();
    let mut healthy = vec!["v1".to_string(), "v2".to_string()];
    for cycle in 0..CYCLES {
        let tag = format!("v{}", cycle + 3);
        run(&d, &["deploy", &tag], 0).await;
        healthy.push(tag);
        run(&d, &["flip", "back"], 0).await;
        run(&d, &["flip", "back"], 0).await;
        let broken = if cycle % 5 == 4 { "bad-health" } else { "bad-exit" };
        run(&d, &["deploy", broken], 1).await;
        run(&d, &["rollback"], 0).await;
        ops += 5;
        samples.push(usage(pid));
    }

    let keep_alive = keep_alive.stop().await;
    let fresh = fresh.stop().await;
    let slow = slow.stop().await;
    let (ws_done, ws_failures, ws_versions) = websockets.stop().await;
    let after = usage(pid);

    let (first, last) = (&samples[1], samples.last().unwrap());
    println!(
        "soak: {ops} operations; {} keep-alive and {} fresh-connection requests, {} slow requests, \
         {ws_done} WebSocket sessions; daemon fds {} -> {} (after the load: {}), RSS {} -> {} KiB \
         (after the load: {} KiB)",
        keep_alive.sent,
        fresh.sent,
        slow.sent,
        first.fds,
        last.fds,
        after.fds,
        first.rss_kib,
        last.rss_kib,
        after.rss_kib
    );
    assert!(ops >= 100, "{ops} operations");
    assert_eq!(keep_alive.failed, 0, "{keep_alive:?}");
    assert_eq!(fresh.failed, 0, "{fresh:?}");
    assert_eq!(slow.failed, 0, "{slow:?}");
    assert!(ws_failures.is_empty(), "{ws_failures:?}");
    assert!(ws_done > 0 && slow.sent > 0 && keep_alive.sent > 0 && fresh.sent > 0);
    // Only releases that passed their health check ever answered.
    let served = keep_alive
        .bodies
        .keys()
        .chain(fresh.bodies.keys())
        .chain(slow.bodies.keys())
        .chain(ws_versions.iter());
    for body in served {
        assert!(
            healthy.contains(body),
            "a response from {body}, which never was healthy"
        );
    }
    // Flat: what 95 operations add is bounded by what the daemon holds for
    // the load itself, not by the number of operations.
    assert!(
        last.fds <= first.fds + 16,
        "daemon fds grew from {} to {} over the operations",
        first.fds,
        last.fds
    );
    assert!(
        last.rss_kib <= first.rss_kib + first.rss_kib / 2 + 4096,
        "daemon RSS grew from {} to {} KiB over the operations",
        first.rss_kib,
        last.rss_kib
    );
}
