//! `halley-node service remove SERVICE [--purge]`: the service stopped on every host and its
//! entry point freed, as a journaled rollout in remove mode ([`Mode::Remove`]).
//!
//! ## Guarantees
//! - Refused while another rollout of the service is unfinished (an unfinished removal, whose
//!   coordinator died, is taken over instead), before anything changes.
//! - The removal takes an epoch above every one seen and is journaled and published before any
//!   host is told, so a rollout older than it is refused by every host it reached, and a host
//!   it could not reach (down, or failing) removes the service itself once it sees the removal
//!   completed ([`crate::rollout::converge`]). A deploy after the removal is a newer rollout:
//!   from then on nobody removes the service for the old removal.
//! - Every reachable host is told at once; each stops both slots, closes the entry point and
//!   deletes the service's files ([`crate::host::removal`]). The data directory and backups stay
//!   unless `--purge`.
//!
//! ## Non-goals
//! Undoing: a removal has no rollback. Hosts that join after the removal never had the service.

use std::sync::Arc;

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, Step, StepReply, StepRequest};
use halley_proto::disk::RolloutJournal;
use halley_proto::message::{ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::rollout::{
    HistoryEntry, HostStep, Mode, REMOVE_KEEP_DATA, REMOVE_PURGE, RolloutState,
};
use halley_proto::spec::{RolloutPolicy, ServiceName, ServiceSpec};

use crate::clock::wall_ms;
use crate::engine::removal as engine;
use crate::engine::rollback as plan;
use crate::error::internal;
use crate::rollout::context::{Coordinator, Reply, SHORT};
use crate::rollout::lock::{conflict, new_state, next_epoch, refuse_if_busy};
use crate::rollout::rollback::status_of;
use crate::rollout::status as rollout_status;
use crate::store::journal;

/// How long a host may take to delete a removed service's files (a purge of a large data
/// directory on an SD card), past stopping its processes.
const DELETING: std::time::Duration = std::time::Duration::from_secs(120);

/// Removes `service` from every host; returns the removal's id and a line per host, once every
/// reachable host has answered.
pub(crate) async fn start(
    node: &Arc<Coordinator>,
    service: &ServiceName,
    purge: bool,
) -> Reply<(String, Vec<String>)> {
    let newest = rollout_status::newest(node, service).await;
    let unfinished_removal = newest
        .as_ref()
        .filter(|s| s.mode == Mode::Remove && !s.phase.finished());
    match unfinished_removal {
        // Its coordinator died: this removal takes it over. One still driven is waited for.
        Some(s) if rollout_status::is_driven(node, s).await => {
            return Err(conflict(crate::engine::lock::refusal(service, s, true)));
        }
        Some(_) => {}
        None => refuse_if_busy(node, service, false).await?,
    }
    let members = node.cluster.members();
    let hosts = engine::hosts(
        plan::hosts(&members, service),
        &members,
        newest.as_ref(),
        purge,
    );
    if hosts.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!(
                "no node of this cluster runs service {service}; nothing was changed ('halley-node services' lists what runs where)"
            ),
        });
    }
    let spec = spec_of(node, service, &hosts).await?;
    let names: Vec<NodeName> = hosts.iter().map(|(h, _)| h.clone()).collect();
    let epoch = next_epoch(node, service, &names).await;
    let what = if purge {
        REMOVE_PURGE
    } else {
        REMOVE_KEEP_DATA
    };
    let version = ReleaseVersion::parse(what).map_err(|e| internal(&e.to_string()))?;
    let mut state = RolloutState {
        mode: Mode::Remove,
        batch: u32::try_from(names.len()).unwrap_or(u32::MAX),
        ..new_state(
            node,
            service,
            &version,
            epoch,
            &names,
            &RolloutPolicy::default(),
        )
    };
    let now = wall_ms();
    for (h, (_, alive)) in state.hosts.iter_mut().zip(&hosts) {
        (h.step, h.note) = if *alive {
            (HostStep::Deploying, "removing".into())
        } else {
            (
                HostStep::Skipped,
                format!("unreachable: it removes {service} itself when it is back"),
            )
        };
        h.since_ms = now;
    }
    let id = state.id.clone();
    // The artifact the journal this one replaces kept here (a coordinator serves it to hosts),
    // and when that journal was last written.
    let replaced = journal::read_journal(&node.data_dir, service)
        .ok()
        .zip(
            std::fs::metadata(node.data_dir.file(&journal::journal_name(service)))
                .and_then(|m| m.modified())
                .ok(),
        )
        .map(|(j, at)| (j.sha256, at));
    let mut journal = RolloutJournal {
        state,
        spec,
        sha256: [0; 32],
        file_name: String::new(),
    };
    save(node, &mut journal).await.map_err(|e| {
        internal(&format!(
            "cannot journal the removal, so nothing was changed: {e}; free space in the data dir and try again"
        ))
    })?;
    // A host stops its slots by their own `kill_after`, then waits a little for them to go.
    let limit =
        journal.spec.stop.kill_after.as_duration() + crate::host::removal::EXIT_GRACE + DELETING;
    let mut told = tokio::task::JoinSet::new();
    for (host, _) in hosts.iter().filter(|(_, alive)| *alive) {
        let (node, host, service) = (node.clone(), host.clone(), service.clone());
        told.spawn(async move { remove_on(&node, &host, &service, (epoch, purge), limit).await });
    }
    let answers = told.join_all().await;
    let notes = finish(node, &mut journal, answers).await;
    if let Some(used) = replaced {
        let data_dir = node.data_dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || crate::store::sweep::forget(&data_dir, &[used]))
                .await;
    }
    Ok((id, notes))
}

/// Records each host's answer, ends the removal (fenced when a newer rollout owns a host), and
/// writes its history line.
async fn finish(
    node: &Coordinator,
    journal: &mut RolloutJournal,
    answers: Vec<(NodeName, Result<String, ErrorReply>)>,
) -> Vec<String> {
    let now = wall_ms();
    let notes = engine::conclude(&mut journal.state, answers, now);
    if let Err(e) = save(node, journal).await {
        tracing::warn!(service = %journal.state.service, error = %e, "cannot journal the end of a removal");
    }
    let entry = HistoryEntry::of(&journal.state, now);
    crate::rollout::history::record(node, &journal.state.service, entry).await;
    notes
}

/// Journals the state one `seq` on, and publishes it (even when the journal fails).
async fn save(node: &Coordinator, journal: &mut RolloutJournal) -> crate::error::Result<()> {
    journal.state.seq += 1;
    let written = journal::write_journal(&node.data_dir, journal);
    node.publish(&journal.state).await;
    written
}

/// Tells `host` to remove the service; the answer is a line for the output.
async fn remove_on(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
    (epoch, purge): (u64, bool),
    limit: std::time::Duration,
) -> (NodeName, Result<String, ErrorReply>) {
    let request = StepRequest {
        on_behalf_of: None,
        service: service.clone(),
        epoch,
        step: Step::Remove { purge },
    };
    let answer = match node.cluster.step_on(host, request, limit).await {
        Ok(StepReply::Removed { stopped, purged }) => Ok(format!(
            "removed: {} process(es) stopped, entry point closed, {}",
            stopped.len(),
            if purged {
                "data and backups deleted"
            } else {
                "data kept"
            }
        )),
        Ok(other) => Err(internal(&format!(
            "{host} answered a removal with {other:?}"
        ))),
        Err(crate::error::Error::Remote(reply)) => Err(reply),
        Err(e) => Err(ErrorReply {
            kind: ErrorKind::Unavailable,
            message: e.to_string(),
        }),
    };
    (host.clone(), answer)
}

/// The spec the removal's journal records (it is a rollout journal; nothing runs by it): this
/// node's journal of the service, else the committed release's from a host that has it.
async fn spec_of(
    node: &Coordinator,
    service: &ServiceName,
    hosts: &[(NodeName, bool)],
) -> Reply<ServiceSpec> {
    if let Ok(j) = journal::read_journal(&node.data_dir, service) {
        return Ok(j.spec);
    }
    for (host, _) in hosts.iter().filter(|(_, alive)| *alive) {
        let Ok(Some(status)) = status_of(node, host, service).await else {
            continue;
        };
        let Some(version) = status.committed.or(status.releases.last().cloned()) else {
            continue;
        };
        let request = PeerRequest::GetRelease {
            service: service.clone(),
            version,
        };
        if let Ok(PeerReply::Release { spec, .. }) = node.cluster.peer(host, request, SHORT).await {
            return Ok(*spec);
        }
    }
    Err(ErrorReply {
        kind: ErrorKind::Unavailable,
        message: format!(
            "no host of {service} answered with its spec, so nothing was changed; start one of its hosts, or run the removal where a rollout of it was coordinated"
        ),
    })
}
