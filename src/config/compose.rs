//! Read a team's Compose file as `docker compose -p <project> --env-file <f>`
//! would, so that switchctl takes over their stack unchanged: the project
//! name, interpolation from the env files and the environment
//! ([`super::interpolate`]), the variable in each image's tag position (which
//! the deploy tag replaces), networks and volumes named `<project>_<name>`,
//! `build:`, `depends_on`, labels (and routes from Traefik labels,
//! [`super::traefik`]).
//!
//! Every service key has one treatment (docs/configuration.md has the
//! table): honoured, accepted because it does not change what switchctl
//! runs, or an error naming it because switchctl cannot honour it and its
//! absence would change behaviour. Every problem is collected, so `check`
//! shows them all in one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

use super::env::read_env_file;
use super::interpolate::{interpolate, network_name, project_name, split_image, Vars};
use super::traefik::routes_from_labels;
use super::{join_relative, Config, ConfigError, DockerHealthcheck, RouteConfig, ServiceConfig};

/// `compose = "file"` or a `[compose]` table.
#[derive(Debug, Clone, PartialEq)]
pub enum ComposeSection {
    /// The shorthand: just the file.
    File(PathBuf),
    /// The table.
    Table(ComposeTable),
}

/// `[compose]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComposeTable {
    /// The Compose file (relative to switchctl.toml's directory).
    pub file: PathBuf,
    /// Project name; default as Compose: the file's `name:`,
    /// `COMPOSE_PROJECT_NAME`, the directory name.
    #[serde(default)]
    pub project: Option<String>,
    /// Env files for interpolation, like `--env-file` (relative to
    /// switchctl.toml's directory); default: `.env` beside the Compose file.
    #[serde(default)]
    pub env_files: Option<Vec<PathBuf>>,
    /// The services switchctl switches; the others stay Compose's.
    #[serde(default)]
    pub services: Vec<String>,
    /// Traefik router labels become routes.
    #[serde(default)]
    pub routes_from_labels: bool,
}

impl<'de> Deserialize<'de> for ComposeSection {
    // By hand rather than `#[serde(untagged)]`, so that a typo in the table
    // is reported as the unknown field it is.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ComposeSection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Compose file path or a [compose] table")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ComposeSection, E> {
                Ok(ComposeSection::File(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ComposeSection, A::Error> {
                ComposeTable::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ComposeSection::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl ComposeSection {
    /// The section as a table (the shorthand has every default).
    pub fn table(&self) -> ComposeTable {
        match self {
            ComposeSection::File(file) => ComposeTable {
                file: file.clone(),
                project: None,
                env_files: None,
                services: Vec::new(),
                routes_from_labels: false,
            },
            ComposeSection::Table(t) => t.clone(),
        }
    }
}

/// What the Compose file says besides the switched services.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeProject {
    /// The project name.
    pub name: String,
    /// The Compose file, absolute.
    pub file: PathBuf,
    /// Networks the switched and hook services join.
    pub networks: Vec<NetworkSpec>,
    /// Compose services that hooks run as one-off containers.
    pub tasks: Vec<ServiceConfig>,
    /// Hosts of Traefik routers with a certresolver (ACME domains).
    pub acme_hosts: Vec<String>,
}

impl ComposeProject {
    /// The hook service `name`.
    pub fn task(&self, name: &str) -> Option<&ServiceConfig> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The network whose engine name is `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// A network as Compose names and creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Its key in the Compose file.
    pub key: String,
    /// Its name on the engine.
    pub name: String,
    /// Created by someone else: missing is an error, never created.
    pub external: bool,
    /// Its driver, when the file names one.
    pub driver: Option<String>,
}

/// What the Compose file says about one service beyond what every
/// switchctl service has.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComposeService {
    /// The project it belongs to.
    pub project: String,
    /// The variable in its image's tag position (`API_IMAGE_TAG`).
    pub tag_variable: Option<String>,
    /// `build:`: how to build `<image>:<tag>` when it is missing.
    pub build: Option<BuildSpec>,
    /// `depends_on`: checked before the new color starts, never started.
    pub depends_on: Vec<Dependency>,
    /// `labels`, passed through alongside switchctl's.
    pub labels: BTreeMap<String, String>,
    /// `user`
    pub user: Option<String>,
    /// `working_dir`
    pub working_dir: Option<String>,
    /// `entrypoint`
    pub entrypoint: Option<Vec<String>>,
    /// `extra_hosts` as `host:ip`.
    pub extra_hosts: Vec<String>,
    /// `stop_grace_period`: the stop timeout.
    pub stop_grace_period: Option<Duration>,
    /// `stop_signal`
    pub stop_signal: Option<String>,
    /// `init`
    pub init: Option<bool>,
    /// `logging`
    pub logging: Option<Logging>,
    /// `container_name`: not used (switchctl names the colors), but a
    /// dependency may be found by it.
    pub container_name: Option<String>,
}

/// `build:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BuildSpec {
    /// The context directory, absolute.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    /// `args`; `{tag}` stands for the deploy tag.
    pub args: BTreeMap<String, String>,
    /// `target`
    pub target: Option<String>,
    /// `labels`
    pub labels: BTreeMap<String, String>,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The Compose service depended on.
    pub service: String,
    /// What it must be.
    pub condition: Condition,
    /// Its `container_name`, if it has one (another way to find it).
    pub container_name: Option<String>,
    /// `required: false`: a missing dependency is only a warning.
    pub required: bool,
}

/// A `depends_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `service_started`
    Started,
    /// `service_healthy`
    Healthy,
    /// `service_completed_successfully`
    CompletedSuccessfully,
}

/// `logging:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Logging {
    /// `driver`
    pub driver: Option<String>,
    /// `options`
    pub options: BTreeMap<String, String>,
}

/// How switchctl treats each Compose service key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    /// Read and applied.
    Honoured,
    /// Accepted: it does not change what switchctl runs.
    Accepted,
}

/// Every service key switchctl accepts; any other key is an error.
const KEYS: &[(&str, Treatment)] = &[
    ("image", Treatment::Honoured),
    ("build", Treatment::Honoured),
    ("command", Treatment::Honoured),
    ("entrypoint", Treatment::Honoured),
    ("environment", Treatment::Honoured),
    ("env_file", Treatment::Honoured),
    ("healthcheck", Treatment::Honoured),
    ("volumes", Treatment::Honoured),
    ("networks", Treatment::Honoured),
    ("ports", Treatment::Honoured),
    ("expose", Treatment::Honoured),
    ("labels", Treatment::Honoured),
    ("user", Treatment::Honoured),
    ("working_dir", Treatment::Honoured),
    ("extra_hosts", Treatment::Honoured),
    ("stop_grace_period", Treatment::Honoured),
    ("stop_signal", Treatment::Honoured),
    ("init", Treatment::Honoured),
    ("logging", Treatment::Honoured),
    ("depends_on", Treatment::Honoured),
    ("container_name", Treatment::Accepted),
    ("restart", Treatment::Accepted),
    ("pull_policy", Treatment::Accepted),
    ("profiles", Treatment::Accepted),
];

/// What the import reads besides the Compose file: the environment and env
/// files. [`HostSources`] is the real one; tests and the fuzz target give
/// their own, so that [`import_text`] reads nothing from the host.
pub trait Sources {
    /// The environment variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The `KEY=value` lines of the env file at `path`; a missing file that
    /// is not `required` has none.
    fn env_file(&self, path: &Path, required: bool) -> Result<Vec<(String, String)>, String>;
}

/// The process environment and the files on disk.
pub struct HostSources;

impl Sources for HostSources {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn env_file(&self, path: &Path, required: bool) -> Result<Vec<(String, String)>, String> {
        if !required && !path.exists() {
            return Ok(Vec::new());
        }
        read_env_file(path)
    }
}

/// The Compose file read for `config`: the switched services (with
/// switchctl.toml's `[[service]]` overrides applied) and the project.
pub fn import(config: &Config, section: &ComposeSection) -> Result<(Vec<ServiceConfig>, ComposeProject), ConfigError> {
    let table = section.table();
    let path = config.resolve(&table.file);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    import_text(config, &table, &path, &text, &HostSources)
}

/// As [`import`], for the Compose file's `text` (read from `path`, which
/// names it in errors and anchors its relative paths), with variables and
/// env files from `sources`. The only other look at the host is the
/// project name's last fallback, the name of `path`'s directory.
pub fn import_text(
    config: &Config,
    table: &ComposeTable,
    path: &Path,
    text: &str,
    sources: &dyn Sources,
) -> Result<(Vec<ServiceConfig>, ComposeProject), ConfigError> {
    let path = path.to_path_buf();
    let err = |key: String, message: String| ConfigError::Invalid {
        path: path.clone(),
        key,
        message,
    };
    let doc: Value = serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        ConfigError::Parse {
            path: path.clone(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();

    // Variables: the environment wins over the env files; a later file
    // wins over an earlier one.
    let mut file_vars: BTreeMap<String, String> = BTreeMap::new();
    let env_files: Vec<(PathBuf, bool)> = match &table.env_files {
        Some(files) => files.iter().map(|f| (config.resolve(f), true)).collect(),
        None => vec![(dir.join(".env"), false)],
    };
    let mut errors = Vec::new();
    for (file, required) in env_files {
        match sources.env_file(&file, required) {
            Ok(vars) => file_vars.extend(vars),
            Err(m) => errors.push(ConfigError::Invalid {
                path: config.path.clone(),
                key: "compose.env_files".into(),
                message: m,
            }),
        }
    }
    let env = |name: &str| sources.var(name).or_else(|| file_vars.get(name).cloned());

    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        errors.push(err(
            "services".into(),
            "the Compose file has no `services:` mapping".into(),
        ));
        return Err(ConfigError::Many(errors));
    };
    let file_name = doc.get("name").and_then(Value::as_str);
    let file_name = match file_name.map(|n| interpolate(n, &env)).transpose() {
        Ok(n) => n,
        Err(m) => {
            errors.push(err("name".into(), m));
            None
        }
    };
    let env_project = env("COMPOSE_PROJECT_NAME");
    let project = match project_name(
        table.project.as_deref(),
        file_name.as_deref(),
        env_project.as_deref(),
        &path,
    ) {
        Ok(p) => p,
        Err(m) => {
            errors.push(err("name".into(), m));
            return Err(ConfigError::Many(errors));
        }
    };

    // Which services are switched.
    let declared = &config.services;
    let all: Vec<String> = services.keys().filter_map(|k| k.as_str().map(String::from)).collect();
    let switched: Vec<String> = if !table.services.is_empty() {
        table.services.clone()
    } else if !declared.is_empty() {
        declared.iter().map(|s| s.name.clone()).collect()
    } else {
        all.clone()
    };
    let hook_services: Vec<String> = config
        .hooks
        .iter()
        .filter_map(|h| h.service.clone())
        .filter(|s| !switched.contains(s))
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });

    // Variables in the tag position of a switched or hook service stand
    // for the deploy tag everywhere in those services (`{tag}`).
    let mut tag_variables = Vec::new();
    for name in switched.iter().chain(&hook_services) {
        let raw = services
            .get(name.as_str())
            .and_then(|d| d.get("image"))
            .and_then(Value::as_str);
        if let Some(Ok(image)) = raw.map(|r| split_image(r, &env)) {
            tag_variables.push(image.tag_variable);
        }
    }
    let vars = |name: &str| {
        if tag_variables.iter().any(|t| t == name) {
            Some("{tag}".to_string())
        } else {
            env(name)
        }
    };

    let reader = Reader {
        path: &path,
        dir: &dir,
        project: &project,
        env: &env,
        vars: &vars,
        doc: &doc,
        routes_from_labels: table.routes_from_labels,
        sources,
    };
    let mut networks: Vec<NetworkSpec> = Vec::new();
    let mut acme_hosts: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for name in &switched {
        let Some(def) = services.get(name.as_str()) else {
            errors.push(err(
                format!("services.{name}"),
                format!(
                    "switched by switchctl but not a service of the Compose file (its services: {})",
                    all.join(", ")
                ),
            ));
            continue;
        };
        let base = declared.iter().find(|s| &s.name == name);
        match reader.service(name, def, base, true) {
            Ok(read) => {
                add_networks(&mut networks, read.networks);
                for h in read.acme_hosts {
                    if !acme_hosts.contains(&h) {
                        acme_hosts.push(h);
                    }
                }
                out.push(read.service);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    // [[service]] entries that are not switched Compose services.
    for s in declared {
        if switched.contains(&s.name) {
            continue;
        }
        if all.contains(&s.name) {
            errors.push(ConfigError::Invalid {
                path: config.path.clone(),
                key: format!("service {:?}", s.name),
                message: format!(
                    "overrides Compose service {:?}, which [compose] services does not switch; add it to `services` or remove the [[service]]",
                    s.name
                ),
            });
        } else {
            out.push(s.clone());
        }
    }
    let mut tasks = Vec::new();
    for name in &hook_services {
        let Some(def) = services.get(name.as_str()) else {
            // validate() names the hook whose service is unknown.
            continue;
        };
        match reader.service(name, def, None, false) {
            Ok(read) => {
                add_networks(&mut networks, read.networks);
                tasks.push(read.service);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    ConfigError::from_many(errors)?;
    Ok((
        out,
        ComposeProject {
            name: project,
            file: path.clone(),
            networks,
            tasks,
            acme_hosts,
        },
    ))
}

fn add_networks(all: &mut Vec<NetworkSpec>, found: Vec<NetworkSpec>) {
    for n in found {
        if !all.iter().any(|m| m.name == n.name) {
            all.push(n);
        }
    }
}

/// What was read of one service.
struct Read {
    service: ServiceConfig,
    networks: Vec<NetworkSpec>,
    acme_hosts: Vec<String>,
}

/// Reads services of one Compose file.
struct Reader<'a> {
    path: &'a Path,
    dir: &'a Path,
    project: &'a str,
    /// The environment and env files.
    env: &'a dyn Vars,
    /// As `env`, with tag variables standing for `{tag}`.
    vars: &'a dyn Vars,
    doc: &'a Value,
    routes_from_labels: bool,
    /// Where services' `env_file`s are read.
    sources: &'a dyn Sources,
}

impl Reader<'_> {
    fn err(&self, key: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key,
            message,
        }
    }

    /// Read service `name`. `switched`: it is one of the colors (a port is
    /// needed, routes are read); else a hook's one-off service.
    fn service(
        &self,
        name: &str,
        def: &Value,
        base: Option<&ServiceConfig>,
        switched: bool,
    ) -> Result<Read, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let at = |key: &str| format!("services.{name}.{key}");
        let Some(def) = def.as_mapping() else {
            return Err(vec![self.err(at(""), "must be a mapping".into())]);
        };
        for key in def.keys() {
            let Some(key) = key.as_str() else {
                errors.push(self.err(at("?"), "keys must be strings".into()));
                continue;
            };
            if key.starts_with("x-") {
                continue;
            }
            if !KEYS.iter().any(|(k, _)| *k == key) {
                errors.push(self.err(
                    at(key),
                    format!(
                        "switchctl cannot honour `{key}`, and running the service without it would change its behaviour; \
                         remove it from the service, or leave the service to Compose (not in [compose] services). \
                         docs/configuration.md lists every key"
                    ),
                ));
            }
        }
        // Every string of the service, interpolated.
        let def: Mapping = def
            .iter()
            .filter(|(k, _)| k.as_str() != Some("image"))
            .filter_map(|(k, v)| match self.interpolate_value(v) {
                Ok(v) => Some((k.clone(), v)),
                Err(m) => {
                    errors.push(self.err(at(k.as_str().unwrap_or("?")), m));
                    None
                }
            })
            .collect();
        let raw_image = match def_get_raw(self.doc, name, "image") {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                errors.push(self.err(at("image"), "must be a string".into()));
                None
            }
            None => None,
        };
        let mut compose = ComposeService {
            project: self.project.to_string(),
            ..Default::default()
        };

        // Image and the tag variable.
        let override_image = base.and_then(|b| b.image.clone());
        let image = match (&override_image, raw_image) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(raw)) => match split_image(&raw, self.env) {
                Ok(r) => {
                    compose.tag_variable = Some(r.tag_variable);
                    Some(r.repository)
                }
                Err(m) => {
                    errors.push(self.err(at("image"), m));
                    None
                }
            },
            // Compose names the image of a built service `<project>-<service>`.
            (None, None) if def.contains_key("build") => Some(format!("{}-{name}", self.project)),
            (None, None) => None,
        };

        let mut env = BTreeMap::new();
        match def.get("env_file") {
            None | Some(Value::Null) => {}
            Some(v) => match self.env_files(v) {
                Ok(vars) => env.extend(vars),
                Err(m) => errors.push(self.err(at("env_file"), m)),
            },
        }
        match def.get("environment") {
            None | Some(Value::Null) => {}
            Some(v) => match key_values(v, "environment", Some(self.env)) {
                Ok(vars) => env.extend(vars),
                Err(m) => errors.push(self.err(at("environment"), m)),
            },
        }
        let mut take = |key: &str, r: Result<Option<Vec<String>>, String>| match r {
            Ok(v) => v,
            Err(m) => {
                errors.push(self.err(at(key), m));
                None
            }
        };
        compose.entrypoint = take("entrypoint", command(def.get("entrypoint")));
        let command = take("command", command(def.get("command")));
        let ports = take("ports", strings(def.get("ports"), "ports").map(Some)).unwrap_or_default();
        let expose = take("expose", strings(def.get("expose"), "expose").map(Some)).unwrap_or_default();
        let volumes = take("volumes", self.volumes(def.get("volumes")).map(Some)).unwrap_or_default();
        let mut port = match container_port(&ports, &expose) {
            Ok(p) => p,
            Err(m) => {
                errors.push(self.err(at("ports"), m));
                None
            }
        };
        let (network_names, networks) = match self.networks(def.get("networks")) {
            Ok(n) => n,
            Err(m) => {
                errors.push(self.err(at("networks"), m));
                (Vec::new(), Vec::new())
            }
        };
        let docker_healthcheck = match def.get("healthcheck") {
            Some(Value::Mapping(h)) => match healthcheck(h) {
                Ok(h) => Some(h),
                Err(m) => {
                    errors.push(self.err(at("healthcheck"), m));
                    None
                }
            },
            None | Some(Value::Null) => None,
            Some(_) => {
                errors.push(self.err(at("healthcheck"), "must be a mapping".into()));
                None
            }
        };
        match def.get("labels") {
            None | Some(Value::Null) => {}
            Some(v) => match key_values(v, "labels", None) {
                Ok(l) => compose.labels = l,
                Err(m) => errors.push(self.err(at("labels"), m)),
            },
        }
        let scalar = |key: &str| -> Result<Option<String>, String> {
            match def.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(Value::Bool(b)) => Ok(Some(b.to_string())),
                Some(_) => Err("must be a string".into()),
            }
        };
        let mut one = |key: &str| match scalar(key) {
            Ok(v) => v,
            Err(m) => {
                errors.push(self.err(at(key), m));
                None
            }
        };
        compose.user = one("user");
        compose.working_dir = one("working_dir");
        compose.stop_signal = one("stop_signal");
        compose.container_name = one("container_name");
        let init = one("init");
        let grace = one("stop_grace_period");
        let pull_policy = one("pull_policy");
        compose.init = init.map(|i| i == "true");
        if let Some(g) = grace {
            match compose_duration(&g) {
                Ok(d) => compose.stop_grace_period = Some(d),
                Err(m) => errors.push(self.err(at("stop_grace_period"), m)),
            }
        }
        if pull_policy.as_deref() == Some("always") {
            errors.push(self.err(
                at("pull_policy"),
                "switchctl never pulls during a deploy (it builds or uses the image on the host); remove `pull_policy: always`".into(),
            ));
        }
        match def.get("extra_hosts") {
            None | Some(Value::Null) => {}
            Some(v) => match key_values(v, "extra_hosts", None) {
                Ok(h) => {
                    compose.extra_hosts = h
                        .into_iter()
                        .map(|(host, ip)| format!("{host}:{}", ip.trim_start_matches('=')))
                        .collect()
                }
                Err(_) => match strings(Some(v), "extra_hosts") {
                    Ok(h) => compose.extra_hosts = h.into_iter().map(|h| h.replacen('=', ":", 1)).collect(),
                    Err(m) => errors.push(self.err(at("extra_hosts"), m)),
                },
            },
        }
        match def.get("logging") {
            None | Some(Value::Null) => {}
            Some(v) => match logging(v) {
                Ok(l) => compose.logging = Some(l),
                Err(m) => errors.push(self.err(at("logging"), m)),
            },
        }
        match def.get("build") {
            None | Some(Value::Null) => {}
            Some(v) => match self.build(v) {
                Ok(b) => compose.build = Some(b),
                Err((key, m)) => errors.push(self.err(at(&key), m)),
            },
        }
        match def.get("depends_on") {
            None | Some(Value::Null) => {}
            Some(v) => match self.depends_on(v) {
                Ok(d) => compose.depends_on = d,
                Err(m) => errors.push(self.err(at("depends_on"), m)),
            },
        }

        let mut label_routes = Vec::new();
        let mut acme_hosts = Vec::new();
        if switched && self.routes_from_labels {
            match routes_from_labels(&compose.labels) {
                Ok(r) => {
                    port = port.or(r.port);
                    acme_hosts = r.acme_hosts;
                    label_routes = r
                        .routes
                        .into_iter()
                        .map(|r| RouteConfig {
                            hosts: r.hosts,
                            path_prefix: r.path_prefix,
                            strip_prefix: r.strip_prefix,
                        })
                        .collect();
                }
                Err(e) => errors.push(self.err(at("labels"), e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut service = ServiceConfig {
            image,
            port,
            command,
            env,
            volumes,
            networks: network_names,
            docker_healthcheck,
            compose: Some(compose),
            label_routes,
            ..ServiceConfig::named(name)
        };
        if let Some(b) = base {
            service.port = b.port.or(service.port);
            service.command = b.command.clone().or(service.command);
            service.cwd = b.cwd.clone();
            service.env.extend(b.env.clone());
            service.env_file = b.env_file.clone();
            service.volumes.extend(b.volumes.iter().cloned());
            service.networks.extend(b.networks.iter().cloned());
            service.health = b.health.clone();
            service.route = b.route.clone();
        }
        service.health.wait_for_docker_starting = false;
        Ok(Read {
            service,
            networks,
            acme_hosts,
        })
    }

    /// Interpolate every string in `v` (keys are left as they are).
    fn interpolate_value(&self, v: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => Value::String(interpolate(s, self.vars)?),
            Value::Sequence(items) => Value::Sequence(
                items
                    .iter()
                    .map(|i| self.interpolate_value(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Mapping(m) => Value::Mapping(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), self.interpolate_value(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// `env_file:` (a path, a list of paths, or `{path, required}` items),
    /// relative to the Compose file.
    fn env_files(&self, v: &Value) -> Result<Vec<(String, String)>, String> {
        let items: Vec<Value> = match v {
            Value::Sequence(items) => items.clone(),
            other => vec![other.clone()],
        };
        let mut vars = Vec::new();
        for item in items {
            let (file, required) = match &item {
                Value::String(s) => (s.clone(), true),
                Value::Mapping(m) => (
                    m.get("path")
                        .and_then(Value::as_str)
                        .ok_or("long syntax needs `path`")?
                        .to_string(),
                    m.get("required").and_then(Value::as_bool).unwrap_or(true),
                ),
                _ => return Err("must be a path or a list of paths".into()),
            };
            let p = join_relative(self.dir, Path::new(&file));
            vars.extend(self.sources.env_file(&p, required)?);
        }
        Ok(vars)
    }

    /// `volumes:` as `source:target[:mode]`, with named volumes as Compose
    /// names them and relative binds from the Compose file's directory.
    fn volumes(&self, v: Option<&Value>) -> Result<Vec<String>, String> {
        let Some(Value::Sequence(items)) = v else {
            return match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                _ => Err("must be a list".into()),
            };
        };
        let mut out = Vec::new();
        for item in items {
            let (source, target, ro) = match item {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    match parts.as_slice() {
                        [target] => (None, target.to_string(), None),
                        [src, target] => (Some(src.to_string()), target.to_string(), None),
                        [src, target, mode] => (Some(src.to_string()), target.to_string(), Some(mode.to_string())),
                        _ => return Err(format!("cannot read volume {s:?}")),
                    }
                }
                Value::Mapping(m) => {
                    for k in m.keys().filter_map(Value::as_str) {
                        if !["type", "source", "target", "read_only"].contains(&k) {
                            return Err(format!("volume key `{k}` is not supported"));
                        }
                    }
                    let kind = m.get("type").and_then(Value::as_str).unwrap_or("volume");
                    if kind != "volume" && kind != "bind" {
                        return Err(format!("volume type `{kind}` is not supported (volume and bind are)"));
                    }
                    let target = m
                        .get("target")
                        .and_then(Value::as_str)
                        .ok_or("a volume needs `target`")?;
                    let ro = (m.get("read_only").and_then(Value::as_bool) == Some(true)).then(|| "ro".to_string());
                    (
                        m.get("source").and_then(Value::as_str).map(String::from),
                        target.to_string(),
                        ro,
                    )
                }
                _ => return Err("items must be strings or mappings".into()),
            };
            let Some(source) = source else {
                // An anonymous volume.
                out.push(target);
                continue;
            };
            let source = if source.starts_with('.') || source.starts_with('~') {
                join_relative(self.dir, Path::new(&source)).display().to_string()
            } else if source.starts_with('/') {
                source
            } else {
                let def = self.doc.get("volumes").and_then(|v| v.get(source.as_str()));
                let external = def.and_then(|d| d.get("external")).and_then(Value::as_bool) == Some(true);
                let name = def.and_then(|d| d.get("name")).and_then(Value::as_str);
                if self.doc.get("volumes").is_some() && def.is_none() {
                    return Err(format!(
                        "named volume {source:?} is not declared under the top-level `volumes:`"
                    ));
                }
                network_name(self.project, &source, external, name)
            };
            out.push(match ro {
                Some(mode) => format!("{source}:{target}:{mode}"),
                None => format!("{source}:{target}"),
            });
        }
        Ok(out)
    }

    /// `networks:` (a list, or a mapping with empty values) as engine names,
    /// and how each is created. No `networks:` means Compose's `default`.
    fn networks(&self, v: Option<&Value>) -> Result<(Vec<String>, Vec<NetworkSpec>), String> {
        let keys: Vec<String> = match v {
            None | Some(Value::Null) => vec!["default".into()],
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|i| i.as_str().map(String::from).ok_or("items must be strings".to_string()))
                .collect::<Result<_, _>>()?,
            Some(Value::Mapping(m)) => {
                let mut keys = Vec::new();
                for (k, v) in m {
                    let k = k.as_str().ok_or("keys must be strings")?;
                    match v {
                        Value::Null => {}
                        Value::Mapping(o) if o.is_empty() => {}
                        Value::Mapping(o) => {
                            let what: Vec<&str> = o.keys().filter_map(Value::as_str).collect();
                            return Err(format!(
                                "network {k}: {} cannot be honoured (both colors would share them); remove them",
                                what.join(", ")
                            ));
                        }
                        _ => return Err(format!("network {k}: must be empty or a mapping")),
                    }
                    keys.push(k.to_string());
                }
                keys
            }
            Some(_) => return Err("must be a list or a mapping".into()),
        };
        let top = self.doc.get("networks");
        let mut names = Vec::new();
        let mut specs = Vec::new();
        for key in keys {
            let def = top.and_then(|t| t.get(key.as_str()));
            if def.is_none() && key != "default" {
                return Err(format!(
                    "network {key:?} is not declared under the top-level `networks:`"
                ));
            }
            let external = match def.and_then(|d| d.get("external")) {
                Some(Value::Bool(b)) => *b,
                // Compose's old form: `external: {name: x}`.
                Some(Value::Mapping(_)) => true,
                _ => false,
            };
            let name = def
                .and_then(|d| d.get("name"))
                .or_else(|| def.and_then(|d| d.get("external")).and_then(|e| e.get("name")))
                .and_then(Value::as_str)
                .map(|n| interpolate(n, self.env))
                .transpose()?;
            let driver = def
                .and_then(|d| d.get("driver"))
                .and_then(Value::as_str)
                .map(String::from);
            let name = network_name(self.project, &key, external, name.as_deref());
            names.push(name.clone());
            specs.push(NetworkSpec {
                key,
                name,
                external,
                driver,
            });
        }
        Ok((names, specs))
    }

    /// `build:` (a context path, or the long form).
    fn build(&self, v: &Value) -> Result<BuildSpec, (String, String)> {
        let e = |k: &str, m: String| (format!("build.{k}"), m);
        let mut spec = BuildSpec {
            dockerfile: "Dockerfile".into(),
            ..Default::default()
        };
        let context = match v {
            Value::String(s) => s.clone(),
            Value::Mapping(m) => {
                for key in m.keys().filter_map(Value::as_str) {
                    match key {
                        "context" | "dockerfile" | "args" | "target" | "labels" => {}
                        // Speed only: what is built is the same.
                        "cache_from" => {}
                        "pull" if m.get("pull") != Some(&Value::Bool(true)) => {}
                        other => {
                            return Err(e(
                                other,
                                format!("switchctl builds with context, dockerfile, args, target and labels; it cannot honour `build.{other}`: remove it or build the image yourself before the deploy"),
                            ))
                        }
                    }
                }
                if let Some(d) = m.get("dockerfile") {
                    spec.dockerfile = d
                        .as_str()
                        .ok_or_else(|| e("dockerfile", "must be a string".into()))?
                        .into();
                }
                if let Some(t) = m.get("target") {
                    spec.target = Some(t.as_str().ok_or_else(|| e("target", "must be a string".into()))?.into());
                }
                if let Some(a) = m.get("args") {
                    spec.args = key_values(a, "args", Some(self.env)).map_err(|m| e("args", m))?;
                }
                if let Some(l) = m.get("labels") {
                    spec.labels = key_values(l, "labels", None).map_err(|m| e("labels", m))?;
                }
                m.get("context").and_then(Value::as_str).unwrap_or(".").to_string()
            }
            _ => return Err(e("", "must be a path or a mapping".into())),
        };
        if context.contains("://") || context.starts_with("git@") {
            return Err(e(
                "context",
                "a remote build context cannot be used; check it out on the host".into(),
            ));
        }
        spec.context = join_relative(self.dir, Path::new(&context));
        Ok(spec)
    }

    /// `depends_on:` (a list, or a mapping with conditions).
    fn depends_on(&self, v: &Value) -> Result<Vec<Dependency>, String> {
        let services = self.doc.get("services");
        let container_name = |s: &str| {
            services
                .and_then(|all| all.get(s))
                .and_then(|d| d.get("container_name"))
                .and_then(Value::as_str)
                .and_then(|n| interpolate(n, self.env).ok())
        };
        let mut out = Vec::new();
        let mut add = |service: &str, condition: Condition, required: bool| -> Result<(), String> {
            if services.and_then(|all| all.get(service)).is_none() {
                return Err(format!("{service:?} is not a service of the Compose file"));
            }
            out.push(Dependency {
                service: service.to_string(),
                condition,
                container_name: container_name(service),
                required,
            });
            Ok(())
        };
        match v {
            Value::Sequence(items) => {
                for i in items {
                    add(i.as_str().ok_or("items must be strings")?, Condition::Started, true)?;
                }
            }
            Value::Mapping(m) => {
                for (k, d) in m {
                    let service = k.as_str().ok_or("keys must be strings")?;
                    let condition = match d.get("condition").and_then(Value::as_str) {
                        None | Some("service_started") => Condition::Started,
                        Some("service_healthy") => Condition::Healthy,
                        Some("service_completed_successfully") => Condition::CompletedSuccessfully,
                        Some(other) => return Err(format!("{service}: unknown condition {other:?}")),
                    };
                    let required = d.get("required").and_then(Value::as_bool).unwrap_or(true);
                    add(service, condition, required)?;
                }
            }
            _ => return Err("must be a list or a mapping".into()),
        }
        Ok(out)
    }
}

/// The raw (not interpolated) value of `services.<name>.<key>`.
fn def_get_raw(doc: &Value, name: &str, key: &str) -> Option<Value> {
    doc.get("services")?.get(name)?.get(key).cloned()
}

/// A list of strings (numbers allowed), or one string.
fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Number(n)) => Ok(vec![n.to_string()]),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Mapping(m) if what == "ports" => m
                    .get("target")
                    .and_then(Value::as_u64)
                    .map(|t| t.to_string())
                    .ok_or_else(|| "a long-syntax port needs `target`".to_string()),
                _ => Err(format!("{what}: items must be strings")),
            })
            .collect(),
        Some(_) => Err(format!("{what}: must be a string or a list")),
    }
}

/// `command:` / `entrypoint:`: a list, or a string split as a shell would
/// split words (quotes respected).
fn command(v: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => shell_words(s).map(Some),
        Some(other) => strings(Some(other), "command").map(Some),
    }
}

/// Split `s` into words: whitespace separates, quotes group, `\` escapes.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {s:?}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A mapping or a `KEY=value` list. With `lookup`, a key without a value
/// takes it from the environment (as `environment: [KEY]` does).
fn key_values(v: &Value, what: &str, lookup: Option<&dyn Vars>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let scalar = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().ok_or(format!("{what}: keys must be strings"))?;
                let v = match v {
                    Value::Null => match lookup.and_then(|l| l.get(k)) {
                        Some(v) => v,
                        None => continue,
                    },
                    v => scalar(v).ok_or(format!("{what}.{k}: must be a string, number or boolean"))?,
                };
                out.insert(k.to_string(), v);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = item.as_str().ok_or(format!("{what}: items must be strings"))?;
                match item.split_once('=') {
                    Some((k, v)) => {
                        out.insert(k.to_string(), v.to_string());
                    }
                    None => {
                        if let Some(v) = lookup.and_then(|l| l.get(item)) {
                            out.insert(item.to_string(), v);
                        }
                    }
                }
            }
        }
        _ => return Err(format!("{what}: must be a mapping or a list")),
    }
    Ok(out)
}

fn logging(v: &Value) -> Result<Logging, String> {
    let m = v.as_mapping().ok_or("must be a mapping")?;
    for k in m.keys().filter_map(Value::as_str) {
        if k != "driver" && k != "options" {
            return Err(format!("logging key `{k}` is not supported"));
        }
    }
    Ok(Logging {
        driver: m.get("driver").and_then(Value::as_str).map(String::from),
        options: match m.get("options") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(o) => key_values(o, "logging.options", None)?,
        },
    })
}

/// A Compose duration: `1m30s`, `10s`, `500ms`, `1h`.
fn compose_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e})"))
}

/// The container port: from `ports` ("8080:8000", "8000", "127.0.0.1:8080:8000/tcp") or `expose`.
fn container_port(ports: &[String], expose: &[String]) -> Result<Option<u16>, String> {
    let spec = ports.first().or(expose.first());
    let Some(spec) = spec else { return Ok(None) };
    let target = spec.rsplit(':').next().unwrap_or(spec);
    let target = target.split('/').next().unwrap_or(target);
    target
        .parse()
        .map(Some)
        .map_err(|_| format!("cannot read a container port from {spec:?}"))
}

fn healthcheck(h: &Mapping) -> Result<DockerHealthcheck, String> {
    for key in h.keys().filter_map(Value::as_str) {
        if ![
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ]
        .contains(&key)
        {
            return Err(format!("healthcheck key `{key}` is not supported"));
        }
    }
    let test = match h.get("test") {
        _ if h.get("disable").and_then(Value::as_bool) == Some(true) => vec!["NONE".into()],
        Some(Value::String(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or("test items must be strings".to_string())
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("needs `test`".into()),
    };
    let dur = |key: &str| -> Result<Option<Duration>, String> {
        match h.get(key).and_then(Value::as_str) {
            None => Ok(None),
            Some(s) => compose_duration(s).map(Some).map_err(|e| format!("{key}: {e}")),
        }
    };
    Ok(DockerHealthcheck {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        retries: match h.get("retries") {
            None => None,
            Some(r) => Some(
                r.as_u64()
                    .or_else(|| r.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or("retries: must be a number")?,
            ),
        },
        start_period: dur("start_period")?,
    })
}

/// Every Compose service key and its treatment, for docs and tests.
pub fn key_treatments() -> impl Iterator<Item = (&'static str, bool)> {
    KEYS.iter().map(|(k, t)| (*k, *t == Treatment::Honoured))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write `files` into a temp dir and load its switchctl.toml.
    fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let c = Config::load(&dir.path().join("switchctl.toml"));
        (dir, c)
    }

    const STACK: &str = r#"
name: ignored-when-project-is-set
services:
  postgres:
    image: postgres:16
    container_name: app-prod-postgres
    restart: unless-stopped
    healthcheck: {test: ["CMD", "pg_isready"], interval: 10s}
  api:
    container_name: app-prod-api
    build:
      context: ./api
      args: {APP_VERSION: "${API_IMAGE_TAG:-latest}", PIP_INDEX: "${PIP_INDEX:-pypi}"}
    image: app-api:${API_IMAGE_TAG:-latest}
    command: uvicorn app.main:app --host 0.0.0.0 --port 8000 --proxy-headers
    env_file: [.env.production]
    environment:
      DATABASE_URL: postgresql://${DB_USER}:${DB_PASSWORD}@postgres/app
    depends_on:
      postgres: {condition: service_healthy}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8000/health"]
      interval: 60s
      start_period: 60s
    stop_grace_period: 1m30s
    networks: [app-prod-network, traefik-public]
    restart: unless-stopped
    labels:
      - traefik.enable=true
      - traefik.http.routers.api.rule=Host(`app.example.org`) && PathPrefix(`/api`)
      - traefik.http.routers.api.entrypoints=websecure
      - traefik.http.routers.api.tls.certresolver=letsencrypt
      - traefik.http.routers.api.middlewares=api-strip
      - traefik.http.middlewares.api-strip.stripprefix.prefixes=/api
      - traefik.http.services.api.loadbalancer.server.port=8000
  api-migrations:
    build: {context: ./api, dockerfile: Dockerfile.migrations}
    image: app-api-migrations:${API_IMAGE_TAG:-latest}
    command: alembic upgrade head
    env_file: [.env.production]
    networks: [app-prod-network]
    volumes: [migrations:/state]
    restart: "no"
networks:
  app-prod-network: {driver: bridge}
  traefik-public: {external: true}
volumes:
  migrations: {}
"#;

    const ENV: &str = "DB_USER=app\nDB_PASSWORD=secret\nAPI_IMAGE_TAG=v1\n";

    const TOML: &str = r#"
driver = "docker"
state_dir = "state"
[compose]
file = "docker-compose.prod.yml"
project = "app-prod"
env_files = [".env.production"]
services = ["api"]
routes_from_labels = true
[[hook]]
when = "before_flip"
service = "api-migrations"
"#;

    #[test]
    fn the_issue_stack_loads_unchanged() {
        let (dir, c) = load(&[
            ("switchctl.toml", TOML),
            ("docker-compose.prod.yml", STACK),
            (".env.production", ENV),
        ]);
        let c = c.unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"), "relative to the config");
        let project = c.project.as_ref().unwrap();
        assert_eq!(project.name, "app-prod");
        assert_eq!(c.services.len(), 1);
        let api = &c.services[0];
        assert_eq!(api.image.as_deref(), Some("app-api"));
        assert_eq!(api.port, Some(8000), "from loadbalancer.server.port");
        assert_eq!(api.command.as_ref().unwrap()[0], "uvicorn");
        assert_eq!(api.env["DATABASE_URL"], "postgresql://app:secret@postgres/app");
        assert_eq!(api.env["DB_USER"], "app", "env_file values are the service's env");
        assert_eq!(api.networks, ["app-prod_app-prod-network", "traefik-public"]);
        let routes = api.routes();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].hosts, ["app.example.org"]);
        assert_eq!(routes[0].path_prefix, "/api");
        assert!(routes[0].strip_prefix);
        let compose = api.compose.as_ref().unwrap();
        assert_eq!(compose.tag_variable.as_deref(), Some("API_IMAGE_TAG"));
        let build = compose.build.as_ref().unwrap();
        assert_eq!(build.context, dir.path().join("api"));
        assert_eq!(build.args["APP_VERSION"], "{tag}", "the tag variable is the deploy tag");
        assert_eq!(build.args["PIP_INDEX"], "pypi");
        assert_eq!(compose.depends_on[0].service, "postgres");
        assert_eq!(compose.depends_on[0].condition, Condition::Healthy);
        assert_eq!(
            compose.depends_on[0].container_name.as_deref(),
            Some("app-prod-postgres")
        );
        assert_eq!(compose.stop_grace_period, Some(Duration::from_secs(90)));
        assert_eq!(api.stop_timeout(&c), Duration::from_secs(90));
        assert_eq!(
            api.docker_healthcheck.as_ref().unwrap().start_period,
            Some(Duration::from_secs(60))
        );
        assert_eq!(project.acme_hosts, ["app.example.org"]);
        assert_eq!(
            c.acme_domains(),
            Vec::<String>::new(),
            "no ACME without [proxy.tls.acme]"
        );
        let migrations = project.task("api-migrations").unwrap();
        assert_eq!(migrations.image.as_deref(), Some("app-api-migrations"));
        assert_eq!(migrations.volumes, ["app-prod_migrations:/state"]);
        assert_eq!(
            migrations.compose.as_ref().unwrap().build.as_ref().unwrap().dockerfile,
            "Dockerfile.migrations"
        );
        let external = project.network("traefik-public").unwrap();
        assert!(external.external);
        let own = project.network("app-prod_app-prod-network").unwrap();
        assert_eq!(own.driver.as_deref(), Some("bridge"));
    }

    /// Variables and env files from memory.
    struct MemorySources {
        vars: Vec<(&'static str, &'static str)>,
        files: Vec<(&'static str, &'static str)>,
    }

    impl Sources for MemorySources {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }

        fn env_file(&self, path: &Path, required: bool) -> Result<Vec<(String, String)>, String> {
            match self.files.iter().find(|(p, _)| Path::new(p) == path) {
                Some((_, text)) => Ok(text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()),
                None if required => Err(format!("no env file {}", path.display())),
                None => Ok(Vec::new()),
            }
        }
    }

    #[test]
    fn a_compose_text_is_imported_from_its_sources_alone() {
        let dir = Path::new("/nowhere-on-this-host");
        let config = Config::parse(&dir.join("switchctl.toml"), TOML).unwrap();
        let table = config.compose.as_ref().unwrap().table();
        let path = dir.join("docker-compose.prod.yml");
        let sources = MemorySources {
            vars: vec![("DB_USER", "from-environment")],
            files: vec![("/nowhere-on-this-host/.env.production", ENV)],
        };
        let (services, project) = import_text(&config, &table, &path, STACK, &sources).unwrap();
        assert_eq!(project.name, "app-prod");
        assert_eq!(project.file, path);
        let api = &services[0];
        assert_eq!(
            api.env["DATABASE_URL"], "postgresql://from-environment:secret@postgres/app",
            "the environment wins over the env files"
        );
        let build = api.compose.as_ref().unwrap().build.as_ref().unwrap();
        assert_eq!(build.context, dir.join("api"), "relative to the Compose file");
        let missing = MemorySources {
            vars: Vec::new(),
            files: Vec::new(),
        };
        let e = import_text(&config, &table, &path, STACK, &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no env file /nowhere-on-this-host/.env.production"), "{e}");
    }

    #[test]
    fn certresolver_hosts_are_acme_domains_once_tls_is_on() {
        let toml = format!(
            "{TOML}\n[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\n[proxy.tls.acme]\ncontact = \"mailto:ops@example.org\"\n"
        );
        let (_dir, c) = load(&[
            ("switchctl.toml", &toml),
            ("docker-compose.prod.yml", STACK),
            (".env.production", ENV),
        ]);
        assert_eq!(c.unwrap().acme_domains(), ["app.example.org"]);
    }

    #[test]
    fn the_shorthand_still_works_and_the_project_defaults_to_the_file_name() {
        let compose = "name: shop\nservices:\n  web:\n    image: web:${TAG}\n    expose: [\"3000\"]\n";
        let (_dir, c) = load(&[
            ("switchctl.toml", "compose = \"docker-compose.yml\"\n"),
            ("docker-compose.yml", compose),
        ]);
        let c = c.unwrap();
        assert_eq!(c.project.as_ref().unwrap().name, "shop");
        assert_eq!(c.services[0].image.as_deref(), Some("web"));
        assert_eq!(c.services[0].port, Some(3000));
        assert_eq!(c.services[0].networks, ["shop_default"], "Compose's default network");
    }

    #[test]
    fn a_fixed_tag_says_how_to_fix_it_and_an_override_fixes_it() {
        let compose = "services:\n  web:\n    image: web:1.2\n    expose: [\"3000\"]\n";
        let (_dir, c) = load(&[
            ("switchctl.toml", "compose = \"docker-compose.yml\"\n"),
            ("docker-compose.yml", compose),
        ]);
        let e = c.unwrap_err().to_string();
        assert!(e.contains("fixed tag") && e.contains("image = \"web\""), "{e}");
        let (_dir, c) = load(&[
            (
                "switchctl.toml",
                "compose = \"docker-compose.yml\"\n[[service]]\nname = \"web\"\nimage = \"web\"\n",
            ),
            ("docker-compose.yml", compose),
        ]);
        assert_eq!(c.unwrap().services[0].image.as_deref(), Some("web"));
    }

    #[test]
    fn every_problem_is_reported_in_one_run() {
        let compose = r#"
services:
  web:
    image: web:1.2
    privileged: true
    networks: [nowhere]
    labels: ["traefik.http.routers.w.rule=Method(`GET`)"]
    stop_grace_period: soon
"#;
        let toml = "[compose]\nfile = \"docker-compose.yml\"\nproject = \"p\"\nroutes_from_labels = true\n\
                    [[hook]]\nwhen = \"before_flip\"\ncommand = []\n";
        let (_dir, c) = load(&[("switchctl.toml", toml), ("docker-compose.yml", compose)]);
        let e = c.unwrap_err().to_string();
        for part in [
            "services.web.image",
            "services.web.privileged",
            "services.web.networks",
            "services.web.labels",
            "services.web.stop_grace_period",
            "hook[0] (before_flip).command",
        ] {
            assert!(e.contains(part), "{part} missing from:\n{e}");
        }
    }

    #[test]
    fn a_typo_in_the_compose_table_is_named() {
        let (_dir, c) = load(&[("switchctl.toml", "[compose]\nfile = \"x.yml\"\nservice = [\"a\"]\n")]);
        let e = c.unwrap_err().to_string();
        assert!(e.contains("unknown field `service`"), "{e}");
    }

    #[test]
    fn env_files_feed_interpolation_and_the_project_name() {
        let compose = "services:\n  web:\n    image: ${REG}/web:${WEB_TAG:-latest}\n    expose: [\"80\"]\n";
        let (_dir, c) = load(&[
            (
                "switchctl.toml",
                "[compose]\nfile = \"docker-compose.yml\"\nenv_files = [\"a.env\", \"b.env\"]\n",
            ),
            ("docker-compose.yml", compose),
            ("a.env", "REG=one.example\nCOMPOSE_PROJECT_NAME=from-env-file\n"),
            ("b.env", "REG=two.example\n"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.services[0].image.as_deref(), Some("two.example/web"));
        assert_eq!(c.project.as_ref().unwrap().name, "from-env-file");
        let (_dir, c) = load(&[
            (
                "switchctl.toml",
                "[compose]\nfile = \"docker-compose.yml\"\nenv_files = [\"missing.env\"]\n",
            ),
            ("docker-compose.yml", compose),
        ]);
        assert!(c.unwrap_err().to_string().contains("missing.env"));
    }

    #[test]
    fn a_hook_service_must_exist() {
        let compose = "services:\n  web:\n    image: web:${T}\n    expose: [\"80\"]\n";
        let toml = "compose = \"docker-compose.yml\"\n[[hook]]\nwhen = \"before_flip\"\nservice = \"nope\"\n";
        let (_dir, c) = load(&[("switchctl.toml", toml), ("docker-compose.yml", compose)]);
        let e = c.unwrap_err().to_string();
        assert!(e.contains("hook[0]") && e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"sh -c "echo 'a b' && exit 1" x\ y"#).unwrap(),
            ["sh", "-c", "echo 'a b' && exit 1", "x y"]
        );
        assert!(shell_words("a 'b").is_err());
    }

    #[test]
    fn container_port_comes_from_ports_or_expose() {
        assert_eq!(
            container_port(&["127.0.0.1:8080:8000/tcp".into()], &[]).unwrap(),
            Some(8000)
        );
        assert_eq!(container_port(&[], &["3000".into()]).unwrap(), Some(3000));
        assert_eq!(container_port(&[], &[]).unwrap(), None);
    }
}
