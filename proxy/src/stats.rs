//! What the data plane counts per [`Upstream`](crate::Upstream), for the
//! control plane to read: responses by status class, a fixed-bucket
//! histogram of the time to the response head, and the upstream's own
//! failures (refused connections, timeouts).
//!
//! The hot path adds with relaxed atomics into the shard of its worker
//! thread, one cache-line-aligned block per worker, so two workers never
//! write the same line and nothing locks. A reader sums the shards: a
//! [`Snapshot`] is consistent enough for metrics and the post-flip watch
//! (each counter is exact; counters are not read at one instant together).
//! The proxy gives no meaning to the numbers beyond that: naming and
//! labelling them is the reader's business.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the duration histogram's buckets, in microseconds (the
/// last bucket, above them all, is `+Inf`).
pub const BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
];

/// Shards per upstream: workers beyond this share them (still no lock).
const SHARDS: usize = 8;

thread_local! {
    /// The shard this thread counts into; each proxy worker sets its own.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Make the calling thread (a proxy worker) count into shard `worker`.
pub(crate) fn set_worker(worker: usize) {
    SHARD.with(|s| s.set(worker % SHARDS));
}

/// A failure of the upstream itself, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// The connection was refused or could not be made (502).
    Connect,
    /// No connection within the connect timeout (504).
    ConnectTimeout,
    /// No response head within the response timeout (504).
    ResponseTimeout,
}

/// One worker's counters, on cache lines of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Responses by class: 1xx .. 5xx.
    classes: [AtomicU64; 5],
    /// Durations per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// Sum of durations, in microseconds.
    sum_us: AtomicU64,
    connect_errors: AtomicU64,
    connect_timeouts: AtomicU64,
    response_timeouts: AtomicU64,
}

/// Counters of one upstream, sharded by worker.
#[derive(Debug, Default)]
pub struct Stats {
    shards: [Shard; SHARDS],
}

/// The sum of every shard at one read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Responses by status class, `classes[0]` = 1xx .. `classes[4]` = 5xx
    /// (the proxy's own 502/504 for this upstream included).
    pub classes: [u64; 5],
    /// Responses per duration bucket (see [`BUCKETS_US`]; not cumulative).
    pub buckets: [u64; BUCKETS_US.len() + 1],
    /// Sum of the durations, in microseconds.
    pub sum_us: u64,
    /// Connections refused or failed.
    pub connect_errors: u64,
    /// Connections not made within the connect timeout.
    pub connect_timeouts: u64,
    /// Response heads not received within the response timeout.
    pub response_timeouts: u64,
}

impl Snapshot {
    /// Every response counted.
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }

    /// Responses with a 5xx status.
    pub fn errors_5xx(&self) -> u64 {
        self.classes[4]
    }
}

impl Stats {
    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(Cell::get)]
    }

    /// Count one response of `status`, `elapsed` after the request arrived.
    #[inline]
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let shard = self.shard();
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        shard.classes[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Count a failure of the upstream (its response, the proxy's 502/504,
    /// is counted by [`Stats::record`] as well).
    pub(crate) fn record_error(&self, error: UpstreamError) {
        let shard = self.shard();
        let counter = match error {
            UpstreamError::Connect => &shard.connect_errors,
            UpstreamError::ConnectTimeout => &shard.connect_timeouts,
            UpstreamError::ResponseTimeout => &shard.response_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The sum over every worker now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for shard in &self.shards {
            for (sum, c) in s.classes.iter_mut().zip(&shard.classes) {
                *sum += c.load(Ordering::Relaxed);
            }
            for (sum, c) in s.buckets.iter_mut().zip(&shard.buckets) {
                *sum += c.load(Ordering::Relaxed);
            }
            s.sum_us += shard.sum_us.load(Ordering::Relaxed);
            s.connect_errors += shard.connect_errors.load(Ordering::Relaxed);
            s.connect_timeouts += shard.connect_timeouts.load(Ordering::Relaxed);
            s.response_timeouts += shard.response_timeouts.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_bucket_across_workers() {
        let stats = std::sync::Arc::new(Stats::default());
        stats.record(200, Duration::from_micros(900));
        stats.record(503, Duration::from_millis(30));
        let other = stats.clone();
        std::thread::spawn(move || {
            set_worker(3);
            other.record(404, Duration::from_secs(60));
            other.record_error(UpstreamError::Connect);
        })
        .join()
        .unwrap();
        let s = stats.snapshot();
        assert_eq!(s.classes, [0, 1, 0, 1, 1]);
        assert_eq!((s.requests(), s.errors_5xx()), (3, 1));
        assert_eq!(s.buckets[0], 1, "900 µs is within the first bound");
        assert_eq!(s.buckets[5], 1, "30 ms is within the 50 ms bound");
        assert_eq!(s.buckets[BUCKETS_US.len()], 1, "a minute is +Inf");
        assert_eq!(s.sum_us, 900 + 30_000 + 60_000_000);
        assert_eq!(s.connect_errors, 1);
    }

    #[test]
    fn a_shard_fills_whole_cache_lines() {
        assert_eq!(std::mem::align_of::<Shard>(), 128);
        assert_eq!(std::mem::size_of::<Shard>() % 128, 0);
    }
}
