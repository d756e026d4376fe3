//! `switchctl-proxy`: the data plane of switchctl.
//!
//! A [`Proxy`] serves HTTP/1.1 and HTTP/2 on its listeners and forwards each
//! request to the upstream its [`RouteTable`] names. The table lives in an
//! `ArcSwap`: a request does one `load()`, a flip ([`Proxy::swap`]) is one
//! `store()`. [`Upstream::drain`] waits for an upstream's in-flight requests
//! and tunnels to finish. This crate knows nothing of Docker, config files or
//! the CLI; the controller in the `switchctl` crate drives it.
//!
//! With [`Proxy::bind_with_tls`] it also terminates TLS (rustls, with the
//! `ring` provider), with certificates from a [`CertStore`] chosen by SNI and
//! reloaded in one swap ([`Proxy::reload_tls`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), switchctl_proxy::ProxyError> {
//! use switchctl_proxy::{Proxy, ProxyConfig, RouteTable, Upstream};
//! let blue = Upstream::new("127.0.0.1:9001".parse().unwrap());
//! let proxy = Proxy::bind(ProxyConfig::default(), &["127.0.0.1:8080".parse().unwrap()],
//!                         RouteTable::single("web", Some(blue.clone())))?;
//! let green = Upstream::new("127.0.0.1:9002".parse().unwrap());
//! proxy.swap(RouteTable::single("web", Some(green)));   // the flip
//! blue.drain(std::time::Duration::from_secs(30)).await;  // old color idle
//! proxy.shutdown();
//! proxy.stopped().await;
//! # Ok(()) }
//! ```

mod affinity;
mod body;
mod cidr;
mod client;
mod drain;
mod forward;
mod listener;
mod park;
mod pool;
mod protocol;
mod routes;
mod stall;
mod stats;
mod target;
mod tls;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use body::ProxyBody;
pub use cidr::{Cidr, CidrError};
pub use drain::DrainCut;
pub use routes::{HostPattern, Route, RouteError, RouteMatch, RouteTable, Service};
pub use stats::{Snapshot, Stats, BUCKETS_US};
pub use tls::{
    CertDetails, CertOrigin, CertReport, CertSource, CertStatus, CertStore, TlsConfig, TlsError,
    ACME_HTTP_CHALLENGE_PREFIX, ACME_TLS_ALPN,
};
pub use upstream::{DrainReport, Upstream};

/// The request-target checks, open to the fuzz targets in `fuzz/` (built
/// only by `cargo fuzz`, which passes `--cfg fuzzing`): the proxy calls
/// these on every request before it looks at the route table.
#[cfg(fuzzing)]
pub mod fuzzing {
    use http::Request;

    /// The path as routes see it; `None`: ambiguous, answered 400.
    pub fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
        crate::target::normalize_path(path).ok()
    }

    /// Normalize the request's path in place, as the proxy does; `false`:
    /// ambiguous, answered 400.
    pub fn normalize_target<B>(req: &mut Request<B>) -> bool {
        crate::target::normalize_target(req).is_ok()
    }

    /// The host the request is routed by; `Err`: answered 400.
    pub fn host<B>(req: &Request<B>) -> Result<Option<&str>, ()> {
        crate::target::host(req).map_err(|_| ())
    }

    /// Whether `host` is a valid `uri-host[:port]`.
    pub fn valid_host(host: &[u8]) -> bool {
        crate::target::valid_host(host)
    }

    /// `path` without the first `strip` bytes a stripping route matched.
    pub fn stripped(path: &str, strip: usize) -> String {
        crate::routes::stripped(path, strip)
    }
}

/// Limits and timeouts of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Worker threads, each with its own runtime and listener (0: one per
    /// core). With one per allowed CPU, each is pinned to its own.
    pub workers: usize,
    /// Time a client has to send a request head. For HTTP/1.1 it also bounds
    /// the wait for the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A connection that starts no request for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1 answers 431 beyond it).
    pub max_header_bytes: usize,
    /// Most client connections open at once. Near the limit, connections
    /// that started no request for a second are closed to make room; beyond
    /// it, new ones wait in the accept queue.
    pub max_connections: usize,
    /// Time to establish a connection to an upstream (else 504).
    pub connect_timeout: Duration,
    /// Time for an upstream to send its response head (else 504).
    pub response_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-For/-Proto/-Host` are kept (For appended
    /// to); from any other peer they are replaced (default: none).
    pub trusted_proxies: Vec<Cidr>,
    /// A pooled upstream connection idle this long is not reused. Keep it
    /// below the upstreams' keep-alive timeout, or an upstream may close a
    /// connection just as a request is sent on it.
    pub upstream_idle_timeout: Duration,
    /// While a request body is being received, the longest wait for the
    /// client's next bytes (else 408 and the connection closes).
    pub body_read_timeout: Duration,
    /// Most connections open at once from one client address (IPv6: one
    /// /64); more are closed as they arrive. 0: no limit.
    pub max_connections_per_ip: usize,
    /// A connection whose writes to the client make no progress for this
    /// long (the client reads nothing of what it asked for) is reset.
    pub write_timeout: Duration,
    /// Slowest average pace of a request body, in bytes per second of
    /// waiting on the client, once [`ProxyConfig::body_min_rate_grace`] of
    /// waiting has passed (else 408 and the connection closes). 0: no minimum.
    pub body_min_rate: u64,
    /// Waiting on a request body that does not count against
    /// [`ProxyConfig::body_min_rate`]: the slack of a slow start or a pause.
    pub body_min_rate_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            workers: 0,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            // Below the shortest common keep-alive default (gunicorn 2 s;
            // node, uvicorn, Apache 5 s; nginx 75 s), with room for the
            // request's trip: reconnecting after 1.5 s idle costs one
            // handshake on a local network.
            upstream_idle_timeout: Duration::from_millis(1500),
            // nginx's client_body_timeout is 60 s; a client that pauses
            // half a minute mid-upload is broken or hostile.
            body_read_timeout: Duration::from_secs(30),
            // Browsers open 6 per host, a busy NAT or an office a few hundred
            // at most; one address holding more is hoarding.
            max_connections_per_ip: 256,
            // nginx's send_timeout is 60 s, HAProxy's usual `timeout client`
            // 30 to 50 s. Any client that reads at all makes progress far
            // more often: a stall this long is a dead or hostile peer.
            write_timeout: Duration::from_secs(30),
            // Apache's mod_reqtimeout asks 500 B/s; a phone on EDGE sends
            // 10 KB/s and more. Slow-body attacks send a few bytes every
            // few seconds and are cut once the grace is used up.
            body_min_rate: 1024,
            body_min_rate_grace: Duration::from_secs(10),
        }
    }
}

/// The data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        /// the address
        addr: SocketAddr,
        /// why
        source: std::io::Error,
    },
    /// A worker thread or its runtime could not be created.
    #[error("cannot start proxy worker: {0}")]
    Worker(std::io::Error),
    /// No listener was given.
    #[error("the proxy needs at least one listen address")]
    NoListeners,
    /// TLS listeners were given without a TLS configuration.
    #[error("TLS listeners need a TLS configuration")]
    NoTlsConfig,
}

/// The listening sockets of a proxy, grouped per worker: `plain[i]` and
/// `tls[i]` are what worker `i` accepts on. A successor process adopts them
/// with [`Proxy::from_worker_listeners`] (a hitless self-upgrade).
#[derive(Debug, Default)]
pub struct WorkerListeners {
    /// Per worker, its plain HTTP listeners.
    pub plain: Vec<Vec<std::net::TcpListener>>,
    /// Per worker, its TLS listeners.
    pub tls: Vec<Vec<std::net::TcpListener>>,
}

impl WorkerListeners {
    /// Another handle on every socket (`dup`, sharing the kernel's socket
    /// and its accept queue).
    pub fn try_clone(&self) -> std::io::Result<WorkerListeners> {
        Ok(WorkerListeners {
            plain: dup_groups(&self.plain)?,
            tls: dup_groups(&self.tls)?,
        })
    }
}

/// Another handle on each listener of `groups` (`dup`: the same socket).
fn dup_groups(groups: &[Vec<std::net::TcpListener>]) -> std::io::Result<Vec<Vec<std::net::TcpListener>>> {
    groups
        .iter()
        .map(|g| g.iter().map(|l| l.try_clone()).collect())
        .collect()
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
#[derive(Debug)]
pub struct Proxy {
    forwarder: Arc<forward::Forwarder>,
    local_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    certs: Option<CertStore>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
    /// What the shutdown drain cut, summed over the workers.
    cut: Arc<drain::CutCounter>,
    /// Counts client connections (per client, and in all).
    per_ip: Arc<listener::PerIp>,
    /// Handles on the workers' sockets, for [`Proxy::listeners`]; dropped
    /// at shutdown, so that the sockets close with the accept loops as
    /// before unless a successor holds them.
    listeners: Mutex<Option<WorkerListeners>>,
}

impl Proxy {
    /// Bind `addrs` (one `SO_REUSEPORT` socket per worker each) and start.
    pub fn bind(config: ProxyConfig, addrs: &[SocketAddr], table: RouteTable) -> Result<Proxy, ProxyError> {
        let per_worker = bind_all(addrs, worker_count(&config))?;
        Self::start(config, per_worker, Vec::new(), None, table)
    }

    /// Like [`Proxy::bind`], plus TLS listeners on `tls_addrs` serving the
    /// same routes with `tls.certs`.
    pub fn bind_with_tls(
        config: ProxyConfig,
        addrs: &[SocketAddr],
        tls_addrs: &[SocketAddr],
        tls: TlsConfig,
        table: RouteTable,
    ) -> Result<Proxy, ProxyError> {
        let workers = worker_count(&config);
        let (plain, secure) = (bind_all(addrs, workers)?, bind_all(tls_addrs, workers)?);
        Self::start(config, plain, secure, Some(tls), table)
    }

    /// Start on listeners that already exist (e.g. from systemd socket
    /// activation); every worker accepts on each of them.
    pub fn from_listeners(
        config: ProxyConfig,
        listeners: Vec<std::net::TcpListener>,
        table: RouteTable,
    ) -> Result<Proxy, ProxyError> {
        let per_worker = share_all(&listeners, worker_count(&config))?;
        Self::start(config, per_worker, Vec::new(), None, table)
    }

    /// Like [`Proxy::from_listeners`], plus `tls_listeners` serving TLS.
    pub fn from_listeners_with_tls(
        config: ProxyConfig,
        listeners: Vec<std::net::TcpListener>,
        tls_listeners: Vec<std::net::TcpListener>,
        tls: TlsConfig,
        table: RouteTable,
    ) -> Result<Proxy, ProxyError> {
        let workers = worker_count(&config);
        let (plain, secure) = (share_all(&listeners, workers)?, share_all(&tls_listeners, workers)?);
        Self::start(config, plain, secure, Some(tls), table)
    }

    /// Start on listeners already grouped per worker, as a predecessor's
    /// [`Proxy::listeners`] gave them: one worker per group, whatever
    /// `config.workers` says, so that every `SO_REUSEPORT` socket (each
    /// with its own accept queue) keeps a worker accepting on it. `tls` is
    /// needed when there are TLS listeners.
    pub fn from_worker_listeners(
        config: ProxyConfig,
        listeners: WorkerListeners,
        tls: Option<TlsConfig>,
        table: RouteTable,
    ) -> Result<Proxy, ProxyError> {
        let WorkerListeners { plain, tls: secure } = listeners;
        if tls.is_none() && secure.iter().any(|g| !g.is_empty()) {
            return Err(ProxyError::NoTlsConfig);
        }
        for l in plain.iter().chain(secure.iter()).flatten() {
            l.set_nonblocking(true).map_err(ProxyError::Worker)?;
        }
        Self::start(config, plain, secure, tls, table)
    }

    fn start(
        config: ProxyConfig,
        per_worker: Vec<Vec<std::net::TcpListener>>,
        tls_per_worker: Vec<Vec<std::net::TcpListener>>,
        tls: Option<TlsConfig>,
        table: RouteTable,
    ) -> Result<Proxy, ProxyError> {
        let listening = |l: &Vec<Vec<std::net::TcpListener>>| l.first().is_some_and(|l| !l.is_empty());
        if !listening(&per_worker) && !listening(&tls_per_worker) {
            return Err(ProxyError::NoListeners);
        }
        let addrs_of = |l: &Vec<Vec<std::net::TcpListener>>| -> Vec<SocketAddr> {
            l.first()
                .map(|l| l.iter().filter_map(|l| l.local_addr().ok()).collect())
                .unwrap_or_default()
        };
        let (local_addrs, tls_addrs) = (addrs_of(&per_worker), addrs_of(&tls_per_worker));
        let handles = WorkerListeners {
            plain: dup_groups(&per_worker).map_err(ProxyError::Worker)?,
            tls: dup_groups(&tls_per_worker).map_err(ProxyError::Worker)?,
        };
        let https_redirect = tls
            .as_ref()
            .filter(|t| t.redirect_http)
            .map(|_| tls::HttpsRedirect::new(tls_addrs.first().map(|a| a.port())));
        let serving = tls.as_ref().map(|t| Arc::new(tls::TlsServing::new(t)));
        let forwarder = Arc::new(forward::Forwarder {
            table: ArcSwap::from_pointee(table),
            generation: AtomicU64::new(0),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            upstream_idle_timeout: config.upstream_idle_timeout,
            upload_limits: body::UploadLimits {
                idle: config.body_read_timeout,
                min_rate: config.body_min_rate,
                grace: config.body_min_rate_grace,
            },
            https_redirect,
            trusted_proxies: config.trusted_proxies.clone(),
            acme_http: tls.as_ref().map(|t| t.certs.clone()),
            parked: AtomicUsize::new(0),
        });
        let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let per_ip = listener::PerIp::new(config.max_connections_per_ip);
        let shutdown = CancellationToken::new();
        let stopped = CancellationToken::new();
        let workers = per_worker.len().max(tls_per_worker.len());
        let running = Arc::new(AtomicUsize::new(workers));
        let cut = Arc::new(drain::CutCounter::default());
        let mut per_worker = per_worker.into_iter();
        let mut tls_per_worker = tls_per_worker.into_iter();
        let cpus = affinity::plan(workers, &affinity::allowed_cpus());
        for i in 0..workers {
            let cpu = cpus.as_ref().map(|cpus| cpus[i]);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ProxyError::Worker)?;
            let worker = listener::Worker {
                listeners: per_worker.next().unwrap_or_default(),
                tls_listeners: tls_per_worker.next().unwrap_or_default(),
                tls: serving.clone(),
                forwarder: forwarder.clone(),
                config: config.clone(),
                connections: connections.clone(),
                per_ip: per_ip.clone(),
                shutdown: shutdown.clone(),
                cut: cut.clone(),
            };
            let (running, stopped, cut) = (running.clone(), stopped.clone(), cut.clone());
            let drain_timeout = config.drain_timeout;
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        affinity::pin_current_thread(cpu);
                    }
                    stats::set_worker(i);
                    runtime.block_on(worker.run());
                    // Dropping the runtime closes whatever outlived the drain.
                    drop(runtime);
                    if running.fetch_sub(1, Ordering::SeqCst) == 1 {
                        cut.report(drain_timeout);
                        stopped.cancel();
                    }
                })
                .map_err(ProxyError::Worker)?;
        }
        Ok(Proxy {
            forwarder,
            local_addrs,
            tls_addrs,
            certs: tls.map(|t| t.certs),
            shutdown,
            stopped,
            cut,
            per_ip,
            listeners: Mutex::new(Some(handles)),
        })
    }

    /// New handles on every worker's listening sockets, grouped per worker,
    /// for a successor process to accept on (see
    /// [`Proxy::from_worker_listeners`]). `None` once shutdown has begun.
    pub fn listeners(&self) -> Option<std::io::Result<WorkerListeners>> {
        let handles = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        handles.as_ref().map(WorkerListeners::try_clone)
    }

    /// The addresses being served, in the order given (ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The TLS addresses being served, in the order given (ports resolved).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The certificates of the TLS listeners, if there are any.
    pub fn certs(&self) -> Option<&CertStore> {
        self.certs.as_ref()
    }

    /// Reload the TLS certificates from `sources` in one swap (see
    /// [`CertStore::reload`]): one report per source. Without TLS, none.
    pub fn reload_tls(&self, sources: &[CertSource]) -> Vec<CertReport> {
        self.certs.as_ref().map_or_else(Vec::new, |c| c.reload(sources))
    }

    /// Replace the whole route table at once: the flip.
    pub fn swap(&self, table: RouteTable) {
        self.forwarder.swap(table);
    }

    /// The table requests are being routed with now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.forwarder.table.load_full()
    }

    /// Stop accepting and let open requests finish within the drain timeout.
    /// A listening socket closes when the last handle on it does: at once
    /// for sockets only this proxy held (the accept loops stop), never for
    /// those a successor or systemd also holds, whose queued connections
    /// wait for them.
    pub fn shutdown(&self) {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.shutdown.cancel();
    }

    /// Resolves when every worker has stopped.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    /// Client connections open now (upgraded ones included), across workers.
    pub fn open_connections(&self) -> usize {
        self.per_ip.total()
    }

    /// Of those, HTTP/1 connections parked between requests: idle for a
    /// second or more, waiting for their next request with no buffers held.
    pub fn parked_connections(&self) -> usize {
        self.forwarder.parked.load(Ordering::Relaxed)
    }

    /// What the shutdown drain had to cut when its timeout passed (also
    /// logged, as one line, when the last worker stops); final once
    /// [`Proxy::stopped`] has resolved.
    pub fn drain_cut(&self) -> DrainCut {
        self.cut.get()
    }
}

fn worker_count(config: &ProxyConfig) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Bind each of `addrs` once per worker (`SO_REUSEPORT`).
fn bind_all(addrs: &[SocketAddr], workers: usize) -> Result<Vec<Vec<std::net::TcpListener>>, ProxyError> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        // SO_REUSEPORT would let us share a port some other process
        // holds the same way; a plain bind first says if it is taken.
        if addr.port() != 0 {
            std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr: *addr, source })?;
        }
        // Bind once to learn the real address (port 0 picks one), then
        // the other workers bind that same address.
        let first = listener::bind_reuseport(*addr)?;
        let bound = first
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr: *addr, source })?;
        per_worker[0].push(first);
        for listeners in per_worker.iter_mut().skip(1) {
            listeners.push(listener::bind_reuseport(bound)?);
        }
    }
    Ok(per_worker)
}

/// Give every worker its own handle on each of `listeners`.
fn share_all(
    listeners: &[std::net::TcpListener],
    workers: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, ProxyError> {
    let mut per_worker = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut mine = Vec::with_capacity(listeners.len());
        for l in listeners {
            l.set_nonblocking(true).map_err(ProxyError::Worker)?;
            mine.push(l.try_clone().map_err(ProxyError::Worker)?);
        }
        per_worker.push(mine);
    }
    Ok(per_worker)
}
