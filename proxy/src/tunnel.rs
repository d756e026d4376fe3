//! Upgraded connections (WebSocket and others): bytes copied both ways until
//! either side closes, a drain of the upstream times out (its cut token), or
//! the worker's shutdown grace period ends (its close token).
//!
//! A stopped WebSocket is ended as the protocol wants, not with a bare EOF:
//! each direction finishes the frame it is in the middle of, then each side
//! gets a Close frame (1001, "going away": browsers and clients reconnect)
//! and a FIN. Any other protocol gets a FIN both ways. Either way the
//! stopping takes at most [`CLOSE_GRACE`].

use std::future::Future;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::client::Upgraded;
use crate::listener::Slots;
use crate::upstream::InFlight;

/// How long a stopped tunnel may take to finish a frame and say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Close frame, code 1001, as a server sends it (unmasked): to the client.
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// The same as a client sends it (masked): to the upstream.
const CLOSE_TO_UPSTREAM: [u8; 8] = [0x88, 0x82, 0x5A, 0x3C, 0x96, 0x0F, 0x03 ^ 0x5A, 0xE9 ^ 0x3C];

/// Run one tunnel until it ends or one of `stop` is cancelled. Until then
/// it counts as in flight to its upstream and holds the client
/// connection's slots.
pub(crate) async fn run(
    client: OnUpgrade,
    mut upstream: Upgraded,
    websocket: bool,
    stop: [CancellationToken; 2],
    _held: (InFlight, Option<Slots>),
) {
    let Ok(client) = client.await else {
        return;
    };
    let mut client = TokioIo::new(client);
    let stopped = || {
        let [a, b] = stop.clone();
        async move {
            tokio::select! {
                _ = a.cancelled() => {}
                _ = b.cancelled() => {}
            }
        }
    };
    if !websocket {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
            _ = stopped() => {}
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = tokio::join!(client.shutdown(), upstream.shutdown());
        })
        .await;
        return;
    }
    let (client_rx, client_tx) = tokio::io::split(client);
    let (upstream_rx, upstream_tx) = tokio::io::split(upstream);
    let both = async {
        // A side that ends cleanly half-closes the other (as
        // `copy_bidirectional` does); an error on either ends both.
        tokio::try_join!(
            pump(client_rx, upstream_tx, stopped(), &CLOSE_TO_UPSTREAM),
            pump(upstream_rx, client_tx, stopped(), &CLOSE_TO_CLIENT),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = async { stopped().await; tokio::time::sleep(CLOSE_GRACE).await } => {}
    }
}

/// Copy WebSocket bytes `from` one side `to` the other. Once `stop` fires,
/// finish the frame in progress, send `close_frame`, and end the stream.
async fn pump<R, W>(mut from: R, mut to: W, stop: impl Future<Output = ()>, close_frame: &[u8]) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        if stopping && frames.at_boundary() {
            to.write_all(close_frame).await?;
            return to.shutdown().await;
        }
        let n = if stopping {
            from.read(&mut buf).await?
        } else {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    stopping = true;
                    continue;
                }
                n = from.read(&mut buf) => n?,
            }
        };
        if n == 0 {
            return to.shutdown().await;
        }
        let take = frames.advance(&buf[..n], stopping);
        to.write_all(&buf[..take]).await?;
    }
}

/// Where a byte stream of WebSocket frames (RFC 6455 §5.2) stands.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 14],
    /// Header bytes seen of the frame being read.
    have: usize,
    /// Payload bytes still to come of the current frame.
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Follow `bytes`; returns how many belong before the stop point: all
    /// of them, or with `stop_at_end`, those up to the end of the first
    /// frame that ends in them.
    fn advance(&mut self, bytes: &[u8], stop_at_end: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.payload_left -= take;
            } else {
                self.header[self.have] = bytes[i];
                self.have += 1;
                i += 1;
                if Some(self.have) != self.header_len() {
                    continue;
                }
                self.payload_left = self.payload_len();
                self.have = 0;
            }
            if stop_at_end && self.at_boundary() {
                return i;
            }
        }
        i
    }

    /// The length of the header being read, once its first two bytes are in.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_across_reads() {
        // A masked 5-byte text frame, then an unmasked 300-byte binary one.
        let mut stream = vec![0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2C]);
        stream.extend(std::iter::repeat_n(0u8, 300));
        let mut f = Frames::default();
        for chunk in stream[..stream.len() - 1].chunks(3) {
            assert_eq!(f.advance(chunk, false), chunk.len());
        }
        assert!(!f.at_boundary());
        assert_eq!(f.advance(&stream[stream.len() - 1..], false), 1);
        assert!(f.at_boundary());
    }

    #[test]
    fn stopping_takes_only_the_rest_of_the_current_frame() {
        let mut f = Frames::default();
        assert_eq!(f.advance(&[0x81, 0x03, b'a'], false), 3);
        // The end of this frame and the start of the next.
        assert_eq!(f.advance(&[b'b', b'c', 0x81, 0x01, b'x'], true), 2);
        assert!(f.at_boundary());
        // A 64-bit length.
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(f.advance(&big, true), big.len());
        assert!(!f.at_boundary());
        assert_eq!(f.payload_left, 70_000);
    }
}
