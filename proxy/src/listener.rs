//! Workers: one thread per core, each with its own single-threaded tokio
//! runtime, its own listening socket (`SO_REUSEPORT`, so the kernel spreads
//! connections) and its own upstream pool.
//!
//! A worker accepts connections and serves HTTP/1.1 (with upgrades) or
//! HTTP/2 on each, as [`Protocol`] tells from its first bytes or ALPN
//! ([`Servers`]); on a TLS listener, after a handshake that must finish
//! within its timeout. Connection limits are a
//! semaphore (`max_connections`) and a count per client address
//! ([`PerIp`]); timeouts that are per connection (no first request in time,
//! no next request head in time, idle, a stuck write) are enforced by one
//! [`Sweeper`] per worker that looks at every connection a few times a
//! second, so serving a request polls no timer of ours, nor hyper's. Near
//! `max_connections` the sweeper also sheds connections that have started
//! no request for a second, so idle ones, not new clients, give way.
//!
//! Shutdown, in three steps: stop accepting; for [`DRAIN_QUIET`] answer every
//! HTTP/1 request with `Connection: close`, so busy clients learn of the end
//! from a response instead of racing a close with their next request; then
//! ask every connection to close gracefully (HTTP/1: after the response in
//! flight; HTTP/2: GOAWAY) and wait for them, and for upgraded tunnels
//! (WebSockets), until the drain timeout, after which tunnels are closed and
//! the rest dropped.
//!
//! Why not hyper-util's `GracefulShutdown` for the last step, which is
//! exactly what it does? Its `watch` takes hyper's own connection future and
//! its `GracefulConnection` trait is sealed, so a watched connection can no
//! longer be closed on its own: but the first-request timeout must drop one
//! connection, and the idle timeout must close one gracefully (an HTTP/2
//! connection has no idle timeout in hyper; nothing runs hyper's header timer
//! before a connection's first byte). A connection therefore has one close
//! switch, [`ClientConn::close`], which the sweeper flips for one connection
//! and shutdown for all of them: the same signal `GracefulShutdown` sends,
//! without a second mechanism beside it. Nor could `GracefulShutdown` count
//! what the drain waits for: a tunnel outlives the hyper connection that
//! answered `101`, so the worker's `TaskTracker` counts connections and
//! tunnels together.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::{CutCounter, DrainCut};
use crate::forward::{ClientConn, Close, Forwarder, Tunnels};
use crate::park::PARK_AFTER;
use crate::protocol::{Protocol, Servers};
use crate::stall::{Tracked, WriteProgress};
use crate::tls::TlsServing;
use crate::{ProxyConfig, ProxyError};

/// Bind `addr` with `SO_REUSEPORT`, so every worker can bind it too.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    bind().map_err(|source| ProxyError::Bind { addr, source })
}

/// On shutdown, how long HTTP/1 responses say `Connection: close` before
/// every connection is asked to close: a connection that got such a response
/// closes by itself, and one that got none was quiet all along.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Near `max_connections`, a connection that started no request for this
/// long may be closed to make room for a new one.
const SHED_MIN_IDLE: Duration = Duration::from_secs(1);
/// How often, near the limit, connections are looked at for shedding.
const SHED_INTERVAL: Duration = Duration::from_millis(100);

/// After the drain timeout, how long tunnels get to send their FINs.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What one worker thread needs.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<std::net::TcpListener>,
    /// Listeners whose connections start with a TLS handshake.
    pub(crate) tls_listeners: Vec<std::net::TcpListener>,
    pub(crate) tls: Option<Arc<TlsServing>>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) config: ProxyConfig,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) per_ip: Arc<PerIp>,
    pub(crate) shutdown: CancellationToken,
    /// Where this worker adds what its drain had to cut.
    pub(crate) cut: Arc<CutCounter>,
}

/// Everything an accept loop hands to the connections it accepts.
#[derive(Clone)]
struct Shared {
    servers: Arc<Servers>,
    forwarder: Arc<Forwarder>,
    connections: Arc<Semaphore>,
    sweeper: Arc<Sweeper>,
    tracker: TaskTracker,
    tunnels: Tunnels,
    per_ip: Arc<PerIp>,
    /// Free connection slots below which idle connections are closed.
    shed_margin: usize,
}

impl Worker {
    /// Run until shutdown, then drain this worker's connections.
    pub(crate) async fn run(self) {
        let sweeper = Arc::new(Sweeper {
            conns: Mutex::new((Vec::new(), Close::No)),
            last_shed: Mutex::new(None),
            epoch: Instant::now(),
            first_request: self.config.header_read_timeout,
            next_request: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
            write: self.config.write_timeout,
            upstream_idle: self.config.upstream_idle_timeout,
        });
        let tracker = TaskTracker::new();
        let shared = Shared {
            servers: Servers::new(&self.config),
            forwarder: self.forwarder.clone(),
            connections: self.connections.clone(),
            sweeper: sweeper.clone(),
            tunnels: Tunnels {
                tracker: tracker.clone(),
                close: CancellationToken::new(),
            },
            tracker,
            per_ip: self.per_ip.clone(),
            shed_margin: self.config.max_connections / 64,
        };

        let plain = self.listeners.into_iter().map(|l| (l, None));
        let tls = self.tls_listeners.into_iter().map(|l| (l, self.tls.clone()));
        for (listener, tls) in plain.chain(tls) {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    shared
                        .tracker
                        .spawn(accept_loop(l, tls, shared.clone(), self.shutdown.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot register listener with the runtime"),
            }
        }
        let sweeping = tokio::spawn({
            let sweeper = sweeper.clone();
            async move { sweeper.run().await }
        });
        self.shutdown.cancelled().await;
        shared.tracker.close();
        let deadline = Instant::now() + self.config.drain_timeout;
        sweeper.drain_start();
        // Half of a short drain at most, so that the graceful closes after
        // it get time too.
        let quiet = Instant::now() + DRAIN_QUIET.min(self.config.drain_timeout / 2);
        let _ = tokio::time::timeout_at(quiet, shared.tracker.wait()).await;
        sweeper.close_all(Close::Graceful);
        if tokio::time::timeout_at(deadline, shared.tracker.wait()).await.is_err() {
            // Every connection was asked to close after its response: one
            // still open is answering. The tracker counts connections and
            // tunnels (the accept loops have returned).
            let requests = sweeper.open();
            let tunnels = shared.tracker.len().saturating_sub(requests);
            self.cut.add(DrainCut { requests, tunnels });
            // Tunnels end their byte streams; what is left is dropped with
            // the runtime.
            shared.tunnels.close.cancel();
            let _ = tokio::time::timeout(TUNNEL_CLOSE_WAIT, shared.tracker.wait()).await;
        }
        sweeping.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<TlsServing>>, shared: Shared, shutdown: CancellationToken) {
    loop {
        let permit = loop {
            // Near the limit, idle connections make room for new ones.
            if shared.connections.available_permits() <= shared.shed_margin {
                shared.sweeper.shed(Instant::now(), shared.shed_margin.max(1));
            }
            // `biased`: once shutdown has begun, stop rather than accept more.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                permit = shared.connections.clone().acquire_owned() => match permit {
                    Ok(p) => break p,
                    Err(_) => return,
                },
                // At the limit: look again for connections gone idle.
                _ = tokio::time::sleep(SHED_INTERVAL) => {}
            }
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(per_ip) = shared.per_ip.enter(peer.ip()) else {
            tracing::debug!(client = %peer.ip(), "too many connections from one client; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (stream, writes) = Tracked::new(stream);
        let client = Arc::new(ClientConn::new(
            shared.forwarder.clone(),
            shared.tunnels.clone(),
            (permit, per_ip),
            peer,
            tls.is_some(),
        ));
        shared.sweeper.watch(&client, writes);
        let servers = shared.servers.clone();
        match &tls {
            None => shared.tracker.spawn(serve_plain(stream, client, servers)),
            Some(tls) => shared.tracker.spawn(serve_tls(stream, tls.clone(), client, servers)),
        };
    }
}

/// Serve one TLS connection: the handshake within its timeout, then HTTP
/// exactly as on a plain connection.
async fn serve_tls(stream: Tracked, tls: Arc<TlsServing>, client: Arc<ClientConn>, servers: Arc<Servers>) {
    if let Some(Some(stream)) = unless_closed(&client, tls.handshake(stream)).await {
        let protocol = Protocol::of_alpn(stream.get_ref().1.alpn_protocol());
        servers.serve(stream, protocol, client).await
    }
}

/// Run `work`, the step before a connection's first request (the TLS
/// handshake, the wait for its first bytes), unless the connection is told
/// to close meanwhile (no first request in time, quiet at shutdown): then it
/// has nothing to finish and is dropped (`None`).
async fn unless_closed<F: Future>(client: &ClientConn, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        client.register(cx.waker());
        if client.close_requested() >= Close::Graceful {
            return Poll::Ready(None);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Open connections per client, across workers, and in all. IPv6 clients
/// count per /64 (one host's usual share); a limit of 0 turns counting per
/// client off.
#[derive(Debug)]
pub(crate) struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Every client's together.
    total: AtomicUsize,
}

/// One counted connection; uncounted on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    /// The client it counts against, when counting per client.
    key: Option<IpAddr>,
}

/// What one client connection occupies while it, or the tunnel it
/// becomes, lives: a `max_connections` permit and its client's slot.
pub(crate) type Slots = (tokio::sync::OwnedSemaphorePermit, IpSlot);

impl PerIp {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(PerIp {
            limit,
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        })
    }

    /// Client connections open now (upgraded ones included).
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn slot(self: &Arc<Self>, key: Option<IpAddr>) -> IpSlot {
        self.total.fetch_add(1, Ordering::Relaxed);
        IpSlot {
            per_ip: self.clone(),
            key,
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        }
    }

    /// Count a connection from `ip`, unless that client is at the limit.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.limit == 0 {
            return Some(self.slot(None));
        }
        let key = Self::key(ip);
        let mut open = self.open.lock().expect("per-ip lock");
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        drop(open);
        Some(self.slot(Some(key)))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.per_ip.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.key {
            let mut open = self.per_ip.open.lock().expect("per-ip lock");
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Serve one plain connection: its protocol from its first bytes, peeked
/// once they arrive, then HTTP.
async fn serve_plain(mut stream: Tracked, client: Arc<ClientConn>, servers: Arc<Servers>) {
    let peek = std::future::poll_fn(|cx| {
        let mut first = [0u8; 3];
        let mut buf = ReadBuf::new(&mut first);
        stream.poll_peek(cx, &mut buf).map(|peeked| match peeked {
            Ok(_) if !buf.filled().is_empty() => Some(Protocol::sniff(buf.filled())),
            // Closed before a byte, or failed.
            _ => None,
        })
    });
    if let Some(Some(protocol)) = unless_closed(&client, peek).await {
        servers.serve(stream, protocol, client).await
    }
}

/// Closes the connections of one worker that sent no request in time, or
/// have been idle too long, and all of them at shutdown.
struct Sweeper {
    /// The connections, and how shutdown has asked all of them to close so
    /// far (under one lock, so a connection accepted as shutdown begins is
    /// closed like the rest).
    conns: Mutex<(Vec<Watched>, Close)>,
    /// When connections were last shed to make room.
    last_shed: Mutex<Option<Instant>>,
    /// What [`Stamp`]s count from.
    epoch: Instant,
    /// A connection must have started its first request within this.
    first_request: Duration,
    /// An HTTP/1 connection between requests must have read its next
    /// request's head within this (hyper's header read timeout, which is
    /// off: a timer entry per request costs more than this look).
    next_request: Duration,
    /// A connection that starts no request for this long is closed.
    idle: Duration,
    /// A connection whose write to the client is stuck this long is reset.
    write: Duration,
    /// This worker's pooled upstream connections idle this long are closed.
    upstream_idle: Duration,
}

/// One connection as the sweeper keeps it: 48 bytes, as there is one per
/// open connection, parked ones included.
struct Watched {
    conn: Weak<ClientConn>,
    /// Requests seen at the last change, and when that was (when the
    /// connection was accepted, until its first request).
    requests: u64,
    since: Stamp,
    /// When the connection was first seen between requests (HTTP/1) since
    /// its last request started.
    waiting_since: Option<Stamp>,
    writes: Arc<WriteProgress>,
    /// The write stall last seen, and when it was first seen.
    stall: Option<(NonZeroU64, Stamp)>,
}

/// A moment as the sweeper keeps it: milliseconds since it started, in 32
/// bits that wrap after 49 days, the lowest always set (so that an
/// `Option<Stamp>` takes no more room). Elapsed times are right to within
/// a millisecond up to 49 days, and every timeout the sweeper applies is
/// far shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(NonZeroU32);

impl Stamp {
    fn at(epoch: Instant, now: Instant) -> Stamp {
        // Truncating is intended: only differences are ever used.
        let ms = (now - epoch).as_millis() as u32;
        Stamp(NonZeroU32::MIN | ms)
    }

    /// The time from this stamp to `now`.
    fn until(self, now: Stamp) -> Duration {
        Duration::from_millis(u64::from(now.0.get().wrapping_sub(self.0.get())))
    }
}

impl Watched {
    /// Note the connection's request count as seen `now`; true if a request
    /// has started since the last look (the quiet and the wait for the next
    /// request start over).
    fn saw_requests(&mut self, requests: u64, now: Stamp) -> bool {
        if requests == self.requests {
            return false;
        }
        self.requests = requests;
        self.since = now;
        self.waiting_since = None;
        true
    }
}

impl Sweeper {
    fn watch(&self, conn: &Arc<ClientConn>, writes: Arc<WriteProgress>) {
        let now = Stamp::at(self.epoch, Instant::now());
        let mut conns = self.conns.lock().expect("sweeper lock");
        if conns.1 != Close::No {
            conn.close(conns.1);
        }
        conns.0.push(Watched {
            conn: Arc::downgrade(conn),
            requests: 0,
            since: now,
            waiting_since: None,
            writes,
            stall: None,
        });
    }

    async fn run(&self) {
        // Fine enough for timeouts given in seconds, coarse enough to cost nothing.
        let shortest = self
            .first_request
            .min(self.idle)
            .min(self.write)
            .min(self.upstream_idle);
        let tick = (shortest / 4)
            .min(PARK_AFTER)
            .clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.sweep(Instant::now());
            // Same thread as the pool: the worker's own runtime.
            crate::pool::expire_idle(self.upstream_idle);
        }
    }

    fn sweep(&self, now: Instant) {
        let now = Stamp::at(self.epoch, now);
        self.conns.lock().expect("sweeper lock").0.retain_mut(|w| {
            let Some(conn) = w.conn.upgrade() else { return false };
            let requests = conn.requests();
            if requests == 0 && w.since.until(now) >= self.first_request {
                // Nothing, or only part of a request head, arrived in time
                // (HTTP/2 and TLS included, which no header timer covers).
                conn.close(Close::Now);
                return false;
            }
            match (w.writes.stall().and_then(NonZeroU64::new), w.stall) {
                (None, _) => w.stall = None,
                (Some(stall), Some((seen, since))) if stall == seen => {
                    if since.until(now) >= self.write {
                        // The client has not taken a byte for the write
                        // timeout: whatever it asked for, it is not reading.
                        w.writes.reset_on_close();
                        conn.close(Close::Now);
                        return false;
                    }
                }
                (Some(stall), _) => w.stall = Some((stall, now)),
            }
            if !w.saw_requests(requests, now) {
                if !conn.awaiting_request() {
                    w.waiting_since = None;
                } else if w.waiting_since.get_or_insert(now).until(now) >= self.next_request {
                    // The next request's head, or the rest of it, did not
                    // come in time (parked or not): a slowloris on a
                    // kept-alive connection, or just a quiet client.
                    conn.close(Close::Now);
                    return false;
                }
                let quiet = w.since.until(now);
                if quiet >= self.idle {
                    conn.close(Close::Graceful);
                } else if quiet >= PARK_AFTER {
                    // Quiet: an HTTP/1 connection gives hyper's buffers back.
                    conn.request_park();
                }
            }
            true
        });
    }

    /// Close up to `n` of this worker's connections that started no request
    /// for [`SHED_MIN_IDLE`], the longest quiet first, to make room for new
    /// ones: those that never sent a request at once, the others gracefully
    /// (an idle HTTP/1 connection closes at once, a response in flight
    /// finishes first). At most once per [`SHED_INTERVAL`].
    fn shed(&self, now: Instant, n: usize) {
        {
            let mut last = self.last_shed.lock().expect("sweeper lock");
            if last.is_some_and(|t| now - t < SHED_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let now = Stamp::at(self.epoch, now);
        let mut conns = self.conns.lock().expect("sweeper lock");
        let mut quiet: Vec<(Duration, usize)> = Vec::new();
        for (i, w) in conns.0.iter_mut().enumerate() {
            let Some(conn) = w.conn.upgrade() else { continue };
            if !w.saw_requests(conn.requests(), now) {
                let quiet_for = w.since.until(now);
                if quiet_for >= SHED_MIN_IDLE {
                    quiet.push((quiet_for, i));
                }
            }
        }
        quiet.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, i) in quiet.iter().take(n) {
            if let Some(conn) = conns.0[i].conn.upgrade() {
                conn.close(if conns.0[i].requests == 0 {
                    Close::Now
                } else {
                    Close::Graceful
                });
            }
        }
    }

    /// Client connections still open.
    fn open(&self) -> usize {
        let conns = self.conns.lock().expect("sweeper lock");
        conns.0.iter().filter(|w| w.conn.strong_count() > 0).count()
    }

    /// Shutdown begins: every connection (and any accepted from now on) is
    /// told to drain.
    fn drain_start(&self) {
        self.close_all(Close::Drain);
    }

    /// Ask every connection, and any accepted from now on, to close `how`.
    fn close_all(&self, how: Close) {
        let mut conns = self.conns.lock().expect("sweeper lock");
        conns.1 = conns.1.max(how);
        conns.0.retain(|w| match w.conn.upgrade() {
            Some(conn) => {
                conn.close(how);
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_connection_takes_48_bytes() {
        assert_eq!(std::mem::size_of::<Watched>(), 48);
    }

    /// Shedding looks at request counts too: a request it sees must end the
    /// wait for the next one as the sweep's own look does, or the sweep
    /// would close the connection on a wait that is over.
    #[test]
    fn a_request_seen_starts_the_wait_for_the_next_one_over() {
        let epoch = Instant::now();
        let at = |ms| Stamp::at(epoch, epoch + Duration::from_millis(ms));
        let mut w = Watched {
            conn: Weak::new(),
            requests: 1,
            since: at(0),
            waiting_since: Some(at(100)),
            writes: Arc::default(),
            stall: None,
        };
        assert!(!w.saw_requests(1, at(5_000)));
        assert_eq!((w.since, w.waiting_since), (at(0), Some(at(100))));
        assert!(w.saw_requests(2, at(9_000)));
        assert_eq!((w.requests, w.since, w.waiting_since), (2, at(9_000), None));
    }

    #[test]
    fn stamps_measure_across_the_wrap_of_their_32_bits() {
        let epoch = Instant::now();
        let a = Stamp::at(epoch, epoch + Duration::from_millis(1500));
        let b = Stamp::at(epoch, epoch + Duration::from_millis(4000));
        assert_eq!(a.until(b), Duration::from_millis(2500));
        let before_wrap = Stamp(NonZeroU32::MAX);
        let after_wrap = Stamp(NonZeroU32::new(999).unwrap());
        assert_eq!(before_wrap.until(after_wrap), Duration::from_millis(1000));
    }
}
