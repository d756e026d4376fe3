//! `testapp`: the tiny upstream that switchctl's tests, demo and test images
//! run. It answers with its version and exercises every path the proxy has:
//!
//! | request              | answer                                             |
//! |----------------------|----------------------------------------------------|
//! | `GET /`              | `<version>\n` (header `x-version`)                |
//! | `GET /health`        | 200 `ok`, or 503 when told to fail                 |
//! | `POST /health/fail`  | from now on `/health` answers 503                  |
//! | `GET /slow?ms=N`     | the version, after N ms                            |
//! | `GET /stream?bytes=N`| N bytes, streamed in 64 KiB chunks                 |
//! | `POST /upload`       | the number of body bytes received                  |
//! | `GET /headers`       | the request headers, one `name: value` per line    |
//! | `GET /ws`            | WebSocket echo                                     |
//! | `POST /exit`         | exits with status 0 after answering                |
//!
//! Flags (or environment): `--port N` (`PORT`, default 8000), `--bind ADDR`
//! (`BIND`, default 0.0.0.0), `--version V` (`VERSION`, default `dev`),
//! `--fail-health` (`FAIL_HEALTH=1`), `--healthy-after SECS`
//! (`HEALTHY_AFTER`), `--exit-at-start` (`EXIT_AT_START=1`: exit 3 at once).
//! `FAIL_HEALTH_VERSIONS`, `HANG_HEALTH_VERSIONS` and `EXIT_AT_START_VERSIONS`
//! (comma-separated) make only those versions answer `/health` with 503,
//! never answer it, or exit at start; `FAIL_REQUESTS_VERSIONS` makes them
//! healthy on `/health` but answer every other request with 500 (`<version>
//! failing`): a release that fails real traffic. One command line can
//! describe good and broken releases alike.
//! `testapp healthcheck [PORT]` probes `/health` on loopback and exits 0/1:
//! the Docker HEALTHCHECK of a `FROM scratch` image.
//! `testapp migrate DIR` is a database migration's stand-in: it writes the
//! marker file `DIR/migrated-<version>` and exits 0, or, when its version is
//! listed in `FAIL_MIGRATION_VERSIONS`, prints why and exits 1.
//! `GET /whoami...` answers `path=<the path it received>`, so a test can see
//! whether a prefix was stripped.
//! `testapp fetch HOST:PORT PATH` GETs `PATH` from `HOST:PORT` (a name
//! resolved as the container resolves it), prints the body and exits 0 on a
//! 2xx: how a test calls one container from another in a `FROM scratch`
//! image.
//!
//! It is a library too: the proxy's tests serve it in-process, and
//! `switchctl demo` runs it as its upstream processes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// The app's state: its version and whether health should fail.
pub struct App {
    version: String,
    failing: AtomicBool,
    hang_health: AtomicBool,
    fail_requests: AtomicBool,
    healthy_at: Instant,
}

impl App {
    /// An app answering `version`; health fails when `fail_health`, or until
    /// `healthy_after` has passed.
    pub fn new(version: &str, fail_health: bool, healthy_after: Duration) -> Arc<Self> {
        Arc::new(App {
            version: version.to_string(),
            failing: AtomicBool::new(fail_health),
            hang_health: AtomicBool::new(false),
            fail_requests: AtomicBool::new(false),
            healthy_at: Instant::now() + healthy_after,
        })
    }
}

struct Opts {
    port: u16,
    bind: String,
    version: String,
    fail_health: bool,
    healthy_after: u64,
    hang_health: bool,
    fail_requests: bool,
    exit_at_start: bool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        port: env_or("PORT", "8000")
            .parse()
            .map_err(|_| "PORT must be a port number")?,
        bind: env_or("BIND", "0.0.0.0"),
        version: env_or("VERSION", "dev"),
        fail_health: env_or("FAIL_HEALTH", "") == "1",
        healthy_after: env_or("HEALTHY_AFTER", "0")
            .parse()
            .map_err(|_| "HEALTHY_AFTER must be seconds")?,
        exit_at_start: env_or("EXIT_AT_START", "") == "1",
        hang_health: false,
        fail_requests: false,
    };
    let listed = |var: &str, version: &str| env_or(var, "").split(',').any(|v| !v.is_empty() && v.trim() == version);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => o.port = value("--port")?.parse().map_err(|_| "--port must be a port number")?,
            "--bind" => o.bind = value("--bind")?,
            "--version" => o.version = value("--version")?,
            "--healthy-after" => {
                o.healthy_after = value("--healthy-after")?
                    .parse()
                    .map_err(|_| "--healthy-after must be seconds")?
            }
            "--fail-health" => o.fail_health = true,
            "--exit-at-start" => o.exit_at_start = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    o.fail_health |= listed("FAIL_HEALTH_VERSIONS", &o.version);
    o.exit_at_start |= listed("EXIT_AT_START_VERSIONS", &o.version);
    o.hang_health = listed("HANG_HEALTH_VERSIONS", &o.version);
    o.fail_requests = listed("FAIL_REQUESTS_VERSIONS", &o.version);
    Ok(o)
}

/// Run the app with command-line `args` (program name excluded) and return
/// the process exit status.
pub fn main_with_args(args: &[String]) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testapp: cannot start runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: &[String]) -> i32 {
    if args.first().map(String::as_str) == Some("fetch") {
        let (Some(addr), Some(path)) = (args.get(1), args.get(2)) else {
            eprintln!("usage: testapp fetch HOST:PORT PATH");
            return 2;
        };
        return fetch(addr, path).await;
    }
    if args.first().map(String::as_str) == Some("migrate") {
        return migrate(args.get(1).map_or("/state", String::as_str));
    }
    if args.first().map(String::as_str) == Some("healthcheck") {
        let port = args.get(1).cloned().unwrap_or_else(|| env_or("PORT", "8000"));
        return healthcheck(&port).await;
    }
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("testapp: {e}");
            return 2;
        }
    };
    if opts.exit_at_start {
        eprintln!("testapp {}: told to exit at start", opts.version);
        return 3;
    }
    let addr: SocketAddr = match format!("{}:{}", opts.bind, opts.port).parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("testapp: bad bind address {}:{}", opts.bind, opts.port);
            return 2;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp: cannot listen on {addr}: {e}");
            return 1;
        }
    };
    println!("testapp {} listening on {addr}", opts.version);
    let app = App::new(&opts.version, opts.fail_health, Duration::from_secs(opts.healthy_after));
    app.hang_health.store(opts.hang_health, Ordering::SeqCst);
    app.fail_requests.store(opts.fail_requests, Ordering::SeqCst);
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        eprintln!("testapp: cannot handle SIGTERM");
        return 1;
    };
    tokio::select! {
        _ = serve(listener, app) => 0,
        _ = term.recv() => {
            println!("testapp {}: SIGTERM, exiting", opts.version);
            0
        }
    }
}

/// Serve a healthy app answering `version` on a free loopback port, in
/// this process, for as long as the runtime runs; returns its address.
pub async fn spawn_on_loopback(version: &str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for the test app");
    let addr = listener.local_addr().expect("the test app's address");
    tokio::spawn(serve(listener, App::new(version, false, std::time::Duration::ZERO)));
    addr
}

/// Serve the app on `listener` forever (in-process use by tests).
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()).boxed())
        .expect("static response parts are valid")
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(app: Arc<App>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let version_line = format!("{}\n", app.version);
    let resp = match (req.method().as_str(), req.uri().path()) {
        (_, path) if path != "/health" && app.fail_requests.load(Ordering::SeqCst) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{} failing\n", app.version))
        }
        ("GET", "/health") => {
            if app.hang_health.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if app.failing.load(Ordering::SeqCst) || Instant::now() < app.healthy_at {
                text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        ("POST", "/health/fail") => {
            app.failing.store(true, Ordering::SeqCst);
            text(StatusCode::OK, "health now fails\n")
        }
        ("GET", "/slow") => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            text(StatusCode::OK, version_line)
        }
        ("GET", "/stream") => {
            let total = query_num(&req, "bytes");
            static CHUNK: [u8; 65536] = [b'x'; 65536];
            let chunks = futures_util::stream::unfold(total, |left| async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(CHUNK.len() as u64);
                let frame = Frame::data(Bytes::from_static(&CHUNK[..n as usize]));
                Some((Ok::<_, Infallible>(frame), left - n))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        ("POST", "/upload") => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "body broken\n")),
                }
            }
            text(StatusCode::OK, format!("{n}\n"))
        }
        ("GET", "/headers") => {
            let mut out = String::new();
            for (name, value) in req.headers() {
                out.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, out)
        }
        ("GET", "/ws") => websocket(&mut req),
        ("POST", "/exit") => {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(0);
            });
            text(StatusCode::OK, "bye\n")
        }
        ("GET", path) if path.starts_with("/whoami") => text(StatusCode::OK, format!("path={path}\n")),
        ("GET", _) | ("HEAD", _) => text(StatusCode::OK, version_line),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    };
    let mut resp = resp;
    if let Ok(v) = app.version.parse() {
        resp.headers_mut().insert("x-version", v);
    }
    Ok(resp)
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake\n");
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()).boxed())
        .expect("static response parts are valid")
}

/// GET `path` from `addr`; print the body; 0 on a 2xx.
async fn fetch(addr: &str, path: &str) -> i32 {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(resp)) => {
            let ok = resp.starts_with("HTTP/1.1 2");
            print!("{}", resp.split_once("\r\n\r\n").map_or("", |(_, b)| b));
            i32::from(!ok)
        }
        Ok(Err(e)) => {
            eprintln!("fetch {addr}{path}: {e}");
            1
        }
        Err(_) => {
            eprintln!("fetch {addr}{path}: timed out");
            1
        }
    }
}

/// The migration stand-in (see the module docs).
fn migrate(dir: &str) -> i32 {
    let version = env_or("VERSION", "dev");
    println!("migrating to {version} in {dir}");
    let failing = env_or("FAIL_MIGRATION_VERSIONS", "")
        .split(',')
        .any(|v| !v.is_empty() && v.trim() == version);
    if failing {
        for step in 1..=3 {
            println!("migration {version} step {step}");
        }
        eprintln!("migration {version} failed: told to fail (FAIL_MIGRATION_VERSIONS)");
        return 1;
    }
    let marker = format!("{dir}/migrated-{version}");
    match std::fs::write(&marker, format!("{version}\n")) {
        Ok(()) => {
            println!("migration {version} done: wrote {marker}");
            0
        }
        Err(e) => {
            eprintln!("migration {version}: cannot write {marker}: {e}");
            1
        }
    }
}

/// Probe `/health` on loopback: 0 when it answers 2xx, 1 otherwise.
async fn healthcheck(port: &str) -> i32 {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 2"))
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Some(true)) => 0,
        _ => 1,
    }
}
