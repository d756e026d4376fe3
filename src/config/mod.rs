//! `switchctl.toml`: the schema (this file), where the file is found, and
//! how it is loaded. Each concern has a room of its own: [`validate`]
//! (values that parse but make no sense, with the file, line and key),
//! [`env`] (environment overrides and env files), [`compose`] (services read
//! from a Compose file). New sections (TLS, notify, hooks) add their schema
//! here and their checks in `validate.rs`.

pub mod compose;
pub mod env;
pub mod interpolate;
pub mod tls;
mod validate;

pub use env::{positive_seconds, read_env_file, seconds};
pub use validate::{MAX_HEADER_BYTES, MAX_KEEP_IMAGES, MAX_WORKERS};

pub mod traefik;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest any timeout may be (a day): a larger value is a typo, and every
/// `Instant + timeout` stays far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest time between two health probes (an hour).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How upstreams are run.
    #[serde(default)]
    pub driver: DriverKind,
    /// Where state, history and logs live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// A Compose file to import services from (`compose = "file"` or a
    /// `[compose]` table).
    #[serde(default)]
    pub compose: Option<compose::ComposeSection>,
    /// The data plane.
    #[serde(default)]
    pub proxy: ProxySection,
    /// Deploy behaviour.
    #[serde(default)]
    pub deploy: DeploySection,
    /// The services deployed together.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Commands or one-off containers run at points of a deploy.
    #[serde(default, rename = "hook")]
    pub hooks: Vec<HookConfig>,
    /// What the Compose import found besides the switched services
    /// (project, networks, hook services); `None` without Compose.
    #[serde(skip)]
    pub project: Option<compose::ComposeProject>,
    /// Where outcomes are sent (`[[notify]]`).
    #[serde(default)]
    pub notify: Vec<crate::notify::NotifyConfig>,
    /// The file this was read from (relative paths inside resolve against
    /// its directory).
    #[serde(skip)]
    pub path: PathBuf,
}

/// Which driver runs the upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Containers through the Docker Engine API.
    #[default]
    Docker,
    /// Local processes.
    Process,
}

/// Where the admin socket is when the config does not say.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/switchctl/switchctl.sock";
/// The admin socket's group when the config does not say.
pub const DEFAULT_ADMIN_GROUP: &str = "switchctl";

/// `[proxy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Public listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// The group that owns the admin socket (mode 0660): its members may run
    /// deploys without root.
    pub admin_group: String,
    /// How long the old color may take to finish its requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Time a client has to send a request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that starts no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Time to connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for an upstream's response head.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// CIDRs of proxies in front whose `X-Forwarded-*` are kept.
    pub trusted_proxies: Vec<String>,
    /// TLS listeners and certificates (`[proxy.tls]`).
    pub tls: Option<tls::TlsSection>,
    /// A pooled upstream connection idle this long is not reused (it should
    /// be shorter than the upstream's own keep-alive timeout).
    #[serde(with = "humantime_serde")]
    pub upstream_idle_timeout: Duration,
    /// Longest wait for a client's next request-body bytes (else 408).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most connections from one client address (IPv6: per /64); 0: no limit.
    pub max_connections_per_ip: usize,
    /// A client connection whose writes make no progress this long is reset.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Slowest average request-body pace, bytes/s of waiting (else 408); 0: none.
    pub body_min_rate: u64,
    /// Waiting on a request body that `body_min_rate` does not count.
    #[serde(with = "humantime_serde")]
    pub body_min_rate_grace: Duration,
    /// Where Prometheus scrapes `/metrics` (off when unset).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ProxySection {
    fn default() -> Self {
        let d = switchctl_proxy::ProxyConfig::default();
        ProxySection {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            admin_group: DEFAULT_ADMIN_GROUP.to_string(),
            drain_timeout: Duration::from_secs(30),
            workers: d.workers,
            header_read_timeout: d.header_read_timeout,
            idle_timeout: d.idle_timeout,
            max_header_bytes: d.max_header_bytes,
            max_connections: d.max_connections,
            connect_timeout: d.connect_timeout,
            response_timeout: d.response_timeout,
            trusted_proxies: Vec::new(),
            tls: None,
            upstream_idle_timeout: d.upstream_idle_timeout,
            body_read_timeout: d.body_read_timeout,
            max_connections_per_ip: d.max_connections_per_ip,
            write_timeout: d.write_timeout,
            body_min_rate: d.body_min_rate,
            body_min_rate_grace: d.body_min_rate_grace,
            metrics_listen: None,
        }
    }
}

impl ProxySection {
    /// The data plane's settings.
    pub fn proxy_config(&self) -> switchctl_proxy::ProxyConfig {
        switchctl_proxy::ProxyConfig {
            workers: self.workers,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            drain_timeout: self.drain_timeout,
            // Validated at load; nothing unparsable gets here.
            trusted_proxies: self.trusted_proxies.iter().filter_map(|c| c.parse().ok()).collect(),
            upstream_idle_timeout: self.upstream_idle_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections_per_ip: self.max_connections_per_ip,
            write_timeout: self.write_timeout,
            body_min_rate: self.body_min_rate,
            body_min_rate_grace: self.body_min_rate_grace,
        }
    }
}

/// What happens to the old color after a flip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyPolicy {
    /// Keep it running, unrouted, for an instant `flip back`.
    #[default]
    Keep,
    /// Stop it.
    Stop,
}

/// `[deploy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySection {
    /// Overall deadline of a deploy (env `DEPLOY_TIMEOUT`, seconds).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time between health probes (env `HEALTH_CHECK_INTERVAL`, seconds).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Keep or stop the old color.
    pub standby: StandbyPolicy,
    /// Earlier successful releases whose images are kept.
    pub keep_images: usize,
    /// Time an upstream gets between SIGTERM and SIGKILL.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// While an active upstream is down (and being restarted), send its
    /// traffic to the healthy warm standby.
    pub failover_to_standby: bool,
    /// The post-flip watch (`[deploy.watch]`); none when absent.
    pub watch: Option<WatchConfig>,
}

/// `[deploy.watch]`: after a deploy's flip, too many 5xx from the new color
/// flip traffic back by itself.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// How long after the flip the new color is watched.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Largest share of 5xx answers a service may give (0 to 1).
    pub max_5xx_ratio: f64,
    /// Fewest answers of a service before its ratio is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_min_requests() -> u64 {
    20
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            timeout: Duration::from_secs(120),
            health_check_interval: Duration::from_secs(5),
            standby: StandbyPolicy::Keep,
            keep_images: 5,
            stop_timeout: Duration::from_secs(10),
            failover_to_standby: false,
            watch: None,
        }
    }
}

/// `[[service]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name.
    pub name: String,
    /// Docker image, run as `<image>:<tag>`.
    #[serde(default)]
    pub image: Option<String>,
    /// Docker: the port the container listens on.
    #[serde(default)]
    pub port: Option<u16>,
    /// Process driver: argv with `{port}`, `{tag}`, `{color}`; Docker: CMD.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Process driver: working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A file of `KEY=value` lines.
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// Docker volumes (`src:dst[:ro]`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Docker networks to join.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Health check.
    #[serde(default)]
    pub health: HealthConfig,
    /// Which requests this service takes.
    #[serde(default)]
    pub route: RouteConfig,
    /// Docker: the image's own HEALTHCHECK (from Compose), if overridden.
    #[serde(skip)]
    pub docker_healthcheck: Option<DockerHealthcheck>,
    /// What else the Compose file says about this service (build, labels,
    /// dependencies...); `None` for a service of switchctl.toml only.
    #[serde(skip)]
    pub compose: Option<compose::ComposeService>,
    /// Routes from Traefik labels, used when switchctl.toml sets no `route`.
    #[serde(skip)]
    pub label_routes: Vec<RouteConfig>,
}

impl ServiceConfig {
    /// A service with `name` and every other field at its default.
    pub fn named(name: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.to_string(),
            image: None,
            port: None,
            command: None,
            cwd: None,
            env: BTreeMap::new(),
            env_file: None,
            volumes: Vec::new(),
            networks: Vec::new(),
            health: HealthConfig::default(),
            route: RouteConfig::default(),
            docker_healthcheck: None,
            compose: None,
            label_routes: Vec::new(),
        }
    }

    /// The routes of this service: its `route` when switchctl.toml sets one,
    /// else those of its Traefik labels, else everything.
    pub fn routes(&self) -> Vec<&RouteConfig> {
        if self.route != RouteConfig::default() || self.label_routes.is_empty() {
            vec![&self.route]
        } else {
            self.label_routes.iter().collect()
        }
    }

    /// Time it gets between SIGTERM and SIGKILL: Compose's
    /// `stop_grace_period`, else `[deploy] stop_timeout`.
    pub fn stop_timeout(&self, config: &Config) -> Duration {
        self.compose
            .as_ref()
            .and_then(|c| c.stop_grace_period)
            .unwrap_or(config.deploy.stop_timeout)
    }
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookWhen {
    /// Before the new color starts (after its images are built).
    BeforeStart,
    /// After the new color is healthy, before traffic moves.
    BeforeFlip,
    /// After traffic moved to the new color.
    AfterFlip,
    /// After a deploy failed and was rolled back.
    AfterFailure,
    /// After `flip back` returned traffic to the standby.
    AfterFlipBack,
}

impl HookWhen {
    /// Its name in the config and in `SWITCHCTL_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookWhen::BeforeStart => "before_start",
            HookWhen::BeforeFlip => "before_flip",
            HookWhen::AfterFlip => "after_flip",
            HookWhen::AfterFailure => "after_failure",
            HookWhen::AfterFlipBack => "after_flip_back",
        }
    }

    /// A failing `before_*` hook fails the deploy.
    pub fn is_gate(self) -> bool {
        matches!(self, HookWhen::BeforeStart | HookWhen::BeforeFlip)
    }
}

/// `[[hook]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// When it runs.
    pub when: HookWhen,
    /// A one-off container of this Compose service, with the new tag.
    #[serde(default)]
    pub service: Option<String>,
    /// Or a command on the host (argv; run in the config's directory).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Longest it may run.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(300)
}

/// A health check imported from Compose, handed to Docker.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerHealthcheck {
    /// `["CMD", ...]` or `["CMD-SHELL", ...]`, or `["NONE"]`.
    pub test: Vec<String>,
    /// Between checks.
    pub interval: Option<Duration>,
    /// Per check.
    pub timeout: Option<Duration>,
    /// Failures before unhealthy.
    pub retries: Option<u32>,
    /// Grace period.
    pub start_period: Option<Duration>,
}

/// `health = { ... }`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Path probed with GET.
    pub path: String,
    /// Per-probe timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive good probes needed.
    pub healthy_threshold: u32,
    /// Exact status expected (default: any 2xx).
    pub expected_status: Option<u16>,
    /// Whether a Docker HEALTHCHECK still `starting` holds the deploy back.
    /// Not for Compose services: their checks are tuned for monitoring
    /// (`interval: 60s`, `start_period: 60s`), so switchctl's own probe
    /// decides, and only `unhealthy` fails the deploy.
    #[serde(skip)]
    pub wait_for_docker_starting: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health".into(),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            expected_status: None,
            wait_for_docker_starting: true,
        }
    }
}

/// `route = { ... }`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Host names (`*.example.com` allowed); empty: every host.
    pub hosts: Vec<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Remove the prefix before the request goes upstream (`/api/x` → `/x`).
    pub strip_prefix: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            hosts: Vec::new(),
            path_prefix: "/".into(),
            strip_prefix: false,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/switchctl")
}

/// The configuration is unusable; the message says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file at any of the searched places.
    #[error("no config file: looked for {0}; pass --config PATH or set SWITCHCTL_CONFIG")]
    NotFound(String),
    /// The file exists but cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or a missing field.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// file
        path: PathBuf,
        /// 1-based line
        line: usize,
        /// 1-based column
        column: usize,
        /// what is wrong
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// file
        path: PathBuf,
        /// dotted key, e.g. `service[0].route.hosts`
        key: String,
        /// what is wrong and what to do
        message: String,
    },
    /// Several problems, every one reported (`check` shows them all at once).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// One error for `errors`: itself when there is one, `Many` otherwise.
    pub fn from_many(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }
}

impl Config {
    /// Find the config file: `explicit`, else `$SWITCHCTL_CONFIG`, else
    /// `./switchctl.toml`, else `/etc/switchctl/switchctl.toml`.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("SWITCHCTL_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let candidates = ["switchctl.toml", "/etc/switchctl/switchctl.toml"];
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| ConfigError::NotFound(candidates.join(", ")))
    }

    /// Read, parse, import Compose services, apply environment overrides and
    /// validate.
    ///
    /// The path is made absolute first, so that every relative path in the
    /// file (state_dir, admin_socket, env files, the Compose file, process
    /// cwd and command) means the same from any working directory, including
    /// `--config switchctl.toml`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let path = &std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(path, &text)?;
        config.state_dir = config.resolve(&config.state_dir);
        config.proxy.admin_socket = config.resolve(&config.proxy.admin_socket);
        let mut errors = Vec::new();
        if let Some(section) = config.compose.clone() {
            match compose::import(&config, &section) {
                Ok((services, project)) => {
                    config.services = services;
                    config.project = Some(project);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = config.apply_env(|k| std::env::var(k).ok()) {
            errors.push(e);
        }
        let base = config.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for entry in &mut config.notify {
            entry.resolve_paths(&base);
        }
        // With a broken Compose import the services are not known: the rest
        // of the file is still checked, so that one run shows everything.
        let services_known = errors.is_empty();
        if let Err(e) = config.validate(&text, services_known) {
            errors.push(e);
        }
        let flat = errors
            .into_iter()
            .flat_map(|e| match e {
                ConfigError::Many(v) => v,
                one => vec![one],
            })
            .collect();
        ConfigError::from_many(flat)?;
        Ok(config)
    }

    /// Parse TOML text (no environment, no Compose, no validation).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = from_toml(path, text)?;
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// Only `proxy.admin_socket` of the file at `path`, resolved against the
    /// file's directory: the short path of commands that just talk to the
    /// daemon. The file is parsed against the schema (a typo is still exit 2,
    /// naming the line), but nothing else is read or validated: no Compose
    /// file, no env file, so a CI user needs no access to secrets and a flip
    /// stays quick. `Ok(None)` when the file cannot be read (missing, or not
    /// readable by this user): the caller falls back to
    /// [`DEFAULT_ADMIN_SOCKET`].
    pub fn admin_socket_of(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        let config = Config::parse(path, &text)?;
        Ok(Some(config.resolve(&config.proxy.admin_socket)))
    }

    /// Only `proxy.admin_socket`, with nothing else of the file checked:
    /// what `flip back` reads. The command an operator runs when a release
    /// is failing must not be refused because another key is halfway
    /// through an edit (the daemon does not re-read the file for it
    /// either). The file must still be TOML (a key cannot be found in a file
    /// that does not parse: exit 2, naming the line), and `admin_socket`, if
    /// set, a path. `Ok(None)` as for [`Config::admin_socket_of`].
    pub fn admin_socket_only(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            proxy: Option<SocketOnly>,
        }
        #[derive(Deserialize)]
        struct SocketOnly {
            admin_socket: Option<PathBuf>,
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        let file: File = from_toml(path, &text)?;
        let socket = file.proxy.and_then(|p| p.admin_socket);
        let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
        Ok(Some(relative_to_config(path, &socket)))
    }

    /// A path from the config, relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        relative_to_config(&self.path, p)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `p` relative to the directory of the config file at `config` (unless
/// absolute).
fn relative_to_config(config: &Path, p: &Path) -> PathBuf {
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty());
    join_relative(dir.unwrap_or(Path::new(".")), p)
}

/// `p` relative to `dir` (unless absolute), without `.` and `..` parts, as
/// Docker wants bind sources.
pub fn join_relative(dir: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in dir.join(p).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Deserialize TOML `text` read from `path`; errors name the line and column.
fn from_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|span| line_col(text, span.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, column)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn admin_socket_only_ignores_every_other_key_but_not_bad_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("switchctl.toml");
        let only = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::admin_socket_only(&file)
        };
        let typo = "drvier = \"process\"\n[proxy]\nadmin_socket = \"run/a.sock\"\nlisten = 80\n";
        assert_eq!(only(typo).unwrap(), Some(dir.path().join("run/a.sock")));
        assert!(
            Config::admin_socket_of(&file).is_err(),
            "the checked read refuses the typo"
        );
        assert_eq!(
            only("[deploy]\ntimeout = \"1s\"\n").unwrap(),
            Some(PathBuf::from(DEFAULT_ADMIN_SOCKET))
        );
        assert_eq!(only("").unwrap(), Some(PathBuf::from(DEFAULT_ADMIN_SOCKET)));
        assert_eq!(
            only("[proxy]\nadmin_socket = \"/run/x.sock\"\n").unwrap(),
            Some(PathBuf::from("/run/x.sock"))
        );
        match only("[proxy]\nadmin_socket = \"/run/x.sock\"\n[deploy\n") {
            Err(ConfigError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error on line 3, got {other:?}"),
        }
        assert!(matches!(
            only("[proxy]\nadmin_socket = 5\n"),
            Err(ConfigError::Parse { line: 2, .. })
        ));
        assert_eq!(
            Config::admin_socket_only(&dir.path().join("missing.toml")).unwrap(),
            None
        );
    }

    /// Parse and validate `text` as `/etc/switchctl.toml`.
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(Path::new("/etc/switchctl.toml"), text)?;
        c.validate(text, true)?;
        Ok(c)
    }

    /// A valid process-driver config.
    pub(crate) const GOOD: &str = r#"
driver = "process"
state_dir = "/tmp/x"
[proxy]
listen = ["127.0.0.1:8080"]
drain_timeout = "5s"
[deploy]
timeout = "30s"
[[service]]
name = "web"
command = ["./app", "--port", "{port}"]
health = { path = "/up", healthy_threshold = 2 }
"#;

    #[test]
    fn a_good_file_parses_with_durations_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.driver, DriverKind::Process);
        assert_eq!(c.proxy.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.deploy.timeout, Duration::from_secs(30));
        assert_eq!(c.deploy.health_check_interval, Duration::from_secs(5));
        assert_eq!(c.deploy.standby, StandbyPolicy::Keep);
        assert_eq!(c.services[0].health.healthy_threshold, 2);
        assert_eq!(c.services[0].health.timeout, Duration::from_secs(2));
        assert_eq!(c.services[0].route.path_prefix, "/");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\ntimout = \"1s\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("/etc/switchctl.toml:9:"), "{err}");
        assert!(err.contains("unknown field `timout`"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_duration_name_the_line() {
        let err = parse(&GOOD.replace("\"5s\"", "5")).unwrap_err().to_string();
        assert!(err.starts_with("/etc/switchctl.toml:6:"), "{err}");
        let err = parse(&GOOD.replace("\"30s\"", "\"thirty\"")).unwrap_err().to_string();
        assert!(err.starts_with("/etc/switchctl.toml:8:"), "{err}");
    }

    #[test]
    fn missing_field_is_reported() {
        let err = parse(&GOOD.replace("name = \"web\"", "")).unwrap_err().to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }

    #[test]
    fn deploy_watch_and_notify_parse_and_are_checked() {
        let text = GOOD.replace(
            "timeout = \"30s\"",
            "timeout = \"30s\"\n[deploy.watch]\nwindow = \"60s\"\nmax_5xx_ratio = 0.05",
        );
        let c = parse(&text).unwrap();
        let w = c.deploy.watch.unwrap();
        assert_eq!(
            (w.window, w.max_5xx_ratio, w.min_requests),
            (Duration::from_secs(60), 0.05, 20)
        );
        assert!(parse(GOOD).unwrap().deploy.watch.is_none(), "no section, no watch");
        let err = parse(&text.replace("0.05", "1.5")).unwrap_err().to_string();
        assert!(err.contains("deploy.watch.max_5xx_ratio"), "{err}");
        let notify = format!("{GOOD}\n[[notify]]\nkind = \"webhook\"\nurl = \"ftp://x\"\n");
        let err = parse(&notify).unwrap_err().to_string();
        assert!(err.contains("notify[0].url"), "{err}");
        let notify = notify.replace("ftp://x", "https://hooks.example.org/x");
        assert_eq!(parse(&notify).unwrap().notify.len(), 1);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        assert_eq!(
            join_relative(Path::new("/srv/app"), Path::new("./data")),
            Path::new("/srv/app/data")
        );
        assert_eq!(
            join_relative(Path::new("/srv/app"), Path::new("../x/./y")),
            Path::new("/srv/x/y")
        );
        assert_eq!(
            join_relative(Path::new("/srv/app"), Path::new("/abs")),
            Path::new("/abs")
        );
    }
}
