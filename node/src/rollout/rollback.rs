//! `halley-node rollback`: every host of a service back on a release it ran before, all at once,
//! as a journaled rollout in rollback mode ([`crate::engine::rollback`] plans it,
//! [`crate::engine::rollout`] walks it, [`crate::rollout::driver`] drives it). Also each rollback
//! host's own steps.
//!
//! ## Guarantees
//! - Each host's target (`--to`, else its own previous committed release) is recorded in the
//!   journal and in gossip before any step reaches that host, so whichever node resumes the
//!   rollback sends each host to the same release, and a host already there is left as it is.
//! - The rollback takes an epoch above every one seen, so an older rollout's steps are refused
//!   from then on; it is resumed like any rollout (`deploy --resume`, or `rollback` again), and
//!   it retries a failing host up to `ROLLBACK_ATTEMPTS` times, then leaves it as it is (it
//!   converges when it comes back).
//!
//! ## Non-goals
//! A member that is dead when the rollback starts is skipped; it converges when it returns
//! ([`crate::rollout::converge`]).

use std::sync::Arc;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, ServiceStatus, StepReply};
use halley_proto::disk::RolloutJournal;
use halley_proto::message::{ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::rollout::RolloutState;
use halley_proto::spec::{RolloutPolicy, ServiceName, ServiceSpec};

use crate::clock::wall_ms;
use crate::engine::release_pin;
use crate::engine::rollback as plan;
use crate::engine::rollout::Rollout;
use crate::rollout::context::{Coordinator, Reply, SHORT};
use crate::rollout::driver::Driver;
use crate::rollout::host_steps::{switch_to, walk};
use crate::rollout::lock::{new_state, next_epoch};
use crate::store::journal;

/// Starts a rollback of `service` with this node as coordinator; returns its id once its first
/// state is journaled.
pub(crate) async fn start(
    node: &Arc<Coordinator>,
    service: &ServiceName,
    to: Option<ReleaseVersion>,
    skip_unreachable: bool,
) -> Reply<String> {
    let hosts = plan::hosts(&node.cluster.members(), service);
    if hosts.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("no node runs service {service}; nothing to roll back"),
        });
    }
    let mut targets = Vec::with_capacity(hosts.len());
    for (host, alive) in hosts {
        let target = match (&to, alive) {
            (Some(v), _) => Some(v.clone()),
            (None, true) => status_of(node, &host, service)
                .await
                .ok()
                .flatten()
                .and_then(|s| plan::target(&s, None)),
            (None, false) => None,
        };
        targets.push((host, alive, target));
    }
    let names: Vec<NodeName> = targets.iter().map(|(h, _, _)| h.clone()).collect();
    let epoch = next_epoch(node, service, &names).await;
    let fresh = new_state(
        node,
        service,
        &ReleaseVersion::parse("0").map_err(|e| crate::error::internal(&e.to_string()))?,
        epoch,
        &names,
        &RolloutPolicy::default(),
    );
    let mut state = plan::plan(fresh, &targets, to.as_ref(), wall_ms()).ok_or_else(|| ErrorReply {
        kind: ErrorKind::Unavailable,
        message: format!(
            "no host of {service} has a release to go back to, or none answered; nothing was changed. Check 'halley-node services' on its hosts, or name one with --to"
        ),
    })?;
    // Pinned only from this node's own store: a host's word about the release is a worker's
    // word as often as not.
    state.release = node
        .services
        .release(service, &state.version)
        .await
        .and_then(|e| release_pin::pin(&e.spec, &e.sha256, &e.file_name));
    let (spec, sha256, file_name) = release_for(node, &state).await?;
    let policy = crate::rollout::start::engine_policy(&spec.rollout, skip_unreachable);
    let id = state.id.clone();
    let mut engine = Rollout::new(state.clone(), policy);
    let actions = engine.start(wall_ms());
    let journal = RolloutJournal {
        state,
        spec,
        sha256,
        file_name,
    };
    Driver::spawn(node.clone(), journal, engine, actions).await;
    Ok(id)
}

/// The spec a rollback's journal records (its stop and health timeouts pace the host steps):
/// this node's journal of it, else the release it names from a host that has it, else this
/// node's own committed one. No artifact moves: every host goes back to a release it has.
pub(crate) async fn release_for(
    node: &Coordinator,
    state: &RolloutState,
) -> Reply<(ServiceSpec, [u8; 32], String)> {
    if let Ok(j) = journal::read_journal(&node.data_dir, &state.service)
        && j.state.id == state.id
    {
        return Ok((j.spec, j.sha256, j.file_name));
    }
    let mut asked: Vec<&NodeName> = vec![node.cluster.name()];
    asked.extend(state.hosts.iter().map(|h| &h.node));
    for host in asked {
        let version = state
            .hosts
            .iter()
            .find(|h| &h.node == host)
            .and_then(|h| h.target.clone())
            .unwrap_or_else(|| state.version.clone());
        let request = PeerRequest::GetRelease {
            service: state.service.clone(),
            version,
        };
        if let Ok(PeerReply::Release {
            spec,
            sha256,
            file_name,
        }) = node.cluster.peer(host, request, SHORT).await
        {
            return Ok((*spec, sha256, file_name));
        }
    }
    Err(ErrorReply {
        kind: ErrorKind::NotFound,
        message: format!(
            "no reachable host of {} has release {} to go back to; start one that has it",
            state.service, state.version
        ),
    })
}

/// The status of `service` on `host`: `Ok(None)` when the host does not run it.
pub(crate) async fn status_of(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
) -> Result<Option<ServiceStatus>, String> {
    match node.cluster.peer(host, PeerRequest::Services, SHORT).await {
        Ok(PeerReply::Services(list)) => Ok(list.into_iter().find(|s| &s.name == service)),
        Ok(other) => Err(format!("{host} answered a status request with {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Which release `host` goes back to, as it answers now: `Ok(None)` when it has none.
pub(crate) async fn resolve(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
) -> Result<Option<ReleaseVersion>, String> {
    Ok(status_of(node, host, service)
        .await?
        .and_then(|s| plan::target(&s, None)))
}

/// One host of a rollback: start-next (reusing a warm slot) → check → flip → drain → commit of
/// `target`. A host that already serves and committed `target` (a resumed rollback reached it
/// before) is left as it is.
pub(crate) async fn roll_back_host(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
    target: &ReleaseVersion,
    epoch: u64,
    spec: &ServiceSpec,
) -> Result<String, halley_proto::message::ErrorReply> {
    let status = status_of(node, host, service)
        .await
        .map_err(|e| crate::error::internal(&e))?
        .ok_or_else(|| ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("{host} does not run {service}"),
        })?;
    let from = status
        .committed
        .as_ref()
        .map_or("nothing".into(), |v| v.to_string());
    if status.committed.as_ref() == Some(target) && serves(&status, target) {
        return Ok(format!("already on {target}"));
    }
    let steps = switch_to(target, true, spec);
    let replies = walk(node, host, service, (epoch, None), steps)
        .await
        .map_err(|e| match e {
            crate::error::Error::Remote(reply) => reply,
            other => crate::error::internal(&other.to_string()),
        })?;
    let reused = replies
        .iter()
        .any(|(r, _)| matches!(r, StepReply::Started { reused: true, .. }));
    let at = |pick: fn(&StepReply) -> bool| {
        replies
            .iter()
            .find(|(r, _)| pick(r))
            .map_or(Duration::ZERO, |(_, at)| *at)
    };
    let flipped = at(|r| matches!(r, StepReply::Flipped { .. }));
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

/// Whether the active slot of `status` runs `version`.
fn serves(status: &ServiceStatus, version: &ReleaseVersion) -> bool {
    status.slots.iter().any(|s| {
        s.role == halley_proto::deploy::SlotRole::Active && s.version.as_ref() == Some(version)
    })
}
