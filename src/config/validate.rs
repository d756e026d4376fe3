//! Validation: values that parse but make no sense (no service, a process
//! command without `{port}`, two services with the same route...). Errors
//! name the file, the key and, where it can be found, the line.

use super::env::read_env_file;
use super::{line_col, Config, ConfigError, DriverKind};

impl Config {
    /// Every problem of the file, all reported at once. `services_known`:
    /// false when the Compose import failed (its errors say why), so that
    /// checks of the services are left out.
    pub(super) fn validate(&self, text: &str, services_known: bool) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
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
    fn docker_services_need_image_and_port() {
        let err = parse(&GOOD.replace("driver = \"process\"", "driver = \"docker\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an image"), "{err}");
    }
}
