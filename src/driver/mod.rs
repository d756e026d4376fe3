//! Drivers start, watch and stop the upstreams of one color: local
//! processes ([`process`]) or Docker containers ([`docker`]). The controller
//! only sees the [`Driver`] enum; each variant owns everything about how its
//! upstreams live.

pub mod context;
pub mod docker;
pub mod logs;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, DriverKind, ServiceConfig};
use crate::release::{Color, Handle, UpstreamRecord};

/// What a driver knows about a running upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running; `health` is the container's own HEALTHCHECK status, if it has one.
    Running {
        /// Docker's health status
        health: Option<ContainerHealth>,
        /// How many times the runtime started it again after it exited
        /// (Docker's restart policy); 0 for a process. A new upstream that
        /// already restarted has crashed during its start.
        restarts: u64,
    },
    /// It stopped; `reason` says how ("exited with status 3", "restarting").
    Exited {
        /// how it ended
        reason: String,
    },
    /// Nothing by that handle exists any more.
    Missing,
    /// The runtime could not be asked (Docker down).
    Unknown {
        /// why
        reason: String,
    },
}

/// Docker's HEALTHCHECK status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerHealth {
    /// still in its start period or not yet checked
    Starting,
    /// passing
    Healthy,
    /// failing
    Unhealthy,
}

/// A driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The upstream could not be started.
    #[error("cannot start {service} ({color}): {message}")]
    Start {
        /// service
        service: String,
        /// color
        color: Color,
        /// why, and what to do
        message: String,
    },
    /// A release cannot be deployed as asked (missing image or tag...).
    #[error("{0}")]
    Preflight(String),
    /// The container runtime cannot be reached.
    #[error("Docker is unreachable: {0}; the proxy keeps serving the active color. Start Docker (systemctl start docker) and retry")]
    Unreachable(String),
    /// Anything else the runtime reported.
    #[error("{0}")]
    Other(String),
}

/// Where a driver reports progress (build output, hook output): the
/// service it is about and one line.
pub type Progress<'a> = &'a (dyn Fn(&str, &str) + Send + Sync);

/// A one-off task (a hook) that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// What happened ("exited with status 1", "timed out after 5m").
    pub message: String,
    /// Its last output lines.
    pub lines: Vec<String>,
}

/// An upstream the runtime runs for this switchctl instance, as its own
/// records (Docker labels, a process's environment) describe it: what the
/// state is rebuilt from when the state file cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    /// its service
    pub service: String,
    /// its color
    pub color: Color,
    /// its tag
    pub tag: String,
    /// where it listens and how to find it
    pub record: UpstreamRecord,
}

/// What to start: one service of one color at one tag.
#[derive(Debug, Clone)]
pub struct StartSpec<'a> {
    /// the service's config
    pub service: &'a ServiceConfig,
    /// color slot
    pub color: Color,
    /// release tag
    pub tag: &'a str,
    /// the whole config (for paths and timeouts)
    pub config: &'a Config,
}

impl StartSpec<'_> {
    /// `{port}`, `{tag}` (or Compose's `${TAG}`) and `{color}` substituted into `s`.
    pub fn substitute(&self, s: &str, port: u16) -> String {
        s.replace("{port}", &port.to_string())
            .replace("{tag}", self.tag)
            .replace("${TAG}", self.tag)
            .replace("{color}", self.color.as_str())
    }

    /// The service's environment: env_file first, then `env` (which wins),
    /// with placeholders substituted.
    pub fn environment(&self, port: u16) -> Result<Vec<(String, String)>, DriverError> {
        let mut vars = Vec::new();
        if let Some(f) = &self.service.env_file {
            let path = self.config.resolve(f);
            vars = crate::config::read_env_file(&path).map_err(|message| DriverError::Start {
                service: self.service.name.clone(),
                color: self.color,
                message,
            })?;
        }
        for (k, v) in &self.service.env {
            vars.retain(|(existing, _)| existing != k);
            vars.push((k.clone(), self.substitute(v, port)));
        }
        Ok(vars)
    }
}

/// The driver chosen by the config.
#[derive(Debug)]
pub enum Driver {
    /// local processes
    Process(process::ProcessDriver),
    /// Docker containers
    Docker(docker::DockerDriver),
}

impl Driver {
    /// The driver for `config`. Docker is connected lazily: a daemon that
    /// cannot reach it still serves, and every operation says why it fails.
    pub fn new(config: &Config) -> Driver {
        match config.driver {
            DriverKind::Process => Driver::Process(process::ProcessDriver::for_instance(
                logs_dir(config),
                config.state_dir.display().to_string(),
            )),
            DriverKind::Docker => Driver::Docker(docker::DockerDriver::new(
                config.state_dir.display().to_string(),
                config.project.as_ref().map(|p| p.name.as_str()),
            )),
        }
    }

    /// Check that a deploy of `tag` can start, before anything is stopped:
    /// runtime reachable, networks there, images present (built when
    /// missing, output to `progress`), dependencies running.
    pub async fn preflight(&self, config: &Config, tag: &str, progress: Progress<'_>) -> Result<(), DriverError> {
        match self {
            Driver::Process(d) => d.preflight(&config.services, config),
            Driver::Docker(d) => d.preflight(config, tag, progress).await,
        }
    }

    /// Run `spec.service` once as a one-off container of `spec.tag` (a hook),
    /// with `extra_env`, its output to `progress`, for at most `timeout`.
    pub async fn run_task(
        &self,
        spec: &StartSpec<'_>,
        extra_env: &[(String, String)],
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<(), TaskFailure> {
        match self {
            Driver::Process(_) => Err(TaskFailure {
                message: "a service hook runs a container: it needs the docker driver".into(),
                lines: Vec::new(),
            }),
            Driver::Docker(d) => d.run_task(spec, extra_env, timeout, progress).await,
        }
    }

    /// Give (`named`) or take away the service's Compose name as the
    /// upstream's network alias, so other containers calling `http://api`
    /// reach the color that serves.
    pub async fn set_service_alias(
        &self,
        handle: &Handle,
        service: &ServiceConfig,
        named: bool,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Process(_) => Ok(()),
            Driver::Docker(d) => d.set_service_alias(handle, service, named).await,
        }
    }

    /// Where the upstream `handle` listens now, as the runtime reports it
    /// (a container Docker restarted may have another host port); `None`
    /// when the runtime cannot say.
    pub async fn current_addr(&self, handle: &Handle, service: &ServiceConfig) -> Option<std::net::SocketAddr> {
        match self {
            Driver::Process(_) => None,
            Driver::Docker(d) => d.current_addr(handle, service).await,
        }
    }

    /// Start one upstream; returns where it listens and how to find it.
    pub async fn start(&self, spec: &StartSpec<'_>) -> Result<UpstreamRecord, DriverError> {
        match self {
            Driver::Process(d) => d.start(spec),
            Driver::Docker(d) => d.start(spec).await,
        }
    }

    /// Is it still running (and healthy, as far as the runtime knows)?
    pub async fn state(&self, handle: &Handle) -> RunState {
        match self {
            Driver::Process(d) => d.state(handle),
            Driver::Docker(d) => d.state(handle).await,
        }
    }

    /// Stop and remove it: SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop(&self, handle: &Handle, timeout: Duration) -> Result<(), DriverError> {
        match self {
            Driver::Process(d) => d.stop(handle, timeout).await,
            Driver::Docker(d) => d.stop(handle, timeout).await,
        }
    }

    /// Its last `lines` lines of output.
    pub async fn logs(&self, handle: &Handle, service: &str, color: Color, lines: usize) -> Vec<String> {
        match self {
            Driver::Process(d) => d.logs(service, color, lines),
            Driver::Docker(d) => d.logs(handle, lines).await,
        }
    }

    /// Upstreams the runtime knows of that are not among `known` (the
    /// handles of every release switchctl remembers): leftovers of an
    /// interrupted deploy.
    pub async fn orphans(&self, known: &[Handle]) -> Result<Vec<Handle>, DriverError> {
        match self {
            Driver::Process(d) => Ok(d.orphans(known)),
            Driver::Docker(d) => d.orphans(known).await,
        }
    }

    /// Every running upstream of this instance, from the runtime's own
    /// records (for rebuilding a state that cannot be trusted).
    pub async fn survivors(&self) -> Result<Vec<Survivor>, DriverError> {
        match self {
            Driver::Process(d) => Ok(d.survivors()),
            Driver::Docker(d) => d.survivors().await,
        }
    }

    /// Remove the images of `tags` (in that order) for every service;
    /// returns the references removed.
    pub async fn cleanup_images(
        &self,
        services: &[ServiceConfig],
        tags: &[String],
    ) -> Result<Vec<String>, DriverError> {
        match self {
            Driver::Process(_) => Ok(Vec::new()),
            Driver::Docker(d) => d.cleanup_images(services, tags).await,
        }
    }

    /// Follow what the runtime reports about this instance's upstreams
    /// until `shutdown`, so that [`Driver::changed`] wakes on each change
    /// (Docker: the engine's events, reconnected with backoff). The process
    /// driver has no such feed: this returns at once and supervision polls.
    pub async fn follow_changes(&self, shutdown: &tokio_util::sync::CancellationToken) {
        match self {
            Driver::Process(_) => {}
            Driver::Docker(d) => d.follow_events(shutdown).await,
        }
    }

    /// Resolves when the runtime reports that an upstream of this instance
    /// started, died or was removed (never, for the process driver).
    pub async fn changed(&self) {
        match self {
            Driver::Process(_) => std::future::pending().await,
            Driver::Docker(d) => d.changed().await,
        }
    }

    /// How long an upstream that exited is left alone before supervision
    /// replaces it: Docker's restart policy (`unless-stopped`) may bring a
    /// container back by itself, and following it is cheaper than
    /// recreating it (`docker restart` stops it for a moment, too). Nothing
    /// restarts a process but switchctl.
    pub fn grace_before_replacing(&self) -> Duration {
        match self {
            Driver::Process(_) => Duration::ZERO,
            Driver::Docker(_) => Duration::from_secs(3),
        }
    }

    /// Can the runtime be reached? (`status` and `check` report it.)
    pub async fn ping(&self) -> Result<(), DriverError> {
        match self {
            Driver::Process(_) => Ok(()),
            Driver::Docker(d) => d.ping().await,
        }
    }
}

/// Per-upstream log files of the process driver.
pub fn logs_dir(config: &Config) -> PathBuf {
    config.state_dir.join("logs")
}
