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
//! | [`routing`] | route tables and the shared upstream set |
//! | [`state`], [`history`], [`health`], [`event`] | persisted state, history, health checks, progress events |

pub mod deploy;
pub mod event;
pub mod flip;
pub mod health;
pub mod history;
pub mod hooks;
pub mod operation;
pub mod recover;
pub mod retention;
pub mod rollback;
pub mod routing;
pub mod state;
pub mod status;
pub mod stop;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use switchctl_proxy::Proxy;

use crate::api::OperationInfo;
use crate::config::{Config, ConfigError};
use crate::driver::Driver;
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
    problems: Mutex<Vec<String>>,
    /// Cancelled once start-up recovery has finished.
    recovered: tokio_util::sync::CancellationToken,
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
        Arc::new(Controller {
            config_path,
            store: StateStore::new(&config.state_dir),
            history: History::new(&config.state_dir),
            config: Mutex::new(Arc::new(config)),
            proxy,
            driver,
            state: tokio::sync::Mutex::new(state),
            operation: Mutex::new(None),
            upstreams,
            problems: Mutex::new(Vec::new()),
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
        let fresh = Arc::new(fresh);
        *self.config.lock().expect("config lock") = fresh.clone();
        Ok(fresh)
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

    /// Say loudly (log and `status`) that something is wrong.
    pub fn problem(&self, message: String) {
        tracing::error!("{message}");
        self.problems.lock().expect("problems lock").push(message);
    }
}
