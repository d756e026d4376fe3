//! Which HTTP a client connection speaks, and the hyper server that serves
//! it until it closes or is told to close.
//!
//! hyper-util's auto builder finds out by reading the first 24 bytes and
//! replaying them to the HTTP/1 server, which then finds less than its 8 KiB
//! free and doubles its read buffer to 16 KiB for the connection's life, and
//! spends ~600 instructions per request on the replay. So the protocol is
//! decided before hyper sees the connection: on TLS by ALPN (a client that
//! offers none speaks HTTP/1.1, as with nginx and HAProxy: HTTP/2 over TLS
//! must be negotiated, RFC 9113 §3.3); on a plain connection by peeking
//! (not reading) its first bytes, where anything but `PRI` (the start of the
//! HTTP/2 preface, a method no HTTP/1 request has) is HTTP/1. Only when too few bytes have arrived to tell (`P`, `PR`) does the
//! auto builder decide, as before. A connection that has sent nothing yet
//! holds no hyper buffer at all.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::forward::{ClientConn, Close};
use crate::park::{Counted, Parkable, ReadReady};
use crate::ProxyConfig;

/// What a connection speaks, as far as its first bytes or ALPN tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
    /// Too few bytes to tell: the auto builder reads on and decides.
    Unsure,
}

/// The first three bytes of the HTTP/2 connection preface.
const PREFACE_START: &[u8] = b"PRI";

impl Protocol {
    /// The protocol of a plain connection whose first bytes are `first`
    /// (at least one).
    pub(crate) fn sniff(first: &[u8]) -> Protocol {
        let n = first.len().min(PREFACE_START.len());
        if first[..n] != PREFACE_START[..n] {
            Protocol::Http1
        } else if n == PREFACE_START.len() {
            Protocol::Http2
        } else {
            Protocol::Unsure
        }
    }

    /// The protocol a TLS handshake agreed on: `h2`, or `http/1.1`. A
    /// client that offered no ALPN (wrk, old clients) speaks HTTP/1.1:
    /// HTTP/2 over TLS is only ever negotiated (RFC 9113 §3.3).
    pub(crate) fn of_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        }
    }
}

/// One worker's hyper servers, configured once.
pub(crate) struct Servers {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl Servers {
    pub(crate) fn new(config: &ProxyConfig) -> Arc<Servers> {
        let max_buf = config.max_header_bytes.max(8192);
        // hyper's header read timer is off for HTTP/1 (its default is 30 s):
        // the worker's sweeper applies `header_read_timeout` between requests
        // instead (`Activity::awaiting_request`), without a timer entry made
        // and dropped for every request. The auto builder, which serves the
        // rare connection whose protocol it decides, keeps hyper's timer.
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(max_buf);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32);
        Arc::new(Servers { http1, http2, auto })
    }

    /// Serve one client connection speaking `protocol` until it closes, is
    /// told to close ([`ClientConn::close`]), or parks. Each hyper
    /// connection is boxed: the task holds a pointer, not hyper's state.
    pub(crate) async fn serve<I>(self: Arc<Self>, stream: I, protocol: Protocol, client: Arc<ClientConn>)
    where
        I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    {
        // HTTP/2 and undecided connections: answered by `client`.
        let service = || {
            let client = client.clone();
            service_fn(move |req| {
                let client = client.clone();
                client.request_started();
                async move { Ok::<_, Infallible>(client.serve(req).await) }
            })
        };
        match protocol {
            Protocol::Http1 => {
                let stream = Parkable::new(stream, client.activity());
                self.serve_http1(stream, client).await
            }
            Protocol::Http2 => {
                let mut conn = Box::pin(self.http2.serve_connection(TokioIo::new(stream), service()));
                drive(conn.as_mut(), &client, |c| c.graceful_shutdown()).await
            }
            Protocol::Unsure => {
                let io = TokioIo::new(stream);
                let mut conn = Box::pin(self.auto.serve_connection_with_upgrades(io, service()));
                drive(conn.as_mut(), &client, |c| c.graceful_shutdown()).await
            }
        }
    }

    /// HTTP/1: one hyper connection, until the connection closes or parks
    /// ([`crate::park`]). A parked connection leaves this task and waits in
    /// a small one of its own ([`Parked`]), which brings it back here, to a
    /// new task and a new hyper connection, when the client sends again.
    async fn serve_http1<I>(self: Arc<Self>, stream: Parkable<I>, client: Arc<ClientConn>)
    where
        I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    {
        let service = {
            let client = client.clone();
            service_fn(move |req| {
                let client = client.clone();
                client.request_started();
                async move {
                    let resp = client.serve(req).await;
                    Ok::<_, Infallible>(resp.map(|body| Counted::new(body, client)))
                }
            })
        };
        let mut conn = Box::pin(
            self.http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades(),
        );
        drive(conn.as_mut(), &client, |c| c.graceful_shutdown()).await;
        if client.close_requested() >= Close::Graceful {
            return;
        }
        // An upgraded connection belongs to its tunnel now.
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            return;
        };
        let stream = parts.io.into_inner();
        if stream.parked() && parts.read_buf.is_empty() {
            client.spawn(Parked::new(stream, client.clone(), self));
        }
    }
}

/// A parked HTTP/1 connection, as a task of its own: the bare stream and
/// its `ClientConn`, a few hundred bytes where the serving task takes
/// about a kilobyte more. It ends when the client sends again (handing the
/// stream to a new serving task), closes, or the connection is told to
/// close: at shutdown, to make room, or by the sweeper once it has been
/// parked for `header_read_timeout`.
struct Parked<I> {
    servers: Arc<Servers>,
    /// Taken when the client sends again.
    conn: Option<(Parkable<I>, Arc<ClientConn>)>,
}

impl<I> Parked<I> {
    fn new(stream: Parkable<I>, client: Arc<ClientConn>, servers: Arc<Servers>) -> Self {
        client.set_parked(true);
        Parked {
            servers,
            conn: Some((stream, client)),
        }
    }
}

impl<I> Future for Parked<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some((stream, client)) = &mut this.conn else {
            return Poll::Ready(());
        };
        client.register(cx.waker());
        if client.close_requested() >= Close::Graceful {
            return Poll::Ready(());
        }
        if let Ok(()) = std::task::ready!(stream.poll_wait_for_client(cx)) {
            if let Some((stream, client)) = this.conn.take() {
                client.set_parked(false);
                client.clone().spawn(this.servers.clone().serve_http1(stream, client));
            }
        }
        // Otherwise the socket failed: dropped, it closes.
        Poll::Ready(())
    }
}

impl<I> Drop for Parked<I> {
    fn drop(&mut self) {
        if let Some((_, client)) = &self.conn {
            client.set_parked(false);
        }
    }
}

/// Poll `conn` to its end, closing it gracefully (`shut`) or dropping it as
/// `client`'s close switch says; the sweeper and shutdown wake this task
/// when they flip it.
async fn drive<C: Future>(mut conn: Pin<&mut C>, client: &ClientConn, mut shut: impl FnMut(Pin<&mut C>)) {
    let mut closing = false;
    std::future::poll_fn(|cx| {
        client.register(cx.waker());
        match client.close_requested() {
            Close::Now => return Poll::Ready(()),
            Close::Graceful if !closing => {
                shut(conn.as_mut());
                closing = true;
            }
            _ => {}
        }
        conn.as_mut().poll(cx).map(|_| ())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_preface_start_is_http2_and_a_partial_one_is_left_to_hyper() {
        for http1 in [
            &b"GET / HTTP/1.1"[..],
            b"POST",
            b"PUT",
            b"PATCH",
            b"Px",
            b"G",
            b"\x16\x03",
        ] {
            assert_eq!(Protocol::sniff(http1), Protocol::Http1, "{http1:?}");
        }
        assert_eq!(Protocol::sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Protocol::Http2);
        assert_eq!(Protocol::sniff(b"PRI"), Protocol::Http2);
        assert_eq!(Protocol::sniff(b"P"), Protocol::Unsure);
        assert_eq!(Protocol::sniff(b"PR"), Protocol::Unsure);
    }

    #[test]
    fn alpn_decides_on_tls() {
        assert_eq!(Protocol::of_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::of_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::of_alpn(None), Protocol::Http1);
    }
}
