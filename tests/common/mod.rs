//! Shared harness for the end-to-end tests: a real `switchctl proxy` daemon
//! in a temporary directory, the real CLI binary, and a load loop through the
//! proxy that counts failures. Everything started is stopped on drop, even
//! when a test fails.

#![allow(dead_code)]

pub mod docker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The CLI binary under test.
pub fn switchctl() -> &'static str {
    env!("CARGO_BIN_EXE_switchctl")
}

/// A free port for a daemon's public listener, below the kernel's
/// ephemeral range. Docker hands out published ports from that range
/// sequentially, and outgoing connections take theirs from it: a port the
/// kernel picked could be taken by another test's container while a daemon
/// of this one restarts, and the restarted daemon could not listen again.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_start > 12_000 {
        (10_000u16, ephemeral_start)
    } else {
        (ephemeral_start.saturating_add(30_000), 65_000)
    };
    let random = RandomState::new();
    for attempt in 0u32..1000 {
        let port = low + (random.hash_one(attempt) % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high} on 127.0.0.1");
}

/// The `testapp` binary of `tests/app`, built once per test binary. It is
/// another package's binary, so cargo does not build it for these tests:
/// the harness asks cargo for it (in the same target directory).
pub fn testapp() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(env!("CARGO"))
            .args(["build", "--offline", "-p", "switchctl-testapp", "--bin", "testapp"])
            .current_dir(root)
            .status()
            .expect("run cargo to build the testapp");
        assert!(status.success(), "building the testapp failed");
        // The switchctl binary under test sits in the same profile directory.
        let dir = Path::new(switchctl()).parent().expect("the binary has a directory");
        dir.join("testapp")
    })
}

/// `[[service]]` running the testapp with the process driver. `env` is a
/// TOML inline table body, e.g. `FAIL_HEALTH_VERSIONS = "v3"`.
pub fn process_service(name: &str, env: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
command = ["{exe}", "--bind", "127.0.0.1", "--port", "{{port}}", "--version", "{{tag}}"]
env = {{ {env} }}
health = {{ path = "/health", timeout = "1s" }}
"#,
        exe = testapp().display()
    )
}

/// `[[service]]` "web" with the process driver whose command is
/// `sh -c SCRIPT`; `{app}` in SCRIPT stands for the testapp serving
/// `{port}` at `{tag}`.
pub fn shell_service(script: &str) -> String {
    let app = format!(
        "'{}' --bind 127.0.0.1 --port {{port}} --version {{tag}}",
        testapp().display()
    );
    let script = script.replace("{app}", &app).replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"
[[service]]
name = "web"
command = ["sh", "-c", "{script}"]
health = {{ path = "/health", timeout = "1s" }}
"#
    )
}

/// A daemon under test.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub proxy: SocketAddr,
    child: Option<Child>,
    /// Process groups seen in the state file, stopped on drop.
    seen_pids: Mutex<Vec<i32>>,
    /// Extra environment for the daemon (e.g. a dead DOCKER_HOST).
    pub daemon_env: Vec<(String, String)>,
    /// A listening socket handed to every daemon start as systemd would
    /// (fd 3, `LISTEN_FDS=1`): it outlives the daemon, like a socket unit.
    pub inherited: Option<std::net::TcpListener>,
    /// Working directory of the daemon and the CLI (default: the test's).
    pub cwd: Option<PathBuf>,
    /// Daemons started by `switchctl upgrade` (not our children), killed on drop.
    successors: Mutex<Vec<i32>>,
    /// The binary the daemon is started from.
    pub exe: PathBuf,
}

impl Daemon {
    /// Write a config (`driver`, `[deploy]` body, services) and start the daemon.
    pub fn start(driver: &str, deploy: &str, services: &str) -> Daemon {
        Daemon::start_with("", driver, deploy, services)
    }

    /// As [`Daemon::start`], with extra top-level keys (e.g. `compose = ...`).
    pub fn start_with(top: &str, driver: &str, deploy: &str, services: &str) -> Daemon {
        Daemon::start_with_proxy(top, "", driver, deploy, services)
    }

    /// As [`Daemon::start_with`], with extra `[proxy]` keys (e.g. `metrics_listen`).
    pub fn start_with_proxy(top: &str, proxy: &str, driver: &str, deploy: &str, services: &str) -> Daemon {
        let mut d = Daemon::configure(top, proxy, driver, deploy, services);
        d.spawn();
        d
    }

    /// Write the config (`proxy` adds keys and tables after `[proxy]`'s
    /// own, e.g. `[proxy.tls]`) without starting the daemon: call
    /// [`Daemon::spawn`] once what it needs is up.
    pub fn configure(top: &str, proxy: &str, driver: &str, deploy: &str, services: &str) -> Daemon {
        let dir = tempfile::Builder::new().prefix("switchctl-test-").tempdir().unwrap();
        let port = free_port();
        let socket = dir.path().join("admin.sock");
        let config = dir.path().join("switchctl.toml");
        std::fs::write(
            &config,
            format!(
                r#"driver = "{driver}"
state_dir = "{state}"
{top}

[proxy]
listen = ["127.0.0.1:{port}"]
admin_socket = "{socket}"
drain_timeout = "10s"
workers = 2
{proxy}

[deploy]
health_check_interval = "100ms"
stop_timeout = "3s"
{deploy}
{services}"#,
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        Daemon::unspawned(dir, config, None, socket, ([127, 0, 0, 1], port).into())
    }

    /// Start the daemon on a config already written in `dir`: `config` is
    /// passed to `--config` as is (it may be relative to `cwd`), `socket`
    /// and `proxy` are where it will answer.
    pub fn start_in(
        dir: tempfile::TempDir,
        config: PathBuf,
        cwd: Option<PathBuf>,
        socket: PathBuf,
        proxy: SocketAddr,
    ) -> Daemon {
        let mut d = Daemon::unspawned(dir, config, cwd, socket, proxy);
        d.spawn();
        d
    }

    fn unspawned(
        dir: tempfile::TempDir,
        config: PathBuf,
        cwd: Option<PathBuf>,
        socket: PathBuf,
        proxy: SocketAddr,
    ) -> Daemon {
        Daemon {
            dir,
            config,
            socket,
            proxy,
            child: None,
            seen_pids: Mutex::new(Vec::new()),
            daemon_env: Vec::new(),
            inherited: None,
            cwd,
            successors: Mutex::new(Vec::new()),
            exe: PathBuf::from(switchctl()),
        }
    }

    /// As [`Daemon::start`], but the public socket is created here and
    /// passed in as systemd socket activation does.
    pub fn start_socket_activated(driver: &str, deploy: &str, services: &str) -> Daemon {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Written so the config's own listen address is free but unused.
        let mut d = Daemon::start_with("", driver, deploy, services);
        d.kill9();
        d.proxy = listener.local_addr().unwrap();
        d.inherited = Some(listener);
        d.spawn();
        d
    }

    /// Start (again) the daemon process and wait until its admin API answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(&self.exe);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("proxy")
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(listener) = &self.inherited {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = listener.as_raw_fd();
            cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
                    use std::os::fd::{BorrowedFd, IntoRawFd};
                    if fd != 3 {
                        // fd 3 must stay open across exec: give up the OwnedFd.
                        let _ = nix::unistd::dup2_raw(BorrowedFd::borrow_raw(fd), 3)?.into_raw_fd();
                    }
                    fcntl(BorrowedFd::borrow_raw(3), FcntlArg::F_SETFD(FdFlag::empty()))?;
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                // The end of the log says why; CI output keeps only so much.
                panic!(
                    "daemon exited at start ({status}); the end of its log:\n{}",
                    self.log_tail(30)
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon not up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_text(&self) -> String {
        let path = match &self.cwd {
            Some(cwd) => cwd.join(&self.config),
            None => self.config.clone(),
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL the daemon (upstreams survive, as after a crash).
    pub fn kill9(&mut self) {
        self.remember_pids();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `sig` to the daemon process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            signal(c.id() as i32, sig);
        }
    }

    /// SIGTERM the daemon and wait for it; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.remember_pids();
        let mut c = self.child.take()?;
        signal(c.id() as i32, libc_sigterm());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// The daemon started by `switchctl upgrade` as `pid` now serves: stop
    /// it on drop too.
    pub fn follow(&self, pid: i32) {
        self.successors.lock().unwrap().push(pid);
    }

    /// Wait for the daemon process this harness started to exit (after an
    /// upgrade it drains, then exits); its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Run the CLI with this daemon's config.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[]).await
    }

    /// Run the CLI with extra environment variables.
    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.remember_pids();
        let mut cmd = tokio::process::Command::new(switchctl());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let out = cmd
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("DEPLOY_TIMEOUT")
            .env_remove("HEALTH_CHECK_INTERVAL")
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        self.remember_pids();
        out
    }

    /// Start another daemon on this one's state_dir (its own ports and
    /// socket): it must be refused; its stderr.
    pub async fn another_daemon_on_the_same_state_dir(&self) -> String {
        let other = self.dir.path().join("other.toml");
        let config = self
            .config_text()
            .replace(
                &self.socket.display().to_string(),
                &self.dir.path().join("other.sock").display().to_string(),
            )
            .replace(
                &format!("127.0.0.1:{}", self.proxy.port()),
                &format!("127.0.0.1:{}", free_port()),
            );
        std::fs::write(&other, config).unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(switchctl())
                .arg("--config")
                .arg(&other)
                .arg("proxy")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the other daemon exits at once")
        .unwrap();
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `status --json`
    pub async fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The state file as JSON.
    pub fn state(&self) -> Value {
        let path = self.dir.path().join("state").join("state.json");
        std::fs::read(path)
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or(Value::Null)
    }

    /// Pids of the process-driver upstreams in the state file.
    pub fn pids(&self) -> Vec<i32> {
        let state = self.state();
        let mut pids = Vec::new();
        if let Some(colors) = state["colors"].as_object() {
            for release in colors.values() {
                if let Some(services) = release["services"].as_object() {
                    for up in services.values() {
                        if let Some(pid) = up["handle"]["pid"].as_i64() {
                            pids.push(pid as i32);
                        }
                    }
                }
            }
        }
        pids
    }

    fn remember_pids(&self) {
        let mut seen = self.seen_pids.lock().unwrap();
        for pid in self.pids() {
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
    }

    /// GET `path` through the proxy; `(status, body)`.
    pub async fn get(&self, path: &str) -> (u16, String) {
        get(self.proxy, path).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.successors.lock().unwrap().iter() {
            signal(*pid, 9);
        }
        // Upstreams live in their own process groups: stop every group seen.
        for pid in self.seen_pids.lock().unwrap().iter() {
            signal(-pid, 9);
        }
        if self.config_text().contains("driver = \"docker\"") {
            docker::remove_containers(&self.state_dir());
        }
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// kill(2) through the `kill` command, so the harness needs no extra crate.
pub fn signal(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

pub fn alive(pid: i32) -> bool {
    // A zombie has been stopped already; only count live processes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One GET through the proxy on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "test.local")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A load loop: `clients` keep-alive connections sending GET / through the
/// proxy, bounded in requests and time.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<BTreeMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load loop saw.
#[derive(Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: usize,
    pub failures: Vec<String>,
    /// Every failure, counted by its text.
    pub failure_kinds: BTreeMap<String, u64>,
    pub bodies: BTreeMap<String, u64>,
}

const LOAD_MAX_REQUESTS: u64 = 3_000_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(240);

impl Load {
    /// `clients` keep-alive connections.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::start_with(addr, clients, false, "/")
    }

    /// As [`Load::start`], sending `GET path`.
    pub fn start_path(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        Load::start_with(addr, clients, false, path)
    }

    /// `clients` loops that open a new connection for every request.
    pub fn start_fresh(addr: SocketAddr, clients: usize) -> Load {
        Load::start_with(addr, clients, true, "/")
    }

    /// As [`Load::start_fresh`], sending `GET path`.
    pub fn start_fresh_path(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        Load::start_with(addr, clients, true, path)
    }

    fn start_with(addr: SocketAddr, clients: usize, fresh: bool, path: &'static str) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            bodies: Arc::new(Mutex::new(BTreeMap::new())),
            tasks: Vec::new(),
        };
        let started = Instant::now();
        for _ in 0..clients {
            let (stop, sent, failures, bodies) = (
                load.stop.clone(),
                load.sent.clone(),
                load.failures.clone(),
                load.bodies.clone(),
            );
            load.tasks.push(tokio::spawn(async move {
                let fail = |why: String| failures.lock().unwrap().push(why);
                'connect: while !stop.load(Ordering::Relaxed) {
                    let stream = match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => s,
                        Err(e) => {
                            fail(format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < LOAD_MAX_TIME
                        && sent.load(Ordering::Relaxed) < LOAD_MAX_REQUESTS
                    {
                        if sender.ready().await.is_err() {
                            // The proxy closed an idle keep-alive connection: reconnect.
                            continue 'connect;
                        }
                        let req = http::Request::get(path)
                            .header("host", "test.local")
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        sent.fetch_add(1, Ordering::Relaxed);
                        match sender.send_request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                match resp.into_body().collect().await {
                                    Ok(b) if status.is_success() => {
                                        let body = String::from_utf8_lossy(&b.to_bytes()).trim().to_string();
                                        *bodies.lock().unwrap().entry(body).or_default() += 1;
                                    }
                                    Ok(b) => fail(format!("{status}: {}", String::from_utf8_lossy(&b.to_bytes()))),
                                    Err(e) => fail(format!("body: {e}")),
                                }
                            }
                            Err(e) => {
                                fail(format!("request: {e}"));
                                continue 'connect;
                            }
                        }
                        if fresh {
                            // Paced: each closed connection holds a port in TIME_WAIT.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue 'connect;
                        }
                    }
                    return;
                }
            }));
        }
        load
    }

    /// Stop the loop and report.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        let mut failure_kinds = BTreeMap::new();
        for f in &failures {
            *failure_kinds.entry(f.trim().to_string()).or_default() += 1;
        }
        LoadReport {
            failure_kinds,
            sent: self.sent.load(Ordering::Relaxed),
            failed: failures.len(),
            failures: failures.into_iter().take(10).collect(),
            bodies: self.bodies.lock().unwrap().clone(),
        }
    }
}

/// Wait until `cond` holds, polling; panics after `limit` with `what`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Parse NDJSON output into events.
pub fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// One raw request to the daemon's admin API: `(status, body)`.
pub async fn admin(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "switchctl")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
