//! The history of operations: one JSON object per line in
//! `<state_dir>/history.jsonl`, appended and fsynced after each deploy, flip
//! or rollback. Image cleanup reads it to know which releases succeeded.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use super::event::{Event, Outcome, Phase, Reporter};
use crate::api::{ColorTag, HistoryEntry};
use crate::release::Color;

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
        }
    }

    /// Append the entry to `history` and send the final event.
    pub fn finish(
        self,
        history: &History,
        outcome: Outcome,
        reason: Option<String>,
        message: String,
        reporter: &Reporter,
    ) -> Outcome {
        let entry = HistoryEntry {
            started: humantime::format_rfc3339_millis(self.started_at).to_string(),
            kind: self.kind.to_string(),
            tag: self.tag,
            from: self.from,
            to: self.to,
            outcome,
            reason,
            duration_ms: ms(self.started.elapsed()),
            ready_ms: self.ready_ms,
            flip_us: self.flip_us,
            drain_ms: self.drain_ms,
            build_ms: self.build_ms,
        };
        if let Err(e) = history.append(&entry) {
            reporter.warn(Phase::History, None, format!("could not record history: {e}"));
        }
        reporter.send(Event::done(outcome, message));
        outcome
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
}

impl History {
    /// The history at `<state_dir>/history.jsonl`.
    pub fn new(state_dir: &Path) -> Self {
        History {
            path: state_dir.join("history.jsonl"),
        }
    }

    /// Append one entry durably.
    pub fn append(&self, entry: &HistoryEntry) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
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

    /// Every entry, oldest first. Lines that do not decode (a torn last line
    /// after a crash, a stray byte that is not UTF-8) are skipped with a
    /// warning: one bad line never hides the rest.
    pub fn read(&self) -> std::io::Result<Vec<HistoryEntry>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::warn!(
                    file = %self.path.display(),
                    line = n + 1,
                    error = %e,
                    "skipping an undecodable history line"
                ),
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
        HistoryEntry {
            started: "2026-01-01T00:00:00Z".into(),
            kind: "deploy".into(),
            tag: tag.into(),
            from: None,
            to: Color::Blue,
            outcome,
            reason: None,
            duration_ms: 1,
            ready_ms: None,
            flip_us: None,
            drain_ms: None,
            build_ms: None,
        }
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
}
