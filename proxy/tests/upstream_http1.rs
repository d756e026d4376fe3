//! The upstream hop's own HTTP/1.1 client (`client.rs`), end to end on
//! loopback, against scripted raw upstreams: each writes exact bytes and
//! counts the connections it accepted, so a test can tell whether the proxy
//! reused one. What the other end-to-end tests, whose upstreams are hyper
//! servers, never send: close-delimited and interim answers, HEAD answers
//! announcing a length, chunk ends arriving late, malformed and cut-off
//! answers, bytes after a `101`, and idle connections closed in the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchctl_proxy::{Proxy, ProxyConfig, RouteTable, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Bound on any one step a test waits for; far beyond what loopback needs.
const STEP: Duration = Duration::from_secs(10);

/// Bound on a whole test.
const WHOLE: Duration = Duration::from_secs(30);

/// Run a test's body, failing it if it takes more than [`WHOLE`].
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(WHOLE, body).await.expect("the test timed out")
}

/// One worker: every client connection shares the one upstream pool, so a
/// reuse (or its absence) does not depend on which worker got the client.
fn start(upstream: SocketAddr) -> Proxy {
    let config = ProxyConfig {
        workers: 1,
        ..ProxyConfig::default()
    };
    Proxy::bind(
        config,
        &["127.0.0.1:0".parse().unwrap()],
        RouteTable::single("web", Some(Upstream::new(upstream))),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------
// The scripted upstream.

/// A raw upstream: each accepted connection is handed to a script. Dropping
/// it stops the listener and every connection's script.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Scripted {
    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        // The connections' scripts live in a JoinSet owned by this task:
        // aborting it aborts them too.
        self.task.abort();
    }
}

/// Serve each connection with `script`, given the connection and its
/// number (1 for the first accepted).
async fn scripted<F, Fut>(script: F) -> Scripted
where
    F: Fn(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst) + 1;
            conns.spawn(script(Peer {
                stream,
                buf: Vec::new(),
                index,
            }));
            while conns.try_join_next().is_some() {}
        }
    });
    Scripted { addr, accepted, task }
}

/// The upstream's side of one connection.
struct Peer {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// 1 for the first connection the upstream accepted.
    index: usize,
}

/// A request as the upstream received it.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    /// The head's lines after the request line, lowercased.
    headers: String,
    /// Framed with `Transfer-Encoding: chunked`.
    chunked: bool,
    content_length: Option<usize>,
    /// The body, decoded.
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Peer {
    /// Read more; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// One line, without its CRLF.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next request, body included; `None` once the proxy closed the
    /// connection (or sent something that is not a request).
    async fn request(&mut self) -> Option<Received> {
        let first = String::from_utf8(self.line().await?).ok()?;
        let mut parts = first.split(' ');
        let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = String::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            headers.push_str(&String::from_utf8_lossy(&line).to_ascii_lowercase());
            headers.push('\n');
        }
        let mut req = Received {
            method,
            path,
            headers,
            chunked: false,
            content_length: None,
            body: Vec::new(),
        };
        req.chunked = req.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        req.content_length = req.header("content-length").map(|v| v.parse().unwrap());
        if req.chunked {
            loop {
                let size_line = String::from_utf8(self.line().await?).ok()?;
                let digits = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(digits, 16).ok()?;
                if size == 0 {
                    // Trailers, if any, up to the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                let data = self.take(size).await?;
                req.body.extend_from_slice(&data);
                if !self.line().await?.is_empty() {
                    return None;
                }
            }
        } else if let Some(n) = req.content_length {
            req.body = self.take(n).await?;
        }
        Some(req)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Answer `200` with `body` and a `Content-Length`: the connection stays open.
    async fn ok(&mut self, body: &[u8]) {
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(body);
        self.send(&answer).await;
    }

    /// Answer every request with `200` and `body`, until the proxy closes.
    async fn serve_ok(mut self, body: &'static [u8]) {
        while self.request().await.is_some() {
            self.ok(body).await;
        }
    }

    /// Wait until the proxy closes the connection (or `STEP` passes),
    /// counting any requests it still sends on it.
    async fn requests_until_closed(&mut self) -> usize {
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(STEP, self.request()).await {
            n += 1;
        }
        n
    }
}

// ---------------------------------------------------------------------------
// Clients.

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 client connection to the proxy: its requests go in turn.
/// The connection's task is aborted when the handle is dropped.
struct ClientConn {
    sender: Sender,
    conn: JoinHandle<()>,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

async fn client_conn(proxy: &Proxy) -> ClientConn {
    let stream = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    ClientConn { sender, conn }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl ClientConn {
    /// Send one request on this connection and read its whole answer.
    async fn call(&mut self, method: &str, path: &str, body: &'static str) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "a")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let exchange = async {
            self.sender.ready().await.expect("the client connection closed");
            let resp = self.sender.send_request(req).await.expect("no answer");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("the body broke off").to_bytes();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(STEP, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no complete answer in time"))
    }
}

/// Send raw bytes on a fresh connection; what came back before the proxy
/// closed it. `None` if the proxy left it open past [`STEP`].
async fn raw_until_closed(proxy: &Proxy, request: &[u8]) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(request).await.unwrap();
    read_until_closed(&mut conn).await
}

async fn read_until_closed(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(STEP, read_all).await.ok()?;
    Some(seen)
}

/// Read from `conn` into `seen` until `done` says enough; fails the test if
/// the connection closes first or nothing more comes within [`STEP`].
async fn read_until(conn: &mut TcpStream, seen: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut buf = [0u8; 4096];
    let reading = async {
        while !done(seen) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    if tokio::time::timeout(STEP, reading).await.is_err() {
        panic!("stuck after {:?}", String::from_utf8_lossy(seen));
    }
}

/// A raw answer split into its head (text) and the bytes after it.
fn split_answer(seen: &[u8]) -> (String, Vec<u8>) {
    let end =
        find(seen, b"\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {:?}", String::from_utf8_lossy(seen)));
    (
        String::from_utf8_lossy(&seen[..end + 4]).into_owned(),
        seen[end + 4..].to_vec(),
    )
}

/// Decode a complete chunked body (no trailers expected).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n", "the chunked body ends with an empty trailer section");
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n");
        raw = &raw[size + 2..];
    }
}

/// The body of a complete raw answer, whatever its framing.
fn answer_body(head: &str, rest: &[u8]) -> Vec<u8> {
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_vec()
    }
}

// ---------------------------------------------------------------------------
// The cases.

#[tokio::test]
async fn a_close_delimited_answer_is_delivered_whole_and_its_connection_never_reused() {
    bounded(async {
        // Two upstreams: an HTTP/1.0 one, and an HTTP/1.1 one that sends no
        // framing either. Each answers its first connection's request with a
        // body delimited by the close (sent in parts), then half-closes and
        // counts any request the proxy still sends on it; later connections
        // get ordinary keep-alive answers.
        let parts: [&'static [u8]; 3] = [b"first part\n", b"second part\n", b"last part\n"];
        let whole: Vec<u8> = parts.concat();
        for status_line in ["HTTP/1.0 200 OK", "HTTP/1.1 200 OK"] {
            let late = Arc::new(AtomicUsize::new(0));
            let seen_late = late.clone();
            let upstream = scripted(move |mut peer: Peer| {
                let late = seen_late.clone();
                async move {
                    if peer.index > 1 {
                        return peer.serve_ok(b"pooled\n").await;
                    }
                    peer.request().await.unwrap();
                    peer.send(format!("{status_line}\r\ncontent-type: text/plain\r\n\r\n").as_bytes())
                        .await;
                    for part in parts {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        peer.send(part).await;
                    }
                    peer.stream.shutdown().await.unwrap();
                    late.fetch_add(peer.requests_until_closed().await, Ordering::SeqCst);
                }
            })
            .await;
            let proxy = start(upstream.addr);
            // A pooling client: an HTTP/1.0 answer may close the client's
            // connection too.
            let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let base = format!("http://{}", proxy.local_addrs()[0]);
            let resp = tokio::time::timeout(STEP, client.get(format!("{base}/").parse().unwrap()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{status_line}");
            let body = tokio::time::timeout(STEP, resp.into_body().collect())
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            assert_eq!(body, whole, "{status_line}: the whole close-delimited body");
            // A POST: were it sent on the closed connection it would not be
            // resent, so a wrong reuse would show as a 502.
            let req = Request::post(format!("{base}/next"))
                .body(Full::new(Bytes::from_static(b"data")))
                .unwrap();
            let resp = tokio::time::timeout(STEP, client.request(req)).await.unwrap().unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{status_line}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "pooled\n");
            assert_eq!(
                upstream.accepted(),
                2,
                "{status_line}: the next request opened a new connection"
            );
            assert_eq!(
                late.load(Ordering::SeqCst),
                0,
                "{status_line}: a request was sent on a close-delimited connection"
            );
            proxy.shutdown();
        }
    })
    .await;
}

#[tokio::test]
async fn interim_answers_are_skipped_and_the_final_answer_delivered() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            while peer.request().await.is_some() {
                // In separate writes, so that the client parses the interim
                // answers before the final one has arrived.
                peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                peer.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-final: yes\r\n\r\nfinal\n")
                    .await;
                // And all three in one write.
                peer.request().await.unwrap();
                peer.send(
                    b"HTTP/1.1 103 Early Hints\r\nlink: </b>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
                      HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-final: yes\r\n\r\nagain\n",
                )
                .await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        // A raw client, to see that no interim answer is passed on.
        let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut seen = Vec::new();
        read_until(&mut conn, &mut seen, |s| s.ends_with(b"final\n")).await;
        let (head, body) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("x-final: yes"), "{head}");
        assert!(!head.contains("link:"), "the interim answer's fields stay out: {head}");
        assert_eq!(body, b"final\n");
        // The same connection, interim answers in the same read as the final one.
        conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let seen = read_until_closed(&mut conn)
            .await
            .expect("the connection was left open");
        let (head, body) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(!head.contains("link:"), "{head}");
        assert_eq!(body, b"again\n");
        assert_eq!(upstream.accepted(), 1);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_head_answer_announcing_a_length_has_no_body_and_its_connection_is_reused() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                match req.method.as_str() {
                    // The length a GET would have; no body, as RFC 9110 says.
                    "HEAD" => {
                        peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-head: yes\r\n\r\n")
                            .await
                    }
                    _ => peer.ok(b"got\n").await,
                }
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        let head = client.call("HEAD", "/", "").await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-length"], "1000");
        assert_eq!(head.headers["x-head"], "yes");
        assert!(head.body.is_empty());
        let get = client.call("GET", "/", "").await;
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(get.body, "got\n");
        assert_eq!(upstream.accepted(), 1, "the GET went on the HEAD's connection");
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_an_upstream_connection_close_is_honoured() {
    bounded(async {
        // `/close` is answered with `Connection: close`; the upstream then
        // keeps the socket open a little while and counts any request the
        // proxy still sends on it (it should send none), before closing.
        let ignored_close = Arc::new(AtomicUsize::new(0));
        let counted = ignored_close.clone();
        let upstream = scripted(move |mut peer: Peer| {
            let counted = counted.clone();
            async move {
                while let Some(req) = peer.request().await {
                    let body = format!("conn {} {}\n", peer.index, req.path);
                    if req.path != "/close" {
                        peer.ok(body.as_bytes()).await;
                        continue;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    peer.send(answer.as_bytes()).await;
                    if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), peer.request()).await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        peer.ok(b"sent on a closing connection\n").await;
                    }
                    return;
                }
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        assert_eq!(client.call("GET", "/one", "").await.body, "conn 1 /one\n");
        assert_eq!(client.call("GET", "/two", "").await.body, "conn 1 /two\n");
        assert_eq!(upstream.accepted(), 1, "kept alive, reused");
        let closing = client.call("GET", "/close", "").await;
        assert_eq!(closing.status, StatusCode::OK);
        assert_eq!(closing.body, "conn 1 /close\n");
        // The client's own connection is not the upstream's to close.
        assert!(closing.headers.get("connection").is_none(), "{:?}", closing.headers);
        let after = client.call("GET", "/after", "").await;
        assert_eq!(after.status, StatusCode::OK);
        assert_eq!(after.body, "conn 2 /after\n");
        assert_eq!(upstream.accepted(), 2, "a new connection after `Connection: close`");
        assert_eq!(
            ignored_close.load(Ordering::SeqCst),
            0,
            "a request followed `Connection: close`"
        );
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_chunked_answer_whose_end_arrives_later_is_delivered_and_its_connection_reused() {
    bounded(async {
        // The n-th request's answer has its end split this way, each part a
        // write 50 ms after the one before.
        const ENDS: [&[&[u8]]; 5] = [
            &[b"0\r\n\r\n"],
            &[b"0\r\n", b"\r\n"],
            &[b"0\r", b"\n\r\n"],
            &[b"0\r\n\r", b"\n"],
            &[b"6\r\n world\r\n", b"0\r\n\r\n"],
        ];
        let upstream = scripted(|mut peer: Peer| async move {
            let mut n = 0;
            while peer.request().await.is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .await;
                for part in ENDS[n % ENDS.len()] {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    peer.send(part).await;
                }
                n += 1;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        for (i, end) in ENDS.iter().enumerate() {
            let answer = client.call("GET", "/", "").await;
            assert_eq!(answer.status, StatusCode::OK, "end split as {end:?}");
            let expected = if i == ENDS.len() - 1 { "hello world" } else { "hello" };
            assert_eq!(answer.body, expected, "end split as {end:?}");
            assert_eq!(
                upstream.accepted(),
                1,
                "end split as {end:?}: the connection was reused"
            );
        }
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_malformed_answer_is_502_and_the_next_request_is_served() {
    bounded(async {
        // The n-th connection gets the n-th of these; later ones a good answer.
        const BAD: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            // Cut off within the head.
            b"HTTP/1.1 200 OK\r\ncontent-le",
        ];
        let upstream = scripted(|mut peer: Peer| async move {
            let Some(bad) = BAD.get(peer.index - 1) else {
                return peer.serve_ok(b"good\n").await;
            };
            peer.request().await.unwrap();
            peer.send(bad).await;
            // The cut-off head ends with the connection; the others wait
            // for the proxy to give the connection up.
            if peer.index < BAD.len() {
                peer.requests_until_closed().await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        for bad in BAD {
            let answer = client.call("GET", "/", "").await;
            let bad = String::from_utf8_lossy(bad);
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{bad:?}");
            assert!(!answer.body.starts_with(b"hello"), "{bad:?}");
        }
        // The same client connection goes on being served.
        let answer = client.call("GET", "/", "").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "good\n");
        assert_eq!(upstream.accepted(), BAD.len() + 1);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn an_answer_cut_off_mid_body_never_looks_complete() {
    bounded(async {
        // The first connection: 10 of 100 announced bytes. The second: one
        // chunk of a chunked body, never its end. Then each closes.
        let upstream = scripted(|mut peer: Peer| async move {
            peer.request().await.unwrap();
            match peer.index {
                1 => {
                    peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await
                }
                _ => {
                    peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n")
                        .await
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await;
        let proxy = start(upstream.addr);
        // Keep-alive clients: only the proxy's close can end their wait.
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

        let seen = raw_until_closed(&proxy, request)
            .await
            .expect("the proxy left the client waiting for the rest of the body");
        let (head, body) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-length: 100\r\n"), "{head}");
        assert!(body.len() < 100, "{} body bytes of 100", body.len());
        assert!(b"0123456789".starts_with(&body), "{body:?}");

        let seen = raw_until_closed(&proxy, request)
            .await
            .expect("the proxy left the client waiting for the end of the chunked body");
        let (head, body) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(
            !body.ends_with(b"0\r\n\r\n"),
            "the client was told the body ended: {:?}",
            String::from_utf8_lossy(&body)
        );
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn bytes_sent_with_a_101_head_reach_the_client_through_the_tunnel() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            let req = peer.request().await.unwrap();
            assert_eq!(req.header("upgrade"), Some("test"), "{}", req.headers);
            // The head and the protocol's first bytes in one write.
            peer.send(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nhello-from-upstream",
            )
            .await;
            // Then an echo, bytes already read included.
            let mut pending = std::mem::take(&mut peer.buf);
            loop {
                if !pending.is_empty() {
                    peer.send(&pending).await;
                }
                if !peer.fill().await {
                    return;
                }
                pending = std::mem::take(&mut peer.buf);
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n")
            .await
            .unwrap();
        let greeting = b"hello-from-upstream";
        let mut seen = Vec::new();
        read_until(&mut conn, &mut seen, |s| find(s, b"\r\n\r\n").is_some()).await;
        let (head, after) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut rest = after;
        read_until(&mut conn, &mut rest, |s| s.len() >= greeting.len()).await;
        assert_eq!(rest, greeting);
        // And the tunnel carries both ways.
        conn.write_all(b"ping").await.unwrap();
        let mut echo = Vec::new();
        read_until(&mut conn, &mut echo, |s| s.len() >= 4).await;
        assert_eq!(echo, b"ping");
        assert_eq!(upstream.accepted(), 1);
        drop(conn);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_chunked_or_with_their_length() {
    bounded(async {
        // The upstream echoes the framing it saw, then the body.
        let upstream = scripted(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                let mut echo = format!(
                    "{} chunked={} content-length={:?}\n",
                    req.method, req.chunked, req.content_length
                )
                .into_bytes();
                echo.extend_from_slice(&req.body);
                peer.ok(&echo).await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let addr = proxy.local_addrs()[0];

        // Chunked, in two writes so the body reaches the proxy in parts.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        conn.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
        let seen = read_until_closed(&mut conn).await.expect("the connection was left open");
        let (head, rest) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(
            String::from_utf8_lossy(&answer_body(&head, &rest)),
            "POST chunked=true content-length=None\nhello world"
        );

        // Both: the chunked framing is the one that counts (RFC 9112 §6.3),
        // and the upstream must not be handed the Content-Length with it.
        let seen = raw_until_closed(
            &proxy,
            b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("the connection was left open");
        let (head, rest) = split_answer(&seen);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(
            String::from_utf8_lossy(&answer_body(&head, &rest)),
            "POST chunked=true content-length=None\nhello"
        );

        // With a Content-Length: small, then large enough to take several writes.
        let small = b"hello world".to_vec();
        let large: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        for body in [small, large] {
            let mut request = format!(
                "POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let seen = raw_until_closed(&proxy, &request)
                .await
                .expect("the connection was left open");
            let (head, rest) = split_answer(&seen);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            let mut expected = format!("POST chunked=false content-length=Some({})\n", body.len()).into_bytes();
            expected.extend_from_slice(&body);
            let got = answer_body(&head, &rest);
            assert!(
                got == expected,
                "{} bytes: got {:?}...",
                body.len(),
                String::from_utf8_lossy(&got[..got.len().min(80)])
            );
        }
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_used() {
    bounded(async {
        // The first connection answers one request, then the upstream closes
        // it after 50 ms idle (its keep-alive timeout, shorter than the
        // proxy's). Later connections answer with what they received.
        let upstream = scripted(|mut peer: Peer| async move {
            if peer.index == 1 {
                peer.request().await.unwrap();
                peer.ok(b"first\n").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            while let Some(req) = peer.request().await {
                let echo = format!("{} {}", req.method, String::from_utf8_lossy(&req.body));
                peer.ok(echo.as_bytes()).await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        let first = client.call("GET", "/", "").await;
        assert_eq!((first.status, &first.body[..]), (StatusCode::OK, &b"first\n"[..]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Not idempotent, with a body: sent on the closed connection it
        // could not be sent again, and would be a 502.
        let post = client.call("POST", "/", "small body").await;
        assert_eq!(post.status, StatusCode::OK, "{:?}", post.body);
        assert_eq!(post.body, "POST small body");
        assert_eq!(upstream.accepted(), 2);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_pooled_connection_with_unasked_bytes_is_not_used() {
    bounded(async {
        // As some servers do at their keep-alive timeout: an unasked `408`
        // on the idle connection, which is left open. Were the next request
        // sent on it, that `408` would be taken for its answer.
        let upstream = scripted(|mut peer: Peer| async move {
            if peer.index == 1 {
                peer.request().await.unwrap();
                peer.ok(b"first\n").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                peer.send(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                peer.requests_until_closed().await;
                return;
            }
            while let Some(req) = peer.request().await {
                let echo = format!("{} {}", req.method, String::from_utf8_lossy(&req.body));
                peer.ok(echo.as_bytes()).await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        assert_eq!(client.call("GET", "/", "").await.body, "first\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let post = client.call("POST", "/", "small body").await;
        assert_eq!(post.status, StatusCode::OK, "{:?}", post.body);
        assert_eq!(post.body, "POST small body");
        let get = client.call("GET", "/", "").await;
        assert_eq!((get.status, &get.body[..]), (StatusCode::OK, &b"GET "[..]));
        assert_eq!(upstream.accepted(), 2);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn answers_without_a_body_by_their_status_keep_their_connection() {
    bounded(async {
        // 304 announces the length of the representation it stands for; 204
        // has no body whatever it says. Neither is followed by body bytes.
        let upstream = scripted(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                match req.path.as_str() {
                    "/304" => {
                        peer.send(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 1000\r\n\r\n")
                            .await
                    }
                    "/204" => peer.send(b"HTTP/1.1 204 No Content\r\nx-done: yes\r\n\r\n").await,
                    _ => peer.ok(b"body\n").await,
                }
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        let not_modified = client.call("GET", "/304", "").await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers["etag"], "\"v1\"");
        assert!(not_modified.body.is_empty());
        let no_content = client.call("DELETE", "/204", "").await;
        assert_eq!(no_content.status, StatusCode::NO_CONTENT);
        assert_eq!(no_content.headers["x-done"], "yes");
        let get = client.call("GET", "/", "").await;
        assert_eq!(get.body, "body\n");
        assert_eq!(upstream.accepted(), 1, "all three on one upstream connection");
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn an_answer_with_both_chunking_and_a_length_is_framed_by_the_chunking() {
    bounded(async {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the
        // length must not reach the client to frame the body its own way.
        let upstream = scripted(|mut peer: Peer| async move {
            while peer.request().await.is_some() {
                peer.send(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )
                .await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        for _ in 0..2 {
            let answer = client.call("GET", "/", "").await;
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.headers.get("content-length").is_none(), "{:?}", answer.headers);
            assert_eq!(answer.body, "hello");
        }
        assert_eq!(upstream.accepted(), 1);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn a_101_the_client_did_not_ask_for_is_502() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            if peer.index > 1 {
                return peer.serve_ok(b"good\n").await;
            }
            peer.request().await.unwrap();
            peer.send(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nraw bytes")
                .await;
            peer.requests_until_closed().await;
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        let answer = client.call("GET", "/", "").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(!answer.body.starts_with(b"raw"));
        // That upstream connection is given up; the next request is served.
        let answer = client.call("GET", "/", "").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(upstream.accepted(), 2);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_answer_reaches_the_client_as_http_1_1_and_keeps_its_connection() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            while peer.request().await.is_some() {
                peer.send(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\nold")
                    .await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
        for _ in 0..2 {
            conn.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
            let mut seen = Vec::new();
            read_until(&mut conn, &mut seen, |s| {
                find(s, b"\r\n\r\n").is_some_and(|end| s.len() >= end + 4 + 3)
            })
            .await;
            let (head, body) = split_answer(&seen);
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert_eq!(body, b"old");
        }
        // One upstream connection carried both (1.0 with keep-alive).
        assert_eq!(upstream.accepted(), 1);
        proxy.shutdown();
    })
    .await;
}

#[tokio::test]
async fn answers_with_many_header_fields_pass_and_too_many_are_502() {
    bounded(async {
        let upstream = scripted(|mut peer: Peer| async move {
            while let Some(req) = peer.request().await {
                let fields = if req.path == "/many" { 40 } else { 101 };
                let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
                for i in 0..fields {
                    head.push_str(&format!("x-field-{i}: {i}\r\n"));
                }
                head.push_str("\r\nok");
                peer.send(head.as_bytes()).await;
            }
        })
        .await;
        let proxy = start(upstream.addr);
        let mut client = client_conn(&proxy).await;
        let answer = client.call("GET", "/many", "").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "ok");
        for i in 0..40 {
            assert_eq!(answer.headers[format!("x-field-{i}").as_str()], i.to_string().as_str());
        }
        let answer = client.call("GET", "/too-many", "").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        proxy.shutdown();
    })
    .await;
}
