//! Idle HTTP/1 connections parked outside hyper.
//!
//! hyper holds a connection's buffers for as long as the connection lives,
//! the wait for its next request included: 8 KiB to read into, 8 KiB for
//! response heads, the slot of the request's future, a header map and a
//! timer. That made an idle keep-alive connection cost ~17 KiB, where nginx
//! and HAProxy free their buffers between requests.
//!
//! So an HTTP/1 connection's stream reaches hyper wrapped in a [`Parkable`].
//! The worker's sweeper asks a connection on which no request has started
//! for [`PARK_AFTER`] to park ([`crate::forward::ClientConn::request_park`]). The next read
//! hyper makes that would wait, while nothing is in flight (every response
//! has ended, nothing unread since, nothing unwritten), then reads an end of
//! stream: hyper ends the connection as if the client had closed it, and the
//! `Parkable` keeps the socket open (its shutdown does nothing). The
//! serving task in `protocol.rs` then ends, and hands the bare socket to a
//! task of its own (`Parked`, a few hundred bytes) that waits for the
//! client's next bytes and starts a new serving task, with a new hyper
//! connection, for them. Nothing the client sent is lost: the end of stream
//! is only ever read where hyper would have waited with an empty buffer.
//!
//! A busy connection never parks (each request clears the sweeper's ask),
//! so this costs the hot path two relaxed atomic adds per request (request
//! started, [`Counted`] response ended) and a relaxed load or two per read
//! and write.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stall::Tracked;

/// How long no request may start on a connection before it is asked to park.
/// The sweeper looks at least this often, so a quiet connection parks within
/// twice this.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(250);

/// A connection's requests as parking sees them, shared by its
/// `ClientConn`, its stream ([`Parkable`]) and its responses ([`Counted`]).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests started.
    requests: AtomicU64,
    /// HTTP/1 responses whose body hyper is done with (sent or dropped).
    responses: AtomicU64,
    /// Asked by the sweeper, cleared by the next request.
    park: AtomicBool,
    /// The connection became a tunnel (`101`): its stream is the tunnel's
    /// now, and never parks.
    upgraded: AtomicBool,
    /// Parked now: hyper is gone and the socket waits for the client.
    parked: AtomicBool,
}

impl Activity {
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn responses(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
    }

    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.park.load(Ordering::Relaxed) {
            self.park.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn response_ended(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection answered `101`: once hyper has sent it, the stream
    /// carries a tunnel, which must never read a parking end of stream.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Ask the connection to park; true if it was not asked already.
    pub(crate) fn ask_park(&self) -> bool {
        !self.park.swap(true, Ordering::Relaxed)
    }

    fn park_requested(&self) -> bool {
        self.park.load(Ordering::Relaxed)
    }

    /// Note the connection parked (`true`) or no longer parked; true if
    /// that changed anything.
    pub(crate) fn set_parked(&self, parked: bool) -> bool {
        self.parked.swap(parked, Ordering::Relaxed) != parked
    }

    /// An HTTP/1 connection between requests: every response it started has
    /// ended, and it is no tunnel. Its next request head is due within the
    /// header read timeout, which the worker's sweeper enforces (not hyper,
    /// whose timer would cost a timer entry per request).
    pub(crate) fn awaiting_request(&self) -> bool {
        self.requests() == self.responses() && !self.upgraded.load(Ordering::Relaxed)
    }
}

impl AsRef<Activity> for Activity {
    fn as_ref(&self) -> &Activity {
        self
    }
}

/// A stream a parked connection can wait on, with no buffer, until the client
/// sends again (or closes).
pub(crate) trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for Tracked {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Tracked::poll_read_ready(self, cx)
    }
}

/// A TLS stream under hyper has read every whole record there was (its read
/// would wait), so new bytes on the socket are the next thing to read.
impl<S: ReadReady> ReadReady for tokio_rustls::server::TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// An HTTP/1 connection's stream as hyper sees it; see the module docs.
#[derive(Debug)]
pub(crate) struct Parkable<I> {
    io: I,
    activity: Arc<Activity>,
    /// Responses ended when bytes were last read. Bytes read after
    /// the last response ended may be part of a request head that hyper
    /// holds, so the connection is not idle.
    read_at: u64,
    /// hyper's last write or flush could not finish: it holds bytes.
    write_blocked: bool,
    /// hyper was given the end of stream to park it.
    parked: bool,
}

impl<I: AsyncRead + AsyncWrite + ReadReady + Unpin> Parkable<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> Self {
        let read_at = activity.responses();
        Parkable {
            io,
            activity,
            read_at,
            write_blocked: false,
            parked: false,
        }
    }

    /// Whether hyper's connection ended because this stream parked it.
    pub(crate) fn parked(&self) -> bool {
        self.parked
    }

    /// Wait, holding nothing but the socket, until the client sends its
    /// next bytes (or closes); then the stream is ready for a new hyper
    /// connection.
    pub(crate) fn poll_wait_for_client(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.io.poll_read_ready(cx))?;
        self.parked = false;
        self.read_at = self.activity.responses();
        Poll::Ready(Ok(()))
    }

    /// hyper is between requests: nothing in flight, unread or unwritten,
    /// and no tunnel.
    fn idle(&self) -> bool {
        !self.write_blocked && self.read_at < self.activity.responses() && self.activity.awaiting_request()
    }

    fn note_write<T>(&mut self, cx: &mut Context<'_>, poll: Poll<T>) -> Poll<T> {
        self.write_blocked = poll.is_pending();
        if !self.write_blocked && self.activity.park_requested() && self.idle() {
            // hyper looked for the next request before this write got the
            // last of a response out: have it look again, to park.
            cx.waker().wake_by_ref();
        }
        poll
    }
}

impl<I: AsyncRead + AsyncWrite + ReadReady + Unpin> AsyncRead for Parkable<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.read_at = this.activity.responses();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.activity.park_requested() && this.idle() => {
                this.parked = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + ReadReady + Unpin> AsyncWrite for Parkable<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.note_write(cx, poll)
    }

    /// hyper shuts the stream down when its connection ends; a parked one
    /// stays open for the next request.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The body of an HTTP/1 response: when hyper is done with it (sent, or
/// dropped), the response counts as ended ([`Activity::response_ended`]).
/// `C` is what holds the connection's [`Activity`] (its `ClientConn`).
#[derive(Debug)]
pub(crate) struct Counted<B, C: AsRef<Activity>> {
    body: B,
    conn: Arc<C>,
}

impl<B, C: AsRef<Activity>> Counted<B, C> {
    pub(crate) fn new(body: B, conn: Arc<C>) -> Self {
        Counted { body, conn }
    }
}

impl<B, C: AsRef<Activity>> Drop for Counted<B, C> {
    fn drop(&mut self) {
        (*self.conn).as_ref().response_ended();
    }
}

impl<B: Body<Data = Bytes> + Unpin, C: AsRef<Activity>> Body for Counted<B, C> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::Response;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// An in-memory stream (never "ready" to read again: parked, it would
    /// wait for good).
    struct Pipe(DuplexStream);

    impl ReadReady for Pipe {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncRead for Pipe {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    /// The body's end reaches hyper long before its last bytes reach the
    /// client: asked to park meanwhile, the connection waits until they
    /// are written, then parks without closing the stream.
    #[tokio::test]
    async fn a_response_hyper_has_not_finished_writing_is_never_parked() {
        const LEN: usize = 256 * 1024;
        let activity = Arc::new(Activity::default());
        let (ours, mut peer) = tokio::io::duplex(1024);
        let stream = Parkable::new(Pipe(ours), activity.clone());
        let service = {
            let activity = activity.clone();
            service_fn(move |_req| {
                activity.request_started();
                let body = Full::new(Bytes::from(vec![b'x'; LEN]));
                let resp = Response::new(Counted::new(body, activity.clone()));
                async move { Ok::<_, Infallible>(resp) }
            })
        };
        // As the serving task does: run hyper's connection, then take the stream back.
        let conn = tokio::spawn(async move {
            let mut conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            (&mut conn)
                .await
                .map(|()| conn.into_parts().expect("not upgraded").io.into_inner())
        });
        peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        // hyper has the whole body and is stuck writing it.
        while activity.responses() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(activity.ask_park());

        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let whole = |got: &[u8]| {
            let head = got.windows(4).position(|w| w == b"\r\n\r\n")?;
            Some(head + 4 + LEN)
        };
        while whole(&got).is_none_or(|len| got.len() < len) {
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(Some(got.len()), whole(&got), "the whole response, nothing more");
        // Written out, the connection parks: hyper's connection ends, the
        // stream stays open (no end of stream for the client).
        let stream = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("never parked")
            .unwrap()
            .unwrap();
        assert!(stream.parked());
        let more = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await;
        assert!(more.is_err(), "the parked stream was shut down: {more:?}");
    }
}
