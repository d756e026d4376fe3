//! What the daemon must remember across restarts: which color is active,
//! which release each color runs (tag, upstream address, process or
//! container), and which color a deploy was starting when it was
//! interrupted, or the color a flip was moving traffic to (read from the
//! flip intent, `intent.rs`). Written atomically (temp file, fsync, rename,
//! fsync dir), private (0600), and the previous good copy is kept as
//! `state.json.bak`: a truncated or garbage `state.json` is recovered from
//! it at start, loudly.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::intent::FlipIntent;
use crate::release::{Color, Handle, Release, UpstreamRecord};

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The color traffic goes to.
    pub active: Option<Color>,
    /// A deploy was starting this color and had not flipped yet.
    #[serde(default)]
    pub pending: Option<Color>,
    /// What runs in each color.
    #[serde(default)]
    pub colors: BTreeMap<Color, Release>,
    /// A flip to this color was about to swap the routes: a daemon killed
    /// before recording the result completes the flip at start if the
    /// color is healthy. Set from the flip intent (`intent.rs`) at load;
    /// read from the file too, where versions before it persisted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipping_to: Option<Color>,
}

impl State {
    /// The active color and its release.
    pub fn active_release(&self) -> Option<(Color, &Release)> {
        let c = self.active?;
        self.colors.get(&c).map(|r| (c, r))
    }

    /// A deploy of `tag` begins in `color`: it is pending (no standby, not
    /// routed) with no upstream yet. Whatever ran there must have been
    /// stopped first.
    pub fn begin(&mut self, color: Color, tag: &str) {
        self.pending = Some(color);
        self.colors.insert(
            color,
            Release {
                tag: tag.to_string(),
                services: BTreeMap::new(),
            },
        );
    }

    /// An upstream of the pending deploy in `color` has started.
    pub fn add_upstream(&mut self, color: Color, service: &str, upstream: UpstreamRecord) {
        if let Some(release) = self.colors.get_mut(&color) {
            release.services.insert(service.to_string(), upstream);
        }
    }

    /// Traffic now goes to `color`; returns the color and release that
    /// served before (now the standby, unless it is stopped).
    pub fn activate(&mut self, color: Color) -> Option<(Color, Release)> {
        let old = self.active_release().map(|(c, r)| (c, r.clone()));
        self.active = Some(color);
        self.flipping_to = None;
        if self.pending == Some(color) {
            self.pending = None;
        }
        old
    }

    /// The release starting in `color` is ready but not routed: no longer
    /// pending, it is the warm standby.
    pub fn settle(&mut self, color: Color) {
        if self.pending == Some(color) {
            self.pending = None;
        }
    }

    /// The pending deploy in `color` failed: forget its release (its
    /// upstreams must have been stopped). A color that is not pending is
    /// left alone.
    pub fn abandon(&mut self, color: Color) -> Option<Release> {
        if self.pending != Some(color) {
            return None;
        }
        self.pending = None;
        self.colors.remove(&color)
    }

    /// The pending deploy an interrupted daemon left, forgotten.
    pub fn abandon_pending(&mut self) -> Option<(Color, Release)> {
        let color = self.pending?;
        self.abandon(color).map(|r| (color, r))
    }

    /// `color`, no longer routed, was stopped: forget it (unless traffic
    /// came back to it meanwhile).
    pub fn retire(&mut self, color: Color) {
        if self.active != Some(color) {
            self.colors.remove(&color);
        }
    }

    /// Every color was stopped: nothing is active, nothing runs.
    pub fn clear(&mut self) -> BTreeMap<Color, Release> {
        self.active = None;
        self.pending = None;
        self.flipping_to = None;
        std::mem::take(&mut self.colors)
    }

    /// The handle of every upstream of every color.
    pub fn handles(&self) -> Vec<Handle> {
        self.colors
            .values()
            .flat_map(|r| r.services.values())
            .map(|u| u.handle.clone())
            .collect()
    }

    /// The warm standby: the inactive color, if it holds a finished release.
    pub fn standby_release(&self) -> Option<(Color, &Release)> {
        let c = self.active.map_or(Color::Green, Color::other);
        if self.pending == Some(c) {
            return None;
        }
        self.colors.get(&c).map(|r| (c, r))
    }
}

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file or its directory.
    #[error("cannot {action} state file {path}: {source}")]
    Io {
        /// read / write
        action: &'static str,
        /// file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
    /// Neither the file nor its previous copy is valid.
    #[error("state file {path} is corrupt ({why}) and so is its previous copy {backup}")]
    Corrupt {
        /// file
        path: PathBuf,
        /// its previous good copy
        backup: PathBuf,
        /// what is wrong with each
        why: String,
    },
}

/// A state read at start, and what had to be done to get it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// the state
    pub state: State,
    /// Said loudly (log and `status`) when the state is not the file's.
    pub problem: Option<String>,
}

/// The state file in `state_dir`.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// The store at `<state_dir>/state.json`.
    pub fn new(state_dir: &Path) -> Self {
        StateStore {
            path: state_dir.join("state.json"),
        }
    }

    /// The previous good copy, `state.json.bak`.
    pub fn backup_path(&self) -> PathBuf {
        self.path.with_extension("json.bak")
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the state; a missing file is the empty state.
    pub fn load(&self) -> Result<State, StateError> {
        Ok(self.load_recovering()?.state)
    }

    /// Read the state. A corrupt `state.json` is kept aside (as
    /// `state.json.corrupt`) and the previous good copy is used, with a
    /// problem that says so; if both are corrupt, [`StateError::Corrupt`]
    /// (the daemon then asks the drivers what runs). A flip intent that the
    /// state has not completed marks it as flipping (see `intent`).
    pub fn load_recovering(&self) -> Result<Loaded, StateError> {
        let mut loaded = self.load_file()?;
        if let Some(intent) = FlipIntent::read(self.dir()) {
            intent.apply_to(&mut loaded.state);
        }
        Ok(loaded)
    }

    /// The directory of the state file (`state_dir`).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn load_file(&self) -> Result<Loaded, StateError> {
        let backup = self.backup_path();
        let why = match read_state(&self.path)? {
            Read::Good(state) => return Ok(Loaded { state, problem: None }),
            // Never written (or moved away by hand): the copy, if any.
            Read::Missing => match read_state(&backup)? {
                Read::Good(state) => {
                    return Ok(Loaded {
                        state,
                        problem: Some(format!(
                            "{} was missing; restored the previous copy {}",
                            self.path.display(),
                            backup.display()
                        )),
                    })
                }
                _ => return Ok(Loaded::default()),
            },
            Read::Corrupt(why) => why,
        };
        let aside = self.path.with_extension("json.corrupt");
        let kept = match std::fs::rename(&self.path, &aside) {
            Ok(()) => format!("kept as {}", aside.display()),
            Err(e) => format!("could not be moved aside: {e}"),
        };
        match read_state(&backup)? {
            Read::Good(state) => Ok(Loaded {
                state,
                problem: Some(format!(
                    "{} was corrupt ({why}; {kept}); recovered from the previous copy {}: check that the active \
                     color is the one you expect (`switchctl status`)",
                    self.path.display(),
                    backup.display()
                )),
            }),
            Read::Missing => Err(StateError::Corrupt {
                path: self.path.clone(),
                backup,
                why: format!("{why}; {kept}; no previous copy"),
            }),
            Read::Corrupt(bad) => Err(StateError::Corrupt {
                path: self.path.clone(),
                backup,
                why: format!("{why}; {kept}; the copy: {bad}"),
            }),
        }
    }

    /// Replace the state on disk atomically, keeping the copy it replaces
    /// (if valid) as `state.json.bak`: a second name for the old file (a
    /// hard link), whose data was synced when it was written, so keeping it
    /// costs no write; the directory sync of the new file persists both
    /// names. Blocking: call it off the runtime's threads (the controller
    /// uses `spawn_blocking`).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        if let Ok(current) = std::fs::read(&self.path) {
            if serde_json::from_slice::<State>(&current).is_ok() {
                let backup = self.backup_path();
                match std::fs::remove_file(&backup) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                    _ => {}
                }
                std::fs::hard_link(&self.path, &backup).map_err(io)?;
            }
        }
        write_atomic(&self.path, &json).map_err(io)
    }
}

enum Read {
    Good(State),
    Missing,
    Corrupt(String),
}

fn read_state(path: &Path) -> Result<Read, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
            Ok(state) => Read::Good(state),
            Err(e) => Read::Corrupt(format!("{}: {e}", path.display())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Missing),
        Err(source) => Err(StateError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `bytes` to `path` so a crash leaves either the old or the new
/// file; the file is private to the daemon's user (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(tag: &str, port: u16) -> Release {
        let mut services = BTreeMap::new();
        services.insert(
            "web".to_string(),
            UpstreamRecord {
                addr: ([127, 0, 0, 1], port).into(),
                handle: Handle::Process { pid: 42, start_time: 7 },
            },
        );
        Release {
            tag: tag.into(),
            services,
        }
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State {
            active: Some(Color::Blue),
            ..State::default()
        };
        s.colors.insert(Color::Blue, release("v1", 4000));
        s.colors.insert(Color::Green, release("v0", 4001));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        assert_eq!(s.active_release().unwrap().1.tag, "v1");
        assert_eq!(s.standby_release().unwrap().0, Color::Green);
    }

    #[test]
    fn a_pending_color_is_no_standby() {
        let mut s = State {
            active: Some(Color::Blue),
            pending: Some(Color::Green),
            ..State::default()
        };
        s.colors.insert(Color::Green, release("v2", 1));
        assert!(s.standby_release().is_none());
    }

    #[test]
    fn a_deploy_begins_pending_and_activates_or_is_abandoned() {
        let mut s = State::default();
        s.begin(Color::Blue, "v1");
        assert_eq!(s.pending, Some(Color::Blue));
        assert!(s.active_release().is_none() && s.standby_release().is_none());
        s.add_upstream(Color::Blue, "web", release("v1", 4000).services["web"].clone());
        assert_eq!(s.activate(Color::Blue), None);
        assert_eq!((s.active, s.pending), (Some(Color::Blue), None));

        s.begin(Color::Green, "v2");
        assert_eq!(s.abandon(Color::Blue), None, "the active color is not pending");
        assert_eq!(s.abandon(Color::Green).unwrap().tag, "v2");
        assert_eq!(s.colors.len(), 1);

        s.begin(Color::Green, "v3");
        let old = s.activate(Color::Green).unwrap();
        assert_eq!((old.0, old.1.tag.as_str()), (Color::Blue, "v1"));
        assert_eq!(s.standby_release().unwrap().1.tag, "v1");
        s.retire(Color::Blue);
        assert!(s.standby_release().is_none());
        s.retire(Color::Green);
        assert_eq!(
            s.active_release().unwrap().1.tag,
            "v3",
            "the active color is never retired"
        );
        assert_eq!(s.clear().len(), 1);
        assert_eq!(s, State::default());
    }

    #[test]
    fn an_interrupted_deploy_is_abandoned_at_recovery() {
        let mut s = State::default();
        assert!(s.abandon_pending().is_none());
        s.begin(Color::Blue, "v1");
        let (color, release) = s.abandon_pending().unwrap();
        assert_eq!((color, release.tag.as_str()), (Color::Blue, "v1"));
        assert_eq!(s, State::default());
    }

    #[test]
    fn a_corrupt_file_with_no_good_copy_is_an_error_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        let err = StateStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("no previous copy"), "{err}");
        assert!(dir.path().join("state.json.corrupt").exists());
    }

    #[test]
    fn a_truncated_or_garbage_file_is_recovered_from_the_previous_copy() {
        for garbage in [&b""[..], b"{\"active\": \"bl", b"\xff\xfe\x00garbage"] {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::new(dir.path());
            let mut s = State::default();
            s.begin(Color::Blue, "v1");
            s.add_upstream(Color::Blue, "web", release("v1", 4000).services["web"].clone());
            s.activate(Color::Blue);
            store.save(&s).unwrap();
            let mut later = s.clone();
            later.begin(Color::Green, "v2");
            store.save(&later).unwrap();
            std::fs::write(store.path(), garbage).unwrap();
            let loaded = store.load_recovering().unwrap();
            assert_eq!(loaded.state, s, "the copy before the last save");
            let problem = loaded.problem.unwrap();
            assert!(
                problem.contains("corrupt") && problem.contains("state.json.bak"),
                "{problem}"
            );
        }
    }

    #[test]
    fn state_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        store.save(&State::default()).unwrap();
        store.save(&State::default()).unwrap();
        for f in ["state.json", "state.json.bak"] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
