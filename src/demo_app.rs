//! `switchctl demo-app`: the upstream `switchctl demo` runs, so the demo
//! needs nothing but this binary. Deliberately tiny, and not a test fixture
//! (the tests use `tests/app`): an HTTP/1.1 server that answers
//!
//! | request       | answer                                                  |
//! |---------------|---------------------------------------------------------|
//! | `GET /health` | 200 `ok`, or 503 when its version is listed in `FAIL_HEALTH_VERSIONS` |
//! | anything else | 200 `<version>\n`                                       |
//!
//! Flags: `--bind ADDR` (default 127.0.0.1), `--port N` (required),
//! `--version V` (default `dev`). `FAIL_HEALTH_VERSIONS` is a
//! comma-separated list of versions whose health check fails: the demo's
//! broken release. It stops on SIGTERM like any upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the app was told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opts {
    addr: SocketAddr,
    version: String,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let (mut bind, mut port, mut version) = ("127.0.0.1".to_string(), None, "dev".to_string());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bind" => bind = value()?,
            "--port" => port = Some(value()?),
            "--version" => version = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let port: u16 = port
        .ok_or("--port is required")?
        .parse()
        .map_err(|_| "--port must be a port number")?;
    let addr = format!("{bind}:{port}")
        .parse()
        .map_err(|_| format!("--bind {bind:?} is not an IP address"))?;
    Ok(Opts { addr, version })
}

/// Is `version` in the comma-separated `list`?
fn listed(list: &str, version: &str) -> bool {
    list.split(',').any(|v| !v.trim().is_empty() && v.trim() == version)
}

/// Run the app with `args` (program and command name excluded); returns the
/// process exit status.
pub fn main_with_args(args: &[String]) -> i32 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo-app: {e}");
            return 2;
        }
    };
    let healthy = !listed(
        &std::env::var("FAIL_HEALTH_VERSIONS").unwrap_or_default(),
        &opts.version,
    );
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-app: cannot start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(opts.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo-app: cannot listen on {}: {e}", opts.addr);
                return 1;
            }
        };
        println!("demo-app {} listening on {}", opts.version, opts.addr);
        serve(listener, Arc::from(opts.version), healthy).await;
        0
    })
}

async fn serve(listener: tokio::net::TcpListener, version: Arc<str>, healthy: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let version = version.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let version = version.clone();
                async move { Ok::<_, Infallible>(answer(&req, &version, healthy)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, version: &str, healthy: bool) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/health" if healthy => (StatusCode::OK, "ok\n".to_string()),
        "/health" => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".to_string()),
        _ => (StatusCode::OK, format!("{version}\n")),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_parse_and_the_port_is_required() {
        let o = parse_args(&args(&["--port", "8080", "--version", "v2"])).unwrap();
        assert_eq!(o.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(o.version, "v2");
        assert_eq!(parse_args(&args(&[])).unwrap_err(), "--port is required");
        assert!(parse_args(&args(&["--port", "x"])).is_err());
        assert!(parse_args(&args(&["--port", "1", "--bind", "nowhere"])).is_err());
        assert!(parse_args(&args(&["--colour", "red"])).is_err());
    }

    #[test]
    fn health_fails_only_for_listed_versions() {
        assert!(listed("v3, v4", "v4"));
        assert!(!listed("v3", "v33"));
        assert!(!listed("", ""));
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(answer(&get("/health"), "v1", true).status(), StatusCode::OK);
        assert_eq!(
            answer(&get("/health"), "v3", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer(&get("/"), "v3", false).status(), StatusCode::OK);
    }
}
