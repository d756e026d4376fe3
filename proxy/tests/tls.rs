//! TLS termination end to end on loopback: a CA made here (rcgen), the
//! testapp as upstream, rustls clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use switchctl_proxy::{CertSource, CertStore, Proxy, ProxyConfig, RouteTable, TlsConfig, TlsError, Upstream};
use switchctl_testapp::spawn_on_loopback as app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ---- harness -------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate the CA issued.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchctl test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn issue(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA only, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that takes any certificate, to look at which one is served for
/// a name it does not cover (or for no name at all).
fn any_cert_client(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A directory of certificate files, removed at the end of the test.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("switchctl-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Write `leaf` as `<name>.pem` and `<name>.key`; the source naming them.
    fn write(&self, name: &str, leaf: &Leaf) -> CertSource {
        let source = self.source(name);
        std::fs::write(&source.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&source.key, &leaf.key_pem).unwrap();
        source
    }

    fn source(&self, name: &str) -> CertSource {
        CertSource::new(self.0.join(format!("{name}.pem")), self.0.join(format!("{name}.key")))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A proxy with one plain and one TLS listener in front of a testapp "v1".
async fn start(tls: TlsConfig) -> Proxy {
    let table = RouteTable::single("web", Some(Upstream::new(app("v1").await)));
    let config = ProxyConfig {
        workers: 2,
        ..ProxyConfig::default()
    };
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Proxy::bind_with_tls(config, &[loopback], &[loopback], tls, table).unwrap()
}

/// A store with `sources`, all of which must load.
fn store(sources: &[CertSource]) -> CertStore {
    let (store, reports) = CertStore::load(sources);
    for r in &reports {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    store
}

async fn connect(proxy: &Proxy, config: Arc<ClientConfig>, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy.tls_addrs()[0]).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// One HTTP/1.1 GET on `stream`: status and body.
async fn get_http1(stream: TlsStream<TcpStream>, host: &str, path: &str) -> hyper::Result<(StatusCode, String)> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

// ---- handshake and certificate choice ------------------------------------

#[tokio::test]
async fn handshake_with_the_ca_and_a_request_served() {
    let (ca, dir) = (Ca::new(), Dir::new("handshake"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(&[b"http/1.1"]), "a.test").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get_http1(stream, "a.test", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1\n"));
    proxy.shutdown();
}

#[tokio::test]
async fn sni_chooses_between_two_certificates() {
    let (ca, dir) = (Ca::new(), Dir::new("sni"));
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test", "www.b.test"]));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &a), dir.write("b", &b)]))).await;
    for (name, want) in [("a.test", &a), ("b.test", &b), ("www.b.test", &b)] {
        let stream = connect(&proxy, ca.client(&[]), name).await.unwrap();
        assert_eq!(served(&stream), want.der, "{name}");
    }
    proxy.shutdown();
}

#[tokio::test]
async fn wildcard_certificate_covers_one_label() {
    let (ca, dir) = (Ca::new(), Dir::new("wildcard"));
    let (first, wild) = (ca.issue(&["first.test"]), ca.issue(&["*.wild.test"]));
    let proxy = start(TlsConfig::new(store(&[
        dir.write("first", &first),
        dir.write("wild", &wild),
    ])))
    .await;
    let stream = connect(&proxy, ca.client(&[]), "app.wild.test").await.unwrap();
    assert_eq!(served(&stream), wild.der);
    let stream = connect(&proxy, ca.client(&[]), "APP.Wild.Test").await.unwrap();
    assert_eq!(served(&stream), wild.der, "names compare case-insensitively");
    let stream = connect(&proxy, any_cert_client(&[]), "a.b.wild.test").await.unwrap();
    assert_eq!(served(&stream), first.der, "two labels deep is not covered");
    let stream = connect(&proxy, any_cert_client(&[]), "wild.test").await.unwrap();
    assert_eq!(served(&stream), first.der, "the apex is not covered");
    proxy.shutdown();
}

#[tokio::test]
async fn no_sni_or_unknown_name_gets_the_first_certificate() {
    let (ca, dir) = (Ca::new(), Dir::new("nosni"));
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &a), dir.write("b", &b)]))).await;
    // An IP address as server name: rustls sends no SNI.
    let stream = connect(&proxy, any_cert_client(&[]), "127.0.0.1").await.unwrap();
    assert_eq!(served(&stream), a.der);
    let stream = connect(&proxy, any_cert_client(&[]), "unknown.test").await.unwrap();
    assert_eq!(served(&stream), a.der);
    proxy.shutdown();
}

// ---- HTTP over TLS ------------------------------------------------------------

#[tokio::test]
async fn h2_negotiated_by_alpn_is_served_from_an_http1_upstream() {
    let (ca, dir) = (Ca::new(), Dir::new("h2"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(&[b"h2", b"http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://a.test/headers")
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("host: a.test\n"), "{body}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    }
    proxy.shutdown();
}

#[tokio::test]
async fn forwarded_proto_is_https_over_tls_and_http_over_plain() {
    let (ca, dir) = (Ca::new(), Dir::new("xfp"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(&[b"http/1.1"]), "a.test").await.unwrap();
    let (status, body) = get_http1(stream, "a.test", "/headers").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    // The plain listener of the same proxy still says http.
    let tcp = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "a.test")
        .body(Full::<Bytes>::default())
        .unwrap();
    let body = send
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    proxy.shutdown();
}

#[tokio::test]
async fn websocket_over_tls_tunnels_to_the_upstream() {
    let (ca, dir) = (Ca::new(), Dir::new("ws"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(&[b"http/1.1"]), "a.test").await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
    proxy.shutdown();
}

// ---- redirect ------------------------------------------------------------------

#[tokio::test]
async fn plain_requests_are_redirected_to_https_with_their_query() {
    let (ca, dir) = (Ca::new(), Dir::new("redirect"));
    let mut tls = TlsConfig::new(store(&[dir.write("a", &ca.issue(&["shop.test"]))]));
    tls.redirect_http = true;
    let proxy = start(tls).await;
    let port = proxy.tls_addrs()[0].port();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let plain = proxy.local_addrs()[0];
    for host in ["shop.test", "shop.test:8080"] {
        let req = Request::post(format!("http://{plain}/cart/items?id=7&q=a%20b"))
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT, "{host}");
        assert_eq!(
            resp.headers()["location"],
            format!("https://shop.test:{port}/cart/items?id=7&q=a%20b").as_str(),
            "{host}"
        );
    }
    // Following it lands on the TLS listener.
    let stream = connect(&proxy, ca.client(&[b"http/1.1"]), "shop.test").await.unwrap();
    let (status, _) = get_http1(stream, "shop.test", "/cart/items?id=7").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown();
}

#[tokio::test]
async fn a_redirect_answered_while_draining_says_connection_close() {
    let (ca, dir) = (Ca::new(), Dir::new("redirectdrain"));
    let mut tls = TlsConfig::new(store(&[dir.write("a", &ca.issue(&["shop.test"]))]));
    tls.redirect_http = true;
    let proxy = start(tls).await;
    let stream = TcpStream::connect(proxy.local_addrs()[0]).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(driver);
    let get = || {
        Request::get("/cart")
            .header("host", "shop.test")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    // Kept alive before the shutdown: no `Connection: close` yet.
    let resp = conn.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert!(resp.headers().get("connection").is_none());
    resp.into_body().collect().await.unwrap();

    proxy.shutdown();
    // While draining, the redirect tells the client to close, like any
    // other answer; without it the client races the close with its next
    // request.
    let mut told = false;
    for _ in 0..100 {
        if conn.ready().await.is_err() {
            break;
        }
        let Ok(resp) = conn.send_request(get()).await else {
            break;
        };
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        if resp.headers().get("connection").is_some_and(|v| v == "close") {
            told = true;
            break;
        }
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(told, "no redirect said `Connection: close` during the drain");
}

#[tokio::test]
async fn acme_http01_challenge_paths_are_not_redirected() {
    let (ca, dir) = (Ca::new(), Dir::new("acmehttp"));
    let mut tls = TlsConfig::new(store(&[dir.write("a", &ca.issue(&["shop.test"]))]));
    tls.redirect_http = true;
    let proxy = start(tls).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!(
        "http://{}/.well-known/acme-challenge/some-token",
        proxy.local_addrs()[0]
    );
    let req = Request::get(url)
        .header("host", "shop.test")
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
    proxy.shutdown();
}

// ---- reload --------------------------------------------------------------------

#[tokio::test]
async fn reload_under_load_fails_no_request_and_serves_the_new_certificate() {
    let (ca, dir) = (Ca::new(), Dir::new("reload"));
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let source = dir.write("a", &old);
    let certs = store(std::slice::from_ref(&source));
    let proxy = Arc::new(start(TlsConfig::new(certs.clone())).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for i in 0..4 {
        let (proxy, stop, ok, failed, client) = (
            proxy.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            ca.client(&[b"http/1.1"]),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Half the loops open a connection per request, so
                // handshakes happen all through the reload.
                let fine = match connect(&proxy, client.clone(), "a.test").await {
                    Ok(stream) if i % 2 == 0 => matches!(
                        get_http1(stream, "a.test", "/").await,
                        Ok((StatusCode::OK, ref b)) if b == "v1\n"
                    ),
                    Ok(stream) => keep_alive_requests(stream, 20).await,
                    Err(_) => false,
                };
                let counter = if fine { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    dir.write("a", &new);
    let reports = proxy.reload_tls(std::slice::from_ref(&source));
    assert_eq!(reports.len(), 1);
    assert!(reports[0].result.is_ok(), "{:?}", reports[0].result);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during the reload");
    assert!(ok.load(Ordering::Relaxed) > 10, "the load loop ran");
    let stream = connect(&proxy, ca.client(&[]), "a.test").await.unwrap();
    assert_eq!(served(&stream), new.der);
    let status = certs.certificates();
    assert_eq!(status[0].last_error, None);
    proxy.shutdown();
}

/// `n` requests on one kept-alive connection; true if all were answered.
async fn keep_alive_requests(stream: TlsStream<TcpStream>, n: usize) -> bool {
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(conn);
    for _ in 0..n {
        let req = Request::get("/")
            .header("host", "a.test")
            .body(Full::<Bytes>::default())
            .unwrap();
        let Ok(resp) = send.send_request(req).await else {
            return false;
        };
        if resp.status() != StatusCode::OK || resp.into_body().collect().await.is_err() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn broken_certificate_file_keeps_the_old_one_serving_and_says_why() {
    let (ca, dir) = (Ca::new(), Dir::new("broken"));
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let sources = [dir.write("a", &a), dir.write("b", &b)];
    let certs = store(&sources);
    let proxy = start(TlsConfig::new(certs.clone())).await;

    // a's new file is cut short; b gets a new certificate meanwhile.
    std::fs::write(&sources[0].cert, &a.cert_pem[..a.cert_pem.len() / 2]).unwrap();
    let b2 = ca.issue(&["b.test"]);
    dir.write("b", &b2);
    let reports = proxy.reload_tls(&sources);
    let err = reports[0].result.as_ref().unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&*sources[0].cert.to_string_lossy()), "{msg}");
    assert_eq!(
        reports[0].serving.as_ref().unwrap().names,
        ["a.test"],
        "the old certificate still serves"
    );
    assert!(reports[1].result.is_ok(), "{:?}", reports[1].result);

    let stream = connect(&proxy, ca.client(&[]), "a.test").await.unwrap();
    assert_eq!(served(&stream), a.der, "old a serving");
    let stream = connect(&proxy, ca.client(&[]), "b.test").await.unwrap();
    assert_eq!(served(&stream), b2.der, "new b serving");

    let status = certs.certificates();
    assert_eq!(status[0].last_error.as_deref(), Some(msg.as_str()));
    assert_eq!(status[1].last_error, None);

    // Fixed: the error clears.
    dir.write("a", &a);
    assert!(proxy.reload_tls(&sources).iter().all(|r| r.result.is_ok()));
    assert_eq!(certs.certificates()[0].last_error, None);
    proxy.shutdown();
}

#[tokio::test]
async fn a_certificate_that_never_loaded_is_reported_and_the_others_serve() {
    let (ca, dir) = (Ca::new(), Dir::new("missing"));
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let missing = dir.source("missing");
    let mismatched = CertSource::new(dir.write("a", &a).cert, dir.write("b", &b).key);
    let (certs, reports) = CertStore::load(&[missing.clone(), mismatched, dir.source("b")]);
    let err = reports[0].result.as_ref().unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = reports[1].result.as_ref().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(reports[2].result.is_ok());
    assert!(reports[0].serving.is_none() && reports[1].serving.is_none());
    let proxy = start(TlsConfig::new(certs)).await;
    let stream = connect(&proxy, ca.client(&[]), "b.test").await.unwrap();
    assert_eq!(served(&stream), b.der, "the first certificate that loaded");
    proxy.shutdown();
}

#[test]
fn status_shows_names_issuer_and_expiry() {
    let (ca, dir) = (Ca::new(), Dir::new("status"));
    let certs = store(&[dir.write("a", &ca.issue(&["a.test", "*.a.test"]))]);
    let status = certs.certificates();
    let details = status[0].serving.as_ref().unwrap();
    assert_eq!(details.names, ["a.test", "*.a.test"]);
    assert!(details.issuer.contains("switchctl test CA"), "{}", details.issuer);
    assert!(details.not_after > SystemTime::now());
}

// ---- ACME hooks ----------------------------------------------------------------

#[tokio::test]
async fn in_memory_certificates_can_be_added_replaced_and_removed() {
    let (ca, dir) = (Ca::new(), Dir::new("memory"));
    let a = ca.issue(&["a.test"]);
    let certs = store(&[dir.write("a", &a)]);
    let proxy = start(TlsConfig::new(certs.clone())).await;
    let (c1, c2) = (ca.issue(&["c.test"]), ca.issue(&["c.test"]));
    certs
        .insert_pem("acme:c.test", c1.cert_pem.as_bytes(), c1.key_pem.as_bytes())
        .unwrap();
    assert_eq!(
        served(&connect(&proxy, ca.client(&[]), "c.test").await.unwrap()),
        c1.der
    );
    certs
        .insert_pem("acme:c.test", c2.cert_pem.as_bytes(), c2.key_pem.as_bytes())
        .unwrap();
    assert_eq!(
        served(&connect(&proxy, ca.client(&[]), "c.test").await.unwrap()),
        c2.der
    );
    // A bad replacement keeps c2.
    assert!(certs.insert_pem("acme:c.test", b"junk", b"junk").is_err());
    assert_eq!(
        served(&connect(&proxy, ca.client(&[]), "c.test").await.unwrap()),
        c2.der
    );
    // A file reload leaves in-memory certificates alone.
    proxy.reload_tls(&[dir.source("a")]);
    assert_eq!(
        served(&connect(&proxy, ca.client(&[]), "c.test").await.unwrap()),
        c2.der
    );
    assert!(certs.remove("acme:c.test"));
    let stream = connect(&proxy, any_cert_client(&[]), "c.test").await.unwrap();
    assert_eq!(served(&stream), a.der);
    proxy.shutdown();
}

#[tokio::test]
async fn tls_alpn_challenge_gets_the_challenge_certificate_only() {
    let (ca, dir) = (Ca::new(), Dir::new("alpn01"));
    let certs = store(&[dir.write("a", &ca.issue(&["a.test"]))]);
    let proxy = start(TlsConfig::new(certs.clone())).await;
    let challenge = ca.issue(&["acme.test"]);
    certs
        .set_alpn_challenge("acme.test", challenge.cert_pem.as_bytes(), challenge.key_pem.as_bytes())
        .unwrap();
    let acme = any_cert_client(&[switchctl_proxy::ACME_TLS_ALPN]);
    let mut stream = connect(&proxy, acme.clone(), "acme.test").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(switchctl_proxy::ACME_TLS_ALPN));
    assert_eq!(served(&stream), challenge.der);
    // The connection has done its job: closed, no HTTP.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    // No challenge for a name: no handshake.
    assert!(connect(&proxy, acme.clone(), "a.test").await.is_err());
    certs.clear_alpn_challenge("acme.test");
    assert!(connect(&proxy, acme, "acme.test").await.is_err());
    proxy.shutdown();
}

// ---- protocol hygiene ----------------------------------------------------------

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let (ca, dir) = (Ca::new(), Dir::new("silent"));
    let mut tls = TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]));
    tls.handshake_timeout = Duration::from_millis(300);
    let proxy = start(tls).await;
    let mut tcp = TcpStream::connect(proxy.tls_addrs()[0]).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    proxy.shutdown();
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let (ca, dir) = (Ca::new(), Dir::new("tls11"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    // A ClientHello that offers TLS 1.1 only (no supported_versions), with
    // suites of TLS 1.2 and 1.3.
    let mut hello = vec![0x03, 0x02];
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend([0x00, 0x04, 0xc0, 0x2f, 0x13, 0x01]);
    hello.extend([0x01, 0x00]);
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256), so
    // that the version is what the server objects to.
    hello.extend([0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    let mut handshake = vec![0x01, 0, 0, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend(handshake);
    let mut tcp = TcpStream::connect(proxy.tls_addrs()[0]).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    // An alert (21): protocol_version (70); never a ServerHello (22).
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
    assert_eq!(answer.get(6), Some(&70), "{answer:?}");
    proxy.shutdown();
}

#[tokio::test]
async fn inherited_listeners_serve_tls_too() {
    let (ca, dir) = (Ca::new(), Dir::new("inherited"));
    let table = RouteTable::single("web", Some(Upstream::new(app("v1").await)));
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secure = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]));
    let config = ProxyConfig {
        workers: 2,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::from_listeners_with_tls(config, vec![plain], vec![secure], tls, table).unwrap();
    let stream = connect(&proxy, ca.client(&[b"http/1.1"]), "a.test").await.unwrap();
    let (status, body) = get_http1(stream, "a.test", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1\n"));
    proxy.shutdown();
}

#[tokio::test]
async fn shutdown_closes_idle_tls_connections_and_stops() {
    let (ca, dir) = (Ca::new(), Dir::new("shutdown"));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(&[b"h2"]), "a.test").await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://a.test/").body(Full::<Bytes>::default()).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), StatusCode::OK);
    // A silent one, mid-handshake.
    let _silent = TcpStream::connect(proxy.tls_addrs()[0]).await.unwrap();
    proxy.shutdown();
    // Not held up by the silent client's 10 s handshake timeout.
    tokio::time::timeout(Duration::from_secs(5), proxy.stopped())
        .await
        .expect("the proxy stops with idle TLS connections open");
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "the idle h2 connection was closed");
}

#[tokio::test]
async fn an_idle_tls_connection_parks_and_serves_its_next_request() {
    idle_tls_connection_parks("park-h1", &[b"http/1.1"]).await;
}

/// A client that offers no ALPN (wrk, old clients) speaks HTTP/1.1: it is
/// served as one from the start, and so parks like one.
#[tokio::test]
async fn a_client_without_alpn_is_served_http1_and_parks() {
    idle_tls_connection_parks("park-no-alpn", &[]).await;
}

async fn idle_tls_connection_parks(test: &str, alpn: &[&[u8]]) {
    let (ca, dir) = (Ca::new(), Dir::new(test));
    let proxy = start(TlsConfig::new(store(&[dir.write("a", &ca.issue(&["a.test"]))]))).await;
    let stream = connect(&proxy, ca.client(alpn), "a.test").await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        Request::get("/")
            .header("host", "a.test")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let resp = send.send_request(get()).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
    // Quiet for a quarter of a second, it parks (within 0.5 s; 10 s allowed here).
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.parked_connections() != 1 {
        assert!(Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same TLS session goes on: parking kept the socket and its state.
    let resp = send.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
    assert_eq!(proxy.parked_connections(), 0);
    proxy.shutdown();
}
