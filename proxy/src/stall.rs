//! Write stalls: a client that stops reading what it asked for (the
//! "slow read" attack, or a dead peer behind a full window).
//!
//! Buffering towards such a client is already bounded: hyper queues at most
//! `max_buf_size` of response per connection and polls the upstream body
//! only when there is room, and the upstream connection reads only what its
//! body's receiver wants. What is not bounded is how long the connection,
//! its buffers and its upstream connection are held. [`Tracked`] wraps the
//! client's socket and notes when a write cannot proceed; the worker's
//! sweeper, which already looks at every connection a few times a second,
//! closes (with a reset, freeing the kernel's send buffer at once) a
//! connection whose write has been stuck for `write_timeout`.
//!
//! Per write this costs one relaxed load of an atomic that only this
//! connection's task writes; only a write that would block (the rare case)
//! stores. No timer is armed per write or per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How writes to one client connection are going, shared between its task
/// (which writes) and the sweeper (which reads).
#[derive(Debug, Default)]
pub(crate) struct WriteProgress {
    /// Stalls so far, times two, plus one while a write is stuck: each stall
    /// has its own value, so the sweeper can tell a stall that lasts from a
    /// new one.
    state: AtomicU64,
    /// Set by the sweeper when it gives up: the socket is reset on close.
    reset: AtomicBool,
}

impl WriteProgress {
    /// The stall under way, if a write is stuck now (a value unique to it).
    pub(crate) fn stall(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Relaxed);
        (state & 1 == 1).then_some(state)
    }

    /// Close the socket with a reset rather than a FIN behind unsent data.
    pub(crate) fn reset_on_close(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }

    #[inline]
    fn blocked(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & 1 == 0 {
            self.state.store(state + 3, Ordering::Relaxed);
        }
    }

    #[inline]
    fn progressed(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & 1 == 1 {
            self.state.store(state - 1, Ordering::Relaxed);
        }
    }
}

/// A client's socket whose stuck writes are noted in a [`WriteProgress`].
#[derive(Debug)]
pub(crate) struct Tracked {
    stream: TcpStream,
    progress: Arc<WriteProgress>,
}

impl Tracked {
    pub(crate) fn new(stream: TcpStream) -> (Self, Arc<WriteProgress>) {
        let progress = Arc::new(WriteProgress::default());
        (
            Tracked {
                stream,
                progress: progress.clone(),
            },
            progress,
        )
    }

    fn note<T>(&self, poll: Poll<T>) -> Poll<T> {
        match poll {
            Poll::Pending => self.progress.blocked(),
            Poll::Ready(_) => self.progress.progressed(),
        }
        poll
    }
}

impl Tracked {
    /// Look at the bytes that have arrived without consuming them.
    pub(crate) fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<usize>> {
        self.stream.poll_peek(cx, buf)
    }

    /// Ready once bytes have arrived (or the client closed), reading none.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.poll_read_ready(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.progress.reset.load(Ordering::Relaxed) {
            // SO_LINGER 0: close sends RST and drops the unsent bytes, which
            // a client that does not read would otherwise pin in the kernel.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stall_is_told_apart_and_progress_ends_it() {
        let p = WriteProgress::default();
        assert_eq!(p.stall(), None);
        p.blocked();
        let first = p.stall().expect("stuck");
        p.blocked();
        assert_eq!(p.stall(), Some(first), "still the same stall");
        p.progressed();
        assert_eq!(p.stall(), None);
        p.blocked();
        let second = p.stall().expect("stuck again");
        assert_ne!(first, second, "a new stall is not the old one");
    }
}
