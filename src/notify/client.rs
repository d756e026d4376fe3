//! The one HTTP(S) client that webhooks and Telegram share: hyper-util's
//! legacy client over hyper-rustls (rustls with ring, Mozilla's roots from
//! webpki-roots, so a static binary needs no system certificate store).
//! Kept apart from `webhook.rs` and `telegram.rs` because both POST JSON the
//! same way and read the answer the same way; only what they send differs.
//! No connection is kept idle: notifications are rare and the daemon should
//! hold no sockets between them.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{NotifyError, SendError};

/// Most bytes of an answer read (enough for Telegram's JSON or an error page's start).
const MAX_ANSWER: usize = 16 * 1024;

/// What an endpoint answered.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A cheap-to-clone HTTPS (and HTTP) client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// Builds the client. Fails only if rustls refuses its own defaults.
    pub fn new() -> Result<Self, NotifyError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| NotifyError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(HttpClient { client })
    }

    /// POSTs `body` as JSON with `headers` added, and reads at most
    /// [`MAX_ANSWER`] bytes of the answer. The caller bounds the time.
    pub async fn post_json(&self, uri: Uri, headers: &HeaderMap, body: Vec<u8>) -> Result<Answer, SendError> {
        let mut req = Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Rejected(format!("cannot build the request: {e}")))?;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("switchctl/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| SendError::Transport(error_chain(&e)))?;
        let status = resp.status();
        let body = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
            Ok(collected) => collected.to_bytes(),
            // A status was received; an unreadable or oversized body does
            // not change what it says.
            Err(_) => Bytes::new(),
        };
        Ok(Answer { status, body })
    }
}

/// Whether an HTTP status is worth another attempt: server errors, 408
/// (request timeout) and 429 (too many requests). Other 4xx will fail again.
pub(crate) fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// The start of an answer's body on one line, for a warning.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// An error and its causes, `outer: inner: ...`, without repeats: hyper's
/// own message ("client error (Connect)") says little without its causes.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        assert!(retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retryable(StatusCode::BAD_GATEWAY));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::REQUEST_TIMEOUT));
        assert!(!retryable(StatusCode::NOT_FOUND));
        assert!(!retryable(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn snippet_is_one_short_line() {
        assert_eq!(snippet(b"  bad\n request \r\n"), "bad request");
        let long = "x".repeat(500);
        let s = snippet(long.as_bytes());
        assert_eq!(s.chars().count(), 201);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn error_chain_joins_causes_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "client error: connection refused");
    }
}
