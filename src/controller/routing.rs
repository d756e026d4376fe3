//! The link between releases and the proxy: the route table that sends
//! every service to one release, and the set of upstreams whose in-flight
//! counts the drain and `status` read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchctl_proxy::{Route, RouteTable, Upstream};

use crate::config::Config;
use crate::release::Release;

/// Upstreams by address, so every route table that names an address shares
/// one in-flight count.
#[derive(Debug, Default)]
pub struct UpstreamSet {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
}

impl UpstreamSet {
    /// The upstream at `addr`, created on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        self.by_addr
            .lock()
            .expect("upstream set lock")
            .entry(addr)
            .or_insert_with(|| Upstream::new(addr))
            .clone()
    }

    /// The upstream at `addr`, if it exists (never creates one).
    pub fn peek(&self, addr: SocketAddr) -> Option<Arc<Upstream>> {
        self.by_addr.lock().expect("upstream set lock").get(&addr).cloned()
    }

    /// Requests and tunnels in flight to `addr` (0 if it never took traffic).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.by_addr
            .lock()
            .expect("upstream set lock")
            .get(&addr)
            .map_or(0, |u| u.in_flight())
    }

    /// Forget a stopped upstream.
    pub fn remove(&self, addr: SocketAddr) {
        self.by_addr.lock().expect("upstream set lock").remove(&addr);
    }
}

/// The route table that sends every configured service to `release`
/// (services it lacks answer 503).
pub fn route_table(config: &Config, release: Option<&Release>, upstreams: &UpstreamSet) -> RouteTable {
    let services = config
        .services
        .iter()
        .map(|s| {
            let up = release
                .and_then(|r| r.services.get(&s.name))
                .map(|rec| upstreams.get(rec.addr));
            (s.name.clone(), up)
        })
        .collect();
    let routes = config
        .services
        .iter()
        .flat_map(|s| s.routes().into_iter().map(move |r| (s, r)))
        .map(|(s, r)| Route {
            hosts: r
                .hosts
                .iter()
                .filter_map(|h| switchctl_proxy::HostPattern::parse(h).ok())
                .collect(),
            path_prefix: r.path_prefix.clone(),
            service: s.name.clone(),
            strip_prefix: r.strip_prefix,
        })
        .collect();
    // The config was validated, so the table is valid; an empty table (all
    // 404) is the safe fallback should that ever not hold.
    RouteTable::new(services, routes).unwrap_or_default()
}
