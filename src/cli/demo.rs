//! `switchctl demo`: a whole blue/green cycle on loopback with no Docker.
//! In a temporary directory it writes a config for the process driver,
//! starts the daemon, deploys v1, deploys v2 while a load loop runs through
//! the proxy, deploys a broken v3 that is rolled back (it took the standby
//! slot), rolls back to v1, flips back to v2, prints a summary (requests,
//! failures, timings) and removes everything it made.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::deploy::stream;
use super::exit;
use super::output::{error_line, Renderer};
use crate::admin::api::StopAllAnswer;
use crate::admin::client::Client;
use crate::admin::{DeployRequest, RollbackRequest};
use crate::controller::event::Outcome;

/// Concurrent keep-alive clients in the load loop.
const LOAD_CLIENTS: usize = 8;
/// Upper bounds on the load loop, whatever happens.
const LOAD_MAX_REQUESTS: u64 = 2_000_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(120);

/// Counts of the load loop.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    failed: AtomicU64,
    by_version: [AtomicU64; 3],
    stop: AtomicBool,
}

/// What the demo started, removed on drop even when a step fails.
struct Demo {
    dir: tempfile::TempDir,
    socket: PathBuf,
    daemon: Option<std::process::Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The daemon leaves upstreams running by design; the demo asks it to
        // stop them before stopping it, on a thread of its own since this may
        // run inside the runtime.
        if self.daemon.is_some() {
            let socket = self.socket.clone();
            let stopper = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                let client = Client::new(&socket);
                let stop = rt.block_on(client.post::<StopAllAnswer>("/v1/stop-all", &serde_json::json!({})));
                if let Err(e) = stop {
                    eprintln!("{}", error_line(&format!("demo: could not stop the upstreams: {e}")));
                }
            });
            let _ = stopper.join();
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(daemon.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_config(dir: &Path, port: u16) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = dir.join("switchctl.toml");
    let text = format!(
        r#"# written by `switchctl demo`
driver = "process"
state_dir = "{state}"

[proxy]
listen = ["127.0.0.1:{port}"]
admin_socket = "{socket}"
drain_timeout = "5s"

[deploy]
timeout = "5s"
health_check_interval = "200ms"
standby = "keep"

[[service]]
name = "web"
command = ["{exe}", "demo-app", "--bind", "127.0.0.1", "--port", "{{port}}", "--version", "{{tag}}"]
env = {{ FAIL_HEALTH_VERSIONS = "v3" }}
health = {{ path = "/health", timeout = "1s" }}
"#,
        state = dir.join("state").display(),
        socket = dir.join("switchctl.sock").display(),
        exe = exe.display(),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn load_client(addr: SocketAddr, load: Arc<Load>, started: Instant) {
    let versions = [&b"v1\n"[..], b"v2\n", b"v3\n"];
    'reconnect: while !load.stop.load(Ordering::Relaxed) {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            load.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        loop {
            if load.stop.load(Ordering::Relaxed)
                || started.elapsed() > LOAD_MAX_TIME
                || load.sent.load(Ordering::Relaxed) >= LOAD_MAX_REQUESTS
            {
                return;
            }
            if sender.ready().await.is_err() {
                continue 'reconnect;
            }
            let req = http::Request::get("/")
                .header("host", "demo.local")
                .body(Empty::<Bytes>::new());
            let Ok(req) = req else { return };
            load.sent.fetch_add(1, Ordering::Relaxed);
            let body = match sender.send_request(req).await {
                Ok(resp) if resp.status().is_success() => resp.into_body().collect().await.ok().map(|b| b.to_bytes()),
                _ => None,
            };
            match body.and_then(|b| versions.iter().position(|v| *v == b.as_ref())) {
                Some(i) => load.by_version[i].fetch_add(1, Ordering::Relaxed),
                None => load.failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// `switchctl demo`
pub async fn run() -> i32 {
    match demo().await {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILED,
        Err(e) => {
            eprintln!("{}", error_line(&format!("demo: {e:#}")));
            exit::FAILED
        }
    }
}

async fn demo() -> anyhow::Result<bool> {
    use anyhow::Context;
    let dir = tempfile::Builder::new().prefix("switchctl-demo-").tempdir()?;
    let port = free_port()?;
    let config_path = write_config(dir.path(), port)?;
    let socket = dir.path().join("switchctl.sock");
    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let daemon = std::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config_path)
        .arg("proxy")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the daemon")?;
    let mut demo = Demo {
        dir,
        socket: socket.clone(),
        daemon: Some(daemon),
    };
    let client = Client::new(&socket);
    let ready = Instant::now();
    while client.get::<serde_json::Value>("/v1/status").await.is_err() {
        if let Some(Ok(Some(status))) = demo.daemon.as_mut().map(|d| d.try_wait()) {
            let log = std::fs::read_to_string(demo.dir.path().join("daemon.log")).unwrap_or_default();
            anyhow::bail!("the daemon exited ({status}):\n{log}");
        }
        if ready.elapsed() > Duration::from_secs(15) {
            anyhow::bail!("the daemon did not answer on {} within 15s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    println!(
        "switchctl demo: daemon up, proxy on http://{proxy}, files in {}",
        demo.dir.path().display()
    );
    let renderer = Renderer::new(false);
    let deploy = |tag: &str| DeployRequest {
        tag: tag.into(),
        timeout_secs: None,
        health_check_interval_secs: None,
        no_watch: false,
    };

    step("1. deploy v1 (the first release: nothing to switch from)");
    let v1 = stream(&client, "/v1/deploy", &deploy("v1"), renderer).await?;

    step("2. load on, deploy v2 while requests keep flowing");
    let load = Arc::new(Load::default());
    let started = Instant::now();
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| tokio::spawn(load_client(proxy, load.clone(), started)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let v2 = stream(&client, "/v1/deploy", &deploy("v2"), renderer).await?;
    let v2_took = t.elapsed();

    step("3. deploy v3, whose health check fails: it is rolled back, v2 keeps serving");
    let t = Instant::now();
    let v3 = stream(&client, "/v1/deploy", &deploy("v3"), renderer).await?;
    let v3_took = t.elapsed();

    step("4. rollback: v3 took the standby slot, so v1 is redeployed, health-gated");
    let rollback = RollbackRequest {
        tag: None,
        timeout_secs: None,
        health_check_interval_secs: None,
    };
    let t = Instant::now();
    let back = stream(&client, "/v1/rollback", &rollback, renderer).await?;
    let back_took = t.elapsed();

    step("5. flip back to v2, kept warm as standby");
    let t = Instant::now();
    let flip = stream(&client, "/v1/flip-back", &serde_json::json!({}), renderer).await?;
    let flip_took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    let sent = load.sent.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    let [a, b, c] = &load.by_version;
    let expected = [
        (v1, Outcome::Deployed),
        (v2, Outcome::Deployed),
        (v3, Outcome::RolledBack),
        (back, Outcome::Deployed),
        (flip, Outcome::Flipped),
    ];
    let as_expected = expected.iter().all(|(got, want)| *got == Some(*want));
    step("summary");
    println!(
        "requests sent through the proxy: {sent} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "answered by v1: {}, v2: {}, v3: {}",
        a.load(Ordering::Relaxed),
        b.load(Ordering::Relaxed),
        c.load(Ordering::Relaxed)
    );
    println!("failed: {failed}");
    println!("deploy v2 (start, health, flip, drain): {} ms", v2_took.as_millis());
    println!("failed deploy v3, detected and rolled back: {} ms", v3_took.as_millis());
    println!("rollback to v1 (a health-gated deploy): {} ms", back_took.as_millis());
    println!(
        "flip back to v2, end to end: {:.1} ms",
        flip_took.as_secs_f64() * 1000.0
    );
    let ok = as_expected && failed == 0 && c.load(Ordering::Relaxed) == 0;
    if ok {
        println!("\nzero failed requests across deploys, a failed deploy, a rollback and a flip back.");
    } else {
        println!(
            "\nthe demo did not go as expected: outcomes {:?}",
            expected.map(|(g, _)| g)
        );
    }
    drop(demo);
    Ok(ok)
}
