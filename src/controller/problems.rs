//! What `status` lists as problems: the situation now, not a log of every
//! event. A problem about one upstream (it exited, it is gone, its restart
//! failed) is held under its color and service, with the upstream it is
//! about: the next word on it replaces it, and it goes once that upstream
//! runs again or is no longer the one recorded (supervision replaced it, a
//! deploy or `flip back` retired it). A problem about the daemon itself (a
//! state recovered from its copy) is listed once, however often it is said.

use std::collections::BTreeMap;

use super::state::State;
use crate::release::{Color, Handle};

/// The problems `status` shows.
#[derive(Debug, Default)]
pub struct Problems {
    daemon: Vec<String>,
    upstreams: BTreeMap<(Color, String), UpstreamProblem>,
}

/// What is wrong with one upstream.
#[derive(Debug, Clone)]
struct UpstreamProblem {
    handle: Handle,
    message: String,
}

impl Problems {
    /// Something about the daemon; said once even if it happens again.
    pub fn daemon(&mut self, message: String) {
        if !self.daemon.contains(&message) {
            self.daemon.push(message);
        }
    }

    /// What is wrong now with `service` of `color`, run by `handle`;
    /// replaces what was said of it before.
    pub fn upstream(&mut self, color: Color, service: &str, handle: &Handle, message: String) {
        self.upstreams.insert(
            (color, service.to_string()),
            UpstreamProblem {
                handle: handle.clone(),
                message,
            },
        );
    }

    /// `service` of `color` is fine again.
    pub fn resolved(&mut self, color: Color, service: &str) {
        self.upstreams.remove(&(color, service.to_string()));
    }

    /// The problems that still hold, forgetting the others: an upstream's
    /// holds while `state` records that same upstream and `running` says it
    /// does not run.
    pub fn current(&mut self, state: &State, running: impl Fn(Color, &str) -> bool) -> Vec<String> {
        self.upstreams.retain(|(color, service), p| {
            let recorded = state
                .colors
                .get(color)
                .and_then(|r| r.services.get(service))
                .is_some_and(|rec| rec.handle == p.handle);
            recorded && !running(*color, service)
        });
        self.daemon
            .iter()
            .cloned()
            .chain(self.upstreams.values().map(|p| p.message.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{Release, UpstreamRecord};

    fn handle(pid: i32) -> Handle {
        Handle::Process { pid, start_time: 1 }
    }

    fn state_with(pid: i32) -> State {
        let mut state = State::default();
        state.colors.insert(
            Color::Blue,
            Release {
                tag: "v1".into(),
                services: [(
                    "web".to_string(),
                    UpstreamRecord {
                        addr: ([127, 0, 0, 1], 4000).into(),
                        handle: handle(pid),
                    },
                )]
                .into(),
            },
        );
        state
    }

    #[test]
    fn the_same_problem_said_again_is_listed_once() {
        let mut p = Problems::default();
        for _ in 0..3 {
            p.daemon("state.json was recovered from its copy".into());
        }
        for attempt in 1..=5 {
            p.upstream(
                Color::Blue,
                "web",
                &handle(7),
                format!("web (blue): restart {attempt} failed"),
            );
        }
        let down = |_: Color, _: &str| false;
        assert_eq!(
            p.current(&state_with(7), down),
            ["state.json was recovered from its copy", "web (blue): restart 5 failed"]
        );
    }

    #[test]
    fn an_upstream_problem_goes_once_it_runs_or_is_replaced() {
        let mut p = Problems::default();
        p.upstream(Color::Blue, "web", &handle(7), "web (blue): exited".into());
        assert_eq!(
            p.current(&state_with(7), |_, _| true),
            Vec::<String>::new(),
            "runs again"
        );
        p.upstream(Color::Blue, "web", &handle(7), "web (blue): exited".into());
        assert_eq!(
            p.current(&state_with(8), |_, _| false),
            Vec::<String>::new(),
            "another upstream replaced it"
        );
        p.upstream(Color::Blue, "web", &handle(7), "web (blue): exited".into());
        assert_eq!(
            p.current(&State::default(), |_, _| false),
            Vec::<String>::new(),
            "retired"
        );
        p.upstream(Color::Blue, "web", &handle(7), "web (blue): exited".into());
        p.resolved(Color::Blue, "web");
        assert_eq!(
            p.current(&state_with(7), |_, _| false),
            Vec::<String>::new(),
            "resolved"
        );
    }
}
