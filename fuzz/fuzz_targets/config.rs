//! `switchctl.toml` as any bytes: parsing, the environment overrides and
//! validation return errors, never panic; and a file that validates gives
//! the proxy a route table it accepts (else the daemon would answer 404 to
//! everything: `route_table` falls back to an empty table).
//!
//! Input: `<toml>[\0<DEPLOY_TIMEOUT>[\0<HEALTH_CHECK_INTERVAL>]]`, so that
//! any `switchctl.toml` is a seed as it is.

#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchctl::config::{positive_seconds, seconds, Config, MAX_INTERVAL, MAX_TIMEOUT};
use switchctl::controller::{route_table, UpstreamSet};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let deploy_timeout = parts.next().map(String::from_utf8_lossy);
    let interval = parts.next().map(String::from_utf8_lossy);

    for (name, raw, max) in [
        ("DEPLOY_TIMEOUT", &deploy_timeout, MAX_TIMEOUT),
        ("HEALTH_CHECK_INTERVAL", &interval, MAX_INTERVAL),
    ] {
        let Some(raw) = raw else { continue };
        in_range(positive_seconds(name, raw, max), max);
        // The admin API hands `seconds` a JSON number: any f64 at all.
        if let Some(bits) = raw.as_bytes().first_chunk::<8>() {
            in_range(seconds(name, f64::from_le_bytes(*bits), max), max);
        }
    }

    // A directory that does not exist: relative env files and certificates
    // resolve there and are missing. (An absolute path in the input is read
    // as `check` would read it; nothing is written.)
    let Ok(mut config) = Config::parse(Path::new("/nonexistent-fuzz/switchctl.toml"), text) else {
        return;
    };
    let env = |name: &str| match name {
        "DEPLOY_TIMEOUT" => deploy_timeout.as_deref().map(str::to_string),
        "HEALTH_CHECK_INTERVAL" => interval.as_deref().map(str::to_string),
        _ => None,
    };
    if config.apply_env(env).is_err() {
        return;
    }
    // A set variable is what the deploy uses.
    if let Some(raw) = deploy_timeout.as_deref().filter(|v| !v.trim().is_empty()) {
        assert_eq!(
            Ok(config.deploy.timeout),
            positive_seconds("DEPLOY_TIMEOUT", raw, MAX_TIMEOUT)
        );
    }
    if config.validate(text, true).is_err() {
        return;
    }
    assert!(config.deploy.timeout <= MAX_TIMEOUT && !config.deploy.timeout.is_zero());
    assert!(config.deploy.health_check_interval <= MAX_INTERVAL);
    let table = route_table(&config, None, &UpstreamSet::default());
    assert_eq!(
        table.services().len(),
        config.services.len(),
        "a valid config must give a valid route table"
    );
});

/// A duration that was accepted is positive and at most `max`.
fn in_range(r: Result<Duration, String>, max: Duration) {
    if let Ok(d) = r {
        assert!(!d.is_zero() && d <= max, "{d:?} accepted, max {max:?}");
    }
}
