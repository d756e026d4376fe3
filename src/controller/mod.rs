//! The controller: owns the persisted [`State`], the operation lock, and the
//! link between releases and the proxy's route table. Deploy, flip back and
//! rollback live in [`deploy`]; this file holds what they share, recovery at
//! daemon start, and the status report.

pub mod deploy;
pub mod event;
pub mod health;
pub mod history;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use switchctl_proxy::{Proxy, Route, RouteTable, Upstream};

use crate::api::{ColorStatus, ColorTag, DriverStatus, OperationInfo, ServiceStatus, Status, StopAllAnswer};
use crate::config::{Config, ConfigError};
use crate::driver::{Driver, RunState};
use crate::release::{Color, Release};
use event::Reporter;
use history::History;
use state::{State, StateError, StateStore};

/// Upstreams by address, so every route table that names an address shares
/// one in-flight count.
#[derive(Debug, Default)]
pub struct UpstreamSet {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Upstream>>>,
}

impl UpstreamSet {
    /// The upstream at `addr`, created on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        self.by_addr
            .lock()
            .expect("upstream set lock")
            .entry(addr)
            .or_insert_with(|| Upstream::new(addr))
            .clone()
    }

    /// Requests and tunnels in flight to `addr` (0 if it never took traffic).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.by_addr
            .lock()
            .expect("upstream set lock")
            .get(&addr)
            .map_or(0, |u| u.in_flight())
    }

    /// Forget a stopped upstream.
    pub fn remove(&self, addr: SocketAddr) {
        self.by_addr.lock().expect("upstream set lock").remove(&addr);
    }
}

/// The route table that sends every configured service to `release`
/// (services it lacks answer 503).
pub fn route_table(config: &Config, release: Option<&Release>, upstreams: &UpstreamSet) -> RouteTable {
    let services = config
        .services
        .iter()
        .map(|s| {
            let up = release
                .and_then(|r| r.services.get(&s.name))
                .map(|rec| upstreams.get(rec.addr));
            (s.name.clone(), up)
        })
        .collect();
    let routes = config
        .services
        .iter()
        .flat_map(|s| s.routes().into_iter().map(move |r| (s, r)))
        .map(|(s, r)| Route {
            hosts: r
                .hosts
                .iter()
                .filter_map(|h| switchctl_proxy::HostPattern::parse(h).ok())
                .collect(),
            path_prefix: r.path_prefix.clone(),
            // strip_prefix: r.strip_prefix, // PROXY: pass through once switchctl_proxy::Route has `strip_prefix`
            service: s.name.clone(),
        })
        .collect();
    // The config was validated, so the table is valid; an empty table (all
    // 404) is the safe fallback should that ever not hold.
    RouteTable::new(services, routes).unwrap_or_default()
}

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
}

/// Holds the operation lock; dropping it unlocks.
pub struct OperationGuard {
    controller: Arc<Controller>,
}

impl OperationGuard {
    /// Record the phase the operation is in (shown by `status`).
    pub fn phase(&self, phase: &str) {
        if let Some(op) = self.controller.operation.lock().expect("operation lock").as_mut() {
            op.phase = phase.to_string();
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
        })
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
    pub async fn recovered(&self) {
        self.recovered.cancelled().await
    }

    /// Take the operation lock, or say who holds it.
    pub fn try_begin(self: &Arc<Self>, kind: &str, tag: Option<&str>) -> Result<OperationGuard, OperationInfo> {
        let mut op = self.operation.lock().expect("operation lock");
        if let Some(holder) = op.as_ref() {
            return Err(holder.clone());
        }
        *op = Some(OperationInfo {
            kind: kind.to_string(),
            tag: tag.map(String::from),
            phase: "lock".into(),
        });
        Ok(OperationGuard {
            controller: self.clone(),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The history of operations.
    pub fn history(&self) -> &History {
        &self.history
    }

    fn save(&self, state: &State) -> Result<(), StateError> {
        self.store.save(state)
    }

    /// After a daemon start: finish what an interrupted deploy left (stop the
    /// color it was starting, remove orphan containers) and note upstreams
    /// that are gone. The proxy already serves the persisted active color.
    pub async fn recover(self: &Arc<Self>) {
        let _done = self.recovered.clone().drop_guard();
        let Ok(_guard) = self.try_begin("recover", None) else {
            return;
        };
        let reporter = Reporter::silent();
        let config = self.config();
        let mut state = self.state.lock().await;
        if let Some(pending) = state.pending.take() {
            if let Some(release) = state.colors.remove(&pending) {
                reporter.warn(
                    "recover",
                    None,
                    format!(
                        "an interrupted deploy of {} left {pending} half-started; stopping it",
                        release.tag
                    ),
                );
                self.stop_release(&release, &config, &reporter).await;
            }
            if let Err(e) = self.save(&state) {
                reporter.error("recover", None, e.to_string());
            }
        }
        match self.driver.orphans(&state.handles()).await {
            Ok(orphans) => {
                for handle in orphans {
                    reporter.warn("recover", None, format!("removing orphan upstream {handle:?}"));
                    let _ = self.driver.stop(&handle, config.deploy.stop_timeout).await;
                }
            }
            Err(e) => reporter.warn("recover", None, format!("cannot look for orphans: {e}")),
        }
        let mut problems = Vec::new();
        for (color, release) in &state.colors {
            for (service, rec) in &release.services {
                match self.driver.state(&rec.handle).await {
                    RunState::Running { .. } => {}
                    RunState::Exited { reason } => {
                        problems.push(format!("{service} ({color}, {}): {reason}", release.tag))
                    }
                    RunState::Missing => problems.push(format!(
                        "{service} ({color}, {}): upstream is gone; deploy again to replace it",
                        release.tag
                    )),
                    RunState::Unknown { reason } => {
                        problems.push(format!("{service} ({color}, {}): {reason}", release.tag))
                    }
                }
            }
        }
        for p in &problems {
            reporter.warn("recover", None, p.clone());
        }
        *self.problems.lock().expect("problems lock") = problems;
    }

    /// Stop every upstream of `release` (best effort, reported).
    async fn stop_release(&self, release: &Release, config: &Config, reporter: &Reporter) {
        let stops = release.services.iter().map(|(service, rec)| async move {
            let timeout = config
                .service(service)
                .map_or(config.deploy.stop_timeout, |s| s.stop_timeout(config));
            if let Err(e) = self.driver.stop(&rec.handle, timeout).await {
                reporter.warn("stop", Some(service), format!("could not stop cleanly: {e}"));
            }
            self.upstreams.remove(rec.addr);
        });
        futures_util::future::join_all(stops).await;
    }

    /// Stop every upstream of both colors and forget them: the proxy
    /// answers 503 until the next deploy. For `switchctl demo`, which must
    /// leave nothing running; refused while another operation runs.
    pub async fn stop_all(self: &Arc<Self>) -> Result<StopAllAnswer, OperationInfo> {
        let op = self.try_begin("stop", None)?;
        op.phase("stop");
        let config = self.config();
        let reporter = Reporter::silent();
        let mut state = self.state.lock().await;
        self.proxy.swap(route_table(&config, None, &self.upstreams));
        let mut stopped = Vec::new();
        for (color, release) in std::mem::take(&mut state.colors) {
            self.stop_release(&release, &config, &reporter).await;
            stopped.extend(
                release
                    .services
                    .keys()
                    .map(|s| format!("{s} ({color}, {})", release.tag)),
            );
        }
        state.active = None;
        state.pending = None;
        if let Err(e) = self.save(&state) {
            // The upstreams are gone whatever the file says; recovery at the
            // next start reports them missing.
            tracing::warn!(error = %e, "stopped every upstream but could not save the state");
        }
        Ok(StopAllAnswer { stopped })
    }

    /// What `status` shows.
    pub async fn status(&self) -> Status {
        let config = self.config();
        let state = self.state.lock().await.clone();
        let operation = self.operation.lock().expect("operation lock").clone();
        let driver = match self.driver.ping().await {
            Ok(()) => DriverStatus {
                kind: config.driver,
                ok: true,
                error: None,
            },
            Err(e) => DriverStatus {
                kind: config.driver,
                ok: false,
                error: Some(e.to_string()),
            },
        };
        let mut names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        for release in state.colors.values() {
            for name in release.services.keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        // Every upstream is looked at concurrently: status stays quick with
        // many services or a slow one.
        let looks = names.iter().flat_map(|name| {
            let health = config.service(name).map(|s| s.health.clone()).unwrap_or_default();
            state.colors.iter().filter_map(move |(color, release)| {
                let rec = release.services.get(name)?.clone();
                let quick = crate::config::HealthConfig {
                    timeout: health.timeout.min(std::time::Duration::from_secs(1)),
                    ..health.clone()
                };
                Some(async move {
                    let run = match self.driver.state(&rec.handle).await {
                        RunState::Running { .. } => "running".to_string(),
                        RunState::Exited { reason } => reason,
                        RunState::Missing => "missing".into(),
                        RunState::Unknown { reason } => reason,
                    };
                    let status = ColorStatus {
                        tag: release.tag.clone(),
                        upstream: rec.addr.to_string(),
                        healthy: health::probe(rec.addr, &quick).await.is_ok(),
                        in_flight: self.upstreams.in_flight(rec.addr),
                        state: run,
                    };
                    (name.clone(), *color, status)
                })
            })
        });
        let mut looked: Vec<(String, Color, ColorStatus)> = futures_util::future::join_all(looks).await;
        let services = names
            .into_iter()
            .map(|name| {
                let mut take = |color: Color| {
                    let i = looked.iter().position(|(n, c, _)| *n == name && *c == color)?;
                    Some(looked.swap_remove(i).2)
                };
                ServiceStatus {
                    blue: take(Color::Blue),
                    green: take(Color::Green),
                    name,
                }
            })
            .collect();
        Status {
            active: state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            }),
            standby: state.standby_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            }),
            operation,
            services,
            driver,
            problems: self.problems.lock().expect("problems lock").clone(),
        }
    }
}
