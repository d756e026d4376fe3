//! Stopping upstreams: one release (a failed deploy, a retired standby) or,
//! on request, everything (`POST /v1/stop-all`, which `switchctl demo` uses
//! to leave nothing running).

use std::sync::Arc;

use super::event::{Phase, Reporter};
use super::routing::route_table;
use super::Controller;
use crate::api::{OperationInfo, StopAllAnswer};
use crate::config::Config;
use crate::release::Release;

impl Controller {
    /// Stop every upstream of `release` (best effort, reported).
    pub(super) async fn stop_release(&self, release: &Release, config: &Config, reporter: &Reporter) {
        let stops = release.services.iter().map(|(service, rec)| async move {
            let timeout = config
                .service(service)
                .map_or(config.deploy.stop_timeout, |s| s.stop_timeout(config));
            if let Err(e) = self.driver.stop(&rec.handle, timeout).await {
                reporter.warn(Phase::Stop, Some(service), format!("could not stop cleanly: {e}"));
            }
            self.upstreams.remove(rec.addr);
        });
        futures_util::future::join_all(stops).await;
    }

    /// Stop every upstream of both colors and forget them: the proxy
    /// answers 503 until the next deploy. For `switchctl demo`, which must
    /// leave nothing running; refused while another operation runs.
    pub async fn stop_all(self: &Arc<Self>) -> Result<StopAllAnswer, OperationInfo> {
        self.recovered().await;
        let op = self.try_begin("stop", None)?;
        op.phase(Phase::Stop);
        let config = self.config();
        let reporter = Reporter::silent();
        let mut state = self.state.lock().await;
        self.proxy.swap(route_table(&config, None, &self.upstreams));
        let releases = state.clear();
        if let Err(e) = self.save(&state).await {
            // The upstreams are stopped whatever the file says; recovery at
            // the next start reports them missing.
            tracing::warn!(error = %e, "stopping every upstream but could not save the state");
        }
        // Not under the state lock: `status` answers while they stop.
        drop(state);
        let mut stopped = Vec::new();
        for (color, release) in releases {
            self.stop_release(&release, &config, &reporter).await;
            stopped.extend(
                release
                    .services
                    .keys()
                    .map(|s| format!("{s} ({color}, {})", release.tag)),
            );
        }
        Ok(StopAllAnswer { stopped })
    }
}
