//! Notifications end to end, against servers these tests run on 127.0.0.1:
//! a webhook receiver and a fake Telegram Bot API (hyper), and an SMTP sink
//! (a few lines of tokio speaking just enough SMTP). Entries are parsed from
//! TOML as `[[notify]]` tables, so the schema is exercised too. Secrets come
//! from a closure standing in for the environment.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use switchctl::notify::{self, Event, Notification, Notifier, NotifyConfig, Outcome};

const HOOK_SECRET: &str = "Bearer hook-s3cret-value";
const TG_TOKEN: &str = "123456:ABC-fake_token_for_tests";
const SMTP_USER: &str = "mailer";
const SMTP_PASSWORD: &str = "sm7p-pa55";
/// base64("\0mailer\0sm7p-pa55"): what AUTH PLAIN carries.
const AUTH_PLAIN: &str = "AG1haWxlcgBzbTdwLXBhNTU=";
/// Far beyond anything these tests should take; only catches a hang.
const SANITY: Duration = Duration::from_secs(30);

fn env(name: &str) -> Option<String> {
    match name {
        "HOOK_AUTH" => Some(HOOK_SECRET.into()),
        "TG_TOKEN" => Some(TG_TOKEN.into()),
        "SMTP_USER" => Some(SMTP_USER.into()),
        "SMTP_PASSWORD" => Some(SMTP_PASSWORD.into()),
        _ => None,
    }
}

fn entries(toml_text: &str) -> Vec<NotifyConfig> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        notify: Vec<NotifyConfig>,
    }
    toml::from_str::<File>(toml_text).expect("valid [[notify]] TOML").notify
}

fn notifier(toml_text: &str) -> Notifier {
    Notifier::with_env(&entries(toml_text), &env)
        .expect("valid entries")
        .with_backoff(Duration::from_millis(20))
}

fn sample(event: Event) -> Notification {
    Notification::new(event, "v2", "green")
        .with_previous_tag(Some("v1"))
        .with_duration(Duration::from_millis(1500))
        .with_message(format!("{event} for the test"))
}

fn assert_no_secret(text: &str) {
    for s in [
        HOOK_SECRET,
        "hook-s3cret",
        TG_TOKEN,
        "fake_token",
        SMTP_PASSWORD,
        AUTH_PLAIN,
    ] {
        assert!(!text.contains(s), "a secret ({s}) shows in: {text}");
    }
}

// ---------------------------------------------------------------------------
// A test HTTP server: records every request, answers as told.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

enum Reply {
    /// Answer at once with this status and body.
    Now(u16, String),
    /// Never answer.
    Hang,
    /// Answer 200 once the test adds a permit.
    After(Arc<Semaphore>),
}

struct HttpSink {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    hits: Arc<AtomicUsize>,
}

impl HttpSink {
    async fn start(respond: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let hits = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, respond, hits) = (tx.clone(), Arc::clone(&respond), Arc::clone(&counter));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (tx, respond, hits) = (tx.clone(), Arc::clone(&respond), Arc::clone(&hits));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let got = Received {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let reply = respond(&got);
                            hits.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(got);
                            let (status, text) = match reply {
                                Reply::Now(status, text) => (status, text),
                                Reply::Hang => std::future::pending().await,
                                Reply::After(gate) => {
                                    let _ = gate.acquire().await.map(|p| p.forget());
                                    (200, "{\"ok\":true}".to_string())
                                }
                            };
                            let resp = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(text)))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        HttpSink { addr, rx, hits }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(SANITY, self.rx.recv())
            .await
            .expect("a request within the sanity bound")
            .expect("server running")
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn ok(_: &Received) -> Reply {
    Reply::Now(200, "{\"ok\":true}".into())
}

// ---------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------

#[tokio::test]
async fn webhook_receives_every_event_with_the_expected_json() {
    let mut sink = HttpSink::start(ok).await;
    let n = notifier(&format!(
        r#"
[[notify]]
kind = "webhook"
url = "http://{}/hooks/deploys"
headers = {{ "X-Team" = "web" }}
headers_env = {{ "Authorization" = "HOOK_AUTH" }}
"#,
        sink.addr
    ));
    let label = format!("webhook http://{}/…", sink.addr);
    assert_eq!(n.labels(), vec![label.clone()]);

    for event in Event::ALL {
        let sent = sample(event);
        let report = n.notify(sent.clone()).wait().await;
        assert_eq!(report.sent, vec![label.clone()], "{event}: {report:?}");
        assert!(report.warnings.is_empty(), "{event}: {report:?}");

        let got = sink.next().await;
        assert_eq!(got.method, Method::POST);
        assert_eq!(got.path, "/hooks/deploys");
        assert_eq!(got.headers["content-type"], "application/json");
        assert_eq!(got.headers["x-team"], "web");
        assert_eq!(got.headers["authorization"], HOOK_SECRET);
        let v = got.json();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "event",
            "outcome",
            "tag",
            "previous_tag",
            "color",
            "duration_ms",
            "message",
            "host",
            "at",
        ];
        want.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want);
        assert_eq!(v["event"], event.as_str());
        assert_eq!(
            v["outcome"],
            if event.outcome() == Outcome::Success {
                "success"
            } else {
                "failure"
            }
        );
        assert_eq!(v["tag"], "v2");
        assert_eq!(v["previous_tag"], "v1");
        assert_eq!(v["color"], "green");
        assert_eq!(v["duration_ms"], 1500);
        assert_eq!(v["message"], format!("{event} for the test"));
        assert_eq!(v["host"], notify::hostname());
        let at = v["at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{at}");
        humantime::parse_rfc3339(at).expect("RFC 3339");
        assert_eq!(v, serde_json::to_value(&sent).unwrap());
    }
}

#[tokio::test]
async fn entries_get_only_the_events_they_name() {
    let mut all = HttpSink::start(ok).await;
    let mut failures = HttpSink::start(ok).await;
    let n = notifier(&format!(
        r#"
[[notify]]
kind = "webhook"
url = "http://{}/all"

[[notify]]
kind = "webhook"
url = "http://{}/failures"
events = ["failed", "rolled_back", "auto_flipped_back"]
"#,
        all.addr, failures.addr
    ));

    let report = n.notify(sample(Event::Deployed)).wait().await;
    assert_eq!(report.sent.len(), 1, "{report:?}");
    assert_eq!(all.next().await.json()["event"], "deployed");

    let report = n.notify(sample(Event::RolledBack)).wait().await;
    assert_eq!(report.sent.len(), 2, "{report:?}");
    assert_eq!(all.next().await.json()["event"], "rolled_back");
    assert_eq!(failures.next().await.json()["event"], "rolled_back");
    assert_eq!(failures.hits(), 1, "the failures-only entry got the deployed event");
}

#[tokio::test]
async fn notify_returns_before_the_endpoint_answers() {
    let gate = Arc::new(Semaphore::new(0));
    let held = Arc::clone(&gate);
    let mut sink = HttpSink::start(move |_| Reply::After(Arc::clone(&held))).await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/slow\"\ntimeout = \"60s\"\n",
        sink.addr
    ));

    let pending = n.notify(sample(Event::Deployed));
    // The endpoint holds the request until the gate opens, and the gate only
    // opens below: notify() gave control back while the send was in flight.
    let got = sink.next().await;
    assert_eq!(got.path, "/slow");
    assert!(!pending.is_finished());
    gate.add_permits(1);
    let report = pending.wait().await;
    assert_eq!(report.sent.len(), 1, "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
}

#[tokio::test]
async fn hanging_webhook_is_a_warning_within_its_budget() {
    let sink = HttpSink::start(|_| Reply::Hang).await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/hang\"\ntimeout = \"300ms\"\nretries = 1\n",
        sink.addr
    ));
    // 2 attempts of 300 ms, 20 ms between them.
    assert_eq!(n.budget(Event::Failed), Duration::from_millis(620));

    let start = Instant::now();
    let pending = n.notify(sample(Event::Failed));
    let returned = start.elapsed();
    assert!(!pending.is_finished());
    assert_eq!(pending.budget(), Duration::from_millis(620));
    let report = pending.wait().await;
    let took = start.elapsed();

    assert!(report.sent.is_empty());
    assert_eq!(
        report.warnings,
        vec![format!(
            "notify webhook http://{}/… (failed): no answer within 300ms after 2 attempts",
            sink.addr
        )]
    );
    assert_eq!(sink.hits(), 2);
    assert!(returned < took, "notify() itself waited for the send");
    assert!(took < SANITY, "took {took:?}");
}

#[tokio::test]
async fn webhook_answering_500_is_retried_then_a_warning() {
    // The endpoint echoes the path, as some do; here the path is the token
    // of a secret URL read from a file.
    let mut sink = HttpSink::start(|r| Reply::Now(500, format!("boom at {}", r.path))).await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("hook.url");
    std::fs::write(&url_file, format!("http://{}/hook/s3cr3t-path-token\n", sink.addr)).unwrap();
    let n = notifier(&format!(
        r#"
[[notify]]
kind = "webhook"
url_file = "{}"
retries = 2
headers_env = {{ "Authorization" = "HOOK_AUTH" }}
"#,
        url_file.display()
    ));
    let start = Instant::now();
    let report = n.notify(sample(Event::Deployed)).wait().await;
    assert!(start.elapsed() < SANITY);
    assert_eq!(
        report.warnings,
        vec![format!(
            "notify webhook http://{}/… (deployed): HTTP 500 (boom at ***) after 3 attempts",
            sink.addr
        )]
    );
    assert_eq!(sink.hits(), 3);
    for _ in 0..3 {
        let got = sink.next().await;
        assert_eq!(got.path, "/hook/s3cr3t-path-token");
        assert_eq!(got.headers["authorization"], HOOK_SECRET);
    }
    assert!(!format!("{report:?} {n:?}").contains("s3cr3t-path-token"));
    assert_no_secret(&format!("{report:?} {n:?}"));
}

#[tokio::test]
async fn webhook_client_error_is_not_retried() {
    let sink = HttpSink::start(|_| Reply::Now(404, "no such hook".into())).await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/gone\"\nretries = 3\n",
        sink.addr
    ));
    let report = n.notify(sample(Event::Deployed)).wait().await;
    assert_eq!(report.warnings.len(), 1);
    assert!(
        report.warnings[0].ends_with(": HTTP 404 (no such hook) (not retried)"),
        "{report:?}"
    );
    assert_eq!(sink.hits(), 1);
}

#[tokio::test]
async fn refused_connection_is_a_warning() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/x\"\nretries = 0\n"
    ));
    let report = n.notify(sample(Event::Flipped)).wait().await;
    assert_eq!(report.warnings.len(), 1);
    let w = &report.warnings[0];
    assert!(
        w.starts_with(&format!("notify webhook http://127.0.0.1:{port}/… (flipped): ")),
        "{w}"
    );
    assert!(w.to_lowercase().contains("refused"), "{w}");
    assert!(w.ends_with("after 1 attempt"), "{w}");
}

#[tokio::test]
async fn waiting_is_bounded_by_the_caller() {
    let sink = HttpSink::start(|_| Reply::Hang).await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/hang\"\ntimeout = \"60s\"\nretries = 0\n",
        sink.addr
    ));
    let start = Instant::now();
    let report = n
        .notify(sample(Event::Deployed))
        .wait_within(Duration::from_millis(200))
        .await;
    assert!(start.elapsed() < SANITY);
    assert_eq!(
        report.warnings,
        vec![format!(
            "notify webhook http://{}/…: still not sent after 200ms; left to finish in the background",
            sink.addr
        )]
    );
}

// ---------------------------------------------------------------------------
// Telegram
// ---------------------------------------------------------------------------

#[tokio::test]
async fn telegram_send_message_against_a_fake_bot_api() {
    let mut api = HttpSink::start(|_| Reply::Now(200, r#"{"ok":true,"result":{"message_id":7}}"#.into())).await;
    let n = notifier(&format!(
        r#"
[[notify]]
kind = "telegram"
bot_token_env = "TG_TOKEN"
chat_id = -1001234567
api_url = "http://{}/"
"#,
        api.addr
    ));
    assert_eq!(n.labels(), vec!["telegram chat -1001234567".to_string()]);
    let sent = Notification::new(Event::AutoFlippedBack, "v3", "blue")
        .with_previous_tag(Some("v2"))
        .with_message("5xx ratio 0.42 over 120 requests");
    let report = n.notify(sent).wait().await;
    assert_eq!(report.sent, vec!["telegram chat -1001234567".to_string()], "{report:?}");

    let got = api.next().await;
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path, format!("/bot{TG_TOKEN}/sendMessage"));
    let v = got.json();
    assert_eq!(v["chat_id"], -1001234567i64);
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("switchctl: auto-flipped back v3 on {}", notify::hostname())),
        "{text}"
    );
    assert!(text.contains("5xx ratio 0.42 over 120 requests"), "{text}");
    assert_no_secret(&format!("{n:?} {report:?}"));
}

#[tokio::test]
async fn telegram_error_is_a_warning_without_the_token() {
    // The fake echoes the path, token included, as Telegram errors sometimes
    // echo input: the warning must scrub it.
    let api = HttpSink::start(|r| {
        Reply::Now(
            400,
            format!(
                r#"{{"ok":false,"error_code":400,"description":"Bad Request: chat not found ({})"}}"#,
                r.path
            ),
        )
    })
    .await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"telegram\"\nbot_token_env = \"TG_TOKEN\"\nchat_id = \"@deploys\"\napi_url = \"http://{}\"\n",
        api.addr
    ));
    let report = n.notify(sample(Event::Failed)).wait().await;
    assert_eq!(
        report.warnings,
        vec![
            "notify telegram chat @deploys (failed): HTTP 400 (Bad Request: chat not found (/bot***/sendMessage)) (not retried)"
                .to_string()
        ]
    );
    assert_eq!(api.hits(), 1);
    assert_no_secret(&format!("{report:?}"));
}

// ---------------------------------------------------------------------------
// E-mail
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Mail {
    auth: Option<String>,
    from: String,
    rcpt: Vec<String>,
    data: String,
    /// After STARTTLS: the first bytes the client sent (its TLS hello).
    tls_hello: Vec<u8>,
}

struct SmtpSink {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Mail>,
    sessions: Arc<AtomicUsize>,
}

impl SmtpSink {
    /// A sink that answers RCPT with `rcpt_reply` (e.g. `250 ok`) and,
    /// with `offer_starttls`, offers STARTTLS (then records the TLS hello).
    async fn start(rcpt_reply: &'static str, offer_starttls: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&sessions);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(smtp_session(stream, tx.clone(), rcpt_reply, offer_starttls));
            }
        });
        SmtpSink { addr, rx, sessions }
    }
}

/// Just enough SMTP: 220, EHLO (offering AUTH PLAIN, and STARTTLS if
/// asked), AUTH, MAIL, RCPT, DATA up to the lone dot, RSET, NOOP, QUIT.
/// STARTTLS is answered 220, then the client's first TLS bytes are recorded
/// and the connection closed (the sink has no certificate).
async fn smtp_session(
    stream: TcpStream,
    tx: mpsc::UnboundedSender<Mail>,
    rcpt_reply: &'static str,
    offer_starttls: bool,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut mail = Mail::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let tls = if offer_starttls { "250-STARTTLS\r\n" } else { "" };
            format!("250-sink.test\r\n{tls}250-AUTH PLAIN LOGIN\r\n250 HELP")
        } else if upper == "STARTTLS" && offer_starttls {
            w.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
            let mut reader = lines.into_inner();
            let mut hello = vec![0u8; 4096];
            let n = tokio::time::timeout(SANITY, reader.read(&mut hello))
                .await
                .unwrap_or(Ok(0))?;
            hello.truncate(n);
            mail.tls_hello = hello;
            let _ = tx.send(mail);
            return Ok(());
        } else if upper.starts_with("HELO") || upper == "RSET" || upper == "NOOP" {
            "250 ok".to_string()
        } else if let Some(arg) = upper.strip_prefix("AUTH PLAIN ").map(|_| &line[11..]) {
            mail.auth = Some(arg.to_string());
            "235 2.7.0 authenticated".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = line[10..].to_string();
            "250 ok".to_string()
        } else if upper.starts_with("RCPT TO:") {
            mail.rcpt.push(line[8..].to_string());
            rcpt_reply.to_string()
        } else if upper == "DATA" {
            w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = Vec::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push(l);
            }
            mail.data = data.join("\r\n");
            let _ = tx.send(std::mem::take(&mut mail));
            "250 queued".to_string()
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "500 unknown command".to_string()
        };
        w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn email_through_a_local_smtp_sink() {
    let mut sink = SmtpSink::start("250 ok", false).await;
    let n = notifier(&format!(
        r#"
[[notify]]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
starttls = false
from = "switchctl <deploy@example.org>"
to = ["ops@example.org", "Dev Team <dev@example.org>"]
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
"#,
        sink.addr.port()
    ));
    let label = format!("email 127.0.0.1:{}", sink.addr.port());
    let report = n.notify(sample(Event::Deployed)).wait().await;
    assert_eq!(report.sent, vec![label], "{report:?}");

    let mail = tokio::time::timeout(SANITY, sink.rx.recv()).await.unwrap().unwrap();
    assert_eq!(mail.auth.as_deref(), Some(AUTH_PLAIN));
    assert!(mail.from.starts_with("<deploy@example.org>"), "{}", mail.from);
    assert_eq!(mail.rcpt.len(), 2);
    assert!(mail.rcpt[0].starts_with("<ops@example.org>"), "{:?}", mail.rcpt);
    assert!(mail.rcpt[1].starts_with("<dev@example.org>"), "{:?}", mail.rcpt);
    let data = mail.data.replace("\r\n ", " ");
    assert!(
        data.contains(&format!("Subject: switchctl: deployed v2 on {}", notify::hostname())),
        "{data}"
    );
    assert!(data.contains("From: switchctl <deploy@example.org>"), "{data}");
    assert!(data.contains("previous tag: v1"), "{data}");
    assert!(data.contains("deployed for the test"), "{data}");
    assert_no_secret(&format!("{n:?} {report:?}"));
}

#[tokio::test]
async fn smtp_permanent_rejection_is_a_warning_not_retried() {
    let sink = SmtpSink::start("550 5.1.1 no such user", false).await;
    let n = notifier(&format!(
        "[[notify]]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nstarttls = false\nfrom = \"deploy@example.org\"\nto = [\"nobody@example.org\"]\nretries = 2\n",
        sink.addr.port()
    ));
    let report = n.notify(sample(Event::RolledBack)).wait().await;
    assert!(report.sent.is_empty());
    assert_eq!(report.warnings.len(), 1);
    let w = &report.warnings[0];
    assert!(
        w.starts_with(&format!("notify email 127.0.0.1:{} (rolled_back): ", sink.addr.port())),
        "{w}"
    );
    assert!(w.contains("no such user") && w.ends_with("(not retried)"), "{w}");
    assert_eq!(sink.sessions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn starttls_is_required_and_spoken() {
    let entry = |port: u16| {
        format!(
            "[[notify]]\nkind = \"email\"\nsmtp_host = \"localhost\"\nsmtp_port = {port}\nfrom = \"deploy@example.org\"\nto = [\"ops@example.org\"]\nretries = 0\n"
        )
    };

    // A server that does not offer STARTTLS gets no mail in clear.
    let mut plain = SmtpSink::start("250 ok", false).await;
    let report = notifier(&entry(plain.addr.port()))
        .notify(sample(Event::Deployed))
        .wait()
        .await;
    assert!(report.sent.is_empty());
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.warnings[0].contains("STARTTLS"), "{report:?}");
    assert!(plain.rx.try_recv().is_err(), "a mail went out without TLS");

    // One that offers it gets a TLS hello (for the server's name) right
    // after; the sink has no certificate, so the send fails as a warning.
    let mut tls = SmtpSink::start("250 ok", true).await;
    let report = notifier(&entry(tls.addr.port()))
        .notify(sample(Event::Deployed))
        .wait()
        .await;
    assert!(report.sent.is_empty());
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    let mail = tokio::time::timeout(SANITY, tls.rx.recv()).await.unwrap().unwrap();
    assert!(mail.from.is_empty() && mail.data.is_empty(), "{mail:?}");
    assert_eq!(mail.tls_hello.first(), Some(&0x16), "not a TLS handshake record");
    assert!(contains(&mail.tls_hello, b"localhost"), "no SNI for the SMTP host");
}

// ---------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn https_urls_speak_tls() {
    // A plain TCP server: it records what the client sends first and
    // answers in plain HTTP, which a TLS client must refuse.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut first = vec![0u8; 4096];
            let n = stream.read(&mut first).await.unwrap_or(0);
            first.truncate(n);
            let _ = tx.send(first);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        }
    });
    let n = notifier(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://localhost:{port}/hook\"\nretries = 0\n"
    ));
    let report = n.notify(sample(Event::Deployed)).wait().await;
    assert!(report.sent.is_empty(), "a plain-HTTP answer was taken over https");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    let hello = tokio::time::timeout(SANITY, rx.recv()).await.unwrap().unwrap();
    assert_eq!(hello.first(), Some(&0x16), "not a TLS handshake record");
    assert!(contains(&hello, b"localhost"), "no SNI");
    assert!(!contains(&hello, b"POST"), "the request went out in clear");
}

// ---------------------------------------------------------------------------
// Validation and secrets
// ---------------------------------------------------------------------------

#[test]
fn a_missing_secret_names_the_entry_and_the_variable() {
    let list = entries(
        r#"
[[notify]]
kind = "webhook"
url = "https://hooks.example.org/x"

[[notify]]
kind = "email"
smtp_host = "smtp.example.org"
from = "deploy@example.org"
to = ["ops@example.org"]
username_env = "SMTP_USER"
password_env = "SMTP_PW_NOT_SET"
"#,
    );
    let err = Notifier::with_env(&list, &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "notify[1] (email).password_env: environment variable SMTP_PW_NOT_SET is not set (or is empty)"
    );
    assert_eq!(
        notify::validate_all_with(&list, &env).unwrap_err().to_string(),
        err.to_string()
    );
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tg.token");
    std::fs::write(&token_file, format!("{TG_TOKEN}\n")).unwrap();
    let list = entries(&format!(
        r#"
[[notify]]
kind = "telegram"
bot_token_file = "{}"
chat_id = 1

[[notify]]
kind = "webhook"
url = "https://hooks.example.org/x"
headers_env = {{ "Authorization" = "HOOK_AUTH" }}

[[notify]]
kind = "email"
smtp_host = "smtp.example.org"
from = "deploy@example.org"
to = ["ops@example.org"]
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
"#,
        token_file.display()
    ));
    let n = Notifier::with_env(&list, &env).unwrap();
    assert_eq!(n.labels().len(), 3);
    assert_no_secret(&format!("{n:?} {list:?}"));
}
