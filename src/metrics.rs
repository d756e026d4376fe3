//! Prometheus metrics at `proxy.metrics_listen`: `GET /metrics` in the
//! OpenMetrics text format, through `prometheus-client`.
//!
//! The data plane only counts (per-worker atomics in each upstream's
//! `Stats`) and knows nothing of this. At scrape time, [`Metrics`] (a
//! prometheus-client `Collector`) reads those counters and labels them with
//! what the controller knows: each upstream's service, color and tag, the
//! active release, the operation counters, and the proxy's certificates.
//! A scrape never waits for a deploy: while an operation holds the state,
//! the labels of the previous scrape are used.
//!
//! A color's counters start at 0 when it gets a new release (its upstream is
//! new); Prometheus' `rate()` and `increase()` read that as a counter reset.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use switchctl_proxy::BUCKETS_US;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::controller::counters::OUTCOMES;
use crate::controller::{Controller, MetricsView};

/// The status classes, as `Snapshot::classes` orders them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The collector: reads the proxy's and the controller's counters at
/// scrape time.
pub struct Metrics {
    controller: Arc<Controller>,
    /// The labels of the last scrape that could read the state.
    last: Mutex<Option<MetricsView>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry holding the collector for `controller`.
    pub fn registry(controller: Arc<Controller>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Metrics {
            controller,
            last: Mutex::new(None),
        }));
        registry
    }

    fn view(&self) -> MetricsView {
        let mut last = self.last.lock().expect("metrics lock");
        if let Some(fresh) = self.controller.metrics_view() {
            *last = Some(fresh);
        }
        last.clone().unwrap_or(MetricsView {
            active: None,
            upstreams: Vec::new(),
        })
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = self.view();
        let snaps: Vec<_> = view
            .upstreams
            .iter()
            .map(|u| {
                let labels = [("service", u.service.as_str()), ("color", u.color.as_str())];
                (labels, u.upstream.stats().snapshot(), u.upstream.in_flight())
            })
            .collect();

        let mut m = encoder.encode_descriptor(
            "switchctl_requests",
            "Responses through the proxy by service, color and status class (the proxy's own 502/504 included)",
            None,
            MetricType::Counter,
        )?;
        for (labels, snap, _) in &snaps {
            for (class, n) in CLASSES.iter().zip(snap.classes) {
                let labels = [labels[0], labels[1], ("class", *class)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        let mut m = encoder.encode_descriptor(
            "switchctl_request_duration_seconds",
            "Time from a request's arrival to its response head, by service and color",
            None,
            MetricType::Histogram,
        )?;
        for (labels, snap, _) in &snaps {
            let buckets: Vec<(f64, u64)> = BUCKETS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::INFINITY])
                .zip(snap.buckets)
                .collect();
            let count = snap.buckets.iter().sum();
            m.encode_family(labels)?
                .encode_histogram::<NoLabelSet>(snap.sum_us as f64 / 1e6, count, &buckets, None)?;
        }

        let mut m = encoder.encode_descriptor(
            "switchctl_in_flight_requests",
            "Requests and upgraded connections in flight, by service and color",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _, in_flight) in &snaps {
            ConstGauge::new(*in_flight as i64).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "switchctl_upstream_connect_errors",
            "Connections to an upstream refused or failed (answered 502)",
            None,
            MetricType::Counter,
        )?;
        for (labels, snap, _) in &snaps {
            ConstCounter::new(snap.connect_errors).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "switchctl_upstream_timeouts",
            "Upstream timeouts (answered 504), by kind: connect or response",
            None,
            MetricType::Counter,
        )?;
        for (labels, snap, _) in &snaps {
            for (kind, n) in [("connect", snap.connect_timeouts), ("response", snap.response_timeouts)] {
                let labels = [labels[0], labels[1], ("kind", kind)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        if let Some((color, tag)) = &view.active {
            let mut m = encoder.encode_descriptor(
                "switchctl_active_release",
                "The color serving traffic and its tag",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("color", color.as_str()), ("tag", tag.as_str())])?;
        }

        let counters = self.controller.counters();
        let mut m = encoder.encode_descriptor(
            "switchctl_deploys",
            "Finished deploys (rollbacks by redeploy included) by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in counters.outcomes() {
            let name = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            ConstCounter::new(n).encode(m.encode_family(&[("outcome", name.as_str())])?)?;
        }
        debug_assert_eq!(counters.outcomes().len(), OUTCOMES.len());

        let m = encoder.encode_descriptor(
            "switchctl_flips",
            "Route swaps that moved traffic to the other color (deploys, flip backs, the watch's flip backs)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(counters.flips()).encode(m)?;

        let m = encoder.encode_descriptor(
            "switchctl_drain_cut",
            "Requests and tunnels still open on the old color when a flip's drain timed out (tunnels are closed)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(counters.drain_cuts()).encode(m)?;

        if let Some(took) = counters.last_deploy() {
            let m = encoder.encode_descriptor(
                "switchctl_last_deploy_duration_seconds",
                "How long the last finished deploy took",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(took.as_secs_f64()).encode(m)?;
        }

        if let Some(certs) = self.controller.proxy().certs() {
            let certs = certs.certificates();
            let mut m = encoder.encode_descriptor(
                "switchctl_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix time), by its names",
                None,
                MetricType::Gauge,
            )?;
            for cert in certs {
                let Some(serving) = cert.serving else { continue };
                let names = serving.names.join(",");
                let at = serving
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                ConstGauge::new(at).encode(m.encode_family(&[("names", names.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Bind `addr` for the metrics endpoint (an error names the key). With
/// `SO_REUSEPORT`, so the daemon that takes over in a `switchctl upgrade`
/// binds it while the old one still serves it (the kernel lets only the
/// same user share the port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bound = (|| {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(128)
    })();
    bound.map_err(|e| anyhow::anyhow!("proxy.metrics_listen: cannot listen on {addr}: {e}"))
}

/// Serve `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        resp
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "metrics could not be encoded\n".into(),
        ),
    }
}
