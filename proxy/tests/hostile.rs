//! Hostile and long-lived clients, end to end on loopback: a client that
//! never reads its response (slow read), one that trickles its upload (slow
//! body), and what the shutdown drain cuts. Real sockets, the real testapp
//! or a raw upstream that counts what it could send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchctl_proxy::{DrainCut, Proxy, ProxyConfig, RouteTable, Upstream};
use switchctl_testapp::spawn_on_loopback as app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn start(config: ProxyConfig, upstream: Arc<Upstream>) -> Proxy {
    let config = ProxyConfig { workers: 2, ..config };
    Proxy::bind(
        config,
        &["127.0.0.1:0".parse().unwrap()],
        RouteTable::single("web", Some(upstream)),
    )
    .unwrap()
}

/// Wait, a bounded time, for `cond`.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Read until `\r\n\r\n`; the head as text and the length it announces.
async fn read_head(stream: &mut TcpStream) -> Option<(String, u64)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((head, length))
}

/// What the endless upstream saw: bytes the proxy took, and whether the
/// proxy let go of the connection (a write failed).
#[derive(Default)]
struct Sent {
    bytes: AtomicU64,
    released: AtomicBool,
}

/// An upstream that answers each request with a 1 GiB body, written as fast
/// as the proxy takes it, counting what it could send.
async fn endless_upstream() -> (SocketAddr, Arc<Sent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Sent::default());
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sent = counter.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                const GIB: u64 = 1 << 30;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                let mut result = s.write_all(head.as_bytes()).await;
                let mut total = 0;
                while result.is_ok() && total < GIB {
                    result = s.write_all(&chunk).await;
                    total += chunk.len() as u64;
                    sent.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                if result.is_err() {
                    sent.released.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, sent)
}

/// A client socket with a small receive buffer, as a slow-read attacker
/// sets it (`slowhttptest -X` advertises a tiny window).
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    client_with_window(addr, 4096).await
}

/// A client socket whose receive buffer is `bytes`.
async fn client_with_window(addr: SocketAddr, bytes: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_client_that_never_reads_is_reset_after_the_write_timeout_with_bounded_buffering() {
    let (addr, sent) = endless_upstream().await;
    let upstream = Upstream::new(addr);
    let config = ProxyConfig {
        write_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = start(config, upstream.clone());
    let mut client = small_window_client(proxy.local_addrs()[0]).await;
    client.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    // The client reads nothing. The proxy must let go of it, and of its
    // upstream connection, rather than hold both for as long as the client
    // likes.
    let released = eventually(|| sent.released.load(Ordering::SeqCst)).await;
    let took = sent.bytes.load(Ordering::SeqCst);
    assert!(
        released,
        "the proxy still holds a client that read nothing ({took} bytes taken)"
    );
    assert!(
        eventually(|| upstream.in_flight() == 0).await,
        "the request is still in flight"
    );
    // What the upstream could push was bounded by buffers (kernel socket
    // buffers on both hops and hyper's `max_buf_size`), not by the 1 GiB.
    assert!(
        took < 64 << 20,
        "the proxy took {took} bytes for a client that read nothing"
    );
    // The client finds its connection reset, having received a fraction.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's connection was left open");
    assert!(received < 64 << 20, "{received}");
    proxy.shutdown();
}

#[tokio::test]
async fn a_client_that_reads_steadily_is_not_cut_by_the_write_timeout() {
    let config = ProxyConfig {
        write_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let proxy = start(config, Upstream::new(app("v1").await));
    // A window of a usual size (a tiny one on loopback, where segments are
    // 64 KiB, leaves the sender to zero-window probes that back off: that
    // is the slow-read attack, not a slow reader).
    let mut client = client_with_window(proxy.local_addrs()[0], 64 * 1024).await;
    const SIZE: u64 = 4 << 20;
    client
        .write_all(format!("GET /stream?bytes={SIZE} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await.expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Slower than the proxy could write, and the window is small: writes
    // block often, but never for the write timeout. (The body is chunked:
    // the bytes read count its framing too, and end with `0\r\n\r\n`.)
    let mut tail = Vec::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    while !tail.ends_with(b"\r\n0\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                received += n as u64;
                tail.extend_from_slice(&buf[..n]);
                tail.drain(..tail.len().saturating_sub(16));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        received >= SIZE && tail.ends_with(b"\r\n0\r\n\r\n"),
        "cut after {received} bytes"
    );
    proxy.shutdown();
}

/// Send a request head announcing `length` body bytes, then the body one byte
/// every `pause`, until the proxy answers; the answer's status line.
async fn trickle_upload(addr: SocketAddr, length: usize, pause: Duration) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
    tx.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..length {
            if tx.write_all(b"u").await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.windows(2).any(|w| w == b"\r\n") {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(read.is_ok(), "no answer");
    let seen = String::from_utf8_lossy(&seen).into_owned();
    seen.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_trickling_upload_is_408_once_its_pace_falls_below_the_minimum() {
    let config = ProxyConfig {
        // Never trips here: a byte comes every 100 ms.
        body_read_timeout: Duration::from_secs(10),
        body_min_rate: 1000,
        body_min_rate_grace: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = start(config, Upstream::new(app("v1").await));
    // 40 bytes over 4 s: 10 B/s, far below 1000 B/s.
    let status = trickle_upload(proxy.local_addrs()[0], 40, Duration::from_millis(100)).await;
    assert!(status.starts_with("HTTP/1.1 408 "), "{status}");
    proxy.shutdown();
}

#[tokio::test]
async fn an_upload_within_the_grace_is_served() {
    let config = ProxyConfig {
        body_min_rate: 1000,
        body_min_rate_grace: Duration::from_secs(10),
        ..ProxyConfig::default()
    };
    let proxy = start(config, Upstream::new(app("v1").await));
    let status = trickle_upload(proxy.local_addrs()[0], 5, Duration::from_millis(100)).await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    proxy.shutdown();
}

/// An upstream that reads request bodies at about `per_second` bytes/s,
/// then answers `ok`.
async fn slow_reading_upstream(per_second: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some((_, mut left)) = read_head(&mut s).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let pause = Duration::from_secs_f64(buf.len() as f64 / per_second as f64);
                while left > 0 {
                    let want = buf.len().min(left as usize);
                    match s.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n as u64,
                    }
                    tokio::time::sleep(pause).await;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upload_held_back_by_a_slow_upstream_is_not_cut_for_its_pace() {
    // The client could send at once; the upstream takes 2 MB/s, far below
    // the minimum asked of clients. Time spent waiting on the upstream is
    // not the client's.
    let config = ProxyConfig {
        body_min_rate: 20_000_000,
        body_min_rate_grace: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let proxy = start(config, Upstream::new(slow_reading_upstream(2_000_000).await));
    let mut client = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    const SIZE: usize = 6 << 20;
    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let body = vec![b'u'; SIZE];
    let (mut rx, mut tx) = client.into_split();
    let send = tokio::spawn(async move { tx.write_all(&body).await.map(|_| tx) });
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while !answer.ends_with(b"ok\n") {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    send.abort();
    assert!(read.is_ok(), "no answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    proxy.shutdown();
}

#[tokio::test]
async fn the_drain_timeout_counts_the_downloads_and_tunnels_it_cuts() {
    let upstream = Upstream::new(app("v1").await);
    let config = ProxyConfig {
        drain_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = start(config, upstream.clone());
    let addr = proxy.local_addrs()[0];
    // An idle kept-alive connection: closed by the drain, not cut.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let (head, length) = read_head(&mut idle).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    idle.read_exact(&mut vec![0u8; length as usize]).await.unwrap();
    // A long download, read slowly.
    let mut download = TcpStream::connect(addr).await.unwrap();
    download
        .write_all(format!("GET /stream?bytes={} HTTP/1.1\r\nHost: a\r\n\r\n", 1u64 << 30).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut download).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    assert_eq!(upstream.in_flight(), 2);

    proxy.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(20), proxy.stopped()).await;
    assert!(stopped.is_ok(), "the proxy did not stop");
    assert_eq!(
        proxy.drain_cut(),
        DrainCut {
            requests: 1,
            tunnels: 1
        }
    );
    // The download ended short of its gigabyte.
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match download.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n as u64,
            }
        }
    })
    .await;
    assert!(ended.is_ok() && received < 1 << 30, "{received}");
}

#[tokio::test]
async fn a_drain_within_its_timeout_cuts_nothing() {
    let upstream = Upstream::new(app("v1").await);
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(10),
        ..ProxyConfig::default()
    };
    let proxy = start(config, upstream.clone());
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(|| upstream.in_flight() == 1).await);
    proxy.shutdown();
    let (head, _) = read_head(&mut conn).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let stopped = tokio::time::timeout(Duration::from_secs(20), proxy.stopped()).await;
    assert!(stopped.is_ok(), "the proxy did not stop");
    assert_eq!(proxy.drain_cut(), DrainCut::default());
}

#[tokio::test]
async fn open_connections_are_counted_until_they_close() {
    let proxy = start(ProxyConfig::default(), Upstream::new(app("v1").await));
    let addr = proxy.local_addrs()[0];
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let (head, _) = read_head(&mut conn).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(conn);
    }
    assert_eq!(proxy.open_connections(), 3);
    drop(held);
    assert!(
        eventually(|| proxy.open_connections() == 0).await,
        "{}",
        proxy.open_connections()
    );
    proxy.shutdown();
}
