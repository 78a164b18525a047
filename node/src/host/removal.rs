//! A service leaving this node (`Step::Remove`, from `halley-node service remove`): what is
//! deleted from the data dir once its host has stopped.
//!
//! ## Guarantees
//! - `services/NAME/fence.rec` stays, so a step of any rollout older than the removal is still
//!   refused (a coordinator that was cut off cannot bring the service back with it).
//! - A service that is not here has the removal's token admitted and kept all the same.
//! - The record goes first, then the releases, logs, rollback marker, pid and launch files, on
//!   past a failure (reported to the coordinator). The data directory
//!   (`data/`), the run-once ledgers (`migrated`, `contracted`) and the service's backups stay
//!   unless `purge`: a service deployed again under the same name finds its data and does not
//!   run a migration twice over it.
//! - The artifacts of its releases go, but for one another service's release or a rollout
//!   journal here names.
//!
//! ## Non-goals
//! Waiting for ever: a process that outlives `kill_after` by [`EXIT_GRACE`] is reported, not
//! waited for (it was sent SIGKILL).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use halley_proto::disk::{FenceRecord, ServiceRecord};
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::spec::ServiceName;

use crate::engine::fence;
use crate::error::error_reply;
use crate::host::handle::{fence_name, record_name};
use crate::host::process;
use crate::store::datadir::DataDir;

/// How long past `kill_after` a stopped process may take to be gone.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What stays in a service's directory without `purge`.
const KEPT: [&str; 4] = ["fence.rec", "data", "migrated", "contracted"];

/// Waits until every process in `stopped` has exited, for at most `limit`; returns those that
/// have not.
pub async fn wait_gone(stopped: &[(u32, u64)], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = stopped
            .iter()
            .filter(|(pid, ticks)| process::same_process(*pid, *ticks))
            .map(|(pid, _)| *pid)
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes what the service left in the data dir (see the module rules), then its artifacts
/// that nothing else uses. Returns what could not be deleted, if anything.
pub fn delete(
    data_dir: &DataDir,
    service_dir: &Path,
    service: &ServiceName,
    purge: bool,
) -> Option<String> {
    let artifacts = crate::store::sweep::named_by(service_dir);
    let mut failed = clear(service_dir, purge);
    if purge {
        let backups = data_dir.root().join("backups").join(service.as_str());
        match std::fs::remove_dir_all(&backups) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!("{}: {e}", backups.display())),
        }
    }
    let swept = crate::store::sweep::forget(data_dir, &artifacts);
    for (path, error) in &swept.failed {
        tracing::warn!(path = %path.display(), %error, "cannot remove a removed service's artifact");
    }
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// Deletes the service's files, the record first (so a failure later leaves nothing a start
/// would adopt), going on past a failure; returns the failures.
fn clear(service_dir: &Path, purge: bool) -> Vec<String> {
    let mut failed = Vec::new();
    let record = service_dir.join("service.rec");
    match std::fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => failed.push(format!("{}: {e}", record.display())),
    }
    let entries = match std::fs::read_dir(service_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return failed,
        Err(e) => {
            failed.push(format!("{}: {e}", service_dir.display()));
            return failed;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "fence.rec" || (!purge && KEPT.iter().any(|k| name == *k)) {
            continue;
        }
        let path = entry.path();
        // Not followed: a link is removed as a link.
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            failed.push(format!("{}: {e}", path.display()));
        }
    }
    failed
}

/// Admits `token` for a service that is not here (removed before, or never here) and keeps it,
/// so a rollout older than the removal is refused here too.
pub fn admit_absent(
    data_dir: &DataDir,
    service: &ServiceName,
    token: &FenceRecord,
) -> Result<(), ErrorReply> {
    let name = fence_name(service);
    let held: FenceRecord = data_dir
        .read_record_or_default(&name)
        .map_err(|e| error_reply(ErrorKind::Internal, format!("cannot read {name}: {e}")))?;
    match fence::admit(&held, token, service.as_str()) {
        fence::Admit::Same => Ok(()),
        fence::Admit::Stale(why) => Err(error_reply(ErrorKind::StaleEpoch, why)),
        fence::Admit::TooFar(why) => Err(error_reply(ErrorKind::BadRequest, why)),
        fence::Admit::Raise(raised) => {
            let dir = data_dir.file(&format!("services/{service}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| {
                    error_reply(
                        ErrorKind::Internal,
                        format!("cannot create {}: {e}", dir.display()),
                    )
                })
                .and_then(|()| {
                    data_dir.write_record(&name, &raised).map_err(|e| {
                        error_reply(ErrorKind::Internal, format!("cannot save {name}: {e}"))
                    })
                })
        }
    }
}

/// The longest `kill_after` of the specs a service's slots run (they are stopped by it).
pub fn kill_after(data_dir: &DataDir, service: &ServiceName) -> Duration {
    let Ok(record) = data_dir.read_record::<ServiceRecord>(&record_name(service)) else {
        return Duration::from_secs(10);
    };
    record
        .slots
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .chain([&record.spec])
        .map(|s| s.stop.kill_after.as_duration())
        .max()
        .unwrap_or_default()
}
