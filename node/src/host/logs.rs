//! Slot logs: one file per release and slot (`services/NAME/logs/VERSION-SLOT.log`), rotated by
//! size, read back by `halley-node logs`.
//!
//! ## Guarantees
//! - A slot's process writes its stdout and stderr straight into its log (opened `O_APPEND`), so
//!   logging never depends on this daemon: a service keeps logging while the node restarts.
//! - Rotation copies the log to `.1` (replacing the one before) and truncates it, so the process
//!   keeps its file descriptor; each release and slot keeps at most two files of about the
//!   spec's `log_max` each (8 MiB by default), checked once a second. A line written between the copy and the truncation is lost, as with
//!   logrotate's `copytruncate`.
//! - Logs go with their release when it is pruned, so logs are as bounded as releases are.
//! - What is read back has every `env` value of the service redacted, and one answer carries at
//!   most [`MAX_ANSWER`] bytes per log.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use halley_proto::deploy::{Color, ReleaseVersion, SlotRole};
use halley_proto::disk::ServiceRecord;
use halley_proto::message::{ErrorKind, ErrorReply, LogChunk, LogCursor, LogsReply, LogsRequest};

use crate::host::handle::record_name;
use crate::host::services::Services;
use crate::host::slot::{env_secrets, redact_window};

/// Bytes of one log sent in one answer.
pub const MAX_ANSWER: u64 = 256 << 10;
/// Lines a request may ask for from the end of a log.
pub const MAX_LINES: u32 = 10_000;

/// The log file of `version` in `slot`, under the service's directory.
pub fn path(service_dir: &Path, version: &ReleaseVersion, slot: Color) -> PathBuf {
    service_dir.join("logs").join(file_name(version, slot))
}

fn file_name(version: &ReleaseVersion, slot: Color) -> String {
    LogCursor::start_of(version, slot).file
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates the log at `path` once it is over `max` bytes; returns whether it did.
pub fn rotate_if_over(path: &Path, max: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let old = rotated(path);
    let tmp = path.with_extension("log.rotating");
    let copied = fs::copy(path, &tmp).and_then(|_| fs::rename(&tmp, &old));
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    // Truncated even when the copy failed (a full disk): losing old output beats filling the
    // card. The writer holds the file `O_APPEND`: its next write lands at the new end, 0.
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    copied.map(|()| true)
}

/// Renames the log an earlier version of halley-node kept per slot (`logs/SLOT.log`, shared by
/// every release) to this release's name, for a slot process adopted from it: the process's
/// open file follows the rename, so its output is read, followed and rotated as any other.
pub fn adopt_legacy(service_dir: &Path, version: &ReleaseVersion, slot: Color) {
    let legacy = service_dir.join("logs").join(format!("{slot}.log"));
    let current = path(service_dir, version, slot);
    if legacy.exists() && !current.exists() {
        let _ = fs::rename(&legacy, &current);
    }
}

/// Removes the logs of a pruned release.
pub fn remove_release(service_dir: &Path, version: &ReleaseVersion) {
    for slot in Color::BOTH {
        let p = path(service_dir, version, slot);
        let _ = fs::remove_file(rotated(&p));
        let _ = fs::remove_file(&p);
    }
}

/// Answers `logs` for a service of this node: the release asked for, or the one its active slot
/// runs (else its committed one).
pub async fn answer(services: &Services, request: LogsRequest) -> Result<LogsReply, ErrorReply> {
    let node = services.node().clone();
    let refuse = |kind, message: String| ErrorReply { kind, message };
    let Some(handle) = services.handle(&request.service).await else {
        return Err(refuse(
            ErrorKind::NotFound,
            format!(
                "service {} does not run on node {node}; `halley-node services` lists what does (add --node NAME for another node)",
                request.service
            ),
        ));
    };
    let status = handle.status();
    let running = status
        .slots
        .iter()
        .find(|s| s.role == SlotRole::Active)
        .and_then(|s| s.version.clone());
    let Some(release) = request.release.clone().or(running).or(status.committed) else {
        return Err(refuse(
            ErrorKind::NotFound,
            format!(
                "service {} has no release on node {node} yet",
                request.service
            ),
        ));
    };
    let record: ServiceRecord = services
        .data_dir()
        .read_record(&record_name(&request.service))
        .map_err(|e| refuse(ErrorKind::Internal, e.to_string()))?;
    let secrets = env_secrets(&record);
    let dir = services.releases().service_dir(&request.service);
    let (version, req) = (release.clone(), request.clone());
    let chunks = tokio::task::spawn_blocking(move || read(&dir, &version, &req, &secrets))
        .await
        .map_err(|e| refuse(ErrorKind::Internal, e.to_string()))?;
    if chunks.is_empty() && request.after.is_empty() {
        let on_disk: Vec<String> = status.releases.iter().map(ToString::to_string).collect();
        return Err(refuse(
            ErrorKind::NotFound,
            format!(
                "no log of release {release} of {} on node {node}: it never ran here, or it was pruned (releases here: {}); pick one with --release",
                request.service,
                if on_disk.is_empty() {
                    "none".to_owned()
                } else {
                    on_disk.join(", ")
                }
            ),
        ));
    }
    Ok(LogsReply {
        node,
        release,
        chunks,
    })
}

/// Reads `version`'s logs as `request` asks: for each slot with a log, its new output since the
/// request's cursor, or its last `lines` lines.
pub fn read(
    service_dir: &Path,
    version: &ReleaseVersion,
    request: &LogsRequest,
    secrets: &[String],
) -> Vec<LogChunk> {
    let mut chunks = Vec::new();
    for slot in Color::BOTH {
        let path = path(service_dir, version, slot);
        let file = file_name(version, slot);
        let Ok(len) = fs::metadata(&path).map(|m| m.len()) else {
            continue;
        };
        let after = request
            .after
            .iter()
            .find(|c| c.file == file)
            .map(|c| c.offset);
        let (bytes, skipped, end) = match after {
            Some(offset) => since(&path, offset, len),
            None => (tail(&path, request.lines.min(MAX_LINES), len), false, len),
        };
        chunks.push(LogChunk {
            release: version.clone(),
            slot,
            text: redact_window(&String::from_utf8_lossy(&bytes), secrets),
            cursor: LogCursor { file, offset: end },
            skipped,
        });
    }
    chunks
}

/// Output written after `offset` (at most [`MAX_ANSWER`] bytes), whether some was missed (a
/// log shorter than the offset was rotated, and is read from its start), and where it ends.
fn since(path: &Path, offset: u64, len: u64) -> (Vec<u8>, bool, u64) {
    let mut bytes = Vec::new();
    let (from, was_rotated) = if len < offset {
        // What was written after the cursor before the rotation is the end of `.1`, if only
        // one rotation passed.
        let old = rotated(path);
        let old_len = fs::metadata(&old).map_or(0, |m| m.len());
        if old_len > offset {
            let want = (old_len - offset).min(MAX_ANSWER / 2);
            bytes = read_range(&old, old_len - want, want).unwrap_or_default();
        }
        (0, true)
    } else {
        (offset, false)
    };
    let want = (len - from).min(MAX_ANSWER);
    let mut fresh = read_range(path, from, want).unwrap_or_default();
    // Whole lines only: a line (and a secret in it) is never split between two answers. A
    // line longer than an answer goes as it is.
    if let Some(last) = fresh.iter().rposition(|b| *b == b'\n') {
        fresh.truncate(last + 1);
    } else if (fresh.len() as u64) < MAX_ANSWER {
        fresh.clear();
    }
    let end = from + fresh.len() as u64;
    bytes.extend_from_slice(&fresh);
    (bytes, was_rotated, end)
}

/// The last `lines` lines of the log (reaching into its rotated file when the log holds
/// fewer), at most [`MAX_ANSWER`] bytes.
fn tail(path: &Path, lines: u32, len: u64) -> Vec<u8> {
    if lines == 0 {
        return Vec::new();
    }
    let from = len.saturating_sub(MAX_ANSWER);
    let mut bytes = read_range(path, from, len - from).unwrap_or_default();
    let mut have = count_lines(&bytes);
    if have < lines as usize && from == 0 {
        let old = rotated(path);
        if let Ok(old_len) = fs::metadata(&old).map(|m| m.len()) {
            let room = MAX_ANSWER.saturating_sub(bytes.len() as u64);
            let old_from = old_len.saturating_sub(room);
            let mut older = read_range(&old, old_from, old_len - old_from).unwrap_or_default();
            older.extend_from_slice(&bytes);
            bytes = older;
            have = count_lines(&bytes);
        }
    }
    if have > lines as usize {
        let mut skip = have - lines as usize;
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                skip -= 1;
                if skip == 0 {
                    start = i + 1;
                    break;
                }
            }
        }
        bytes.drain(..start);
    }
    bytes
}

/// Lines in `bytes`, counting a last line without its newline.
fn count_lines(bytes: &[u8]) -> usize {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(bytes.last().is_some_and(|b| *b != b'\n'))
}

fn read_range(path: &Path, from: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut out = Vec::new();
    file.take(len).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use halley_proto::spec::ServiceName;

    fn request(lines: u32, after: Vec<LogCursor>) -> LogsRequest {
        LogsRequest {
            service: ServiceName::parse("web").unwrap(),
            release: None,
            lines,
            after,
        }
    }

    #[test]
    fn tails_follow_and_rotation_keep_two_bounded_files() {
        let dir = tempfile::tempdir().unwrap();
        let v = ReleaseVersion::parse("3").unwrap();
        let log = path(dir.path(), &v, Color::Green);
        fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut writer = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for i in 0..100 {
            writeln!(writer, "line {i} token=supersecretvalue").unwrap();
        }
        let secrets = vec!["supersecretvalue".to_owned()];
        let chunks = read(dir.path(), &v, &request(3, vec![]), &secrets);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].slot, Color::Green);
        assert_eq!(
            chunks[0].text,
            "line 97 token=[redacted]\nline 98 token=[redacted]\nline 99 token=[redacted]\n"
        );
        let cursor = chunks[0].cursor.clone();

        writeln!(writer, "line 100").unwrap();
        write!(writer, "half a li").unwrap();
        let next = read(dir.path(), &v, &request(3, vec![cursor.clone()]), &[]);
        assert_eq!(
            next[0].text, "line 100\n",
            "a line being written waits for its end"
        );
        assert!(!next[0].skipped);
        writeln!(writer, "ne").unwrap();
        writeln!(writer, "missed by the reader").unwrap();

        assert!(rotate_if_over(&log, 1000).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        writeln!(writer, "after rotation").unwrap();
        let after = read(
            dir.path(),
            &v,
            &request(3, vec![next[0].cursor.clone()]),
            &[],
        );
        assert_eq!(
            after[0].text, "half a line\nmissed by the reader\nafter rotation\n",
            "what came after the cursor before the rotation is read from .1"
        );
        assert!(after[0].skipped, "the reader is told the log was rotated");
        // A tail reaches into the rotated file.
        let tail = read(dir.path(), &v, &request(2, vec![]), &[]);
        assert_eq!(tail[0].text, "missed by the reader\nafter rotation\n");
        assert!(!rotate_if_over(&log, 1000).unwrap());

        remove_release(dir.path(), &v);
        assert!(!log.exists() && !rotated(&log).exists());
    }
}
