//! A service leaving this node (`Step::Remove`, from `halley-node service remove`): what is
//! deleted from the data dir once its host has stopped.
//!
//! ## Guarantees
//! - `services/NAME/fence.rec` stays, so a step of any rollout older than the removal is still
//!   refused (a coordinator that was cut off cannot bring the service back with it).
//! - The releases, logs, record, rollback marker, pid and launch files go. The data directory
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

use halley_proto::spec::ServiceName;

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

/// Deletes what the service left in the data dir (see the module rules), then sweeps the
/// artifacts nothing names now.
pub fn delete(data_dir: &DataDir, service_dir: &Path, service: &ServiceName, purge: bool) {
    let artifacts = crate::store::sweep::named_by(service_dir);
    if let Err(e) = clear(service_dir, purge) {
        tracing::warn!(service = %service, dir = %service_dir.display(), error = %e, "cannot delete all of a removed service's files");
    }
    if purge {
        let backups = data_dir.root().join("backups").join(service.as_str());
        match std::fs::remove_dir_all(&backups) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(service = %service, dir = %backups.display(), error = %e, "cannot delete a removed service's backups")
            }
        }
    }
    let swept = crate::store::sweep::forget(data_dir, &artifacts);
    for (path, error) in &swept.failed {
        tracing::warn!(path = %path.display(), %error, "cannot remove a removed service's artifact");
    }
}

fn clear(service_dir: &Path, purge: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(service_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == "fence.rec" || (!purge && KEPT.iter().any(|k| name == *k)) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
