//! The one way in: an [`Operation`] (deploy, flip back, rollback) is checked,
//! takes the lock, gets its config, and runs as a task of its own, so a
//! client that goes away (an SSH session dropped mid-deploy) does not stop
//! it. The caller gets its progress events, or why it was refused.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::deploy::{validate_tag, Deploy};
use super::event::{Event, Outcome, Reporter};
use super::Controller;
use crate::api::OperationInfo;
use crate::config::Config;

/// What a client can ask the controller to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Deploy `tag` to the idle color.
    Deploy {
        /// the tag
        tag: String,
        /// timing overrides
        overrides: Overrides,
    },
    /// Send traffic back to the warm standby.
    FlipBack,
    /// Return to `tag`, or to the previous successful release.
    Rollback {
        /// the tag, if named
        tag: Option<String>,
        /// timing overrides
        overrides: Overrides,
    },
}

impl Operation {
    /// The command, if this operation is one a human uses to leave a
    /// release that looks bad: it ends a post-flip watch instead of waiting
    /// for it. A deploy waits (the watch is part of the deploy before it).
    fn ends_a_watch(&self) -> Option<&'static str> {
        match self {
            Operation::FlipBack => Some("flip back"),
            Operation::Rollback { .. } => Some("rollback"),
            Operation::Deploy { .. } => None,
        }
    }

    /// Its name in `status` and history.
    fn kind(&self) -> &'static str {
        match self {
            Operation::Deploy { .. } => "deploy",
            Operation::FlipBack => "flip_back",
            Operation::Rollback { .. } => "rollback",
        }
    }

    /// The tag it names, if any.
    fn tag(&self) -> Option<&str> {
        match self {
            Operation::Deploy { tag, .. } => Some(tag),
            Operation::Rollback { tag, .. } => tag.as_deref(),
            Operation::FlipBack => None,
        }
    }
}

/// A client's `DEPLOY_TIMEOUT`, `HEALTH_CHECK_INTERVAL` and `--no-watch`, over the config's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `deploy.timeout`
    pub timeout: Option<Duration>,
    /// `deploy.health_check_interval`
    pub health_check_interval: Option<Duration>,
    /// `deploy --no-watch`: no post-flip watch for this deploy.
    pub no_watch: bool,
}

impl Overrides {
    /// `config` with these overrides.
    fn apply(self, config: Arc<Config>) -> Arc<Config> {
        if self == Overrides::default() {
            return config;
        }
        let mut config = (*config).clone();
        if let Some(t) = self.timeout {
            config.deploy.timeout = t;
        }
        if let Some(i) = self.health_check_interval {
            config.deploy.health_check_interval = i;
        }
        if self.no_watch {
            config.deploy.watch = None;
        }
        Arc::new(config)
    }
}

/// Why an operation was not started.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The request or the config is wrong (the CLI exits 2).
    BadRequest(String),
    /// Another operation holds the lock (the CLI exits 4).
    Busy(OperationInfo),
}

/// The progress events of a running operation; the last one is `done`.
pub type Events = mpsc::UnboundedReceiver<Event>;

impl Controller {
    /// Start `operation`: check it, wait for start-up recovery, take the lock,
    /// and only then re-read the config (a refused request changes nothing),
    /// then run it as its own task.
    pub async fn begin(self: &Arc<Self>, operation: Operation) -> Result<Events, Refused> {
        if let Some(tag) = operation.tag() {
            validate_tag(tag).map_err(Refused::BadRequest)?;
        }
        self.recovered().await;
        let op = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_begin(operation.kind(), operation.tag()) {
                Ok(op) => break op,
                // A human's flip back or rollback does not wait for a
                // post-flip watch: the watch ends, its deploy lets go of
                // the lock, and the command takes it.
                Err(_) if operation.ends_a_watch().is_some_and(|c| self.end_watch(c)) => released.await,
                Err(holder) => return Err(Refused::Busy(holder)),
            }
        };
        let fresh_config = |overrides: Overrides| match self.reload_config() {
            Ok(config) => Ok(overrides.apply(config)),
            Err(e) => Err(Refused::BadRequest(e.to_string())),
        };
        let (reporter, events) = Reporter::channel();
        let controller = self.clone();
        let kind = operation.kind();
        let watcher = reporter.clone();
        match operation {
            Operation::Deploy { tag, overrides } => {
                let config = fresh_config(overrides)?;
                spawn_contained(kind, watcher, async move {
                    Deploy::new(controller, op, config, tag, reporter).await.run().await
                });
            }
            Operation::FlipBack => {
                spawn_contained(kind, watcher, async move { controller.flip_back(op, reporter).await });
            }
            Operation::Rollback { tag, overrides } => {
                let config = fresh_config(overrides)?;
                spawn_contained(kind, watcher, async move {
                    controller.rollback(op, config, tag, reporter).await
                });
            }
        }
        Ok(events)
    }
}

/// Run one operation as a task of its own. A panic in it (a bug) costs only
/// that operation: unwinding drops the operation lock and the state lock it
/// held, the client gets a final `failed` event saying so, and the daemon
/// keeps serving. Returns the watcher's handle (tests await it).
pub(super) fn spawn_contained<F>(kind: &'static str, reporter: Reporter, work: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = Outcome> + Send + 'static,
{
    let task = tokio::spawn(work);
    tokio::spawn(async move {
        let Err(e) = task.await else { return };
        if !e.is_panic() {
            return;
        }
        let payload = e.into_panic();
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with no message".into());
        reporter.send(Event::done(
            Outcome::Failed,
            format!(
                "{kind} stopped by an internal error ({why}); the lock is released and the proxy keeps serving; \
                 check `switchctl status` and the daemon log, then retry"
            ),
        ));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::event::Phase;

    #[tokio::test]
    async fn a_panicking_operation_ends_with_a_failed_event_and_releases_its_locks() {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (reporter, mut events) = Reporter::channel();
        let (held, inner) = (lock.clone(), reporter.clone());
        let watcher = spawn_contained("deploy", reporter, async move {
            let _guard = held.lock().await;
            inner.info(Phase::Start, None, "about to fail");
            if held.try_lock().is_err() {
                panic!("a bug in a phase");
            }
            Outcome::Deployed
        });
        watcher.await.unwrap();
        let first = events.recv().await.unwrap();
        assert_eq!(first.message, "about to fail");
        let done = events.recv().await.unwrap();
        assert_eq!(done.outcome, Some(Outcome::Failed));
        assert!(done.message.contains("a bug in a phase"), "{}", done.message);
        assert!(events.recv().await.is_none(), "the stream ends after done");
        assert!(lock.try_lock().is_ok(), "unwinding released the lock");
    }
}
