//! What a request is for, as routes see it: its host, checked as RFC 9112
//! §3.2 requires, and its path, normalized so that `/api/../admin` or
//! `/%61dmin` cannot slip past a prefix route. Both cost nothing for the
//! usual request: no allocation unless the path has `%` or a dot segment.

use std::borrow::Cow;

use http::header;
use http::{Request, Uri, Version};

/// No `Host`, several, or one that is not a valid host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHost;

/// Replace the path of the request's target, keeping its query (and the
/// scheme and authority of an HTTP/2 or absolute-form target): the upstream
/// gets the path the route was chosen by.
pub(crate) fn set_path<B>(req: &mut Request<B>, mut path: String) {
    if let Some(query) = req.uri().query() {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = req.uri().clone().into_parts();
    match http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(path)) {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Normalize the request's path in place ([`normalize_path`]), keeping its
/// query: what routes are matched against and what the upstream gets.
pub(crate) fn normalize_target<B>(req: &mut Request<B>) -> Result<(), AmbiguousPath> {
    if let Cow::Owned(path) = normalize_path(req.uri().path())? {
        set_path(req, path);
    }
    Ok(())
}

/// The host a request is for, as RFC 9112 §3.2 wants it: an HTTP/1.1
/// request has exactly one `Host` (HTTP/1.0: at most one), and it is a valid
/// `uri-host[:port]`. When the target carries an authority (HTTP/2's
/// `:authority`, HTTP/1's absolute form), that authority is the host; an
/// HTTP/2 `Host` beside it must name the same. An HTTP/2 request with no host
/// at all is refused too, since the upstream hop is HTTP/1.1 and needs one;
/// HTTP/1.0 may go without (only any-host routes match it).
pub(crate) fn host<B>(req: &Request<B>) -> Result<Option<&str>, BadHost> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(BadHost),
        (Some(h), None) => Some(h.to_str().ok().filter(|h| valid_host(h.as_bytes())).ok_or(BadHost)?),
        (None, None) => None,
    };
    let version = req.version();
    match (req.uri().authority(), host) {
        // The authority is what routes see and what `Host` becomes upstream:
        // it passes the same check as a `Host` line (which refuses userinfo).
        (Some(authority), _) if !valid_host(authority.as_str().as_bytes()) => Err(BadHost),
        (Some(authority), Some(host))
            if version >= Version::HTTP_2 && !authority.as_str().eq_ignore_ascii_case(host) =>
        {
            Err(BadHost)
        }
        (_, None) if version == Version::HTTP_11 || version >= Version::HTTP_2 => match req.uri().authority() {
            Some(authority) if version >= Version::HTTP_2 => Ok(Some(authority.as_str())),
            _ => Err(BadHost),
        },
        (Some(authority), _) => Ok(Some(authority.as_str())),
        (None, host) => Ok(host),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2): an IP literal in brackets, or
/// a reg-name of unreserved, percent-encoded and sub-delim characters (an
/// IPv4 address is one of those), then an optional all-digit port.
pub(crate) fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.' || b == b'v' || b == b'V');
        if !ok {
            return false;
        }
        (&[][..], &rest[end + 1..])
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, &[][..]),
        }
    };
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                if !(i + 2 < name.len() && name[i + 1].is_ascii_hexdigit() && name[i + 2].is_ascii_hexdigit()) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    port_ok
}

/// A request path that cannot be compared with route prefixes safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AmbiguousPath;

/// The path as routes see it (RFC 3986 §6.2.2): percent-encoded unreserved
/// characters decoded, other escapes in upper case, `.` and `..` segments
/// removed. An encoded `/` or `\` or a broken escape is refused: an upstream
/// could read it as a separator a prefix route never saw. Borrowed, and
/// free, for the usual path that has no `%` and no dot segment.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, AmbiguousPath> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !has_dot_segment(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Up to the next escape, as it is: `%` is ASCII, so the run
            // ends on a character boundary.
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            decoded.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(AmbiguousPath);
        };
        let byte = (hi * 16 + lo) as u8;
        match byte {
            b'/' | b'\\' => return Err(AmbiguousPath),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => decoded.push(b as char),
            _ => {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
        }
        i += 3;
    }
    if !has_dot_segment(decoded.as_bytes()) {
        return Ok(Cow::Owned(decoded));
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Does the path have a `.` or `..` segment?
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|seg| seg == b"." || seg == b"..")
}

/// RFC 3986 §5.2.4 for a path whose segments are separated by `/`: `..`
/// never climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path.split('/').peekable();
    if absolute {
        segments.next();
    }
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    if !absolute {
        result.remove(0);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, BadHost> {
        let mut req = Request::builder().version(version).uri(uri);
        for h in hosts {
            req = req.header(header::HOST, *h);
        }
        let req = req.body(()).unwrap();
        host(&req).map(|h| h.map(str::to_string))
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            host_of(v11, "/", &["a.example:8080"]),
            Ok(Some("a.example:8080".into()))
        );
        assert_eq!(host_of(v11, "/", &["[::1]:80"]), Ok(Some("[::1]:80".into())));
        assert_eq!(host_of(v11, "/", &[]), Err(BadHost));
        assert_eq!(host_of(v11, "/", &["a.example", "b.example"]), Err(BadHost));
        for bad in ["a b", "a/b", "user@a", "a:80x", "[::1", "[zz]", "a%zz", "a\\b"] {
            assert_eq!(host_of(v11, "/", &[bad]), Err(BadHost), "{bad:?}");
        }
        // Absolute form: the target's authority wins, a Host is still required.
        assert_eq!(
            host_of(v11, "http://b.example/x", &["a.example"]),
            Ok(Some("b.example".into()))
        );
        assert_eq!(host_of(v11, "http://b.example/x", &[]), Err(BadHost));
    }

    #[test]
    fn http10_may_omit_host_and_http2_uses_authority_consistently() {
        assert_eq!(host_of(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(host_of(Version::HTTP_10, "/", &["a", "b"]), Err(BadHost));
        let v2 = Version::HTTP_2;
        assert_eq!(host_of(v2, "http://a.example/", &[]), Ok(Some("a.example".into())));
        assert_eq!(host_of(v2, "/", &["a.example"]), Ok(Some("a.example".into())));
        assert_eq!(
            host_of(v2, "http://a.example/", &["A.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(host_of(v2, "http://a.example/", &["b.example"]), Err(BadHost));
        assert_eq!(host_of(v2, "/", &[]), Err(BadHost));
    }

    #[test]
    fn an_authority_that_is_not_a_valid_host_is_refused() {
        // Found by the `routes` fuzz target: the target's authority was
        // routed by (and sent upstream as `Host`) without the checks a
        // `Host` line gets.
        for (version, uri) in [
            (Version::HTTP_2, ":."),
            (Version::HTTP_2, "http://a.example:x/"),
            (Version::HTTP_11, "http://a.example:x/"),
            (Version::HTTP_2, "http://[::1]x/"),
        ] {
            let hosts: &[&str] = if version == Version::HTTP_2 {
                &[]
            } else {
                &["a.example"]
            };
            assert_eq!(host_of(version, uri, hosts), Err(BadHost), "{version:?} {uri:?}");
        }
        assert_eq!(
            host_of(Version::HTTP_2, "http://[::1]:8080/", &[]),
            Ok(Some("[::1]:8080".into()))
        );
    }

    #[test]
    fn characters_beyond_ascii_pass_through_unchanged() {
        // Found by the `routes` fuzz target: each byte of a UTF-8 character
        // was pushed as a char of its own (`é` became `Ã©`) whenever the
        // path had an escape or a dot segment, so the upstream got another
        // path than the client sent.
        let n = |p| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/caf\u{e9}/%61"), Ok("/caf\u{e9}/a".into()));
        assert_eq!(n("/\u{e9}/../caf\u{e9}"), Ok("/caf\u{e9}".into()));
        assert_eq!(n("/\u{4e1e}/./x%01"), Ok("/\u{4e1e}/x%01".into()));
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let n = |p| normalize_path(p).map(|c| c.into_owned());
        assert!(matches!(normalize_path("/api/users?x=1"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/a.b/.well-known/x..y"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/api/../admin"), Ok("/admin".into()));
        assert_eq!(n("/%61dmin"), Ok("/admin".into()));
        assert_eq!(n("/api/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/a/./b/"), Ok("/a/b/".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/../../etc"), Ok("/etc".into()));
        assert_eq!(n("/.."), Ok("/".into()));
        assert_eq!(n("/a%3fb%c3%a9"), Ok("/a%3Fb%C3%A9".into()));
        assert_eq!(n("/api%2F..%2Fadmin"), Err(AmbiguousPath));
        assert_eq!(n("/a%5cb"), Err(AmbiguousPath));
        assert_eq!(n("/a%2"), Err(AmbiguousPath));
        assert_eq!(n("/a%zz"), Err(AmbiguousPath));
    }
}
