//! What the shutdown drain had to cut.
//!
//! At the drain timeout each worker counts what is still open: client
//! connections still answering a request (a long download, a slow upload,
//! a slow upstream) and tunnels (WebSockets). The tunnels get a close; the
//! rest is dropped with the worker's runtime, so a client sees its response
//! end short. Each worker adds its counts here; the last worker to stop logs
//! one summary line for the whole proxy (never a line per request), and
//! [`Proxy::drain_cut`](crate::Proxy::drain_cut) gives the same figures to
//! the caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What was still open when the shutdown drain timed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainCut {
    /// Client connections still answering a request: their responses were
    /// cut short.
    pub requests: usize,
    /// Upgraded connections (WebSockets and others), closed.
    pub tunnels: usize,
}

/// The workers' counts, summed as they stop.
#[derive(Debug, Default)]
pub(crate) struct CutCounter {
    requests: AtomicUsize,
    tunnels: AtomicUsize,
}

impl CutCounter {
    /// A worker's drain timed out with `cut` still open.
    pub(crate) fn add(&self, cut: DrainCut) {
        self.requests.fetch_add(cut.requests, Ordering::SeqCst);
        self.tunnels.fetch_add(cut.tunnels, Ordering::SeqCst);
    }

    /// The sum so far.
    pub(crate) fn get(&self) -> DrainCut {
        DrainCut {
            requests: self.requests.load(Ordering::SeqCst),
            tunnels: self.tunnels.load(Ordering::SeqCst),
        }
    }

    /// Every worker has stopped: one line saying what the drain cut, if any.
    pub(crate) fn report(&self, drain_timeout: Duration) {
        let cut = self.get();
        if cut != DrainCut::default() {
            tracing::warn!(
                requests = cut.requests,
                tunnels = cut.tunnels,
                drain_timeout = ?drain_timeout,
                "the drain timeout cut {} request(s) still answering (downloads, uploads, slow upstreams) and {} tunnel(s)",
                cut.requests,
                cut.tunnels,
            );
        }
    }
}
