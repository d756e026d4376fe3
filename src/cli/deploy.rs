//! `deploy <tag>`, `flip back` and `rollback [<tag>]`: send the operation to
//! the daemon, print its events as they stream, exit with its outcome.

use serde::Serialize;

use super::output::Renderer;
use super::{client_exit_code, client_failed, client_with, exit, Cli, SocketLookup};
use crate::admin::client::{Client, ClientError};
use crate::admin::{DeployRequest, RollbackRequest};
use crate::config::{positive_seconds, MAX_INTERVAL, MAX_TIMEOUT};
use crate::controller::event::Outcome;

/// `DEPLOY_TIMEOUT` / `HEALTH_CHECK_INTERVAL` from the CLI's environment,
/// or the exit status after reporting a bad value.
fn env_overrides(json: bool) -> Result<(Option<f64>, Option<f64>), i32> {
    read_env_overrides().map_err(|e| {
        Renderer::new(json).refusal(&e, Outcome::Refused);
        exit::USAGE
    })
}

fn read_env_overrides() -> Result<(Option<f64>, Option<f64>), String> {
    let read = |name: &str, max| -> Result<Option<f64>, String> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => positive_seconds(name, &v, max).map(|d| Some(d.as_secs_f64())),
            _ => Ok(None),
        }
    };
    Ok((
        read("DEPLOY_TIMEOUT", MAX_TIMEOUT)?,
        read("HEALTH_CHECK_INTERVAL", MAX_INTERVAL)?,
    ))
}

/// Stream one operation; returns its outcome, or how the request failed.
pub async fn stream(
    client: &Client,
    path: &str,
    body: &impl Serialize,
    renderer: Renderer,
) -> Result<Option<Outcome>, ClientError> {
    let mut outcome = None;
    client
        .stream(path, body, |event| {
            renderer.event(&event);
            if event.outcome.is_some() {
                outcome = event.outcome;
            }
        })
        .await?;
    Ok(outcome)
}

/// Run the operation at `path` on the daemon, printing its events; its
/// exit status.
pub(crate) async fn run_operation(
    cli: &Cli,
    lookup: SocketLookup,
    path: &str,
    body: &impl Serialize,
    json: bool,
) -> i32 {
    let renderer = Renderer::new(json);
    let client = match client_with(cli, lookup) {
        Ok(c) => c,
        Err(e) => {
            renderer.refusal(&format!("config: {e}"), Outcome::Refused);
            return exit::USAGE;
        }
    };
    match stream(&client, path, body, renderer).await {
        Ok(Some(outcome)) => outcome.exit_code(),
        Ok(None) => {
            renderer.refusal(
                "the daemon closed the stream before the operation finished (was it stopped?); check `switchctl status`",
                Outcome::Failed,
            );
            exit::UNREACHABLE
        }
        Err(e) => {
            if json {
                let outcome = match e {
                    ClientError::Busy(_) | ClientError::BadRequest(_) => Outcome::Refused,
                    _ => Outcome::Failed,
                };
                renderer.refusal(&e.to_string(), outcome);
                return client_exit_code(&e);
            }
            client_failed(&e)
        }
    }
}

/// `switchctl deploy <tag>`
pub async fn deploy(cli: &Cli, tag: &str, json: bool, no_watch: bool) -> i32 {
    let (timeout_secs, health_check_interval_secs) = match env_overrides(json) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let body = DeployRequest {
        tag: tag.to_string(),
        timeout_secs,
        health_check_interval_secs,
        no_watch,
    };
    run_operation(cli, SocketLookup::Checked, "/v1/deploy", &body, json).await
}

/// `switchctl flip back`
pub async fn flip_back(cli: &Cli, json: bool) -> i32 {
    // Only the socket is read from the config: a flip back must not be
    // refused because another key is halfway through an edit.
    run_operation(
        cli,
        SocketLookup::SocketOnly,
        "/v1/flip-back",
        &serde_json::json!({}),
        json,
    )
    .await
}

/// `switchctl rollback [<tag>]`
pub async fn rollback(cli: &Cli, tag: Option<String>, json: bool) -> i32 {
    let (timeout_secs, health_check_interval_secs) = match env_overrides(json) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let body = RollbackRequest {
        tag,
        timeout_secs,
        health_check_interval_secs,
    };
    run_operation(cli, SocketLookup::Checked, "/v1/rollback", &body, json).await
}
