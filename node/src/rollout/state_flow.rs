//! The state part of a deploy, run by the rollout coordinator before any host is touched:
//! snapshot and verify on every state host, then the new release's migration once, on the first
//! state host; and, once the rollout is committed everywhere, its contract command.
//!
//! ## Guarantees
//! - Any failure here ends the deploy before the rollout starts: no host was drained, flipped
//!   or changed, and the error shows the failing command's output. Snapshots already taken stay
//!   listed (`halley-node backup list`).
//! - The migration runs from the new release's directory on the first state host (in rollout
//!   order), after the release is shipped and prepared there; at most once per release
//!   ([`crate::host::state`] keeps the record), so a retried deploy does not migrate again.
//! - A service never deployed on a state host has no data there: its snapshot is skipped and
//!   said so.
//!
//! ## Non-goals
//! Knowing whether a migration is backward compatible: that is the expand/contract discipline
//! in `docs/state.md`.

use std::sync::Arc;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::disk::RolloutJournal;
use halley_proto::message::{
    ErrorKind, ErrorReply, PeerReply, PeerRequest, StateReply, StateRequest,
};
use tracing::{info, warn};

use crate::error::error_reply;
use crate::rollout::context::Coordinator;
use crate::rollout::host_steps::HostCtx;

/// How long a snapshot (with its verification) or a migration may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(3600);

fn failed(message: String) -> ErrorReply {
    error_reply(ErrorKind::CheckFailed, message)
}

/// The state hosts of a rollout, in rollout order.
pub(crate) fn state_hosts(journal: &RolloutJournal, hosts: &[NodeName]) -> Vec<NodeName> {
    match &journal.spec.state {
        Some(state) => hosts
            .iter()
            .filter(|h| state.on.includes(h))
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

/// Snapshots, verification and the migration before a rollout; returns what was done.
pub(crate) async fn before_deploy(
    node: &Arc<Coordinator>,
    journal: &RolloutJournal,
    hosts: &[NodeName],
) -> Result<Vec<String>, ErrorReply> {
    let Some(state) = &journal.spec.state else {
        return Ok(Vec::new());
    };
    let service = &journal.state.service;
    let version = &journal.state.version;
    let on = state_hosts(journal, hosts);
    if on.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!(
                "no host of this rollout is in [service.{service}.state] on; name at least one host that holds the state"
            ),
        });
    }
    let mut notes = Vec::new();
    if state.has_snapshot() {
        for host in &on {
            let request = PeerRequest::State(StateRequest::Snapshot {
                service: service.clone(),
                spec: Some(Box::new(journal.spec.clone())),
                for_release: Some(version.clone()),
            });
            match node.cluster.peer(host, request, STATE_TIMEOUT).await {
                Ok(PeerReply::State(StateReply::Snapshot {
                    backup: Some(m),
                    note,
                })) => {
                    info!(%service, %host, backup = %m.id, bytes = m.size(), "snapshot taken and verified");
                    notes.push(format!(
                        "{host}: backup {} ({} bytes) taken and verified: {note}",
                        m.id,
                        m.size()
                    ));
                }
                Ok(PeerReply::State(StateReply::Snapshot { backup: None, note })) => {
                    notes.push(format!("{host}: {note}"));
                }
                Ok(_) => return Err(failed(format!("{host} answered a snapshot request oddly"))),
                Err(e) => {
                    return Err(failed(format!(
                        "the snapshot on {host} failed, so the deploy of {version} stopped before any host changed: {e}"
                    )));
                }
            }
        }
    }
    if state.migrate.is_some() {
        let first = &on[0];
        let ctx = HostCtx {
            node: node.clone(),
            host: first.clone(),
            journal: journal.clone(),
            baselines: Arc::default(),
        };
        ctx.prepare_release().await.map_err(|e| {
            failed(format!(
                "preparing {version} on {first} for its migration failed, so the deploy stopped before any host changed: {e}"
            ))
        })?;
        let request = PeerRequest::State(StateRequest::Migrate {
            service: service.clone(),
            version: version.clone(),
        });
        match node.cluster.peer(first, request, STATE_TIMEOUT).await {
            Ok(PeerReply::State(StateReply::Ran { already: true, .. })) => notes.push(format!(
                "{first}: the migration of {version} already ran there; not run again"
            )),
            Ok(PeerReply::State(StateReply::Ran { output, .. })) => {
                info!(%service, host = %first, %version, "migration ran");
                notes.push(format!(
                    "{first}: migration of {version} ran{}",
                    last_line(&output)
                ));
            }
            Ok(_) => {
                return Err(failed(format!(
                    "{first} answered a migration request oddly"
                )));
            }
            Err(e) => {
                return Err(failed(format!(
                    "the migration of {version} failed on {first}, so the deploy stopped before any traffic moved and no host serves {version}; the snapshot taken before it is kept ('halley-node backup list {service}'). {e}"
                )));
            }
        }
    }
    Ok(notes)
}

/// The contract command after a rollout committed everywhere; returns a line for the history.
pub(crate) async fn after_commit(
    node: &Arc<Coordinator>,
    journal: &RolloutJournal,
    hosts: &[NodeName],
) -> Option<String> {
    let state = journal.spec.state.as_ref()?;
    state.contract.as_ref()?;
    let first = state_hosts(journal, hosts).into_iter().next()?;
    let (service, version) = (&journal.state.service, &journal.state.version);
    let request = PeerRequest::State(StateRequest::Contract {
        service: service.clone(),
        version: version.clone(),
    });
    Some(
        match node.cluster.peer(&first, request, STATE_TIMEOUT).await {
            Ok(PeerReply::State(StateReply::Ran { already: true, .. })) => {
                format!("contract of {version} had already run on {first}")
            }
            Ok(_) => {
                info!(%service, host = %first, %version, "contract ran");
                format!("contract of {version} ran on {first}")
            }
            Err(e) => {
                warn!(%service, host = %first, %version, error = %e, "contract failed");
                format!("contract of {version} failed on {first}: {e}")
            }
        },
    )
}

fn last_line(output: &str) -> String {
    output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}
