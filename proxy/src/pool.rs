//! Keep-alive connections to upstreams, one pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime, so its pool lives in a
//! thread-local: taking and returning a connection is a `Vec` pop/push with
//! no lock and no atomic. Connections are [`client::Conn`]s (our own HTTP/1.1
//! client) keyed by upstream address; a connection goes back to the pool
//! when the response body it carried and the request body have both ended.
//!
//! Idle connections expire after the upstream idle timeout, which should be
//! shorter than the upstream's own keep-alive timeout: otherwise the upstream
//! may close a connection just as a request is sent on it. They are not
//! reused past it, and the worker's sweeper closes them ([`expire_idle`]),
//! so a burst's connections (and their descriptors and buffers) do not
//! outlive it. A connection the upstream closed, or that has unread bytes,
//! is dropped when it is seen, not handed out.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub(crate) use crate::client::Conn;

/// Most idle connections kept per upstream and worker.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// The idle connections to one upstream, each with the time it became idle,
/// the most recent last.
type IdleConns = Vec<(Conn, Instant)>;

thread_local! {
    /// Idle connections by upstream. A worker talks to a handful of
    /// upstreams (two colors of a few services), so a linear scan beats hashing.
    static IDLE: RefCell<Vec<(SocketAddr, IdleConns)>> = const { RefCell::new(Vec::new()) };
}

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Refused or unreachable.
    Failed,
    /// No answer within the connect timeout.
    TimedOut,
}

/// Take an idle connection to `addr` that is still open and has been idle
/// less than `max_idle`, if any.
pub(crate) fn take_idle(addr: SocketAddr, max_idle: Duration) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let conns = &mut idle.iter_mut().find(|(a, _)| *a == addr)?.1;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() >= max_idle {
                // The others became idle earlier still.
                conns.clear();
                return None;
            }
            if conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    })
}

/// Close this worker's idle connections that have been idle `max_idle` or
/// more, or were closed by their upstream, and forget upstreams left with
/// none. Called by the worker's sweeper a few times a second.
pub(crate) fn expire_idle(max_idle: Duration) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain_mut(|(_, conns)| {
            // Oldest first: the expired ones are a prefix.
            let expired = conns
                .iter()
                .take_while(|(_, since)| since.elapsed() >= max_idle)
                .count();
            conns.drain(..expired);
            conns.retain(|(c, _)| c.is_reusable());
            if conns.is_empty() {
                return false;
            }
            conns.shrink_to(conns.len() * 2);
            true
        });
    });
}

/// Put a connection back for reuse by later requests on this worker.
pub(crate) fn put_back(conn: Conn) {
    let addr = conn.addr();
    let now = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        match idle.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, conns)) if conns.len() < MAX_IDLE_PER_UPSTREAM => conns.push((conn, now)),
            Some(_) => {}
            // A new upstream (a deploy); those left with no connection
            // (stopped colors) are forgotten by `expire_idle`.
            None => idle.push((addr, vec![(conn, now)])),
        }
    });
}

/// Open a new connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return Err(ConnectError::Failed),
        Err(_) => return Err(ConnectError::TimedOut),
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream, addr))
}
