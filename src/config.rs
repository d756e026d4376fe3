//! `switchctl.toml`: the schema, where the file is found, environment
//! overrides, and validation whose errors name the file, line and key.

pub mod traefik;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// A Compose file to import services from.
    #[serde(default)]
    pub compose: Option<PathBuf>,
    /// The data plane.
    #[serde(default)]
    pub proxy: ProxySection,
    /// Deploy behaviour.
    #[serde(default)]
    pub deploy: DeploySection,
    /// The services deployed together.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
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

/// `[proxy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Public listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
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
}

impl Default for ProxySection {
    fn default() -> Self {
        let d = switchctl_proxy::ProxyConfig::default();
        ProxySection {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            admin_socket: PathBuf::from("/run/switchctl/switchctl.sock"),
            drain_timeout: Duration::from_secs(30),
            workers: d.workers,
            header_read_timeout: d.header_read_timeout,
            idle_timeout: d.idle_timeout,
            max_header_bytes: d.max_header_bytes,
            max_connections: d.max_connections,
            connect_timeout: d.connect_timeout,
            response_timeout: d.response_timeout,
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
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            timeout: Duration::from_secs(120),
            health_check_interval: Duration::from_secs(5),
            standby: StandbyPolicy::Keep,
            keep_images: 3,
            stop_timeout: Duration::from_secs(10),
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
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health".into(),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            expected_status: None,
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
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            hosts: Vec::new(),
            path_prefix: "/".into(),
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
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(path, &text)?;
        if let Some(compose) = config.compose.clone() {
            let compose = config.resolve(&compose);
            let imported = crate::compose::import(&compose, &config.services)?;
            config.services = imported;
        }
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate(&text)?;
        Ok(config)
    }

    /// Parse TOML text (no environment, no Compose, no validation).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|span| line_col(text, span.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// `DEPLOY_TIMEOUT` and `HEALTH_CHECK_INTERVAL` (seconds) override the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(d) = env_seconds(&get, "DEPLOY_TIMEOUT", &self.path)? {
            self.deploy.timeout = d;
        }
        if let Some(d) = env_seconds(&get, "HEALTH_CHECK_INTERVAL", &self.path)? {
            self.deploy.health_check_interval = d;
        }
        Ok(())
    }

    /// A path from the config, relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        join_relative(self.path.parent().unwrap_or(Path::new(".")), p)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: self.path.clone(),
            key,
            message,
        };
        if self.proxy.listen.is_empty() {
            return Err(invalid("proxy.listen".into(), "needs at least one address".into()));
        }
        if self.services.is_empty() {
            return Err(invalid(
                "service".into(),
                "no [[service]] defined (and no compose file): define at least one".into(),
            ));
        }
        if self.deploy.health_check_interval.is_zero() {
            return Err(invalid(
                "deploy.health_check_interval".into(),
                "must be greater than 0".into(),
            ));
        }
        if self.deploy.timeout.is_zero() {
            return Err(invalid("deploy.timeout".into(), "must be greater than 0".into()));
        }
        for (i, s) in self.services.iter().enumerate() {
            let at = |key: &str| {
                let line =
                    find_line(text, &format!("\"{}\"", s.name)).map_or(String::new(), |l| format!(" (line {l})"));
                format!("service[{i}] {:?}{line}.{key}", s.name)
            };
            let name_ok = !s.name.is_empty()
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid(at("name"), "use letters, digits, '-' and '_' only".into()));
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    at("name"),
                    "defined twice; service names must be unique".into(),
                ));
            }
            match self.driver {
                DriverKind::Docker => {
                    if s.image.as_deref().is_none_or(str::is_empty) {
                        return Err(invalid(at("image"), "the docker driver needs an image".into()));
                    }
                    if s.port.is_none() {
                        return Err(invalid(
                            at("port"),
                            "the docker driver needs the container's port".into(),
                        ));
                    }
                }
                DriverKind::Process => {
                    let cmd = s.command.as_deref().unwrap_or_default();
                    if cmd.is_empty() {
                        return Err(invalid(
                            at("command"),
                            "the process driver needs a command, e.g. [\"./app\", \"--port\", \"{port}\"]".into(),
                        ));
                    }
                    if !cmd.iter().any(|a| a.contains("{port}")) && !s.env.values().any(|v| v.contains("{port}")) {
                        return Err(invalid(
                            at("command"),
                            "must pass \"{port}\" (in command or env) so the process listens where switchctl expects"
                                .into(),
                        ));
                    }
                }
            }
            if !s.health.path.starts_with('/') {
                return Err(invalid(at("health.path"), "must start with \"/\"".into()));
            }
            if s.health.healthy_threshold == 0 {
                return Err(invalid(at("health.healthy_threshold"), "must be at least 1".into()));
            }
            if !s.route.path_prefix.starts_with('/') {
                return Err(invalid(at("route.path_prefix"), "must start with \"/\"".into()));
            }
            for h in &s.route.hosts {
                switchctl_proxy::HostPattern::parse(h).map_err(|e| invalid(at("route.hosts"), e.to_string()))?;
            }
            if let Some(env_file) = &s.env_file {
                let p = self.resolve(env_file);
                read_env_file(&p).map_err(|e| invalid(at("env_file"), e))?;
            }
        }
        // Two services with the same route would make one unreachable.
        for (i, a) in self.services.iter().enumerate() {
            for b in &self.services[..i] {
                if a.route == b.route {
                    return Err(invalid(
                        format!("service {:?}.route", a.name),
                        format!(
                            "same hosts and path_prefix as service {:?}; one of them would never get a request",
                            b.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn env_seconds(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    path: &Path,
) -> Result<Option<Duration>, ConfigError> {
    let Some(raw) = get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match positive_seconds(&raw) {
        Some(d) => Ok(Some(d)),
        None => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("environment variable {name}"),
            message: format!("{raw:?} is not a positive number of seconds"),
        }),
    }
}

/// `"2.5"` → 2.5 s; `None` for anything but a positive, finite number of
/// seconds (the form of `DEPLOY_TIMEOUT` and `HEALTH_CHECK_INTERVAL`).
pub fn positive_seconds(raw: &str) -> Option<Duration> {
    seconds(raw.trim().parse().ok()?)
}

/// `secs` as a duration, if it is positive and finite.
pub fn seconds(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

/// Parse a `KEY=value` env file: `#` comments, blank lines, optional
/// `export `, optional matching quotes around the value.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read env file {}: {e}", path.display()))?;
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "{}:{}: expected KEY=value, got {line:?}",
                path.display(),
                n + 1
            ));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{}:{}: invalid variable name {key:?}", path.display(), n + 1));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((key.to_string(), unquoted.to_string()));
    }
    Ok(vars)
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, column)
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.find(needle).map(|off| line_col(text, off).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(Path::new("/etc/switchctl.toml"), text)?;
        c.validate(text)?;
        Ok(c)
    }

    const GOOD: &str = r#"
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
    fn process_command_must_carry_the_port() {
        let err = parse(&GOOD.replace("\"--port\", \"{port}\"", "\"--port\", \"80\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("command") && err.contains("{port}"), "{err}");
    }

    #[test]
    fn docker_services_need_image_and_port() {
        let err = parse(&GOOD.replace("driver = \"process\"", "driver = \"docker\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an image"), "{err}");
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

    #[test]
    fn environment_overrides_deploy_timings() {
        let mut c = parse(GOOD).unwrap();
        c.apply_env(|k| match k {
            "DEPLOY_TIMEOUT" => Some("300".into()),
            "HEALTH_CHECK_INTERVAL" => Some("0.5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.deploy.timeout, Duration::from_secs(300));
        assert_eq!(c.deploy.health_check_interval, Duration::from_millis(500));
        let err = c
            .apply_env(|k| (k == "DEPLOY_TIMEOUT").then(|| "soon".into()))
            .unwrap_err();
        assert!(err.to_string().contains("DEPLOY_TIMEOUT"), "{err}");
    }

    #[test]
    fn env_files_parse_comments_quotes_and_export() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "# c\nA=1\nexport B=\"two words\"\n\nC='x=y'\n").unwrap();
        let vars = read_env_file(&p).unwrap();
        assert_eq!(
            vars,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        std::fs::write(&p, "oops\n").unwrap();
        assert!(read_env_file(&p).unwrap_err().contains(":1: expected KEY=value"));
    }
}
