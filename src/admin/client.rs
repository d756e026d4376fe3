//! The admin API client the CLI uses: one HTTP/1 connection over the Unix
//! socket per command. Errors say whether the daemon could not be reached
//! (exit 3) or refused the request (exit 2 / 4).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::ApiError;
use crate::controller::event::Event;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached, or the daemon went away.
    #[error("cannot reach the switchctl daemon at {path}: {message}; is `switchctl proxy` running (systemctl status switchctl)?")]
    Unreachable {
        /// the socket
        path: PathBuf,
        /// why
        message: String,
    },
    /// 400: the request or the config is bad.
    #[error("{0}")]
    BadRequest(String),
    /// 409: another operation holds the lock.
    #[error("{0}")]
    Busy(String),
    /// Any other refusal.
    #[error("the daemon answered {status}: {message}")]
    Other {
        /// HTTP status
        status: StatusCode,
        /// its message
        message: String,
    },
}

/// A client of one daemon's admin socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            path: self.socket.clone(),
            message: e.to_string(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "switchctl")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.unreachable(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = self.body(resp).await?;
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(match status {
            StatusCode::BAD_REQUEST => ClientError::BadRequest(message),
            StatusCode::CONFLICT => ClientError::Busy(message),
            _ => ClientError::Other { status, message },
        })
    }

    async fn body(&self, resp: http::Response<Incoming>) -> Result<Bytes, ClientError> {
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes())
    }

    /// GET a JSON document.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.request(Method::GET, path, None).await?;
        let bytes = self.body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.unreachable(format!("unreadable answer: {e}")))
    }

    /// POST `body` and read the JSON answer.
    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.unreachable(format!("unwritable request: {e}")))?;
        let resp = self.request(Method::POST, path, Some(body)).await?;
        let bytes = self.body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.unreachable(format!("unreadable answer: {e}")))
    }

    /// POST `body` and call `on_event` for each event streamed back, until
    /// the stream ends.
    pub async fn stream(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        mut on_event: impl FnMut(Event),
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(body).expect("request serializes");
        let mut resp = self.request(Method::POST, path, Some(body)).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = resp.frame().await {
            let frame = frame.map_err(|e| self.unreachable(format!("the event stream broke: {e}")))?;
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(event) = serde_json::from_slice::<Event>(&line) {
                    on_event(event);
                }
            }
        }
        Ok(())
    }
}
