//! Which CPU each worker runs on.
//!
//! When there are as many workers as CPUs the process may run on (the
//! default, one per core), each worker is pinned to a CPU of its own.
//! Left to the scheduler, two busy workers sometimes share one CPU while
//! the app and its other processes take the other: each then waits out the
//! other's time slice, and every connection of the waiting worker with it.
//! On a 2-core machine under wrk, two pinned workers answered with a p99 of
//! 1.3-1.6 ms instead of 4.3 (docs/benchmarks.md, "Session 9").
//!
//! With fewer workers than CPUs nothing is pinned: the scheduler keeps them
//! off the CPUs the app is busy on, and two daemons on one host do not pile
//! onto the same first CPUs.

/// The CPU for each of `workers` workers, given the CPUs the process may
/// run on; `None` when workers are left to the scheduler.
pub(crate) fn plan(workers: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    (workers > 1 && workers == allowed.len()).then(|| allowed.to_vec())
}

/// The CPUs this process may run on (empty if that cannot be read).
#[cfg(target_os = "linux")]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pin the calling thread to `cpu`. A failure costs only the pinning.
#[cfg(target_os = "linux")]
pub(crate) fn pin_current_thread(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    let pinned = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(cpu, error = %e, "cannot pin a proxy worker to its CPU; it runs unpinned");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pin_current_thread(_cpu: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_pinned_only_when_there_is_one_per_allowed_cpu() {
        assert_eq!(plan(2, &[0, 1]), Some(vec![0, 1]));
        assert_eq!(plan(3, &[2, 5, 7]), Some(vec![2, 5, 7]));
        // One worker: the scheduler moves it to whichever CPU is free.
        assert_eq!(plan(1, &[0]), None);
        assert_eq!(plan(1, &[0, 1]), None);
        // Fewer or more workers than CPUs, or CPUs unknown.
        assert_eq!(plan(2, &[0, 1, 2, 3]), None);
        assert_eq!(plan(4, &[0, 1]), None);
        assert_eq!(plan(2, &[]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_allowed_cpus_are_read() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        assert!(allowed.windows(2).all(|w| w[0] < w[1]), "{allowed:?}");
    }
}
