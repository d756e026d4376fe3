//! `rollback [tag]`: with a tag, a normal health-gated deploy of it; without,
//! a return to the previous successful release (a flip back when that is the
//! warm standby).

use std::sync::Arc;

use super::deploy::Deploy;
use super::event::{Event, Outcome, Phase, Reporter};
use super::{Controller, OperationGuard};
use crate::config::Config;

impl Controller {
    /// Roll back to `tag`, or to the previous successful release.
    pub(super) async fn rollback(
        self: &Arc<Self>,
        op: OperationGuard,
        config: Arc<Config>,
        tag: Option<String>,
        reporter: Reporter,
    ) -> Outcome {
        let target = match tag {
            Some(t) => t,
            None => {
                let (active, standby) = {
                    let state = self.state.lock().await;
                    (
                        state.active_release().map(|(_, r)| r.tag.clone()),
                        state.standby_release().map(|(_, r)| r.tag.clone()),
                    )
                };
                let previous = match self.history.successful_tags() {
                    Ok(tags) => tags.into_iter().find(|t| Some(t) != active.as_ref()),
                    Err(e) => {
                        let msg = format!("cannot read history to find the previous release: {e}");
                        reporter.send(Event::done(Outcome::Failed, msg));
                        return Outcome::Failed;
                    }
                };
                let Some(previous) = previous else {
                    let msg = "no earlier successful release in history; name a tag: `switchctl rollback <tag>`";
                    reporter.send(Event::done(Outcome::Refused, msg));
                    return Outcome::Refused;
                };
                if standby.as_deref() == Some(previous.as_str()) {
                    reporter.info(
                        Phase::Rollback,
                        None,
                        format!("{previous} is the warm standby: flipping back"),
                    );
                    return self.flip_back(op, reporter).await;
                }
                previous
            }
        };
        reporter.info(Phase::Rollback, None, format!("rolling back by deploying {target}"));
        Deploy::new(self.clone(), op, config, target, reporter)
            .await
            .run()
            .await
    }
}
