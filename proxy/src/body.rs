//! The body of every response the proxy sends: either an upstream's body,
//! streamed frame by frame, or a short plain-text message of the proxy's own.
//!
//! The upstream variant carries the in-flight guard and the pooled
//! connection, so the request counts as in flight until its body has been
//! sent, and the connection is reused as soon as the body has ended.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::{self, Conn};
use crate::upstream::InFlight;

/// A response body: streamed from an upstream, or the proxy's own text.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        conn: Option<(SocketAddr, Conn)>,
        _in_flight: InFlight,
    },
    Text(Option<Bytes>),
}

impl ProxyBody {
    /// A short static message.
    pub(crate) fn text(msg: &'static str) -> Self {
        ProxyBody {
            kind: Kind::Text(Some(Bytes::from_static(msg.as_bytes()))),
        }
    }

    /// Bytes of the proxy's own (an ACME challenge answer).
    pub(crate) fn bytes(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Text(Some(bytes)),
        }
    }

    /// An upstream body; `conn` returns to the pool when it ends.
    pub(crate) fn upstream(body: Incoming, conn: Option<(SocketAddr, Conn)>, in_flight: InFlight) -> Self {
        let mut this = ProxyBody {
            kind: Kind::Upstream {
                body,
                conn,
                _in_flight: in_flight,
            },
        };
        this.release_if_ended();
        this
    }

    fn release_if_ended(&mut self) {
        if let Kind::Upstream { body, conn, .. } = &mut self.kind {
            // hyper stops polling once `is_end_stream` is true, so the end
            // can be seen here rather than as a final `None`.
            if body.is_end_stream() {
                if let Some((addr, conn)) = conn.take() {
                    pool::put_back(addr, conn);
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Text(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, conn, .. } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                match &frame {
                    Poll::Ready(Some(Err(_))) => {
                        // A broken body leaves the connection unusable.
                        conn.take();
                    }
                    Poll::Ready(_) => this.release_if_ended(),
                    Poll::Pending => {}
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Text(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Text(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
