//! What every node knows of rollouts: the states coordinators publish in gossip
//! (`rollout:NAME`), the local coordinator's own fuller copy, and the history lines
//! (`hist:NAME`). This is what `rollout status`, `history`, the one-rollout-per-service lock and
//! `deploy --resume` read.
//!
//! ## Guarantees
//! - For each service the newest state wins, by (epoch, seq): a resumed rollout (higher epoch)
//!   replaces the dead coordinator's, whatever gossip still holds of it.
//! - Nothing here changes a rollout.
//! - A gossiped rollout state or history line counts only as its coordinator's own word, and
//!   never from a node whose certificate says worker ([`crate::engine::gossip_trust`]).

use std::collections::BTreeMap;

use halley_proto::gossip::{HISTORY_KEY_PREFIX, ROLLOUT_KEY_PREFIX};
use halley_proto::rollout::{HistoryEntry, RolloutState};
use halley_proto::spec::ServiceName;
use halley_proto::{NodeName, Role};

use crate::engine::gossip_trust;
use crate::rollout::context::Coordinator;

/// The newest state of each rollout known here (one per service), optionally for one service.
pub async fn rollouts(node: &Coordinator, service: Option<&ServiceName>) -> Vec<RolloutState> {
    let mut newest: BTreeMap<ServiceName, RolloutState> = BTreeMap::new();
    let mut offer = |state: RolloutState| {
        if service.is_some_and(|s| s != &state.service) {
            return;
        }
        match newest.get(&state.service) {
            // On a tie the local copy (offered first) wins: it carries the host notes.
            Some(old) if (old.epoch, old.seq) >= (state.epoch, state.seq) => {}
            _ => {
                newest.insert(state.service.clone(), state);
            }
        }
    };
    let local: Vec<RolloutState> = node
        .rollouts
        .lock()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    for state in local {
        offer(state);
    }
    for (who, _, key, value) in node.cluster.gossip.values(ROLLOUT_KEY_PREFIX).await {
        let Ok(name) = ServiceName::parse(key.trim_start_matches(ROLLOUT_KEY_PREFIX)) else {
            continue;
        };
        if let Ok(state) = RolloutState::from_gossip(&name, &value)
            && gossip_trust::counts(&who, certified(node, &who), &state.coordinator)
        {
            offer(state);
        }
    }
    newest.into_values().collect()
}

/// The role `who`'s certificate showed this node, if it has connected.
fn certified(node: &Coordinator, who: &NodeName) -> Option<Role> {
    node.cluster.mesh()?.certified_role(who)
}

/// The newest rollout of one service.
pub async fn newest(node: &Coordinator, service: &ServiceName) -> Option<RolloutState> {
    rollouts(node, Some(service)).await.into_iter().next()
}

/// A service's rollout history from every coordinator, oldest first.
pub async fn history(node: &Coordinator, service: &ServiceName) -> Vec<HistoryEntry> {
    let key = format!("{HISTORY_KEY_PREFIX}{service}");
    let mut by_id: BTreeMap<String, HistoryEntry> = BTreeMap::new();
    for (who, _, k, value) in node.cluster.gossip.values(HISTORY_KEY_PREFIX).await {
        if k != key || !gossip_trust::may_speak(certified(node, &who)) {
            continue;
        }
        for entry in value.lines().filter_map(HistoryEntry::from_line) {
            by_id.insert(entry.id.clone(), entry);
        }
    }
    let mut entries: Vec<HistoryEntry> = by_id.into_values().collect();
    entries.sort_by_key(|e| e.started_ms);
    entries
}

/// Whether a coordinator is driving `state` now: this node's own driver, or a live generation
/// of the coordinator still publishing that rollout (a coordinator that died, even if its node
/// has restarted since, is not).
pub async fn is_driven(node: &Coordinator, state: &RolloutState) -> bool {
    if &state.coordinator == node.cluster.name() {
        return node
            .active
            .lock()
            .map(|s| s.contains_key(&state.service))
            .unwrap_or(false);
    }
    let key = format!("{ROLLOUT_KEY_PREFIX}{}", state.service);
    node.cluster
        .gossip
        .values(ROLLOUT_KEY_PREFIX)
        .await
        .into_iter()
        .any(|(who, live, k, value)| {
            live && who == state.coordinator
                && k == key
                && RolloutState::from_gossip(&state.service, &value)
                    .is_ok_and(|s| s.id == state.id && !s.phase.finished())
        })
}
