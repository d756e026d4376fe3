//! Validation: values that parse but make no sense (no service, a process
//! command without `{port}`, two services with the same route...). Errors
//! name the file, the key and, where it can be found, the line.

use super::env::read_env_file;
use super::{line_col, Config, ConfigError, DriverKind};

impl Config {
    pub(super) fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: self.path.clone(),
            key,
            message,
        };
        if self.proxy.listen.is_empty() {
            return Err(invalid("proxy.listen".into(), "needs at least one address".into()));
        }
        for (i, cidr) in self.proxy.trusted_proxies.iter().enumerate() {
            if let Err(e) = cidr.parse::<switchctl_proxy::Cidr>() {
                return Err(invalid(format!("proxy.trusted_proxies[{i}]"), e.to_string()));
            }
        }
        if let Some(tls) = &self.proxy.tls {
            tls.check(self).map_err(|(key, message)| invalid(key, message))?;
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
