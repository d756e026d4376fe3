//! `X-Forwarded-*` from trusted and untrusted peers, and ACME HTTP-01
//! answers served before routing. Loopback only: 127.0.0.1 is the peer.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use switchctl_proxy::{CertStore, Cidr, Proxy, ProxyConfig, RouteTable, TlsConfig, Upstream};

/// A proxy trusting `trusted`, with TLS on (an empty store) when `tls`.
async fn start(trusted: &[&str], certs: Option<CertStore>) -> (Proxy, String) {
    let config = ProxyConfig {
        workers: 1,
        trusted_proxies: trusted.iter().map(|c| c.parse::<Cidr>().unwrap()).collect(),
        ..ProxyConfig::default()
    };
    let table = RouteTable::single(
        "web",
        Some(Upstream::new(switchctl_testapp::spawn_on_loopback("v1").await)),
    );
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let proxy = match certs {
        None => Proxy::bind(config, &[any], table).unwrap(),
        Some(certs) => Proxy::bind_with_tls(config, &[any], &[any], TlsConfig::new(certs), table).unwrap(),
    };
    let base = format!("http://{}", proxy.local_addrs()[0]);
    (proxy, base)
}

/// GET `url` with `headers`: status and body.
async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::default()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const SPOOFED: [(&str, &str); 4] = [
    ("host", "shop.example.com"),
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
];

#[tokio::test]
async fn untrusted_peer_cannot_spoof_forwarded_headers() {
    // 10.0.0.0/8 is trusted, the loopback peer is not.
    let (proxy, base) = start(&["10.0.0.0/8"], None).await;
    let (status, body) = get(&format!("{base}/headers"), &SPOOFED).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example.com\n"), "{body}");
    assert!(
        !body.contains("203.0.113.7") && !body.contains("evil.example"),
        "{body}"
    );
    proxy.shutdown();
}

#[tokio::test]
async fn trusted_peer_keeps_forwarded_headers_and_for_is_appended() {
    let (proxy, base) = start(&["127.0.0.0/8"], None).await;
    let (_, body) = get(&format!("{base}/headers"), &SPOOFED).await;
    assert!(body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(body.contains("x-forwarded-host: evil.example\n"), "{body}");
    // What a trusted peer did not send is filled in as for anyone.
    let (_, body) = get(&format!("{base}/headers"), &[("host", "shop.example.com")]).await;
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example.com\n"), "{body}");
    proxy.shutdown();
}

#[tokio::test]
async fn http01_challenge_is_answered_before_routing_and_unknown_tokens_are_routed() {
    let certs = CertStore::new();
    let (proxy, base) = start(&[], Some(certs.clone())).await;
    certs.set_http_challenge("tok123", "tok123.thumbprint");
    let url = format!("{base}/.well-known/acme-challenge/tok123");
    assert_eq!(get(&url, &[]).await, (StatusCode::OK, "tok123.thumbprint".to_string()));
    // A token nobody set goes to the app (its own /.well-known, if any).
    let other = format!("{base}/.well-known/acme-challenge/other");
    assert_eq!(get(&other, &[]).await.1, "v1\n");
    certs.clear_http_challenge("tok123");
    assert_eq!(get(&url, &[]).await.1, "v1\n");
    proxy.shutdown();
}
