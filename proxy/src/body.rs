//! Bodies on their way through the proxy.
//!
//! [`ProxyBody`], the body of every response the proxy sends: either an
//! upstream's body, streamed frame by frame, or a short plain-text message of
//! the proxy's own. The upstream variant carries the in-flight guard and the
//! upstream connection, so the request counts as in flight until its body
//! has been sent, and the connection goes back to the pool once both bodies
//! have ended.
//!
//! [`RequestBody`], the client's request body on its way upstream. When
//! there is one, an [`Upload`] records whether it ended, failed (a malformed
//! chunk from the client: 400, not 502) or is still coming, so that the
//! response timeout starts only once the upload is done. A request without a
//! body allocates nothing for this. A body is held to [`UploadLimits`]: a
//! wait for the client's next bytes has a bound (idle), and so has its
//! average pace over the time spent waiting on the client (minimum rate,
//! after a grace): a client that trickles a few bytes every few seconds, the
//! slow-body attack, gets 408 however regularly it trickles.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client;
use crate::pool;
use crate::upstream::InFlight;

/// The error of a body on its way through: the upstream's answer, or the
/// client's upload, broke off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: streamed from an upstream, or the proxy's own text.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Upstream { body: client::Body, _in_flight: InFlight },
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

    /// An upstream body; its connection returns to the pool when it and
    /// the request's body have ended.
    pub(crate) fn upstream(body: client::Body, in_flight: InFlight) -> Self {
        let mut this = ProxyBody {
            kind: Kind::Upstream {
                body,
                _in_flight: in_flight,
            },
        };
        this.release_if_ended();
        this
    }

    fn release_if_ended(&mut self) {
        if let Kind::Upstream { body, .. } = &mut self.kind {
            // hyper stops polling once `is_end_stream` is true, so the end
            // is seen here, with the last frame, not with a final `None`.
            if let Some(conn) = body.take_reusable() {
                pool::put_back(conn);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Text(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, .. } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(_)) | None) = frame {
                    this.release_if_ended();
                }
                frame.map_err(Into::into)
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

/// How a request body's upload stands; shared by the body being sent and the
/// request waiting for its response.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Upload {
    /// Still sending.
    pub(crate) const SENDING: u8 = 0;
    /// The whole body was sent.
    pub(crate) const ENDED: u8 = 1;
    /// The client's body failed: malformed framing, or the client went away.
    pub(crate) const CLIENT_FAILED: u8 = 2;
    /// The proxy stopped sending it (the upstream connection failed, or
    /// the answer ended first).
    pub(crate) const ABANDONED: u8 = 3;
    /// The client sent nothing of its body for the body read timeout.
    pub(crate) const CLIENT_TIMED_OUT: u8 = 4;

    /// Where the upload stands.
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn finish(&self, state: u8) {
        if self
            .state
            .compare_exchange(Self::SENDING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Resolves once the upload is no longer sending.
    pub(crate) async fn finished(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.state() == Self::SENDING {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// How slowly a client may send a request body. Only time spent waiting on
/// the client counts: while the upstream is slow to read, nothing is asked
/// of the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadLimits {
    /// Longest wait for the client's next bytes.
    pub(crate) idle: Duration,
    /// Bytes per second of waiting the body must average once `grace` of
    /// waiting has passed; 0: no minimum.
    pub(crate) min_rate: u64,
    /// Waiting that does not count against `min_rate`.
    pub(crate) grace: Duration,
}

/// The client's request body on its way upstream (see [`Upload`]). While
/// it waits on the client, a body that breaks its [`UploadLimits`] fails
/// (slow-body attacks); time the upstream takes to read does not count.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    upload: Option<Arc<Upload>>,
    read: Option<ReadTimer>,
}

#[derive(Debug)]
struct ReadTimer {
    limits: UploadLimits,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the wait for the frame now awaited began (`None`: not waiting,
    /// the deadline does not count).
    waiting_since: Option<Instant>,
    /// Time spent waiting on the client for the frames received so far.
    waited: Duration,
    /// Body bytes received so far.
    received: u64,
    /// The armed deadline is the minimum rate's, not the idle one.
    pace_deadline: bool,
}

impl ReadTimer {
    /// Start waiting for the client's next frame: the deadline is the
    /// earlier of the idle bound and the moment the average pace would fall
    /// below the minimum (`grace` plus one second per `min_rate` bytes
    /// received, of waiting in all).
    fn arm(&mut self, now: Instant) {
        let idle = now + self.limits.idle;
        let mut deadline = idle;
        if self.limits.min_rate > 0 {
            let nanos = u128::from(self.received) * 1_000_000_000 / u128::from(self.limits.min_rate);
            let earned = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            let left = self.limits.grace.saturating_add(earned).saturating_sub(self.waited);
            deadline = now.checked_add(left).map_or(idle, |d| d.min(idle));
        }
        self.pace_deadline = deadline < idle;
        self.sleep.as_mut().reset(deadline);
        self.waiting_since = Some(now);
    }

    /// A frame of `len` data bytes arrived.
    fn received(&mut self, len: usize) {
        let since = self.waiting_since.take();
        if self.limits.min_rate > 0 {
            if let Some(since) = since {
                self.waited += Instant::now().saturating_duration_since(since);
            }
            self.received = self.received.saturating_add(len as u64);
        }
    }

    fn error(&self) -> BodyTimeout {
        match self.pace_deadline {
            true => BodyTimeout::TooSlow(self.limits.min_rate),
            false => BodyTimeout::Idle(self.limits.idle),
        }
    }
}

/// The client's request body broke its [`UploadLimits`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyTimeout {
    /// Nothing arrived for the idle bound.
    #[error("the client sent nothing of its request body for {0:?}")]
    Idle(Duration),
    /// The average pace fell below the minimum.
    #[error("the client sent its request body slower than {0} bytes/s")]
    TooSlow(u64),
}

impl RequestBody {
    /// Wrap the client's body; the [`Upload`] is there when it has content.
    /// `limits` bound how slowly the client may send it.
    pub(crate) fn new(body: Incoming, limits: UploadLimits) -> (Self, Option<Arc<Upload>>) {
        if body.is_end_stream() {
            return (RequestBody::empty(), None);
        }
        let upload = Arc::new(Upload::default());
        let body = RequestBody {
            inner: Some(body),
            upload: Some(upload.clone()),
            read: Some(ReadTimer {
                limits,
                sleep: Box::pin(tokio::time::sleep(limits.idle)),
                waiting_since: None,
                waited: Duration::ZERO,
                received: 0,
                pace_deadline: false,
            }),
        };
        (body, Some(upload))
    }

    /// No body at all.
    fn empty() -> Self {
        RequestBody {
            inner: None,
            upload: None,
            read: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(read) = this.read.as_mut().filter(|r| r.waiting_since.is_none()) {
            read.arm(Instant::now());
        }
        let frame = Pin::new(&mut *body).poll_frame(cx);
        let upload = this.upload.as_deref();
        match &frame {
            Poll::Ready(Some(Err(_))) => upload.inspect(|u| u.finish(Upload::CLIENT_FAILED)),
            Poll::Ready(None) => upload.inspect(|u| u.finish(Upload::ENDED)),
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => upload.inspect(|u| u.finish(Upload::ENDED)),
            _ => None,
        };
        match frame {
            Poll::Ready(frame) => {
                if let Some(read) = this.read.as_mut() {
                    let len = match &frame {
                        Some(Ok(f)) => f.data_ref().map_or(0, Bytes::len),
                        _ => 0,
                    };
                    read.received(len);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(read) = this.read.as_mut() else {
                    return Poll::Pending;
                };
                if read.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some(upload) = upload {
                    upload.finish(Upload::CLIENT_TIMED_OUT);
                }
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(read.error()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(upload) = &self.upload {
            upload.finish(Upload::ABANDONED);
        }
    }
}
