//! An open-loop TLS client: new TLS connections at a fixed rate, each one
//! `GET` with `Connection: close`, for the "TLS new connections at a fixed
//! rate" measure of `benches/run.sh`. wrk with `-H 'Connection: close'` is
//! closed-loop and its one thread is saturated by handshakes, so its latency
//! is its own queue; this client starts connections on a schedule that does
//! not wait for answers, at rates below every peer's maximum.
//!
//!   tlsrate --addr 127.0.0.1:8443 --rate 1000 --duration 10 [--sni localhost] [--max-inflight 2000] [--path /]
//!
//! Connection i is due at start + i / rate. Its latency runs from that
//! intended time, not from when the client got round to it, to the end of
//! the response (TCP connect + full handshake + request + the whole answer),
//! so a stall of the client or the server is counted, not omitted. The
//! schedule runs on its own thread with `std::thread::sleep` (tokio's timer
//! has a granularity of 1 ms, more than a handshake takes); the connections
//! run on a current-thread tokio runtime. `lag_*_us` is how late the
//! connections actually started: when it nears the latency, the client was
//! the limit.
//!
//! Prints one line of JSON: `sent` (scheduled starts) = `ok` + the sum of
//! `errors` by kind (`connect`, `handshake`, `io`, `status` for non-2xx or
//! a malformed answer, `overload` for a start skipped because
//! `--max-inflight` connections were open, `unfinished` for those still open
//! 5 s after the schedule ended). `achieved_rate` is `ok` over the time from
//! the first intended start to the last ok answer. Percentiles are of the
//! ok latencies. run.sh runs it once per round, rate and peer, timing its
//! CPU and the proxy's, and reports the medians over rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

const USAGE: &str = "usage: tlsrate --addr HOST:PORT --rate PER_SECOND --duration SECONDS \
[--sni NAME] [--max-inflight N] [--path PATH]
  --sni          server name sent in the handshake and in Host (default localhost)
  --max-inflight open connections beyond which a start is skipped as \"overload\" (default 2000)
  --path         path of the GET (default /)";

struct Args {
    addr: SocketAddr,
    rate: f64,
    duration: f64,
    sni: String,
    max_inflight: usize,
    path: String,
}

fn usage(problem: &str) -> ! {
    eprintln!("tlsrate: {problem}\n{USAGE}");
    std::process::exit(2);
}

fn invalid<T>(flag: &str, value: &str) -> T {
    usage(&format!("bad value for {flag}: {value:?}"))
}

fn positive(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|v| *v > 0.0 && v.is_finite())
}

fn parse_args() -> Args {
    let (mut addr, mut rate, mut duration) = (None, None, None);
    let (mut sni, mut max_inflight, mut path) = ("localhost".to_string(), 2000, "/".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if !["--addr", "--rate", "--duration", "--sni", "--max-inflight", "--path"].contains(&flag.as_str()) {
            usage(&format!("unknown argument {flag:?}"))
        }
        let Some(value) = args.next() else {
            usage(&format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--addr" => addr = Some(value.parse::<SocketAddr>().unwrap_or_else(|_| invalid(&flag, &value))),
            "--rate" => rate = Some(positive(&value).unwrap_or_else(|| invalid(&flag, &value))),
            "--duration" => duration = Some(positive(&value).unwrap_or_else(|| invalid(&flag, &value))),
            "--sni" => sni = value,
            "--max-inflight" => {
                max_inflight = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| invalid(&flag, &value))
            }
            "--path" if value.starts_with('/') && !value.contains(char::is_whitespace) => path = value,
            _ => invalid(&flag, &value),
        }
    }
    let (Some(addr), Some(rate), Some(duration)) = (addr, rate, duration) else {
        usage("--addr, --rate and --duration are required")
    };
    Args {
        addr,
        rate,
        duration,
        sni,
        max_inflight,
        path,
    }
}

/// Takes any certificate and skips the signature checks too: the client
/// should cost as little CPU per handshake as it can, so that it stays far
/// from saturated (wrk spends more verifying the server's ECDSA signature
/// than the server spends making it). Benchmark use only.
#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

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
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// ring, TLS 1.2 and 1.3, ALPN http/1.1, no session resumption (every
/// connection is a full handshake), any server certificate.
fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
    request: Vec<u8>,
}

/// How late the connection started, and its latency from the intended start.
type Outcome = (Duration, Result<Duration, &'static str>);

async fn one(target: Arc<Target>, intended: Instant) -> Outcome {
    let lag = intended.elapsed();
    (lag, exchange(&target, intended).await)
}

async fn exchange(target: &Target, intended: Instant) -> Result<Duration, &'static str> {
    let tcp = TcpStream::connect(target.addr).await.map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let mut tls = target
        .connector
        .connect(target.name.clone(), tcp)
        .await
        .map_err(|_| "handshake")?;
    tls.write_all(&target.request).await.map_err(|_| "io")?;
    tls.flush().await.map_err(|_| "io")?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    // Until the end of the headers: the status, then Content-Length if any.
    let (head_len, content_length) = loop {
        if len == buf.len() {
            return Err("status"); // headers over 16 KiB
        }
        match tls.read(&mut buf[len..]).await {
            Ok(0) => return Err("io"),
            Ok(n) => len += n,
            Err(_) => return Err("io"),
        }
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break (end + 4, parse_head(&buf[..end])?);
        }
    };
    // Then the body: up to Content-Length, or to the end of the stream.
    let mut body = (len - head_len) as u64;
    loop {
        if content_length.is_some_and(|cl| body >= cl) {
            break;
        }
        match tls.read(&mut buf).await {
            Ok(0) if content_length.is_none() => break,
            Ok(0) => return Err("io"),
            Ok(n) => body += n as u64,
            // No close_notify before the FIN: the end, when the length is unknown.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && content_length.is_none() => break,
            Err(_) => return Err("io"),
        }
    }
    let latency = intended.elapsed();
    // Untimed: read to the server's close (it was asked to close), so that
    // our close is not a reset and the TIME_WAIT stays on the server's side.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(latency)
}

/// A 2xx status line, and the Content-Length header if there is one.
fn parse_head(head: &[u8]) -> Result<Option<u64>, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "status")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.split(' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("status");
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.starts_with('2') {
        return Err("status");
    }
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                return value.trim().parse().map(Some).map_err(|_| "status");
            }
        }
    }
    Ok(None)
}

fn percentile(sorted: &[Duration], q: f64) -> Option<u128> {
    // nearest rank
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(Duration::as_micros)
}

fn json_us(v: Option<u128>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn main() {
    let args = parse_args();
    let name = ServerName::try_from(args.sni.clone()).unwrap_or_else(|_| usage(&format!("bad --sni {:?}", args.sni)));
    let config = match client_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tlsrate: TLS client configuration: {e}");
            std::process::exit(1);
        }
    };
    let target = Arc::new(Target {
        addr: args.addr,
        connector: TlsConnector::from(config),
        name,
        request: format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            args.path, args.sni
        )
        .into_bytes(),
    });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tlsrate: tokio runtime: {e}");
            std::process::exit(1);
        }
    };

    let total = (args.rate * args.duration).floor() as u64;
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    let rate = args.rate;
    // The schedule: the intended start of each connection, sent when it is due.
    let scheduler = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send(due).is_err() {
                return;
            }
        }
    });

    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(total as usize);
    let mut lags: Vec<Duration> = Vec::with_capacity(total as usize);
    let mut last_ok = start;
    let mut record =
        |joined: Result<Outcome, tokio::task::JoinError>, errors: &mut BTreeMap<&'static str, u64>| match joined {
            Ok((lag, Ok(latency))) => {
                lags.push(lag);
                latencies.push(latency);
                last_ok = last_ok.max(Instant::now());
            }
            Ok((lag, Err(kind))) => {
                lags.push(lag);
                *errors.entry(kind).or_default() += 1;
            }
            Err(_) => *errors.entry("panic").or_default() += 1,
        };
    runtime.block_on(async {
        let mut open = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                due = due_rx.recv() => {
                    let Some(due) = due else { break };
                    if open.len() >= args.max_inflight {
                        *errors.entry("overload").or_default() += 1;
                    } else {
                        open.spawn(one(Arc::clone(&target), due));
                    }
                }
                Some(joined) = open.join_next() => record(joined, &mut errors),
            }
        }
        let grace = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = open.join_next() => match joined {
                    Some(joined) => record(joined, &mut errors),
                    None => break,
                },
                _ = &mut grace => {
                    *errors.entry("unfinished").or_default() += open.len() as u64;
                    open.abort_all();
                    break;
                }
            }
        }
    });
    let _ = scheduler.join();

    latencies.sort_unstable();
    lags.sort_unstable();
    let ok = latencies.len() as u64;
    let window = last_ok.saturating_duration_since(start).as_secs_f64();
    let achieved = if ok > 0 && window > 0.0 {
        ok as f64 / window
    } else {
        0.0
    };
    let errors_json: Vec<String> = errors.iter().map(|(kind, n)| format!("\"{kind}\":{n}")).collect();
    println!(
        "{{\"rate\":{},\"duration_s\":{},\"sent\":{total},\"ok\":{ok},\"errors\":{{{}}},\"achieved_rate\":{achieved:.1},\
         \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"lag_p50_us\":{},\"lag_p99_us\":{},\"lag_max_us\":{}}}",
        args.rate,
        args.duration,
        errors_json.join(","),
        json_us(percentile(&latencies, 0.50)),
        json_us(percentile(&latencies, 0.90)),
        json_us(percentile(&latencies, 0.99)),
        json_us(percentile(&latencies, 0.999)),
        json_us(latencies.last().map(Duration::as_micros)),
        json_us(percentile(&lags, 0.50)),
        json_us(percentile(&lags, 0.99)),
        json_us(lags.last().map(Duration::as_micros)),
    );
}
