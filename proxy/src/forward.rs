//! One proxied request, as four named phases:
//!
//! 1. [`Forwarder::route`]: the target checked and normalized (`target`:
//!    400 for a bad `Host` or an ambiguous path), one `ArcSwap` load of the
//!    route table, the service and the upstream of its active color (404 /
//!    503 otherwise), counted in flight before any drain can miss it.
//! 2. [`prepare_request`]: origin-form URI, `X-Forwarded-*`, hop-by-hop
//!    headers removed (kept for an upgrade handshake; `TE: trailers` kept).
//! 3. [`Forwarder::send`]: a pooled keep-alive connection, or a new one,
//!    driven by this request's task (`client`); connect and response
//!    timeouts map to 502 / 504, a failed client body to 400 / 408; a
//!    bodiless idempotent request lost on a reused connection is sent once
//!    more on a fresh one.
//! 4. [`respond`]: hop-by-hop headers removed, the body streamed back; a
//!    `101 Switching Protocols` becomes a two-way tunnel the worker tracks.
//!
//! Each answer of a routed request is counted in its upstream's
//! [`Stats`](crate::stats::Stats) (status class, time to the response head).
//! Nothing here logs per request, locks, or allocates what it can avoid.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{ProxyBody, RequestBody, Upload, UploadLimits};
use crate::client::{self, Exchange};
use crate::listener::Slots;
use crate::park::Activity;
use crate::pool::{self, ConnectError};
use crate::routes::RouteTable;
use crate::stats::UpstreamError;
use crate::upstream::InFlight;
use crate::{target, tunnel};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1,
/// and `HTTP2-Settings` of the h2c upgrade, which is never forwarded).
/// `Trailer` is not one of them: it announces the trailers that pass.
/// `Connection` comes first and `Upgrade` last (see [`is_upgrade`]).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &HTTP2_SETTINGS,
    &header::UPGRADE,
];
/// The bit of `TE` in a [`hop_by_hop_present`] mask.
const TE_BIT: u16 = 1 << 5;

/// What the data plane shares across connections: the table and timeouts.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) table: ArcSwap<RouteTable>,
    /// Incremented after every store into `table`.
    pub(crate) generation: AtomicU64,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) upstream_idle_timeout: Duration,
    /// How slowly a client may send a request body.
    pub(crate) upload_limits: UploadLimits,
    /// Set when plain connections answer with a redirect to https.
    pub(crate) https_redirect: Option<crate::tls::HttpsRedirect>,
    /// Peers whose `X-Forwarded-*` headers are kept.
    pub(crate) trusted_proxies: Vec<crate::Cidr>,
    /// Where ACME HTTP-01 answers are looked up (with TLS on).
    pub(crate) acme_http: Option<crate::CertStore>,
    /// Client connections parked now, across workers ([`crate::park`]).
    pub(crate) parked: AtomicUsize,
}

/// Where a worker keeps the tunnels of upgraded connections: they outlive
/// the hyper connection that answered `101`, so the worker tracks them itself
/// to let them live through the drain, and closes them when it ends.
#[derive(Debug, Clone)]
pub(crate) struct Tunnels {
    /// The worker's task tracker: the drain waits for it to empty.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the drain timeout has passed: every tunnel closes.
    pub(crate) close: CancellationToken,
}

/// Per client connection: who the client is, and what the worker's sweeper
/// needs to close it (a request counter, a close request, a waker).
#[derive(Debug)]
pub(crate) struct ClientConn {
    forwarder: Arc<Forwarder>,
    tunnels: Tunnels,
    /// The connection's slots (`max_connections`, per client address): a
    /// tunnel this connection becomes takes them, so it counts as well.
    slots: std::sync::Mutex<Option<Slots>>,
    client_ip: HeaderValue,
    tls: bool,
    /// The peer is a trusted proxy: its `X-Forwarded-*` are kept.
    trusted: bool,
    /// Requests started and ended, and whether to park: shared with the
    /// connection's stream ([`crate::park`]).
    activity: Arc<Activity>,
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

impl AsRef<Activity> for ClientConn {
    fn as_ref(&self) -> &Activity {
        &self.activity
    }
}

impl ClientConn {
    pub(crate) fn new(forwarder: Arc<Forwarder>, tunnels: Tunnels, slots: Slots, peer: SocketAddr, tls: bool) -> Self {
        let client_ip =
            HeaderValue::try_from(peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let trusted = forwarder.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
        ClientConn {
            forwarder,
            tunnels,
            slots: std::sync::Mutex::new(Some(slots)),
            client_ip,
            tls,
            trusted,
            activity: Arc::default(),
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
        self.activity.requests()
    }

    /// A request has arrived (called as hyper hands it over, before its
    /// answer is first polled): it counts, and the connection is busy again.
    pub(crate) fn request_started(&self) {
        self.activity.request_started();
    }

    /// The connection becomes a tunnel (its `101` is on the way): its
    /// stream never parks.
    fn upgraded(&self) {
        self.activity.upgraded();
    }

    /// What the connection's stream needs to know to park it.
    pub(crate) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The sweeper saw no request start for a while: park the connection
    /// when it next waits between requests. Wakes its task the first time.
    pub(crate) fn request_park(&self) {
        if self.activity.ask_park() {
            self.waker.wake();
        }
    }

    /// The connection parked (`true`: hyper is gone and its socket waits
    /// for the client) or is no longer parked (serving again, or closed).
    /// Counted in [`crate::Proxy::parked_connections`].
    pub(crate) fn set_parked(&self, parked: bool) {
        if self.activity.set_parked(parked) {
            if parked {
                self.forwarder.parked.fetch_add(1, Ordering::Relaxed);
            } else {
                self.forwarder.parked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// See [`Activity::awaiting_request`]: never true of HTTP/2.
    pub(crate) fn awaiting_request(&self) -> bool {
        self.activity.awaiting_request()
    }

    /// Run `task` as one of this worker's connection tasks (the drain waits
    /// for them): a parked connection, or the one serving it again.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tunnels.tracker.spawn(task);
    }

    /// Answer one request. Never fails: every problem becomes a response.
    /// While the connection drains, every HTTP/1 answer (a redirect or an
    /// ACME answer as much as a proxied one) says `Connection: close`.
    pub(crate) async fn serve(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let http1 = req.version() <= Version::HTTP_11;
        let mut resp = self.answer(req).await;
        // A `101` hands the connection over to the tunnel: `Connection: close`
        // would replace its `Connection: upgrade` and break the handshake.
        if http1 && self.close_requested() == Close::Drain && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Proxy one request, or answer it from here (ACME, https redirect).
    async fn answer(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let fwd = &*self.forwarder;
        if let Some(answer) = fwd.acme_http.as_ref().and_then(|c| c.http_challenge_response(&req)) {
            return answer;
        }
        if let (false, Some(redirect)) = (self.tls, &fwd.https_redirect) {
            if let Some(resp) = redirect.response(&req) {
                return resp;
            }
        }
        let http1 = req.version() <= Version::HTTP_11;
        let arrived = Instant::now();
        let in_flight = match fwd.route(&mut req) {
            Ok(in_flight) => in_flight,
            Err(failure) => return failure.response(http1),
        };
        let (client_upgrade, forwarded) = prepare_request(&mut req, self);
        let addr = in_flight.upstream().addr();
        let stats = in_flight.upstream().stats();
        match fwd.send(addr, req, &forwarded).await {
            Ok((resp, exchange)) => {
                stats.record(resp.status().as_u16(), arrived.elapsed());
                respond(resp, exchange, in_flight, client_upgrade, self)
            }
            Err(failure) => {
                if let Some(error) = failure.upstream_error() {
                    stats.record_error(error);
                }
                let resp = failure.response(http1);
                stats.record(resp.status().as_u16(), arrived.elapsed());
                resp
            }
        }
    }
}

/// Why a request got the proxy's own answer instead of an upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No `Host`, several, or one that is not a valid host (RFC 9112 §3.2).
    BadHost,
    /// The client's request body was malformed (e.g. a bad chunk size) or cut off.
    BadRequestBody,
    /// The client sent nothing of its request body for the body read timeout.
    BodyTimeout,
    /// A path with an encoded `/` or `\\`, or a broken escape.
    AmbiguousPath,
    NoRoute,
    NoActiveRelease,
    Refused,
    Broken,
    ConnectTimeout,
    ResponseTimeout,
}

impl Failure {
    /// The upstream's own failure behind this answer, if it is one.
    fn upstream_error(self) -> Option<UpstreamError> {
        match self {
            Failure::Refused => Some(UpstreamError::Connect),
            Failure::ConnectTimeout => Some(UpstreamError::ConnectTimeout),
            Failure::ResponseTimeout => Some(UpstreamError::ResponseTimeout),
            _ => None,
        }
    }

    /// The proxy's answer; `http1` says whether the client speaks HTTP/1,
    /// whose connection is closed after a malformed request.
    fn response(self, http1: bool) -> Response<ProxyBody> {
        let (status, msg) = match self {
            Failure::BadHost => (
                StatusCode::BAD_REQUEST,
                "the request needs exactly one valid Host header\n",
            ),
            Failure::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n"),
            Failure::BadRequestBody => (StatusCode::BAD_REQUEST, "the request body was malformed or cut off\n"),
            Failure::AmbiguousPath => (
                StatusCode::BAD_REQUEST,
                "the path has an encoded slash or a broken escape\n",
            ),
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
        if http1 && (status == StatusCode::BAD_REQUEST || status == StatusCode::REQUEST_TIMEOUT) {
            // What follows a malformed request on this connection cannot be
            // trusted to be framed the way the client meant it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Forwarder {
    /// Phase 1: the upstream of the service this request routes to.
    ///
    /// The request counts as in flight to that upstream before this returns,
    /// and no drain can have seen it idle meanwhile: the table generation is
    /// read before the lookup and again after [`Upstream::enter`](crate::Upstream). A swap in
    /// between (rare) routes the request again on the new table; otherwise a
    /// drain that started after the swap sees this request (all `SeqCst`).
    fn route<B>(&self, req: &mut Request<B>) -> Result<InFlight, Failure> {
        target::normalize_target(req).map_err(|_| Failure::AmbiguousPath)?;
        let host = target::host(req).map_err(|_| Failure::BadHost)?;
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            let table = self.table.load();
            let found = table.find(host, req.uri().path()).ok_or(Failure::NoRoute)?;
            let upstream = found.service.upstream().ok_or(Failure::NoActiveRelease)?;
            #[cfg(test)]
            tests::between_lookup_and_enter();
            let in_flight = upstream.clone().enter();
            if self.generation.load(Ordering::SeqCst) == generation {
                if found.strip > 0 {
                    let path = crate::routes::stripped(req.uri().path(), found.strip);
                    target::set_path(req, path);
                }
                return Ok(in_flight);
            }
        }
    }

    /// Replace the route table: the flip. See [`Forwarder::route`].
    pub(crate) fn swap(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Phase 3: send on a pooled connection, or a new one. The response
    /// timeout runs from the end of the upload to the response head.
    ///
    /// Retries: a request whose first byte could not be written on a
    /// reused connection (it was closed under us) goes on a fresh one. So
    /// does an idempotent request without a body that a reused connection
    /// lost before any answer (the upstream closed it as the request
    /// crossed). The request's head is still in the old connection's write
    /// buffer, so a resend copies nothing.
    async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
        forwarded: &Forwarded,
    ) -> Result<(Response<()>, Exchange), Failure> {
        let (parts, body) = req.into_parts();
        let (body, upload) = RequestBody::new(body, self.upload_limits);
        let (conn, mut reused) = match pool::take_idle(addr, self.upstream_idle_timeout) {
            Some(conn) => (conn, true),
            None => (self.connect(addr).await?, false),
        };
        let mut exchange = Exchange::new(conn, &parts, forwarded, body);
        loop {
            let err = match self.exchange(&mut exchange, upload.as_deref()).await? {
                Ok(resp) => return Ok((resp, exchange)),
                Err(err) => err,
            };
            match upload.as_ref().map(|u| u.state()) {
                Some(Upload::CLIENT_FAILED) => return Err(Failure::BadRequestBody),
                Some(Upload::CLIENT_TIMED_OUT) => return Err(Failure::BodyTimeout),
                _ => {}
            }
            let resend = match err {
                client::Error::Unsent => reused,
                client::Error::Closed => reused && upload.is_none() && idempotent(&parts.method),
                _ => false,
            };
            if !resend {
                return Err(Failure::Broken);
            }
            exchange = exchange.resend_on(self.connect(addr).await?);
            reused = false;
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<pool::Conn, Failure> {
        pool::connect(addr, self.connect_timeout).await.map_err(|e| match e {
            ConnectError::TimedOut => Failure::ConnectTimeout,
            ConnectError::Failed => Failure::Refused,
        })
    }

    /// Send the request and wait for the response head: without a bound
    /// while the client uploads (the body's own pace), then for at most the
    /// response timeout.
    async fn exchange(
        &self,
        exchange: &mut Exchange,
        upload: Option<&Upload>,
    ) -> Result<Result<Response<()>, client::Error>, Failure> {
        if let Some(upload) = upload {
            tokio::select! {
                biased;
                result = std::future::poll_fn(|cx| exchange.poll_head(cx)) => return Ok(result),
                _ = upload.finished() => {}
            }
        }
        exchange.start_timer(self.response_timeout);
        std::future::poll_fn(|cx| match exchange.poll_head(cx) {
            Poll::Ready(result) => Poll::Ready(Ok(result)),
            Poll::Pending => exchange.poll_timer(cx).map(|()| Err(Failure::ResponseTimeout)),
        })
        .await
    }
}

/// Methods whose request may be sent twice (RFC 9110 §9.2.2) and that
/// usually carry no body.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Phase 2: make the request fit for the upstream hop. Returns the client's
/// pending upgrade when the request asks for one, and the hop's
/// `X-Forwarded-*` headers.
fn prepare_request(req: &mut Request<Incoming>, conn: &ClientConn) -> (Option<hyper::upgrade::OnUpgrade>, Forwarded) {
    let present = hop_by_hop_present(req.headers());
    let upgrade = is_upgrade(req.headers(), present);
    // HTTP/2 requests (and absolute-form HTTP/1) carry scheme and authority;
    // the upstream hop wants origin-form and a Host header.
    if let Some(authority) = req.uri().authority() {
        // The target's authority is the host (RFC 9112 §3.2.2: a proxy
        // replaces the Host of an absolute-form request with it).
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, present, upgrade);
    // From a trusted proxy, what it says about the client stays (For gets
    // this hop appended); from anyone else it is replaced, not believed.
    // The values are written by the client as it encodes the head, so the
    // request's header map is not touched for them.
    let trusted = |name: &HeaderName| headers.get(name).filter(|_| conn.trusted).cloned();
    let forwarded_for = match trusted(&X_FORWARDED_FOR) {
        None => conn.client_ip.clone(),
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + conn.client_ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(conn.client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| conn.client_ip.clone())
        }
    };
    let proto = trusted(&X_FORWARDED_PROTO)
        .unwrap_or_else(|| HeaderValue::from_static(if conn.tls { "https" } else { "http" }));
    let host = trusted(&X_FORWARDED_HOST).or_else(|| headers.get(header::HOST).cloned());
    let forwarded = [
        (&X_FORWARDED_FOR, Some(forwarded_for)),
        (&X_FORWARDED_PROTO, Some(proto)),
        (&X_FORWARDED_HOST, host),
    ];
    (upgrade.then(|| hyper::upgrade::on(req)), forwarded)
}

/// The `X-Forwarded-*` headers of the upstream hop ([`client::Replace`]).
type Forwarded = [client::Replace<'static>; 3];

/// Phase 4: hand the upstream's answer to the client.
fn respond(
    mut resp: Response<()>,
    exchange: Exchange,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    client_conn: &ClientConn,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream_side = exchange.into_upgraded();
            let websocket = resp
                .headers()
                .get_all(header::UPGRADE)
                .iter()
                .any(|v| has_token(v, "websocket"));
            let cut = in_flight.upstream().cut_token();
            let tunnels = &client_conn.tunnels;
            let close = tunnels.close.clone();
            let slots = client_conn.slots.lock().map_or(None, |mut s| s.take());
            // Its stream carries the tunnel from now on: never park it.
            client_conn.upgraded();
            let held = (in_flight, slots);
            tunnels
                .tracker
                .spawn(tunnel::run(client, upstream_side, websocket, [cut, close], held));
            return resp.map(|_| ProxyBody::text(""));
        }
        // A switch the client did not ask for cannot be passed on.
        return Failure::Broken.response(true);
    }
    let present = hop_by_hop_present(resp.headers());
    strip_hop_by_hop(resp.headers_mut(), present, false);
    // The connection is reusable once this body ends (an upgraded one never is).
    resp.map(|()| ProxyBody::upstream(exchange.into_body(), in_flight))
}

/// Does the request ask for a protocol upgrade the proxy tunnels? Not to
/// h2c: that upgrade is between the client and the proxy, which does not
/// offer it, so it is dropped like any hop-by-hop header.
/// `present` as for [`strip_hop_by_hop`].
fn is_upgrade(headers: &HeaderMap, present: u16) -> bool {
    const CONNECTION_AND_UPGRADE: u16 = 1 | 1 << (HOP_BY_HOP.len() - 1);
    present & CONNECTION_AND_UPGRADE == CONNECTION_AND_UPGRADE
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
        && !headers.get_all(header::UPGRADE).iter().any(|v| has_token(v, "h2c"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Which of [`HOP_BY_HOP`] a message carries, as a bit mask. One pass over
/// the (few) headers, so the usual message costs no hash lookup.
/// The names are matched as strings, in [`HOP_BY_HOP`]'s order: the
/// compiler sorts them by length, so most names are ruled out by it alone,
/// where comparing with each `HeaderName` in turn costs nine comparisons.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        let i = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            "te" => 5,
            "transfer-encoding" => 6,
            "http2-settings" => 7,
            "upgrade" => 8,
            _ => continue,
        };
        present |= 1 << i;
    }
    present
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
/// For an upgrade handshake, `Connection: upgrade` and `Upgrade` stay; a
/// `TE` that accepts trailers becomes `TE: trailers` (RFC 9110 §10.1.4: the
/// one TE value that passes a proxy). `present` is [`hop_by_hop_present`]
/// of `headers`.
fn strip_hop_by_hop(headers: &mut HeaderMap, mut present: u16, keep_upgrade: bool) {
    let trailers = present & TE_BIT != 0 && headers.get_all(header::TE).iter().any(|v| has_token(v, "trailers"));
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
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::upstream::Upstream;

    /// A forwarder routing by `table`, with short timeouts.
    pub(crate) fn forwarder(table: RouteTable) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            table: ArcSwap::from_pointee(table),
            generation: AtomicU64::new(0),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            upstream_idle_timeout: Duration::from_secs(1),
            upload_limits: UploadLimits {
                idle: Duration::from_secs(1),
                min_rate: 0,
                grace: Duration::ZERO,
            },
            https_redirect: None,
            trusted_proxies: Vec::new(),
            acme_http: None,
            parked: AtomicUsize::new(0),
        })
    }

    thread_local! {
        /// Run by [`Forwarder::route`] between the lookup and `enter`.
        static BETWEEN: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn between_lookup_and_enter() {
        if let Some(hook) = BETWEEN.with(|h| h.borrow_mut().take()) {
            hook();
        }
    }

    #[test]
    fn a_drain_never_sees_zero_while_a_routed_request_is_about_to_start() {
        let blue = Upstream::new(([127, 0, 0, 1], 1).into());
        let green = Upstream::new(([127, 0, 0, 1], 2).into());
        let fwd = forwarder(RouteTable::single("web", Some(blue.clone())));
        // The flip lands after this request looked blue up, and the drain of
        // blue looks at once.
        let drain_saw = std::rc::Rc::new(std::cell::Cell::new(None));
        BETWEEN.with(|h| {
            let (fwd, blue, green, drain_saw) = (fwd.clone(), blue.clone(), green.clone(), drain_saw.clone());
            *h.borrow_mut() = Some(Box::new(move || {
                fwd.swap(RouteTable::single("web", Some(green)));
                drain_saw.set(Some(blue.in_flight()));
            }));
        });
        let mut req = Request::get("/").header(header::HOST, "a").body(()).unwrap();
        let in_flight = fwd.route(&mut req).unwrap();
        assert_eq!(drain_saw.get(), Some(0), "the drain saw blue idle");
        assert_eq!(
            in_flight.upstream().addr(),
            green.addr(),
            "so the request must not go to blue"
        );
        assert_eq!(blue.in_flight(), 0);
    }

    #[test]
    fn each_hop_by_hop_header_sets_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert((*name).clone(), HeaderValue::from_static("1"));
            h.insert("x-other", HeaderValue::from_static("1"));
            assert_eq!(hop_by_hop_present(&h), 1 << i, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let present = hop_by_hop_present(&h);
        strip_hop_by_hop(&mut h, present, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn te_trailers_and_trailer_pass_and_h2c_is_no_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("deflate;q=0.5, trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, HTTP2-Settings"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAAP__"));
        let present = hop_by_hop_present(&h);
        assert!(!is_upgrade(&h, present));
        strip_hop_by_hop(&mut h, present, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "trailer"]);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
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
