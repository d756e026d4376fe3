//! Import services from a `docker-compose.yml`: image, environment,
//! env_file, healthcheck, volumes, networks and command, with `${VAR}`
//! references resolved from the environment and the Compose file's `.env`.
//!
//! Ports are switchctl's to assign, so Compose `ports` only tell which
//! container port to proxy to. A Compose key that switchctl cannot honour is
//! an error naming it, never silently dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_norway::Value;

use super::env::read_env_file;
use super::{join_relative, ConfigError, DockerHealthcheck, HealthConfig, RouteConfig, ServiceConfig};

/// Compose service keys that are imported or safely ignored.
const SUPPORTED: &[&str] = &[
    "image",
    "environment",
    "env_file",
    "healthcheck",
    "volumes",
    "networks",
    "command",
    "ports",
    "expose",
    "restart",
    "labels",
];

/// Read `path` and build the services. When `declared` is not empty, only the
/// services it names are imported, and its fields (port, health, route,
/// env...) override or extend what Compose says; otherwise every Compose
/// service is imported.
pub fn import(path: &Path, declared: &[ServiceConfig]) -> Result<Vec<ServiceConfig>, ConfigError> {
    let err = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: Value = serde_norway::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    let dotenv = path.parent().map(|d| d.join(".env"));
    let dotenv: BTreeMap<String, String> = match dotenv.filter(|p| p.exists()) {
        Some(p) => read_env_file(&p)
            .map_err(|m| err(".env".into(), m))?
            .into_iter()
            .collect(),
        None => BTreeMap::new(),
    };
    let vars = |name: &str| std::env::var(name).ok().or_else(|| dotenv.get(name).cloned());

    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return Err(err(
            "services".into(),
            "the Compose file has no `services:` mapping".into(),
        ));
    };
    let mut wanted: Vec<String> = declared.iter().map(|s| s.name.clone()).collect();
    if wanted.is_empty() {
        wanted = services.keys().filter_map(|k| k.as_str().map(String::from)).collect();
    }
    let mut out = Vec::new();
    for name in wanted {
        let Some(def) = services.get(name.as_str()) else {
            return Err(err(
                format!("services.{name}"),
                "declared in switchctl.toml but not found in the Compose file".into(),
            ));
        };
        let at = |key: &str| format!("services.{name}.{key}");
        let def = def
            .as_mapping()
            .ok_or_else(|| err(at(""), "must be a mapping".into()))?;
        for key in def.keys().filter_map(Value::as_str) {
            if !SUPPORTED.contains(&key) {
                return Err(err(
                    at(key),
                    format!(
                        "Compose key `{key}` is not supported by switchctl; remove it or manage it outside switchctl (supported: {})",
                        SUPPORTED.join(", ")
                    ),
                ));
            }
        }
        let get_str = |key: &str| -> Result<Option<String>, ConfigError> {
            match def.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(interpolate(s, &vars).map_err(|m| err(at(key), m))?)),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(err(at(key), "must be a string".into())),
            }
        };
        let strings = |key: &str| -> Result<Vec<String>, ConfigError> {
            match def.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(vec![interpolate(s, &vars).map_err(|m| err(at(key), m))?]),
                Some(Value::Sequence(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => interpolate(s, &vars).map_err(|m| err(at(key), m)),
                        Value::Number(n) => Ok(n.to_string()),
                        _ => Err(err(
                            at(key),
                            "items must be strings (long syntax is not supported)".into(),
                        )),
                    })
                    .collect(),
                Some(Value::Mapping(m)) if key == "networks" => {
                    Ok(m.keys().filter_map(|k| k.as_str().map(String::from)).collect())
                }
                Some(_) => Err(err(at(key), "must be a string or a list of strings".into())),
            }
        };

        let image = get_str("image")?
            .map(|i| untag(&i))
            .transpose()
            .map_err(|m| err(at("image"), m))?;
        let mut env = BTreeMap::new();
        match def.get("environment") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let k = k
                        .as_str()
                        .ok_or_else(|| err(at("environment"), "keys must be strings".into()))?;
                    let v = match v {
                        Value::String(s) => interpolate(s, &vars).map_err(|m| err(at("environment"), m))?,
                        Value::Null => vars(k).unwrap_or_default(),
                        other => serde_norway::to_string(other).unwrap_or_default().trim().to_string(),
                    };
                    env.insert(k.to_string(), v);
                }
            }
            Some(Value::Sequence(_)) => {
                for item in strings("environment")? {
                    match item.split_once('=') {
                        Some((k, v)) => env.insert(k.to_string(), v.to_string()),
                        None => env.insert(item.clone(), vars(&item).unwrap_or_default()),
                    };
                }
            }
            Some(_) => return Err(err(at("environment"), "must be a mapping or a list".into())),
        }
        let env_files = strings("env_file")?;
        if env_files.len() > 1 {
            return Err(err(
                at("env_file"),
                "switchctl supports one env_file per service".into(),
            ));
        }
        let command = match def.get("command") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                interpolate(s, &vars)
                    .map_err(|m| err(at("command"), m))?
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            ),
            Some(_) => Some(strings("command")?),
        };
        let port = container_port(&strings("ports")?, &strings("expose")?).map_err(|m| err(at("ports"), m))?;
        let docker_healthcheck = match def.get("healthcheck") {
            Some(Value::Mapping(h)) => Some(healthcheck(h, &vars).map_err(|m| err(at("healthcheck"), m))?),
            None | Some(Value::Null) => None,
            Some(_) => return Err(err(at("healthcheck"), "must be a mapping".into())),
        };
        let base = declared.iter().find(|s| s.name == name);
        let mut service = ServiceConfig {
            name: name.clone(),
            image,
            port,
            command,
            cwd: None,
            env,
            env_file: env_files
                .first()
                .map(|f| path.parent().unwrap_or(Path::new(".")).join(f)),
            volumes: strings("volumes")?
                .into_iter()
                .map(|v| resolve_bind_source(&v, path.parent().unwrap_or(Path::new("."))))
                .collect(),
            networks: strings("networks")?,
            health: HealthConfig::default(),
            route: RouteConfig::default(),
            docker_healthcheck,
        };
        if let Some(b) = base {
            service.image = b.image.clone().or(service.image);
            service.port = b.port.or(service.port);
            service.command = b.command.clone().or(service.command);
            service.cwd = b.cwd.clone();
            service.env.extend(b.env.clone());
            service.env_file = b.env_file.clone().or(service.env_file);
            service.volumes.extend(b.volumes.iter().cloned());
            service.networks.extend(b.networks.iter().cloned());
            service.health = b.health.clone();
            service.route = b.route.clone();
        }
        out.push(service);
    }
    Ok(out)
}

/// A relative bind source (`./data:/data`) is relative to the Compose file.
fn resolve_bind_source(volume: &str, dir: &Path) -> String {
    match volume.split_once(':') {
        Some((src, rest)) if src.starts_with('.') => format!("{}:{rest}", join_relative(dir, Path::new(src)).display()),
        _ => volume.to_string(),
    }
}

/// `repo:${TAG}` becomes `repo` (switchctl appends the deployed tag).
fn untag(image: &str) -> Result<String, String> {
    if let Some(base) = image.strip_suffix(":${TAG}").or_else(|| image.strip_suffix(":$TAG")) {
        return Ok(base.to_string());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        return Err(format!(
            "image {image:?} pins a tag; write it as \"{}:${{TAG}}\" so switchctl can deploy any tag",
            image.rsplit_once(':').map_or(image, |(b, _)| b)
        ));
    }
    Ok(image.to_string())
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

fn healthcheck(h: &serde_norway::Mapping, vars: &impl Fn(&str) -> Option<String>) -> Result<DockerHealthcheck, String> {
    let test = match h.get("test") {
        Some(Value::String(s)) => vec!["CMD-SHELL".to_string(), interpolate(s, vars)?],
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or("test items must be strings".to_string())
            })
            .collect::<Result<_, _>>()?,
        None if h.get("disable").and_then(Value::as_bool) == Some(true) => vec!["NONE".into()],
        _ => return Err("needs `test`".into()),
    };
    let dur = |key: &str| -> Result<Option<Duration>, String> {
        match h.get(key).and_then(Value::as_str) {
            None => Ok(None),
            Some(s) => humantime::parse_duration(s)
                .map(Some)
                .map_err(|e| format!("{key}: {s:?} is not a duration ({e})")),
        }
    };
    for key in h.keys().filter_map(Value::as_str) {
        if !["test", "interval", "timeout", "retries", "start_period", "disable"].contains(&key) {
            return Err(format!("healthcheck key `{key}` is not supported"));
        }
    }
    Ok(DockerHealthcheck {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        retries: h.get("retries").and_then(Value::as_u64).map(|r| r as u32),
        start_period: dur("start_period")?,
    })
}

/// Resolve `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`.
/// `${TAG}` is left for the deploy to fill in.
fn interpolate(s: &str, vars: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let (name, default) = match expr.split_once(":-").or_else(|| expr.split_once('-')) {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name == "TAG" {
                out.push_str("${TAG}");
                continue;
            }
            match (vars(name).filter(|v| !v.is_empty() || !expr.contains(":-")), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("variable {name} is not set (in {s:?})")),
            }
        } else {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let name = &rest[..len];
            rest = &rest[len..];
            if name == "TAG" {
                out.push_str("${TAG}");
            } else {
                out.push_str(&vars(name).ok_or_else(|| format!("variable {name} is not set (in {s:?})"))?);
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "REGISTRY" => Some("reg.example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_resolve_and_tag_is_kept_for_the_deploy() {
        assert_eq!(
            interpolate("${REGISTRY}/api:${TAG}", &vars).unwrap(),
            "reg.example.com/api:${TAG}"
        );
        assert_eq!(interpolate("$REGISTRY/x", &vars).unwrap(), "reg.example.com/x");
        assert_eq!(interpolate("${NOPE:-d}", &vars).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY:-d}", &vars).unwrap(), "d");
        assert_eq!(interpolate("$$HOME", &vars).unwrap(), "$HOME");
        assert!(interpolate("${NOPE}", &vars).unwrap_err().contains("NOPE is not set"));
    }

    #[test]
    fn images_must_leave_the_tag_to_switchctl() {
        assert_eq!(
            untag("reg.example.com:5000/api:${TAG}").unwrap(),
            "reg.example.com:5000/api"
        );
        assert_eq!(untag("reg.example.com:5000/api").unwrap(), "reg.example.com:5000/api");
        assert!(untag("api:1.2").unwrap_err().contains("api:${TAG}"));
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

    #[test]
    fn unsupported_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("docker-compose.yml");
        std::fs::write(&p, "services:\n  web:\n    image: app:${TAG}\n    build: .\n").unwrap();
        let e = import(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("services.web.build") && e.contains("not supported"), "{e}");
    }

    #[test]
    fn a_compose_service_is_imported_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "DB_HOST=db.internal\n").unwrap();
        let p = dir.path().join("docker-compose.yml");
        std::fs::write(
            &p,
            r#"
services:
  web:
    image: reg.example.com/web:${TAG}
    command: ["./web", "--fast"]
    environment:
      DB: ${DB_HOST}
      MODE: prod
    env_file: .env.web
    volumes: ["./data:/data:ro"]
    networks: [backend]
    ports: ["8080:8000"]
    healthcheck:
      test: ["CMD", "/app", "healthcheck"]
      interval: 2s
      retries: 3
  db:
    image: postgres
"#,
        )
        .unwrap();
        let declared = ServiceConfig {
            name: "web".into(),
            image: None,
            port: None,
            command: None,
            cwd: None,
            env: BTreeMap::new(),
            env_file: None,
            volumes: vec![],
            networks: vec![],
            health: HealthConfig {
                path: "/up".into(),
                ..HealthConfig::default()
            },
            route: RouteConfig::default(),
            docker_healthcheck: None,
        };
        let s = import(&p, &[declared]).unwrap();
        assert_eq!(s.len(), 1, "only the declared service is imported");
        let web = &s[0];
        assert_eq!(web.image.as_deref(), Some("reg.example.com/web"));
        assert_eq!(web.port, Some(8000));
        assert_eq!(web.command.as_deref().unwrap(), ["./web", "--fast"]);
        assert_eq!(web.env["DB"], "db.internal");
        assert_eq!(web.volumes, [format!("{}/data:/data:ro", dir.path().display())]);
        assert_eq!(web.networks, ["backend"]);
        assert_eq!(web.health.path, "/up");
        let hc = web.docker_healthcheck.as_ref().unwrap();
        assert_eq!(hc.test, ["CMD", "/app", "healthcheck"]);
        assert_eq!(hc.interval, Some(Duration::from_secs(2)));
        assert_eq!(hc.retries, Some(3));
    }
}
