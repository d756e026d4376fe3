//! Hitless self-upgrade (`switchctl upgrade`, `systemctl reload switchctl`):
//! a new daemon process takes over the listening sockets while the old one
//! drains what it has, so that a new binary (or a restart) neither refuses
//! nor stalls a connection. The protocol follows cloudflare's tableflip and
//! shellflip:
//!
//! 1. The old daemon takes the operation lock (no deploy or flip meanwhile;
//!    one upgrade at a time) and starts the binary at the path it was itself
//!    started from, with the same config ([`Relaunch`]). The child inherits
//!    a `dup` of every listening socket (each worker's `SO_REUSEPORT` socket,
//!    plain and TLS, or the sockets systemd passed) on fds 3.., described by
//!    [`LISTEN_FDS`] and [`LISTEN_KINDS`], and one end of a control socket
//!    ([`CONTROL_FD`]).
//! 2. The child ([`Handoff`]) accepts on those sockets at once, loads the
//!    state (the old daemon, holding the lock, writes none), binds its admin
//!    socket at a temporary path beside the real one, recovers, and says
//!    `ready` on the control socket (or `failed <why>`).
//! 3. The old daemon renames the child's admin socket over its own (new CLI
//!    connections reach the child from then on) and answers `ack`; the child
//!    stops dying with it (below) and says `serving`; the old daemon stops
//!    accepting and drains: its sockets stay open in the child, so queued
//!    connections wait for the child instead of being reset. The child then
//!    tells systemd it is the main process (`MAINPID=`, `READY=1`; the unit
//!    needs `NotifyAccess=all`).
//! 4. A child that exits, says it failed, or is not ready within [`GRACE`]
//!    is killed; the old daemon releases the lock and keeps serving, and the
//!    caller learns why (exit 1): the child's words, else the tail of its
//!    stderr, which the old daemon copies to its own until the child takes
//!    over and writes there itself ([`STDERR_FD`]). Until its `ack`, the child dies with the
//!    old daemon (`PR_SET_PDEATHSIG`): a crash mid-upgrade never leaves two
//!    daemons, and the next start begins afresh.
//!
//! Any other port the daemon listens on (say, a metrics endpoint) must be
//! handed over the same way, with a kind of its own in [`LISTEN_KINDS`]: a
//! successor cannot bind a port its predecessor still holds, and would fail
//! its start (cleanly: the old daemon serves on).
//!
//! The environment variables and the control messages are the contract
//! between two versions of switchctl: change them only compatibly.
//!
//! The state directory: the old daemon stops writing state when it takes
//! the lock, before the child exists. Its flock on `state_dir/daemon.lock`
//! is handed over too: the child inherits the locked open file (a flock
//! belongs to the open file description, so both hold the same lock, and
//! no third daemon can take it at any moment). Neither side ever unlocks it
//! explicitly during the handoff: a failed child's exit leaves the old
//! daemon's lock alone, and the old daemon, once replaced, leaves it to the
//! child ([`StateLock::leave_to_successor`]).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use switchctl_proxy::{Proxy, WorkerListeners};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::controller::event::{Event, Outcome, Phase, Reporter};
use crate::controller::{Controller, Events, OperationGuard, Refused};

/// Env: how many listening sockets the child inherits, on fds 3, 4, ...
pub const LISTEN_FDS: &str = "SWITCHCTL_LISTEN_FDS";
/// Env: for each inherited socket, `plain:<worker>` or `tls:<worker>`.
pub const LISTEN_KINDS: &str = "SWITCHCTL_LISTEN_KINDS";
/// Env: the fd of the child's end of the control socket.
pub const CONTROL_FD: &str = "SWITCHCTL_UPGRADE_FD";
/// Env: the fd of the locked `state_dir/daemon.lock` (the one after the
/// control socket), when the old daemon holds that lock.
pub const STATE_LOCK_FD: &str = "SWITCHCTL_STATE_LOCK_FD";

/// Env: the fd of the old daemon's own stderr, which the child makes its
/// stderr once it has taken over (until then its stderr is a pipe the old
/// daemon copies to its own and keeps the tail of, for the caller).
pub const STDERR_FD: &str = "SWITCHCTL_STDERR_FD";

/// Lines of a failed child's output shown to the caller.
const TAIL_LINES: usize = 10;

/// How long a new daemon has to become ready before it is killed.
pub const GRACE: Duration = Duration::from_secs(30);

/// First inherited fd (after stdin, stdout, stderr).
const FIRST_FD: RawFd = 3;

/// How the running daemon was started, resolved at start: a package
/// upgrade replaces the binary at that path (while `/proc/self/exe` keeps
/// pointing at the old, deleted file), and the config path must not depend
/// on the working directory.
#[derive(Debug, Clone)]
pub struct Relaunch {
    /// The binary, as an absolute path (symlinks kept, so that an upgrade
    /// that moves a symlink is followed).
    pub exe: PathBuf,
    /// The config file, absolute.
    pub config: PathBuf,
}

impl Relaunch {
    /// Resolve argv[0] (against the working directory, or `PATH`) and
    /// `config_path` now.
    pub fn resolve(config_path: &Path) -> anyhow::Result<Relaunch> {
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        let exe = argv0
            .and_then(|a| find_exe(&a, &cwd))
            .or_else(|| {
                // Not found by name: the running file itself, while it exists.
                let p = std::fs::read_link("/proc/self/exe").ok()?;
                p.is_file().then_some(p)
            })
            .context("cannot find the switchctl binary this daemon runs (argv[0] and /proc/self/exe)")?;
        Ok(Relaunch {
            exe,
            config: cwd.join(config_path),
        })
    }

    /// The arguments of the new daemon.
    fn args(&self) -> Vec<OsString> {
        vec!["--config".into(), self.config.clone().into_os_string(), "proxy".into()]
    }
}

/// `argv0` as an absolute path: relative to `cwd` when it names a path,
/// else looked up in `PATH`.
fn find_exe(argv0: &Path, cwd: &Path) -> Option<PathBuf> {
    if argv0.components().count() > 1 || argv0.is_absolute() {
        let p = cwd.join(argv0);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| cwd.join(dir).join(argv0))
        .find(|p| p.is_file())
}

/// Where a new daemon binds its admin socket before the old one moves it
/// over `socket` (same directory, so the rename is atomic).
fn staging_socket(socket: &Path, pid: u32) -> PathBuf {
    let mut name = socket.file_name().map(OsString::from).unwrap_or_default();
    name.push(format!(".upgrade-{pid}"));
    socket.with_file_name(name)
}

/// The old daemon's side: starts a successor on request and says when it
/// has taken over.
pub struct Upgrader {
    controller: Arc<Controller>,
    proxy: Arc<Proxy>,
    /// How to start the successor, or why that is not known.
    relaunch: Result<Relaunch, String>,
    admin_socket: PathBuf,
    /// A handle on the locked `state_dir` lock file, for the successor.
    state_lock: Option<std::fs::File>,
    took_over: CancellationToken,
    /// The operation lock, kept once a successor took over: this daemon
    /// only drains from then on.
    held: Mutex<Option<OperationGuard>>,
}

/// Why a new daemon did not take over.
struct NotReady(String);

impl Upgrader {
    /// An upgrader for the daemon serving `proxy` with `controller`.
    pub fn new(
        controller: Arc<Controller>,
        proxy: Arc<Proxy>,
        relaunch: Result<Relaunch, String>,
        admin_socket: PathBuf,
        state_lock: Option<std::fs::File>,
    ) -> Arc<Upgrader> {
        Arc::new(Upgrader {
            controller,
            proxy,
            relaunch,
            admin_socket,
            state_lock,
            took_over: CancellationToken::new(),
            held: Mutex::new(None),
        })
    }

    /// Resolves once a new daemon has taken over; this one should then stop
    /// accepting, drain and exit.
    pub async fn took_over(&self) {
        self.took_over.cancelled().await
    }

    /// Start an upgrade: wait for start-up recovery, take the operation
    /// lock (or say who holds it), and run the upgrade as a task of its own;
    /// the caller gets its events.
    pub async fn begin(self: &Arc<Self>) -> Result<Events, Refused> {
        self.controller.recovered().await;
        let guard = self.controller.try_begin("upgrade", None).map_err(Refused::Busy)?;
        let (reporter, events) = Reporter::channel();
        let upgrader = self.clone();
        tokio::spawn(async move { upgrader.run(guard, reporter).await });
        Ok(events)
    }

    async fn run(&self, guard: OperationGuard, reporter: Reporter) {
        guard.phase(Phase::Upgrade);
        let old = std::process::id();
        let handed = match &self.relaunch {
            Ok(relaunch) => {
                reporter.info(
                    Phase::Upgrade,
                    None,
                    format!(
                        "starting a new daemon: {} --config {} proxy",
                        relaunch.exe.display(),
                        relaunch.config.display()
                    ),
                );
                self.hand_over(relaunch, &reporter).await
            }
            Err(e) => Err(NotReady(e.clone())),
        };
        match handed {
            Ok(new) => {
                // Keep the lock: nothing may change state behind the new daemon.
                *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
                self.took_over.cancel();
                reporter.info(
                    Phase::Drain,
                    None,
                    format!(
                        "the old daemon (pid {old}) stopped accepting and drains its open connections (up to drain_timeout)"
                    ),
                );
                reporter.send(Event::done(
                    Outcome::Upgraded,
                    format!("upgraded: pid {new} serves, pid {old} drains and exits"),
                ));
            }
            Err(NotReady(why)) => {
                drop(guard);
                reporter.send(Event::done(
                    Outcome::Failed,
                    format!("the new daemon did not take over: {why}; this daemon (pid {old}) keeps serving"),
                ));
            }
        }
    }

    /// Start the successor and wait until it is ready (its pid) or has failed.
    async fn hand_over(&self, relaunch: &Relaunch, reporter: &Reporter) -> Result<u32, NotReady> {
        let (mut child, control) = self.spawn_child(relaunch)?;
        let pid = child.id().unwrap_or_default();
        let tail = child.stderr.take().map(tee_tail);
        reporter.info(
            Phase::Upgrade,
            None,
            format!(
                "new daemon pid {pid} started with the listening sockets; waiting up to {}s for it to be ready",
                GRACE.as_secs()
            ),
        );
        let staging = staging_socket(&self.admin_socket, pid);
        let (read, mut write) = control.into_split();
        let mut lines = BufReader::new(read).lines();
        let deadline = tokio::time::Instant::now() + GRACE;
        let mut closed = false;
        let outcome = loop {
            tokio::select! {
                // A child that says why it failed, then exits: read its words first.
                biased;
                line = lines.next_line(), if !closed => match line {
                    Ok(Some(l)) if l == "ready" => break Ok(()),
                    Ok(Some(l)) => break Err(l.strip_prefix("failed ").unwrap_or(&l).to_string()),
                    // Its end closed: it is exiting, and its status says how.
                    Ok(None) | Err(_) => closed = true,
                },
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    break Err(format!("it exited ({status}) before it was ready; its log says why"));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(format!("not ready within {}s", GRACE.as_secs()));
                }
            }
        };
        let handed = match outcome {
            Ok(()) => self.move_admin_socket(&staging, &mut write, &mut lines).await,
            Err(e) => Err(e),
        };
        match handed {
            Ok(()) => {
                reporter.success(
                    Phase::Upgrade,
                    None,
                    format!("new daemon pid {pid} is ready and answers on the admin socket"),
                );
                Ok(pid)
            }
            Err(mut why) => {
                // Crash-safe: whatever state it reached, it goes; ours is intact.
                let _ = child.start_kill();
                let _ = child.wait().await;
                let _ = std::fs::remove_file(&staging);
                if let Some(tail) = tail {
                    // Its stderr ends with it; what it printed last says why.
                    let lines = tokio::time::timeout(Duration::from_secs(2), tail).await;
                    if let Ok(Ok(lines)) = lines.map(|j| j.map(|l| l.into_iter().collect::<Vec<_>>())) {
                        if !lines.is_empty() {
                            why = format!("{why}; its last output: {}", lines.join(" | "));
                        }
                    }
                }
                reporter.error(Phase::Upgrade, None, format!("new daemon pid {pid}: {why}"));
                Err(NotReady(why))
            }
        }
    }

    /// Put the new daemon's admin socket at the real path, tell it so, and
    /// wait until it no longer dies with this daemon (`serving`). Should it
    /// be gone by then, our own socket goes back.
    async fn move_admin_socket(
        &self,
        staging: &Path,
        control: &mut tokio::net::unix::OwnedWriteHalf,
        answers: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    ) -> Result<(), String> {
        let mut backup = self.admin_socket.clone().into_os_string();
        backup.push(format!(".old-{}", std::process::id()));
        let backup = PathBuf::from(backup);
        let _ = std::fs::remove_file(&backup);
        let linked = std::fs::hard_link(&self.admin_socket, &backup).is_ok();
        std::fs::rename(staging, &self.admin_socket).map_err(|e| {
            format!(
                "cannot move its admin socket {} over {}: {e}",
                staging.display(),
                self.admin_socket.display()
            )
        })?;
        let confirmed = match control.write_all(b"ack\n").await {
            Ok(()) => match tokio::time::timeout(GRACE, answers.next_line()).await {
                Ok(Ok(Some(l))) if l == "serving" => Ok(()),
                Ok(Ok(Some(l))) => Err(format!("it answered {l:?} instead of `serving`")),
                Ok(Ok(None) | Err(_)) => Err("it went away before taking over".to_string()),
                Err(_) => Err(format!("it did not confirm within {}s", GRACE.as_secs())),
            },
            Err(e) => Err(format!("it went away before taking over: {e}")),
        };
        if linked {
            if confirmed.is_err() {
                let _ = std::fs::rename(&backup, &self.admin_socket);
            } else {
                let _ = std::fs::remove_file(&backup);
            }
        }
        confirmed
    }

    /// Start the new daemon with every listening socket and the control socket.
    fn spawn_child(&self, relaunch: &Relaunch) -> Result<(tokio::process::Child, tokio::net::UnixStream), NotReady> {
        let listeners = match self.proxy.listeners() {
            Some(Ok(l)) => l,
            Some(Err(e)) => return Err(NotReady(format!("cannot duplicate the listening sockets: {e}"))),
            None => return Err(NotReady("this daemon is shutting down".into())),
        };
        let (ours, theirs) =
            StdUnixStream::pair().map_err(|e| NotReady(format!("cannot create the control socket: {e}")))?;
        let mut fds: Vec<RawFd> = Vec::new();
        let mut kinds: Vec<String> = Vec::new();
        for (kind, groups) in [("plain", &listeners.plain), ("tls", &listeners.tls)] {
            for (worker, group) in groups.iter().enumerate() {
                for l in group {
                    fds.push(l.as_raw_fd());
                    kinds.push(format!("{kind}:{worker}"));
                }
            }
        }
        let sockets = fds.len();
        fds.push(theirs.as_raw_fd());
        let state_lock = self.state_lock.as_ref().map(|f| {
            fds.push(f.as_raw_fd());
            (FIRST_FD + sockets as RawFd + 1).to_string()
        });
        // Without a handle on our stderr to give back, the child keeps ours.
        let own_stderr = std::io::stderr().as_fd().try_clone_to_owned().ok();
        let stderr_fd = own_stderr.as_ref().map(|fd| {
            fds.push(fd.as_raw_fd());
            (FIRST_FD + fds.len() as RawFd - 1).to_string()
        });
        let mut cmd = tokio::process::Command::new(&relaunch.exe);
        cmd.args(relaunch.args())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env(LISTEN_FDS, sockets.to_string())
            .env(LISTEN_KINDS, kinds.join(","))
            .env(CONTROL_FD, (FIRST_FD + sockets as RawFd).to_string())
            .env(STATE_LOCK_FD, state_lock.unwrap_or_default())
            .env(STDERR_FD, stderr_fd.as_deref().unwrap_or_default())
            .stdin(std::process::Stdio::null())
            .stderr(match stderr_fd {
                Some(_) => std::process::Stdio::piped(),
                None => std::process::Stdio::inherit(),
            })
            .kill_on_drop(false);
        let mut parked: Vec<RawFd> = vec![-1; fds.len()];
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls (prctl,
        // getppid, fcntl, dup2, close) on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Until it has taken over, the child dies with this daemon:
                // never two daemons after a crash mid-upgrade (systemd's
                // KillMode=process would leave it behind). It clears this
                // once told it took over.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent {
                    return Err(std::io::Error::other("the upgrading daemon is gone"));
                }
                // Park every fd above the target range first, so that placing
                // one on 3+i never overwrites another still to be placed.
                let above = FIRST_FD + fds.len() as RawFd;
                for (i, fd) in fds.iter().enumerate() {
                    parked[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
                    if parked[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in parked.iter().enumerate() {
                    // dup2 leaves the copy without FD_CLOEXEC: it survives exec.
                    if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(*fd);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            NotReady(format!(
                "cannot start {}: {e} (is the binary still installed there?)",
                relaunch.exe.display()
            ))
        })?;
        // Our copies close here; the child holds its own.
        drop((listeners, theirs, own_stderr));
        ours.set_nonblocking(true)
            .map_err(|e| NotReady(format!("control socket: {e}")))?;
        let control = tokio::net::UnixStream::from_std(ours).map_err(|e| NotReady(format!("control socket: {e}")))?;
        Ok((child, control))
    }
}

/// Copy a child's stderr to ours line by line while it lasts (the child
/// gives its stderr back to ours once it has taken over); the last
/// [`TAIL_LINES`] lines when it ends.
fn tee_tail(stderr: tokio::process::ChildStderr) -> tokio::task::JoinHandle<std::collections::VecDeque<String>> {
    tokio::spawn(async move {
        let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    })
}

/// The new daemon's side: what the old one handed over.
pub struct Handoff {
    listeners: Option<WorkerListeners>,
    state_lock: Option<std::fs::File>,
    /// The old daemon's stderr, ours once we have taken over.
    stderr: Option<OwnedFd>,
    control: StdUnixStream,
}

/// Tells the old daemon that this one failed to start; cheap to keep
/// beside the [`Handoff`] while it is used.
pub struct FailureReport(Option<StdUnixStream>);

impl FailureReport {
    /// Send `why` to the old daemon (best effort: it may be gone).
    pub fn failed(&self, why: &str) {
        if let Some(mut control) = self.0.as_ref() {
            let line = why.replace('\n', " ");
            let _ = control.write_all(format!("failed {line}\n").as_bytes());
        }
    }
}

impl Handoff {
    /// The sockets and control channel handed over by an upgrading daemon,
    /// if this process is its successor. Clears the variables and marks the
    /// fds close-on-exec, so that upstreams started later inherit neither.
    pub fn from_env() -> anyhow::Result<Option<Handoff>> {
        let Some(control) = std::env::var_os(CONTROL_FD) else {
            return Ok(None);
        };
        let count = std::env::var(LISTEN_FDS).unwrap_or_default();
        let kinds = std::env::var(LISTEN_KINDS).unwrap_or_default();
        let lock = std::env::var(STATE_LOCK_FD).unwrap_or_default();
        let stderr = std::env::var(STDERR_FD).unwrap_or_default();
        // At start, before the proxy's threads exist.
        for var in [CONTROL_FD, LISTEN_FDS, LISTEN_KINDS, STATE_LOCK_FD, STDERR_FD] {
            std::env::remove_var(var);
        }
        let control: RawFd = control
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|fd| *fd >= FIRST_FD)
            .with_context(|| format!("{CONTROL_FD}={control:?} is not a file descriptor"))?;
        let count: usize = count
            .parse()
            .with_context(|| format!("{LISTEN_FDS}={count:?} is not a number"))?;
        let kinds: Vec<&str> = kinds.split(',').filter(|k| !k.is_empty()).collect();
        anyhow::ensure!(
            kinds.len() == count && control == FIRST_FD + count as RawFd,
            "{LISTEN_FDS}={count}, {LISTEN_KINDS} and {CONTROL_FD}={control} do not agree"
        );
        let adopt = |fd: RawFd| -> anyhow::Result<()> {
            // SAFETY: fcntl on an fd number; fails cleanly if it is not open.
            let ok = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
            anyhow::ensure!(ok, "inherited fd {fd} is not open");
            Ok(())
        };
        let state_lock = match lock.as_str() {
            "" => None,
            fd => {
                let fd: RawFd = fd
                    .parse()
                    .ok()
                    .filter(|fd| *fd == control + 1)
                    .with_context(|| format!("{STATE_LOCK_FD}={fd:?} is not the fd after the control socket"))?;
                adopt(fd)?;
                // SAFETY: an open fd handed to this process for this use only.
                Some(unsafe { std::fs::File::from_raw_fd(fd) })
            }
        };
        let stderr = match stderr.as_str() {
            "" => None,
            fd => {
                let fd: RawFd = fd
                    .parse()
                    .ok()
                    .filter(|fd| *fd > control)
                    .with_context(|| format!("{STDERR_FD}={fd:?} is not an fd after the control socket"))?;
                adopt(fd)?;
                // SAFETY: an open fd handed to this process for this use only.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        adopt(control)?;
        // SAFETY: an open fd handed to this process for this use only.
        let control = unsafe { StdUnixStream::from_raw_fd(control) };
        let mut listeners = WorkerListeners::default();
        for (i, kind) in kinds.iter().enumerate() {
            let fd = FIRST_FD + i as RawFd;
            adopt(fd)?;
            // SAFETY: as above; a listening TCP socket by the protocol.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            let (tls, worker) = match kind.split_once(':') {
                Some(("plain", w)) => (false, w),
                Some(("tls", w)) => (true, w),
                _ => anyhow::bail!("{LISTEN_KINDS}: unknown socket kind {kind:?}"),
            };
            let worker: usize = worker
                .parse()
                .ok()
                .filter(|w| *w < count)
                .with_context(|| format!("{LISTEN_KINDS}: bad worker in {kind:?}"))?;
            let groups = if tls { &mut listeners.tls } else { &mut listeners.plain };
            if groups.len() <= worker {
                groups.resize_with(worker + 1, Vec::new);
            }
            groups[worker].push(l);
        }
        // Workers with TLS but no plain sockets (or the reverse) still line up.
        let workers = listeners.plain.len().max(listeners.tls.len());
        listeners.plain.resize_with(workers, Vec::new);
        listeners.tls.resize_with(workers, Vec::new);
        Ok(Some(Handoff {
            listeners: Some(listeners),
            state_lock,
            stderr,
            control,
        }))
    }

    /// A way to report a failure to start, kept apart from the handoff.
    pub fn failure_report(&self) -> FailureReport {
        FailureReport(self.control.try_clone().ok())
    }

    /// The inherited, locked `state_dir` lock file (once).
    pub fn take_state_lock(&mut self) -> Option<std::fs::File> {
        self.state_lock.take()
    }

    /// The inherited listening sockets (once).
    pub fn take_listeners(&mut self) -> Option<WorkerListeners> {
        self.listeners.take()
    }

    /// Where to bind the admin socket: a staging path the old daemon moves
    /// over `socket` once this one is ready.
    pub fn admin_socket(&self, socket: &Path) -> PathBuf {
        staging_socket(socket, std::process::id())
    }

    /// Say `ready`, wait for the old daemon to move the admin socket into
    /// place and stop accepting, then tell systemd this is the main process.
    pub async fn ready(self) -> anyhow::Result<()> {
        self.control.set_nonblocking(true)?;
        let mut control = tokio::net::UnixStream::from_std(self.control)?;
        control
            .write_all(b"ready\n")
            .await
            .context("the old daemon went away")?;
        let mut answer = String::new();
        let mut reader = BufReader::new(&mut control);
        let read = tokio::time::timeout(GRACE * 2, reader.read_line(&mut answer)).await;
        anyhow::ensure!(
            matches!(read, Ok(Ok(_))) && answer.trim() == "ack",
            "the old daemon went away before handing over; exiting (the next start begins afresh)"
        );
        // From now on this is the daemon: it outlives the old one, which
        // waits for this word before it may exit; and it writes its log
        // where the old one did, not into a pipe that dies with it.
        // SAFETY: prctl with integer arguments; dup2 of an fd we own onto 2.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            if let Some(stderr) = &self.stderr {
                libc::dup2(stderr.as_raw_fd(), 2);
            }
        }
        control
            .write_all(b"serving\n")
            .await
            .context("the old daemon went away before handing over")?;
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::MainPid(std::process::id()),
                sd_notify::NotifyState::Ready,
            ],
        );
        Ok(())
    }
}

/// The daemon's lock on `state_dir`: taken at start, or handed over by the
/// daemon this one succeeds (the same open file, so the same flock).
pub enum StateLock {
    /// Locked by this daemon; unlocked when dropped.
    Own(nix::fcntl::Flock<std::fs::File>),
    /// The predecessor's locked file; the lock lasts while any daemon holds
    /// the file open, and dropping it only closes this handle.
    Inherited(std::fs::File),
}

impl StateLock {
    /// Another handle on the locked file, to hand to a successor.
    pub fn handle(&self) -> Option<std::fs::File> {
        let file: &std::fs::File = match self {
            StateLock::Own(lock) => lock,
            StateLock::Inherited(file) => file,
        };
        match file.try_clone() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot keep a handle on the state_dir lock for an upgrade: {e}");
                None
            }
        }
    }

    /// A successor took over: it holds the same lock, so this daemon must
    /// not unlock it on the way out (`Flock`'s drop would, for both).
    pub fn leave_to_successor(self) {
        match self {
            // The handle closes when the process exits, a moment from now.
            StateLock::Own(lock) => std::mem::forget(lock),
            StateLock::Inherited(file) => drop(file),
        }
    }

    /// Record this daemon's pid in the lock file (the holder's name in a
    /// refusal), without moving the offset the predecessor shares.
    pub fn record_pid(&self) {
        use std::os::unix::fs::FileExt;
        if let StateLock::Inherited(file) = self {
            let pid = std::process::id().to_string();
            if file.set_len(0).is_ok() {
                let _ = file.write_all_at(pid.as_bytes(), 0);
            }
        }
    }
}

/// Start the data plane on the sockets an upgrading daemon handed over.
pub fn adopt(
    config: &crate::config::Config,
    listeners: WorkerListeners,
    tls: Option<switchctl_proxy::TlsConfig>,
    table: switchctl_proxy::RouteTable,
) -> anyhow::Result<Proxy> {
    Proxy::from_worker_listeners(config.proxy.proxy_config(), listeners, tls, table)
        .context("cannot serve on the sockets the old daemon handed over")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_argv0_is_made_absolute_and_a_bare_name_is_found_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("switchctl"), "").unwrap();
        assert_eq!(
            find_exe(Path::new("bin/switchctl"), dir.path()),
            Some(dir.path().join("bin/switchctl"))
        );
        assert_eq!(find_exe(Path::new("bin/missing"), dir.path()), None);
    }

    #[test]
    fn the_staging_socket_sits_beside_the_real_one() {
        assert_eq!(
            staging_socket(Path::new("/run/switchctl/switchctl.sock"), 42),
            PathBuf::from("/run/switchctl/switchctl.sock.upgrade-42")
        );
    }
}
