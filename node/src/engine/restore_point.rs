//! Which backup undoes a release's data: `rollback --restore-data` restores, on each node, the
//! backup taken before the deploy of the release being rolled back, while the release before it
//! still served. Pruning by `keep_backups` never removes that backup for the committed release.
//!
//! ## Guarantees
//! - A snapshot taken for a release while that release already served (a deploy of the same
//!   version again, refused or not) is never the restore point: it holds that release's own
//!   data, migrated or not, not the data from before it.
//! - Among the candidates the newest wins (ids sort by time): the last data before the release
//!   first served.

use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::BackupManifest;

/// The backup that holds `release`'s data from before its deploy (`list` in any order).
pub fn restore_point<'a>(
    list: &'a [BackupManifest],
    release: &ReleaseVersion,
) -> Option<&'a BackupManifest> {
    list.iter()
        .filter(|m| m.for_release.as_ref() == Some(release) && m.release.as_ref() != Some(release))
        .max_by(|a, b| a.id.cmp(&b.id))
}

/// The ids to remove so that `keep` backups stay (`list` oldest first), never the restore
/// point of `committed` (which is kept in addition when it is among the oldest).
pub fn prune(
    list: &[BackupManifest],
    keep: u32,
    committed: Option<&ReleaseVersion>,
) -> Vec<String> {
    let protected = committed
        .and_then(|c| restore_point(list, c))
        .map(|m| m.id.clone());
    let others: Vec<&BackupManifest> = list
        .iter()
        .filter(|m| Some(&m.id) != protected.as_ref())
        .collect();
    let keep_others =
        (keep as usize).saturating_sub(usize::from(protected.as_ref().is_some_and(|p| {
            // The restore point counts towards `keep` only when it is among the newest anyway.
            list.iter().rev().take(keep as usize).any(|m| &m.id == p)
        })));
    let excess = others.len().saturating_sub(keep_others);
    others.iter().take(excess).map(|m| m.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use halley_proto::NodeName;
    use halley_proto::spec::ServiceName;

    use super::*;

    fn backup(id: &str, release: &str, for_release: &str) -> BackupManifest {
        let v = |s: &str| (!s.is_empty()).then(|| ReleaseVersion::parse(s).unwrap());
        BackupManifest {
            id: id.into(),
            service: ServiceName::parse("web").unwrap(),
            node: NodeName::parse("n1").unwrap(),
            release: v(release),
            reason: String::new(),
            for_release: v(for_release),
            created_ms: 0,
            sqlite: Vec::new(),
            dirs: Vec::new(),
            hook: false,
            files: Vec::new(),
        }
    }

    fn v(s: &str) -> ReleaseVersion {
        ReleaseVersion::parse(s).unwrap()
    }

    #[test]
    fn a_snapshot_taken_while_the_release_served_is_not_its_restore_point() {
        // Before: the newest `for_release == v2` won, which was the second deploy of v2 (taken
        // while v2 served, so holding v2's data).
        let list = [
            backup("1", "v1", "v2"),
            backup("2", "v2", "v2"),
            backup("3", "v2", "v3"),
        ];
        assert_eq!(
            restore_point(&list, &v("v2")).map(|m| m.id.as_str()),
            Some("1")
        );
        assert_eq!(
            restore_point(&list, &v("v3")).map(|m| m.id.as_str()),
            Some("3")
        );
        assert_eq!(restore_point(&list, &v("v4")), None);
    }

    #[test]
    fn refused_deploys_do_not_prune_the_restore_point_of_the_committed_release() {
        // v2 committed (restore point 1), then three refused deploys of v3 with keep_backups 2.
        let list = [
            backup("1", "v1", "v2"),
            backup("2", "v2", "v3"),
            backup("3", "v2", "v3"),
            backup("4", "v2", "v3"),
        ];
        assert_eq!(prune(&list, 2, Some(&v("v2"))), vec!["2".to_owned()]);
        // Without a committed release to protect, plain keep-newest.
        assert_eq!(prune(&list, 2, None), vec!["1".to_owned(), "2".to_owned()]);
        // The restore point among the newest counts towards keep.
        let list = [backup("1", "v1", "v1"), backup("2", "v1", "v2")];
        assert_eq!(prune(&list, 1, Some(&v("v2"))), vec!["1".to_owned()]);
    }
}
