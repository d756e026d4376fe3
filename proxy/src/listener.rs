//! Workers: one thread per core, each with its own single-threaded tokio
//! runtime, its own listening socket (`SO_REUSEPORT`, so the kernel spreads
//! connections) and its own upstream pool.
//!
//! A worker accepts connections and serves HTTP/1.1 and HTTP/2 on each
//! through hyper-util's auto builder with upgrades. Connection limits are a
//! semaphore; timeouts that are per connection (no first request in time,
//! idle) are enforced by one [`Sweeper`] per worker that looks at every
//! connection a few times a second, so serving a request polls no timer of
//! ours.
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
//! connection has no idle timeout in hyper; the auto builder's sniffing runs
//! before hyper's header timer starts). A connection therefore has one close
//! switch, [`ClientConn::close`], which the sweeper flips for one connection
//! and shutdown for all of them: the same signal `GracefulShutdown` sends,
//! without a second mechanism beside it. Nor could `GracefulShutdown` count
//! what the drain waits for: a tunnel outlives the hyper connection that
//! answered `101`, so the worker's `TaskTracker` counts connections and
//! tunnels together.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::{ClientConn, Close, Forwarder, Tunnels};
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

/// On shutdown, how long HTTP/1 responses say `Connection: close` before
/// every connection is asked to close: a connection that got such a response
/// closes by itself, and one that got none was quiet all along.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// After the drain timeout, how long tunnels get to send their FINs.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What one worker thread needs.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<std::net::TcpListener>,
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
    tunnels: Tunnels,
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
            conns: Mutex::new((Vec::new(), Close::No)),
            first_request: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
        });
        let tracker = TaskTracker::new();
        let shared = Shared {
            builder: Arc::new(builder),
            forwarder: self.forwarder.clone(),
            connections: self.connections.clone(),
            sweeper: sweeper.clone(),
            tunnels: Tunnels {
                tracker: tracker.clone(),
                close: CancellationToken::new(),
            },
            tracker,
        };

        for listener in self.listeners {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    shared
                        .tracker
                        .spawn(accept_loop(l, shared.clone(), self.shutdown.clone()));
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
        let quiet = Instant::now() + DRAIN_QUIET.min(self.config.drain_timeout);
        let _ = tokio::time::timeout_at(quiet, shared.tracker.wait()).await;
        sweeper.close_all(Close::Graceful);
        if tokio::time::timeout_at(deadline, shared.tracker.wait()).await.is_err() {
            tracing::warn!(
                open = shared.tracker.len(),
                "drain timeout passed with connections or tunnels still open; closing them"
            );
            // Tunnels end their byte streams; what is left is dropped with
            // the runtime.
            shared.tunnels.close.cancel();
            let _ = tokio::time::timeout(TUNNEL_CLOSE_WAIT, shared.tracker.wait()).await;
        }
        sweeping.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
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
        let client = Arc::new(ClientConn::new(
            shared.forwarder.clone(),
            shared.tunnels.clone(),
            peer,
            false,
        ));
        shared.sweeper.watch(&client);
        shared
            .tracker
            .spawn(serve(stream, client, shared.builder.clone(), permit));
    }
}

/// Serve one client connection until it closes or is told to close.
async fn serve(
    stream: TcpStream,
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
    /// The connections, and how shutdown has asked all of them to close so
    /// far (under one lock, so a connection accepted as shutdown begins is
    /// closed like the rest).
    conns: Mutex<(Vec<Watched>, Close)>,
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
        if conns.1 != Close::No {
            conn.close(conns.1);
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
