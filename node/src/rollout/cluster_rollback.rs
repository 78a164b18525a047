//! `halley-node rollback`: every live host of a service back on its previous committed release
//! (or a named one), all at once. The decisions (who takes part, what each goes back to,
//! retries, the outcome) are [`crate::engine::cluster_rollback`]'s; this driver runs each host's
//! steps (start-next, a warm slot reused → check → flip → drain → commit) and publishes the state
//! like a rollout's, so `follow`, `rollout status` and `history` show it.
//!
//! ## Guarantees
//! - It takes an epoch above every one seen, so an older rollout's steps are refused from then on.
//! - A host that cannot be rolled back is reported by name and why, with a non-zero exit; it does
//!   not hold the service's lock, so running `rollback` again retries it.
//!
//! ## Non-goals
//! Surviving the coordinator's death: the rollback has no journal (see the engine's known bugs).

use std::sync::Arc;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, Step, StepReply};
use halley_proto::message::{ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::spec::{RolloutPolicy, ServiceName};
use tokio::sync::mpsc;

use crate::clock::wall_ms;
use crate::engine::cluster_rollback::{self as engine, Action, ClusterRollback};
use crate::error::internal;
use crate::rollout::context::{Coordinator, LONG, Reply, SHORT};
use crate::rollout::history;
use crate::rollout::host_steps::walk;
use crate::rollout::lock::{new_state, next_epoch};

/// Attempts per host, and the wait between them.
const ATTEMPTS: u32 = 3;
const RETRY_MS: u64 = 1000;

/// Puts every host that runs the service back on a release it has, all at once: its previous
/// committed release, or `to`. A host that fails is retried; the outcome is published like a
/// rollout's.
pub(crate) async fn rollback(
    node: &Arc<Coordinator>,
    service: &ServiceName,
    to: Option<ReleaseVersion>,
) -> Reply<String> {
    let hosts = engine::hosts(&node.cluster.members(), service);
    if hosts.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("no live node runs service {service}"),
        });
    }
    let epoch = next_epoch(node, service, &hosts).await;
    let shown = engine::shown_version(to.as_ref()).map_err(|e| internal(&e))?;
    let state = new_state(
        node,
        service,
        &shown,
        epoch,
        &hosts,
        &RolloutPolicy::default(),
    );
    let rollback = ClusterRollback::new(state, to.as_ref(), ATTEMPTS, RETRY_MS);
    let id = rollback.state().id.clone();
    tokio::spawn(drive(node.clone(), rollback, to, epoch));
    Ok(id)
}

/// One host attempt's way back to the driver: answered once, with a failure if its task ends
/// (panics, is cancelled) before it answered.
struct Answer {
    host: Option<NodeName>,
    done: mpsc::UnboundedSender<(NodeName, Result<String, String>)>,
}

impl Answer {
    fn send(&mut self, result: Result<String, String>) {
        if let Some(host) = self.host.take() {
            let _ = self.done.send((host, result));
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.send(Err("its rollback task ended without an answer".into()));
    }
}

/// Runs the engine's actions until it records the outcome.
async fn drive(
    node: Arc<Coordinator>,
    mut rollback: ClusterRollback,
    to: Option<ReleaseVersion>,
    epoch: u64,
) {
    let service = rollback.state().service.clone();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(NodeName, Result<String, String>)>();
    let mut actions = rollback.start();
    loop {
        for action in std::mem::take(&mut actions) {
            match action {
                Action::Publish(state) => node.publish(&state).await,
                Action::Run { host, after_ms } => {
                    let (node, service, to, done) =
                        (node.clone(), service.clone(), to.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        // A task that dies without an answer still reports, so the rollback ends.
                        let mut answer = Answer {
                            host: Some(host.clone()),
                            done,
                        };
                        tokio::time::sleep(Duration::from_millis(after_ms)).await;
                        let result =
                            rollback_host(&node, &host, &service, to.as_ref(), epoch).await;
                        answer.send(result);
                    });
                }
                Action::Record(entry) => {
                    history::record(&node, &service, entry).await;
                    return;
                }
            }
        }
        let Some((host, result)) = done_rx.recv().await else {
            return;
        };
        actions = rollback.attempted(&host, result, wall_ms());
    }
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
    let target = engine::target(host, &status, to)?;
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
