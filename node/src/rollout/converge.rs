//! Convergence of a host that missed a rollout: a node that was skipped (unreachable on its turn,
//! `--skip-unreachable`, or dead when a rollback started) and comes back after the rollout
//! completed (or the rollback finished) brings each such service to the cluster's release by
//! itself.
//!
//! The rules are [`crate::engine::converge`]'s:
//! - Only a completed rollout counts, and only while it is the newest of its service: a running,
//!   paused or rolled-back one leaves the host as it is.
//! - The host must be listed in that rollout, not committed there, and its own committed release
//!   must differ. The release comes from this node if it has it, else from a host that committed
//!   it (spec and artifact over the mesh, the artifact checked against its SHA-256).
//! - A service whose newest rollout is a completed removal, and that this node still has, is
//!   removed here with the removal's token (refused, and so left alone, once a newer rollout
//!   of it reached this node).
//! - The host walks the same steps as a rollout (prepare, start-next, check, flip, drain, commit)
//!   with the rollout's fencing token (its epoch and coordinator); a failure stops and reverts,
//!   and is tried again on the next pass.

use halley_proto::deploy::{ArtifactSource, Step, StepRequest};
use halley_proto::rollout::RolloutState;
use halley_proto::spec::ServiceName;
use tracing::{info, warn};

use crate::engine::converge as engine;
use crate::engine::release_pin::{self, Offerer};
use crate::rollout::context::Coordinator;
use crate::rollout::context::LONG;
use crate::rollout::host_steps::{fetch_release, switch_to, walk};
use crate::rollout::status as rollout_status;

/// One pass: converges every service whose newest completed rollout skipped this node.
pub async fn converge(node: &Coordinator) {
    let rollouts = rollout_status::rollouts(node, None).await;
    let statuses = node.services.statuses().await;
    let local = |service: &ServiceName| {
        statuses
            .iter()
            .find(|s| &s.name == service)
            .map(|s| (s.committed.clone(), s.releases.clone()))
            .unwrap_or_default()
    };
    let held = |service: &ServiceName| {
        statuses
            .iter()
            .find(|s| &s.name == service)
            .map(|s| s.epoch)
    };
    for state in engine::removals(&rollouts, held) {
        remove_here(node, state).await;
    }
    for state in engine::missed(&rollouts, node.cluster.name(), local) {
        match catch_up(node, state).await {
            Ok(()) => {
                info!(service = %state.service, version = %state.version, rollout = %state.id, "converged to the release a rollout completed while this node was away")
            }
            Err(e) => {
                warn!(service = %state.service, version = %state.version, error = %e, "cannot converge yet; will try again")
            }
        }
    }
}

/// Removes a service a completed removal did not reach here, with that removal's token.
async fn remove_here(node: &Coordinator, state: &RolloutState) {
    let request = StepRequest {
        on_behalf_of: Some(state.coordinator.clone()),
        service: state.service.clone(),
        epoch: state.epoch,
        step: Step::Remove {
            purge: state.purges(),
        },
    };
    match node
        .cluster
        .step_on(node.cluster.name(), request, LONG)
        .await
    {
        Ok(_) => {
            info!(service = %state.service, rollout = %state.id, "removed the service: a removal completed while this node was away")
        }
        Err(e) => {
            warn!(service = %state.service, rollout = %state.id, error = %e, "cannot remove the service a removal completed yet; will try again")
        }
    }
}

async fn catch_up(node: &Coordinator, state: &RolloutState) -> Result<(), String> {
    // A release of that version this node holds counts only if it is the one pinned (the same
    // version string may have been deployed before with another spec).
    let local = node
        .services
        .release(&state.service, &state.version)
        .await
        .filter(|e| {
            release_pin::may_take(state, (&e.spec, &e.sha256, &e.file_name), Offerer::Itself)
        });
    let (spec, sha256, file_name) = match local {
        Some(entry) => (entry.spec, entry.sha256, entry.file_name),
        None => {
            let committed = engine::sources(state);
            let (spec, sha256, file_name, _) = fetch_release(node, state, &committed)
                .await
                .ok_or_else(|| {
                    format!(
                        "no reachable host has release {} of {}",
                        state.version, state.service
                    )
                })?;
            (spec, sha256, file_name)
        }
    };
    let rollback = state.mode == halley_proto::rollout::Mode::Rollback;
    let mut steps = vec![(
        Step::Prepare {
            spec: Box::new(spec.clone()),
            version: state.version.clone(),
            artifact: ArtifactSource::Stored { sha256, file_name },
        },
        LONG,
    )];
    steps.extend(switch_to(&state.version, rollback, &spec));
    // The steps carry the rollout's own token: a host that obeyed its coordinator at that
    // epoch would refuse this node's name below it.
    walk(
        node,
        node.cluster.name(),
        &state.service,
        (state.epoch, Some(&state.coordinator)),
        steps,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}
