//! An `Upstream` is one address the proxy forwards to (one color of one
//! service), together with the live count of work in flight to it.
//!
//! The count covers ordinary requests (until their response body ends) and
//! upgraded connections (until the tunnel closes). [`Upstream::drain`] waits
//! for that count to reach zero, which is how a deploy knows the old color may
//! be stopped without cutting anyone off. A request is counted before a
//! drain that starts after the flip can look (the route table's generation
//! is checked again after `enter`, in `forward.rs`), so zero means zero.
//!
//! Its [`Stats`] count what came back (status classes, durations,
//! failures), for metrics and the post-flip watch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// One address that requests can be sent to, shared by every route table
/// that names it so its in-flight count survives a swap.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Number of `drain` calls waiting; the hot path only notifies when > 0.
    drainers: AtomicUsize,
    idle: Notify,
    /// Cancelled when a drain times out: upgraded connections select on it.
    cut: ArcSwap<CancellationToken>,
    stats: Stats,
}

/// What a drain observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests and upgraded connections still open when the timeout passed
    /// (0 when the upstream drained in time). Upgraded connections are closed.
    pub cut: usize,
    /// How long the drain waited.
    pub waited: Duration,
}

impl Upstream {
    /// A new upstream at `addr` with nothing in flight.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Upstream {
            addr,
            in_flight: AtomicUsize::new(0),
            drainers: AtomicUsize::new(0),
            idle: Notify::new(),
            cut: ArcSwap::from_pointee(CancellationToken::new()),
            stats: Stats::default(),
        })
    }

    /// The socket address requests are forwarded to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests and upgraded connections currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// What the proxy counted of this upstream's responses.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Count one unit of work until the returned guard (which keeps this
    /// handle) is dropped.
    pub(crate) fn enter(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight { upstream: self }
    }

    /// The token that upgraded connections watch; cancelled by a drain that
    /// times out.
    pub(crate) fn cut_token(&self) -> CancellationToken {
        (**self.cut.load()).clone()
    }

    /// Wait until nothing is in flight to this upstream, or `timeout` passes.
    /// On timeout, upgraded connections are closed and the number of
    /// requests and connections still open is reported as `cut`.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        // Counted while waiting (also if this future is dropped half way), so
        // the hot path only notifies when somebody listens.
        self.drainers.fetch_add(1, Ordering::SeqCst);
        let _drainer = DrainerGuard(&self.drainers);
        let cut = loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.in_flight.load(Ordering::SeqCst);
            if n == 0 {
                break 0;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    break self.in_flight.load(Ordering::SeqCst);
                }
            }
        };
        if cut > 0 {
            // Close the tunnels of this upstream, and arm a fresh token so a
            // later use of the same address (a warm standby flipped back to)
            // is not born cancelled.
            let old = self.cut.swap(Arc::new(CancellationToken::new()));
            old.cancel();
        }
        DrainReport {
            cut,
            waited: start.elapsed(),
        }
    }
}

struct DrainerGuard<'a>(&'a AtomicUsize);

impl Drop for DrainerGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Guard for one request or tunnel in flight; decrements on drop.
#[derive(Debug)]
pub(crate) struct InFlight {
    upstream: Arc<Upstream>,
}

impl InFlight {
    /// The upstream this work goes to.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let prev = self.upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
        if prev == 1 && self.upstream.drainers.load(Ordering::SeqCst) > 0 {
            self.upstream.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Arc<Upstream> {
        Upstream::new("127.0.0.1:1".parse().unwrap())
    }

    #[tokio::test]
    async fn drain_of_idle_upstream_returns_at_once() {
        let up = upstream();
        let report = up.drain(Duration::from_secs(5)).await;
        assert_eq!(report.cut, 0);
        assert!(report.waited < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn drain_waits_for_the_last_request() {
        let up = upstream();
        let guard = up.clone().enter();
        let second = up.clone().enter();
        assert_eq!(up.in_flight(), 2);
        let drain = tokio::spawn({
            let up = up.clone();
            async move { up.drain(Duration::from_secs(30)).await }
        });
        drop(second);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        drop(guard);
        let report = drain.await.unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(up.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_drain_stops_counting_as_a_listener() {
        let up = upstream();
        let _guard = up.clone().enter();
        let _ = tokio::time::timeout(Duration::from_millis(10), up.drain(Duration::from_secs(30))).await;
        assert_eq!(up.drainers.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn drain_timeout_reports_and_cuts_tunnels() {
        let up = upstream();
        let _guard = up.clone().enter();
        let token = up.cut_token();
        let report = up.drain(Duration::from_millis(20)).await;
        assert_eq!(report.cut, 1);
        assert!(token.is_cancelled());
        assert!(!up.cut_token().is_cancelled(), "a fresh token is armed");
    }
}
