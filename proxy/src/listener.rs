//! Workers: one thread per core, each with its own single-threaded tokio
//! runtime, its own listening socket (`SO_REUSEPORT`, so the kernel spreads
//! connections) and its own upstream pool.
//!
//! A worker accepts connections, serves HTTP/1.1 and HTTP/2 on each through
//! hyper-util's auto builder with upgrades, enforces the connection limit and
//! timeouts, and on shutdown stops accepting and lets open connections finish
//! their requests within the drain timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::{ClientConn, Forwarder};
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

/// What one worker thread needs.
pub(crate) struct Worker {
    pub(crate) listeners: Vec<std::net::TcpListener>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) config: ProxyConfig,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
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
        let builder = Arc::new(builder);
        let tracker = TaskTracker::new();

        for listener in self.listeners {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register listener with the runtime");
                    continue;
                }
            };
            tracker.spawn(accept_loop(
                listener,
                builder.clone(),
                self.forwarder.clone(),
                self.config.clone(),
                self.connections.clone(),
                self.shutdown.clone(),
                tracker.clone(),
            ));
        }
        self.shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(self.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tracker.len(),
                "drain timeout passed with connections still open; closing them"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    forwarder: Arc<Forwarder>,
    config: ProxyConfig,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
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
        let client = Arc::new(ClientConn::new(forwarder.clone(), peer, false));
        tracker.spawn(serve(
            stream,
            client,
            builder.clone(),
            config.clone(),
            shutdown.clone(),
            permit,
        ));
    }
}

/// Serve one client connection until it closes, idles out, or shutdown.
async fn serve(
    stream: TcpStream,
    client: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    config: ProxyConfig,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = {
        let client = client.clone();
        service_fn(move |req| {
            let client = client.clone();
            async move { Ok::<_, std::convert::Infallible>(client.serve(req).await) }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);

    // Until the first request arrives, hyper's own header timer is not
    // running (the auto builder is still sniffing for HTTP/2), so a client
    // that sends nothing, or dribbles, is dropped here.
    let first = tokio::time::sleep(config.header_read_timeout);
    tokio::pin!(first);
    let mut first_seen = false;
    let mut seen = 0;
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut first, if !first_seen => {
                if client.requests() == 0 {
                    return;
                }
                first_seen = true;
            }
            _ = tokio::time::sleep(config.idle_timeout), if !closing => {
                let now = client.requests();
                if now == seen {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                seen = now;
            }
            _ = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
