//! The upstream hop's HTTP/1.1 client: one connection to an upstream, driven
//! by the task of the request it carries.
//!
//! hyper's client runs each connection in a task of its own and hands it
//! every request over a channel: two task wake-ups, a oneshot and a body
//! channel per request (docs/benchmarks.md, "Upstream hop"). Here the
//! request's own task writes the head, sends the body and reads the answer,
//! and the response body reads straight from the socket.
//!
//! An [`Exchange`] is one request on one [`Conn`]:
//! - its head is serialized into the connection's write buffer, which is
//!   kept, so that a request an upstream lost on a reused connection can be
//!   sent again on a fresh one without a copy of the request;
//! - the request body follows as it came (`Content-Length`) or chunked,
//!   trailers included, while the response is read: an upstream may answer,
//!   and stream its answer, before the upload ends (an echo);
//! - the response head is parsed by `httparse`; `1xx` interim answers are
//!   skipped, and a `101` hands the socket to the tunnel ([`Upgraded`]);
//! - the response body ([`Body`]) is framed as RFC 9112 §6.3 says: none,
//!   `Content-Length`, chunked, or until the upstream closes. Its connection
//!   is reusable once both bodies have ended and the upstream keeps it alive.
//!
//! Only writing may fail quietly: an upstream that answers early may stop
//! reading, so a failed upload ends the upload (the connection is not
//! reused) and the answer is still read. A failed read fails the exchange.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, RequestBody};

/// Largest response head (and trailer section) accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in a response head (hyper's default as well).
const MAX_HEADERS: usize = 100;

/// Header fields a response head is first parsed with room for.
const FEW_HEADERS: usize = 16;

const TOO_MANY_HEADERS: &str = "too many header fields";

/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// What one read asks for at least.
const READ_SIZE: usize = 16 * 1024;

/// A write buffer grown past this by a large head is not kept for the next.
const KEEP_WRITE_BUF: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Writing the first byte of the request failed: the upstream saw
    /// nothing of it, so any request may be sent again elsewhere.
    #[error("the upstream connection was closed before the request was sent")]
    Unsent,
    /// The upstream closed or reset the connection before any byte of an
    /// answer.
    #[error("the upstream closed the connection before answering")]
    Closed,
    /// The answer stopped before its head or its body was complete.
    #[error("the upstream's answer was cut off")]
    Incomplete,
    #[error("the upstream's answer is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
    #[error("reading from the upstream failed: {0}")]
    Io(io::Error),
    /// The client's request body failed (see [`crate::body::Upload`]).
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
}

/// A keep-alive connection to one upstream.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    addr: SocketAddr,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The head of the request in flight.
    write: Vec<u8>,
    /// The response timer, kept from request to request: moving a
    /// registered timer's deadline later is one atomic compare-exchange,
    /// where a timer made for each request is registered and cancelled in
    /// the runtime's wheel every time. While the connection waits in the
    /// pool, its last deadline may pass: that wakes the task of its last
    /// request once, for nothing, and the next request registers it again.
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    pub(crate) fn new(io: TcpStream, addr: SocketAddr) -> Self {
        Conn {
            io,
            addr,
            read: BytesMut::new(),
            write: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    /// The upstream this connection goes to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Can this idle connection carry a request? Not when the upstream
    /// closed it, reset it, or sent something unasked. Costs no system call
    /// unless the socket has become readable since it was last read.
    pub(crate) fn is_reusable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: a close, a reset, stray bytes, or a readiness left
            // over from the last response (then the read would block).
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// The request body on its way out.
#[derive(Debug)]
struct Outgoing {
    body: RequestBody,
    chunked: bool,
    /// Framing and data to write, in order.
    pending: VecDeque<Bytes>,
    /// The body has ended; what is pending is all there is.
    ended: bool,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    Done,
}

/// Where a chunked body stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A header the proxy sets on the upstream hop: it replaces every field of
/// that name the request has (`None`: removes them).
pub(crate) type Replace<'a> = (&'a HeaderName, Option<HeaderValue>);

/// One request on one connection.
#[derive(Debug)]
pub(crate) struct Exchange {
    conn: Conn,
    /// Bytes of the head written so far.
    head_sent: usize,
    /// Boxed: only requests with a body have one, and it is large.
    outgoing: Option<Box<Outgoing>>,
    /// Writing failed: the upload stopped, the connection is not reused.
    broken: bool,
    /// The request is `HEAD`: its answer has no body, whatever it says.
    head_request: bool,
    /// Some byte of an answer has arrived.
    answered: bool,
    framing: Framing,
    keep_alive: bool,
}

impl Exchange {
    /// Start a request on `conn`: the head is serialized now and written,
    /// with the body after it, when the exchange is polled.
    pub(crate) fn new(mut conn: Conn, parts: &request::Parts, replace: &[Replace<'_>], body: RequestBody) -> Self {
        // A body's framing on this hop comes from what the body is, not
        // from a `Content-Length` it arrived with: the two cannot disagree.
        let length = match body.is_end_stream() {
            true => Length::AsIs,
            false => body.size_hint().exact().map_or(Length::Chunked, Length::Exact),
        };
        let outgoing = (length != Length::AsIs).then(|| {
            Box::new(Outgoing {
                chunked: length == Length::Chunked,
                body,
                pending: VecDeque::new(),
                ended: false,
            })
        });
        if conn.write.capacity() > KEEP_WRITE_BUF {
            conn.write = Vec::new();
        }
        encode_head(&mut conn.write, parts, replace, length);
        Exchange {
            conn,
            head_sent: 0,
            outgoing,
            broken: false,
            head_request: parts.method == Method::HEAD,
            answered: false,
            framing: Framing::Done,
            keep_alive: false,
        }
    }

    /// The same request on `fresh`, after this connection lost it before
    /// any answer ([`Error::Closed`] with no body, or [`Error::Unsent`]).
    pub(crate) fn resend_on(self, mut fresh: Conn) -> Self {
        fresh.write = self.conn.write;
        Exchange {
            conn: fresh,
            head_sent: 0,
            broken: false,
            answered: false,
            ..self
        }
    }

    /// Send the request and wait for the final response head (interim `1xx`
    /// answers are skipped). The body keeps going after it, if not done.
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Error>> {
        loop {
            if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
                return Poll::Ready(Err(e));
            }
            if !self.conn.read.is_empty() {
                if let Some(resp) = self.parse_head()? {
                    return Poll::Ready(Ok(resp));
                }
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) if self.answered => return Poll::Ready(Err(Error::Incomplete)),
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => self.answered = true,
                Err(e) if !self.answered && is_reset(&e) => return Poll::Ready(Err(Error::Closed)),
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }

    /// Start the response timer: it runs out `timeout` from now.
    pub(crate) fn start_timer(&mut self, timeout: Duration) {
        self.conn.timer.as_mut().reset(Instant::now() + timeout);
    }

    /// Whether the timer [`Exchange::start_timer`] started has run out.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.conn.timer.as_mut().poll(cx)
    }

    /// The response body, once [`Exchange::poll_head`] gave the head.
    pub(crate) fn into_body(self) -> Body {
        Body { ex: Some(self) }
    }

    /// The upstream side of a tunnel, after a `101`.
    pub(crate) fn into_upgraded(self) -> Upgraded {
        let Conn { io, mut read, .. } = self.conn;
        Upgraded {
            io,
            pre: read.split().freeze(),
        }
    }

    /// Write what can be written of the head and body without waiting.
    /// `Ready(Ok)` once all of it is sent, or writing failed; errors are the
    /// client's body failing, or the very first write failing. Either way
    /// a failed upload is over (`broken`).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.broken {
            return Poll::Ready(Ok(()));
        }
        while self.head_sent < self.conn.write.len() {
            match Pin::new(&mut self.conn.io).poll_write(cx, &self.conn.write[self.head_sent..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => self.head_sent += n,
                Poll::Ready(_) if self.head_sent == 0 => {
                    self.stop_upload();
                    return Poll::Ready(Err(Error::Unsent));
                }
                Poll::Ready(_) => {
                    self.stop_upload();
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let Some(out) = self.outgoing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while let Some(front) = out.pending.front_mut() {
                match Pin::new(&mut self.conn.io).poll_write(cx, front) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        front.advance(n);
                        if front.is_empty() {
                            out.pending.pop_front();
                        }
                    }
                    Poll::Ready(_) => {
                        self.stop_upload();
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            if out.ended {
                self.outgoing = None;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut out.body).poll_frame(cx)) {
                None => {
                    if out.chunked {
                        out.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    out.ended = true;
                }
                Some(Ok(frame)) => out.push(frame),
                Some(Err(e)) => {
                    self.stop_upload();
                    return Poll::Ready(Err(Error::RequestBody(e)));
                }
            }
        }
    }

    fn stop_upload(&mut self) {
        self.outgoing = None;
        self.broken = true;
    }

    /// The whole request, head and body, was written.
    fn sent(&self) -> bool {
        !self.broken && self.outgoing.is_none() && self.head_sent == self.conn.write.len()
    }

    /// The final response head, if the buffer holds one.
    fn parse_head(&mut self) -> Result<Option<Response<()>>, Error> {
        // Most answers have a handful of fields: parse with room for a few
        // first, as filling the room costs per parse.
        match self.parse_head_with::<FEW_HEADERS>() {
            Err(Error::Malformed(TOO_MANY_HEADERS)) => self.parse_head_with::<MAX_HEADERS>(),
            parsed => parsed,
        }
    }

    fn parse_head_with<const N: usize>(&mut self) -> Result<Option<Response<()>>, Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; N];
            let mut parsed = httparse::Response::new(&mut headers);
            let len = match parsed.parse(&self.conn.read) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.conn.read.len() > MAX_HEAD => {
                    return Err(Error::Malformed("the response head is too large"))
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed(TOO_MANY_HEADERS)),
                Err(_) => return Err(Error::Malformed("the response head does not parse")),
            };
            let code = parsed.code.unwrap_or(0);
            let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("bad status code"))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // 100 Continue, 103 Early Hints: the final answer follows.
                self.conn.read.advance(len);
                continue;
            }
            let version = match parsed.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            // Where each field is in the buffer, so that its value can be a
            // slice of the head instead of a copy.
            let base = self.conn.read.as_ptr() as usize;
            let mut spans = [(0u32, 0u32, 0u32, 0u32); N];
            let count = parsed.headers.len();
            for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                // The head is at most MAX_HEAD (plus one read) long.
                *span = (name as u32, h.name.len() as u32, value as u32, h.value.len() as u32);
            }
            let head = self.conn.read.split_to(len).freeze();
            let mut map = HeaderMap::with_capacity(count);
            let mut meta = Meta::default();
            for &(n, nl, v, vl) in &spans[..count] {
                let (n, v) = (n as usize, v as usize);
                let name = HeaderName::from_bytes(&head[n..n + nl as usize])
                    .map_err(|_| Error::Malformed("bad header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl as usize))
                    .map_err(|_| Error::Malformed("bad header value"))?;
                meta.note(&name, &value)?;
                map.append(name, value);
            }
            if meta.transfer_encoding {
                // Transfer-Encoding overrides it (RFC 9112 §6.3): it must
                // not reach the client to frame the body differently.
                map.remove(header::CONTENT_LENGTH);
            }
            self.keep_alive = match version {
                Version::HTTP_11 => !meta.close,
                _ => meta.keep_alive && !meta.close,
            };
            self.framing = if self.head_request
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
                || status.is_informational()
            {
                Framing::Length(0)
            } else if meta.transfer_encoding {
                match meta.chunked {
                    true => Framing::Chunked(Chunk::Size),
                    false => Framing::Close,
                }
            } else if let Some(n) = meta.content_length {
                Framing::Length(n)
            } else {
                Framing::Close
            };
            if self.framing == Framing::Close || status == StatusCode::SWITCHING_PROTOCOLS {
                self.keep_alive = false;
            }
            if self.framing == Framing::Length(0) {
                self.framing = Framing::Done;
            }
            // The version stays HTTP/1.1: the proxy answers with its own
            // (RFC 9110 §6.2), whatever the upstream spoke.
            let mut resp = Response::new(());
            *resp.status_mut() = status;
            *resp.headers_mut() = map;
            return Ok(Some(resp));
        }
    }
}

/// What a response head says about its framing and its connection.
#[derive(Debug, Default)]
struct Meta {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Meta {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Error> {
        if name == header::CONTENT_LENGTH {
            // Several values (or fields) must agree (RFC 9110 §8.6).
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(Error::Malformed("bad Content-Length"))?;
                if self.content_length.is_some_and(|m| m != n) {
                    return Err(Error::Malformed("conflicting Content-Length"));
                }
                self.content_length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            if let Some(last) = value.as_bytes().split(|&b| b == b',').next_back() {
                self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }
}

fn put_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| match d {
        b'0'..=b'9' => Some(n * 10 + u64::from(d - b'0')),
        _ => None,
    })
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl Outgoing {
    /// Queue one frame of the client's body, framed for the upstream.
    fn push(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => {
                self.pending
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len()).into_bytes()));
                self.pending.push_back(data);
                self.pending.push_back(Bytes::from_static(b"\r\n"));
            }
            Ok(data) => self.pending.push_back(data),
            Err(frame) => {
                // Trailers end a chunked body; with a Content-Length there
                // is nowhere to put them.
                if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                    let mut section = b"0\r\n".to_vec();
                    for (name, value) in &trailers {
                        put_field(&mut section, name, value);
                    }
                    section.extend_from_slice(b"\r\n");
                    self.pending.push_back(Bytes::from(section));
                    self.chunked = false;
                    self.ended = true;
                }
            }
        }
    }
}

/// How a request's body is delimited on the upstream hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// No body: the head goes as it came.
    AsIs,
    /// A body of this many bytes, sent as they come.
    Exact(u64),
    /// A body of unknown length, sent chunked.
    Chunked,
}

/// Serialize a request head for the upstream hop. Hop-by-hop headers were
/// removed before (`forward.rs`); `replace` is applied, and `length` sets
/// the framing headers.
fn encode_head(out: &mut Vec<u8>, parts: &request::Parts, replace: &[Replace<'_>], length: Length) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if length != Length::AsIs && name == header::CONTENT_LENGTH {
            continue;
        }
        if replace.iter().any(|(n, _)| *n == name) {
            continue;
        }
        put_field(out, name, value);
    }
    for (name, value) in replace {
        if let Some(value) = value {
            put_field(out, name, value);
        }
    }
    match length {
        Length::AsIs => {}
        Length::Exact(n) => {
            // Writing to a `Vec` cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Length::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// A response body read from the upstream; it keeps the request's upload
/// going until that ends too.
#[derive(Debug)]
pub(crate) struct Body {
    /// `None` once the connection was handed back or given up.
    ex: Option<Exchange>,
}

/// One decoding step of a chunked body.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (no trailers).
    End,
    /// More bytes are needed.
    More,
}

impl Body {
    /// The connection, when this body and the request's have both ended
    /// and the upstream keeps it alive: for the pool.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        let ex = self.ex.as_ref()?;
        let done = ex.framing == Framing::Done && ex.sent() && ex.keep_alive;
        // Bytes beyond the answer were not asked for.
        if done && ex.conn.read.is_empty() {
            return self.ex.take().map(|ex| ex.conn);
        }
        None
    }

    fn poll_next(ex: &mut Exchange, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            if !ex.sent() {
                // An upload that fails after the answer began ends there;
                // the answer goes on.
                let _ = ex.poll_upload(cx);
            }
            let read = &mut ex.conn.read;
            match ex.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) if !read.is_empty() => {
                    let n = left.min(read.len() as u64);
                    let data = read.split_to(n as usize).freeze();
                    ex.framing = match left - n {
                        0 => Framing::Done,
                        left => Framing::Length(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !read.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(read.split().freeze()))));
                }
                Framing::Chunked(ref mut state) => match decode_chunked(state, read, true)? {
                    Step::Data(data) => {
                        // Look ahead: a body whose end is already here ends
                        // with this frame, so the connection is free now.
                        if let Step::End = decode_chunked(state, read, false)? {
                            ex.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Step::Trailers(map) => {
                        ex.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Step::End => {
                        ex.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Step::More => {}
                },
                _ => {}
            }
            match ready!(ex.conn.poll_fill(cx)) {
                Ok(0) if ex.framing == Framing::Close => {
                    ex.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(Error::Incomplete))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            }
        }
    }
}

/// Decode what `read` holds of a chunked body. With `data` false, stop
/// before any data or trailers (a look-ahead for the end).
fn decode_chunked(state: &mut Chunk, read: &mut BytesMut, data: bool) -> Result<Step, Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = read.iter().position(|&b| b == b'\n') else {
                    if read.len() > MAX_CHUNK_LINE {
                        return Err(Error::Malformed("chunk size line too long"));
                    }
                    return Ok(Step::More);
                };
                let line = &read[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let digits = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
                let size = parse_hex(digits).ok_or(Error::Malformed("bad chunk size"))?;
                read.advance(eol + 1);
                *state = match size {
                    0 => Chunk::Trailers,
                    n => Chunk::Data(n),
                };
            }
            Chunk::Data(_) if !data => return Ok(Step::More),
            Chunk::Data(_) if read.is_empty() => return Ok(Step::More),
            Chunk::Data(left) => {
                let n = left.min(read.len() as u64);
                let bytes = read.split_to(n as usize).freeze();
                *state = match left - n {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                };
                return Ok(Step::Data(bytes));
            }
            Chunk::DataEnd => {
                if read.len() < 2 {
                    return Ok(Step::More);
                }
                if &read[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk not followed by CRLF"));
                }
                read.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if read.starts_with(b"\r\n") {
                    read.advance(2);
                    return Ok(Step::End);
                }
                if !data {
                    return Ok(Step::More);
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, map) = match httparse::parse_headers(read, &mut headers) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| Error::Malformed("bad trailer"))?;
                            let value =
                                HeaderValue::from_bytes(f.value).map_err(|_| Error::Malformed("bad trailer"))?;
                            map.append(name, value);
                        }
                        (len, map)
                    }
                    Ok(httparse::Status::Partial) if read.len() > MAX_HEAD => {
                        return Err(Error::Malformed("trailer section too large"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(Error::Malformed("trailers do not parse")),
                };
                read.advance(len);
                return Ok(match map.is_empty() {
                    true => Step::End,
                    false => Step::Trailers(map),
                });
            }
        }
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(ex) = this.ex.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Body::poll_next(ex, cx);
        if let Poll::Ready(Some(Err(_))) = frame {
            // A broken answer leaves the connection unusable.
            this.ex = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ex.as_ref().is_none_or(|ex| ex.framing == Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.ex.as_ref().map(|ex| ex.framing) {
            None | Some(Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The upstream's side of a tunnel: its socket, with the bytes that came
/// after the `101` head read first.
#[derive(Debug)]
pub(crate) struct Upgraded {
    io: TcpStream,
    pre: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut read = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut body = Vec::new();
        loop {
            match decode_chunked(&mut state, &mut read, true)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Trailers(t) => return Ok((body, Some(t), true)),
                Step::End => return Ok((body, None, true)),
                Step::More => return Ok((body, None, false)),
            }
        }
    }

    #[test]
    fn a_chunked_body_decodes_with_extensions_and_trailers() {
        let (body, trailers, ended) = chunked(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world");
        assert!(ended);
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        let (body, trailers, ended) = chunked(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!((body.as_slice(), trailers.is_none(), ended), (&b"abc"[..], true, true));
    }

    #[test]
    fn a_chunked_body_split_anywhere_waits_for_more() {
        let whole = b"a\r\n0123456789\r\n0\r\n\r\n";
        for cut in 0..whole.len() {
            let (body, _, ended) = chunked(&whole[..cut]).unwrap();
            assert!(!ended, "cut at {cut}: not the end yet");
            assert!(b"0123456789".starts_with(&body), "cut at {cut}: {body:?}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        assert!(chunked(b"zz\r\n").is_err());
        assert!(chunked(b"3\r\nabcX\r\n").is_err());
        assert!(chunked(b"ffffffffffffffff\r\n").is_err());
        assert!(chunked(&[b'1'; MAX_CHUNK_LINE + 1]).is_err());
    }

    #[test]
    fn the_look_ahead_finds_an_end_already_read_but_no_data() {
        let mut read = BytesMut::from(&b"\r\n0\r\n\r\n"[..]);
        let mut state = Chunk::DataEnd;
        assert!(matches!(decode_chunked(&mut state, &mut read, false), Ok(Step::End)));
        let mut read = BytesMut::from(&b"\r\n4\r\nmore"[..]);
        let mut state = Chunk::DataEnd;
        assert!(matches!(decode_chunked(&mut state, &mut read, false), Ok(Step::More)));
        assert_eq!(state, Chunk::Data(4));
        assert_eq!(&read[..], b"more");
    }

    #[test]
    fn content_length_must_be_one_number() {
        let mut meta = Meta::default();
        let cl = |v: &'static str| HeaderValue::from_static(v);
        meta.note(&header::CONTENT_LENGTH, &cl("12, 12")).unwrap();
        assert_eq!(meta.content_length, Some(12));
        assert!(meta.note(&header::CONTENT_LENGTH, &cl("13")).is_err());
        assert!(Meta::default().note(&header::CONTENT_LENGTH, &cl("-1")).is_err());
        assert!(Meta::default().note(&header::CONTENT_LENGTH, &cl("")).is_err());
        assert!(Meta::default()
            .note(&header::CONTENT_LENGTH, &cl("99999999999999999999"))
            .is_err());
    }

    #[test]
    fn the_head_is_encoded_in_origin_form_with_its_headers() {
        let (mut parts, ()) = http::Request::post("/a?b=1")
            .header("host", "example.com")
            .header("x-y", "z")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, &[], Length::Chunked);
        assert_eq!(
            out,
            b"POST /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-y: z\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // The body's own length replaces any Content-Length it came with.
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        encode_head(&mut out, &parts, &[], Length::Exact(1234567));
        assert!(out.ends_with(b"x-y: z\r\ncontent-length: 1234567\r\n\r\n"), "{out:?}");
        parts.method = Method::GET;
        encode_head(&mut out, &parts, &[], Length::AsIs);
        assert!(out.starts_with(b"GET /a?b=1 HTTP/1.1\r\n"));
        assert!(out.ends_with(b"content-length: 99\r\n\r\n"));
    }
}
