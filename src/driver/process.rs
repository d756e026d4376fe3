//! The process driver: each upstream is a local process group, started from
//! the service's `command` with `{port}`, `{tag}` and `{color}` filled in, on
//! a free loopback port switchctl picks. Output goes to
//! `<state_dir>/logs/<service>-<color>.log`, appended to: each start writes
//! a header line first, so a crash's output survives the restart that
//! follows it, and [`ProcessDriver::logs`] shows the latest run (`logs.rs`
//! keeps them bounded). Processes run in their own group
//! so they outlive a daemon restart and are stopped as a whole (SIGTERM,
//! then SIGKILL). Each carries its own record in its environment
//! (`SWITCHCTL_INSTANCE`, `SWITCHCTL_SERVICE`, `SWITCHCTL_COLOR`,
//! `SWITCHCTL_TAG`, `SWITCHCTL_PORT`): a scan of `/proc` finds the ones a
//! crash left unrecorded (orphans), and rebuilds a lost state.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{logs, DriverError, RunState, StartSpec};
use crate::config::{Config, ServiceConfig};
use crate::release::{Color, Handle, UpstreamRecord};

/// Runs upstreams as local processes.
#[derive(Debug)]
pub struct ProcessDriver {
    logs: PathBuf,
    /// The owning instance (its state dir), set in each upstream's environment.
    instance: String,
    /// Processes this daemon started, kept so their exit status can be
    /// collected (and they do not linger as zombies).
    children: Mutex<HashMap<i32, Child>>,
}

impl ProcessDriver {
    /// A driver writing logs under `logs`, for the instance named by them.
    pub fn new(logs: PathBuf) -> Self {
        let instance = logs.display().to_string();
        ProcessDriver::for_instance(logs, instance)
    }

    /// A driver writing logs under `logs` for the switchctl `instance`.
    pub fn for_instance(logs: PathBuf, instance: String) -> Self {
        ProcessDriver {
            logs,
            instance,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// Upstreams of this instance (process group leaders carrying its
    /// marker) that are not among `known`.
    pub(super) fn orphans(&self, known: &[Handle]) -> Vec<Handle> {
        self.survivors()
            .into_iter()
            .map(|s| s.record.handle)
            .filter(|h| !known.contains(h))
            .collect()
    }

    /// Every live upstream of this instance, found by the marker in its
    /// environment (not by a saved pid, which a crash may not have saved).
    pub(super) fn survivors(&self) -> Vec<super::Survivor> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let pids = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
        let mut found: Vec<super::Survivor> = pids
            .filter_map(|pid| {
                let stat = proc_stat(pid)?;
                if stat.pgrp != pid || stat.state == 'Z' {
                    return None;
                }
                let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let var = |name: &str| {
                    environ.split(|b| *b == 0).find_map(|kv| {
                        let value = kv.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
                        std::str::from_utf8(value).ok()
                    })
                };
                if var("SWITCHCTL_INSTANCE")? != self.instance {
                    return None;
                }
                let port: u16 = var("SWITCHCTL_PORT")?.parse().ok()?;
                Some(super::Survivor {
                    service: var("SWITCHCTL_SERVICE")?.to_string(),
                    color: Color::parse(var("SWITCHCTL_COLOR")?)?,
                    tag: var("SWITCHCTL_TAG")?.to_string(),
                    record: UpstreamRecord {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        handle: Handle::Process {
                            pid,
                            start_time: stat.start_time,
                        },
                    },
                })
            })
            .collect();
        found.sort_by_key(|s| match s.record.handle {
            Handle::Process { start_time, .. } => start_time,
            Handle::Container { .. } => 0,
        });
        found
    }

    pub(super) fn preflight(&self, services: &[ServiceConfig], config: &Config) -> Result<(), DriverError> {
        for s in services {
            if let Some(cwd) = &s.cwd {
                let cwd = config.resolve(cwd);
                if !cwd.is_dir() {
                    return Err(DriverError::Preflight(format!(
                        "service {}: cwd {} is not a directory",
                        s.name,
                        cwd.display()
                    )));
                }
            }
        }
        Ok(())
    }

    fn log_path(&self, service: &str, color: Color) -> PathBuf {
        self.logs.join(format!("{service}-{color}.log"))
    }

    pub(super) fn start(&self, spec: &StartSpec<'_>) -> Result<UpstreamRecord, DriverError> {
        let fail = |message: String| DriverError::Start {
            service: spec.service.name.clone(),
            color: spec.color,
            message,
        };
        let port = free_port().map_err(|e| fail(format!("no free loopback port: {e}")))?;
        let argv: Vec<String> = spec
            .service
            .command
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| spec.substitute(a, port))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(fail("no command configured".into()));
        };
        let cwd = spec
            .service
            .cwd
            .as_deref()
            .map(|c| spec.config.resolve(c))
            .unwrap_or_else(|| spec.config.resolve(Path::new(".")));
        // A relative program path ("./bin/app") means relative to cwd.
        let program = if program.contains('/') && !program.starts_with('/') {
            cwd.join(program)
        } else {
            PathBuf::from(program)
        };
        std::fs::create_dir_all(&self.logs).map_err(|e| fail(format!("cannot create {}: {e}", self.logs.display())))?;
        let log_path = self.log_path(&spec.service.name, spec.color);
        let header = format!(
            "{}{} ({}, {}) started at {}",
            logs::RUN_HEADER,
            spec.service.name,
            spec.color,
            spec.tag,
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let log =
            logs::open(&log_path, &header).map_err(|e| fail(format!("cannot write {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;

        let mut cmd = Command::new(&program);
        cmd.args(args)
            .current_dir(&cwd)
            .envs(spec.environment(port)?)
            .env("SWITCHCTL_INSTANCE", &self.instance)
            .env("SWITCHCTL_SERVICE", &spec.service.name)
            .env("SWITCHCTL_COLOR", spec.color.as_str())
            .env("SWITCHCTL_TAG", spec.tag)
            .env("SWITCHCTL_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| {
            fail(format!(
                "{} (working directory {}): {e}",
                program.display(),
                cwd.display()
            ))
        })?;
        let pid = child.id() as i32;
        let start_time = proc_stat(pid).map_or(0, |s| s.start_time);
        self.children.lock().expect("children lock").insert(pid, child);
        Ok(UpstreamRecord {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            handle: Handle::Process { pid, start_time },
        })
    }

    pub(super) fn state(&self, handle: &Handle) -> RunState {
        let Handle::Process { pid, start_time } = *handle else {
            return RunState::Missing;
        };
        if let Some(child) = self.children.lock().expect("children lock").get_mut(&pid) {
            return match child.try_wait() {
                Ok(None) => RunState::Running {
                    health: None,
                    restarts: 0,
                },
                Ok(Some(status)) => RunState::Exited {
                    reason: describe_exit(status),
                },
                Err(e) => RunState::Exited {
                    reason: format!("cannot be waited for: {e}"),
                },
            };
        }
        // Adopted from an earlier daemon: not our child, so look in /proc.
        match proc_stat(pid) {
            Some(stat) if stat.start_time == start_time && stat.state != 'Z' => RunState::Running {
                health: None,
                restarts: 0,
            },
            Some(stat) if stat.start_time == start_time => RunState::Exited {
                reason: "exited".into(),
            },
            _ => RunState::Missing,
        }
    }

    pub(super) async fn stop(&self, handle: &Handle, timeout: Duration) -> Result<(), DriverError> {
        let Handle::Process { pid, .. } = *handle else {
            return Err(DriverError::Other("not a process handle".into()));
        };
        if self.state(handle) == RunState::Missing {
            return Ok(());
        }
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            // The leader may be gone while others in its group live on.
            if !matches!(self.state(handle), RunState::Running { .. }) && !group_alive(pid) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = killpg(group, Signal::SIGKILL);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = self.state(handle);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.children.lock().expect("children lock").remove(&pid);
        Ok(())
    }

    /// The last `lines` lines of the latest run of `service` in `color`.
    pub(super) fn logs(&self, service: &str, color: Color, lines: usize) -> Vec<String> {
        logs::latest_run(&self.log_path(service, color), lines)
    }

    /// Where the upstreams' logs are (kept bounded by
    /// [`logs::keep_bounded`]).
    pub fn log_dir(&self) -> &Path {
        &self.logs
    }
}

/// When `pid` started (clock ticks since boot; 0 if it is gone): with the
/// pid, what a [`Handle::Process`] is.
pub fn start_time_of(pid: i32) -> u64 {
    proc_stat(pid).map_or(0, |s| s.start_time)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".into(),
    }
}

/// Does any live (not zombie) process belong to process group `pgid`?
fn group_alive(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    // Zombies still count for kill(2); look at /proc for live members.
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .any(|stat| stat.pgrp == pgid && stat.state != 'Z')
}

/// The fields of `/proc/<pid>/stat` this driver needs.
struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume
    // after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec<'a>(cfg: &'a Config, color: Color, tag: &'a str) -> StartSpec<'a> {
        StartSpec {
            service: &cfg.services[0],
            color,
            tag,
            config: cfg,
        }
    }

    /// The service's log once it has written something (bounded wait).
    async fn first_output(driver: &ProcessDriver, color: Color) -> Vec<String> {
        for _ in 0..500 {
            let logs = driver.logs("web", color, 50);
            if !logs.is_empty() {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Vec::new()
    }

    fn config(dir: &Path, command: &[&str]) -> Config {
        let text = format!(
            "driver = \"process\"\nstate_dir = {:?}\n[[service]]\nname = \"web\"\ncommand = {:?}\n",
            dir.display().to_string(),
            command
        );
        Config::parse(&dir.join("switchctl.toml"), &text).unwrap()
    }

    #[tokio::test]
    async fn starts_with_placeholders_logs_output_and_stops_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            &["sh", "-c", "echo port={port} tag={tag} color={color}; sleep 30 & wait"],
        );
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let rec = driver.start(&spec(&cfg, Color::Green, "v7")).unwrap();
        assert_eq!(
            driver.state(&rec.handle),
            RunState::Running {
                health: None,
                restarts: 0
            }
        );
        let port = rec.addr.port();
        let expected = format!("port={port} tag=v7 color=green");
        assert_eq!(first_output(&driver, Color::Green).await, vec![expected]);
        driver.stop(&rec.handle, Duration::from_secs(5)).await.unwrap();
        let Handle::Process { pid, .. } = rec.handle else {
            unreachable!()
        };
        assert!(!group_alive(pid), "the whole group is gone");
    }

    #[tokio::test]
    async fn upstreams_are_found_by_their_marker_not_by_a_saved_pid() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["sh", "-c", "echo {port}; sleep 30 & wait"]);
        let driver = ProcessDriver::for_instance(dir.path().join("logs"), "instance-a".into());
        let rec = driver.start(&spec(&cfg, Color::Green, "v6")).unwrap();
        first_output(&driver, Color::Green).await;
        // A daemon that crashed before saving `rec` knows nothing of it.
        let after_crash = ProcessDriver::for_instance(dir.path().join("logs"), "instance-a".into());
        let found = after_crash.survivors();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].service.as_str(), found[0].color, found[0].tag.as_str()),
            ("web", Color::Green, "v6")
        );
        assert_eq!(found[0].record, rec);
        assert_eq!(after_crash.orphans(&[]), vec![rec.handle.clone()]);
        assert!(after_crash.orphans(std::slice::from_ref(&rec.handle)).is_empty());
        let other = ProcessDriver::for_instance(dir.path().join("logs"), "instance-b".into());
        assert!(
            other.survivors().is_empty(),
            "another instance's upstreams are not ours"
        );
        driver.stop(&rec.handle, Duration::from_secs(5)).await.unwrap();
        assert!(after_crash.survivors().is_empty());
    }

    #[tokio::test]
    async fn a_restart_appends_to_the_log_keeping_the_crash_output() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            &["sh", "-c", "echo run on {port}; echo crash-{port} >&2; exit 1"],
        );
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let first = driver.start(&spec(&cfg, Color::Blue, "v1")).unwrap();
        let crashed = format!("crash-{}", first.addr.port());
        assert!(!first_output(&driver, Color::Blue).await.is_empty());
        for _ in 0..500 {
            if driver.logs("web", Color::Blue, 50).contains(&crashed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Supervision starts it again in the same color.
        let second = driver.start(&spec(&cfg, Color::Blue, "v1")).unwrap();
        let latest = first_output(&driver, Color::Blue).await;
        assert!(
            !latest.contains(&crashed),
            "logs() shows the latest run only: {latest:?}"
        );
        let file = std::fs::read_to_string(dir.path().join("logs/web-blue.log")).unwrap();
        assert!(file.contains(&crashed), "the crash's output is kept: {file}");
        assert_eq!(file.matches(logs::RUN_HEADER).count(), 2, "{file}");
        assert!(
            file.find(&crashed) < file.find(&format!("run on {}", second.addr.port())),
            "{file}"
        );
    }

    #[tokio::test]
    async fn an_exit_is_reported_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["sh", "-c", "echo {port}; exit 3"]);
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let rec = driver.start(&spec(&cfg, Color::Blue, "v1")).unwrap();
        let mut state = driver.state(&rec.handle);
        for _ in 0..500 {
            if state
                != (RunState::Running {
                    health: None,
                    restarts: 0,
                })
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            state = driver.state(&rec.handle);
        }
        assert_eq!(
            state,
            RunState::Exited {
                reason: "exited with status 3".into()
            }
        );
    }

    #[tokio::test]
    async fn env_file_and_env_reach_the_process_and_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.env"), "A=from-file\nB=from-file\n").unwrap();
        let mut cfg = config(dir.path(), &["sh", "-c", "echo $A $B $C {port}; sleep 30"]);
        cfg.services[0].env_file = Some("app.env".into());
        cfg.services[0].env.insert("B".into(), "from-env".into());
        cfg.services[0].env.insert("C".into(), "{color}-{tag}".into());
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let rec = driver.start(&spec(&cfg, Color::Blue, "v3")).unwrap();
        assert_eq!(
            first_output(&driver, Color::Blue).await,
            vec![format!("from-file from-env blue-v3 {}", rec.addr.port())]
        );
        driver.stop(&rec.handle, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_killed_after_the_stop_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            &["sh", "-c", "trap '' TERM; echo {port}; while true; do sleep 1; done"],
        );
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let rec = driver.start(&spec(&cfg, Color::Blue, "v1")).unwrap();
        first_output(&driver, Color::Blue).await;
        driver.stop(&rec.handle, Duration::from_millis(200)).await.unwrap();
        let Handle::Process { pid, .. } = rec.handle else {
            unreachable!()
        };
        assert!(!group_alive(pid), "SIGKILL ended the group");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["./no-such-app", "{port}"]);
        let driver = ProcessDriver::new(dir.path().join("logs"));
        let err = driver.start(&spec(&cfg, Color::Blue, "v1")).unwrap_err().to_string();
        assert!(
            err.contains("cannot start web (blue)") && err.contains("no-such-app"),
            "{err}"
        );
    }
}
