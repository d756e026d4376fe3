//! The proxy's request-target checks and route matching: arbitrary routes
//! and an arbitrary request. Beyond never panicking:
//!
//! - a normalized path is normalized already (idempotent), has no `.` or
//!   `..` segment, no encoded `/` or `\`, and is no longer than the path;
//! - the request the proxy routes carries exactly that normalized path;
//! - a host taken from a request is a valid `uri-host[:port]`;
//! - `RouteTable::new` refuses exactly the tables it should, and `find`
//!   picks what a plain model of its documented rule picks (exact host,
//!   then wildcard with the longest suffix, then any host; within that the
//!   longest prefix, on a segment boundary; the earlier route on a tie),
//!   so a matched prefix is a prefix of the normalized path and a stripped
//!   path still starts with `/`.

#![no_main]

use arbitrary::Arbitrary;
use http::{Request, Version};
use libfuzzer_sys::fuzz_target;
use switchctl_proxy::fuzzing::{host, normalize_path, normalize_target, stripped, valid_host};
use switchctl_proxy::{HostPattern, Route, RouteError, RouteTable};

const SERVICES: usize = 4;

#[derive(Debug, Arbitrary)]
struct RouteInput {
    hosts: Vec<String>,
    prefix: String,
    /// `SERVICES` and above name a service the table does not have.
    service: u8,
    strip: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<RouteInput>,
    /// The request's host name and port, for the route table.
    host: Option<(String, Option<u16>)>,
    path: String,
    /// The request as it arrives: version, target, `Host` lines.
    version: u8,
    target: String,
    host_headers: Vec<String>,
}

fuzz_target!(|input: Input| {
    if input.routes.len() > 8 || input.host_headers.len() > 3 {
        return;
    }
    let normalized = check_normalize(&input.path);
    check_request(&input);
    if let Some(path) = normalized {
        check_routes(&input, &path);
    }
});

fn check_normalize(path: &str) -> Option<String> {
    let n = normalize_path(path)?.into_owned();
    assert_eq!(
        normalize_path(&n).as_deref(),
        Some(n.as_str()),
        "not idempotent: {path:?} -> {n:?}"
    );
    assert!(
        !n.split('/').any(|s| s == "." || s == ".."),
        "dot segment left: {path:?} -> {n:?}"
    );
    let upper = n.to_ascii_uppercase();
    assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{path:?} -> {n:?}");
    assert!(n.len() <= path.len(), "normalizing lengthened {path:?} to {n:?}");
    if path.starts_with('/') {
        assert!(n.starts_with('/'), "{path:?} -> {n:?}");
    }
    Some(n)
}

fn check_request(input: &Input) {
    let version = match input.version % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let mut builder = Request::builder().version(version).uri(input.target.as_str());
    for h in &input.host_headers {
        builder = builder.header(http::header::HOST, h.as_str());
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    if let Ok(Some(h)) = host(&req) {
        assert!(valid_host(h.as_bytes()), "host {h:?} routed from {req:?}");
    }
    let before = req.uri().path().to_string();
    if normalize_target(&mut req) {
        let expected = normalize_path(&before).expect("normalize_target accepted it");
        assert_eq!(
            req.uri().path(),
            expected,
            "routed by a path other than the normalized one"
        );
        assert_eq!(
            req.uri().query(),
            input
                .target
                .parse::<http::Uri>()
                .ok()
                .as_ref()
                .and_then(http::Uri::query),
            "the query is kept"
        );
    } else {
        assert!(normalize_path(&before).is_none());
    }
}

fn check_routes(input: &Input, path: &str) {
    let services: Vec<(String, Option<_>)> = (0..SERVICES).map(|i| (format!("s{i}"), None)).collect();
    let routes: Vec<Route> = input
        .routes
        .iter()
        .map(|r| Route {
            hosts: r.hosts.iter().filter_map(|h| HostPattern::parse(h).ok()).collect(),
            path_prefix: r.prefix.clone(),
            service: format!("s{}", r.service),
            strip_prefix: r.strip,
        })
        .collect();
    let refused = routes.iter().find_map(|r| {
        if !r.path_prefix.starts_with('/') {
            Some(RouteError::BadPrefix(r.path_prefix.clone()))
        } else if !services.iter().any(|(s, _)| *s == r.service) {
            Some(RouteError::UnknownService {
                prefix: r.path_prefix.clone(),
                service: r.service.clone(),
            })
        } else {
            None
        }
    });
    let table = match (RouteTable::new(services, routes.clone()), refused) {
        (Ok(t), None) => t,
        (Err(e), Some(expected)) => return assert_eq!(e, expected),
        (r, expected) => panic!("RouteTable::new gave {r:?}, the model {expected:?}"),
    };

    let host = input.host.as_ref().map(|(name, port)| match port {
        Some(p) => format!("{name}:{p}"),
        None => name.clone(),
    });
    let found = table.find(host.as_deref(), path);
    if let Some(m) = &found {
        if m.strip > 0 {
            assert!(path.is_char_boundary(m.strip), "strip {} of {path:?}", m.strip);
            let rest = &path.as_bytes()[m.strip..];
            assert!(
                rest.is_empty() || rest[0] == b'/' || rest[0] == b'?',
                "{path:?} cut at {}",
                m.strip
            );
            assert!(stripped(path, m.strip).starts_with('/'));
        }
    }
    // The model needs the bare name: leave out names that look like a port
    // or an IPv6 literal themselves.
    let name = match &input.host {
        Some((name, _)) if name.contains(':') || name.starts_with('[') => return,
        Some((name, _)) => Some(name.as_str()),
        None => None,
    };
    let expected = model(&routes, name, path);
    let got = found.map(|m| (m.service.name().to_string(), m.strip));
    assert_eq!(got, expected, "host {host:?} path {path:?} routes {routes:?}");
}

/// The documented rule, written plainly: every (route, host) pair that
/// matches, the best by (host class, prefix length), the earliest on a tie.
fn model(routes: &[Route], host: Option<&str>, path: &str) -> Option<(String, usize)> {
    // (host class, wildcard suffix length, prefix length) -> (service, strip)
    type Best = ((u8, usize, usize), (String, usize));
    let mut best: Option<Best> = None;
    for r in routes {
        let prefix = r.path_prefix.trim_end_matches('/');
        let on_boundary = path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
        if !on_boundary {
            continue;
        }
        let classes: Vec<(u8, usize)> = if r.hosts.is_empty() {
            vec![(0, 0)]
        } else {
            r.hosts
                .iter()
                .filter_map(|p| {
                    let h = host?.to_ascii_lowercase();
                    match p {
                        HostPattern::Exact(n) => (h == *n).then_some((2, 0)),
                        HostPattern::Suffix(s) => {
                            (h.len() > s.len() && h.ends_with(s.as_str())).then_some((1, s.len()))
                        }
                    }
                })
                .collect()
        };
        for (class, suffix) in classes {
            let key = (class, suffix, prefix.len());
            if best.as_ref().is_none_or(|(k, _)| key > *k) {
                let strip = if r.strip_prefix && !prefix.is_empty() {
                    prefix.len()
                } else {
                    0
                };
                best = Some((key, (r.service.clone(), strip)));
            }
        }
    }
    best.map(|(_, m)| m)
}
