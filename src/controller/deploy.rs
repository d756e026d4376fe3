//! [`Deploy`]: the deploy state machine of docs/design.md, one method per phase:
//!
//! preflight → prepare (clear the idle color) → start → health → flip (one
//! `ArcSwap` store, then persist) → drain the old color (and, with
//! `[deploy.watch]`, watch the new one meanwhile, flipping back if it fails
//! real traffic) → retire it (keep as standby or stop) → cleanup (old
//! images) → history.
//!
//! Any failure before the flip is [`Deploy::roll_back`]: the new color is
//! stopped and the active one is left untouched.

use std::sync::Arc;
use std::time::Instant;

use super::event::{Outcome, Phase, Reporter};
use super::health::HealthCheck;
use super::history::{ms, Record};
use super::hooks::{self, HookContext, HookFailure};
use super::watch::{Baseline, Verdict};
use super::{retention, Controller, OperationGuard};
use crate::api::ColorTag;
use crate::config::{Config, HookWhen, WatchConfig};
use crate::driver::{Driver, StartSpec};
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

/// `timeout` from now; config bounds keep it small, and a value that
/// still would not fit (no panic on `Instant` overflow) means "no deadline".
fn deadline_after(timeout: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + crate::config::MAX_TIMEOUT)
}

/// Why a deploy stopped before the flip.
struct Failure {
    /// The service at fault, if one (its logs are shown).
    service: Option<String>,
    /// What went wrong.
    reason: String,
    /// Output to show instead of the service's logs (a failed hook's).
    lines: Option<Vec<String>>,
}

impl Failure {
    fn new(reason: impl ToString) -> Self {
        Failure {
            service: None,
            reason: reason.to_string(),
            lines: None,
        }
    }

    fn hook(f: HookFailure) -> Self {
        Failure {
            service: None,
            reason: f.message,
            lines: Some(f.lines),
        }
    }
}

/// One deploy of one tag to the idle color, holding the operation lock.
pub struct Deploy {
    controller: Arc<Controller>,
    op: OperationGuard,
    config: Arc<Config>,
    tag: String,
    idle: Color,
    deadline: tokio::time::Instant,
    record: Record,
    reporter: Reporter,
    /// The standby `prepare` stopped to make room: restarted if the deploy
    /// fails, so that `flip back` works exactly as before it.
    displaced: Option<Release>,
}

impl Deploy {
    /// A deploy of `tag` with `config` (freshly loaded), to the color that
    /// does not serve now.
    pub(super) async fn new(
        controller: Arc<Controller>,
        op: OperationGuard,
        config: Arc<Config>,
        tag: String,
        reporter: Reporter,
    ) -> Deploy {
        let (from, idle) = {
            let state = controller.state.lock().await;
            let from = state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            });
            (from, state.active.map_or(Color::Blue, Color::other))
        };
        Deploy {
            record: Record::new("deploy", &tag, from, idle),
            deadline: deadline_after(config.deploy.timeout),
            controller,
            op,
            config,
            tag,
            idle,
            reporter,
            displaced: None,
        }
    }

    /// Run every phase; returns how the deploy ended (also its last event).
    pub(super) async fn run(mut self) -> Outcome {
        self.reporter.info(
            Phase::Lock,
            None,
            format!(
                "deploying {} to {} (timeout {}, health check every {})",
                self.tag,
                self.idle,
                humantime::format_duration(self.config.deploy.timeout),
                humantime::format_duration(self.config.deploy.health_check_interval)
            ),
        );
        let preflight = match self.preflight().await {
            Ok(()) => self.hooks(HookWhen::BeforeStart).await.map_err(|f| {
                self.show_lines(&f);
                f.reason
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = preflight {
            self.hooks(HookWhen::AfterFailure).await.ok();
            let msg = format!("deploy of {} failed before anything was started: {e}", self.tag);
            return self.finish(Outcome::Failed, Some(e), msg).await;
        }
        let release = match self.prepare().await {
            Ok(()) => match self.start().await {
                Ok(()) => self.health().await,
                Err(f) => Err(f),
            },
            Err(f) => Err(f),
        };
        let release = match release {
            Ok(release) => match self.hooks(HookWhen::BeforeFlip).await {
                Ok(()) => release,
                Err(failure) => return self.roll_back(failure).await,
            },
            Err(failure) => return self.roll_back(failure).await,
        };
        let watch = self.config.deploy.watch.filter(|_| {
            let watched = self.record.from.is_some();
            if !watched {
                self.reporter.info(
                    Phase::Watch,
                    None,
                    "first release: no previous color to flip back to, so no watch",
                );
            }
            watched
        });
        let baseline = watch.map(|_| self.controller.watch_baseline(self.idle, &release));
        let old = match self.flip(&release).await {
            Ok(old) => old,
            Err(reason) => return self.roll_back(Failure::new(reason)).await,
        };
        self.hooks(HookWhen::AfterFlip).await.ok();
        let watched = match (watch, baseline, &old) {
            (Some(watch), Some(baseline), Some(_)) => self.drain_and_watch(old.as_ref(), &baseline, &watch).await,
            _ => {
                self.drain(old.as_ref()).await;
                Watched::Passed
            }
        };
        let ended_by = match watched {
            Watched::Tripped(why) => return self.flip_back(release, old, why).await,
            Watched::Passed => {
                self.retire(old).await;
                None
            }
            // The previous color stays as it is: the human's command takes it.
            Watched::Ended(why) => Some(why),
        };
        self.cleanup().await;
        let mut msg = format!(
            "deployed {} to {} in {:.1}s",
            self.tag,
            self.idle,
            self.record.started.elapsed().as_secs_f64()
        );
        if let Some(why) = ended_by {
            msg.push_str(&format!("; the watch ended early: {why}"));
        }
        self.finish(Outcome::Deployed, None, msg).await
    }

    /// Can the release start at all (runtime reachable, networks there,
    /// images present or built, dependencies running)? Nothing is stopped
    /// before this passes.
    async fn preflight(&mut self) -> Result<(), String> {
        self.op.phase(Phase::Preflight);
        let config = &self.config;
        let built = std::sync::atomic::AtomicBool::new(false);
        let progress = |service: &str, line: &str| {
            built.store(true, std::sync::atomic::Ordering::Relaxed);
            self.op.phase(Phase::Build);
            self.reporter.info(Phase::Build, Some(service), line)
        };
        let t = Instant::now();
        let result = self.controller.driver.preflight(config, &self.tag, &progress).await;
        if built.into_inner() {
            self.record.build_ms = Some(ms(t.elapsed()));
        }
        if let Err(e) = result {
            self.reporter.error(Phase::Preflight, None, e.to_string());
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Run the `when` hooks. A failure of a `before_*` hook is the deploy's
    /// failure; those of later points are warnings.
    async fn hooks(&self, when: HookWhen) -> Result<(), Failure> {
        if !self.config.hooks.iter().any(|h| h.when == when) {
            return Ok(());
        }
        self.op.phase(Phase::Hook);
        let ctx = HookContext {
            tag: &self.tag,
            previous_tag: self.record.from.as_ref().map(|f| f.tag.as_str()),
            color: self.idle,
        };
        let failures = hooks::run(&self.controller.driver, &self.config, when, &ctx, &self.reporter).await;
        if when.is_gate() {
            return match failures.into_iter().next() {
                Some(f) => Err(Failure::hook(f)),
                None => Ok(()),
            };
        }
        for f in failures {
            self.reporter.warn(Phase::Hook, None, f.message.clone());
            self.show_lines(&Failure::hook(f));
        }
        Ok(())
    }

    /// A failed hook's last lines.
    fn show_lines(&self, failure: &Failure) {
        let Some(lines) = &failure.lines else { return };
        self.reporter
            .warn(Phase::Logs, None, format!("last {} line(s) of the hook:", lines.len()));
        for line in lines {
            self.reporter.warn(Phase::Logs, None, line.clone());
        }
    }

    /// Make room in the idle color (it may hold an old standby, restarted
    /// if the deploy fails) and record the deploy as pending, so a crash from
    /// here on is undone at restart. The state lock is not held while the
    /// standby stops (`status` must not wait for `stop_timeout`); the
    /// operation lock keeps anyone else from changing the state meanwhile.
    async fn prepare(&mut self) -> Result<(), Failure> {
        self.op.phase(Phase::Prepare);
        let old = self.controller.state.lock().await.colors.get(&self.idle).cloned();
        if let Some(old) = old {
            self.reporter.info(
                Phase::Prepare,
                None,
                format!(
                    "stopping standby {} ({}) to make room; it is restarted if this deploy fails",
                    self.idle, old.tag
                ),
            );
            self.controller.stop_release(&old, &self.config, &self.reporter).await;
            self.displaced = Some(old);
        }
        let mut state = self.controller.state.lock().await;
        state.begin(self.idle, &self.tag);
        self.controller.save(&state).await.map_err(Failure::new)
    }

    /// Start every service of the new color, each recorded as it exists.
    async fn start(&self) -> Result<(), Failure> {
        self.op.phase(Phase::Start);
        self.start_release(&self.tag).await
    }

    /// Start every service of the idle color at `tag`, recording each.
    async fn start_release(&self, tag: &str) -> Result<(), Failure> {
        for service in &self.config.services {
            let spec = StartSpec {
                service,
                color: self.idle,
                tag,
                config: &self.config,
            };
            let upstream = self.controller.driver.start(&spec).await.map_err(Failure::new)?;
            self.reporter.info(
                Phase::Start,
                Some(&service.name),
                format!("started {} on {}", self.idle, upstream.addr),
            );
            let mut state = self.controller.state.lock().await;
            state.add_upstream(self.idle, &service.name, upstream);
            self.controller.save(&state).await.map_err(Failure::new)?;
        }
        Ok(())
    }

    /// Health-check every new upstream at once, until each is healthy, one
    /// fails, or the deadline passes. Returns the release to flip to.
    async fn health(&mut self) -> Result<Release, Failure> {
        self.op.phase(Phase::Health);
        let release = self.wait_healthy(self.deadline).await?;
        self.record.ready_ms = Some(ms(self.record.started.elapsed()));
        Ok(release)
    }

    /// Health-check every upstream of the idle color until `deadline`;
    /// the first failure ends the wait.
    async fn wait_healthy(&self, deadline: tokio::time::Instant) -> Result<Release, Failure> {
        let release = self
            .controller
            .state
            .lock()
            .await
            .colors
            .get(&self.idle)
            .cloned()
            .unwrap_or_else(|| Release {
                tag: self.tag.clone(),
                services: Default::default(),
            });
        let driver: &Driver = &self.controller.driver;
        let checks = self.config.services.iter().filter_map(|service| {
            let upstream = release.services.get(&service.name)?;
            let check = HealthCheck {
                driver,
                handle: &upstream.handle,
                addr: upstream.addr,
                health: &service.health,
                interval: self.config.deploy.health_check_interval,
                deadline,
                reporter: &self.reporter,
                service: &service.name,
            };
            Some(async move {
                let t = Instant::now();
                match check.wait().await {
                    Ok(()) => {
                        check.reporter.success(
                            Phase::Health,
                            Some(check.service),
                            format!("healthy after {} ms", ms(t.elapsed())),
                        );
                        Ok(())
                    }
                    Err(why) => Err((service.name.clone(), why)),
                }
            })
        });
        // The first service that fails ends the deploy at once: the other
        // checks are dropped rather than waited for.
        if let Err((service, why)) = futures_util::future::try_join_all(checks).await {
            return Err(Failure {
                reason: format!("{service} ({}, {}) is not healthy: {why}", self.idle, release.tag),
                service: Some(service),
                lines: None,
            });
        }
        Ok(release)
    }

    /// Send every service to the new color in one swap, then persist.
    /// Returns the color and release that served before.
    async fn flip(&mut self, release: &Release) -> Result<Option<(Color, Release)>, String> {
        self.op.phase(Phase::Flip);
        self.controller
            .flip_to(self.idle, release, &self.config, &mut self.record, &self.reporter)
            .await
    }

    /// Let the old color finish its requests.
    async fn drain(&mut self, old: Option<&(Color, Release)>) {
        self.op.phase(Phase::Drain);
        self.controller
            .drain(old, &self.config, &mut self.record, &self.reporter)
            .await;
    }

    /// Drain the old color while the watch reads the new one's answers.
    /// Says how the watch ended; when it tripped or a `flip back` ended
    /// it, the drain stops at once: the old color is about to take traffic
    /// again.
    async fn drain_and_watch(
        &mut self,
        old: Option<&(Color, Release)>,
        baseline: &Baseline,
        watch: &WatchConfig,
    ) -> Watched {
        self.op.phase(Phase::Watch);
        self.reporter.info(
            Phase::Watch,
            None,
            format!(
                "watching {} for {}: more than {:.1}% 5xx over at least {} requests of a service flips back to {}",
                self.idle,
                humantime::format_duration(watch.window),
                watch.max_5xx_ratio * 100.0,
                watch.min_requests,
                old.map_or("-".to_string(), |(c, r)| format!("{c} ({})", r.tag))
            ),
        );
        let verdict = {
            let controller = &self.controller;
            let drain = controller.drain(old, &self.config, &mut self.record, &self.reporter);
            let watching = controller.watch(baseline, watch, &self.reporter);
            tokio::pin!(drain, watching);
            tokio::select! {
                _ = &mut drain => watching.await,
                verdict = &mut watching => {
                    if matches!(verdict, Verdict::Passed(_)) {
                        drain.await;
                    }
                    verdict
                }
            }
        };
        match verdict {
            Verdict::Passed(info) => {
                self.record.watch = Some(info);
                Watched::Passed
            }
            Verdict::Tripped(info, why) => {
                self.record.watch = Some(info);
                Watched::Tripped(why)
            }
            Verdict::Ended(info) => {
                let why = info.ended.clone().unwrap_or_default();
                self.record.watch = Some(info);
                Watched::Ended(why)
            }
        }
    }

    /// The watch tripped: traffic goes back to the previous color at once,
    /// the new one drains and is retired as `standby` says.
    async fn flip_back(mut self, release: Release, old: Option<(Color, Release)>, why: String) -> Outcome {
        self.reporter.error(Phase::Watch, None, format!("{why}: flipping back"));
        let Some((color, previous)) = old else {
            return self.finish(Outcome::Failed, Some(why.clone()), why).await;
        };
        self.op.phase(Phase::Flip);
        let first_swap = self.record.flip_us;
        let flipped = self
            .controller
            .flip_to(color, &previous, &self.config, &mut self.record, &self.reporter)
            .await;
        self.record.flip_us = first_swap;
        let bad = match flipped {
            Ok(bad) => bad.or(Some((self.idle, release))),
            Err(e) => {
                let msg = format!(
                    "the watch could not flip back, {} ({}) still serves: {why}; then: {e}",
                    self.tag, self.idle
                );
                return self.finish(Outcome::Failed, Some(msg.clone()), msg).await;
            }
        };
        self.op.phase(Phase::Drain);
        self.controller
            .drain(bad.as_ref(), &self.config, &mut self.record, &self.reporter)
            .await;
        self.retire(bad).await;
        let msg = format!(
            "the watch flipped back: {color} ({}) serves again after {} ({}) failed real traffic: {why}",
            previous.tag, self.tag, self.idle
        );
        self.finish(Outcome::AutoFlippedBack, Some(why), msg).await
    }

    /// Keep the old color warm as standby, or stop it.
    async fn retire(&self, old: Option<(Color, Release)>) {
        self.op.phase(Phase::Standby);
        self.controller.retire(old, &self.config, &self.reporter).await;
    }

    /// Remove the images [`retention::removable`] lets go (Docker only).
    async fn cleanup(&self) {
        if !matches!(self.controller.driver, Driver::Docker(_)) {
            return;
        }
        self.op.phase(Phase::Cleanup);
        let in_use: Vec<String> = {
            let state = self.controller.state.lock().await;
            state.colors.values().map(|r| r.tag.clone()).collect()
        };
        let history = match self.controller.history.read() {
            Ok(h) => h,
            Err(e) => {
                self.reporter.warn(
                    Phase::Cleanup,
                    None,
                    format!("history unreadable, no image removed: {e}"),
                );
                return;
            }
        };
        let removable = retention::removable(&history, &in_use, &self.tag, self.config.deploy.keep_images);
        if removable.is_empty() {
            return;
        }
        // The images of hook services (migrations) are the release's too.
        let tasks = self.config.project.iter().flat_map(|p| p.tasks.iter());
        let services: Vec<_> = self.config.services.iter().chain(tasks).cloned().collect();
        match self.controller.driver.cleanup_images(&services, &removable).await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => self.reporter.info(
                Phase::Cleanup,
                None,
                format!("removed old images: {}", removed.join(", ")),
            ),
            Err(e) => self
                .reporter
                .warn(Phase::Cleanup, None, format!("image cleanup failed: {e}")),
        }
    }

    /// A failure before the flip: show why and the failing upstream's logs,
    /// stop the new color, leave the active one untouched.
    async fn roll_back(self, failure: Failure) -> Outcome {
        self.op.phase(Phase::Rollback);
        let (idle, reporter, controller) = (self.idle, &self.reporter, &self.controller);
        reporter.error(Phase::Rollback, failure.service.as_deref(), failure.reason.clone());
        let release = controller.state.lock().await.colors.get(&idle).cloned();
        self.show_lines(&failure);
        if let Some(release) = release.as_ref().filter(|_| failure.lines.is_none()) {
            let failed = failure
                .service
                .as_deref()
                .or_else(|| release.services.keys().last().map(String::as_str));
            if let Some((name, upstream)) = failed.and_then(|f| release.services.get_key_value(f)) {
                let lines = controller
                    .driver
                    .logs(&upstream.handle, name, idle, FAILED_LOG_LINES)
                    .await;
                reporter.warn(
                    Phase::Logs,
                    Some(name),
                    format!("last {} log line(s) of {name} ({idle}):", lines.len()),
                );
                for line in lines {
                    reporter.warn(Phase::Logs, Some(name), line);
                }
            }
        }
        if let Some(release) = &release {
            reporter.info(Phase::Rollback, None, format!("stopping {idle} ({})", release.tag));
            controller.stop_release(release, &self.config, reporter).await;
        }
        let mut state = controller.state.lock().await;
        state.abandon(idle);
        if let Err(e) = controller.save(&state).await {
            reporter.error(Phase::Rollback, None, e.to_string());
        }
        let serving = match state.active_release() {
            Some((c, r)) => format!("{c} ({}) keeps serving", r.tag),
            None => "no release is active".into(),
        };
        drop(state);
        if let Some(standby) = &self.displaced {
            self.restore_standby(standby).await;
        }
        self.hooks(HookWhen::AfterFailure).await.ok();
        let msg = format!("deploy of {} rolled back: {}; {serving}", self.tag, failure.reason);
        self.finish(Outcome::RolledBack, Some(failure.reason), msg).await
    }

    /// After a failed deploy, start again the standby `prepare` stopped, so
    /// `flip back` works as it did before the deploy. It is pending while it
    /// starts (a crash undoes it) and a standby once healthy.
    async fn restore_standby(&self, standby: &Release) {
        let (idle, reporter, controller) = (self.idle, &self.reporter, &self.controller);
        reporter.info(
            Phase::Standby,
            None,
            format!(
                "restarting standby {idle} ({}) so that `flip back` works as before",
                standby.tag
            ),
        );
        {
            let mut state = controller.state.lock().await;
            state.begin(idle, &standby.tag);
            if let Err(e) = controller.save(&state).await {
                state.abandon(idle);
                reporter.warn(Phase::Standby, None, format!("standby {idle} not restarted: {e}"));
                return;
            }
        }
        let started = match self.start_release(&standby.tag).await {
            Ok(()) => self.wait_healthy(deadline_after(self.config.deploy.timeout)).await,
            Err(f) => Err(f),
        };
        let mut state = controller.state.lock().await;
        match started {
            Ok(_) => {
                state.settle(idle);
                reporter.success(
                    Phase::Standby,
                    None,
                    format!("standby {idle} ({}) is running again", standby.tag),
                );
            }
            Err(failure) => {
                if let Some(release) = state.abandon(idle) {
                    drop(state);
                    controller.stop_release(&release, &self.config, reporter).await;
                    state = controller.state.lock().await;
                }
                reporter.warn(
                    Phase::Standby,
                    None,
                    format!(
                        "standby {idle} ({}) could not be restarted ({}); `flip back` is not available, \
                         `switchctl rollback` redeploys the previous release",
                        standby.tag, failure.reason
                    ),
                );
            }
        }
        if let Err(e) = controller.save(&state).await {
            reporter.warn(Phase::Standby, None, e.to_string());
        }
    }

    /// Record the deploy in history and send the final event.
    async fn finish(self, outcome: Outcome, reason: Option<String>, message: String) -> Outcome {
        self.record
            .finish(&self.controller, outcome, reason, message, &self.reporter)
            .await
    }
}

/// How the drain and the watch after a flip ended.
enum Watched {
    /// The window passed, or nothing was watched: retire the old color.
    Passed,
    /// The new color failed real traffic: flip back, saying why.
    Tripped(String),
    /// A human's `flip back` or `rollback` ended the watch (the text
    /// says which): leave the old color to it.
    Ended(String),
}

#[cfg(test)]
mod tests {
    use super::{deadline_after, validate_tag};

    #[test]
    fn a_huge_timeout_makes_a_deadline_without_panicking() {
        let d = deadline_after(std::time::Duration::from_secs(u64::MAX));
        assert!(d > tokio::time::Instant::now());
    }

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
