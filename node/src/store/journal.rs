//! Rollout journals and history books in the data dir: `rollouts/NAME.rec` (the coordinator's
//! last state of a service's rollout, with the spec and artifact it rolls out) and
//! `history/NAME.rec` (the last 50 rollouts it coordinated).
//!
//! ## Guarantees
//! - Both are written crash-safe (temp, fsync, rename; see [`DataDir::write_record`]).
//! - A history book holds at most 50 entries, one per rollout id, oldest first.
//!
//! ## Non-goals
//! Publishing either in gossip (the rollout layer does).

use halley_proto::disk::{HistoryBook, RolloutJournal, UnpinnedRolloutJournal};
use halley_proto::rollout::{HistoryEntry, Mode};
use halley_proto::spec::ServiceName;

use crate::engine::release_pin;
use crate::error::Result;
use crate::store::datadir::DataDir;

/// How many rollouts a node's history book keeps per service.
pub const HISTORY_KEPT: usize = 50;

/// The journal file of a service, relative to the data dir.
pub fn journal_name(service: &ServiceName) -> String {
    format!("rollouts/{service}.rec")
}

fn history_name(service: &ServiceName) -> String {
    format!("history/{service}.rec")
}

/// This node's journal of the last rollout of `service` it coordinated. A journal from before
/// rollouts carried a release pin is read too: a deploy's pin is recomputed from the spec and
/// artifact it journaled (this node's own record of what it rolled out); a rollback's stays
/// unpinned, as its spec came from a host.
pub fn read_journal(data_dir: &DataDir, service: &ServiceName) -> Result<RolloutJournal> {
    let name = journal_name(service);
    if let Ok(old) = data_dir.read_record::<UnpinnedRolloutJournal>(&name) {
        let pin = match old.state.mode {
            Mode::Deploy => release_pin::pin(&old.spec, &old.sha256, &old.file_name),
            Mode::Rollback | Mode::Remove => None,
        };
        return Ok(RolloutJournal {
            state: old.state.pinned(pin),
            spec: old.spec,
            sha256: old.sha256,
            file_name: old.file_name,
        });
    }
    data_dir.read_record(&name)
}

/// Saves the journal of a rollout this node coordinates.
pub fn write_journal(data_dir: &DataDir, journal: &RolloutJournal) -> Result<()> {
    let _ = std::fs::create_dir_all(data_dir.file("rollouts"));
    data_dir.write_record(&journal_name(&journal.state.service), journal)
}

/// The history book of `service` (empty when there is none or it cannot be read).
pub fn read_history(data_dir: &DataDir, service: &ServiceName) -> HistoryBook {
    data_dir
        .read_record_or_default(&history_name(service))
        .unwrap_or_default()
}

/// The services this node holds a rollout journal or a history book of.
pub fn recorded_services(data_dir: &DataDir) -> Vec<ServiceName> {
    let mut names = std::collections::BTreeSet::new();
    for dir in ["rollouts", "history"] {
        let Ok(entries) = std::fs::read_dir(data_dir.file(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(service) = file
                .strip_suffix(".rec")
                .and_then(|stem| ServiceName::parse(stem).ok())
            {
                names.insert(service);
            }
        }
    }
    names.into_iter().collect()
}

/// Adds `entry` to the history book of `service` (replacing an entry of the same rollout) and
/// returns the book. The book is returned even when saving it failed, with the error.
pub fn append_history(
    data_dir: &DataDir,
    service: &ServiceName,
    entry: HistoryEntry,
) -> (HistoryBook, Result<()>) {
    let name = history_name(service);
    let _ = std::fs::create_dir_all(data_dir.file("history"));
    let mut book = read_history(data_dir, service);
    book.entries.retain(|e| e.id != entry.id);
    book.entries.push(entry);
    let excess = book.entries.len().saturating_sub(HISTORY_KEPT);
    book.entries.drain(..excess);
    let saved = data_dir.write_record(&name, &book);
    (book, saved)
}

#[cfg(test)]
mod tests {
    use halley_proto::rollout::UnpinnedRolloutState;
    use halley_proto::spec::ServiceSpec;

    use super::*;

    fn unpinned(mode: Mode) -> UnpinnedRolloutJournal {
        let s = crate::scenario::rollout_state(Vec::new());
        UnpinnedRolloutJournal {
            state: UnpinnedRolloutState {
                id: s.id,
                service: s.service,
                mode,
                version: s.version,
                epoch: s.epoch,
                seq: s.seq,
                coordinator: s.coordinator,
                hosts: s.hosts,
                batch: s.batch,
                phase: s.phase,
                reason: s.reason,
                started_ms: s.started_ms,
                ended_ms: s.ended_ms,
            },
            spec: toml::from_str::<ServiceSpec>("command = [\"./app\"]\nlisten = \":8080\"\n")
                .unwrap(),
            sha256: [3; 32],
            file_name: "app".into(),
        }
    }

    #[test]
    fn a_journal_from_before_pins_is_read_with_a_deploys_pin_recomputed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let web = ServiceName::parse("web").unwrap();
        let old = unpinned(Mode::Deploy);
        std::fs::create_dir_all(dir.file("rollouts")).unwrap();
        dir.write_record(&journal_name(&web), &old).unwrap();
        let read = read_journal(&dir, &web).unwrap();
        assert_eq!(
            read.state.release,
            release_pin::pin(&old.spec, &old.sha256, &old.file_name)
        );
        assert!(read.state.release.is_some());
        assert_eq!((read.state.id.as_str(), &read.spec), ("r1", &old.spec));

        // A rollback's spec came from a host: it stays unpinned.
        dir.write_record(&journal_name(&web), &unpinned(Mode::Rollback))
            .unwrap();
        assert_eq!(read_journal(&dir, &web).unwrap().state.release, None);

        // And a journal written now reads back as written.
        write_journal(&dir, &read).unwrap();
        assert_eq!(read_journal(&dir, &web).unwrap(), read);
    }
}
