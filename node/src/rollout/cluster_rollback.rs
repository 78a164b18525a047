//! `halley-node rollback`: every live host of a service back on its previous committed release
//! (or a named one), all at once. No engine: each host walks start-next (a warm slot is reused)
//! → check → flip → drain → commit, is retried up to 3 times, and the outcome is published like
//! a rollout's so `follow`, `rollout status` and `history` show it.
//!
//! ## Guarantees
//! - It takes an epoch above every one seen, so an older rollout's steps are refused from then on.
//! - A host that cannot be rolled back is reported by name and why, with a non-zero exit; it does
//!   not hold the service's lock, so running `rollback` again retries it.

use std::sync::Arc;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, Step, StepReply};
use halley_proto::message::{ErrorKind, ErrorReply, MemberState, PeerReply, PeerRequest};
use halley_proto::rollout::{HistoryEntry, HostStep, Phase, RolloutState};
use halley_proto::spec::{RolloutPolicy, ServiceName};

use crate::clock::wall_ms;
use crate::error::internal;
use crate::rollout::context::Coordinator;
use crate::rollout::context::{LONG, Reply, SHORT};
use crate::rollout::history;
use crate::rollout::host_steps::walk;
use crate::rollout::lock::{new_state, next_epoch};

/// Puts every host that runs the service back on a release it has, all at once: its previous
/// committed release, or `to`. A host that fails is retried; the outcome is published like a
/// rollout's.
pub(crate) async fn rollback(
    node: &Coordinator,
    me: Arc<Coordinator>,
    service: &ServiceName,
    to: Option<ReleaseVersion>,
) -> Reply<String> {
    let hosts: Vec<NodeName> = node
        .cluster
        .members()
        .into_iter()
        .filter(|m| !matches!(m.state, MemberState::Dead | MemberState::Left))
        .filter(|m| m.services.iter().any(|(name, _)| name == service.as_str()))
        .map(|m| m.name)
        .collect();
    if hosts.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("no live node runs service {service}"),
        });
    }
    let epoch = next_epoch(node, service, &hosts).await;
    let shown = match &to {
        Some(v) => v.clone(),
        None => ReleaseVersion::parse("previous").map_err(|e| internal(&e.to_string()))?,
    };
    let mut state = new_state(
        node,
        service,
        &shown,
        epoch,
        &hosts,
        &RolloutPolicy::default(),
    );
    state.reason = match &to {
        Some(v) => format!("rollback to {v}"),
        None => "rollback to each host's previous release".into(),
    };
    for h in &mut state.hosts {
        h.step = HostStep::Reverting;
    }
    state.phase = Phase::RollingBack;
    let id = state.id.clone();
    let service = service.clone();
    tokio::spawn(async move {
        let shared = Arc::new(tokio::sync::Mutex::new(state));
        publish(&me, &shared).await;
        let mut tasks = tokio::task::JoinSet::new();
        for host in hosts {
            let (me, shared, service, to) =
                (me.clone(), shared.clone(), service.clone(), to.clone());
            tasks.spawn(async move {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let result = rollback_host(&me, &host, &service, to.as_ref(), epoch).await;
                    let done = result.is_ok() || attempts >= 3;
                    {
                        let mut state = shared.lock().await;
                        if let Some(h) = state.hosts.iter_mut().find(|h| h.node == host) {
                            h.attempts = attempts - 1;
                            match &result {
                                Ok(note) => {
                                    h.step = HostStep::Reverted;
                                    h.note = note.clone();
                                }
                                Err(why) if done => {
                                    h.step = HostStep::Failed;
                                    h.note = why.clone();
                                }
                                Err(why) => {
                                    h.note = format!("attempt {attempts} failed: {why}; retrying")
                                }
                            }
                        }
                    }
                    publish(&me, &shared).await;
                    if done {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let entry = {
            let mut state = shared.lock().await;
            let failed: Vec<String> = state
                .hosts
                .iter()
                .filter(|h| h.step != HostStep::Reverted)
                .map(|h| format!("{}: {}", h.node, h.note))
                .collect();
            state.ended_ms = Some(wall_ms());
            // Finished either way: a host that could not be rolled back is reported (non-zero
            // exit) but does not hold the service's lock; rolling back again retries it.
            state.phase = Phase::RolledBack;
            if !failed.is_empty() {
                state.reason = format!(
                    "rollback failed on {}; run 'halley-node rollback {}' again once they are reachable",
                    failed.join("; "),
                    state.service
                );
            }
            HistoryEntry::of(&state, wall_ms())
        };
        publish(&me, &shared).await;
        if entry.outcome.finished() {
            history::record(&me, &service, entry).await;
        }
    });
    Ok(id)
}

/// Publishes a cluster rollback's state (it has no engine and no journal: each host step is
/// itself durable on the host).
async fn publish(node: &Coordinator, state: &tokio::sync::Mutex<RolloutState>) {
    let state = {
        let mut s = state.lock().await;
        s.seq += 1;
        s.clone()
    };
    node.publish(&state).await;
}

/// One host of a cluster rollback: start-next (reusing a warm slot) → check → flip → drain →
/// commit, to `to` or the host's previous committed release.
async fn rollback_host(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
    to: Option<&ReleaseVersion>,
    epoch: u64,
) -> Result<String, String> {
    let status = match node.cluster.peer(host, PeerRequest::Services, SHORT).await {
        Ok(PeerReply::Services(list)) => list.into_iter().find(|s| &s.name == service),
        Ok(_) => None,
        Err(e) => return Err(e.to_string()),
    }
    .ok_or_else(|| format!("{host} does not run {service}"))?;
    let target = match to {
        Some(v) => v.clone(),
        None => status.previous.clone().ok_or_else(|| {
            format!(
                "{host} has no previous release of {service} (committed: {})",
                status
                    .committed
                    .as_ref()
                    .map_or("none".into(), |v| v.to_string())
            )
        })?,
    };
    let from = status
        .committed
        .as_ref()
        .map_or("nothing".into(), |v| v.to_string());
    let steps = vec![
        (
            Step::StartNext {
                version: target.clone(),
            },
            SHORT * 6,
        ),
        (Step::Check, LONG),
        (Step::Flip, SHORT),
        (Step::Drain, LONG),
        (Step::Commit, SHORT),
    ];
    let replies = walk(node, host, service, epoch, steps)
        .await
        .map_err(|e| e.to_string())?;
    let reused = replies
        .iter()
        .any(|(r, _)| matches!(r, StepReply::Started { reused: true, .. }));
    let flipped = replies
        .iter()
        .find(|(r, _)| matches!(r, StepReply::Flipped { .. }))
        .map_or(Duration::ZERO, |(_, at)| *at);
    let done = replies.last().map_or(Duration::ZERO, |(_, at)| *at);
    Ok(format!(
        "{from} -> {target} ({}); flipped after {} ms, done in {} ms",
        if reused {
            "its slot was warm: a flip"
        } else {
            "cold: start, check, flip"
        },
        flipped.as_millis(),
        done.as_millis()
    ))
}
