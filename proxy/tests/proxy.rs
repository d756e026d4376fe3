//! The data plane, end to end on loopback: real sockets, the real testapp
//! as upstream (served in-process), a real HTTP client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use switchctl_proxy::{HostPattern, Proxy, ProxyConfig, Route, RouteTable, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Start a testapp answering `version` on a free loopback port.
async fn app(version: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = switchctl_testapp::App::new(version, false, Duration::ZERO);
    tokio::spawn(switchctl_testapp::serve(listener, app));
    addr
}

fn config() -> ProxyConfig {
    ProxyConfig {
        workers: 2,
        ..ProxyConfig::default()
    }
}

fn start(config: ProxyConfig, table: RouteTable) -> (Proxy, String) {
    let proxy = Proxy::bind(config, &["127.0.0.1:0".parse().unwrap()], table).unwrap();
    let base = format!("http://{}", proxy.local_addrs()[0]);
    (proxy, base)
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &Http, url: &str, host: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = client.request(req.body(Full::default()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn route(hosts: &[&str], prefix: &str, service: &str) -> Route {
    Route {
        hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
        path_prefix: prefix.into(),
        service: service.into(),
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let (web, api, admin) = (app("web").await, app("api").await, app("admin").await);
    let table = RouteTable::new(
        vec![
            ("web".into(), Some(Upstream::new(web))),
            ("api".into(), Some(Upstream::new(api))),
            ("admin".into(), Some(Upstream::new(admin))),
        ],
        vec![
            route(&[], "/", "web"),
            route(&[], "/api", "api"),
            route(&["*.admin.test"], "/", "admin"),
        ],
    )
    .unwrap();
    let (proxy, base) = start(config(), table);
    let c = client();
    assert_eq!(get(&c, &format!("{base}/"), None).await.1, "web\n");
    assert_eq!(get(&c, &format!("{base}/api/users"), None).await.1, "api\n");
    assert_eq!(get(&c, &format!("{base}/apiary"), None).await.1, "web\n");
    assert_eq!(get(&c, &format!("{base}/x"), Some("eu.admin.test")).await.1, "admin\n");
    proxy.shutdown();
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_stripped() {
    let (proxy, base) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(app("v1").await))),
    );
    let req = Request::get(format!("{base}/headers"))
        .header("host", "shop.example.com")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .body(Full::default())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("host: shop.example.com\n"), "{body}");
    // Not a trusted proxy: the client's own X-Forwarded-For is replaced.
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example.com\n"), "{body}");
    assert!(body.contains("x-kept: yes\n"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
    assert!(!body.contains("te: "), "{body}");
    proxy.shutdown();
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let (proxy, base) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(app("v1").await))),
    );
    let h2: Http = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let resp = h2
        .request(Request::get(format!("{base}/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
    proxy.shutdown();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_streams_both_ways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let (proxy, base) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(app("v1").await))),
    );
    let before = rss_kib();
    let client: Client<HttpConnector, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = futures_util::stream::iter(
        (0..GIB / chunk.len() as u64).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let req = Request::post(format!("{base}/upload"))
        .body(StreamBody::new(chunks))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{GIB}\n"));

    let resp = crate::client()
        .request(
            Request::get(format!("{base}/stream?bytes={GIB}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 128, "memory grew by {grown_mib} MiB while streaming 2 GiB");
    proxy.shutdown();
}

#[tokio::test]
async fn websocket_echo_is_tunnelled() {
    let (proxy, _) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(app("v1").await))),
    );
    let url = format!("ws://{}/ws", proxy.local_addrs()[0]);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in ["hello", "blue", "green"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
    proxy.shutdown();
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error_even_for_reuseport_holders() {
    let (first, _) = start(config(), RouteTable::default());
    let taken = first.local_addrs()[0];
    let err = Proxy::bind(config(), &[taken], RouteTable::default()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("cannot listen on {taken}")),
        "{err}"
    );
    first.shutdown();
}

#[tokio::test]
async fn no_route_is_404_and_no_active_release_is_503() {
    let table = RouteTable::new(vec![("api".into(), None)], vec![route(&["api.test"], "/", "api")]).unwrap();
    let (proxy, base) = start(config(), table);
    let c = client();
    let (status, body) = get(&c, &format!("{base}/"), Some("other.test")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no route for this host and path\n")
    );
    let (status, body) = get(&c, &format!("{base}/"), Some("api.test")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no active release\n")
    );
    proxy.shutdown();
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (proxy, base) = start(config(), RouteTable::single("web", Some(Upstream::new(port))));
    let (status, body) = get(&client(), &format!("{base}/"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream refused the connection\n");
    proxy.shutdown();
}

#[tokio::test]
async fn upstream_reset_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s); // close without answering
        }
    });
    let (proxy, base) = start(config(), RouteTable::single("web", Some(Upstream::new(addr))));
    let (status, body) = get(&client(), &format!("{base}/"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream closed the connection\n");
    proxy.shutdown();
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let config = ProxyConfig {
        response_timeout: Duration::from_millis(200),
        ..config()
    };
    let (proxy, base) = start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))));
    let (status, body) = get(&client(), &format!("{base}/slow?ms=5000"), None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream did not answer in time\n");
    proxy.shutdown();
}

#[tokio::test]
async fn oversized_header_is_rejected_with_431() {
    let config = ProxyConfig {
        max_header_bytes: 8192,
        ..config()
    };
    let (proxy, base) = start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))));
    let req = Request::get(format!("{base}/"))
        .header("x-big", "a".repeat(20_000))
        .body(Full::default())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    proxy.shutdown();
}

/// Read until the proxy closes the connection; `None` if it never does
/// within a bound far beyond the configured timeout.
async fn closed_by_proxy(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all).await.ok()?;
    Some(seen)
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let (proxy, _) = start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))));
    let addr = proxy.local_addrs()[0];

    // Sends half a request head and stops.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    // Sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Dribbles a byte at a time, more slowly than the timeout allows.
    let mut dribble = TcpStream::connect(addr).await.unwrap();
    let dribbler = async {
        for b in b"GET / HTTP/1.1\r\nHost: a\r\n".iter() {
            if dribble.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let dribble_cut = tokio::time::timeout(Duration::from_secs(20), dribbler)
        .await
        .unwrap_or(false);

    assert!(closed_by_proxy(&mut partial).await.is_some(), "partial head left open");
    assert!(
        closed_by_proxy(&mut silent).await.is_some(),
        "silent connection left open"
    );
    assert!(
        dribble_cut || closed_by_proxy(&mut dribble).await.is_some(),
        "dribbler left open"
    );
    proxy.shutdown();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let config = ProxyConfig {
        workers: 1,
        max_connections: 1,
        ..config()
    };
    let (proxy, _) = start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))));
    let addr = proxy.local_addrs()[0];
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    assert!(
        first.read(&mut buf).await.unwrap() > 0,
        "the first connection is served"
    );

    // The kernel accepts the second connection, the proxy does not serve it
    // while the first holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(20), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    proxy.shutdown();
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    };
    let (proxy, _) = start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))));
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let seen = closed_by_proxy(&mut conn).await.expect("idle connection left open");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 OK") && seen.ends_with("v1\n"), "{seen}");
    proxy.shutdown();
}

#[tokio::test]
async fn drain_waits_for_in_flight_requests() {
    let upstream = Upstream::new(app("v1").await);
    let (proxy, base) = start(config(), RouteTable::single("web", Some(upstream.clone())));
    let slow = tokio::spawn({
        let base = base.clone();
        async move { get(&client(), &format!("{base}/slow?ms=400"), None).await }
    });
    while upstream.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Flip away; the slow request must still complete, and drain sees it.
    proxy.swap(RouteTable::single("web", None));
    let report = upstream.drain(Duration::from_secs(30)).await;
    assert_eq!(report.cut, 0);
    assert_eq!(upstream.in_flight(), 0);
    assert!(slow.is_finished() || slow.await.unwrap().0 == StatusCode::OK);
    proxy.shutdown();
}

#[tokio::test]
async fn drain_timeout_cuts_open_websockets() {
    let upstream = Upstream::new(app("v1").await);
    let (proxy, _) = start(config(), RouteTable::single("web", Some(upstream.clone())));
    let url = format!("ws://{}/ws", proxy.local_addrs()[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(upstream.in_flight(), 1, "an open tunnel counts as in flight");
    let report = upstream.drain(Duration::from_millis(100)).await;
    assert_eq!(report.cut, 1);
    // The tunnel is closed: the next read ends.
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert!(!matches!(next, Some(Ok(m)) if m.is_text()));
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swap_under_load_loses_no_request() {
    let blue = Upstream::new(app("blue").await);
    let green = Upstream::new(app("green").await);
    let (proxy, base) = start(config(), RouteTable::single("web", Some(blue.clone())));
    let proxy = Arc::new(proxy);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..24 {
        let (base, ok, failed) = (base.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            for _ in 0..400 {
                let resp = c
                    .request(Request::get(format!("{base}/")).body(Empty::new()).unwrap())
                    .await;
                let good = match resp {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let body = r.into_body().collect().await.map(|b| b.to_bytes());
                        matches!(body.as_deref(), Ok(b"blue\n") | Ok(b"green\n"))
                    }
                    _ => false,
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let flipper = tokio::spawn({
        let (proxy, stop) = (proxy.clone(), stop.clone());
        async move {
            let mut swaps = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let next = if swaps.is_multiple_of(2) { &green } else { &blue };
                proxy.swap(RouteTable::single("web", Some(next.clone())));
                swaps += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            swaps
        }
    });
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = flipper.await.unwrap();
    let total = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    assert_eq!(total, 24 * 400, "every client ran its requests");
    assert!(swaps >= 20, "only {swaps} swaps happened during the load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during swaps");
    proxy.shutdown();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let (proxy, base) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(app("v1").await))),
    );
    let slow = tokio::spawn({
        let base = base.clone();
        async move { get(&client(), &format!("{base}/slow?ms=300"), None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.shutdown();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1\n"));
    tokio::time::timeout(Duration::from_secs(20), proxy.stopped())
        .await
        .unwrap();
    assert!(
        TcpStream::connect(proxy.local_addrs()[0]).await.is_err(),
        "still accepting"
    );
}
