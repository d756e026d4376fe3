//! Supervision of the active color: an upstream that exits (a crashed
//! process, a container that died or was removed) is started again, with
//! backoff, at the same tag, health-checked, recorded and routed to; a
//! container Docker brought back by itself (its restart policy, `docker
//! restart`, `docker start`) is followed instead, on whatever host port it
//! now publishes. Each restart is logged and counted in `status`, and what
//! is down shows among its problems until it is back. It looks when the
//! driver reports a change (Docker's events) and every [`LOOK_EVERY`]
//! regardless. With `deploy.failover_to_standby`, traffic for a service
//! that is down goes to a healthy warm standby until the active one is back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::event::{Phase, Reporter};
use super::health::{self, HealthCheck};
use super::routing::route_table;
use super::Controller;
use crate::config::Config;
use crate::driver::{RunState, StartSpec};
use crate::release::{Color, Handle, Release};

/// How often the active color is looked at when the driver reports nothing.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// The first wait before a failed restart is tried again; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two restart attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Restart attempts of one service of one color.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    next: Instant,
    backoff: Duration,
}

/// The restart counts the runtime reported for each upstream, to tell when
/// Docker's restart policy started one again.
#[derive(Debug, Default)]
struct PolicyRestarts {
    last: HashMap<Handle, u64>,
}

impl PolicyRestarts {
    /// Did `handle`'s count grow to `restarts` since it was last noted?
    /// (Not at the first look.)
    fn grew(&self, handle: &Handle, restarts: u64) -> bool {
        self.last.get(handle).is_some_and(|b| restarts > *b)
    }

    /// Note `restarts` as `handle`'s count.
    fn note(&mut self, handle: &Handle, restarts: u64) {
        self.last.insert(handle.clone(), restarts);
    }

    /// Forget the upstreams that are no longer among `current`.
    fn keep_only<'a>(&mut self, current: impl Iterator<Item = &'a Handle> + Clone) {
        self.last.retain(|h, _| current.clone().any(|c| c == h));
    }
}

/// The wait after a failed attempt that waited `backoff`.
fn next_backoff(backoff: Duration) -> Duration {
    backoff.saturating_mul(2).min(MAX_BACKOFF)
}

impl Controller {
    /// Watch the active color until `shutdown`.
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        self.recovered().await;
        tokio::spawn({
            let controller = self.clone();
            let shutdown = shutdown.clone();
            async move { controller.driver.follow_changes(&shutdown).await }
        });
        let mut attempts: HashMap<String, Attempts> = HashMap::new();
        let mut policy_restarts = PolicyRestarts::default();
        let mut failed_over = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = self.driver.changed() => {}
            }
            // An operation in progress owns the upstreams.
            if self.operation.lock().expect("operation lock").is_some() {
                continue;
            }
            let (active, standby) = {
                let state = self.state.lock().await;
                if state.pending.is_some() || state.flipping_to.is_some() {
                    continue;
                }
                (
                    state.active_release().map(|(c, r)| (c, r.clone())),
                    state.standby_release().map(|(c, r)| (c, r.clone())),
                )
            };
            let Some((color, release)) = active else { continue };
            let config = self.config();
            if let Some((standby_color, standby)) = &standby {
                self.follow_moved(&config, *standby_color, standby, false).await;
            }
            if self.follow_moved(&config, color, &release, true).await {
                // The table was rebuilt from the active release alone. The
                // move was counted as a restart: what Docker counted with
                // it is not counted again.
                for up in release.services.values() {
                    if let RunState::Running { restarts, .. } = self.driver.state(&up.handle).await {
                        policy_restarts.note(&up.handle, restarts);
                    }
                }
                failed_over = false;
                continue;
            }
            let mut down = Vec::new();
            for (service, up) in &release.services {
                let (why, grace) = match self.driver.state(&up.handle).await {
                    RunState::Exited { reason } => (reason, self.driver.grace_before_replacing()),
                    RunState::Missing => ("gone".to_string(), Duration::ZERO),
                    // Back on the same port by Docker's restart policy:
                    // followed, never replaced (it serves).
                    RunState::Running { restarts, .. } => {
                        if !policy_restarts.grew(&up.handle, restarts) {
                            policy_restarts.note(&up.handle, restarts);
                            continue;
                        }
                        // Counted here only once it serves where it did;
                        // on another port, `follow_moved` follows and
                        // counts it at the next look.
                        let same_port = match config.service(service) {
                            Some(svc) => self.driver.current_addr(&up.handle, svc).await == Some(up.addr),
                            None => true,
                        };
                        if same_port {
                            policy_restarts.note(&up.handle, restarts);
                            let count = self.count_restart(color, service);
                            Reporter::silent().success(
                                Phase::Recover,
                                Some(service),
                                format!(
                                    "{service} ({color}, {}) exited and Docker's restart policy started it again \
                                     on the same port; it serves (restart {count})",
                                    release.tag
                                ),
                            );
                        }
                        continue;
                    }
                    RunState::Unknown { .. } => continue,
                };
                if !attempts.contains_key(service) {
                    attempts.insert(
                        service.clone(),
                        Attempts {
                            next: Instant::now() + grace,
                            backoff: FIRST_BACKOFF,
                        },
                    );
                    self.upstream_problem(
                        color,
                        service,
                        &up.handle,
                        format!(
                            "{service} ({color}, {}) is down ({why}); supervision restarts it",
                            release.tag
                        ),
                    );
                }
                down.push(service.clone());
            }
            policy_restarts.keep_only(release.services.values().map(|up| &up.handle));
            for service in attempts.keys().filter(|s| !down.contains(s)) {
                // Back by itself (Docker's restart policy) on the same port.
                self.problems.lock().expect("problems lock").resolved(color, service);
            }
            attempts.retain(|s, _| down.contains(s));
            if down.is_empty() {
                if failed_over {
                    self.proxy.swap(route_table(&config, Some(&release), &self.upstreams));
                    failed_over = false;
                }
                continue;
            }
            if config.deploy.failover_to_standby && !failed_over {
                failed_over = self.fail_over(&config, &release, standby.as_ref(), &down).await;
            }
            for service in down {
                let Some(entry) = attempts.get_mut(&service) else {
                    continue;
                };
                if entry.next > Instant::now() {
                    continue;
                }
                match self.restart(&config, color, &release, &service).await {
                    Ok(()) => {
                        attempts.remove(&service);
                        failed_over = false;
                    }
                    Err(why) => {
                        entry.next = Instant::now() + entry.backoff;
                        if let (Some(why), Some(up)) = (why, release.services.get(&service)) {
                            self.upstream_problem(
                                color,
                                &service,
                                &up.handle,
                                format!(
                                    "{service} ({color}, {}) is down and its restart failed: {why}; next attempt in {}",
                                    release.tag,
                                    humantime::format_duration(entry.backoff)
                                ),
                            );
                        }
                        entry.backoff = next_backoff(entry.backoff);
                    }
                }
            }
        }
    }

    /// Follow the upstreams of `release` (in `color`) that run again on
    /// another address than the one recorded (a container Docker restarted
    /// publishes its port anew): record the new address and, when
    /// `routed`, send traffic there. Each move is logged and counted as a
    /// restart. True if anything moved.
    async fn follow_moved(self: &Arc<Self>, config: &Config, color: Color, release: &Release, routed: bool) -> bool {
        let mut moved: Vec<(String, SocketAddr, SocketAddr)> = Vec::new();
        for (service, up) in &release.services {
            let Some(service_config) = config.service(service) else {
                continue;
            };
            // Only a running container publishes a port.
            let Some(now) = self.driver.current_addr(&up.handle, service_config).await else {
                continue;
            };
            if now != up.addr {
                moved.push((service.clone(), up.addr, now));
            }
        }
        if moved.is_empty() {
            return false;
        }
        // Taken like a restart's, so no operation changes the state meanwhile.
        let Ok(_op) = self.try_begin("restart", Some(&release.tag)) else {
            return false;
        };
        let mut state = self.state.lock().await;
        let mut followed = Vec::new();
        for (service, was, now) in moved {
            let Some(rec) = state.colors.get_mut(&color).and_then(|r| r.services.get_mut(&service)) else {
                continue;
            };
            let expected = release.services.get(&service).map(|r| &r.handle);
            if Some(&rec.handle) != expected || rec.addr != was {
                continue; // Replaced meanwhile.
            }
            rec.addr = now;
            followed.push((service, was, now));
        }
        if followed.is_empty() {
            return false;
        }
        let reporter = Reporter::silent();
        if let Err(e) = self.save(&state).await {
            reporter.error(Phase::Recover, None, e.to_string());
        }
        let is_active = state.active == Some(color);
        if routed && is_active {
            self.proxy
                .swap(route_table(config, state.colors.get(&color), &self.upstreams));
        }
        drop(state);
        for (service, was, now) in followed {
            self.upstreams.remove(was);
            let count = self.count_restart(color, &service);
            self.problems.lock().expect("problems lock").resolved(color, &service);
            reporter.success(
                Phase::Recover,
                Some(&service),
                format!(
                    "{service} ({color}, {}) was restarted by Docker and now listens on {now} (was {was}); {} (restart {count})",
                    release.tag,
                    if routed && is_active {
                        "traffic follows it"
                    } else {
                        "recorded"
                    }
                ),
            );
        }
        true
    }

    /// Count a restart of `service` of `color` (shown by `status`); returns
    /// how many there were.
    fn count_restart(&self, color: Color, service: &str) -> u64 {
        let mut restarts = self.restarts.lock().expect("restarts lock");
        let n = restarts.entry((color, service.to_string())).or_default();
        *n += 1;
        *n
    }

    /// Send the services in `down` to the healthy standby; true if done.
    async fn fail_over(
        &self,
        config: &Config,
        active: &Release,
        standby: Option<&(Color, Release)>,
        down: &[String],
    ) -> bool {
        let Some((standby_color, standby)) = standby else {
            return false;
        };
        let mut mixed = active.clone();
        for name in down {
            let (Some(up), Some(service)) = (standby.services.get(name), config.service(name)) else {
                return false;
            };
            if health::probe(up.addr, &service.health).await.is_err() {
                return false;
            }
            mixed.services.insert(name.clone(), up.clone());
        }
        self.proxy.swap(route_table(config, Some(&mixed), &self.upstreams));
        tracing::warn!(
            phase = %Phase::Recover,
            services = %down.join(", "),
            "the active color is down: traffic goes to the standby {standby_color} ({}) until it is back (failover_to_standby)",
            standby.tag
        );
        true
    }

    /// Start `service` of the active `color` again at its tag: `Ok` once it
    /// is healthy, recorded and routed to; else why not (`None` when it was
    /// not tried: an operation holds the lock, or traffic moved).
    async fn restart(
        self: &Arc<Self>,
        config: &Config,
        color: Color,
        release: &Release,
        service: &str,
    ) -> Result<(), Option<String>> {
        let Some(service_config) = config.service(service) else {
            return Err(Some(format!("{service} is no longer in the config")));
        };
        let Ok(_op) = self.try_begin("restart", Some(&release.tag)) else {
            return Err(None);
        };
        let reporter = Reporter::silent();
        reporter.warn(
            Phase::Recover,
            Some(service),
            format!("{service} ({color}, {}) is down; restarting it", release.tag),
        );
        if let Some(old) = release.services.get(service) {
            // A container that died is removed first (its name is reused).
            let _ = self.driver.stop(&old.handle, config.deploy.stop_timeout).await;
            self.upstreams.remove(old.addr);
        }
        let spec = StartSpec {
            service: service_config,
            color,
            tag: &release.tag,
            config,
        };
        let upstream = match self.driver.start(&spec).await {
            Ok(u) => u,
            Err(e) => {
                reporter.error(Phase::Recover, Some(service), format!("restart failed: {e}"));
                return Err(Some(e.to_string()));
            }
        };
        let check = HealthCheck {
            driver: &self.driver,
            handle: &upstream.handle,
            addr: upstream.addr,
            health: &service_config.health,
            interval: config.deploy.health_check_interval,
            deadline: Instant::now() + config.deploy.timeout,
            reporter: &reporter,
            service,
        };
        if let Err(why) = check.wait().await {
            reporter.error(Phase::Recover, Some(service), format!("restart failed: {why}"));
            let _ = self.driver.stop(&upstream.handle, config.deploy.stop_timeout).await;
            return Err(Some(why.to_string()));
        }
        let mut state = self.state.lock().await;
        if state.active != Some(color) {
            // Traffic moved meanwhile; this upstream is not needed.
            drop(state);
            let _ = self.driver.stop(&upstream.handle, config.deploy.stop_timeout).await;
            return Err(None);
        }
        state.add_upstream(color, service, upstream);
        if let Err(e) = self.save(&state).await {
            reporter.error(Phase::Recover, Some(service), e.to_string());
        }
        let table = route_table(config, state.colors.get(&color), &self.upstreams);
        self.proxy.swap(table);
        drop(state);
        self.problems.lock().expect("problems lock").resolved(color, service);
        let count = self.count_restart(color, service);
        reporter.success(
            Phase::Recover,
            Some(service),
            format!(
                "{service} ({color}, {}) restarted and serving again (restart {count})",
                release.tag
            ),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_attempts_back_off_up_to_a_minute() {
        let mut b = FIRST_BACKOFF;
        let mut seen = vec![b.as_secs()];
        for _ in 0..8 {
            b = next_backoff(b);
            seen.push(b.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
