//! Validation: values that parse but make no sense (no service, a process
//! command without `{port}`, two services with the same route...). Errors
//! name the file, the key and, where it can be found, the line.

use super::env::read_env_file;
use std::time::Duration;

use super::{line_col, Config, ConfigError, DriverKind, MAX_INTERVAL, MAX_TIMEOUT};

/// Most image tags `keep_images` may keep.
pub const MAX_KEEP_IMAGES: usize = 1000;
/// Most proxy worker threads.
pub const MAX_WORKERS: usize = 1024;
/// Largest request head the proxy may be told to accept.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Most client connections (overall, or per client address).
pub const MAX_CONNECTIONS: usize = 1 << 24;
/// Fastest minimum pace a request body may be asked for (bytes/s): 1 GiB/s.
pub const MAX_BODY_MIN_RATE: u64 = 1 << 30;
/// Most consecutive good probes a health check may require.
pub const MAX_HEALTHY_THRESHOLD: u32 = 1000;

impl Config {
    /// Every problem of the file, all reported at once. `services_known`:
    /// false when the Compose import failed (its errors say why), so that
    /// checks of the services are left out.
    pub fn validate(&self, text: &str, services_known: bool) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.check_bounds() {
            errors.push(e);
        }
        let mut invalid = |key: String, message: String| {
            errors.push(ConfigError::Invalid {
                path: self.path.clone(),
                key,
                message,
            })
        };
        if self.proxy.listen.is_empty() {
            invalid("proxy.listen".into(), "needs at least one address".into());
        }
        for (i, cidr) in self.proxy.trusted_proxies.iter().enumerate() {
            if let Err(e) = cidr.parse::<switchctl_proxy::Cidr>() {
                invalid(format!("proxy.trusted_proxies[{i}]"), e.to_string());
            }
        }
        if let Some(tls) = &self.proxy.tls {
            if let Err((key, message)) = tls.check(self) {
                invalid(key, message);
            }
        }
        if self.services.is_empty() && services_known {
            invalid(
                "service".into(),
                "no [[service]] defined (and no compose file): define at least one".into(),
            );
        }
        if self.deploy.health_check_interval.is_zero() {
            invalid("deploy.health_check_interval".into(), "must be greater than 0".into());
        }
        if self.deploy.timeout.is_zero() {
            invalid("deploy.timeout".into(), "must be greater than 0".into());
        }
        if let Some(watch) = &self.deploy.watch {
            if watch.window.is_zero() {
                invalid("deploy.watch.window".into(), "must be greater than 0".into());
            }
            if !(0.0..=1.0).contains(&watch.max_5xx_ratio) {
                invalid(
                    "deploy.watch.max_5xx_ratio".into(),
                    "must be between 0 and 1 (0.05 flips back past 5% of 5xx)".into(),
                );
            }
            if watch.min_requests == 0 {
                invalid(
                    "deploy.watch.min_requests".into(),
                    "must be at least 1: a ratio over no request means nothing".into(),
                );
            }
        }
        if let Err(e) = crate::notify::validate_all(&self.notify) {
            let key = e.key().unwrap_or_else(|| "notify".into());
            let message = match &e {
                crate::notify::NotifyError::Invalid { invalid, .. } => invalid.message.clone(),
                other => other.to_string(),
            };
            invalid(key, message);
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
                invalid(at("name"), "use letters, digits, '-' and '_' only".into());
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                invalid(at("name"), "defined twice; service names must be unique".into());
            }
            match self.driver {
                DriverKind::Docker => {
                    if s.image.as_deref().is_none_or(str::is_empty) {
                        invalid(at("image"), "the docker driver needs an image".into());
                    }
                    if s.port.is_none() {
                        invalid(
                            at("port"),
                            "the docker driver needs the container's port (set `port`, or Compose `expose`/`ports`, or a Traefik loadbalancer.server.port label)".into(),
                        );
                    }
                }
                DriverKind::Process => {
                    let cmd = s.command.as_deref().unwrap_or_default();
                    if cmd.is_empty() {
                        invalid(
                            at("command"),
                            "the process driver needs a command, e.g. [\"./app\", \"--port\", \"{port}\"]".into(),
                        );
                    } else if !cmd.iter().any(|a| a.contains("{port}")) && !s.env.values().any(|v| v.contains("{port}"))
                    {
                        invalid(
                            at("command"),
                            "must pass \"{port}\" (in command or env) so the process listens where switchctl expects"
                                .into(),
                        );
                    }
                }
            }
            if !s.health.path.starts_with('/') {
                invalid(at("health.path"), "must start with \"/\"".into());
            }
            if s.health.healthy_threshold == 0 {
                invalid(at("health.healthy_threshold"), "must be at least 1".into());
            }
            for route in s.routes() {
                if !route.path_prefix.starts_with('/') {
                    invalid(at("route.path_prefix"), "must start with \"/\"".into());
                }
                for h in &route.hosts {
                    if let Err(e) = switchctl_proxy::HostPattern::parse(h) {
                        invalid(at("route.hosts"), e.to_string());
                    }
                }
            }
            if let Some(env_file) = &s.env_file {
                let p = self.resolve(env_file);
                if let Err(e) = read_env_file(&p) {
                    invalid(at("env_file"), e);
                }
            }
        }
        // Two services with the same route would make one unreachable.
        for (i, a) in self.services.iter().enumerate() {
            for b in &self.services[..i] {
                let same = a.routes().iter().any(|ra| {
                    b.routes()
                        .iter()
                        .any(|rb| ra.hosts == rb.hosts && ra.path_prefix == rb.path_prefix)
                });
                if same {
                    invalid(
                        format!("service {:?}.route", a.name),
                        format!(
                            "same hosts and path_prefix as service {:?}; one of them would never get a request",
                            b.name
                        ),
                    );
                }
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            let at = format!("hook[{i}] ({})", h.when.as_str());
            match (&h.service, &h.command) {
                (Some(_), Some(_)) => invalid(at.clone(), "set either `service` or `command`, not both".into()),
                (None, None) => invalid(
                    at.clone(),
                    "needs `service` (a Compose service run once) or `command` (argv run on the host)".into(),
                ),
                (None, Some(cmd)) if cmd.is_empty() => invalid(format!("{at}.command"), "is empty".into()),
                (Some(service), None) => {
                    if self.driver != DriverKind::Docker {
                        invalid(
                            format!("{at}.service"),
                            "a service hook runs a container: it needs the docker driver; use `command` instead".into(),
                        );
                    } else if services_known
                        && self.project.as_ref().and_then(|p| p.task(service)).is_none()
                        && self.service(service).is_none()
                    {
                        invalid(
                            format!("{at}.service"),
                            format!(
                                "{service:?} is not a service of the Compose file (a hook service needs [compose])"
                            ),
                        );
                    }
                }
                _ => {}
            }
            if h.timeout.is_zero() {
                invalid(format!("{at}.timeout"), "must be greater than 0".into());
            }
        }
        ConfigError::from_many(errors)
    }
}

impl Config {
    /// Every duration and number within a sane range, so that no value
    /// (a typo, `1e19`) can overflow a deadline or exhaust the host.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let too_big = |key: &str, message: String| ConfigError::Invalid {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        };
        let duration = |key: &str, value: Duration, max: Duration| {
            if value > max {
                Err(too_big(
                    key,
                    format!(
                        "{} is too long; at most {}",
                        humantime::format_duration(value),
                        humantime::format_duration(max)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let number = |key: &str, value: usize, max: usize| {
            if value > max {
                Err(too_big(key, format!("{value} is too large; at most {max}")))
            } else {
                Ok(())
            }
        };
        let (p, d) = (&self.proxy, &self.deploy);
        duration("deploy.timeout", d.timeout, MAX_TIMEOUT)?;
        duration("deploy.health_check_interval", d.health_check_interval, MAX_INTERVAL)?;
        duration("deploy.stop_timeout", d.stop_timeout, MAX_TIMEOUT)?;
        number("deploy.keep_images", d.keep_images, MAX_KEEP_IMAGES)?;
        if let Some(w) = &d.watch {
            duration("deploy.watch.window", w.window, MAX_TIMEOUT)?;
        }
        duration("proxy.drain_timeout", p.drain_timeout, MAX_TIMEOUT)?;
        duration("proxy.header_read_timeout", p.header_read_timeout, MAX_TIMEOUT)?;
        duration("proxy.idle_timeout", p.idle_timeout, MAX_TIMEOUT)?;
        duration("proxy.connect_timeout", p.connect_timeout, MAX_TIMEOUT)?;
        duration("proxy.response_timeout", p.response_timeout, MAX_TIMEOUT)?;
        duration("proxy.upstream_idle_timeout", p.upstream_idle_timeout, MAX_TIMEOUT)?;
        duration("proxy.body_read_timeout", p.body_read_timeout, MAX_TIMEOUT)?;
        duration("proxy.write_timeout", p.write_timeout, MAX_TIMEOUT)?;
        if p.write_timeout.is_zero() {
            return Err(too_big("proxy.write_timeout", "must be greater than 0".into()));
        }
        duration("proxy.body_min_rate_grace", p.body_min_rate_grace, MAX_TIMEOUT)?;
        if p.body_min_rate > MAX_BODY_MIN_RATE {
            return Err(too_big(
                "proxy.body_min_rate",
                format!(
                    "{} bytes/s is too large; at most {MAX_BODY_MIN_RATE} (0 turns the minimum off)",
                    p.body_min_rate
                ),
            ));
        }
        number("proxy.workers", p.workers, MAX_WORKERS)?;
        number("proxy.max_header_bytes", p.max_header_bytes, MAX_HEADER_BYTES)?;
        number("proxy.max_connections", p.max_connections, MAX_CONNECTIONS)?;
        number(
            "proxy.max_connections_per_ip",
            p.max_connections_per_ip,
            MAX_CONNECTIONS,
        )?;
        for s in &self.services {
            let key = |k: &str| format!("service {:?}.{k}", s.name);
            duration(&key("health.timeout"), s.health.timeout, MAX_INTERVAL)?;
            if s.health.timeout.is_zero() {
                return Err(too_big(&key("health.timeout"), "must be greater than 0".into()));
            }
            number(
                &key("health.healthy_threshold"),
                s.health.healthy_threshold as usize,
                MAX_HEALTHY_THRESHOLD as usize,
            )?;
            if let Some(hc) = &s.docker_healthcheck {
                for (k, v) in [
                    ("healthcheck.interval", hc.interval),
                    ("healthcheck.timeout", hc.timeout),
                    ("healthcheck.start_period", hc.start_period),
                ] {
                    if let Some(v) = v {
                        duration(&key(k), v, MAX_TIMEOUT)?;
                    }
                }
                if let Some(r) = hc.retries {
                    number(&key("healthcheck.retries"), r as usize, MAX_HEALTHY_THRESHOLD as usize)?;
                }
            }
        }
        Ok(())
    }
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.find(needle).map(|off| line_col(text, off).0)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};

    #[test]
    fn process_command_must_carry_the_port() {
        let err = parse(&GOOD.replace("\"--port\", \"{port}\"", "\"--port\", \"80\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("command") && err.contains("{port}"), "{err}");
    }

    #[test]
    fn every_duration_and_number_is_bounded_naming_the_key() {
        for (from, to, key) in [
            ("timeout = \"30s\"", "timeout = \"100years\"", "deploy.timeout"),
            ("timeout = \"30s\"", "timeout = \"25h\"", "deploy.timeout"),
            (
                "timeout = \"30s\"",
                "timeout = \"30s\"\nkeep_images = 1000000",
                "deploy.keep_images",
            ),
            (
                "timeout = \"30s\"",
                "timeout = \"30s\"\nhealth_check_interval = \"2h\"",
                "deploy.health_check_interval",
            ),
            (
                "drain_timeout = \"5s\"",
                "drain_timeout = \"5s\"\nworkers = 100000",
                "proxy.workers",
            ),
            (
                "drain_timeout = \"5s\"",
                "drain_timeout = \"9999h\"",
                "proxy.drain_timeout",
            ),
            (
                "drain_timeout = \"5s\"",
                "drain_timeout = \"5s\"\nwrite_timeout = \"25h\"",
                "proxy.write_timeout",
            ),
            (
                "drain_timeout = \"5s\"",
                "drain_timeout = \"5s\"\nbody_min_rate = 2000000000",
                "proxy.body_min_rate",
            ),
            (
                "drain_timeout = \"5s\"",
                "drain_timeout = \"5s\"\nbody_min_rate_grace = \"25h\"",
                "proxy.body_min_rate_grace",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let err = parse(&GOOD.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("at most"), "{to}: {err}");
        }
    }

    #[test]
    fn a_zero_write_timeout_is_refused() {
        let toml = GOOD.replacen(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\nwrite_timeout = \"0s\"",
            1,
        );
        let err = parse(&toml).unwrap_err().to_string();
        assert!(
            err.contains("proxy.write_timeout") && err.contains("greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn hostile_client_settings_reach_the_proxy() {
        let toml = GOOD.replacen(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\nwrite_timeout = \"7s\"\nbody_min_rate = 300\nbody_min_rate_grace = \"4s\"",
            1,
        );
        let proxy = parse(&toml).unwrap().proxy.proxy_config();
        assert_eq!(proxy.write_timeout, std::time::Duration::from_secs(7));
        assert_eq!(proxy.body_min_rate, 300);
        assert_eq!(proxy.body_min_rate_grace, std::time::Duration::from_secs(4));
    }

    #[test]
    fn docker_services_need_image_and_port() {
        let err = parse(&GOOD.replace("driver = \"process\"", "driver = \"docker\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an image"), "{err}");
    }
}
