//! The engine's event stream, so that supervision looks at once when one of
//! this instance's containers starts, dies or is removed, instead of at its
//! next poll (which stays as the fallback). Only containers labelled with
//! this instance are asked for: another switchctl's containers, or anything
//! else on the host, never wake this one. The stream ends when the engine
//! restarts; it is opened again with backoff, and its end wakes supervision
//! once, since anything may change while nobody listens.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{DockerDriver, LABEL_INSTANCE};

/// The container events that can change what the active color runs on.
const ACTIONS: [&str; 5] = ["start", "restart", "die", "stop", "destroy"];
/// The first wait before the stream is opened again; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to open it.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait after an attempt that waited `backoff`.
fn next_backoff(backoff: Duration) -> Duration {
    backoff.saturating_mul(2).min(MAX_BACKOFF)
}

impl DockerDriver {
    /// Follow the engine's events for this instance's containers until
    /// `shutdown`, waking [`DockerDriver::changed`] on each.
    pub(in crate::driver) async fn follow_events(&self, shutdown: &CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                why = self.listen(&mut backoff) => why,
            };
            tracing::debug!(
                "Docker's event stream ended ({why}); supervision polls meanwhile and the stream is opened again in {}",
                humantime::format_duration(backoff)
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    /// Wait for the next change reported by the engine (a permit is kept
    /// when nobody waits, so none is lost between two looks).
    pub(in crate::driver) async fn changed(&self) {
        self.changes.notified().await
    }

    /// One subscription to the event stream, until it ends; says why.
    /// `backoff` goes back to its first value once events flow.
    async fn listen(&self, backoff: &mut Duration) -> String {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return e.to_string(),
        };
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{LABEL_INSTANCE}={}", self.instance)]),
            ("event", ACTIONS.iter().map(|a| a.to_string()).collect()),
        ]);
        let mut stream = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        let mut connected = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if !connected {
                        connected = true;
                        *backoff = FIRST_BACKOFF;
                    }
                    tracing::debug!(
                        action = event.action.as_deref().unwrap_or("?"),
                        container = event.actor.and_then(|a| a.id).as_deref().unwrap_or("?"),
                        "Docker event"
                    );
                    self.changes.notify_one();
                }
                Err(e) => {
                    // The engine went away: connect afresh next time.
                    *self.client.lock().await = None;
                    self.changes.notify_one();
                    return e.to_string();
                }
            }
        }
        self.changes.notify_one();
        "the engine closed it".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_attempts_back_off_up_to_thirty_seconds() {
        let mut b = FIRST_BACKOFF;
        let mut seen = vec![b.as_millis()];
        for _ in 0..8 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    }
}
