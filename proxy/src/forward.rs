//! One proxied request, as four named phases:
//!
//! 1. [`Forwarder::route`]: one `ArcSwap` load of the route table, find the
//!    service and the upstream of its active color (404 / 503 otherwise).
//! 2. [`prepare_request`]: origin-form URI, `X-Forwarded-*`, hop-by-hop
//!    headers removed (kept for an upgrade handshake).
//! 3. [`Forwarder::send`]: a pooled keep-alive connection, or a new one;
//!    connect and response timeouts map to 502 / 504.
//! 4. [`Forwarder::respond`]: hop-by-hop headers removed, the body streamed
//!    back; a `101 Switching Protocols` becomes a two-way tunnel.
//!
//! Nothing here logs per request, locks, or allocates what it can avoid.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::pool::{self, ConnectError};
use crate::routes::RouteTable;
use crate::upstream::{InFlight, Upstream};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// What the data plane shares across connections: the table and timeouts.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) table: Arc<ArcSwap<RouteTable>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// Set when plain connections answer with a redirect to https.
    pub(crate) https_redirect: Option<crate::tls::HttpsRedirect>,
}

/// Per client connection: who the client is, and what the worker's sweeper
/// needs to close it (a request counter, a close request, a waker).
#[derive(Debug)]
pub(crate) struct ClientConn {
    forwarder: Arc<Forwarder>,
    client_ip: HeaderValue,
    proto: HeaderValue,
    tls: bool,
    requests: AtomicU64,
    close: AtomicU8,
    waker: AtomicWaker,
}

/// How a connection should close, in increasing urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Close {
    /// Keep serving.
    No = 0,
    /// Keep serving, but answer each HTTP/1 request with `Connection: close`,
    /// so the client learns the connection ends from a response instead of
    /// racing a close with its next request.
    Drain = 1,
    /// Finish the requests in flight, then close (HTTP/2: GOAWAY).
    Graceful = 2,
    /// Drop it now.
    Now = 3,
}

impl ClientConn {
    pub(crate) fn new(forwarder: Arc<Forwarder>, peer: SocketAddr, tls: bool) -> Self {
        let client_ip =
            HeaderValue::try_from(peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientConn {
            forwarder,
            client_ip,
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            tls,
            requests: AtomicU64::new(0),
            close: AtomicU8::new(Close::No as u8),
            waker: AtomicWaker::new(),
        }
    }

    /// Ask the connection's task to close it, and wake that task.
    pub(crate) fn close(&self, how: Close) {
        self.close.fetch_max(how as u8, Ordering::Relaxed);
        self.waker.wake();
    }

    /// What [`ClientConn::close`] asked for so far.
    pub(crate) fn close_requested(&self) -> Close {
        match self.close.load(Ordering::Relaxed) {
            0 => Close::No,
            1 => Close::Drain,
            2 => Close::Graceful,
            _ => Close::Now,
        }
    }

    /// The waker of the task serving this connection.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Requests started on this connection so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Proxy one request. Never fails: every problem becomes a response.
    pub(crate) async fn serve(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fwd = &*self.forwarder;
        if let (false, Some(redirect)) = (self.tls, &fwd.https_redirect) {
            if let Some(resp) = redirect.response(&req) {
                return resp;
            }
        }
        let upstream = match fwd.route(&req) {
            Ok(upstream) => upstream,
            Err(failure) => return failure.response(),
        };
        let in_flight = upstream.enter();
        let http1 = req.version() <= Version::HTTP_11;
        let client_upgrade = prepare_request(&mut req, self);
        let addr = in_flight.upstream().addr();
        let mut resp = match fwd.send(addr, req).await {
            Ok((resp, conn)) => respond(resp, conn, addr, in_flight, client_upgrade),
            Err(failure) => failure.response(),
        };
        if http1 && self.close_requested() == Close::Drain {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Why a request got the proxy's own answer instead of an upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    NoRoute,
    NoActiveRelease,
    Refused,
    Broken,
    ConnectTimeout,
    ResponseTimeout,
}

impl Failure {
    fn response(self) -> Response<ProxyBody> {
        let (status, msg) = match self {
            Failure::NoRoute => (StatusCode::NOT_FOUND, "no route for this host and path\n"),
            Failure::NoActiveRelease => (StatusCode::SERVICE_UNAVAILABLE, "no active release\n"),
            Failure::Refused => (StatusCode::BAD_GATEWAY, "upstream refused the connection\n"),
            Failure::Broken => (StatusCode::BAD_GATEWAY, "upstream closed the connection\n"),
            Failure::ConnectTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream did not accept the connection in time\n",
            ),
            Failure::ResponseTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream did not answer in time\n"),
        };
        let mut resp = Response::new(ProxyBody::text(msg));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

impl Forwarder {
    /// Phase 1: the upstream of the service this request routes to.
    fn route(&self, req: &Request<Incoming>) -> Result<Arc<Upstream>, Failure> {
        let table = self.table.load();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let service = table.lookup(host, req.uri().path()).ok_or(Failure::NoRoute)?;
        service.upstream().cloned().ok_or(Failure::NoActiveRelease)
    }

    /// Phase 3: send on a pooled connection, or a new one. A request that a
    /// pooled connection never started to send (it was closed under us) is
    /// retried once on a fresh connection.
    async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, pool::Conn), Failure> {
        loop {
            let (mut conn, fresh) = match pool::take_idle(addr).await {
                Some(conn) => (conn, false),
                None => match pool::connect(addr, self.connect_timeout).await {
                    Ok(conn) => (conn, true),
                    Err(ConnectError::TimedOut) => return Err(Failure::ConnectTimeout),
                    Err(ConnectError::Failed) => return Err(Failure::Refused),
                },
            };
            match tokio::time::timeout(self.response_timeout, conn.try_send_request(req)).await {
                Err(_) => return Err(Failure::ResponseTimeout),
                Ok(Ok(resp)) => return Ok((resp, conn)),
                Ok(Err(mut err)) => match err.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(Failure::Broken),
                },
            }
        }
    }
}

/// Phase 2: make the request fit for the upstream hop. Returns the client's
/// pending upgrade when the request asks for one.
fn prepare_request(req: &mut Request<Incoming>, conn: &ClientConn) -> Option<hyper::upgrade::OnUpgrade> {
    let present = hop_by_hop_present(req.headers());
    let upgrade = is_upgrade(req.headers(), present);
    // HTTP/2 requests (and absolute-form HTTP/1) carry scheme and authority;
    // the upstream hop wants origin-form and a Host header.
    if let Some(authority) = req.uri().authority() {
        if !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, present, upgrade);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        None => conn.client_ip.clone(),
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + conn.client_ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(conn.client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| conn.client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    upgrade.then(|| hyper::upgrade::on(req))
}

/// Phase 4: hand the upstream's answer to the client.
fn respond(
    mut resp: Response<Incoming>,
    conn: pool::Conn,
    addr: SocketAddr,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let cut = in_flight.upstream().cut_token();
            tokio::spawn(tunnel(client, upstream_side, cut, in_flight));
            return resp.map(|_| ProxyBody::text(""));
        }
    }
    let present = hop_by_hop_present(resp.headers());
    strip_hop_by_hop(resp.headers_mut(), present, false);
    // The connection is reusable once this body ends (an upgraded one never is).
    resp.map(|body| ProxyBody::upstream(body, Some((addr, conn)), in_flight))
}

/// Copy bytes both ways between client and upstream until either side
/// closes, or a drain of the upstream times out and cuts the tunnel.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    cut: tokio_util::sync::CancellationToken,
    _in_flight: InFlight,
) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.cancelled() => {}
    }
}

/// Does the request ask for a protocol upgrade? `present` as for [`strip_hop_by_hop`].
fn is_upgrade(headers: &HeaderMap, present: u16) -> bool {
    const CONNECTION_AND_UPGRADE: u16 = 1 | 1 << (HOP_BY_HOP.len() - 1);
    present & CONNECTION_AND_UPGRADE == CONNECTION_AND_UPGRADE
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Which of [`HOP_BY_HOP`] a message carries, as a bit mask. One pass over
/// the (few) headers, so the usual message costs no hash lookup.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    present
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
/// For an upgrade handshake, `Connection: upgrade` and `Upgrade` stay.
/// `present` is [`hop_by_hop_present`] of `headers`.
fn strip_hop_by_hop(headers: &mut HeaderMap, mut present: u16, keep_upgrade: bool) {
    if present & 1 != 0 {
        // Only a `Connection` header naming other headers allocates.
        let mut named = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let standard = ["close", "keep-alive", "upgrade"]
                    .iter()
                    .any(|k| token.eq_ignore_ascii_case(k));
                if !standard {
                    if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                        named.push(name);
                    }
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        present &= !(1 << (HOP_BY_HOP.len() - 1));
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let present = hop_by_hop_present(&h);
        strip_hop_by_hop(&mut h, present, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_handshake_keeps_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let present = hop_by_hop_present(&h);
        assert!(is_upgrade(&h, present));
        strip_hop_by_hop(&mut h, present, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }
}
