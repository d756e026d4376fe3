//! Knowing what happened, end to end with the process driver: Prometheus
//! metrics scraped from a real daemon, notifications received by a test
//! webhook, and the post-flip watch flipping a release that fails real
//! traffic back by itself.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{events, free_port, get, process_service, text, wait_for, Daemon, Load};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// The samples of an OpenMetrics text page: `name{labels}` → value, labels
/// sorted so a test can name them in any order.
fn parse_metrics(page: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let key = normalize(series);
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(key, value);
    }
    samples
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`.
fn normalize(series: &str) -> String {
    match series.split_once('{') {
        Some((name, labels)) => {
            let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            labels.sort();
            format!("{name}{{{}}}", labels.join(","))
        }
        None => series.to_string(),
    }
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, page) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF:\n{page}");
    parse_metrics(&page)
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(&normalize(key))
        .unwrap_or_else(|| panic!("no sample {key}; have:\n{samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_by_color_and_class_across_a_deploy() {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let d = Daemon::start_with_proxy(
        "",
        &format!("metrics_listen = \"{metrics}\""),
        "process",
        "timeout = \"30s\"",
        &process_service("web", ""),
    );
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    const N: usize = 30;
    const M: usize = 20;
    for _ in 0..N {
        assert_eq!(d.get("/").await, (200, "v1\n".into()));
    }
    assert_eq!(d.cli(&["deploy", "v2"]).await.status.code(), Some(0));
    for _ in 0..M {
        assert_eq!(d.get("/").await, (200, "v2\n".into()));
    }
    // v2 exits after answering (one more 2xx on green); once its port
    // refuses, the next request is the proxy's own 502.
    let status = d.status().await;
    let green: SocketAddr = status["services"][0]["green"]["upstream"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(d.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let exit = http::Request::post("/exit")
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(exit).await.unwrap().status(), 200);
    wait_for("v2 to stop listening", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(green).await.is_err()
    })
    .await;
    let (code, body) = d.get("/").await;
    assert_eq!((code, body.as_str()), (502, "upstream refused the connection\n"));

    let s = scrape(metrics).await;
    let n = |k: &str| value(&s, k);
    let blue = "color=\"blue\",service=\"web\"";
    let green = "color=\"green\",service=\"web\"";
    assert_eq!(
        n(&format!("switchctl_requests_total{{class=\"2xx\",{blue}}}")),
        N as f64
    );
    assert_eq!(n(&format!("switchctl_requests_total{{class=\"5xx\",{blue}}}")), 0.0);
    assert_eq!(
        n(&format!("switchctl_requests_total{{class=\"2xx\",{green}}}")),
        (M + 1) as f64
    );
    assert_eq!(n(&format!("switchctl_requests_total{{class=\"5xx\",{green}}}")), 1.0);
    assert_eq!(
        n(&format!("switchctl_request_duration_seconds_count{{{blue}}}")),
        N as f64
    );
    assert_eq!(
        n("switchctl_request_duration_seconds_bucket{color=\"blue\",le=\"+Inf\",service=\"web\"}"),
        N as f64
    );
    assert_eq!(n(&format!("switchctl_upstream_connect_errors_total{{{green}}}")), 1.0);
    assert_eq!(n(&format!("switchctl_upstream_connect_errors_total{{{blue}}}")), 0.0);
    assert_eq!(
        n(&format!(
            "switchctl_upstream_timeouts_total{{{green},kind=\"response\"}}"
        )),
        0.0
    );
    assert_eq!(n(&format!("switchctl_in_flight_requests{{{blue}}}")), 0.0);
    assert_eq!(n("switchctl_active_release_info{color=\"green\",tag=\"v2\"}"), 1.0);
    assert_eq!(n("switchctl_deploys_total{outcome=\"deployed\"}"), 2.0);
    assert_eq!(n("switchctl_deploys_total{outcome=\"rolled_back\"}"), 0.0);
    assert_eq!(n("switchctl_flips_total"), 2.0);
    assert_eq!(n("switchctl_drain_cut_total"), 0.0);
    assert!(n("switchctl_last_deploy_duration_seconds") > 0.0);
    assert!(
        !s.keys().any(|k| k.starts_with("switchctl_certificate")),
        "no TLS, no certificate metric"
    );
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

/// A webhook endpoint on loopback that records each JSON body, answering
/// 200, or never answering when `hang`.
async fn webhook(hang: bool) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            seen.lock().unwrap().push(v);
                        }
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn notify_entry(addr: SocketAddr, extra: &str) -> String {
    format!("[[notify]]\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_receives_deployed_and_rolled_back_with_the_documented_json() {
    let (hook, got) = webhook(false).await;
    let d = Daemon::start_with(
        &notify_entry(hook, "events = [\"deployed\", \"rolled_back\"]"),
        "process",
        "timeout = \"30s\"",
        &process_service("web", "FAIL_HEALTH_VERSIONS = \"v3\""),
    );
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    assert_eq!(d.cli(&["deploy", "v3"]).await.status.code(), Some(1));
    wait_for("two notifications", Duration::from_secs(20), || {
        let got = got.clone();
        async move { got.lock().unwrap().len() >= 2 }
    })
    .await;
    let got = got.lock().unwrap().clone();
    let fields = [
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
    for n in &got {
        let mut keys: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = fields.to_vec();
        want.sort();
        assert_eq!(keys, want, "{n}");
        assert!(humantime::parse_rfc3339(n["at"].as_str().unwrap()).is_ok(), "{n}");
    }
    assert_eq!(got[0]["event"], "deployed");
    assert_eq!(got[0]["outcome"], "success");
    assert_eq!(got[0]["tag"], "v1");
    assert_eq!(got[0]["previous_tag"], Value::Null);
    assert_eq!(got[0]["color"], "blue");
    assert_eq!(got[1]["event"], "rolled_back");
    assert_eq!(got[1]["outcome"], "failure");
    assert_eq!(got[1]["tag"], "v3");
    assert_eq!(got[1]["previous_tag"], "v1");
    assert_eq!(got[1]["color"], "green");
    assert!(
        got[1]["message"].as_str().unwrap().contains("not healthy"),
        "{}",
        got[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_webhook_holds_the_deploy_no_longer_than_one_attempt() {
    let (hook, got) = webhook(true).await;
    // Five retries would take over a minute; the deploy waits for one
    // attempt's timeout, then reports the send as still going.
    let d = Daemon::start_with(
        &notify_entry(hook, "timeout = \"1s\"\nretries = 5"),
        "process",
        "timeout = \"30s\"",
        &process_service("web", ""),
    );
    let out = d.cli(&["deploy", "v1", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let evs = events(&out);
    let warning = evs
        .iter()
        .find(|e| e["phase"] == "notify" && e["level"] == "warn")
        .unwrap_or_else(|| panic!("a notify warning: {}", text(&out)));
    assert!(
        warning["message"].as_str().unwrap().contains("still not sent after 1s"),
        "{warning}"
    );
    assert_eq!(evs.last().unwrap()["outcome"], "deployed");
    assert!(!got.lock().unwrap().is_empty(), "the endpoint was reached");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let history: Value = serde_json::from_slice(&d.cli(&["history", "--json"]).await.stdout).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert!(
        last["warnings"][0].as_str().unwrap().contains("still not sent"),
        "{last}"
    );
}

// ---------------------------------------------------------------------------
// The post-flip watch
// ---------------------------------------------------------------------------

const WATCH: &str = "timeout = \"30s\"\n[deploy.watch]\nwindow = \"3s\"\nmax_5xx_ratio = 0.05\nmin_requests = 20";

fn watched(env: &str) -> Daemon {
    Daemon::start("process", WATCH, &process_service("web", env))
}

/// Run the CLI with `args` (a deploy) in the background and return once
/// the deploy's post-flip watch runs; the handle gives the CLI's output.
async fn deploy_until_its_watch_runs(
    d: &Daemon,
    args: &[&str],
) -> tokio::task::JoinHandle<std::io::Result<std::process::Output>> {
    let deploying = tokio::spawn(
        tokio::process::Command::new(common::switchctl())
            .arg("--config")
            .arg(&d.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output(),
    );
    wait_for("the watch to start", Duration::from_secs(30), || async {
        d.status().await["watch"].is_object()
    })
    .await;
    deploying
}

/// While the deploy of v2 is in its watch (`deploying`), `switchctl
/// <command> --json` under load: not refused as busy, it flips back to v1
/// with no failed request; the deploy ends `deployed`, saying which command
/// ended its watch, as history does.
async fn back_to_v1_during_the_watch(
    d: &Daemon,
    deploying: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
    command: &str,
) {
    let load = Load::start(d.proxy, 4);
    let mut args: Vec<&str> = command.split(' ').collect();
    args.push("--json");
    let out = d.cli(&args).await;
    assert_eq!(out.status.code(), Some(0), "not refused as busy: {}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "flipped", "{}", text(&out));
    let deployed = deploying.await.unwrap().unwrap();
    let report = load.stop().await;
    assert_eq!(deployed.status.code(), Some(0), "{}", text(&deployed));
    let done = events(&deployed).pop().unwrap();
    assert_eq!(done["outcome"], "deployed", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .contains(&format!("`switchctl {command}`")),
        "{done}"
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v1", "{status}");
    assert_eq!(status["watch"], Value::Null, "{status}");

    let out = d.cli(&["history", "--json"]).await;
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let history = history.as_array().unwrap();
    let (deploy, back) = (&history[history.len() - 2], &history[history.len() - 1]);
    assert_eq!(
        (&deploy["tag"], &deploy["outcome"]),
        (&Value::from("v2"), &Value::from("deployed"))
    );
    assert!(
        deploy["watch"]["ended"].as_str().unwrap().contains(command),
        "the deploy records that {command} ended its watch: {deploy}"
    );
    assert_eq!(
        (&back["tag"], &back["outcome"]),
        (&Value::from("v1"), &Value::from("flipped"))
    );
}

async fn history_last(d: &Daemon) -> Value {
    let out = d.cli(&["history", "--json"]).await;
    let all: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    all.as_array().unwrap().last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_failing_real_traffic_is_flipped_back_by_the_watch() {
    let (hook, got) = webhook(false).await;
    let d = Daemon::start_with(
        &notify_entry(hook, "events = [\"auto_flipped_back\"]"),
        "process",
        WATCH,
        &process_service("web", "FAIL_REQUESTS_VERSIONS = \"v2\""),
    );
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let load = Load::start(d.proxy, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = d.cli(&["deploy", "v2", "--json"]).await;
    let during = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let evs = events(&out);
    let done = evs.last().unwrap();
    assert_eq!(done["outcome"], "rolled_back", "{done}");
    assert!(
        done["message"].as_str().unwrap().contains("watch flipped back"),
        "{done}"
    );
    assert!(
        evs.iter()
            .any(|e| e["phase"] == "watch" && e["message"].as_str().unwrap().contains("watching green for 3s")),
        "a progress line says the watch runs and how long: {}",
        text(&out)
    );
    // The only failures are v2's own 500s before the threshold was seen.
    assert!(during.failed > 0, "v2 did answer some requests: {during:?}");
    for kind in during.failure_kinds.keys() {
        assert_eq!(kind, "500 Internal Server Error: v2 failing", "{during:?}");
    }
    assert_eq!(during.bodies.keys().collect::<Vec<_>>(), ["v1"], "{during:?}");

    // From the flip back on, every request reaches v1.
    let after = Load::start(d.proxy, 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = after.stop().await;
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(after.sent > 0);
    assert_eq!(after.bodies.keys().collect::<Vec<_>>(), ["v1"], "{after:?}");

    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v1");
    assert_eq!(status["watch"], Value::Null);
    let last = history_last(&d).await;
    assert_eq!(last["outcome"], "auto_flipped_back", "{last}");
    assert_eq!(last["watch"]["tripped"], "web", "{last}");
    assert_eq!(last["watch"]["color"], "green", "{last}");
    let (requests, errors) = (
        last["watch"]["requests"].as_u64().unwrap(),
        last["watch"]["errors_5xx"].as_u64().unwrap(),
    );
    assert!(requests >= 20 && errors * 20 > requests, "{last}");

    wait_for("the auto_flipped_back notification", Duration::from_secs(20), || {
        let got = got.clone();
        async move { !got.lock().unwrap().is_empty() }
    })
    .await;
    let n = got.lock().unwrap()[0].clone();
    assert_eq!(
        (n["event"].as_str(), n["outcome"].as_str()),
        (Some("auto_flipped_back"), Some("failure"))
    );
    assert_eq!(
        (n["tag"].as_str(), n["previous_tag"].as_str()),
        (Some("v2"), Some("v1"))
    );
    assert!(n["message"].as_str().unwrap().contains("watch flipped back"), "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_release_under_the_same_load_is_not_flipped() {
    let d = watched("FAIL_REQUESTS_VERSIONS = \"v9\"");
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let load = Load::start(d.proxy, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = d.cli(&["deploy", "v2", "--json"]).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(events(&out).last().unwrap()["outcome"], "deployed");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let last = history_last(&d).await;
    assert_eq!(last["outcome"], "deployed");
    assert_eq!(last["watch"]["errors_5xx"], 0, "{last}");
    assert!(last["watch"]["requests"].as_u64().unwrap() > 0, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_no_watch_returns_after_the_flip_without_watching() {
    let d = watched("FAIL_REQUESTS_VERSIONS = \"v2\"");
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let out = d.cli(&["deploy", "v2", "--no-watch", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!events(&out).iter().any(|e| e["phase"] == "watch"), "{}", text(&out));
    assert!(history_last(&d).await.get("watch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_with_fewer_answers_than_min_requests_is_not_judged() {
    // `api` (under /api) fails every request in v2 but gets only 5 of them
    // during the window: fewer than min_requests, so no flip back; `web`
    // is healthy under load.
    let api = process_service("api", "FAIL_REQUESTS_VERSIONS = \"v2\"") + "route = { path_prefix = \"/api\" }\n";
    let d = Daemon::start("process", WATCH, &(process_service("web", "") + &api));
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let load = Load::start(d.proxy, 5);
    let deploy = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(["deploy", "v2", "--json"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output();
    let deploy = tokio::spawn(deploy);
    wait_for("the watch to start", Duration::from_secs(30), || async {
        d.status().await["watch"].is_object()
    })
    .await;
    let status = d.status().await;
    assert_eq!(status["watch"]["color"], "green", "{status}");
    assert!(status["watch"]["until"].is_string(), "{status}");
    for _ in 0..5 {
        assert_eq!(d.get("/api/x").await, (500, "v2 failing\n".into()));
    }
    let out = deploy.await.unwrap().unwrap();
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report.failed, 0, "{report:?}");
    let last = history_last(&d).await;
    assert_eq!(last["outcome"], "deployed", "{last}");
    let api = last["watch"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .unwrap()
        .clone();
    assert_eq!(
        (api["requests"].as_u64(), api["errors_5xx"].as_u64()),
        (Some(5), Some(5)),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_previous_color_is_kept_for_the_window_even_with_standby_stop() {
    let deploy = WATCH.replace("[deploy.watch]", "standby = \"stop\"\n[deploy.watch]");
    let d = Daemon::start("process", &deploy, &process_service("web", ""));
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let deploying = deploy_until_its_watch_runs(&d, &["deploy", "v2"]).await;
    let during = d.status().await;
    assert_eq!(during["active"]["tag"], "v2", "{during}");
    assert_eq!(during["services"][0]["blue"]["state"], "running", "{during}");
    let out = deploying.await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = d.status().await;
    assert_eq!(
        after["services"][0]["blue"],
        Value::Null,
        "stopped after the window: {after}"
    );
    assert_eq!(after["standby"], Value::Null, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flip_back_during_the_watch_ends_it_and_flips_at_once() {
    // A long window, and `standby = "stop"`: the flip back must neither wait
    // for the window nor find the previous color stopped.
    let deploy = WATCH
        .replace("window = \"3s\"", "window = \"10m\"")
        .replace("[deploy.watch]", "standby = \"stop\"\n[deploy.watch]");
    let d = Daemon::start("process", &deploy, &process_service("web", ""));
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let deploying = deploy_until_its_watch_runs(&d, &["deploy", "v2", "--json"]).await;
    back_to_v1_during_the_watch(&d, deploying, "flip back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_during_the_watch_ends_it_and_returns_to_the_previous_release() {
    let deploy = WATCH.replace("window = \"3s\"", "window = \"10m\"");
    let d = Daemon::start("process", &deploy, &process_service("web", ""));
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let deploying = deploy_until_its_watch_runs(&d, &["deploy", "v2", "--json"]).await;
    // Another deploy waits for the watch: it is part of the deploy before.
    let out = d.cli(&["deploy", "v3", "--json"]).await;
    assert_eq!(out.status.code(), Some(4), "a deploy is busy: {}", text(&out));
    assert!(
        d.status().await["watch"].is_object(),
        "the refused deploy left the watch running"
    );

    back_to_v1_during_the_watch(&d, deploying, "rollback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_port_goes_over_to_the_new_daemon_in_an_upgrade() {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut d = Daemon::start_with_proxy(
        "",
        &format!("metrics_listen = \"{metrics}\""),
        "process",
        "timeout = \"30s\"",
        &process_service("web", ""),
    );
    assert_eq!(d.cli(&["deploy", "v1"]).await.status.code(), Some(0));
    let out = d.cli(&["upgrade", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let new_pid = d.status().await["daemon_pid"].as_i64().unwrap() as i32;
    d.follow(new_pid);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    let s = scrape(metrics).await;
    assert_eq!(
        value(&s, "switchctl_active_release_info{color=\"blue\",tag=\"v1\"}"),
        1.0
    );
}
