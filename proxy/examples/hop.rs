//! The data plane alone, for profiling the upstream hop: one route to one
//! upstream, no controller, no config file. Used by `benches/hopcount.sh`
//! (instruction counts per request under callgrind).
//!
//!   hop LISTEN UPSTREAM [WORKERS]     e.g. hop 127.0.0.1:8080 127.0.0.1:9000 1
//!
//! Runs until stdin closes, then shuts down and drains.

use std::io::Read;
use std::net::SocketAddr;

use switchctl_proxy::{Proxy, ProxyConfig, RouteTable, Upstream};

/// The daemon's allocator (src/memory.rs), so that instruction counts are
/// those of the binary that ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: hop LISTEN UPSTREAM [WORKERS]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is host:port");
    let workers = args.get(2).map_or(1, |w| w.parse().expect("WORKERS is a number"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = ProxyConfig {
            workers,
            max_connections_per_ip: 0,
            max_connections: 100_000,
            ..ProxyConfig::default()
        };
        let proxy = Proxy::bind(
            config,
            &[listen],
            RouteTable::single("web", Some(Upstream::new(upstream))),
        )
        .expect("bind");
        eprintln!("hop: listening on {listen}, forwarding to {upstream}");
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .expect("stdin reader");
        proxy.shutdown();
        proxy.stopped().await;
    });
}
