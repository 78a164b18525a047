//! Starting a rollout on this node: `deploy` (store the artifact, take the lock and an epoch,
//! the state steps, then the driver), `deploy --resume` (take the newest unfinished rollout over
//! from the journal or from a host that has the release) and `rollback` (hand over to the
//! cluster rollback).
//!
//! ## Guarantees
//! - Nothing on any host changes before the lock is taken, the artifact is stored and the state
//!   steps (snapshots, migration) succeeded; any failure until then is the deploy's error.
//! - The id is returned once the rollout's first state is journaled and published; the rollout
//!   goes on in the background, so a closed terminal does not stop it.

use std::path::PathBuf;
use std::sync::Arc;

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::RolloutJournal;
use halley_proto::message::{ErrorKind, ErrorReply, MemberState};
use halley_proto::rollout::{Mode, Phase, RolloutKind, RolloutRequest, RolloutState};
use halley_proto::spec::{RolloutPolicy, ServiceName, ServiceSpec};
use tracing::info;

use crate::clock::wall_ms;
use crate::engine::lock;
use crate::engine::release_pin;
use crate::engine::rollout::{self as rollout_engine, Action, Event, Policy, Rollout};
use crate::error::internal;
use crate::rollout::context::{Coordinator, Reply};
use crate::rollout::driver::Driver;
use crate::rollout::host_steps::fetch_release;
use crate::rollout::lock::{
    commit_began, conflict, new_state, next_epoch, refuse_if_busy, seen_epochs,
};
use crate::rollout::rollback;
use crate::rollout::status as rollout_status;
use crate::store::journal;

/// Starts a rollout (or a resume, or a cluster rollback) with this node as coordinator.
/// Returns the rollout id once it is journaled; the rollout goes on in the background.
pub async fn start(
    node: &Arc<Coordinator>,
    request: RolloutRequest,
) -> Reply<(String, Vec<String>)> {
    let me = node.clone();
    let service = request.service.clone();
    // Plans, locks and resumes read the membership and gossip: not before they are whole.
    node.cluster.settled().await;
    // An abort tells this node's own driver; everything else starts a driver here.
    let _starting = match request.kind {
        RolloutKind::Abort => None,
        _ => Some(node.begin(&service)?),
    };
    match request.kind {
        RolloutKind::Deploy {
            spec,
            version,
            artifact,
            sha256,
        } => {
            refuse_unknown_hosts(node, &service, &spec)?;
            refuse_if_busy(node, &service, false).await?;
            let artifact = PathBuf::from(artifact);
            let releases = node.services.releases().clone();
            let path = artifact.clone();
            let sha = tokio::task::spawn_blocking(move || releases.store_local(&path, sha256))
                .await
                .map_err(|e| internal(&format!("storage task failed: {e}")))?
                .map_err(|e| ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                })?;
            let file_name = artifact
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hosts = plan(node, &spec);
            if hosts.is_empty() {
                return Err(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: format!(
                        "no node of this cluster is in `hosts` of service {service}; check `hosts` in halley.toml and 'halley-node status'"
                    ),
                });
            }
            let epoch = next_epoch(node, &service, &hosts).await;
            let state = RolloutState {
                release: release_pin::pin(&spec, &sha, &file_name),
                ..new_state(node, &service, &version, epoch, &hosts, &spec.rollout)
            };
            let id = state.id.clone();
            let journal = RolloutJournal {
                state,
                spec: *spec,
                sha256: sha,
                file_name,
            };
            // Snapshots and the migration come first: a failure there changes no host.
            let notes = crate::rollout::state_flow::before_deploy(&me, &journal, &hosts).await?;
            let policy = engine_policy(&journal.spec.rollout, request.skip_unreachable);
            let mut engine = Rollout::new(journal.state.clone(), policy);
            let now = wall_ms();
            let actions = engine.start(now);
            Driver::spawn(me, journal, engine, actions).await;
            Ok((id, notes))
        }
        RolloutKind::Resume { force } => {
            resume(node, me, &service, force, request.skip_unreachable)
                .await
                .map(|id| (id, Vec::new()))
        }
        RolloutKind::Abort => abort(node, &service).await.map(|id| (id, Vec::new())),
        RolloutKind::Rollback { to } => rollback(node, &service, to, request.skip_unreachable)
            .await
            .map(|id| (id, Vec::new())),
        RolloutKind::Remove { purge } => crate::rollout::remove::start(node, &service, purge).await,
    }
}

/// The hosts of a service in rollout order (see [`crate::engine::rollout::plan`]). Members that left
/// are not included; dead ones are (their turn pauses or skips).
/// Refuses a spec whose `hosts` names a node no member has, before anything changes.
fn refuse_unknown_hosts(
    node: &Coordinator,
    service: &ServiceName,
    spec: &ServiceSpec,
) -> Reply<()> {
    let known: Vec<NodeName> = node.cluster.members().into_iter().map(|m| m.name).collect();
    let unknown = rollout_engine::unknown_hosts(&spec.hosts, &known);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ErrorReply {
        kind: ErrorKind::BadRequest,
        message: rollout_engine::unknown_hosts_refusal(service, &unknown),
    })
}

fn plan(node: &Coordinator, spec: &ServiceSpec) -> Vec<NodeName> {
    let members: Vec<NodeName> = node
        .cluster
        .members()
        .into_iter()
        .filter(|m| m.state != MemberState::Left)
        .map(|m| m.name)
        .collect();
    crate::engine::rollout::plan(&spec.hosts, &spec.rollout.order, &members)
}

pub(crate) fn engine_policy(policy: &RolloutPolicy, skip_unreachable: bool) -> Policy {
    Policy {
        batch: policy.batch.max(1) as usize,
        drain_wait_ms: policy.drain_wait.0,
        bake_ms: policy.bake.0,
        pause_ms: policy.pause.0,
        max_failed_hosts: policy.max_failed_hosts.max(1) as usize,
        auto_rollback: policy.auto_rollback,
        skip_unreachable,
        retry_ms: 1000,
    }
}

/// Takes the newest unfinished rollout of a service over.
async fn resume(
    node: &Coordinator,
    me: Arc<Coordinator>,
    service: &ServiceName,
    force: bool,
    skip_unreachable: bool,
) -> Reply<String> {
    let newest = rollout_status::newest(node, service).await;
    let Some(state) = newest.filter(|s| !s.phase.finished()) else {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("service {service} has no unfinished rollout to resume"),
        });
    };
    let driven = state.phase != Phase::Paused && rollout_status::is_driven(node, &state).await;
    lock::may_resume(service, &state, node.cluster.name(), driven, force).map_err(conflict)?;
    let mut state = state;
    if commit_began(node, &state).await {
        rollout_engine::resume_committing(&mut state, wall_ms());
    }
    let release = match state.mode {
        Mode::Deploy => release_source(node, &state).await?,
        Mode::Rollback => rollback::release_for(node, &state).await?,
        Mode::Remove => {
            return Err(conflict(format!(
                "the unfinished rollout {} of {service} is a removal; run 'halley-node service remove {service}{}' again to finish it",
                state.id,
                if state.purges() { " --purge" } else { "" }
            )));
        }
    };
    Ok(take_over(&me, state, release, skip_unreachable, Rollout::resume).await)
}

/// `rollback`: the unfinished rollback of the service taken over when no coordinator drives it
/// (its coordinator died), else a new rollback once nothing else is unfinished.
async fn rollback(
    node: &Arc<Coordinator>,
    service: &ServiceName,
    to: Option<ReleaseVersion>,
    skip_unreachable: bool,
) -> Reply<String> {
    let newest = rollout_status::newest(node, service).await;
    let Some(state) = newest.filter(|s| s.mode == Mode::Rollback && !s.phase.finished()) else {
        refuse_if_busy(node, service, false).await?;
        return rollback::start(node, service, to, skip_unreachable).await;
    };
    if let Some(v) = &to
        && state
            .hosts
            .iter()
            .filter_map(|h| h.target.as_ref())
            .any(|t| t != v)
    {
        return Err(conflict(format!(
            "service {service} has an unfinished rollback {} to {}; it must finish first: run 'halley-node rollback {service}' without --to to continue it, then roll back to {v}",
            state.id, state.version
        )));
    }
    let driven = rollout_status::is_driven(node, &state).await;
    lock::may_resume(service, &state, node.cluster.name(), driven, false).map_err(conflict)?;
    let release = rollback::release_for(node, &state).await?;
    Ok(take_over(node, state, release, skip_unreachable, Rollout::resume).await)
}

/// Makes this node the coordinator of `state` with an epoch above every one seen, and drives
/// it from the actions `first` asks of the rebuilt engine.
async fn take_over(
    node: &Arc<Coordinator>,
    mut state: RolloutState,
    (spec, sha256, file_name): (ServiceSpec, [u8; 32], String),
    skip_unreachable: bool,
    first: impl FnOnce(&mut Rollout, u64) -> Vec<Action>,
) -> String {
    let hosts: Vec<NodeName> = state.hosts.iter().map(|h| h.node.clone()).collect();
    let seen = seen_epochs(node, &state.service, &hosts).await;
    state.epoch = lock::resume_epoch(state.epoch, seen);
    state.coordinator = node.cluster.name().clone();
    let id = state.id.clone();
    let policy = engine_policy(&spec.rollout, skip_unreachable);
    let journal = RolloutJournal {
        state: state.clone(),
        spec,
        sha256,
        file_name,
    };
    let mut engine = Rollout::new(state, policy);
    let actions = first(&mut engine, wall_ms());
    Driver::spawn(node.clone(), journal, engine, actions).await;
    id
}

/// `rollout abort`: stops the newest unfinished rollout of a service and reverts the hosts it
/// touched. This node's own driver is told; a rollout another node drives (or nobody does) is
/// taken over with a higher epoch, which fences its old coordinator.
async fn abort(node: &Arc<Coordinator>, service: &ServiceName) -> Reply<String> {
    let newest = rollout_status::newest(node, service).await;
    let Some(state) = newest.filter(|s| !s.phase.finished()) else {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("service {service} has no unfinished rollout to abort"),
        });
    };
    rollout_engine::abortable(&state).map_err(conflict)?;
    if &state.coordinator == node.cluster.name() && node.tell_driver(service, Event::Abort) {
        return Ok(state.id);
    }
    let _starting = node.begin(service)?;
    // Reverts need no release, but the journal records one: the rollout's, else this node's own.
    let release = match release_source(node, &state).await {
        Ok(found) => found,
        Err(e) => own_release(node, service).await.ok_or(e)?,
    };
    let mut state = state;
    if commit_began(node, &state).await {
        // Its coordinator stopped after it began committing: finish it, never revert it.
        rollout_engine::resume_committing(&mut state, wall_ms());
        let (id, version, coordinator) = (
            state.id.clone(),
            state.version.clone(),
            state.coordinator.clone(),
        );
        take_over(node, state, release, false, Rollout::resume).await;
        return Err(conflict(format!(
            "rollout {id} of {service} had begun committing {version} on its hosts before its coordinator {coordinator} could say so; this node completes it now (its hosts are asked to commit again), so there is nothing to abort. To go back, run 'halley-node rollback {service}'"
        )));
    }
    let abort = |engine: &mut Rollout, now| engine.step(Event::Abort, now);
    Ok(take_over(node, state, release, false, abort).await)
}

/// The committed release of `service` on this node.
async fn own_release(
    node: &Coordinator,
    service: &ServiceName,
) -> Option<(ServiceSpec, [u8; 32], String)> {
    let committed = node
        .services
        .statuses()
        .await
        .into_iter()
        .find(|s| &s.name == service)?
        .committed?;
    let entry = node.services.release(service, &committed).await?;
    Some((entry.spec, entry.sha256, entry.file_name))
}

/// The spec and artifact of the release a rollout rolls out: from this node's journal, else
/// from a host that prepared it (the artifact is copied into this node's store).
async fn release_source(
    node: &Coordinator,
    state: &RolloutState,
) -> Reply<(ServiceSpec, [u8; 32], String)> {
    let on_disk = journal::read_journal(&node.data_dir, &state.service).ok();
    for journal in on_disk.into_iter().chain(node.unsaved(&state.service)) {
        if journal.state.id == state.id
            && node
                .services
                .releases()
                .artifact_received(&journal.sha256)
                .1
        {
            return Ok((journal.spec, journal.sha256, journal.file_name));
        }
    }
    let mut sources: Vec<NodeName> = vec![node.cluster.name().clone()];
    sources.extend(
        state
            .hosts
            .iter()
            .filter(|h| h.step.touched())
            .map(|h| h.node.clone()),
    );
    if let Some((spec, sha256, file_name, from)) = fetch_release(node, state, &sources).await {
        info!(service = %state.service, %from, "took the release to resume from a host");
        return Ok((spec, sha256, file_name));
    }
    Err(ErrorReply {
        kind: ErrorKind::NotFound,
        message: format!(
            "no reachable node has release {} of {} to continue with; start a host that has it, or deploy again",
            state.version, state.service
        ),
    })
}
