//! The process driver's upstream logs on disk: opened for appending with a
//! header line per start, read back from their tail only, and kept bounded.
//!
//! An upstream writes to its log through a descriptor it inherited, for as
//! long as it runs: a chatty app left alone for weeks would fill the disk
//! under `state_dir`, and then the state itself could no longer be saved.
//! [`keep_bounded`] looks at every log every [`LOOK_EVERY`]; one past
//! [`MAX_BYTES`] is copied to `<name>.log.1` (replacing the one before) and
//! truncated in place, as logrotate's `copytruncate` does. The upstream's
//! descriptor is in append mode, so its next write lands at the start of the
//! emptied file. What it writes between the copy and the truncation (a few
//! milliseconds at most) is lost: the price of not touching the upstream.
//!
//! Reading ([`latest_run`]) looks only at the last [`TAIL_BYTES`], so showing
//! the lines of a failed start never reads a huge file into memory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A log larger than this is rotated.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// How often the logs' sizes are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// How much of a log's end is read to show its last lines.
const TAIL_BYTES: u64 = 256 * 1024;

/// How the header line each start writes to an upstream's log begins.
pub const RUN_HEADER: &str = "==> switchctl: ";

/// An upstream's log, appended to after a `header` line, readable by its
/// owner and group only (0640). Never truncated at a start: the output of
/// the run before (a crash that supervision restarts) is what an operator
/// reads.
pub fn open(path: &Path, header: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    writeln!(f, "{header}")?;
    Ok(f)
}

/// The last `lines` lines of the latest run in the log at `path` (after its
/// last header line; all of the tail read when the header was rotated away
/// or lies before it). Empty when there is no log.
pub fn latest_run(path: &Path, lines: usize) -> Vec<String> {
    let Ok((bytes, mid_file)) = read_tail(path, TAIL_BYTES) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if mid_file && !all.is_empty() {
        // The read may have begun mid-line.
        all.remove(0);
    }
    let run = all.iter().rposition(|l| l.starts_with(RUN_HEADER)).map_or(0, |i| i + 1);
    let latest = &all[run..];
    latest[latest.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// At most the last `max` bytes of the file at `path`, and whether they
/// start after the file's beginning.
fn read_tail(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut f = std::fs::File::open(path)?;
    let start = f.metadata()?.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok((bytes, start > 0))
}

/// Rotate every `*.log` in `dir` that has grown past `max` bytes; returns
/// the ones rotated.
pub fn rotate_large(dir: &Path, max: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No upstream has started yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rotated),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") && std::fs::metadata(&path)?.len() > max {
            copy_truncate(&path)?;
            rotated.push(path);
        }
    }
    Ok(rotated)
}

/// Copy `path` to `path.1`, then empty `path` in place.
fn copy_truncate(path: &Path) -> std::io::Result<()> {
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// Until `shutdown`, keep the logs in `dir` under [`MAX_BYTES`] each (on a
/// blocking thread: a copy may take a moment). A failure is logged and
/// tried again at the next look.
pub async fn keep_bounded(dir: PathBuf, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(LOOK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let looked = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || rotate_large(&dir, MAX_BYTES)).await
        };
        match looked {
            Ok(Ok(rotated)) => {
                for path in rotated {
                    tracing::info!(
                        log = %path.display(),
                        "upstream log passed {} MiB: its content moved to {}.1 and it starts again",
                        MAX_BYTES / (1024 * 1024),
                        path.display()
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(dir = %dir.display(), error = %e, "cannot rotate upstream logs"),
            Err(e) => tracing::warn!(error = %e, "upstream log rotation stopped unexpectedly"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_logs_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-blue.log");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        open(&path, "header").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn a_large_log_is_copied_and_emptied_and_the_upstream_writes_on_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-blue.log");
        let mut upstream = open(&path, "==> switchctl: web (blue, v1) started").unwrap();
        upstream.write_all(&vec![b'x'; 2000]).unwrap();
        std::fs::write(dir.path().join("small-green.log"), "small\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), vec![b'y'; 5000]).unwrap();

        let rotated = rotate_large(dir.path(), 1000).unwrap();
        assert_eq!(rotated, vec![path.clone()], "only the large .log");
        assert!(std::fs::read(dir.path().join("web-blue.log.1"))
            .unwrap()
            .ends_with(&[b'x'; 2000]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The upstream's append-mode descriptor writes at the new end.
        upstream.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(latest_run(&path, 10), vec!["after".to_string()]);
        assert!(rotate_large(dir.path(), 1000).unwrap().is_empty());
        assert!(rotate_large(&dir.path().join("missing"), 1000).unwrap().is_empty());
    }

    #[test]
    fn the_latest_run_is_read_from_the_tail_of_a_large_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-blue.log");
        let mut f = open(&path, "==> switchctl: first run").unwrap();
        for i in 0..40_000 {
            writeln!(f, "old line {i}").unwrap();
        }
        drop(f);
        let mut f = open(&path, "==> switchctl: second run").unwrap();
        writeln!(f, "new 1\nnew 2").unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > TAIL_BYTES);
        assert_eq!(latest_run(&path, 50), vec!["new 1", "new 2"]);

        // No header in the tail: its last lines, never a partial first one.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        for i in 0..40_000 {
            writeln!(f, "line {i}").unwrap();
        }
        let tail = latest_run(&path, 100_000);
        assert_eq!(tail.last().unwrap(), "line 39999");
        assert!(tail.iter().all(|l| l.starts_with("line ")), "{:?}", &tail[..3]);
        assert!(latest_run(&dir.path().join("none.log"), 5).is_empty());
    }
}
