//! One slot's process at run time, as the service actor keeps it: its upstream, health tracker,
//! supervisor, drain counts and signal history, and the tasks that watch its process (the probe
//! loop and the exit watcher).
//!
//! ## Guarantees
//! - Every event carries the slot's `run_id`; the actor drops events of an older run, so a probe
//!   of a stopped process never changes the health of its successor.
//! - The first probe runs soon after start (within 50 ms), then every `interval`.
//! - Signals cover the last 10 s, from one snapshot a second.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use halley_proto::deploy::{Color, Signals};
use halley_proto::spec::ServiceSpec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::health::HealthTracker;
use crate::engine::supervise::Supervisor;
use crate::host::logs;
use crate::host::probe::{self, ExecContext};
use crate::host::process::{self, Launch};
use crate::proxy::upstream::{StatsSnapshot, Upstream};

/// How far back a slot's signals look.
const SIGNAL_WINDOW_MS: u64 = 10_000;

pub(crate) enum Event {
    Probe {
        slot: Color,
        run_id: u64,
        outcome: probe::Outcome,
    },
    Exited {
        slot: Color,
        run_id: u64,
        how: String,
    },
}

#[derive(Default)]
pub(crate) struct SlotRuntime {
    pub(crate) run_id: u64,
    pub(crate) pid: Option<(u32, u64)>,
    pub(crate) since_ms: u64,
    pub(crate) upstream: Option<Arc<Upstream>>,
    pub(crate) spec: Option<ServiceSpec>,
    pub(crate) tracker: Option<HealthTracker>,
    pub(crate) supervisor: Supervisor,
    pub(crate) tasks: Option<CancellationToken>,
    pub(crate) restart_at: Option<u64>,
    pub(crate) drain: Option<DrainInfo>,
    pub(crate) history: VecDeque<StatsSnapshot>,
    pub(crate) signals: Signals,
    pub(crate) last_exit: Option<String>,
}

pub(crate) struct DrainInfo {
    pub(crate) started_ms: u64,
    pub(crate) finished_at_start: u64,
    /// Finished before the cut, once there was one.
    pub(crate) completed: Option<u64>,
    pub(crate) cut: u64,
}

impl SlotRuntime {
    /// Signals over the last window: one snapshot a second, compared with the one a window ago.
    pub(crate) fn update_signals(&mut self) {
        let per_window = (SIGNAL_WINDOW_MS / 1000) as usize;
        let Some(up) = &self.upstream else { return };
        let snap = up.snapshot();
        let window_ms = self.history.len() as u64 * 1000;
        let oldest = self.history.front().cloned().unwrap_or_default();
        self.signals = snap.signals_since(&oldest, window_ms.max(1000));
        self.history.push_back(snap);
        while self.history.len() > per_window {
            self.history.pop_front();
        }
    }
}

/// Spawns the exit watcher and the probe loop of a slot's process; both stop when `token` is
/// cancelled.
pub(crate) fn watch(
    slot: Color,
    run_id: u64,
    mut p: process::Process,
    launch: Launch,
    token: CancellationToken,
    events: mpsc::UnboundedSender<Event>,
) {
    let exit_events = events.clone();
    let exit_token = token.clone();
    tokio::spawn(rotate_while_running(
        launch.log.clone(),
        launch.spec.log_max.0,
        token.clone(),
    ));
    tokio::spawn(async move {
        tokio::select! {
            how = p.exited() => { let _ = exit_events.send(Event::Exited { slot, run_id, how }); }
            _ = exit_token.cancelled() => {}
        }
    });
    tokio::spawn(async move {
        // An `exec` check runs with the slot's own environment.
        let env = process::environment(&launch);
        // Confined as the slot is; never run as this node instead.
        let user = process::confinement(&launch).map_err(|e| e.to_string());
        let ctx = ExecContext {
            dir: &launch.release_dir,
            env: &env,
            user: user.as_ref().map(Option::as_ref).map_err(String::as_str),
        };
        let (spec, port) = (&launch.spec, launch.port);
        let interval = spec.health.interval.as_duration();
        let timeout = spec.health.timeout.as_duration();
        // The first check soon after start, so a fast release is routable quickly.
        let mut wait = interval.min(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => return,
            }
            let outcome = probe::probe(&spec.health.check, port, timeout, &ctx).await;
            if events
                .send(Event::Probe {
                    slot,
                    run_id,
                    outcome,
                })
                .is_err()
            {
                return;
            }
            wait = interval;
        }
    });
}

/// Checks the slot's log every second and rotates it past `max` bytes (the spec's `log_max`),
/// until the slot's tasks are cancelled.
async fn rotate_while_running(log: std::path::PathBuf, max: u64, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = token.cancelled() => return,
        }
        let path = log.clone();
        let rotated = tokio::task::spawn_blocking(move || logs::rotate_if_over(&path, max)).await;
        if let Ok(Err(e)) = rotated {
            tracing::warn!(log = %log.display(), error = %e, "cannot rotate a slot's log");
        }
    }
}

/// Lines of a slot's log that go into an error message (and from there into rollout reasons,
/// gossip and every node's history), and how long each may be.
const TAIL_LINES: usize = 3;
const TAIL_LINE_CHARS: usize = 200;
/// Env values shorter than this are not redacted: short values (`fail`, `true`, `60000`) are
/// ordinary words and numbers, and blanking them out of every log line hides what went wrong.
const MIN_SECRET_LEN: usize = 8;
/// Bytes read from the end of a log for its tail.
const TAIL_WINDOW: u64 = 4096;
/// A cut-off piece of a secret at least this long at either edge of a window is redacted too.
const MIN_FRAGMENT_LEN: usize = 4;

/// The last few lines of a slot's log, for error messages, with every value in `secrets` (the
/// service's `env` values) replaced by `[redacted]`: a release that prints its env on a crash
/// must not spread it across the cluster.
pub(crate) fn log_tail(path: &std::path::Path, secrets: &[String]) -> String {
    use std::io::{Read, Seek, SeekFrom};
    // Only the end is read: a slot's log can be large.
    let read_end = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_WINDOW)))?;
        let mut bytes = Vec::new();
        file.take(TAIL_WINDOW).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let Ok(bytes) = read_end() else {
        return "(no log)".into();
    };
    let text = redact_window(&String::from_utf8_lossy(&bytes), secrets);
    let lines: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(TAIL_LINES)
        .collect();
    let tail: Vec<String> = lines
        .into_iter()
        .rev()
        .map(|l| match l.char_indices().nth(TAIL_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_owned(),
        })
        .collect();
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail.join(" | ")
    }
}

/// The values to redact from a service's output: every `env` value of its spec and of every
/// release it keeps.
pub(crate) fn env_secrets(record: &halley_proto::disk::ServiceRecord) -> Vec<String> {
    std::iter::once(&record.spec)
        .chain(record.releases.iter().map(|r| &r.spec))
        .flat_map(|spec| spec.env.values().map(|v| v.0.clone()))
        .collect()
}

/// [`redact`] for a window cut out of longer output (a log's end, a probe's first 4 KiB): a
/// secret the cut split leaves a piece at the window's edge, which is redacted as well.
pub(crate) fn redact_window(text: &str, secrets: &[String]) -> String {
    let mut text = redact(text, secrets);
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        // Longest piece first: a secret's end starting the window, its start ending it.
        let lead = (MIN_FRAGMENT_LEN..secret.len())
            .rev()
            .filter(|&n| secret.is_char_boundary(secret.len() - n))
            .find(|&n| text.starts_with(&secret[secret.len() - n..]));
        if let Some(n) = lead {
            text.replace_range(..n, "[redacted]");
        }
        let trail = (MIN_FRAGMENT_LEN..secret.len())
            .rev()
            .filter(|&n| secret.is_char_boundary(n))
            .find(|&n| text.ends_with(&secret[..n]));
        if let Some(n) = trail {
            let at = text.len() - n;
            text.replace_range(at.., "[redacted]");
        }
    }
    text
}

/// `text` with every secret of at least [`MIN_SECRET_LEN`] bytes replaced by `[redacted]`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect();
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.into_iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret, "[redacted]")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_cut_by_the_window_is_redacted_at_either_edge() {
        let secrets = vec!["hunter2-very-secret".to_owned(), "short".to_owned()];
        assert_eq!(
            redact_window("ery-secret then hunter2-very-secret and hunt", &secrets),
            "[redacted] then [redacted] and [redacted]"
        );
        // Short values and text that is no piece of a secret stay.
        assert_eq!(redact_window("short fail", &secrets), "short fail");
        assert_eq!(redact_window("abc", &secrets), "abc");
    }

    #[test]
    fn the_tail_of_a_large_log_is_its_last_lines_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blue.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nstarting\nKEY=hunter2-very-secret\npanic: boom\n");
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, &["hunter2-very-secret".to_owned()]);
        assert_eq!(tail, "starting | KEY=[redacted] | panic: boom");
        assert_eq!(log_tail(&dir.path().join("none"), &[]), "(no log)");
    }
}
