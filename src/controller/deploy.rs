//! `Deploy`, `flip back` and `rollback`: the state machine of DESIGN.md.
//!
//! deploy: preflight → clear the idle color → start → health → flip (one
//! `ArcSwap` store, then persist) → drain the old color → keep it as
//! `Standby` or stop it → clean images → history. Any failure before the flip
//! stops the new color and leaves the active one untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::{Event, Outcome, Reporter};
use super::health::{self, HealthCheck};
use super::{route_table, Controller, OperationGuard};
use crate::api::{ColorTag, HistoryEntry};
use crate::config::{Config, StandbyPolicy};
use crate::driver::StartSpec;
use crate::release::{Color, Release};

/// Log lines shown from an upstream that failed.
const FAILED_LOG_LINES: usize = 50;

/// Is `tag` a valid image tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`)?
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Timings and facts one operation gathers for its history entry.
struct Record {
    kind: &'static str,
    tag: String,
    from: Option<ColorTag>,
    to: Color,
    started_at: std::time::SystemTime,
    started: Instant,
    ready_ms: Option<u64>,
    flip_us: Option<u64>,
    drain_ms: Option<u64>,
}

impl Record {
    fn new(kind: &'static str, tag: &str, from: Option<ColorTag>, to: Color) -> Self {
        Record {
            kind,
            tag: tag.to_string(),
            from,
            to,
            started_at: std::time::SystemTime::now(),
            started: Instant::now(),
            ready_ms: None,
            flip_us: None,
            drain_ms: None,
        }
    }
}

impl Controller {
    /// Append to history and send the final event.
    fn finish(
        &self,
        rec: Record,
        outcome: Outcome,
        reason: Option<String>,
        message: String,
        reporter: &Reporter,
    ) -> Outcome {
        let entry = HistoryEntry {
            started: humantime::format_rfc3339_millis(rec.started_at).to_string(),
            kind: rec.kind.to_string(),
            tag: rec.tag,
            from: rec.from,
            to: rec.to,
            outcome,
            reason,
            duration_ms: ms(rec.started.elapsed()),
            ready_ms: rec.ready_ms,
            flip_us: rec.flip_us,
            drain_ms: rec.drain_ms,
        };
        if let Err(e) = self.history.append(&entry) {
            reporter.warn("history", None, format!("could not record history: {e}"));
        }
        reporter.send(Event::done(outcome, message));
        outcome
    }

    /// Deploy `tag` to the idle color. `config` is the freshly loaded config.
    pub async fn deploy(
        self: &Arc<Self>,
        op: OperationGuard,
        config: Arc<Config>,
        tag: String,
        reporter: Reporter,
    ) -> Outcome {
        let (from, idle) = {
            let state = self.state.lock().await;
            let from = state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            });
            (from, state.active.map_or(Color::Blue, Color::other))
        };
        let mut rec = Record::new("deploy", &tag, from.clone(), idle);
        let deadline = tokio::time::Instant::now() + config.deploy.timeout;
        reporter.info(
            "lock",
            None,
            format!(
                "deploying {tag} to {idle} (timeout {}, health check every {})",
                humantime::format_duration(config.deploy.timeout),
                humantime::format_duration(config.deploy.health_check_interval)
            ),
        );

        op.phase("preflight");
        let build_progress = |service: &str, line: &str| reporter.info("build", Some(service), line);
        if let Err(e) = self.driver.preflight(&config, &tag, &build_progress).await {
            reporter.error("preflight", None, e.to_string());
            let msg = format!("deploy of {tag} failed before anything was started: {e}");
            return self.finish(rec, Outcome::Failed, Some(e.to_string()), msg, &reporter);
        }

        // The idle color may hold an old standby: it makes room.
        op.phase("prepare");
        {
            let mut state = self.state.lock().await;
            if let Some(old) = state.colors.get(&idle).cloned() {
                reporter.info(
                    "prepare",
                    None,
                    format!("stopping standby {idle} ({}) to make room", old.tag),
                );
                self.stop_release(&old, &config, &reporter).await;
                state.colors.remove(&idle);
            }
            state.pending = Some(idle);
            state.colors.insert(
                idle,
                Release {
                    tag: tag.clone(),
                    services: Default::default(),
                },
            );
            if let Err(e) = self.save(&state) {
                drop(state);
                return self.roll_back(rec, &config, idle, None, e.to_string(), &reporter).await;
            }
        }

        op.phase("start");
        for service in &config.services {
            let spec = StartSpec {
                service,
                color: idle,
                tag: &tag,
                config: &config,
            };
            match self.driver.start(&spec).await {
                Ok(upstream) => {
                    reporter.info(
                        "start",
                        Some(&service.name),
                        format!("started {idle} on {}", upstream.addr),
                    );
                    let mut state = self.state.lock().await;
                    if let Some(release) = state.colors.get_mut(&idle) {
                        release.services.insert(service.name.clone(), upstream);
                    }
                    if let Err(e) = self.save(&state) {
                        drop(state);
                        return self.roll_back(rec, &config, idle, None, e.to_string(), &reporter).await;
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    return self.roll_back(rec, &config, idle, None, reason, &reporter).await;
                }
            }
        }

        op.phase("health");
        let release = self
            .state
            .lock()
            .await
            .colors
            .get(&idle)
            .cloned()
            .unwrap_or_else(|| Release {
                tag: tag.clone(),
                services: Default::default(),
            });
        let checks = config.services.iter().filter_map(|service| {
            let upstream = release.services.get(&service.name)?;
            let reporter = &reporter;
            let driver = &self.driver;
            let interval = config.deploy.health_check_interval;
            Some(async move {
                let check = HealthCheck {
                    driver,
                    handle: &upstream.handle,
                    addr: upstream.addr,
                    health: &service.health,
                    interval,
                    deadline,
                    reporter,
                    service: &service.name,
                };
                let t = Instant::now();
                let result = check.wait().await;
                if result.is_ok() {
                    reporter.success(
                        "health",
                        Some(&service.name),
                        format!("healthy after {} ms", ms(t.elapsed())),
                    );
                }
                (service.name.clone(), result)
            })
        });
        let results = futures_util::future::join_all(checks).await;
        if let Some((service, why)) = results.into_iter().find_map(|(s, r)| r.err().map(|e| (s, e))) {
            let reason = format!("{service} ({idle}, {tag}) is not healthy: {why}");
            return self
                .roll_back(rec, &config, idle, Some(&service), reason, &reporter)
                .await;
        }
        rec.ready_ms = Some(ms(rec.started.elapsed()));

        op.phase("flip");
        let old = self.flip_to(idle, &release, &config, &mut rec, &reporter).await;

        op.phase("drain");
        self.retire(old, &config, &mut rec, &reporter).await;

        if matches!(self.driver, crate::driver::Driver::Docker(_)) {
            op.phase("cleanup");
            self.cleanup_images(&config, &tag, &reporter).await;
        }
        let took = rec.started.elapsed();
        let msg = format!("deployed {tag} to {idle} in {:.1}s", took.as_secs_f64());
        self.finish(rec, Outcome::Deployed, None, msg, &reporter)
    }

    /// Point every service at `color` in one swap, then persist.
    /// Returns the color and release that served before.
    async fn flip_to(
        &self,
        color: Color,
        release: &Release,
        config: &Config,
        rec: &mut Record,
        reporter: &Reporter,
    ) -> Option<(Color, Release)> {
        let table = route_table(config, Some(release), &self.upstreams);
        let t = Instant::now();
        self.proxy.swap(table);
        let swap = t.elapsed();
        rec.flip_us = Some(swap.as_micros() as u64);
        let mut state = self.state.lock().await;
        let old = state.active_release().map(|(c, r)| (c, r.clone()));
        state.active = Some(color);
        state.pending = None;
        if let Err(e) = self.save(&state) {
            reporter.error(
                "flip",
                None,
                format!("traffic moved, but the state could not be saved ({e}); a daemon restart would return to the old color"),
            );
        }
        reporter.success(
            "flip",
            None,
            format!(
                "traffic now goes to {color} ({}); route swap took {} µs",
                release.tag,
                swap.as_micros()
            ),
        );
        old
    }

    /// Drain the color that just lost traffic, then keep it warm or stop it.
    async fn retire(&self, old: Option<(Color, Release)>, config: &Config, rec: &mut Record, reporter: &Reporter) {
        let Some((color, release)) = old else { return };
        let t = Instant::now();
        let drains = release.services.iter().map(|(service, up)| {
            let upstream = self.upstreams.get(up.addr);
            async move { (service, upstream.drain(config.proxy.drain_timeout).await) }
        });
        let reports = futures_util::future::join_all(drains).await;
        rec.drain_ms = Some(ms(t.elapsed()));
        for (service, report) in reports {
            if report.cut > 0 {
                reporter.warn(
                    "drain",
                    Some(service),
                    format!(
                        "{color} still had {} request(s)/connection(s) after the drain timeout of {}; they were cut",
                        report.cut,
                        humantime::format_duration(config.proxy.drain_timeout)
                    ),
                );
            }
        }
        reporter.info(
            "drain",
            None,
            format!("{color} ({}) drained in {} ms", release.tag, ms(t.elapsed())),
        );
        match config.deploy.standby {
            StandbyPolicy::Keep => reporter.info(
                "standby",
                None,
                format!(
                    "{color} ({}) kept running as standby: `switchctl flip back` returns to it at once",
                    release.tag
                ),
            ),
            StandbyPolicy::Stop => {
                self.stop_release(&release, config, reporter).await;
                let mut state = self.state.lock().await;
                if state.active != Some(color) {
                    state.colors.remove(&color);
                }
                if let Err(e) = self.save(&state) {
                    reporter.warn("standby", None, e.to_string());
                }
                reporter.info("standby", None, format!("{color} ({}) stopped", release.tag));
            }
        }
    }

    /// A failure before the flip: show why and the failing upstream's logs,
    /// stop the new color, leave the active one untouched.
    async fn roll_back(
        &self,
        rec: Record,
        config: &Config,
        idle: Color,
        failed_service: Option<&str>,
        reason: String,
        reporter: &Reporter,
    ) -> Outcome {
        reporter.error("rollback", failed_service, reason.clone());
        let release = self.state.lock().await.colors.get(&idle).cloned();
        if let Some(release) = &release {
            let failed = failed_service.or_else(|| release.services.keys().last().map(String::as_str));
            if let Some((name, upstream)) = failed.and_then(|f| release.services.get_key_value(f)) {
                let lines = self.driver.logs(&upstream.handle, name, idle, FAILED_LOG_LINES).await;
                reporter.warn(
                    "logs",
                    Some(name),
                    format!("last {} log line(s) of {name} ({idle}):", lines.len()),
                );
                for line in lines {
                    reporter.warn("logs", Some(name), line);
                }
            }
            reporter.info("rollback", None, format!("stopping {idle} ({})", release.tag));
            self.stop_release(release, config, reporter).await;
        }
        let mut state = self.state.lock().await;
        if state.pending == Some(idle) {
            state.colors.remove(&idle);
            state.pending = None;
        }
        if let Err(e) = self.save(&state) {
            reporter.error("rollback", None, e.to_string());
        }
        let serving = match state.active_release() {
            Some((c, r)) => format!("{c} ({}) keeps serving", r.tag),
            None => "no release is active".into(),
        };
        drop(state);
        let msg = format!("deploy of {} rolled back: {reason}; {serving}", rec.tag);
        self.finish(rec, Outcome::RolledBack, Some(reason), msg, reporter)
    }

    /// Remove images of earlier releases beyond those in use and the newest
    /// `keep_images` successful ones; failed releases' images go first. Tags
    /// switchctl never deployed (images built for a later release) are left.
    async fn cleanup_images(&self, config: &Config, tag: &str, reporter: &Reporter) {
        let in_use: Vec<String> = {
            let state = self.state.lock().await;
            state
                .colors
                .values()
                .map(|r| r.tag.clone())
                .chain([tag.to_string()])
                .collect()
        };
        let (history, successful) = match (self.history.read(), self.history.successful_tags()) {
            (Ok(h), Ok(s)) => (h, s),
            (Err(e), _) | (_, Err(e)) => {
                reporter.warn("cleanup", None, format!("history unreadable, no image removed: {e}"));
                return;
            }
        };
        let keep: Vec<String> = successful
            .into_iter()
            .filter(|t| !in_use.contains(t))
            .take(config.deploy.keep_images)
            .collect();
        let mut removable: Vec<(bool, String)> = Vec::new();
        for e in history {
            let succeeded = matches!(e.outcome, Outcome::Deployed | Outcome::Flipped);
            if in_use.contains(&e.tag) || keep.contains(&e.tag) {
                continue;
            }
            match removable.iter_mut().find(|(_, t)| *t == e.tag) {
                Some(entry) => entry.0 |= succeeded,
                None => removable.push((succeeded, e.tag)),
            }
        }
        // Failed releases first (false sorts before true).
        removable.sort_by_key(|(succeeded, _)| *succeeded);
        let removable: Vec<String> = removable.into_iter().map(|(_, t)| t).collect();
        if removable.is_empty() {
            return;
        }
        match self.driver.cleanup_images(&config.services, &removable).await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => reporter.info("cleanup", None, format!("removed old images: {}", removed.join(", "))),
            Err(e) => reporter.warn("cleanup", None, format!("image cleanup failed: {e}")),
        }
    }

    /// Send traffic back to the warm standby, if it answers its health check.
    pub async fn flip_back(self: &Arc<Self>, op: OperationGuard, reporter: Reporter) -> Outcome {
        let config = self.config();
        let (standby, from) = {
            let state = self.state.lock().await;
            let from = state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            });
            (state.standby_release().map(|(c, r)| (c, r.clone())), from)
        };
        let Some((color, release)) = standby else {
            let msg =
                "no standby to flip back to: the previous color was stopped (standby = \"stop\") or never deployed; \
                       use `switchctl rollback` to redeploy the previous release";
            reporter.send(Event::done(Outcome::Refused, msg));
            return Outcome::Refused;
        };
        let mut rec = Record::new("flip_back", &release.tag, from, color);
        op.phase("health");
        for service in &config.services {
            let Some(upstream) = release.services.get(&service.name) else {
                let msg = format!(
                    "standby {color} ({}) has no {} service (added since); deploy instead",
                    release.tag, service.name
                );
                return self.finish(rec, Outcome::Refused, Some(msg.clone()), msg, &reporter);
            };
            if let Err(why) = health::probe(upstream.addr, &service.health).await {
                let msg = format!(
                    "standby {color} ({}) is not healthy, traffic stays where it is: {}: {why}",
                    release.tag, service.name
                );
                return self.finish(rec, Outcome::Refused, Some(msg.clone()), msg, &reporter);
            }
        }
        op.phase("flip");
        let old = self.flip_to(color, &release, &config, &mut rec, &reporter).await;
        op.phase("drain");
        self.retire(old, &config, &mut rec, &reporter).await;
        let msg = format!("flipped back to {color} ({})", release.tag);
        self.finish(rec, Outcome::Flipped, None, msg, &reporter)
    }

    /// `rollback [tag]`: with a tag, deploy it; without, return to the
    /// previous successful release (a flip back when it is the warm standby).
    pub async fn rollback(
        self: &Arc<Self>,
        op: OperationGuard,
        config: Arc<Config>,
        tag: Option<String>,
        reporter: Reporter,
    ) -> Outcome {
        let target = match tag {
            Some(t) => t,
            None => {
                let (active, standby) = {
                    let state = self.state.lock().await;
                    (
                        state.active_release().map(|(_, r)| r.tag.clone()),
                        state.standby_release().map(|(_, r)| r.tag.clone()),
                    )
                };
                let previous = match self.history.successful_tags() {
                    Ok(tags) => tags.into_iter().find(|t| Some(t) != active.as_ref()),
                    Err(e) => {
                        let msg = format!("cannot read history to find the previous release: {e}");
                        reporter.send(Event::done(Outcome::Failed, msg));
                        return Outcome::Failed;
                    }
                };
                let Some(previous) = previous else {
                    let msg = "no earlier successful release in history; name a tag: `switchctl rollback <tag>`";
                    reporter.send(Event::done(Outcome::Refused, msg));
                    return Outcome::Refused;
                };
                if standby.as_deref() == Some(previous.as_str()) {
                    reporter.info(
                        "rollback",
                        None,
                        format!("{previous} is the warm standby: flipping back"),
                    );
                    return self.flip_back(op, reporter).await;
                }
                previous
            }
        };
        reporter.info("rollback", None, format!("rolling back by deploying {target}"));
        self.deploy(op, config, target, reporter).await
    }
}

#[cfg(test)]
mod tests {
    use super::validate_tag;

    #[test]
    fn tags_follow_the_image_tag_grammar() {
        for good in ["v1", "1.2.3", "sha-abc_DEF", "latest"] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "a:b", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }
}
