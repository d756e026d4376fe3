//! The environment: `DEPLOY_TIMEOUT` and `HEALTH_CHECK_INTERVAL` override
//! the file (as the scripts switchctl replaces read them), and env files of
//! `KEY=value` lines feed services.

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError, MAX_INTERVAL, MAX_TIMEOUT};

impl Config {
    /// `DEPLOY_TIMEOUT` and `HEALTH_CHECK_INTERVAL` (seconds) override the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(d) = env_seconds(&get, "DEPLOY_TIMEOUT", MAX_TIMEOUT, &self.path)? {
            self.deploy.timeout = d;
        }
        if let Some(d) = env_seconds(&get, "HEALTH_CHECK_INTERVAL", MAX_INTERVAL, &self.path)? {
            self.deploy.health_check_interval = d;
        }
        Ok(())
    }
}

fn env_seconds(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    max: Duration,
    path: &Path,
) -> Result<Option<Duration>, ConfigError> {
    let Some(raw) = get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    positive_seconds(name, &raw, max)
        .map(Some)
        .map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("environment variable {name}"),
            message,
        })
}

/// `"2.5"` → 2.5 s, for `name` (`DEPLOY_TIMEOUT`, `HEALTH_CHECK_INTERVAL`):
/// a positive, finite number of seconds no greater than `max`, or why not.
pub fn positive_seconds(name: &str, raw: &str, max: Duration) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(secs) => seconds(name, secs, max),
        Err(_) => Err(format!("{name}={raw:?} is not a number of seconds")),
    }
}

/// `secs` as a duration for `name`, if it is positive, finite and at most
/// `max`; else an error that says the allowed range. Never panics, whatever
/// a client sends (`1e300`, `NaN`, `-1`).
pub fn seconds(name: &str, secs: f64, max: Duration) -> Result<Duration, String> {
    let range = || {
        format!(
            "{name} must be a number of seconds greater than 0 and at most {} ({}); got {secs}",
            max.as_secs_f64(),
            humantime::format_duration(max)
        )
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(range());
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max && !d.is_zero() => Ok(d),
        _ => Err(range()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{parse, GOOD};

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
    fn huge_or_odd_seconds_are_refused_without_panicking() {
        for raw in ["1e19", "1e300", "inf", "NaN", "-1", "0", "1e-12", "86400.5"] {
            let err = positive_seconds("DEPLOY_TIMEOUT", raw, MAX_TIMEOUT).unwrap_err();
            assert!(
                err.contains("DEPLOY_TIMEOUT") && err.contains("at most 86400"),
                "{raw}: {err}"
            );
        }
        assert_eq!(
            positive_seconds("DEPLOY_TIMEOUT", "86400", MAX_TIMEOUT),
            Ok(Duration::from_secs(86400))
        );
        let mut c = parse(GOOD).unwrap();
        let err = c
            .apply_env(|k| (k == "HEALTH_CHECK_INTERVAL").then(|| "1e300".into()))
            .unwrap_err();
        assert!(err.to_string().contains("HEALTH_CHECK_INTERVAL"), "{err}");
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
