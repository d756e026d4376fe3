//! Recovery at daemon start. Before the proxy serves: [`startup_state`]
//! reads the state (or its previous copy, or rebuilds it from what the
//! drivers run) and completes a flip a kill interrupted. Then
//! [`Controller::recover`] finishes what an interrupted deploy left (history
//! entry, stop its color), removes orphans, and notes upstreams that are
//! gone (shown by `status`).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::bail;

use super::event::{Outcome, Phase, Reporter};
use super::health;
use super::history::{History, Record};
use super::state::{State, StateError, StateStore};
use super::Controller;
use crate::api::{ColorTag, HistoryEntry};
use crate::config::Config;
use crate::driver::{Driver, RunState, Survivor};
use crate::release::{Color, Release};

/// The history reason of an operation a daemon restart cut short.
pub const INTERRUPTED: &str = "interrupted by a daemon restart";

/// The state to serve at start, and what had to be done to get it (said
/// loudly: logged and shown by `status`). Refuses only when nothing can be
/// trusted, saying what to do.
pub async fn startup_state(config: &Config, driver: &Driver) -> anyhow::Result<(State, Vec<String>)> {
    let store = StateStore::new(&config.state_dir);
    let history = History::new(&config.state_dir);
    let never_written = !store.path().exists() && !store.backup_path().exists();
    let mut problems = Vec::new();
    let mut state = match store.load_recovering() {
        Ok(loaded) if !(never_written && loaded.state == State::default()) => {
            problems.extend(loaded.problem);
            loaded.state
        }
        // No state file: a first start, or one moved away by hand. Adopt
        // what runs rather than treat it as orphans.
        Ok(_) => match driver.survivors().await {
            Ok(found) if !found.is_empty() => {
                let (state, how) = rebuild(found, &history.read().unwrap_or_default());
                problems.push(format!(
                    "no state file in {}; adopted the upstreams of this instance that run: {how}",
                    config.state_dir.display()
                ));
                state
            }
            _ => State::default(),
        },
        Err(StateError::Corrupt { path, backup, why }) => match driver.survivors().await {
            Ok(found) => {
                let (state, how) = rebuild(found, &history.read().unwrap_or_default());
                problems.push(format!(
                    "{} and its copy {} are corrupt ({why}); rebuilt the state from what the {} driver runs: {how}",
                    path.display(),
                    backup.display(),
                    match driver {
                        Driver::Process(_) => "process",
                        Driver::Docker(_) => "docker",
                    }
                ));
                state
            }
            Err(e) => bail!(
                "{} and its copy {} are corrupt ({why}), and the driver cannot say what runs ({e}). \
                 Nothing can be trusted, so the daemon does not start. Make the driver reachable and start \
                 again (the state is then rebuilt from what runs), or, to start with no active release, \
                 move both files away (mv {} {} /root/) and deploy again",
                path.display(),
                backup.display(),
                path.display(),
                backup.display()
            ),
        },
        Err(e) => return Err(e.into()),
    };
    problems.extend(follow_ports(&mut state, config, driver).await);
    if let Some(problem) = complete_flip(&mut state, config).await {
        problems.push(problem);
    }
    if !problems.is_empty() {
        if let Err(e) = store.save(&state) {
            problems.push(format!("the recovered state could not be saved: {e}"));
        }
    }
    Ok((state, problems))
}

/// Adoption reads Docker again: a container that Docker restarted while no
/// daemon watched may publish its port on another host port. Each
/// upstream's address is taken from the runtime, so the route table built
/// from the state follows it. Returns what moved.
async fn follow_ports(state: &mut State, config: &Config, driver: &Driver) -> Vec<String> {
    let mut moved = Vec::new();
    for (color, release) in state.colors.iter_mut() {
        for (service, rec) in release.services.iter_mut() {
            let Some(svc) = config.service(service) else { continue };
            let Some(now) = driver.current_addr(&rec.handle, svc).await else {
                continue;
            };
            if now != rec.addr {
                moved.push(format!(
                    "{service} ({color}, {}) came back on {now} (was {}); the route follows it",
                    release.tag, rec.addr
                ));
                rec.addr = now;
            }
        }
    }
    moved
}

/// A flip whose swap may have happened but whose result was not saved:
/// complete it forward if the new color answers its health checks (it was
/// healthy a moment before), else stay on the old one. Either way, say so.
async fn complete_flip(state: &mut State, config: &Config) -> Option<String> {
    let to = state.flipping_to?;
    let Some(release) = state.colors.get(&to).cloned() else {
        state.flipping_to = None;
        return Some(format!("an interrupted flip to {to} had nothing to flip to; ignored"));
    };
    let mut unhealthy = None;
    for service in &config.services {
        let Some(up) = release.services.get(&service.name) else {
            unhealthy = Some(format!("{} has no upstream", service.name));
            break;
        };
        if let Err(why) = health::probe(up.addr, &service.health).await {
            unhealthy = Some(format!("{}: {why}", service.name));
            break;
        }
    }
    Some(match unhealthy {
        None => {
            state.activate(to);
            format!(
                "a flip to {to} ({}) was interrupted by a daemon restart; it is healthy, so the flip was completed",
                release.tag
            )
        }
        Some(why) => {
            state.flipping_to = None;
            let serving = state
                .active_release()
                .map_or("nothing".to_string(), |(c, r)| format!("{c} ({})", r.tag));
            format!(
                "a flip to {to} ({}) was interrupted and {to} is not healthy ({why}); {serving} keeps serving",
                release.tag
            )
        }
    })
}

/// A state from the upstreams the runtime runs for this instance. Each
/// color holds the newest release found in it; the active color is the
/// one the last successful operation in `history` moved traffic to, else
/// the newest one. Returns the state and a description of it.
fn rebuild(found: Vec<Survivor>, history: &[HistoryEntry]) -> (State, String) {
    let mut colors: BTreeMap<Color, Release> = BTreeMap::new();
    let mut newest = None;
    for s in found {
        let release = colors.entry(s.color).or_insert_with(|| Release {
            tag: s.tag.clone(),
            services: BTreeMap::new(),
        });
        if release.tag != s.tag {
            // Found in start order: a later tag in the same color wins.
            *release = Release {
                tag: s.tag.clone(),
                services: BTreeMap::new(),
            };
        }
        release.services.insert(s.service, s.record);
        newest = Some(s.color);
    }
    let from_history = history.iter().rev().find_map(|e| {
        let ok = matches!(e.outcome, Outcome::Deployed | Outcome::Flipped);
        (ok && colors.get(&e.to).is_some_and(|r| r.tag == e.tag)).then_some(e.to)
    });
    let active = from_history.or(newest);
    let state = State {
        active,
        colors,
        ..State::default()
    };
    let how = match state.active_release() {
        None => "nothing runs; no release is active".to_string(),
        Some((c, r)) => {
            let standby = state
                .standby_release()
                .map_or(String::new(), |(c, r)| format!(", {c} ({}) as standby", r.tag));
            let why = if from_history.is_some() {
                "as history says"
            } else {
                "the newest found; history does not say"
            };
            format!("{c} ({}) active ({why}){standby}", r.tag)
        }
    };
    (state, how)
}

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
        // The state lock is held only to change the state, never across a
        // stop (`status` must not wait for `stop_timeout`); the operation
        // lock keeps everyone else out meanwhile.
        let mut state = self.state.lock().await;
        let mut to_stop = Vec::new();
        if state.pending.is_some() {
            let from = state.active_release().map(|(c, r)| ColorTag {
                color: c,
                tag: r.tag.clone(),
            });
            if let Some((pending, release)) = state.abandon_pending() {
                let message = format!("deploy of {} to {pending} {INTERRUPTED}", release.tag);
                Record::new("deploy", &release.tag, from, pending)
                    .finish(self, Outcome::Failed, Some(INTERRUPTED.to_string()), message, &reporter)
                    .await;
                reporter.warn(
                    Phase::Recover,
                    None,
                    format!(
                        "an interrupted deploy of {} left {pending} half-started; stopping it",
                        release.tag
                    ),
                );
                to_stop.push(release);
            }
            if let Err(e) = self.save(&state).await {
                reporter.error(Phase::Recover, None, e.to_string());
            }
        }
        let state = state.clone();
        for release in &to_stop {
            self.stop_release(release, &config, &reporter).await;
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
        for (color, release) in &state.colors {
            for (service, rec) in &release.services {
                let problem = match self.driver.state(&rec.handle).await {
                    RunState::Running { .. } => continue,
                    RunState::Exited { reason } | RunState::Unknown { reason } => {
                        format!("{service} ({color}, {}): {reason}", release.tag)
                    }
                    RunState::Missing => format!(
                        "{service} ({color}, {}): upstream is gone; deploy again to replace it",
                        release.tag
                    ),
                };
                self.upstream_problem(*color, service, &rec.handle, problem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{Handle, UpstreamRecord};

    fn survivor(color: Color, tag: &str, pid: i32) -> Survivor {
        Survivor {
            service: "web".into(),
            color,
            tag: tag.into(),
            record: UpstreamRecord {
                addr: ([127, 0, 0, 1], 4000 + pid as u16).into(),
                handle: Handle::Process {
                    pid,
                    start_time: pid as u64,
                },
            },
        }
    }

    fn deployed(tag: &str, to: Color) -> HistoryEntry {
        HistoryEntry::sample("deploy", tag, to, Outcome::Deployed)
    }

    #[test]
    fn a_lost_state_is_rebuilt_with_the_active_color_history_names() {
        let found = vec![survivor(Color::Blue, "v1", 1), survivor(Color::Green, "v2", 2)];
        let history = vec![deployed("v1", Color::Blue), deployed("v2", Color::Green)];
        let (state, how) = rebuild(found.clone(), &history);
        assert_eq!(state.active, Some(Color::Green), "{how}");
        assert_eq!(state.standby_release().unwrap().1.tag, "v1");
        // A flip back after v2: history says blue.
        let mut back = history.clone();
        back.push(HistoryEntry {
            kind: "flip_back".into(),
            outcome: Outcome::Flipped,
            ..deployed("v1", Color::Blue)
        });
        assert_eq!(rebuild(found.clone(), &back).0.active, Some(Color::Blue));
        // No history: the newest started.
        let (state, how) = rebuild(found, &[]);
        assert_eq!(state.active, Some(Color::Green));
        assert!(how.contains("history does not say"), "{how}");
        assert_eq!(rebuild(Vec::new(), &[]).0, State::default());
    }
}
