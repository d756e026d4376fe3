//! Moving traffic between colors, shared by a deploy and `flip back`: the
//! route swap (one `ArcSwap` store, then persist), the drain of the color
//! that lost traffic, and what becomes of it (standby or stopped). And
//! `flip back` itself: probe the warm standby once, then swap, drain, retire.

use std::sync::Arc;
use std::time::Instant;

use super::event::{Event, Outcome, Phase, Reporter};
use super::health;
use super::history::{ms, Record};
use super::intent::FlipIntent;
use super::routing::route_table;
use super::{Controller, OperationGuard};
use crate::api::ColorTag;
use crate::config::{Config, HookWhen, StandbyPolicy};
use crate::driver::RunState;
use crate::release::{Color, Release};

impl Controller {
    /// Point every service at `color` in one swap, then persist. The intent
    /// is recorded first (`intent.rs`, one small write, no fsync: the module
    /// says why that is as crash-safe): if that fails, nothing moves (`Err`,
    /// routes unchanged); a daemon killed after the swap but before the
    /// result is saved completes the flip at start (see
    /// `recover::complete_flip`). Returns the color and release that served
    /// before.
    pub(super) async fn flip_to(
        &self,
        color: Color,
        release: &Release,
        config: &Config,
        rec: &mut Record,
        reporter: &Reporter,
    ) -> Result<Option<(Color, Release)>, String> {
        let mut state = self.state.lock().await;
        let intent = FlipIntent {
            color,
            tag: release.tag.clone(),
        };
        // On the controller's own thread, not the proxy's: a write to the
        // page cache costs less than a hop to the blocking pool under load.
        if let Err(e) = intent.write(self.store.dir()) {
            let msg = format!(
                "the flip could not be recorded before the swap (writing {}: {e}); traffic stays where it is; \
                 check that the state directory is writable and not full",
                super::intent::path(self.store.dir()).display()
            );
            reporter.error(Phase::Flip, None, msg.clone());
            return Err(msg);
        }
        state.flipping_to = Some(color);
        let table = route_table(config, Some(release), &self.upstreams);
        let t = Instant::now();
        self.proxy.swap(table);
        let swap = t.elapsed();
        rec.flip_us = Some(swap.as_micros() as u64);
        self.counters.flipped();
        let old = state.activate(color);
        // Said now, at the swap (the log's timestamp is the moment traffic
        // moved; benches/flipsplit.py reads it), not after the state save's
        // fsyncs.
        reporter.success(
            Phase::Flip,
            None,
            format!(
                "traffic now goes to {color} ({}); route swap took {} µs",
                release.tag,
                swap.as_micros()
            ),
        );
        if let Err(e) = self.save(&state).await {
            reporter.error(
                Phase::Flip,
                None,
                format!(
                    "traffic moved, but the state could not be saved ({e}); the flip was recorded before the swap, \
                     so a daemon restart keeps {color} serving if it is healthy; fix the state directory"
                ),
            );
        }
        drop(state);
        Ok(old)
    }

    /// Wait until the color that just lost traffic has no request or tunnel
    /// in flight, up to `drain_timeout`; report what was cut.
    pub(super) async fn drain(
        &self,
        old: Option<&(Color, Release)>,
        config: &Config,
        rec: &mut Record,
        reporter: &Reporter,
    ) {
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
                self.counters.drain_cut(report.cut);
                reporter.warn(
                    Phase::Drain,
                    Some(service),
                    format!(
                        "{color} still had {} request(s)/connection(s) after the drain timeout of {}; its upgraded \
                         connections (WebSockets) were closed, and requests still being answered go on until {color} stops",
                        report.cut,
                        humantime::format_duration(config.proxy.drain_timeout)
                    ),
                );
            }
        }
        reporter.info(
            Phase::Drain,
            None,
            format!("{color} ({}) drained in {} ms", release.tag, ms(t.elapsed())),
        );
    }

    /// The drained color: kept running as standby, or stopped (`standby`).
    pub(super) async fn retire(&self, old: Option<(Color, Release)>, config: &Config, reporter: &Reporter) {
        let Some((color, release)) = old else { return };
        match config.deploy.standby {
            StandbyPolicy::Keep => {
                self.set_service_alias(&release, config, false, reporter).await;
                // Claim a standby only if the driver says it runs.
                let mut down = Vec::new();
                for (service, up) in &release.services {
                    match self.driver.state(&up.handle).await {
                        RunState::Running { .. } => {}
                        RunState::Exited { reason } | RunState::Unknown { reason } => {
                            down.push(format!("{service}: {reason}"))
                        }
                        RunState::Missing => down.push(format!("{service}: gone")),
                    }
                }
                if down.is_empty() {
                    reporter.info(
                        Phase::Standby,
                        None,
                        format!(
                            "{color} ({}) kept running as standby: `switchctl flip back` returns to it at once",
                            release.tag
                        ),
                    );
                    return;
                }
                reporter.warn(
                    Phase::Standby,
                    None,
                    format!(
                        "{color} ({}) is not running ({}): there is no standby to flip back to; \
                         `switchctl rollback` redeploys it",
                        release.tag,
                        down.join("; ")
                    ),
                );
                self.stop_release(&release, config, reporter).await;
                let mut state = self.state.lock().await;
                state.retire(color);
                if let Err(e) = self.save(&state).await {
                    reporter.warn(Phase::Standby, None, e.to_string());
                }
            }
            StandbyPolicy::Stop => {
                self.stop_release(&release, config, reporter).await;
                let mut state = self.state.lock().await;
                state.retire(color);
                if let Err(e) = self.save(&state).await {
                    reporter.warn(Phase::Standby, None, e.to_string());
                }
                reporter.info(Phase::Standby, None, format!("{color} ({}) stopped", release.tag));
            }
        }
    }

    /// Give or take away each service's Compose name (its network alias)
    /// on the upstreams of `release`; a failure is reported, never fatal.
    async fn set_service_alias(&self, release: &Release, config: &Config, named: bool, reporter: &Reporter) {
        for (service, up) in &release.services {
            let Some(svc) = config.service(service) else { continue };
            if let Err(e) = self.driver.set_service_alias(&up.handle, svc, named).await {
                reporter.warn(
                    Phase::Standby,
                    Some(service),
                    format!("could not move the network alias {service}: {e}"),
                );
            }
        }
    }

    /// Send traffic back to the warm standby, if it answers its health check.
    pub(super) async fn flip_back(self: &Arc<Self>, op: OperationGuard, reporter: Reporter) -> Outcome {
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
            let why = match (from.is_some(), config.deploy.standby) {
                (false, _) => "nothing has been deployed yet".to_string(),
                (true, StandbyPolicy::Stop) => {
                    "the previous color was stopped after the flip (standby = \"stop\")".to_string()
                }
                (true, StandbyPolicy::Keep) => format!(
                    "no earlier release runs in {} (none was deployed there, or it exited or was removed)",
                    from.as_ref().map_or(Color::Green, |f| f.color.other())
                ),
            };
            let msg =
                format!("no standby to flip back to: {why}; use `switchctl rollback` to redeploy the previous release");
            reporter.send(Event::done(Outcome::Refused, msg));
            return Outcome::Refused;
        };
        let mut rec = Record::new("flip_back", &release.tag, from, color);
        op.phase(Phase::Health);
        // Every service of the standby is probed at once: one round trip
        // before the swap, however many services there are.
        let mut upstreams = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let Some(upstream) = release.services.get(&service.name) else {
                let msg = format!(
                    "standby {color} ({}) has no {} service (added since); deploy instead",
                    release.tag, service.name
                );
                return rec
                    .finish(self, Outcome::Refused, Some(msg.clone()), msg, &reporter)
                    .await;
            };
            upstreams.push((service, upstream.addr));
        }
        let probes = upstreams
            .iter()
            .map(|(service, addr)| health::probe(*addr, &service.health));
        let results = futures_util::future::join_all(probes).await;
        if let Some(((service, _), Err(why))) = upstreams.iter().zip(results).find(|(_, r)| r.is_err()) {
            let msg = format!(
                "standby {color} ({}) is not healthy, traffic stays where it is: {}: {why}",
                release.tag, service.name
            );
            return rec
                .finish(self, Outcome::Refused, Some(msg.clone()), msg, &reporter)
                .await;
        }
        op.phase(Phase::Flip);
        // Other containers calling a service by its Compose name follow the
        // traffic: the standby takes the name before it takes traffic.
        self.set_service_alias(&release, &config, true, &reporter).await;
        let old = match self.flip_to(color, &release, &config, &mut rec, &reporter).await {
            Ok(old) => old,
            Err(msg) => {
                return rec
                    .finish(self, Outcome::Refused, Some(msg.clone()), msg, &reporter)
                    .await
            }
        };
        op.phase(Phase::Drain);
        self.drain(old.as_ref(), &config, &mut rec, &reporter).await;
        op.phase(Phase::Standby);
        let previous = old.as_ref().map(|(_, r)| r.tag.clone());
        self.retire(old, &config, &reporter).await;
        if config.hooks.iter().any(|h| h.when == HookWhen::AfterFlipBack) {
            op.phase(Phase::Hook);
            let ctx = super::hooks::HookContext {
                tag: &release.tag,
                previous_tag: previous.as_deref(),
                color,
            };
            let failures = super::hooks::run(&self.driver, &config, HookWhen::AfterFlipBack, &ctx, &reporter).await;
            for f in failures {
                reporter.warn(Phase::Hook, None, f.message);
                for line in f.lines {
                    reporter.warn(Phase::Logs, None, line);
                }
            }
        }
        let msg = format!("flipped back to {color} ({})", release.tag);
        rec.finish(self, Outcome::Flipped, None, msg, &reporter).await
    }
}
