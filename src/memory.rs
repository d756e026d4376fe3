//! Gives freed heap memory back to the kernel after a wave of closed or
//! parked connections (the end of an attack, or of a traffic peak, or
//! keep-alive clients gone quiet).
//!
//! glibc's malloc keeps what is freed in the middle of its arenas: a
//! thousand slow-read connections each holding response buffers leave
//! their memory to the process after they close, and only the arenas' top
//! is ever returned by itself. The same holds for the ~16 KiB of hyper
//! buffers a keep-alive connection frees when it parks (see
//! `Proxy::parked_connections`). `malloc_trim(0)` hands every free page back
//! (`MADV_DONTNEED`). It costs a walk of the free lists and takes each
//! arena's lock in turn, so it runs rarely: when the number of open
//! connections, or of those holding buffers (open, not parked), has fallen
//! by a quarter from its peak (and by at least [`MIN_WAVE`]), at most once
//! per [`LOOK_EVERY`], on a blocking thread,
//! never on the proxy's workers. Nothing is added to a request's path. docs/reliability.md ("Attackers") has the
//! RSS measured before and after.
//!
//! A static musl build (the `.deb`) has nothing to do: musl's allocator
//! unmaps freed groups by itself.

use std::sync::Arc;
use std::time::Duration;

use switchctl_proxy::Proxy;
use tokio_util::sync::CancellationToken;

/// How often the connection counts are looked at (two atomic loads).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Fewest connections closed since the peak that make a wave: an h2load
/// flood of 100 connections left 80 MiB behind; the ebb and flow of a few
/// dozen browsers is no reason to trim.
const MIN_WAVE: usize = 64;

/// Follows the number of connections holding buffers and says when a wave
/// of them has closed or parked since the peak.
#[derive(Debug, Default)]
struct Waves {
    peak: usize,
}

impl Waves {
    /// `open` connections now; true when a quarter of the peak, and at
    /// least [`MIN_WAVE`], closed since it (the peak then starts again from
    /// here).
    fn closed_a_wave(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        let closed = self.peak - open;
        if closed >= MIN_WAVE && closed >= self.peak / 4 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Until `shutdown`: trim the heap after each wave of closes.
pub async fn trim_after_waves(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    // Closed connections free their memory, and so do parked ones.
    let (mut open, mut busy) = (Waves::default(), Waves::default());
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_open = proxy.open_connections();
        let now_busy = now_open.saturating_sub(proxy.parked_connections());
        // Both, so that each follows its own peak.
        if open.closed_a_wave(now_open) | busy.closed_a_wave(now_busy) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Hand free heap pages back to the kernel, and log what it gave.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let before = rss_kib();
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks
    // each arena in turn).
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::info!(
        before_kib = before,
        after_kib = rss_kib(),
        "connections closed or parked in a wave: freed heap memory returned to the kernel"
    );
}

/// musl and other allocators return freed memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// This process's resident memory, in KiB (0 if /proc cannot say).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_is_counted_from_the_peak_and_starts_again_after_it() {
        let mut w = Waves::default();
        assert!(!w.closed_a_wave(100));
        assert!(!w.closed_a_wave(1000));
        assert!(!w.closed_a_wave(751), "one short of a quarter");
        assert!(w.closed_a_wave(750), "a quarter closed since the peak");
        assert!(!w.closed_a_wave(750 - 186), "counted from the trim, not the old peak");
        assert!(w.closed_a_wave(750 - 187));
        // A small peak: at least MIN_WAVE.
        let mut w = Waves::default();
        assert!(!w.closed_a_wave(100));
        assert!(!w.closed_a_wave(100 - MIN_WAVE + 1));
        assert!(w.closed_a_wave(100 - MIN_WAVE));
    }
}
