//! The controller: the operation lock and the wiring between the persisted
//! [`State`], the drivers, the health checks and the proxy's route table.
//! Everything else has a room of its own:
//!
//! | file | owns |
//! |---|---|
//! | [`operation`] | the one way in: an [`Operation`] becomes a stream of events, or a refusal |
//! | [`deploy`] | [`deploy::Deploy`], the deploy state machine, one method per phase |
//! | [`flip`] | the route swap, the drain and the standby, shared by deploy and `flip back` |
//! | [`rollback`] | `rollback [tag]` |
//! | [`retention`] | which old images may go (a pure function) |
//! | [`recover`] | what a daemon start finishes of an interrupted deploy |
//! | [`status`] | the `status` report |
//! | [`stop`] | stopping a release, or everything |
//! | [`supervise`] | restarting the active color's upstreams that exit; failover to the standby |
//! | [`routing`] | route tables and the shared upstream set |
//! | [`watch`] | the post-flip watch: the new color's 5xx ratio, and the flip back |
//! | [`counters`] | operation counters for metrics |
//! | [`problems`] | what `status` lists as wrong now |
//! | [`state`], [`history`], [`health`], [`event`] | persisted state, history, health checks, progress events |

pub mod counters;
pub mod deploy;
pub mod event;
pub mod flip;
pub mod health;
pub mod history;
pub mod hooks;
pub mod intent;
pub mod operation;
pub mod problems;
pub mod recover;
pub mod retention;
pub mod rollback;
pub mod routing;
pub mod state;
pub mod status;
pub mod stop;
pub mod supervise;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use switchctl_proxy::Proxy;

use crate::api::{OperationInfo, WatchInfo};
use crate::config::{Config, ConfigError};
use crate::driver::Driver;
use crate::notify::Notifier;
use event::Phase;
use history::History;
pub use operation::{Events, Operation, Overrides, Refused};
pub use routing::{route_table, UpstreamSet};
use state::{State, StateError, StateStore};

/// The controller of one switchctl daemon.
pub struct Controller {
    config_path: PathBuf,
    config: Mutex<Arc<Config>>,
    proxy: Arc<Proxy>,
    driver: Driver,
    store: StateStore,
    history: History,
    state: tokio::sync::Mutex<State>,
    operation: Mutex<Option<OperationInfo>>,
    upstreams: Arc<UpstreamSet>,
    problems: Mutex<problems::Problems>,
    /// Restarts by supervision, per color and service (shown by `status`).
    restarts: Mutex<std::collections::HashMap<(crate::release::Color, String), u64>>,
    /// Cancelled once start-up recovery has finished.
    recovered: tokio_util::sync::CancellationToken,
    /// Sends outcomes to `[[notify]]` entries; rebuilt with the config.
    notifier: Mutex<Arc<Notifier>>,
    /// Operation counters for metrics.
    pub(crate) counters: counters::Counters,
    /// The post-flip watch in progress, for `status`.
    watch: Mutex<Option<WatchInfo>>,
    /// Ends the post-flip watch in progress, saying which human command
    /// did (`flip back`, `rollback`).
    watch_end: Mutex<Option<tokio::sync::oneshot::Sender<&'static str>>>,
    /// Woken each time the operation lock is let go.
    released: tokio::sync::Notify,
    /// Automatic certificates, for `status` (set once by the daemon).
    acme: std::sync::OnceLock<Arc<crate::acme::Acme>>,
}

/// Holds the operation lock; dropping it unlocks.
pub struct OperationGuard {
    controller: Arc<Controller>,
}

impl OperationGuard {
    /// Record the phase the operation is in (shown by `status`).
    pub fn phase(&self, phase: Phase) {
        if let Some(op) = self.controller.operation.lock().expect("operation lock").as_mut() {
            op.phase = phase;
        }
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        *self.controller.operation.lock().expect("operation lock") = None;
        self.controller.released.notify_waiters();
    }
}

impl Controller {
    /// A controller over a running proxy whose table was built from `state`
    /// with `upstreams`.
    pub fn new(
        config_path: PathBuf,
        config: Config,
        proxy: Arc<Proxy>,
        driver: Driver,
        state: State,
        upstreams: Arc<UpstreamSet>,
    ) -> Arc<Self> {
        let notifier = Arc::new(notifier_for(&config));
        Arc::new(Controller {
            notifier: Mutex::new(notifier),
            counters: counters::Counters::default(),
            watch: Mutex::new(None),
            watch_end: Mutex::new(None),
            released: tokio::sync::Notify::new(),
            config_path,
            store: StateStore::new(&config.state_dir),
            history: History::new(&config.state_dir),
            config: Mutex::new(Arc::new(config)),
            proxy,
            driver,
            state: tokio::sync::Mutex::new(state),
            operation: Mutex::new(None),
            upstreams,
            problems: Mutex::new(problems::Problems::default()),
            restarts: Mutex::new(std::collections::HashMap::new()),
            recovered: tokio_util::sync::CancellationToken::new(),
            acme: std::sync::OnceLock::new(),
        })
    }

    /// Let `status` show ACME's domains and errors.
    pub fn attach_acme(&self, acme: Arc<crate::acme::Acme>) {
        let _ = self.acme.set(acme);
    }

    /// The config in use.
    pub fn config(&self) -> Arc<Config> {
        self.config.lock().expect("config lock").clone()
    }

    /// Re-read the config file (a deploy picks up service changes). Settings
    /// of `[proxy]` and `state_dir` only change with a daemon restart.
    pub fn reload_config(&self) -> Result<Arc<Config>, ConfigError> {
        let fresh = Config::load(&self.config_path)?;
        let current = self.config();
        if fresh.state_dir != current.state_dir || fresh.driver != current.driver {
            return Err(ConfigError::Invalid {
                path: self.config_path.clone(),
                key: "state_dir / driver".into(),
                message: "changed since the daemon started; restart `switchctl proxy` to apply".into(),
            });
        }
        if fresh.notify != current.notify {
            *self.notifier.lock().expect("notifier lock") = Arc::new(notifier_for(&fresh));
        }
        let fresh = Arc::new(fresh);
        *self.config.lock().expect("config lock") = fresh.clone();
        Ok(fresh)
    }

    /// The notifier of the config in use.
    pub(crate) fn notifier(&self) -> Arc<Notifier> {
        self.notifier.lock().expect("notifier lock").clone()
    }

    /// The operation counters (for metrics).
    pub fn counters(&self) -> &counters::Counters {
        &self.counters
    }

    /// The post-flip watch in progress, if one.
    pub fn watch_status(&self) -> Option<WatchInfo> {
        self.watch.lock().expect("watch lock").clone()
    }

    /// The proxy this controller steers.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// What metrics label the proxy's counters with, without waiting: the
    /// active color and, per color, its tag and each service's upstream.
    /// `None` while an operation holds the state (the caller keeps the last).
    pub fn metrics_view(&self) -> Option<MetricsView> {
        let state = self.state.try_lock().ok()?;
        let active = state.active_release().map(|(c, r)| (c, r.tag.clone()));
        let mut upstreams = Vec::new();
        for (color, release) in &state.colors {
            for (service, rec) in &release.services {
                if let Some(up) = self.upstreams.peek(rec.addr) {
                    upstreams.push(MetricsUpstream {
                        service: service.clone(),
                        color: *color,
                        tag: release.tag.clone(),
                        upstream: up,
                    });
                }
            }
        }
        Some(MetricsView { active, upstreams })
    }

    /// Resolves once start-up recovery is done; operations wait for it
    /// rather than being refused because of it.
    pub(crate) async fn recovered(&self) {
        self.recovered.cancelled().await
    }

    /// Take the operation lock, or say who holds it.
    pub(crate) fn try_begin(self: &Arc<Self>, kind: &str, tag: Option<&str>) -> Result<OperationGuard, OperationInfo> {
        let mut op = self.operation.lock().expect("operation lock");
        if let Some(holder) = op.as_ref() {
            return Err(holder.clone());
        }
        *op = Some(OperationInfo {
            kind: kind.to_string(),
            tag: tag.map(String::from),
            phase: Phase::Lock,
        });
        Ok(OperationGuard {
            controller: self.clone(),
        })
    }

    /// The history of operations.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Persist `state` (fsync, rename) on a blocking thread, never on the
    /// runtime's threads that serve the admin API and the operations.
    async fn save(&self, state: &State) -> Result<(), StateError> {
        let (store, state) = (self.store.clone(), state.clone());
        match tokio::task::spawn_blocking(move || store.save(&state)).await {
            Ok(result) => result,
            Err(e) => Err(StateError::Io {
                action: "write",
                path: self.store.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Say loudly (log and `status`) that something is wrong with the
    /// daemon (listed once however often it is said).
    pub fn problem(&self, message: String) {
        tracing::error!("{message}");
        self.problems.lock().expect("problems lock").daemon(message);
    }

    /// Say loudly (log and `status`) what is wrong now with `service` of
    /// `color`, run by `handle`: replaces what was said of it before, and
    /// `status` drops it once that upstream runs again or is replaced.
    pub(crate) fn upstream_problem(
        &self,
        color: crate::release::Color,
        service: &str,
        handle: &crate::release::Handle,
        message: String,
    ) {
        tracing::warn!("{message}");
        self.problems
            .lock()
            .expect("problems lock")
            .upstream(color, service, handle, message);
    }
}

/// A notifier for `config`'s `[[notify]]` entries (validated with the
/// config); one that cannot start (no TLS roots) notifies nothing, and says so.
fn notifier_for(config: &Config) -> Notifier {
    Notifier::new(&config.notify).unwrap_or_else(|e| {
        tracing::warn!("notifications are off: {e}");
        Notifier::disabled()
    })
}

/// What metrics need of the controller's state at one scrape.
#[derive(Debug, Clone)]
pub struct MetricsView {
    /// The color serving, with its tag.
    pub active: Option<(crate::release::Color, String)>,
    /// Every upstream of a color, with its labels.
    pub upstreams: Vec<MetricsUpstream>,
}

/// One upstream and what it is.
#[derive(Debug, Clone)]
pub struct MetricsUpstream {
    /// Its service.
    pub service: String,
    /// Its color.
    pub color: crate::release::Color,
    /// The tag that color runs.
    pub tag: String,
    /// The proxy's upstream (counters, in-flight).
    pub upstream: Arc<switchctl_proxy::Upstream>,
}
