//! The post-flip watch (`[deploy.watch]`): for `window` after a deploy's
//! flip, the new color's answers are read from the proxy's own counters
//! (each upstream's [`Stats`](switchctl_proxy::Stats)); a service that
//! answers more than `max_5xx_ratio` 5xx over at least `min_requests`
//! answers trips it, and the deploy flips back to the previous color at
//! once (`deploy.rs`). The previous color is not retired until the watch
//! ends, whatever `standby` says, so there is always somewhere to go back to.
//! A human's `flip back` or `rollback` during the window does not wait for
//! it: it ends the watch ([`Controller::end_watch`]), the deploy records
//! which command did and lets go of the operation lock with the previous
//! color still running, and the command proceeds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchctl_proxy::{Snapshot, Upstream};
use tokio::sync::oneshot;

use super::event::{Phase, Reporter};
use super::Controller;
use crate::api::{WatchInfo, WatchService};
use crate::config::WatchConfig;
use crate::release::{Color, Release};

/// How often the counters are read: a bad release is caught within this of
/// passing the threshold.
const TICK: Duration = Duration::from_millis(50);

/// The new color's counters when traffic moved to it.
pub(super) struct Baseline {
    color: Color,
    services: Vec<(String, Arc<Upstream>, Snapshot)>,
}

/// How a watch ended.
pub(super) enum Verdict {
    /// The window passed under the threshold.
    Passed(WatchInfo),
    /// A service went past it: flip back. The text says which and why.
    Tripped(WatchInfo, String),
    /// A human asked for `flip back` or `rollback` before the window
    /// ended; `WatchInfo::ended` says which.
    Ended(WatchInfo),
}

/// Why a watch ended early, as history records it: `command` was asked
/// during the window.
fn ended_by(command: &str) -> String {
    format!("`switchctl {command}` was asked during the window")
}

impl Controller {
    /// The counters of `release`'s upstreams now, taken just before the
    /// flip to `color` so the watch counts every answer after it.
    pub(super) fn watch_baseline(&self, color: Color, release: &Release) -> Baseline {
        let services = release
            .services
            .iter()
            .map(|(name, rec)| {
                let up = self.upstreams.get(rec.addr);
                let base = up.stats().snapshot();
                (name.clone(), up, base)
            })
            .collect();
        Baseline { color, services }
    }

    /// Watch the answers of the baseline's color for `watch.window`.
    /// `status` shows the figures while it runs.
    pub(super) async fn watch(&self, baseline: &Baseline, watch: &WatchConfig, reporter: &Reporter) -> Verdict {
        let until = SystemTime::now() + watch.window;
        let deadline = tokio::time::Instant::now() + watch.window;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (end, mut ended) = oneshot::channel();
        *self.watch_end.lock().expect("watch end lock") = Some(end);
        let verdict = loop {
            let by = tokio::select! {
                _ = interval.tick() => None,
                Ok(command) = &mut ended => Some(command),
            };
            let info = figures(baseline, until);
            if let Some(command) = by {
                break Verdict::Ended(WatchInfo {
                    ended: Some(ended_by(command)),
                    ..info
                });
            }
            let tripped = info.services.iter().find(|s| past_threshold(s, watch));
            if let Some(s) = tripped {
                let why = format!(
                    "{} ({}) answered {} 5xx of {} requests ({:.1}%, more than the {:.1}% of [deploy.watch])",
                    s.name,
                    baseline.color,
                    s.errors_5xx,
                    s.requests,
                    ratio(s) * 100.0,
                    watch.max_5xx_ratio * 100.0
                );
                let name = s.name.clone();
                break Verdict::Tripped(
                    WatchInfo {
                        tripped: Some(name),
                        ..info
                    },
                    why,
                );
            }
            *self.watch.lock().expect("watch lock") = Some(info.clone());
            if tokio::time::Instant::now() >= deadline {
                break Verdict::Passed(info);
            }
        };
        *self.watch.lock().expect("watch lock") = None;
        *self.watch_end.lock().expect("watch end lock") = None;
        if let Verdict::Ended(info) = &verdict {
            reporter.warn(
                Phase::Watch,
                None,
                format!(
                    "watch ended early: {} ({} 5xx of {} requests to {} so far); {} is kept for it",
                    info.ended.as_deref().unwrap_or_default(),
                    info.errors_5xx,
                    info.requests,
                    baseline.color,
                    baseline.color.other()
                ),
            );
        }
        if let Verdict::Passed(info) = &verdict {
            reporter.success(
                Phase::Watch,
                None,
                format!(
                    "watch passed: {} 5xx of {} requests to {} in {}",
                    info.errors_5xx,
                    info.requests,
                    baseline.color,
                    humantime::format_duration(watch.window)
                ),
            );
        }
        verdict
    }
}

impl Controller {
    /// End the post-flip watch in progress for a human's `command`
    /// (`flip back`, `rollback`); false if none runs.
    pub(super) fn end_watch(&self, command: &'static str) -> bool {
        match self.watch_end.lock().expect("watch end lock").take() {
            // The watch may have ended by itself a moment ago: then its
            // deploy is letting go of the lock anyway.
            Some(end) => {
                let _ = end.send(command);
                true
            }
            None => false,
        }
    }
}

/// The answers since the baseline, per service and in all.
fn figures(baseline: &Baseline, until: SystemTime) -> WatchInfo {
    let services: Vec<WatchService> = baseline
        .services
        .iter()
        .map(|(name, up, base)| {
            let now = up.stats().snapshot();
            WatchService {
                name: name.clone(),
                requests: now.requests().saturating_sub(base.requests()),
                errors_5xx: now.errors_5xx().saturating_sub(base.errors_5xx()),
            }
        })
        .collect();
    WatchInfo {
        color: baseline.color,
        until: humantime::format_rfc3339_millis(until).to_string(),
        requests: services.iter().map(|s| s.requests).sum(),
        errors_5xx: services.iter().map(|s| s.errors_5xx).sum(),
        services,
        tripped: None,
        ended: None,
    }
}

fn ratio(s: &WatchService) -> f64 {
    if s.requests == 0 {
        0.0
    } else {
        s.errors_5xx as f64 / s.requests as f64
    }
}

/// Has `s` answered enough requests, with too many 5xx among them?
fn past_threshold(s: &WatchService, watch: &WatchConfig) -> bool {
    s.requests >= watch.min_requests && ratio(s) > watch.max_5xx_ratio
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(requests: u64, errors_5xx: u64) -> WatchService {
        WatchService {
            name: "web".into(),
            requests,
            errors_5xx,
        }
    }

    const WATCH: WatchConfig = WatchConfig {
        window: Duration::from_secs(60),
        max_5xx_ratio: 0.05,
        min_requests: 20,
    };

    #[test]
    fn too_few_requests_never_trip_whatever_their_ratio() {
        assert!(!past_threshold(&service(19, 19), &WATCH));
        assert!(past_threshold(&service(20, 2), &WATCH));
    }

    #[test]
    fn the_ratio_must_be_passed_not_reached() {
        assert!(!past_threshold(&service(100, 5), &WATCH));
        assert!(past_threshold(&service(100, 6), &WATCH));
        assert!(!past_threshold(&service(1000, 0), &WATCH));
    }
}
