//! The admin API server: a hyper HTTP/1 server on the daemon's Unix socket
//! (mode 0660). It only decodes requests, calls the controller and encodes
//! answers: an operation's events stream back as NDJSON while it runs (as a
//! task of its own, so a CLI that goes away does not stop it).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::{ApiError, DeployRequest, RollbackRequest};
use crate::api::OperationInfo;
use crate::controller::{Controller, Events, Operation, Overrides, Refused};
use crate::upgrade::Upgrader;

type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Serve the admin API on `listener` until `shutdown`; `upgrader` answers
/// `POST /v1/upgrade`.
pub async fn serve(
    listener: UnixListener,
    controller: Arc<Controller>,
    upgrader: Arc<Upgrader>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (controller, upgrader) = (controller.clone(), upgrader.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (controller, upgrader) = (controller.clone(), upgrader.clone());
                async move { Ok::<_, Infallible>(route(controller, upgrader, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Bind the admin socket at `path`: create its directory, replace a stale
/// socket file, refuse if another daemon answers there, chmod 0660, and give
/// it to `group` so that its members can deploy without root. A missing
/// group is an error, unless it is the default one (a host where the package
/// did not create it): then the socket stays root's, with a warning.
pub async fn bind(path: &Path, group: &str) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another switchctl daemon is listening on {}; stop it first (systemctl stop switchctl)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    bind_fresh(path, group)
}

/// Bind a new admin socket at `path` (a successor's staging path: nobody
/// answers there), chmod 0660, owned by `group` as [`bind`] does. The group
/// is looked up first, and a socket that cannot be given its mode and
/// group is removed again: a refused start leaves no socket file behind.
pub fn bind_fresh(path: &Path, group: &str) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let gid = admin_gid(path, group)?;
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on admin socket {}", path.display()))?;
    let owned = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))
        .and_then(|()| match gid {
            Some(gid) => nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).with_context(|| {
                format!(
                    "cannot give the admin socket {} to group {group}; run the daemon as root or as a member of {group}",
                    path.display()
                )
            }),
            None => Ok(()),
        });
    if let Err(e) = owned {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// The gid that will own the admin socket at `path`: `None` when the default
/// group does not exist (only root can use the socket then, with a warning);
/// any other missing group is an error.
fn admin_gid(path: &Path, group: &str) -> anyhow::Result<Option<u32>> {
    use super::group::{gid_of, GROUP_FILE};
    match gid_of(group, Path::new(GROUP_FILE)) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) if group == crate::config::DEFAULT_ADMIN_GROUP => {
            tracing::warn!(
                socket = %path.display(),
                "group {group} is not in {GROUP_FILE}, so only root can use the admin socket; create it (addgroup --system {group}) or set proxy.admin_group"
            );
            Ok(None)
        }
        Ok(None) => anyhow::bail!(
            "proxy.admin_group: group {group:?} is not in {GROUP_FILE}; create it (addgroup --system {group}), name another group, \
             or give a directory service's group by its numeric gid"
        ),
        Err(e) => anyhow::bail!("proxy.admin_group: cannot read {GROUP_FILE} to look up group {group:?}: {e}"),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

/// A request answered with an error instead of an operation.
struct Refusal {
    status: StatusCode,
    body: ApiError,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            body: ApiError {
                error: message.into(),
                holder: None,
            },
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    /// 409: another operation holds the lock.
    fn busy(holder: OperationInfo) -> Self {
        let what = match &holder.tag {
            Some(tag) => format!("{} of {tag}", holder.kind),
            None => holder.kind.clone(),
        };
        Refusal {
            status: StatusCode::CONFLICT,
            body: ApiError {
                error: format!(
                    "another operation is in progress: {what} (phase {}); wait for it to finish and retry",
                    holder.phase
                ),
                holder: Some(holder),
            },
        }
    }

    fn into_response(self) -> Response<Body> {
        json(self.status, &self.body)
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refusal> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Refusal::bad_request(format!("cannot read request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Refusal::bad_request(format!("malformed request: {e}")))
}

/// Decode the request, call the controller, encode its answer.
async fn route(controller: Arc<Controller>, upgrader: Arc<Upgrader>, req: Request<Incoming>) -> Response<Body> {
    handle(controller, upgrader, req)
        .await
        .unwrap_or_else(Refusal::into_response)
}

async fn handle(
    controller: Arc<Controller>,
    upgrader: Arc<Upgrader>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => Ok(json(StatusCode::OK, &controller.status().await)),
        (&Method::GET, "/v1/history") => match controller.history().read() {
            Ok(entries) => Ok(json(StatusCode::OK, &entries)),
            Err(e) => Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read history: {e}"),
            )),
        },
        (&Method::POST, "/v1/deploy") => {
            let body: DeployRequest = read_json(req).await?;
            let overrides = Overrides {
                no_watch: body.no_watch,
                ..overrides(body.timeout_secs, body.health_check_interval_secs)?
            };
            operation(
                &controller,
                Operation::Deploy {
                    tag: body.tag,
                    overrides,
                },
            )
            .await
        }
        (&Method::POST, "/v1/flip-back") => operation(&controller, Operation::FlipBack).await,
        (&Method::POST, "/v1/rollback") => {
            let body: RollbackRequest = read_json(req).await?;
            let overrides = overrides(body.timeout_secs, body.health_check_interval_secs)?;
            operation(
                &controller,
                Operation::Rollback {
                    tag: body.tag,
                    overrides,
                },
            )
            .await
        }
        (&Method::POST, "/v1/stop-all") => match controller.stop_all().await {
            Ok(answer) => Ok(json(StatusCode::OK, &answer)),
            Err(holder) => Err(Refusal::busy(holder)),
        },
        (&Method::POST, "/v1/upgrade") => refused_or_events(upgrader.begin().await),
        (
            _,
            "/v1/status" | "/v1/history" | "/v1/deploy" | "/v1/flip-back" | "/v1/rollback" | "/v1/stop-all"
            | "/v1/upgrade",
        ) => Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
        (_, path) => Err(Refusal::new(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))),
    }
}

/// The client's timing overrides (seconds), checked.
fn overrides(timeout: Option<f64>, interval: Option<f64>) -> Result<Overrides, Refusal> {
    use crate::config::{seconds, MAX_INTERVAL, MAX_TIMEOUT};
    let secs = |v: Option<f64>, name: &str, max| {
        v.map(|v| seconds(name, v, max).map_err(Refusal::bad_request))
            .transpose()
    };
    Ok(Overrides {
        timeout: secs(timeout, "DEPLOY_TIMEOUT (timeout_secs)", MAX_TIMEOUT)?,
        health_check_interval: secs(
            interval,
            "HEALTH_CHECK_INTERVAL (health_check_interval_secs)",
            MAX_INTERVAL,
        )?,
        no_watch: false,
    })
}

/// Start `op` and stream its events, or say why it was refused.
async fn operation(controller: &Arc<Controller>, op: Operation) -> Result<Response<Body>, Refusal> {
    refused_or_events(controller.begin(op).await)
}

/// An operation's events as NDJSON, or its refusal.
fn refused_or_events(begun: Result<Events, Refused>) -> Result<Response<Body>, Refusal> {
    match begun {
        Ok(events) => Ok(ndjson(events)),
        Err(Refused::BadRequest(message)) => Err(Refusal::bad_request(message)),
        Err(Refused::Busy(holder)) => Err(Refusal::busy(holder)),
    }
}

/// Stream `events` as NDJSON, one event per line, until the operation ends.
fn ndjson(events: Events) -> Response<Body> {
    let lines = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), events))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(lines)))
        .expect("static response parts are valid")
}
