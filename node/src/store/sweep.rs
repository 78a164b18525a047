//! Keeping the artifact store bounded: artifacts no release and no rollout journal on this node
//! needs any more, and leftovers of interrupted copies and unpacks, are removed.
//!
//! An artifact is needed while an unpacked release names it (`.halley-artifact`, which every
//! release holds) or while a rollout journal here names it (a coordinator that is no host of the
//! service still serves the artifact to hosts that fetch it, and `deploy --resume` needs it).
//! Releases are pruned to `keep_releases`, so what this keeps is bounded too.
//!
//! ## Guarantees
//! - Nothing touched within `grace` is removed: an artifact just stored (or just reused, see
//!   [`Releases::unpack`](crate::store::releases::Releases::unpack)) for a deploy still
//!   unpacking, or a copy still arriving, survives a sweep that runs beside it. At the daemon's
//!   start nothing runs beside it, and the grace is zero.
//! - Never follows a symlink: entries are removed by name inside the store.
//! - A failure to remove one entry is reported and the sweep goes on.
//!
//! ## Non-goals
//! No sweep of backups (see `backups.rs`, `keep_backups`) or of logs (rotated by size).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use halley_proto::hex;

use crate::store::datadir::DataDir;
use crate::store::journal;

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Paths removed.
    pub removed: Vec<PathBuf>,
    /// Bytes they held (apparent sizes of files).
    pub bytes: u64,
    /// Entries that could not be removed, with why.
    pub failed: Vec<(PathBuf, String)>,
}

/// How long a sweep beside running deploys leaves what was touched: longer than a deploy takes
/// from storing its artifact to its journal or unpack (snapshots before a deploy may take up to
/// an hour), short enough that a node deploying every few minutes keeps a couple of hours' worth.
pub const GRACE: Duration = Duration::from_secs(2 * 3600);

/// [`sweep`] now, with what it did logged.
pub fn sweep_and_log(data_dir: &DataDir, grace: Duration) -> Swept {
    let swept = sweep(data_dir, grace, SystemTime::now());
    if !swept.removed.is_empty() {
        tracing::info!(
            entries = swept.removed.len(),
            bytes = swept.bytes,
            "removed artifacts no release needs and leftovers of interrupted copies"
        );
    }
    for (path, error) in &swept.failed {
        tracing::warn!(path = %path.display(), %error, "cannot remove an unneeded artifact or leftover");
    }
    swept
}

/// Prefixes of the temporary names copies and unpacks use (`releases.rs`).
const LEFTOVERS: [&str; 3] = [".part-", ".incoming-", ".partial-"];

/// Removes unneeded artifacts and leftovers not touched within `grace` of `now`.
pub fn sweep(data_dir: &DataDir, grace: Duration, now: SystemTime) -> Swept {
    // What cannot be read cannot be judged unneeded: no artifact goes then.
    let needed = needed(data_dir);
    let mut swept = Swept::default();
    let stale = |path: &Path| {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= grace)
            .unwrap_or(false)
    };
    let artifacts = data_dir.file("artifacts");
    for entry in entries(&artifacts) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = LEFTOVERS.iter().any(|p| name.starts_with(p));
        let unneeded =
            parse_sha(&name).is_some_and(|sha| needed.as_ref().is_some_and(|n| !n.contains(&sha)));
        if (leftover || unneeded) && stale(&entry.path()) {
            remove(&entry.path(), &mut swept);
        }
    }
    for service in entries(&data_dir.file("services")) {
        for entry in entries(&service.path().join("releases")) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") && stale(&entry.path()) {
                remove(&entry.path(), &mut swept);
            }
        }
    }
    swept
}

/// Removes the artifacts of a removed service, each given with when the service last used it,
/// that nothing needs now. One that another service's release or a journal names stays, and so
/// does one touched since (stored or reused by a deploy still under way, which names it only
/// once it has unpacked or journaled).
pub fn forget(data_dir: &DataDir, used: &[([u8; 32], SystemTime)]) -> Swept {
    let mut swept = Swept::default();
    let Some(needed) = needed(data_dir) else {
        return swept;
    };
    for (sha, since) in used.iter().filter(|(s, _)| !needed.contains(s)) {
        let path = data_dir.file("artifacts").join(hex::encode(sha));
        let touched = fs::symlink_metadata(&path).and_then(|m| m.modified());
        let Ok(touched) = touched else { continue };
        if touched <= *since + USE_SLACK {
            remove(&path, &mut swept);
        }
    }
    swept
}

/// How much later than a service's use of an artifact it may have been touched by that same use
/// (the unpack touches it before it writes the release's marker).
const USE_SLACK: Duration = Duration::from_secs(2);

/// The artifacts the unpacked releases under `service_dir` name, each with when its release
/// was unpacked.
pub fn named_by(service_dir: &Path) -> Vec<([u8; 32], SystemTime)> {
    entries(&service_dir.join("releases"))
        .into_iter()
        .filter_map(|release| {
            let marker = release.path().join(".halley-artifact");
            let sha = parse_sha(fs::read_to_string(&marker).ok()?.trim())?;
            Some((sha, fs::metadata(&marker).and_then(|m| m.modified()).ok()?))
        })
        .collect()
}

/// Artifacts an unpacked release or a rollout journal of this node names; `None` if a marker,
/// a directory or a journal could not be read.
fn needed(data_dir: &DataDir) -> Option<HashSet<[u8; 32]>> {
    let mut needed = HashSet::new();
    for service in listed(&data_dir.file("services"))? {
        for release in listed(&service.path().join("releases"))? {
            if release.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let marker = release.path().join(".halley-artifact");
            match fs::read_to_string(marker) {
                Ok(s) => needed.insert(parse_sha(s.trim())?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => return None,
            };
        }
    }
    for service in journal::recorded_services(data_dir) {
        if !data_dir.file(&journal::journal_name(&service)).exists() {
            continue;
        }
        needed.insert(journal::read_journal(data_dir, &service).ok()?.sha256);
    }
    Some(needed)
}

/// A directory's entries; empty if it does not exist, `None` if it cannot be read.
fn listed(dir: &Path) -> Option<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(it) => it.collect::<Result<Vec<_>, _>>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
        Err(_) => None,
    }
}

fn parse_sha(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    hex::decode_array(name)
}

fn entries(dir: &Path) -> Vec<fs::DirEntry> {
    fs::read_dir(dir)
        .map(|it| it.flatten().collect())
        .unwrap_or_default()
}

fn remove(path: &Path, swept: &mut Swept) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let (result, bytes) = if meta.is_dir() {
        let bytes = crate::store::disk_use::bytes_used(path);
        (fs::remove_dir_all(path), bytes)
    } else {
        (fs::remove_file(path), meta.len())
    };
    match result {
        Ok(()) => {
            swept.removed.push(path.to_path_buf());
            swept.bytes += bytes;
        }
        Err(e) => swept.failed.push((path.to_path_buf(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_a_release_names_and_what_is_fresh() {
        let root = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(root.path());
        let artifacts = root.path().join("artifacts");
        fs::create_dir_all(&artifacts).unwrap();
        let (kept, unneeded) = ("a".repeat(64), "b".repeat(64));
        fs::write(artifacts.join(&kept), b"x").unwrap();
        fs::write(artifacts.join(&unneeded), b"yy").unwrap();
        fs::write(artifacts.join(".part-cc"), b"zzz").unwrap();
        fs::write(artifacts.join("README"), b"not ours").unwrap();
        let releases = root.path().join("services/web/releases");
        fs::create_dir_all(releases.join("1")).unwrap();
        fs::write(releases.join("1/.halley-artifact"), &kept).unwrap();
        fs::create_dir_all(releases.join(".partial-2-77")).unwrap();

        let now = SystemTime::now();
        let fresh = sweep(&data_dir, Duration::from_secs(600), now);
        assert!(fresh.removed.is_empty(), "all of it was just written");

        let swept = sweep(&data_dir, Duration::ZERO, now + Duration::from_secs(1));
        let mut names: Vec<String> = swept
            .removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".part-cc", ".partial-2-77", unneeded.as_str()]);
        assert!(artifacts.join(&kept).exists() && artifacts.join("README").exists());
        assert!(swept.failed.is_empty());
    }
}
