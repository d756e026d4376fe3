//! `status`: what each color runs, looked at now (driver state, one quick
//! health probe, in-flight counts), with the operation in progress.

use super::health;
use super::Controller;
use crate::api::{ColorStatus, ColorTag, DriverStatus, ServiceStatus, Status};
use crate::driver::RunState;
use crate::release::Color;

/// The `state` of an upstream that runs.
const RUNNING: &str = "running";

impl Controller {
    /// What `status` shows.
    pub async fn status(&self) -> Status {
        let config = self.config();
        let state = self.state.lock().await.clone();
        let operation = self.operation.lock().expect("operation lock").clone();
        let driver = match self.driver.ping().await {
            Ok(()) => DriverStatus {
                kind: config.driver,
                ok: true,
                error: None,
            },
            Err(e) => DriverStatus {
                kind: config.driver,
                ok: false,
                error: Some(e.to_string()),
            },
        };
        let mut names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        for release in state.colors.values() {
            for name in release.services.keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        // Every upstream is looked at concurrently: status stays quick with
        // many services or a slow one.
        let looks = names.iter().flat_map(|name| {
            let health = config.service(name).map(|s| s.health.clone()).unwrap_or_default();
            state.colors.iter().filter_map(move |(color, release)| {
                let rec = release.services.get(name)?.clone();
                let quick = crate::config::HealthConfig {
                    timeout: health.timeout.min(std::time::Duration::from_secs(1)),
                    ..health.clone()
                };
                Some(async move {
                    let run = match self.driver.state(&rec.handle).await {
                        RunState::Running { .. } => RUNNING.to_string(),
                        RunState::Exited { reason } => reason,
                        RunState::Missing => "missing".into(),
                        RunState::Unknown { reason } => reason,
                    };
                    let status = ColorStatus {
                        tag: release.tag.clone(),
                        upstream: rec.addr.to_string(),
                        healthy: health::probe(rec.addr, &quick).await.is_ok(),
                        in_flight: self.upstreams.in_flight(rec.addr),
                        state: run,
                        restarts: self
                            .restarts
                            .lock()
                            .expect("restarts lock")
                            .get(&(*color, name.clone()))
                            .copied()
                            .unwrap_or(0),
                    };
                    (name.clone(), *color, status)
                })
            })
        });
        let mut looked: Vec<(String, Color, ColorStatus)> = futures_util::future::join_all(looks).await;
        let problems = self
            .problems
            .lock()
            .expect("problems lock")
            .current(&state, |color, service| {
                looked
                    .iter()
                    .any(|(n, c, s)| *c == color && n == service && s.state == RUNNING)
            });
        let services = names
            .into_iter()
            .map(|name| {
                let mut take = |color: Color| {
                    let i = looked.iter().position(|(n, c, _)| *n == name && *c == color)?;
                    Some(looked.swap_remove(i).2)
                };
                ServiceStatus {
                    blue: take(Color::Blue),
                    green: take(Color::Green),
                    name,
                }
            })
            .collect();
        Status {
            active: state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            }),
            standby: state.standby_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            }),
            operation,
            services,
            driver,
            problems,
            watch: self.watch_status(),
            certificates: crate::tls::status(&self.proxy, self.acme.get().map(|a| &**a)),
            daemon_pid: std::process::id(),
        }
    }
}
