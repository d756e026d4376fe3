//! Workers and CPUs: with one worker per CPU the process may use, each
//! worker thread is pinned to a CPU of its own; with one worker, none is.
//! Alone in its test binary: it reads the affinity of every `proxy-N`
//! thread of the process.

use std::collections::BTreeSet;
use std::time::Duration;

use switchctl_proxy::{Proxy, ProxyConfig, RouteTable};

/// A `Cpus_allowed_list` ("0-1", "0,2,5-7") as CPU numbers.
fn cpu_list(list: &str) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => {
                cpus.insert(part.parse().unwrap());
            }
        }
    }
    cpus
}

fn allowed(status: &str) -> BTreeSet<usize> {
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    cpu_list(&line["Cpus_allowed_list:".len()..])
}

/// The CPUs each `proxy-N` thread of this process may run on, by N.
fn worker_cpus() -> Vec<(String, BTreeSet<usize>)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if name.starts_with("proxy-") {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            found.push((name, allowed(&status)));
        }
    }
    found.sort();
    found
}

async fn run(workers: usize) -> Vec<(String, BTreeSet<usize>)> {
    let config = ProxyConfig {
        workers,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::bind(config, &["127.0.0.1:0".parse().unwrap()], RouteTable::default()).unwrap();
    // The workers pin themselves as they start.
    let mut seen = worker_cpus();
    for _ in 0..100 {
        if seen.len() == workers && seen.iter().all(|(_, cpus)| !cpus.is_empty()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = worker_cpus();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = worker_cpus();
    }
    proxy.shutdown();
    proxy.stopped().await;
    seen
}

#[tokio::test]
async fn one_worker_per_cpu_pins_each_to_its_own_and_one_worker_is_left_free() {
    let process = allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    if process.len() < 2 {
        eprintln!("skipped: this process may run on one CPU only ({process:?}), so nothing is ever pinned");
        return;
    }
    let pinned = run(process.len()).await;
    assert_eq!(pinned.len(), process.len(), "{pinned:?}");
    let mut used = BTreeSet::new();
    for (name, cpus) in &pinned {
        assert_eq!(cpus.len(), 1, "{name} is not pinned to one CPU: {cpus:?}");
        assert!(cpus.is_subset(&process), "{name} runs outside the process's CPUs");
        used.extend(cpus);
    }
    assert_eq!(used, process, "two workers share a CPU: {pinned:?}");

    // Once those workers are gone, a single worker keeps every CPU.
    let free = run(1).await;
    assert_eq!(free, vec![("proxy-0".to_string(), process)]);
}
