//! TLS end to end through the real daemon: `[proxy.tls]` from the config,
//! certificates from a CA made here (rcgen), SIGHUP reloads under load,
//! forwarded headers from trusted and untrusted peers, socket activation,
//! and ACME against Pebble (Debian's `pebble`) with `pebble-challtestsrv`
//! as its DNS. Pebble tests are skipped, saying so, when it is not
//! installed, unless `SWITCHCTL_REQUIRE_PEBBLE=1`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, process_service, text, wait_for, Daemon};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ---- certificates --------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf the CA issued: PEM files' contents and its DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_until(names, None)
    }

    /// A leaf for `names`, valid since 2000 and until `not_after` if given.
    fn issue_until(&self, names: &[&str], not_after: Option<time::OffsetDateTime>) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        if let Some(t) = not_after {
            params.not_after = t;
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Write `leaf` to `cert`/`key` by renaming complete files into place, as
/// certbot and an operator's `mv` do.
fn install(leaf: &Leaf, cert: &Path, key: &Path) {
    for (path, data) in [(key, &leaf.key_pem), (cert, &leaf.cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

// ---- TLS client ----------------------------------------------------------

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// The leaf served to a new connection for `name`, by a full handshake (a
/// client of its own: a resumed session would show the certificate it was
/// first made with).
async fn served_for(addr: SocketAddr, roots: &RootCertStore, name: &str) -> CertificateDer<'static> {
    served(&connect(addr, client_config(roots.clone()), name).await.unwrap())
}

/// GET `path` on a new TLS connection: status and body.
async fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, host: &str, path: &str) -> (u16, String) {
    let stream = connect(addr, config, host).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A load loop over TLS: `clients` tasks, each sending requests on a
/// connection and opening a new one every few requests, so handshakes go
/// on during a reload. Every failure is counted.
struct TlsLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TlsLoad {
    fn start(addr: SocketAddr, config: Arc<ClientConfig>, host: &'static str, clients: usize) -> TlsLoad {
        let load = TlsLoad {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let started = Instant::now();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failures, config) = (
                    load.stop.clone(),
                    load.ok.clone(),
                    load.failures.clone(),
                    config.clone(),
                );
                tokio::spawn(async move {
                    let fail = |why: String| failures.lock().unwrap().push(why);
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                        let stream = match connect(addr, config.clone(), host).await {
                            Ok(s) => s,
                            Err(e) => {
                                fail(format!("handshake: {e}"));
                                continue;
                            }
                        };
                        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                        else {
                            fail("http handshake".into());
                            continue;
                        };
                        tokio::spawn(conn);
                        for _ in 0..10 {
                            if stop.load(Ordering::Relaxed) || send.ready().await.is_err() {
                                break;
                            }
                            let req = http::Request::get("/")
                                .header("host", host)
                                .body(Empty::<Bytes>::new())
                                .unwrap();
                            match send.send_request(req).await {
                                Ok(resp) if resp.status().is_success() => match resp.into_body().collect().await {
                                    Ok(_) => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => fail(format!("body: {e}")),
                                },
                                Ok(resp) => fail(format!("status {}", resp.status())),
                                Err(e) => {
                                    fail(format!("request: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        TlsLoad { tasks, ..load }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop; the requests that succeeded and the failures.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

// ---- daemon with TLS ------------------------------------------------------

/// A process-driver daemon with `[proxy.tls]` (`tls_body` under it) and
/// `proxy_keys` in `[proxy]`, configured, not started. Its TLS address is
/// returned too.
fn configure(proxy_keys: &str, tls_body: &str) -> (Daemon, SocketAddr) {
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let proxy = format!("{proxy_keys}\n\n[proxy.tls]\nlisten = [\"{tls}\"]\n{tls_body}\n");
    let d = Daemon::configure("", &proxy, "process", "", &process_service("web", ""));
    (d, tls)
}

async fn deploy(d: &Daemon, tag: &str) {
    let out = d.cli(&["deploy", tag]).await;
    assert_eq!(out.status.code(), Some(0), "deploy failed: {}\n{}", text(&out), d.log());
}

/// The certificate rows of `status --json`.
async fn certificates(d: &Daemon) -> Vec<Value> {
    d.status().await["certificates"].as_array().cloned().unwrap_or_default()
}

/// A daemon serving `site` for `test.local` from files in its directory.
async fn daemon_with_files(ca: &Ca, proxy_keys: &str) -> (Daemon, SocketAddr, PathBuf, PathBuf) {
    let (mut d, tls) = configure(
        proxy_keys,
        "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\nredirect_http = false",
    );
    // Relative to the config file's directory.
    let (cert, key) = (d.dir.path().join("site.pem"), d.dir.path().join("site.key"));
    install(&ca.issue(&["test.local"]), &cert, &key);
    d.spawn();
    deploy(&d, "v1").await;
    (d, tls, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_certificates_under_load_with_no_failed_request() {
    let ca = Ca::new("reload CA");
    let (d, tls, cert, key) = daemon_with_files(&ca, "").await;
    let config = client_config(ca.roots());
    let old = served_for(tls, &ca.roots(), "test.local").await;
    assert_eq!(
        https_get(tls, config.clone(), "test.local", "/").await,
        (200, "v1\n".into())
    );

    let load = TlsLoad::start(tls, config.clone(), "test.local", 8);
    wait_for("requests over TLS", Duration::from_secs(30), || {
        let n = load.ok();
        async move { n >= 200 }
    })
    .await;
    let new = ca.issue(&["test.local"]);
    install(&new, &cert, &key);
    d.signal(1);
    let (roots, want) = (ca.roots(), new.der.clone());
    wait_for("the new certificate to be served", Duration::from_secs(30), || {
        let (roots, want) = (roots.clone(), want.clone());
        async move { served_for(tls, &roots, "test.local").await == want }
    })
    .await;
    let after = load.ok();
    wait_for("requests after the reload", Duration::from_secs(30), || {
        let n = load.ok();
        async move { n >= after + 200 }
    })
    .await;
    let (ok, failures) = load.stop().await;
    assert!(failures.is_empty(), "{} failed of {ok}: {failures:?}", failures.len());
    assert_ne!(old, new.der);
    assert!(d.log().contains("certificate reloaded"), "{}", d.log());

    let certs = certificates(&d).await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0]["names"], serde_json::json!(["test.local"]));
    assert_eq!(certs[0]["source"], "file");
    assert!(certs[0]["issuer"].as_str().unwrap().contains("reload CA"), "{certs:?}");
    assert!(certs[0]["not_after"].as_str().unwrap().ends_with('Z'), "{certs:?}");
    assert!(certs[0]["last_error"].is_null(), "{certs:?}");
    let human = d.cli(&["status"]).await;
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("test.local"),
        "{}",
        text(&human)
    );
}

#[tokio::test]
async fn broken_new_certificate_keeps_the_old_one_serving_with_a_clear_error() {
    let ca = Ca::new("broken CA");
    let (d, tls, cert, _key) = daemon_with_files(&ca, "").await;
    let config = client_config(ca.roots());
    let old = served_for(tls, &ca.roots(), "test.local").await;

    std::fs::write(&cert, "this is not a certificate\n").unwrap();
    d.signal(1);
    let daemon = &d;
    wait_for("the reload error in status", Duration::from_secs(30), || async move {
        certificates(daemon)
            .await
            .first()
            .is_some_and(|c| !c["last_error"].is_null())
    })
    .await;
    let certs = certificates(&d).await;
    let error = certs[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains(&cert.display().to_string()) && error.contains("no certificate found"),
        "{error}"
    );
    assert_eq!(
        certs[0]["names"],
        serde_json::json!(["test.local"]),
        "the old one still serves"
    );
    assert_eq!(served_for(tls, &ca.roots(), "test.local").await, old);
    assert_eq!(https_get(tls, config, "test.local", "/").await.0, 200);
    assert!(d.log().contains("the previous one keeps serving"), "{}", d.log());
    let human = d.cli(&["status"]).await;
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("load error:"),
        "{}",
        text(&human)
    );
}

/// GET /headers from a client bound to `from`, with spoofed forwarded headers.
async fn headers_from(from: [u8; 4], proxy: SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/headers")
        .header("host", "test.local")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[tokio::test]
async fn forwarded_headers_are_kept_from_trusted_proxies_only() {
    let ca = Ca::new("headers CA");
    // 127.0.0.2 plays the trusted load balancer; 127.0.0.1 is anyone else.
    let (d, tls, _, _) = daemon_with_files(&ca, "trusted_proxies = [\"127.0.0.2/32\"]").await;

    let untrusted = headers_from([127, 0, 0, 1], d.proxy).await;
    assert!(untrusted.contains("x-forwarded-for: 127.0.0.1\n"), "{untrusted}");
    assert!(untrusted.contains("x-forwarded-proto: http\n"), "{untrusted}");
    assert!(untrusted.contains("x-forwarded-host: test.local\n"), "{untrusted}");

    let trusted = headers_from([127, 0, 0, 2], d.proxy).await;
    assert!(
        trusted.contains("x-forwarded-for: 203.0.113.7, 127.0.0.2\n"),
        "{trusted}"
    );
    assert!(trusted.contains("x-forwarded-proto: https\n"), "{trusted}");
    assert!(trusted.contains("x-forwarded-host: public.example\n"), "{trusted}");

    // Over TLS the proxy itself says https.
    let (_, body) = https_get(tls, client_config(ca.roots()), "test.local", "/headers").await;
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
}

#[tokio::test]
async fn socket_activated_tls_port_is_told_apart_by_its_port() {
    let ca = Ca::new("activation CA");
    // systemd hands over one socket: the port of proxy.tls.listen, so TLS.
    let inherited = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = inherited.local_addr().unwrap();
    let proxy = format!(
        "\n[proxy.tls]\nlisten = [\"{tls}\"]\ncertificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n"
    );
    let mut d = Daemon::configure("", &proxy, "process", "", &process_service("web", ""));
    install(
        &ca.issue(&["test.local"]),
        &d.dir.path().join("site.pem"),
        &d.dir.path().join("site.key"),
    );
    d.inherited = Some(inherited);
    d.spawn();
    deploy(&d, "v1").await;
    assert_eq!(
        https_get(tls, client_config(ca.roots()), "test.local", "/").await,
        (200, "v1\n".into())
    );
}

// ---- ACME against Pebble ----------------------------------------------------

/// Is `name` on PATH?
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false)
}

/// Pebble and its DNS, on loopback ports of their own; stopped on drop.
struct Pebble {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    /// The ACME directory URL.
    directory: String,
    /// Trust root of Pebble's own HTTPS (made here).
    ca_file: PathBuf,
    ca: Ca,
    management: SocketAddr,
    /// pebble-challtestsrv's management API (DNS records).
    dns_management: SocketAddr,
}

impl Pebble {
    /// Pebble validating on `http_port` (HTTP-01) and `tls_port`
    /// (TLS-ALPN-01), every name resolving to 127.0.0.1. `None` (with the
    /// reason printed) when Pebble is not installed, unless required.
    fn start(http_port: u16, tls_port: u16) -> Option<Pebble> {
        if !on_path("pebble") || !on_path("pebble-challtestsrv") {
            let why = "pebble / pebble-challtestsrv not installed (Debian: apt-get install -y pebble)";
            if std::env::var("SWITCHCTL_REQUIRE_PEBBLE").as_deref() == Ok("1") {
                panic!("SWITCHCTL_REQUIRE_PEBBLE=1 but {why}");
            }
            // Straight to stderr: the test harness captures eprintln!.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: {why}");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("switchctl-pebble-").tempdir().unwrap();
        let ca = Ca::new("Pebble HTTPS test CA");
        let leaf = ca.issue(&["127.0.0.1", "localhost"]);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
        let (acme, management, dns, dns_management) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let logs = dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
        let mut pebble = Pebble {
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca_file,
            ca,
            management: ([127, 0, 0, 1], management).into(),
            dns_management: ([127, 0, 0, 1], dns_management).into(),
            dir,
        };
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        pebble.children.push(dns_server);
        let server = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        pebble.children.push(server);
        let start = Instant::now();
        for port in [dns_management, acme, management] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "pebble not up:\n{}",
                    pebble.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(pebble)
    }

    fn log(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.log", "challtestsrv.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The root Pebble issues under, from its management API.
    async fn issuing_roots(&self) -> RootCertStore {
        let stream = connect(self.management, client_config(self.ca.roots()), "127.0.0.1")
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/roots/0")
            .header("host", self.management.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let pem = resp.into_body().collect().await.unwrap().to_bytes();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        assert!(
            !roots.is_empty(),
            "no root from Pebble: {}",
            String::from_utf8_lossy(&pem)
        );
        roots
    }

    /// Make `host` resolve to `ip` (loopback: nothing leaves the machine).
    async fn resolve(&self, host: &str, ip: &str) {
        let stream = TcpStream::connect(self.dns_management).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body = serde_json::json!({"host": format!("{host}."), "addresses": [ip]}).to_string();
        let req = http::Request::post("/add-a")
            .header("host", self.dns_management.to_string())
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert!(resp.status().is_success(), "challtestsrv /add-a: {}", resp.status());
    }

    /// Stop both processes (the daemon must then do without Pebble).
    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A daemon whose ACME account is with `pebble`, for `domains` over `challenge`.
fn acme_daemon(domains: &[&str], challenge: &str) -> Option<(Daemon, SocketAddr, Pebble)> {
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let http = free_port();
    let pebble = Pebble::start(http, tls.port())?;
    let proxy = format!(
        r#"
[proxy.tls]
listen = ["{tls}"]

[proxy.tls.acme]
directory = "{directory}"
ca_file = "{ca_file}"
domains = {domains:?}
challenge = "{challenge}"
"#,
        directory = pebble.directory,
        ca_file = pebble.ca_file.display(),
    );
    let mut d = Daemon::configure("", &proxy, "process", "", &process_service("web", ""));
    // The plain listener is where Pebble sends HTTP-01 requests.
    let config = d
        .config_text()
        .replace(&format!(":{}\"]", d.proxy.port()), &format!(":{http}\"]"));
    std::fs::write(&d.config, config).unwrap();
    d.proxy = ([127, 0, 0, 1], http).into();
    Some((d, tls, pebble))
}

/// The ACME row of `domain` once its certificate from Pebble serves.
async fn wait_for_acme_certificate(d: &Daemon, pebble: &Pebble, domain: &str) -> Value {
    let start = Instant::now();
    loop {
        let certs = certificates(d).await;
        let row = certs
            .iter()
            .find(|c| c["source"] == "acme" && c["names"].as_array().is_some_and(|n| n.iter().any(|n| n == domain)))
            .cloned();
        if let Some(row) = row.filter(|r| r["issuer"].as_str().is_some_and(|i| i.contains("Pebble"))) {
            return row;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no certificate from Pebble for {domain}: {certs:#?}\n--- daemon\n{}\n--- pebble\n{}",
            d.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The cache directory of the daemon's ACME server.
fn acme_cache(d: &Daemon, pebble: &Pebble) -> PathBuf {
    let server = pebble.directory.trim_start_matches("https://").replace([':', '/'], "_");
    d.state_dir().join("acme").join(server)
}

#[tokio::test]
async fn acme_http01_issues_a_certificate_and_a_restart_reuses_it_without_pebble() {
    let Some((mut d, tls, mut pebble)) = acme_daemon(&["a.example.com"], "http-01") else {
        return;
    };
    d.spawn();
    let row = wait_for_acme_certificate(&d, &pebble, "a.example.com").await;
    assert!(row["acme_error"].is_null(), "{row}");
    let roots = pebble.issuing_roots().await;
    // Verified against Pebble's root: the chain served is Pebble's.
    let first = served_for(tls, &roots, "a.example.com").await;
    let (status, _) = https_get(tls, client_config(roots.clone()), "a.example.com", "/").await;
    assert_eq!(status, 503, "served, with no release deployed yet");

    let cache = acme_cache(&d, &pebble);
    assert_eq!(mode(&d.state_dir().join("acme")), 0o700);
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("account.json")), 0o600);
    assert_eq!(mode(&cache.join("a.example.com.pem")), 0o600);

    // Pebble gone: a restart must serve the cached certificate and ask nothing.
    pebble.stop();
    assert_eq!(d.terminate(), Some(0));
    d.spawn();
    let row = certificates(&d)
        .await
        .into_iter()
        .find(|c| c["source"] == "acme")
        .unwrap();
    assert!(row["issuer"].as_str().unwrap().contains("Pebble"), "{row}");
    assert!(
        row["acme_error"].is_null(),
        "asked the server though the cache was valid: {row}"
    );
    let next = row["acme_next_attempt"].as_str().unwrap();
    let next = humantime::parse_rfc3339(next).unwrap();
    assert!(
        next > std::time::SystemTime::now() + Duration::from_secs(24 * 3600),
        "a renewal is due although the cached certificate is fresh: {row}"
    );
    assert_eq!(served_for(tls, &roots, "a.example.com").await, first);
}

#[tokio::test]
async fn acme_tls_alpn01_issues_a_certificate_served_on_the_tls_listener() {
    let Some((mut d, tls, pebble)) = acme_daemon(&["b.example.com"], "tls-alpn-01") else {
        return;
    };
    d.spawn();
    deploy(&d, "v1").await;
    let row = wait_for_acme_certificate(&d, &pebble, "b.example.com").await;
    assert!(row["acme_error"].is_null(), "{row}");
    let roots = pebble.issuing_roots().await;
    assert_eq!(
        https_get(tls, client_config(roots), "b.example.com", "/").await,
        (200, "v1\n".into())
    );
    let human = d.cli(&["status"]).await;
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("b.example.com"),
        "{}",
        text(&human)
    );
}

#[tokio::test]
async fn acme_renews_a_cached_certificate_near_its_expiry() {
    let Some((mut d, tls, pebble)) = acme_daemon(&["c.example.com"], "http-01") else {
        return;
    };
    // A cached certificate (key and chain in one file) that expires tomorrow.
    let old_ca = Ca::new("Old test issuer");
    let tomorrow = time::OffsetDateTime::now_utc() + Duration::from_secs(24 * 3600);
    let old = old_ca.issue_until(&["c.example.com"], Some(tomorrow));
    let cache = acme_cache(&d, &pebble);
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join("c.example.com.pem"),
        format!("{}{}", old.key_pem, old.cert_pem),
    )
    .unwrap();

    d.spawn();
    let row = wait_for_acme_certificate(&d, &pebble, "c.example.com").await;
    assert!(row["acme_error"].is_null(), "{row}");
    assert!(d.log().contains("serving the cached certificate"), "{}", d.log());
    let roots = pebble.issuing_roots().await;
    let renewed = served_for(tls, &roots, "c.example.com").await;
    assert_ne!(renewed, old.der);
    let cached = std::fs::read(cache.join("c.example.com.pem")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cached).contains(old.cert_pem.trim()),
        "cache not renewed"
    );
    assert_eq!(mode(&cache.join("c.example.com.pem")), 0o600);
}

#[tokio::test]
async fn acme_failing_domain_is_reported_and_blocks_neither_the_others_nor_the_proxy() {
    let Some((mut d, tls, pebble)) = acme_daemon(&["bad.example.com", "good.example.com"], "http-01") else {
        return;
    };
    // Pebble looks for bad.example.com where switchctl does not listen.
    pebble.resolve("bad.example.com", "127.0.0.2").await;
    d.spawn();
    deploy(&d, "v1").await;
    let row = wait_for_acme_certificate(&d, &pebble, "good.example.com").await;
    assert!(row["acme_error"].is_null(), "{row}");
    let daemon = &d;
    wait_for(
        "the failing domain's error in status",
        Duration::from_secs(120),
        || async move {
            certificates(daemon)
                .await
                .iter()
                .any(|c| c["names"] == serde_json::json!(["bad.example.com"]) && !c["acme_error"].is_null())
        },
    )
    .await;
    let certs = certificates(&d).await;
    let bad = certs
        .iter()
        .find(|c| c["names"] == serde_json::json!(["bad.example.com"]))
        .unwrap();
    let error = bad["acme_error"].as_str().unwrap();
    let logs = || format!("--- daemon\n{}\n--- pebble\n{}", d.log(), pebble.log());
    assert!(
        error.contains("bad.example.com not validated over http-01"),
        "{error}\n{}",
        logs()
    );
    assert!(
        bad["issuer"].is_null() && bad["acme_next_attempt"].is_string(),
        "{bad}\n{}",
        logs()
    );
    let roots = pebble.issuing_roots().await;
    assert_eq!(
        https_get(tls, client_config(roots), "good.example.com", "/").await,
        (200, "v1\n".into())
    );
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let human = String::from_utf8_lossy(&d.cli(&["status"]).await.stdout).into_owned();
    assert!(human.contains("ACME error:"), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_when_each_served_certificate_expires() {
    let ca = Ca::new("metrics CA");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (d, _tls, _cert, _key) = daemon_with_files(&ca, &format!("metrics_listen = \"{metrics}\"")).await;
    let not_after = certificates(&d).await[0]["not_after"].as_str().unwrap().to_string();
    let expected = humantime::parse_rfc3339(&not_after)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (status, page) = common::get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{page}");
    let line = page
        .lines()
        .find(|l| l.starts_with("switchctl_certificate_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no certificate metric in:\n{page}"));
    assert!(line.contains("names=\"test.local\""), "{line}");
    let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, expected, "{line}");
}
