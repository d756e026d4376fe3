//! Recovery at daemon start: finish what an interrupted deploy left, remove
//! orphans, and note upstreams that are gone (shown by `status`).

use std::sync::Arc;

use super::event::{Phase, Reporter};
use super::routing::route_table;
use super::state::State;
use super::Controller;
use crate::config::Config;
use crate::driver::RunState;

impl Controller {
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
        if state.pending.is_some() {
            if let Some((pending, release)) = state.abandon_pending() {
                reporter.warn(
                    Phase::Recover,
                    None,
                    format!(
                        "an interrupted deploy of {} left {pending} half-started; stopping it",
                        release.tag
                    ),
                );
                self.stop_release(&release, &config, &reporter).await;
            }
            if let Err(e) = self.save(&state) {
                reporter.error(Phase::Recover, None, e.to_string());
            }
        }
        match self.driver.orphans(&state.handles()).await {
            Ok(orphans) => {
                for handle in orphans {
                    reporter.warn(Phase::Recover, None, format!("removing orphan upstream {handle:?}"));
                    let _ = self.driver.stop(&handle, config.deploy.stop_timeout).await;
                }
            }
            Err(e) => reporter.warn(Phase::Recover, None, format!("cannot look for orphans: {e}")),
        }
        self.follow_ports(&mut state, &config, &reporter).await;
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
            reporter.warn(Phase::Recover, None, p.clone());
        }
        *self.problems.lock().expect("problems lock") = problems;
    }

    /// Adoption reads Docker again: a container that Docker restarted while
    /// no daemon watched may publish its port on another host port. Each
    /// upstream's address is taken from the runtime, persisted, and the
    /// route table follows.
    async fn follow_ports(&self, state: &mut State, config: &Config, reporter: &Reporter) {
        let mut moved = false;
        for (color, release) in state.colors.iter_mut() {
            for (service, rec) in release.services.iter_mut() {
                let Some(svc) = config.service(service) else { continue };
                let Some(now) = self.driver.current_addr(&rec.handle, svc).await else {
                    continue;
                };
                if now != rec.addr {
                    reporter.warn(
                        Phase::Recover,
                        Some(service),
                        format!(
                            "{color} ({}) now listens on {now} (was {}); following it",
                            release.tag, rec.addr
                        ),
                    );
                    tracing::warn!(service, %color, old = %rec.addr, new = %now, "upstream came back on another port");
                    self.upstreams.remove(rec.addr);
                    rec.addr = now;
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
        if let Err(e) = self.save(state) {
            reporter.error(Phase::Recover, None, e.to_string());
        }
        if let Some((_, active)) = state.active_release() {
            self.proxy.swap(route_table(config, Some(active), &self.upstreams));
        }
    }
}
