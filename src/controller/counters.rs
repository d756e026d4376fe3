//! What the controller counts for metrics: operations by kind and outcome,
//! route swaps, what their drains cut, and the last deploy's duration. Plain atomics, read by
//! `metrics.rs` at scrape time; nothing here knows Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::event::Outcome;

/// Every outcome, in the order [`Counters::outcomes`] reports them.
pub const OUTCOMES: [Outcome; 6] = [
    Outcome::Deployed,
    Outcome::RolledBack,
    Outcome::Flipped,
    Outcome::Refused,
    Outcome::Failed,
    Outcome::AutoFlippedBack,
];

/// Operation counters of one daemon.
#[derive(Debug, Default)]
pub struct Counters {
    /// Deploys (and rollbacks by redeploy) by outcome, as [`OUTCOMES`].
    deploys: [AtomicU64; OUTCOMES.len()],
    /// Route swaps that moved traffic to another color.
    flips: AtomicU64,
    /// Requests and tunnels still open on a color when its drain timed out.
    drain_cut: AtomicU64,
    /// The last finished deploy: its duration in ms, `None` before one.
    last_deploy: Mutex<Option<Duration>>,
}

impl Counters {
    /// An operation of `kind` ended with `outcome` after `took`.
    pub(super) fn finished(&self, kind: &str, outcome: Outcome, took: Duration) {
        if kind != "deploy" {
            return;
        }
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.deploys[i].fetch_add(1, Ordering::Relaxed);
        }
        if outcome != Outcome::Refused {
            *self.last_deploy.lock().expect("counters lock") = Some(took);
        }
    }

    /// Traffic moved to another color.
    pub(super) fn flipped(&self) {
        self.flips.fetch_add(1, Ordering::Relaxed);
    }

    /// A drain timed out with `n` requests and tunnels still open.
    pub(super) fn drain_cut(&self, n: usize) {
        self.drain_cut.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Requests and tunnels that drains have timed out on so far.
    pub fn drain_cuts(&self) -> u64 {
        self.drain_cut.load(Ordering::Relaxed)
    }

    /// Deploys by outcome, as [`OUTCOMES`].
    pub fn outcomes(&self) -> [(Outcome, u64); OUTCOMES.len()] {
        std::array::from_fn(|i| (OUTCOMES[i], self.deploys[i].load(Ordering::Relaxed)))
    }

    /// Route swaps to another color so far.
    pub fn flips(&self) -> u64 {
        self.flips.load(Ordering::Relaxed)
    }

    /// How long the last finished deploy took.
    pub fn last_deploy(&self) -> Option<Duration> {
        *self.last_deploy.lock().expect("counters lock")
    }
}
