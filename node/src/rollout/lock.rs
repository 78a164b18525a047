//! Taking a service for a rollout: the one-rollout-per-service lock and the epoch, from what
//! gossip, the newest rollout's coordinator and the hosts say. The decisions are
//! [`crate::engine::lock`]'s; this file gathers what they need.
//!
//! ## Guarantees
//! - A new rollout is refused while another of the service is unfinished, naming its
//!   coordinator, version and progress, and what to do.
//! - A new rollout's epoch is above every epoch gossip and the reachable hosts have seen.
//!
//! ## Non-goals
//! Consensus: two coordinators that check at the same moment can both pass (see the module
//! docs of [`crate::engine::lock`]).

use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::message::{ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::rollout::{HostProgress, HostStep, Mode, Phase, RolloutState};
use halley_proto::spec::{RolloutPolicy, ServiceName};

use crate::clock::wall_ms;
use crate::engine::lock;
use crate::rollout::context::{Coordinator, Reply};
use crate::rollout::status as rollout_status;

/// How long the newest rollout's coordinator and each host may take to answer.
const ASK: Duration = Duration::from_secs(3);

pub(crate) fn conflict(message: String) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Conflict,
        message,
    }
}

/// Refuses while another rollout of the service is unfinished.
pub(crate) async fn refuse_if_busy(
    node: &Coordinator,
    service: &ServiceName,
    force: bool,
) -> Reply<()> {
    let Some(mut current) = rollout_status::newest(node, service).await else {
        return Ok(());
    };
    if lock::ask_coordinator(&current, node.cluster.name()) {
        let fresh = match node
            .cluster
            .peer(
                &current.coordinator,
                PeerRequest::Rollout(service.clone()),
                ASK,
            )
            .await
        {
            Ok(PeerReply::Rollout(fresh)) => fresh,
            _ => None,
        };
        current = lock::fresher(current, fresh);
    }
    if !lock::blocks(&current, force) {
        return Ok(());
    }
    let driven = rollout_status::is_driven(node, &current).await;
    Err(conflict(lock::refusal(service, &current, driven)))
}

/// An epoch above every one gossip and the reachable hosts have seen for the service.
pub(crate) async fn next_epoch(
    node: &Coordinator,
    service: &ServiceName,
    hosts: &[NodeName],
) -> u64 {
    lock::next_epoch(seen_epochs(node, service, hosts).await)
}

/// The epochs gossip's newest rollout and the reachable hosts have seen for the service.
pub(crate) async fn seen_epochs(
    node: &Coordinator,
    service: &ServiceName,
    hosts: &[NodeName],
) -> Vec<u64> {
    let mut seen: Vec<u64> = rollout_status::newest(node, service)
        .await
        .map(|s| s.epoch)
        .into_iter()
        .collect();
    for host in hosts {
        let Ok(PeerReply::Services(list)) =
            node.cluster.peer(host, PeerRequest::Services, ASK).await
        else {
            continue;
        };
        if let Some(s) = list.iter().find(|s| &s.name == service) {
            seen.push(s.epoch);
            continue;
        }
        // Not running there: a removal may have left its token (gossip forgets the removal).
        if let Ok(PeerReply::Epoch(epoch)) = node
            .cluster
            .peer(host, PeerRequest::Fence(service.clone()), ASK)
            .await
        {
            seen.push(epoch);
        }
    }
    seen
}

/// Whether the coordinator of an unfinished deploy had begun committing it: the deploy is past
/// every host ([`crate::engine::rollout::deployed_everywhere`]) and a host it deployed answers
/// that it has committed the deploy's release. Only a coordinator past its last batch sends
/// commits, so the deploy had completed as far as its coordinator was concerned, even if that
/// coordinator died or froze before gossip carried the news. Hosts that do not answer (the
/// coordinator itself, often) do not count either way.
pub(crate) async fn commit_began(node: &Coordinator, state: &RolloutState) -> bool {
    if state.mode != Mode::Deploy || !crate::engine::rollout::deployed_everywhere(state) {
        return false;
    }
    let deployed = state
        .hosts
        .iter()
        .filter(|h| !matches!(h.step, HostStep::Skipped | HostStep::Failed));
    for host in deployed {
        if let Ok(PeerReply::Services(list)) = node
            .cluster
            .peer(&host.node, PeerRequest::Services, ASK)
            .await
            && list
                .iter()
                .any(|s| s.name == state.service && s.committed.as_ref() == Some(&state.version))
        {
            return true;
        }
    }
    false
}

/// The first state of a rollout this node coordinates.
pub(crate) fn new_state(
    node: &Coordinator,
    service: &ServiceName,
    version: &ReleaseVersion,
    epoch: u64,
    hosts: &[NodeName],
    policy: &RolloutPolicy,
) -> RolloutState {
    let now = wall_ms();
    let suffix = crate::random::bytes::<3>()
        .map(|b| halley_proto::hex::encode(&b))
        .unwrap_or_default();
    RolloutState {
        id: format!("{service}-{now}-{suffix}"),
        service: service.clone(),
        mode: Mode::Deploy,
        version: version.clone(),
        epoch,
        seq: 0,
        coordinator: node.cluster.name().clone(),
        hosts: hosts
            .iter()
            .map(|h| HostProgress::at(h.clone(), HostStep::Pending, now))
            .collect(),
        batch: policy.batch.max(1),
        phase: Phase::Running,
        reason: String::new(),
        started_ms: now,
        ended_ms: None,
        release: None,
    }
}
