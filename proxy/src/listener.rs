//! Workers: one thread per core, each with its own single-threaded tokio
//! runtime, its own listening socket (`SO_REUSEPORT`, so the kernel spreads
//! connections) and its own upstream pool.
//!
//! A worker accepts connections and serves HTTP/1.1 and HTTP/2 on each
//! through hyper-util's auto builder with upgrades; on a TLS listener, after
//! a handshake that must finish within its timeout. Connection limits are a
//! semaphore; timeouts that are per connection (no first request in time,
//! idle) are enforced by one [`Sweeper`] per worker that looks at every
//! connection a few times a second, so serving a request polls no timer of
//! ours. On shutdown a worker stops accepting and lets open connections
//! finish their requests within the drain timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::{ClientConn, Close, Forwarder};
use crate::tls::TlsServing;
use crate::{ProxyConfig, ProxyError};

/// Bind `addr` with `SO_REUSEPORT`, so every worker can bind it too.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
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

/// On shutdown, a connection still open after sending no request for this
/// long is closed outright; busy ones close after their next response, which
/// carries `Connection: close`.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// How often, while shutting down, connections are checked for quiet.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// What one worker thread needs.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<std::net::TcpListener>,
    /// Listeners whose connections start with a TLS handshake.
    pub(crate) tls_listeners: Vec<std::net::TcpListener>,
    pub(crate) tls: Option<Arc<TlsServing>>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) config: ProxyConfig,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

/// Everything an accept loop hands to the connections it accepts.
#[derive(Clone)]
struct Shared {
    builder: Arc<auto::Builder<TokioExecutor>>,
    forwarder: Arc<Forwarder>,
    connections: Arc<Semaphore>,
    sweeper: Arc<Sweeper>,
    tracker: TaskTracker,
}

impl Worker {
    /// Run until shutdown, then drain this worker's connections.
    pub(crate) async fn run(self) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_buf_size(self.config.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.config.max_header_bytes as u32);
        let sweeper = Arc::new(Sweeper {
            conns: Mutex::new((Vec::new(), false)),
            first_request: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
        });
        let shared = Shared {
            builder: Arc::new(builder),
            forwarder: self.forwarder.clone(),
            connections: self.connections.clone(),
            sweeper: sweeper.clone(),
            tracker: TaskTracker::new(),
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
        // Busy HTTP/1 clients learn of the close from a response; what stays
        // quiet (idle keep-alive, HTTP/2 with GOAWAY) is closed after a while.
        let deadline = Instant::now() + self.config.drain_timeout;
        let quiet = DRAIN_QUIET.min(self.config.drain_timeout);
        sweeper.drain_start(Instant::now());
        while !shared.tracker.is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout(DRAIN_TICK, shared.tracker.wait()).await;
            sweeper.close_quiet(Instant::now(), quiet);
        }
        if tokio::time::timeout_at(deadline, shared.tracker.wait()).await.is_err() {
            tracing::warn!(
                open = shared.tracker.len(),
                "drain timeout passed with connections still open; closing them"
            );
        }
        sweeping.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<TlsServing>>, shared: Shared, shutdown: CancellationToken) {
    loop {
        // `biased`: once shutdown has begun, stop rather than accept more.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
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
        let _ = stream.set_nodelay(true);
        let client = Arc::new(ClientConn::new(shared.forwarder.clone(), peer, tls.is_some()));
        shared.sweeper.watch(&client);
        let builder = shared.builder.clone();
        match &tls {
            None => shared.tracker.spawn(serve(stream, client, builder, permit)),
            Some(tls) => shared
                .tracker
                .spawn(serve_tls(stream, tls.clone(), client, builder, permit)),
        };
    }
}

/// Serve one TLS connection: the handshake within its timeout, then HTTP
/// exactly as on a plain connection.
async fn serve_tls(
    stream: TcpStream,
    tls: Arc<TlsServing>,
    client: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut handshake = pin!(tls.handshake(stream));
    // A connection told to close while still in its handshake (no first
    // request in time, quiet at shutdown) has nothing to finish: drop it.
    let stream = std::future::poll_fn(|cx| {
        client.register(cx.waker());
        if client.close_requested() >= Close::Graceful {
            return Poll::Ready(None);
        }
        handshake.as_mut().poll(cx)
    })
    .await;
    if let Some(stream) = stream {
        serve(stream, client, builder, permit).await
    }
}

/// Serve one client connection until it closes or is told to close.
async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: I,
    client: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = {
        let client = client.clone();
        service_fn(move |req| {
            let client = client.clone();
            async move { Ok::<_, std::convert::Infallible>(client.serve(req).await) }
        })
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let mut closing = false;
    std::future::poll_fn(|cx| {
        // The sweeper wakes this task when it wants the connection closed.
        client.register(cx.waker());
        match client.close_requested() {
            Close::Now => return Poll::Ready(()),
            Close::Graceful if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ => {}
        }
        conn.as_mut().poll(cx).map(|_| ())
    })
    .await
}

/// Closes the connections of one worker that sent no request in time, or
/// have been idle too long, and all of them at shutdown.
struct Sweeper {
    /// The connections, and whether shutdown has begun (under one lock, so
    /// a connection accepted as shutdown begins is drained like the rest).
    conns: Mutex<(Vec<Watched>, bool)>,
    /// A connection must have started its first request within this.
    first_request: Duration,
    /// A connection that starts no request for this long is closed.
    idle: Duration,
}

struct Watched {
    conn: Weak<ClientConn>,
    accepted: Instant,
    /// Requests seen at the last change, and when that was.
    requests: u64,
    since: Instant,
}

impl Sweeper {
    fn watch(&self, conn: &Arc<ClientConn>) {
        let now = Instant::now();
        let mut conns = self.conns.lock().expect("sweeper lock");
        if conns.1 {
            conn.close(Close::Drain);
        }
        conns.0.push(Watched {
            conn: Arc::downgrade(conn),
            accepted: now,
            requests: 0,
            since: now,
        });
    }

    async fn run(&self) {
        // Fine enough for timeouts given in seconds, coarse enough to cost nothing.
        let tick = (self.first_request.min(self.idle) / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.sweep(Instant::now());
        }
    }

    fn sweep(&self, now: Instant) {
        self.conns.lock().expect("sweeper lock").0.retain_mut(|w| {
            let Some(conn) = w.conn.upgrade() else { return false };
            let requests = conn.requests();
            if requests == 0 && now - w.accepted >= self.first_request {
                // Nothing, or only part of a request head, arrived in time:
                // hyper's own header timer is not running before the first
                // request (the auto builder is still sniffing for HTTP/2).
                conn.close(Close::Now);
                return false;
            }
            if requests != w.requests {
                w.requests = requests;
                w.since = now;
            } else if now - w.since >= self.idle {
                conn.close(Close::Graceful);
            }
            true
        });
    }

    /// Shutdown begins: every connection is told to drain, and its quiet
    /// time counts from now.
    fn drain_start(&self, now: Instant) {
        let mut conns = self.conns.lock().expect("sweeper lock");
        conns.1 = true;
        for w in conns.0.iter_mut() {
            if let Some(conn) = w.conn.upgrade() {
                conn.close(Close::Drain);
                w.requests = conn.requests();
                w.since = now;
            }
        }
    }

    /// While shutting down: close connections that started no request for `quiet`.
    fn close_quiet(&self, now: Instant, quiet: Duration) {
        self.conns.lock().expect("sweeper lock").0.retain_mut(|w| {
            let Some(conn) = w.conn.upgrade() else { return false };
            let requests = conn.requests();
            if requests != w.requests {
                w.requests = requests;
                w.since = now;
            } else if now - w.since >= quiet {
                conn.close(Close::Graceful);
            }
            true
        });
    }
}
