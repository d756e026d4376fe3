//! Idle HTTP/1 connections parked between requests (`proxy/src/park.rs`):
//! they park once quiet for a quarter of a second, serve their next request as before,
//! and never park with anything in flight, unread or unwritten.

use std::time::Duration;

use switchctl_proxy::{Proxy, ProxyConfig, RouteTable, Upstream};
use switchctl_testapp::spawn_on_loopback as app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

async fn start(config: ProxyConfig) -> Proxy {
    let table = RouteTable::single("web", Some(Upstream::new(app("v1").await)));
    Proxy::bind(config, &["127.0.0.1:0".parse().unwrap()], table).unwrap()
}

fn config() -> ProxyConfig {
    ProxyConfig {
        workers: 1,
        ..ProxyConfig::default()
    }
}

/// Read one response with a `Content-Length` body; the whole of it as text.
async fn response(conn: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let read = async {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if seen.len() >= end + 4 + length {
                    return;
                }
            }
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no response");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Wait, within a bound far beyond the 0.25–0.5 s parking takes, until
/// `parked` connections are parked.
async fn until_parked(proxy: &Proxy, parked: usize) {
    for _ in 0..200 {
        if proxy.parked_connections() == parked {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} connections parked, expected {parked}", proxy.parked_connections());
}

/// A connection that served one request and has parked since.
async fn parked_connection(proxy: &Proxy) -> TcpStream {
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert!(response(&mut conn).await.ends_with("v1\n"));
    until_parked(proxy, 1).await;
    conn
}

#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_requests() {
    let proxy = start(config()).await;
    let mut conn = parked_connection(&proxy).await;

    // Resumed by its next request, which is served as any other.
    conn.write_all(GET).await.unwrap();
    let answer = response(&mut conn).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("v1\n"),
        "{answer}"
    );
    assert_eq!(proxy.parked_connections(), 0);

    // Parks again, then two pipelined requests in one write wake it.
    until_parked(&proxy, 1).await;
    conn.write_all(&[GET, GET].concat()).await.unwrap();
    assert!(response(&mut conn).await.ends_with("v1\n"));
    assert!(response(&mut conn).await.ends_with("v1\n"));
    assert_eq!(proxy.open_connections(), 1);
    proxy.shutdown();
}

#[tokio::test]
async fn a_connection_with_half_a_request_head_never_parks() {
    let proxy = start(config()).await;
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(GET).await.unwrap();
    response(&mut conn).await;
    // hyper holds these bytes: parking now would lose them.
    conn.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.parked_connections(),
        0,
        "parked with a partial head in hyper's buffer"
    );
    conn.write_all(b"st: a\r\n\r\n").await.unwrap();
    assert!(response(&mut conn).await.ends_with("v1\n"));
    proxy.shutdown();
}

#[tokio::test]
async fn a_response_the_client_is_slow_to_read_is_never_cut_by_parking() {
    let proxy = start(config()).await;
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    // Far more than the socket buffers hold: the proxy's writes block
    // while the client reads nothing, and no request starts meanwhile.
    let total: usize = 32 << 20;
    conn.write_all(format!("GET /stream?bytes={total} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.parked_connections(),
        0,
        "parked while a response was being written"
    );
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let read_all = async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {received} bytes");
            received += n;
            if received > total && buf[..n].ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("stream cut");
    // The connection is idle now, and parks.
    until_parked(&proxy, 1).await;
    proxy.shutdown();
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_the_header_timeout() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(2),
        ..config()
    };
    let proxy = start(config).await;
    let mut conn = parked_connection(&proxy).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0))), "left open: {closed:?}");
    until_parked(&proxy, 0).await;
    proxy.shutdown();
}

#[tokio::test]
async fn a_client_that_closes_while_parked_is_forgotten() {
    let proxy = start(config()).await;
    let conn = parked_connection(&proxy).await;
    drop(conn);
    until_parked(&proxy, 0).await;
    for _ in 0..200 {
        if proxy.open_connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.open_connections(), 0);
    proxy.shutdown();
}

#[tokio::test]
async fn shutdown_closes_parked_connections_without_a_cut() {
    let proxy = start(ProxyConfig {
        drain_timeout: Duration::from_secs(10),
        ..config()
    })
    .await;
    let mut conn = parked_connection(&proxy).await;
    proxy.shutdown();
    tokio::time::timeout(Duration::from_secs(20), proxy.stopped())
        .await
        .expect("shutdown waited on a parked connection");
    let mut buf = [0u8; 16];
    assert!(
        matches!(conn.read(&mut buf).await, Ok(0) | Err(_)),
        "left open after shutdown"
    );
    let cut = proxy.drain_cut();
    assert_eq!((cut.requests, cut.tunnels), (0, 0));
}

/// An upgrade the upstream takes almost two seconds to accept: the
/// sweeper asks the quiet connection to park meanwhile, and the tunnel it
/// becomes must not read that as a reason to end.
#[tokio::test]
async fn a_tunnel_whose_upgrade_was_slow_to_answer_is_never_parked() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(1800)).await;
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            conn.write_all(&buf[..n]).await.unwrap();
        }
    });
    let table = RouteTable::single("web", Some(Upstream::new(addr)));
    let proxy = Proxy::bind(config(), &["127.0.0.1:0".parse().unwrap()], table).unwrap();
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the upgrade: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // Quiet for longer than parking takes, then the tunnel still echoes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(proxy.parked_connections(), 0);
    conn.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut echoed))
        .await
        .expect("no echo")
        .expect("the tunnel closed");
    assert_eq!(&echoed, b"still here");
    drop(conn);
    proxy.shutdown();
    echo.abort();
}
