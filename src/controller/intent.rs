//! The flip intent: `<state_dir>/flip.intent`, one small record written just
//! before a route swap, so that a daemon killed after the swap but before
//! the state saved the result completes the flip at start instead of
//! silently sending traffic back to the older color.
//!
//! The record is written without an fsync, on purpose; the swap is the
//! step an operator waits for, and an fsync before it would cost a journal
//! commit of the file system for no safety gained:
//!
//! - **A daemon that dies** (killed, OOM-killed, a panic) cannot lose a
//!   `write` that returned: the data is in the kernel's page cache, which
//!   belongs to the file, not to the process, and the next daemon reads it.
//!   The swap comes after the write returns, so a swap without an intent on
//!   disk is impossible. This is the crash `recover` completes forward.
//! - **A kernel crash or power loss** may lose an unsynced write, but it
//!   loses the swap with it: the route table lived in memory, and no
//!   connection of either color outlives the machine. The state saved after
//!   the swap is fsynced before the operation reports success, so an
//!   operator never sees a flip succeed that the disk does not hold. A torn
//!   or zeroed intent does not parse and is ignored, leaving the last saved
//!   state, which is also what an fsynced intent would give when the power
//!   is lost just before its write.
//!
//! An intent is stale (ignored) unless the state it is read with still
//! holds its color with its tag, not yet active: each flip overwrites it,
//! and the state saved after a completed flip makes it stale.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::State;
use crate::release::Color;

/// A flip about to swap the routes to `color`, which runs `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipIntent {
    /// the color traffic is moving to
    pub color: Color,
    /// the release it runs, to tell this flip from an older one to the same color
    pub tag: String,
}

/// The intent file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("flip.intent")
}

impl FlipIntent {
    /// Record the intent (private, 0600; no fsync, see the module doc).
    /// Blocking, but one small write to the page cache.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path(state_dir))?
            .write_all(&line)
    }

    /// The recorded intent, if the file holds one; a missing, torn or
    /// garbage file is none.
    pub fn read(state_dir: &Path) -> Option<FlipIntent> {
        serde_json::from_slice(&std::fs::read(path(state_dir)).ok()?).ok()
    }

    /// Mark `state` as flipping to this intent's color if the intent is
    /// not stale: the color still runs this tag and is not active yet.
    pub fn apply_to(&self, state: &mut State) -> bool {
        let current = state.colors.get(&self.color).is_some_and(|r| r.tag == self.tag);
        if current && state.active != Some(self.color) {
            state.flipping_to = Some(self.color);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Release;

    fn state(active: Option<Color>, tags: &[(Color, &str)]) -> State {
        let mut state = State {
            active,
            ..State::default()
        };
        for (color, tag) in tags {
            state.colors.insert(
                *color,
                Release {
                    tag: tag.to_string(),
                    services: Default::default(),
                },
            );
        }
        state
    }

    #[test]
    fn an_intent_round_trips_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let intent = FlipIntent {
            color: Color::Green,
            tag: "v2".into(),
        };
        intent.write(dir.path()).unwrap();
        assert_eq!(FlipIntent::read(dir.path()), Some(intent));
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_torn_or_zeroed_intent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FlipIntent::read(dir.path()), None);
        std::fs::write(path(dir.path()), b"{\"color\":\"green\",\"ta").unwrap();
        assert_eq!(FlipIntent::read(dir.path()), None);
        std::fs::write(path(dir.path()), [0u8; 32]).unwrap();
        assert_eq!(FlipIntent::read(dir.path()), None);
    }

    #[test]
    fn only_an_intent_the_state_has_not_completed_applies() {
        let intent = FlipIntent {
            color: Color::Green,
            tag: "v2".into(),
        };
        // Killed after the swap: green runs v2, blue is still recorded active.
        let mut s = state(Some(Color::Blue), &[(Color::Blue, "v1"), (Color::Green, "v2")]);
        assert!(intent.apply_to(&mut s));
        assert_eq!(s.flipping_to, Some(Color::Green));
        // The first deploy, nothing active yet.
        let mut s = state(None, &[(Color::Green, "v2")]);
        assert!(intent.apply_to(&mut s));
        // Completed and saved: green is active.
        let mut s = state(Some(Color::Green), &[(Color::Blue, "v1"), (Color::Green, "v2")]);
        assert!(!intent.apply_to(&mut s));
        assert_eq!(s.flipping_to, None);
        // An older flip to green: green has been redeployed since.
        let mut s = state(Some(Color::Blue), &[(Color::Blue, "v1"), (Color::Green, "v3")]);
        assert!(!intent.apply_to(&mut s));
        // Everything stopped since.
        let mut s = state(None, &[]);
        assert!(!intent.apply_to(&mut s));
    }
}
