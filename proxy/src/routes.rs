//! The `RouteTable`: which service a request belongs to, and which upstream
//! each service currently points at.
//!
//! A table is immutable. The proxy holds the current one in an `ArcSwap`;
//! every request does exactly one `load()`, and a flip is one `store()` of a
//! new table, so all services switch together and no request ever sees half
//! a table.

use std::sync::Arc;

use crate::upstream::Upstream;

/// Matches the `Host` of a request (port and case ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not the apex).
    Suffix(String),
}

impl HostPattern {
    /// Parse `name` or `*.name`.
    pub fn parse(pattern: &str) -> Result<Self, RouteError> {
        let p = pattern.trim().to_ascii_lowercase();
        let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if let Some(rest) = p.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if valid(&p) {
            return Ok(HostPattern::Exact(p));
        }
        Err(RouteError::BadHost(pattern.to_string()))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// How specific a match on this pattern is: exact names first, then
    /// wildcards, the longer suffix first.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (2, 0),
            HostPattern::Suffix(suffix) => (1, suffix.len()),
        }
    }
}

/// One routing rule: requests for `hosts` (any host when empty) under
/// `path_prefix` go to `service`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Host patterns; empty means every host.
    pub hosts: Vec<HostPattern>,
    /// Path prefix, matched on segment boundaries: `/api` matches `/api` and
    /// `/api/x` but not `/apix`.
    pub path_prefix: String,
    /// Name of the service the route sends to.
    pub service: String,
    /// Remove `path_prefix` from the path before the request goes upstream
    /// (`/api/users` → `/users`; `/api` → `/`), as Traefik's stripprefix.
    pub strip_prefix: bool,
}

/// A service as the data plane sees it: a name and where it points now.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    upstream: Option<Arc<Upstream>>,
}

impl Service {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The upstream of the active color, if any.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }
}

/// One (host pattern, prefix) pair of a route; `host: None` is any host.
#[derive(Debug)]
struct CompiledRoute {
    host: Option<HostPattern>,
    prefix: String,
    service: usize,
    strip: bool,
}

/// An immutable routing snapshot: routes in match order plus services.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    services: Vec<Service>,
}

/// A route table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// A host pattern is not a DNS name or `*.name`.
    #[error("invalid host pattern {0:?}: use a name like \"api.example.com\" or \"*.example.com\"")]
    BadHost(String),
    /// A path prefix does not start with `/`.
    #[error("invalid path prefix {0:?}: it must start with \"/\"")]
    BadPrefix(String),
    /// A route names a service the table does not have.
    #[error("route for {prefix:?} names unknown service {service:?}")]
    UnknownService {
        /// the route's prefix
        prefix: String,
        /// the missing service
        service: String,
    },
    /// Two services share a name.
    #[error("service {0:?} is defined twice")]
    DuplicateService(String),
}

impl RouteTable {
    /// Build a table. `services` lists every service with its current
    /// upstream (or `None`: requests get 503). Routes may come in any order:
    /// the host decides first (an exact name, then a wildcard, the longest
    /// suffix first, then routes for any host), then the longest path prefix
    /// among the routes of that host class; a request no route of its host
    /// class takes falls through to the next class.
    pub fn new(services: Vec<(String, Option<Arc<Upstream>>)>, routes: Vec<Route>) -> Result<Self, RouteError> {
        let mut svc: Vec<Service> = Vec::with_capacity(services.len());
        for (name, upstream) in services {
            if svc.iter().any(|s| s.name == name) {
                return Err(RouteError::DuplicateService(name));
            }
            svc.push(Service { name, upstream });
        }
        let mut compiled = Vec::with_capacity(routes.len());
        for route in routes {
            if !route.path_prefix.starts_with('/') {
                return Err(RouteError::BadPrefix(route.path_prefix));
            }
            let service =
                svc.iter()
                    .position(|s| s.name == route.service)
                    .ok_or_else(|| RouteError::UnknownService {
                        prefix: route.path_prefix.clone(),
                        service: route.service.clone(),
                    })?;
            let prefix = route.path_prefix.trim_end_matches('/').to_string();
            let strip = route.strip_prefix && !prefix.is_empty();
            if route.hosts.is_empty() {
                compiled.push(CompiledRoute {
                    host: None,
                    prefix,
                    service,
                    strip,
                });
            } else {
                for host in route.hosts {
                    compiled.push(CompiledRoute {
                        host: Some(host),
                        prefix: prefix.clone(),
                        service,
                        strip,
                    });
                }
            }
        }
        // A stable sort: among equals, the order given decides.
        let rank = |r: &CompiledRoute| r.host.as_ref().map_or((0, 0), HostPattern::rank);
        compiled.sort_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| b.prefix.len().cmp(&a.prefix.len())));
        Ok(RouteTable {
            routes: compiled,
            services: svc,
        })
    }

    /// A table with one service that takes every request.
    pub fn single(name: &str, upstream: Option<Arc<Upstream>>) -> Self {
        RouteTable::new(
            vec![(name.to_string(), upstream)],
            vec![Route {
                hosts: Vec::new(),
                path_prefix: "/".into(),
                service: name.to_string(),
                strip_prefix: false,
            }],
        )
        .expect("a single catch-all route is always valid")
    }

    /// The services, in the order given.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The service a request for `host` (may carry a port) and `path` goes to.
    /// `path` is compared as given: the proxy normalizes it first
    /// (`normalize_path`): dot segments removed, unreserved escapes decoded.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Service> {
        self.find(host, path).map(|m| m.service)
    }

    /// As [`RouteTable::lookup`], with how many leading bytes of `path` the
    /// matched route strips before the request goes upstream (0: none).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<RouteMatch<'_>> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| {
                prefix_matches(&r.prefix, path) && r.host.as_ref().is_none_or(|p| host.is_some_and(|h| p.matches(h)))
            })
            .map(|r| RouteMatch {
                service: &self.services[r.service],
                strip: if r.strip { r.prefix.len() } else { 0 },
            })
    }
}

/// The route a request takes.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// Where it goes.
    pub service: &'a Service,
    /// Leading bytes of the path to remove before forwarding.
    pub strip: usize,
}

/// `path` without its first `strip` bytes (a matched prefix), still
/// starting with `/`.
pub(crate) fn stripped(path: &str, strip: usize) -> String {
    let rest = path.get(strip..).unwrap_or("");
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `prefix` has no trailing slash ("" is the root).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(port: u16) -> Option<Arc<Upstream>> {
        Some(Upstream::new(([127, 0, 0, 1], port).into()))
    }

    #[test]
    fn a_stripping_route_reports_its_prefix_length() {
        let mut r = route(&[], "/api/", "api");
        r.strip_prefix = true;
        let t = RouteTable::new(
            vec![("api".into(), None), ("web".into(), None)],
            vec![r, route(&[], "/", "web")],
        )
        .unwrap();
        let m = t.find(Some("x"), "/api/users").unwrap();
        assert_eq!((m.service.name(), m.strip), ("api", 4));
        assert_eq!(stripped("/api/users", m.strip), "/users");
        assert_eq!(stripped("/api", 4), "/");
        assert_eq!(t.find(Some("x"), "/apiary").unwrap().strip, 0);
        assert_eq!(t.find(Some("x"), "/other").unwrap().service.name(), "web");
    }

    fn route(hosts: &[&str], prefix: &str, service: &str) -> Route {
        Route {
            hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
            path_prefix: prefix.into(),
            service: service.into(),
            strip_prefix: false,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            vec![
                ("web".into(), up(1)),
                ("api".into(), up(2)),
                ("admin".into(), up(3)),
                ("tenant".into(), None),
            ],
            vec![
                route(&[], "/", "web"),
                route(&[], "/api", "api"),
                route(&["admin.example.com"], "/", "admin"),
                route(&["*.example.com"], "/", "tenant"),
            ],
        )
        .unwrap()
    }

    fn name<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|s| s.name())
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(name(&t, Some("x.org"), "/api/users"), Some("api"));
        assert_eq!(name(&t, Some("x.org"), "/api"), Some("api"));
        assert_eq!(name(&t, Some("x.org"), "/apiary"), Some("web"));
        assert_eq!(name(&t, None, "/"), Some("web"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table();
        assert_eq!(name(&t, Some("admin.example.com"), "/"), Some("admin"));
        assert_eq!(name(&t, Some("ADMIN.example.com:8080"), "/x"), Some("admin"));
        assert_eq!(name(&t, Some("a.example.com"), "/"), Some("tenant"));
        assert_eq!(name(&t, Some("example.com"), "/"), Some("web"));
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let t = RouteTable::new(
            vec![("api".into(), up(1))],
            vec![route(&["api.example.com"], "/", "api")],
        )
        .unwrap();
        assert!(t.lookup(Some("other.example.com"), "/").is_none());
        assert!(t.lookup(None, "/").is_none());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(matches!(HostPattern::parse("a b"), Err(RouteError::BadHost(_))));
        assert!(matches!(HostPattern::parse("*."), Err(RouteError::BadHost(_))));
        let err = RouteTable::new(vec![], vec![route(&[], "/", "ghost")]).unwrap_err();
        assert!(matches!(err, RouteError::UnknownService { .. }));
        let err = RouteTable::new(vec![("a".into(), None)], vec![route(&[], "x", "a")]).unwrap_err();
        assert!(matches!(err, RouteError::BadPrefix(_)));
    }

    #[test]
    fn ports_and_ipv6_hosts_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.com"), "a.com");
    }

    #[test]
    fn the_host_decides_before_the_prefix() {
        let t = RouteTable::new(
            vec![("web".into(), up(1)), ("api".into(), up(2)), ("shop".into(), up(3))],
            vec![
                route(&[], "/api/v1/long/prefix", "api"),
                route(&["*.example.com"], "/api", "web"),
                route(&["shop.example.com"], "/", "shop"),
                route(&[], "/static", "api"),
            ],
        )
        .unwrap();
        assert_eq!(
            name(&t, Some("shop.example.com"), "/api/v1/long/prefix/x"),
            Some("shop")
        );
        assert_eq!(name(&t, Some("a.example.com"), "/api/v1/long/prefix/x"), Some("web"));
        // Nothing of the wildcard's class takes it: the next class does.
        assert_eq!(name(&t, Some("a.example.com"), "/static/app.js"), Some("api"));
        assert_eq!(name(&t, Some("a.example.com"), "/other"), None);
        assert_eq!(name(&t, Some("other.org"), "/api/v1/long/prefix"), Some("api"));
    }

    #[test]
    fn the_longer_wildcard_is_the_more_specific() {
        let t = RouteTable::new(
            vec![("web".into(), up(1)), ("eu".into(), up(2))],
            vec![
                route(&["*.example.com"], "/", "web"),
                route(&["*.eu.example.com"], "/", "eu"),
            ],
        )
        .unwrap();
        assert_eq!(name(&t, Some("a.eu.example.com"), "/"), Some("eu"));
        assert_eq!(name(&t, Some("a.example.com"), "/"), Some("web"));
    }
}
