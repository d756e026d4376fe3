//! The history of operations: one JSON object per line in
//! `<state_dir>/history.jsonl`, appended and fsynced after each deploy, flip
//! or rollback. Image cleanup reads it to know which releases succeeded.
//!
//! Bounded: once the file passes [`ROTATE_BYTES`] or [`ROTATE_ENTRIES`]
//! lines, it becomes `history.jsonl.1` (replacing the older one) and a new
//! file starts; reads cover both, so the newest entries are always there.
//!
//! [`Record::finish`] ends every operation the same way: the outcome is
//! counted (metrics), notified in the background, written here with the
//! notifications' warnings, and sent as the final event.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use super::event::{Event, Outcome, Phase, Reporter};
use super::Controller;
use crate::api::{ColorTag, HistoryEntry, WatchInfo};
use crate::notify;
use crate::release::Color;

/// A history file this large is rotated before the next entry.
pub const ROTATE_BYTES: u64 = 1024 * 1024;
/// A history file with this many entries is rotated before the next one.
pub const ROTATE_ENTRIES: usize = 1000;

/// Timings and facts one operation gathers for its history entry.
pub(super) struct Record {
    pub kind: &'static str,
    pub tag: String,
    pub from: Option<ColorTag>,
    pub to: Color,
    started_at: std::time::SystemTime,
    pub started: Instant,
    pub ready_ms: Option<u64>,
    pub flip_us: Option<u64>,
    pub drain_ms: Option<u64>,
    pub build_ms: Option<u64>,
    pub watch: Option<WatchInfo>,
}

impl Record {
    /// An operation of `kind` on `tag`, from `from` to `to`, starting now.
    pub fn new(kind: &'static str, tag: &str, from: Option<ColorTag>, to: Color) -> Self {
        Record {
            kind,
            tag: tag.to_string(),
            from,
            to,
            started_at: std::time::SystemTime::now(),
            started: Instant::now(),
            ready_ms: None,
            flip_us: None,
            drain_ms: None,
            build_ms: None,
            watch: None,
        }
    }

    /// Count the outcome, notify it, append the entry to history and send
    /// the final event. Notifications go out in the background; their
    /// warnings are waited for at most one attempt's timeout (they are then
    /// shown and recorded), never longer: a hanging endpoint does not hold
    /// the operation, and no notification changes its outcome.
    pub async fn finish(
        self,
        controller: &Controller,
        outcome: Outcome,
        reason: Option<String>,
        message: String,
        reporter: &Reporter,
    ) -> Outcome {
        let duration = self.started.elapsed();
        controller.counters.finished(self.kind, outcome, duration);
        let mut warnings = Vec::new();
        if let Some(event) = notify_event(outcome) {
            let config = controller.config();
            let limit = config
                .notify
                .iter()
                .filter(|n| n.wants(event))
                .map(|n| n.timeout)
                .max()
                .unwrap_or(Duration::ZERO);
            let n = notify::Notification::new(event, &self.tag, self.to.as_str())
                .with_previous_tag(self.from.as_ref().map(|f| f.tag.clone()))
                .with_duration(duration)
                .with_message(&message);
            let pending = controller.notifier().notify(n);
            // Work the daemon started itself (recovery) has nobody to show
            // warnings to and must not wait: the sends go on, and log.
            if !pending.is_empty() && !reporter.is_silent() {
                let report = pending.wait_within(limit).await;
                for w in report.warnings {
                    reporter.warn(Phase::Notify, None, w.clone());
                    warnings.push(w);
                }
            }
        }
        let entry = HistoryEntry {
            started: humantime::format_rfc3339_millis(self.started_at).to_string(),
            kind: self.kind.to_string(),
            tag: self.tag,
            from: self.from,
            to: self.to,
            outcome,
            reason,
            duration_ms: ms(duration),
            ready_ms: self.ready_ms,
            flip_us: self.flip_us,
            drain_ms: self.drain_ms,
            build_ms: self.build_ms,
            watch: self.watch,
            warnings,
        };
        if let Err(e) = controller.history.append_async(entry).await {
            reporter.warn(Phase::History, None, format!("could not record history: {e}"));
        }
        reporter.send(Event::done(outcome, message));
        outcome
    }
}

/// The notification an outcome sends, if any (a refusal sends none).
fn notify_event(outcome: Outcome) -> Option<notify::Event> {
    match outcome {
        Outcome::Deployed => Some(notify::Event::Deployed),
        Outcome::RolledBack => Some(notify::Event::RolledBack),
        Outcome::Failed => Some(notify::Event::Failed),
        Outcome::Flipped => Some(notify::Event::Flipped),
        Outcome::AutoFlippedBack => Some(notify::Event::AutoFlippedBack),
        Outcome::Refused | Outcome::Upgraded => None,
    }
}

/// Whole milliseconds of `d`.
pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The history file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
    /// Rotation limits: [`ROTATE_ENTRIES`] and [`ROTATE_BYTES`] (smaller in tests).
    max_entries: usize,
    max_bytes: u64,
}

impl History {
    /// The history at `<state_dir>/history.jsonl`.
    pub fn new(state_dir: &Path) -> Self {
        History {
            path: state_dir.join("history.jsonl"),
            max_entries: ROTATE_ENTRIES,
            max_bytes: ROTATE_BYTES,
        }
    }

    /// The rotated file, `history.jsonl.1`.
    fn rotated(&self) -> PathBuf {
        self.path.with_extension("jsonl.1")
    }

    /// Append one entry durably, rotating a full file first.
    pub fn append(&self, entry: &HistoryEntry) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.rotate_if_full()?;
        let mut line = serde_json::to_vec(entry).expect("history entry serializes");
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        // A file from before switchctl made it private becomes so.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// [`History::append`] on the blocking pool: its `fsync` never holds
    /// a runtime thread.
    pub async fn append_async(&self, entry: HistoryEntry) -> std::io::Result<()> {
        let history = self.clone();
        tokio::task::spawn_blocking(move || history.append(&entry))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Move a file past [`ROTATE_BYTES`] or [`ROTATE_ENTRIES`] to
    /// `history.jsonl.1` (a rename: atomic, the older rotation replaced).
    fn rotate_if_full(&self) -> std::io::Result<()> {
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let full = len >= self.max_bytes || {
            let text = std::fs::read(&self.path)?;
            text.iter().filter(|&&b| b == b'\n').count() >= self.max_entries
        };
        if full {
            std::fs::rename(&self.path, self.rotated())?;
        }
        Ok(())
    }

    /// Every entry, oldest first (the rotated file, then the current one).
    /// Lines that do not decode (a torn last line after a crash, a stray
    /// byte that is not UTF-8) are skipped with a warning: one bad line
    /// never hides the rest.
    pub fn read(&self) -> std::io::Result<Vec<HistoryEntry>> {
        let mut entries = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice(line) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        line = n + 1,
                        error = %e,
                        "skipping an undecodable history line"
                    ),
                }
            }
        }
        Ok(entries)
    }

    /// Tags of successful deploys and rollbacks, newest first, without repeats.
    pub fn successful_tags(&self) -> std::io::Result<Vec<String>> {
        let mut tags: Vec<String> = Vec::new();
        for e in self.read()?.into_iter().rev() {
            if matches!(e.outcome, Outcome::Deployed | Outcome::Flipped) && !tags.contains(&e.tag) {
                tags.push(e.tag);
            }
        }
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, outcome: Outcome) -> HistoryEntry {
        HistoryEntry::sample("deploy", tag, Color::Blue, outcome)
    }

    #[test]
    fn entries_append_and_read_back_skipping_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(dir.path());
        h.append(&entry("v1", Outcome::Deployed)).unwrap();
        h.append(&entry("v2", Outcome::RolledBack)).unwrap();
        h.append(&entry("v3", Outcome::Deployed)).unwrap();
        h.append(&entry("v1", Outcome::Flipped)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("history.jsonl"))
            .unwrap();
        f.write_all(b"{\"torn").unwrap();
        assert_eq!(h.read().unwrap().len(), 4);
        assert_eq!(h.successful_tags().unwrap(), vec!["v1", "v3"]);
    }

    #[test]
    fn a_byte_that_is_not_utf8_skips_only_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new(dir.path());
        h.append(&entry("v1", Outcome::Deployed)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("history.jsonl"))
            .unwrap();
        f.write_all(b"{\"kind\": \"\xff\"}\n\xff\n").unwrap();
        h.append(&entry("v2", Outcome::Deployed)).unwrap();
        let tags: Vec<String> = h.read().unwrap().into_iter().map(|e| e.tag).collect();
        assert_eq!(tags, ["v1", "v2"]);
        assert_eq!(h.successful_tags().unwrap(), vec!["v2", "v1"]);
    }

    #[test]
    fn the_history_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        History::new(dir.path())
            .append(&entry("v1", Outcome::Deployed))
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("history.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_full_file_rotates_and_reads_still_cover_both() {
        let dir = tempfile::tempdir().unwrap();
        let h = History {
            max_entries: 10,
            ..History::new(dir.path())
        };
        for i in 0..15 {
            h.append(&entry(&format!("v{i}"), Outcome::Deployed)).unwrap();
        }
        let rotated = std::fs::read_to_string(dir.path().join("history.jsonl.1")).unwrap();
        assert_eq!(rotated.lines().count(), 10);
        let all = h.read().unwrap();
        assert_eq!(all.len(), 15);
        assert_eq!(all.last().unwrap().tag, "v14");
        for i in 0..10 {
            h.append(&entry(&format!("w{i}"), Outcome::Deployed)).unwrap();
        }
        let all = h.read().unwrap();
        assert_eq!(all.len(), 15, "the older rotation was replaced");
        assert_eq!(all.first().unwrap().tag, "v10");
        assert_eq!(all.last().unwrap().tag, "w9");
    }

    #[test]
    fn a_file_past_the_size_limit_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let h = History {
            max_bytes: 1,
            ..History::new(dir.path())
        };
        h.append(&entry("v1", Outcome::Deployed)).unwrap();
        h.append(&entry("v2", Outcome::Deployed)).unwrap();
        assert!(dir.path().join("history.jsonl.1").exists());
        assert_eq!(h.read().unwrap().len(), 2);
    }
}
