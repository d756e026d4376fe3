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
use switchctl_testapp::spawn_on_loopback as app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// A proxy in front of one testapp answering `v1`.
async fn start_v1(config: ProxyConfig) -> (Proxy, String) {
    start(config, RouteTable::single("web", Some(Upstream::new(app("v1").await))))
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
        strip_prefix: false,
    }
}

/// A table of services, each a testapp answering its own name.
async fn apps_table(names: &[&str], routes: Vec<Route>) -> RouteTable {
    let mut services = Vec::new();
    for name in names {
        services.push((name.to_string(), Some(Upstream::new(app(name).await))));
    }
    RouteTable::new(services, routes).unwrap()
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
async fn a_stripping_route_forwards_the_path_without_its_prefix() {
    let mut api = route(&[], "/api", "api");
    api.strip_prefix = true;
    let table = apps_table(&["web", "api"], vec![route(&[], "/", "web"), api]).await;
    let (proxy, base) = start(config(), table);
    let c = client();
    // The test app answers /headers with the request's headers and any other
    // GET with its name: only a stripped /api/headers reaches /headers.
    let (status, body) = get(&c, &format!("{base}/api/headers?x=1"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-for"), "{body}");
    assert_eq!(get(&c, &format!("{base}/api"), None).await.1, "api\n");
    let (_, direct) = get(&c, &format!("{base}/headers"), None).await;
    assert!(direct.contains("x-forwarded-for"), "{direct}");
    assert_eq!(get(&c, &format!("{base}/apiary"), None).await.1, "web\n");
    proxy.shutdown();
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_stripped() {
    let (proxy, base) = start_v1(config()).await;
    let req = Request::get(format!("{base}/headers"))
        .header("host", "shop.example.com")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("te", "deflate;q=0.5, trailers")
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
    assert!(body.contains("te: trailers\n"), "only TE: trailers passes: {body}");
    assert!(!body.contains("deflate"), "{body}");
    proxy.shutdown();
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let (proxy, base) = start_v1(config()).await;
    let h2: Http = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let resp = h2
        .request(Request::get(format!("{base}/")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
    proxy.shutdown();
}

#[tokio::test]
async fn a_first_line_split_after_its_first_bytes_is_served_either_way() {
    let (proxy, _) = start_v1(config()).await;
    let addr = proxy.local_addrs()[0];
    // "P" could still be the HTTP/2 preface: hyper decides once more bytes
    // arrive. Anything else is HTTP/1 from its first byte.
    for (first, rest) in [
        (
            &b"P"[..],
            &b"OST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"[..],
        ),
        (b"G", b"ET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(rest).await.unwrap();
        let seen = closed_by_proxy(&mut conn).await.expect("the connection was left open");
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 200 OK"), "{first:?}: {seen}");
    }
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
    let (proxy, base) = start_v1(config()).await;
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
    let (proxy, _) = start_v1(config()).await;
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
    let (proxy, base) = start_v1(config).await;
    let (status, body) = get(&client(), &format!("{base}/slow?ms=5000"), None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream did not answer in time\n");
    proxy.shutdown();
}

/// The response timer is kept with the pooled upstream connection from
/// request to request: it neither runs out early on a reused connection
/// nor stays wound down.
#[tokio::test]
async fn the_response_timeout_holds_for_every_request_on_a_reused_connection() {
    let config = ProxyConfig {
        workers: 1,
        response_timeout: Duration::from_millis(200),
        ..config()
    };
    let (proxy, base) = start_v1(config).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &format!("{base}/"), None).await.0, StatusCode::OK);
        // Past the deadline the last request set: it must not fire now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            get(&client, &format!("{base}/slow?ms=50"), None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(&client, &format!("{base}/slow?ms=5000"), None).await.0,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    proxy.shutdown();
}

#[tokio::test]
async fn oversized_header_is_rejected_with_431() {
    let config = ProxyConfig {
        max_header_bytes: 8192,
        ..config()
    };
    let (proxy, base) = start_v1(config).await;
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
    let (proxy, _) = start_v1(config).await;
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

/// Between requests the header timeout is the sweeper's, not hyper's: a
/// kept-alive connection that dribbles its next request head is closed too.
#[tokio::test]
async fn a_next_request_head_that_dribbles_is_closed_after_the_header_timeout() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let mut conn = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    // 100 ms a byte: never quiet long enough to park, never a whole head,
    // and 2.6 s in all, far past the timeout.
    let mut dribble_cut = false;
    for b in b"GET / HTTP/1.1\r\nHost: a\r\n".iter() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if conn.write_all(&[*b]).await.is_err() {
            dribble_cut = true;
            break;
        }
    }
    let seen = closed_by_proxy(&mut conn).await;
    assert!(
        dribble_cut || seen.is_some(),
        "a dribbled second request head was left open"
    );
    let seen = String::from_utf8_lossy(seen.as_deref().unwrap_or_default()).into_owned();
    assert!(seen.starts_with("HTTP/1.1 200"), "first request not answered: {seen:?}");
    assert_eq!(seen.matches("HTTP/1.1 ").count(), 1, "{seen:?}");
    proxy.shutdown();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let config = ProxyConfig {
        workers: 1,
        max_connections: 1,
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
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
    let (proxy, _) = start_v1(config).await;
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
    // The tunnel is closed, with a Close frame.
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert_close_going_away(next);
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
    let (proxy, base) = start_v1(config()).await;
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

#[tokio::test]
async fn shutdown_lets_websockets_live_through_the_drain_then_closes_them() {
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(2),
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let url = format!("ws://{}/ws", proxy.local_addrs()[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let text = tokio_tungstenite::tungstenite::Message::text;
    ws.send(text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "before");

    proxy.shutdown();
    // Give the workers time to stop accepting and start draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(text("during the drain")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert_eq!(
        echo.unwrap().unwrap().into_text().unwrap(),
        "during the drain",
        "a tunnel was cut as shutdown began"
    );

    // At the drain timeout the tunnel is closed, with a Close frame
    // ("going away"), and the proxy stops.
    let next = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.unwrap();
    assert_close_going_away(next);
    tokio::time::timeout(Duration::from_secs(20), proxy.stopped())
        .await
        .unwrap();
}

/// An HTTP/1.1 client connection that can also be upgraded.
async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

#[tokio::test]
async fn an_upgrade_answered_while_draining_keeps_its_handshake() {
    let (proxy, _) = start_v1(config()).await;
    let addr = proxy.local_addrs()[0];
    let get = || Request::get("/").header("host", "a").body(Empty::new()).unwrap();
    // Two kept-alive connections: one probes for the drain, one upgrades.
    let mut probe = h1_conn(addr).await;
    let mut upgrader = h1_conn(addr).await;
    // Both answered once, so both were accepted before the shutdown.
    for conn in [&mut probe, &mut upgrader] {
        let resp = conn.send_request(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        conn.ready().await.unwrap();
    }

    proxy.shutdown();
    let mut draining = false;
    for _ in 0..100 {
        probe.ready().await.unwrap();
        let resp = probe.send_request(get()).await.unwrap();
        if resp.headers().get("connection").is_some_and(|v| v == "close") {
            draining = true;
            break;
        }
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(draining, "the proxy never started to drain");

    let handshake = Request::get("/ws")
        .header("host", "a")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::new())
        .unwrap();
    let mut resp = upgrader.send_request(handshake).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers().get("connection").unwrap(), "upgrade");
    let io = hyper::upgrade::on(&mut resp).await.expect("the connection upgrades");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap().into_text().unwrap(), "hi");
}

#[tokio::test]
async fn a_busy_http2_connection_is_asked_to_close_long_before_the_drain_timeout() {
    let config = ProxyConfig {
        drain_timeout: Duration::from_secs(60),
        ..config()
    };
    let (proxy, base) = start_v1(config).await;
    let h2: Http = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let (status, _) = get(&h2, &format!("{base}/"), None).await;
    assert_eq!(status, StatusCode::OK);
    // Keeps its connection busy through the shutdown, never quiet.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = tokio::spawn({
        let (stop, base) = (stop.clone(), base.clone());
        async move {
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = Request::get(format!("{base}/")).body(Full::default()).unwrap();
                if let Ok(resp) = h2.request(req).await {
                    let _ = resp.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(20), proxy.stopped()).await;
    stop.store(true, Ordering::Relaxed);
    busy.await.unwrap();
    assert!(stopped.is_ok(), "a busy HTTP/2 connection held the drain open");
}

/// Send raw bytes on a fresh connection; what came back before the proxy closed it.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let seen = closed_by_proxy(&mut conn).await.expect("the connection was left open");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn missing_duplicate_or_invalid_host_is_400_and_closes() {
    let (proxy, _) = start_v1(config()).await;
    let addr = proxy.local_addrs()[0];
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
    ] {
        // A second request follows on the same connection: it is never answered.
        let pipelined = [request, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        let seen = raw_exchange(addr, &pipelined).await;
        assert!(seen.starts_with("HTTP/1.1 400 "), "{seen}");
        assert_eq!(seen.matches("HTTP/1.1").count(), 1, "{seen}");
    }
    let seen = raw_exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.0 200 OK"), "HTTP/1.0 may omit Host: {seen}");
    proxy.shutdown();
}

#[tokio::test]
async fn dot_segments_and_escapes_do_not_escape_a_prefix_route() {
    let table = apps_table(
        &["web", "admin"],
        vec![route(&[], "/", "web"), route(&[], "/admin", "admin")],
    )
    .await;
    let (proxy, _) = start(config(), table);
    let addr = proxy.local_addrs()[0];
    for path in ["/api/../admin", "/%61dmin", "/api/%2e%2e/admin/x", "/./admin"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let seen = raw_exchange(addr, request.as_bytes()).await;
        assert!(
            seen.starts_with("HTTP/1.1 200 OK") && seen.ends_with("admin\n"),
            "{path}: {seen}"
        );
    }
    for path in ["/api%2F..%2Fadmin", "/a%zz"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        let seen = raw_exchange(addr, request.as_bytes()).await;
        assert!(seen.starts_with("HTTP/1.1 400 "), "{path}: {seen}");
    }
    proxy.shutdown();
}

#[tokio::test]
async fn an_exact_host_beats_a_longer_prefix_for_any_host() {
    let table = apps_table(
        &["web", "shop"],
        vec![route(&[], "/api", "web"), route(&["shop.test"], "/", "shop")],
    )
    .await;
    let (proxy, base) = start(config(), table);
    let c = client();
    assert_eq!(get(&c, &format!("{base}/api/x"), Some("shop.test")).await.1, "shop\n");
    assert_eq!(get(&c, &format!("{base}/api/x"), Some("other.test")).await.1, "web\n");
    proxy.shutdown();
}

/// An upstream that answers the first request on each connection, and
/// closes the connection without answering a later one that comes after the
/// connection sat idle for `limit` or more: its keep-alive timeout firing
/// just as the request arrives.
async fn upstream_with_keep_alive_timeout(limit: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut last_answer: Option<tokio::time::Instant> = None;
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    if last_answer.is_some_and(|t| t.elapsed() >= limit) {
                        return; // closed under the request
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    last_answer = Some(tokio::time::Instant::now());
                }
            });
        }
    });
    addr
}

async fn send(client: &Http, method: &str, url: &str, body: &'static str) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn an_idempotent_request_lost_on_a_reused_connection_is_retried_once() {
    let upstream = upstream_with_keep_alive_timeout(Duration::from_millis(50)).await;
    let config = ProxyConfig { workers: 1, ..config() };
    let (proxy, base) = start(config, RouteTable::single("web", Some(Upstream::new(upstream))));
    let c = client();
    let url = format!("{base}/");
    assert_eq!(send(&c, "GET", &url, "").await, StatusCode::OK);
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(send(&c, method, &url, "").await, StatusCode::OK, "{method}");
    }
    // A request with a body was sent: it is not sent twice.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(send(&c, "POST", &url, "data").await, StatusCode::BAD_GATEWAY);
    proxy.shutdown();
}

#[tokio::test]
async fn pooled_connections_expire_before_the_upstream_keep_alive_timeout() {
    let upstream = upstream_with_keep_alive_timeout(Duration::from_millis(400)).await;
    let config = ProxyConfig {
        workers: 1,
        upstream_idle_timeout: Duration::from_millis(100),
        ..config()
    };
    let (proxy, base) = start(config, RouteTable::single("web", Some(Upstream::new(upstream))));
    let c = client();
    let url = format!("{base}/");
    assert_eq!(send(&c, "POST", &url, "one").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send(&c, "POST", &url, "two").await, StatusCode::OK);
    proxy.shutdown();
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_once_expired_without_another_request() {
    // An upstream that counts the connections open to it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let counted = counted.clone();
            tokio::spawn(async move {
                // Each answer takes 200 ms, so a burst needs many connections.
                let slow = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), slow)
                    .await;
                counted.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let config = ProxyConfig {
        workers: 1,
        upstream_idle_timeout: Duration::from_millis(200),
        ..config()
    };
    let (proxy, base) = start(config, RouteTable::single("web", Some(Upstream::new(upstream))));
    // A burst: concurrent slow requests, each on its own upstream connection.
    let c = client();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (c, url) = (c.clone(), format!("{base}/"));
            tokio::spawn(async move { send(&c, "GET", &url, "").await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert!(open.load(Ordering::SeqCst) > 1, "the burst pooled several connections");
    // No request follows: the sweeper alone closes them once expired.
    let start = tokio::time::Instant::now();
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} idle upstream connections outlived their expiry",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown();
}

#[tokio::test]
async fn a_malformed_chunk_from_the_client_is_400_not_502() {
    let (proxy, _) = start_v1(config()).await;
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n";
    let seen = raw_exchange(proxy.local_addrs()[0], request).await;
    assert!(seen.starts_with("HTTP/1.1 400 "), "{seen}");
    proxy.shutdown();
}

#[tokio::test]
async fn the_response_timeout_starts_after_the_upload() {
    let config = ProxyConfig {
        response_timeout: Duration::from_millis(300),
        ..config()
    };
    let (proxy, base) = start_v1(config).await;
    // Ten chunks, 100 ms apart: the upload takes three response timeouts.
    let chunks = Box::pin(futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"0123456789"))),
            i + 1,
        ))
    }));
    let client: Client<HttpConnector, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{base}/upload"))
        .body(StreamBody::new(chunks))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "100\n");
    proxy.shutdown();
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded() {
    let (proxy, _) = start_v1(config()).await;
    let request = b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let seen = raw_exchange(proxy.local_addrs()[0], request).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    let body = seen.to_ascii_lowercase();
    assert!(
        !body.contains("upgrade: h2c") && !body.contains("http2-settings"),
        "{seen}"
    );
    proxy.shutdown();
}

/// An upstream answering with a chunked body and a trailer, and echoing the
/// request's `TE` and trailers back in its headers.
async fn upstream_with_trailers() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let te = req.headers().get("te").cloned();
                let collected = req.into_body().collect().await.unwrap();
                let request_trailer = collected.trailers().and_then(|t| t.get("x-request-sum")).cloned();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
                let frames = futures_util::stream::iter([
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"body\n"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                let mut resp = hyper::Response::new(StreamBody::new(frames));
                resp.headers_mut()
                    .insert("trailer", http::HeaderValue::from_static("x-checksum"));
                if let Some(te) = te {
                    resp.headers_mut().insert("x-saw-te", te);
                }
                if let Some(sum) = request_trailer {
                    resp.headers_mut().insert("x-saw-request-sum", sum);
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn trailers_pass_both_ways_and_te_trailers_is_kept() {
    let (proxy, _) = start(
        config(),
        RouteTable::single("web", Some(Upstream::new(upstream_with_trailers().await))),
    );
    let stream = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request_trailers = http::HeaderMap::new();
    request_trailers.insert("x-request-sum", http::HeaderValue::from_static("42"));
    let frames = futures_util::stream::iter([
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"upload"))),
        Ok(Frame::trailers(request_trailers)),
    ]);
    let req = Request::post("/")
        .header("host", "a")
        .header("te", "trailers")
        .header("trailer", "x-request-sum")
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("x-saw-te").unwrap(), "trailers");
    assert_eq!(resp.headers().get("x-saw-request-sum").unwrap(), "42");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "body\n");
    assert_eq!(trailers.unwrap().get("x-checksum").unwrap(), "abc");
    proxy.shutdown();
}

/// An upstream that answers `early` to each request head at once, then
/// reads whatever body follows, slowly, keeping the connection open.
async fn upstream_answering_early() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nearly\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connection_still_uploading_is_not_handed_to_the_next_request() {
    let config = ProxyConfig { workers: 1, ..config() };
    let (proxy, base) = start(
        config,
        RouteTable::single("web", Some(Upstream::new(upstream_answering_early().await))),
    );
    // One chunk, then the upload stalls (until the test ends).
    let (_hold, stall) = tokio::sync::oneshot::channel::<()>();
    let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x")))]);
    let stalled = futures_util::stream::once(async move {
        let _ = stall.await;
        Ok(Frame::data(Bytes::new()))
    });
    let body = StreamBody::new(Box::pin(first.chain(stalled)));
    let uploader: Client<HttpConnector, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = uploader
        .request(Request::post(format!("{base}/")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "early\n");

    let next = tokio::time::timeout(Duration::from_secs(10), get(&client(), &format!("{base}/"), None)).await;
    assert_eq!(next.expect("the next request waited on a busy connection").1, "early\n");
    proxy.shutdown();
}

#[tokio::test]
async fn a_request_body_that_stalls_is_408_after_the_body_read_timeout() {
    let config = ProxyConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly the start";
    let seen = raw_exchange(proxy.local_addrs()[0], request).await;
    assert!(seen.starts_with("HTTP/1.1 408 "), "{seen}");
    proxy.shutdown();
}

/// A kept-alive connection that has been answered once.
async fn answered_once(addr: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    conn
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_make_room_for_new_ones() {
    let config = ProxyConfig {
        workers: 1,
        max_connections: 2,
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let addr = proxy.local_addrs()[0];
    let mut idle = [answered_once(addr).await, answered_once(addr).await];
    let newcomer = tokio::time::timeout(Duration::from_secs(10), answered_once(addr)).await;
    assert!(
        newcomer.is_ok(),
        "a new client waited while idle connections held every slot"
    );
    let mut closed = 0;
    for conn in &mut idle {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed");
    proxy.shutdown();
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_connections() {
    let config = ProxyConfig {
        max_connections_per_ip: 2,
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let addr = proxy.local_addrs()[0];
    let first = answered_once(addr).await;
    let _second = answered_once(addr).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let seen = closed_by_proxy(&mut third)
        .await
        .expect("the third connection was served");
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    // A slot freed is a slot for the same client again.
    drop(first);
    let mut served = false;
    for _ in 0..100 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let _ = conn
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let seen = closed_by_proxy(&mut conn).await.unwrap_or_default();
        if seen.starts_with(b"HTTP/1.1 200 OK") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the client never got its slot back");
    proxy.shutdown();
}

type WsItem = Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>;

/// The proxy ended a WebSocket as the protocol wants: Close, 1001.
fn assert_close_going_away(next: WsItem) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    match next {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away)
        }
        other => panic!("expected a Close frame (1001), got {other:?}"),
    }
}

#[tokio::test]
async fn an_open_websocket_still_counts_as_its_clients_connection() {
    let config = ProxyConfig {
        max_connections_per_ip: 1,
        ..config()
    };
    let (proxy, _) = start_v1(config).await;
    let addr = proxy.local_addrs()[0];
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "hi");
    let mut other = TcpStream::connect(addr).await.unwrap();
    let _ = other.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let seen = closed_by_proxy(&mut other)
        .await
        .expect("a second connection was served");
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    proxy.shutdown();
}

#[tokio::test]
async fn a_websocket_whose_client_vanishes_is_no_longer_in_flight() {
    let upstream = Upstream::new(app("v1").await);
    let (proxy, _) = start(config(), RouteTable::single("web", Some(upstream.clone())));
    let stream = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    let url = format!("ws://{}/ws", proxy.local_addrs()[0]);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(upstream.in_flight(), 1);
    // Gone without a close frame or a FIN: a reset.
    socket2::SockRef::from(ws.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(ws);
    let report = upstream.drain(Duration::from_secs(20)).await;
    assert_eq!(report.cut, 0, "the tunnel outlived its client");
    proxy.shutdown();
}

#[tokio::test]
async fn a_successor_adopts_the_listeners_and_serves_connections_queued_meanwhile() {
    let (old, base) = start_v1(config()).await;
    let addr = old.local_addrs()[0];
    let handed = old.listeners().unwrap().unwrap();
    assert_eq!(handed.plain.len(), 2, "one group per worker");
    old.shutdown();
    old.stopped().await;
    assert!(old.listeners().is_none(), "nothing to hand over once shut down");
    // Nobody accepts now, yet the sockets stay open: a connection queues.
    let mut queued = TcpStream::connect(addr).await.unwrap();
    queued
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let table = RouteTable::single("web", Some(Upstream::new(app("v2").await)));
    let new = Proxy::from_worker_listeners(config(), handed, None, table).unwrap();
    let mut answer = String::new();
    queued.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("v2\n"),
        "{answer}"
    );
    assert_eq!(get(&client(), &base, None).await, (StatusCode::OK, "v2\n".into()));
    new.shutdown();
    new.stopped().await;
}

#[tokio::test]
async fn a_proxy_shut_down_without_a_successor_closes_its_sockets() {
    let (proxy, _) = start_v1(config()).await;
    let addr = proxy.local_addrs()[0];
    proxy.shutdown();
    proxy.stopped().await;
    assert!(TcpStream::connect(addr).await.is_err(), "the port is closed");
}
