//! Which HTTP a client connection speaks, and the hyper server that serves
//! it until it closes or is told to close.
//!
//! hyper-util's auto builder finds out by reading the first 24 bytes and
//! replaying them to the HTTP/1 server, which then finds less than its 8 KiB
//! free and doubles its read buffer to 16 KiB for the connection's life, and
//! spends ~600 instructions per request on the replay. So the protocol is
//! decided before hyper sees the connection: on TLS by ALPN; on a plain
//! connection by peeking (not reading) its first bytes, where anything but
//! `PRI` (the start of the HTTP/2 preface, a method no HTTP/1 request has) is
//! HTTP/1. Only when too few bytes have arrived to tell (`P`, `PR`) does the
//! auto builder decide, as before. A connection that has sent nothing yet
//! holds no hyper buffer at all.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::forward::{ClientConn, Close};
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

    /// The protocol a TLS handshake agreed on: `h2`, `http/1.1`, or none
    /// (a client without ALPN; the auto builder decides).
    pub(crate) fn of_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Unsure,
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
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
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

    /// Serve one client connection speaking `protocol` until it closes or
    /// is told to close ([`ClientConn::close`]).
    pub(crate) async fn serve<I>(&self, stream: I, protocol: Protocol, client: Arc<ClientConn>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = {
            let client = client.clone();
            service_fn(move |req| {
                let client = client.clone();
                async move { Ok::<_, std::convert::Infallible>(client.serve(req).await) }
            })
        };
        let io = TokioIo::new(stream);
        match protocol {
            Protocol::Http1 => {
                let conn = self.http1.serve_connection(io, service).with_upgrades();
                drive(conn, &client, |c| c.graceful_shutdown()).await
            }
            Protocol::Http2 => {
                let conn = self.http2.serve_connection(io, service);
                drive(conn, &client, |c| c.graceful_shutdown()).await
            }
            Protocol::Unsure => {
                let conn = self.auto.serve_connection_with_upgrades(io, service);
                drive(conn, &client, |c| c.graceful_shutdown()).await
            }
        }
    }
}

/// Poll `conn` to its end, closing it gracefully (`shut`) or dropping it as
/// `client`'s close switch says; the sweeper and shutdown wake this task
/// when they flip it.
async fn drive<C: Future>(conn: C, client: &ClientConn, mut shut: impl FnMut(Pin<&mut C>)) {
    let mut conn = pin!(conn);
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
        assert_eq!(Protocol::of_alpn(None), Protocol::Unsure);
    }
}
