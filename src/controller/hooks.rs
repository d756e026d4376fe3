//! Hooks (`[[hook]]`): a one-off container of a Compose service with the
//! new tag (its env, networks, volumes), or a command on the host, run at
//! one point of a deploy or a flip back. Output streams into the progress
//! events; a hook that fails or outlives its `timeout` is a
//! [`HookFailure`] with its last lines. Whether that fails the operation
//! is the caller's decision: `before_*` hooks gate the flip, the others are
//! reported.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::event::{Phase, Reporter};
use crate::config::{Config, HookConfig, HookWhen};
use crate::driver::{Driver, StartSpec, TaskFailure};
use crate::release::Color;

/// Lines of a failed hook kept to show.
const TAIL_LINES: usize = 50;

/// What a hook is told about the operation (its `SWITCHCTL_*` variables).
#[derive(Debug, Clone)]
pub struct HookContext<'a> {
    /// The tag being deployed (or flipped back to).
    pub tag: &'a str,
    /// The tag that served before, if any.
    pub previous_tag: Option<&'a str>,
    /// The color the tag runs in.
    pub color: Color,
}

/// A hook that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    /// Which hook and why.
    pub message: String,
    /// Its last output lines.
    pub lines: Vec<String>,
}

impl HookContext<'_> {
    fn env(&self, when: HookWhen) -> Vec<(String, String)> {
        vec![
            ("SWITCHCTL_TAG".into(), self.tag.to_string()),
            (
                "SWITCHCTL_PREVIOUS_TAG".into(),
                self.previous_tag.unwrap_or_default().to_string(),
            ),
            ("SWITCHCTL_COLOR".into(), self.color.to_string()),
            ("SWITCHCTL_EVENT".into(), when.as_str().to_string()),
        ]
    }
}

/// Run every hook of `when`, in file order. A `before_*` hook's failure
/// stops the others and is returned; later points run every hook and
/// return the failures.
pub async fn run(
    driver: &Driver,
    config: &Config,
    when: HookWhen,
    ctx: &HookContext<'_>,
    reporter: &Reporter,
) -> Vec<HookFailure> {
    let mut failures = Vec::new();
    for hook in config.hooks.iter().filter(|h| h.when == when) {
        let what = describe(hook);
        reporter.info(Phase::Hook, None, format!("{} hook: {what}", when.as_str()));
        let progress = |service: &str, line: &str| reporter.info(Phase::Hook, Some(service), line);
        let result = match &hook.service {
            Some(service) => run_service(driver, config, hook, service, ctx, &progress).await,
            None => run_command(config, hook, ctx, &progress).await,
        };
        match result {
            Ok(()) => reporter.success(Phase::Hook, None, format!("{} hook {what} succeeded", when.as_str())),
            Err(f) => {
                failures.push(HookFailure {
                    message: format!("{} hook {what} failed: {}", when.as_str(), f.message),
                    lines: f.lines,
                });
                if when.is_gate() {
                    break;
                }
            }
        }
    }
    failures
}

fn describe(hook: &HookConfig) -> String {
    match (&hook.service, &hook.command) {
        (Some(s), _) => format!("service {s}"),
        (None, Some(c)) => format!("`{}`", c.join(" ")),
        (None, None) => "(nothing)".into(),
    }
}

async fn run_service(
    driver: &Driver,
    config: &Config,
    hook: &HookConfig,
    service: &str,
    ctx: &HookContext<'_>,
    progress: crate::driver::Progress<'_>,
) -> Result<(), TaskFailure> {
    let task = config
        .project
        .as_ref()
        .and_then(|p| p.task(service))
        .or_else(|| config.service(service))
        .ok_or_else(|| TaskFailure {
            message: format!("{service} is not a Compose service"),
            lines: Vec::new(),
        })?;
    let spec = StartSpec {
        service: task,
        color: ctx.color,
        tag: ctx.tag,
        config,
    };
    driver
        .run_task(&spec, &ctx.env(hook.when), hook.timeout, progress)
        .await
}

/// A command on the host, in the config file's directory, in a process
/// group of its own (killed whole on timeout).
async fn run_command(
    config: &Config,
    hook: &HookConfig,
    ctx: &HookContext<'_>,
    progress: crate::driver::Progress<'_>,
) -> Result<(), TaskFailure> {
    let argv = hook.command.as_deref().unwrap_or_default();
    let Some((program, args)) = argv.split_first() else {
        return Err(failure("empty command", Vec::new()));
    };
    let dir = config.resolve(std::path::Path::new("."));
    let program = if program.contains('/') && !program.starts_with('/') {
        dir.join(program)
    } else {
        std::path::PathBuf::from(program)
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args)
        .current_dir(&dir)
        .envs(ctx.env(hook.when))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| failure(&format!("cannot run {}: {e}", program.display()), Vec::new()))?;
    let pid = child.id();
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let lines = &lines;
        async move {
            let Some(stream) = stream else { return };
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                progress("hook", &line);
                lines.lock().expect("lines lock").push(line);
            }
        }
    };
    let run = async {
        let (_, _, status) = tokio::join!(
            pump(stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
            pump(stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
            child.wait()
        );
        status
    };
    let outcome = tokio::time::timeout(hook.timeout, run).await;
    let tail = |lines: &std::sync::Mutex<Vec<String>>| {
        let l = lines.lock().expect("lines lock");
        l[l.len().saturating_sub(TAIL_LINES)..].to_vec()
    };
    match outcome {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(failure(&format!("exited with {status}"), tail(&lines))),
        Ok(Err(e)) => Err(failure(&e.to_string(), tail(&lines))),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(failure(
                &format!(
                    "did not finish within {}; it was killed",
                    humantime::format_duration(hook.timeout)
                ),
                tail(&lines),
            ))
        }
    }
}

fn failure(message: &str, lines: Vec<String>) -> TaskFailure {
    TaskFailure {
        message: message.to_string(),
        lines,
    }
}

/// Timeouts and failures of command hooks, on the host.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::event::Reporter;

    fn config(dir: &std::path::Path, hooks: &str) -> Config {
        let path = dir.join("switchctl.toml");
        std::fs::write(
            &path,
            format!(
                "driver = \"process\"\nstate_dir = \"state\"\n[[service]]\nname = \"web\"\ncommand = [\"x\", \"{{port}}\"]\n{hooks}"
            ),
        )
        .unwrap();
        Config::load(&path).unwrap()
    }

    const CTX: HookContext<'static> = HookContext {
        tag: "v2",
        previous_tag: Some("v1"),
        color: Color::Green,
    };

    #[tokio::test]
    async fn a_command_hook_gets_the_switchctl_variables_and_streams_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            "[[hook]]\nwhen = \"before_flip\"\ncommand = [\"sh\", \"-c\", \"echo $SWITCHCTL_TAG $SWITCHCTL_PREVIOUS_TAG $SWITCHCTL_COLOR $SWITCHCTL_EVENT; pwd\"]\n",
        );
        let driver = Driver::new(&c);
        let (reporter, mut events) = Reporter::channel();
        let failures = run(&driver, &c, HookWhen::BeforeFlip, &CTX, &reporter).await;
        assert!(failures.is_empty(), "{failures:?}");
        drop(reporter);
        let mut messages = Vec::new();
        while let Some(e) = events.recv().await {
            messages.push(e.message);
        }
        assert!(
            messages.contains(&"v2 v1 green before_flip".to_string()),
            "{messages:?}"
        );
        let here = dir.path().canonicalize().unwrap().display().to_string();
        assert!(
            messages.iter().any(|m| m == &here),
            "runs in the config's directory: {messages:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_or_hanging_hook_is_a_failure_with_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            "[[hook]]\nwhen = \"before_start\"\ncommand = [\"sh\", \"-c\", \"seq 1 80; exit 3\"]\n\
             [[hook]]\nwhen = \"before_start\"\ncommand = [\"true\"]\n\
             [[hook]]\nwhen = \"after_flip\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"200ms\"\n\
             [[hook]]\nwhen = \"after_flip\"\ncommand = [\"false\"]\n",
        );
        let driver = Driver::new(&c);
        let reporter = Reporter::silent();
        let failures = run(&driver, &c, HookWhen::BeforeStart, &CTX, &reporter).await;
        assert_eq!(failures.len(), 1, "a gate stops at the first failure");
        assert!(failures[0].message.contains("exit status: 3"), "{failures:?}");
        assert_eq!(failures[0].lines.len(), 50);
        assert_eq!(failures[0].lines.last().map(String::as_str), Some("80"));
        let failures = run(&driver, &c, HookWhen::AfterFlip, &CTX, &reporter).await;
        assert_eq!(failures.len(), 2, "later points run every hook: {failures:?}");
        assert!(
            failures[0].message.contains("did not finish within 200ms"),
            "{failures:?}"
        );
    }
}
