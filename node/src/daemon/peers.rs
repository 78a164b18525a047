//! A node's answers to peers' requests ([`PeerRequest`]): the operator's drain and rollouts'
//! drain holds, service statuses,
//! state work, artifact pieces, releases and this node's copy of a rollout.
//!
//! ## Guarantees
//! - Artifacts move in pieces of at most [`CHUNK`], each an RPC well under the frame limit; the
//!   receiver appends only at the length it holds, so a transfer cut by a dropped connection
//!   resumes where it stopped.
//! - A step or a `Watch` of a service counts as a coordinator's contact for that service (see
//!   `orphan_timeout`); status requests and other services' traffic do not.
//! - The mesh lets through only what the caller's role allows ([`PeerRequest::access`]): an
//!   admin's requests, and a member's fetch of a release or artifact. A worker gets a release
//!   (its spec carries the service's secrets) or an artifact only when the newest rollout of
//!   that service this node knows lists the worker as a host and is of that release: what a
//!   host that missed the rollout needs to converge, and nothing more.
//!
//! ## Non-goals
//! Which rollouts this node knows comes from gossip; that a worker cannot forge a rollout of
//! another node's in gossip is the gossip layer's concern, not checked here.

use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::FenceRecord;
use halley_proto::message::{ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::spec::ServiceName;
use halley_proto::{NodeName, Role};

use crate::daemon::node::Node;
use crate::error::{bad_request, internal};
use crate::store::releases::CHUNK;

/// Answers a peer's request.
/// `by` is the caller's certificate name (this node's own for an in-process call).
pub(crate) async fn answer(
    node: &Node,
    by: &NodeName,
    role: Role,
    request: PeerRequest,
) -> Result<PeerReply, ErrorReply> {
    if role != Role::Admin {
        check_member_fetch(node, by, role, &request).await?;
    }
    let releases = node.services.releases().clone();
    let blocking = |e: tokio::task::JoinError| internal(&format!("storage task failed: {e}"));
    match request {
        PeerRequest::SetDraining(draining) => {
            node.set_draining(draining).await?;
            Ok(PeerReply::Done)
        }
        PeerRequest::HoldDrain {
            service,
            epoch,
            ttl_ms,
        } => {
            let token = FenceRecord {
                epoch,
                coordinator: Some(by.clone()),
            };
            if !node.services.drains().hold(&service, token, ttl_ms) {
                return Err(ErrorReply {
                    kind: ErrorKind::StaleEpoch,
                    message: format!(
                        "drain refused: a newer rollout of {service} than epoch {epoch} of {by} holds this node"
                    ),
                });
            }
            node.cluster
                .publish_draining(|| node.services.drains().draining())
                .await?;
            Ok(PeerReply::Done)
        }
        PeerRequest::ReleaseDrain { service, epoch } => {
            let token = FenceRecord {
                epoch,
                coordinator: Some(by.clone()),
            };
            // A newer rollout's hold stays: only that rollout may end it.
            node.services.drains().release(&service, &token);
            node.cluster
                .publish_draining(|| node.services.drains().draining())
                .await?;
            Ok(PeerReply::Done)
        }
        PeerRequest::Services => Ok(PeerReply::Services(node.services.statuses().await)),
        PeerRequest::Watch(service) => Ok(PeerReply::Services(
            node.services.watch(&service).await.into_iter().collect(),
        )),
        PeerRequest::State(request) => crate::host::state::answer(&node.services, request)
            .await
            .map(PeerReply::State),
        PeerRequest::Forget {
            node: name,
            generation,
            heartbeat,
        } => crate::daemon::forget::forget_here(node, &name, generation, heartbeat),
        PeerRequest::Logs(request) => crate::host::logs::answer(&node.services, request)
            .await
            .map(PeerReply::Logs),
        PeerRequest::Upgrade { sha256 } => crate::daemon::upgrade_all::receive(node, sha256).await,
        PeerRequest::Binary => crate::daemon::upgrade_all::binary(node).await,
        PeerRequest::Fence(service) => Ok(PeerReply::Epoch(node.services.held_epoch(&service))),
        PeerRequest::RemovedList => Ok(crate::daemon::removal::list(node)),
        PeerRequest::Removed => {
            crate::daemon::removal::removed_here(node, by)?;
            Ok(PeerReply::Done)
        }
        // Answered by the request handler, which holds the caller's whole certificate.
        PeerRequest::RenewCertificate { .. } => Err(bad_request(
            "a certificate renewal comes over the mesh, with the certificate it renews",
        )),
        PeerRequest::ArtifactStatus { sha256 } => {
            let (received, complete) = releases.artifact_received(&sha256);
            Ok(PeerReply::Artifact { received, complete })
        }
        PeerRequest::PutArtifact {
            sha256,
            total,
            offset,
            data,
        } => {
            if data.len() > CHUNK {
                return Err(bad_request("artifact pieces are at most 1 MiB"));
            }
            let (received, complete) = tokio::task::spawn_blocking(move || {
                releases.put_chunk(&sha256, total, offset, &data)
            })
            .await
            .map_err(blocking)?
            .map_err(|e| bad_request(&e.to_string()))?;
            Ok(PeerReply::Artifact { received, complete })
        }
        PeerRequest::GetArtifact { sha256, offset } => {
            let (total, data) =
                tokio::task::spawn_blocking(move || releases.read_chunk(&sha256, offset, CHUNK))
                    .await
                    .map_err(blocking)?
                    .map_err(|e| ErrorReply {
                        kind: ErrorKind::NotFound,
                        message: e.to_string(),
                    })?;
            Ok(PeerReply::Chunk { total, data })
        }
        PeerRequest::Rollout(service) => {
            Ok(PeerReply::Rollout(node.coordinator.local_state(&service)))
        }
        PeerRequest::GetRelease { service, version } => {
            let entry = node
                .services
                .release(&service, &version)
                .await
                .ok_or_else(|| ErrorReply {
                    kind: ErrorKind::NotFound,
                    message: format!("node {} has no release {version} of {service}", node.name()),
                })?;
            Ok(PeerReply::Release {
                spec: Box::new(entry.spec),
                sha256: entry.sha256,
                file_name: entry.file_name,
            })
        }
    }
}

/// Refuses a non-admin's request unless it is a fetch of a release (or its artifact) of a
/// rollout that lists the caller as a host.
async fn check_member_fetch(
    node: &Node,
    by: &NodeName,
    role: Role,
    request: &PeerRequest,
) -> Result<(), ErrorReply> {
    let refuse = |why: String| ErrorReply {
        kind: ErrorKind::Unauthorised,
        message: format!("{} refused: node {by} is a {role}; {why}", request.kind()),
    };
    // Releases of the newest rollout of each service that lists the caller as a host.
    let hosted = || async {
        crate::rollout::status::rollouts(&node.coordinator, None)
            .await
            .into_iter()
            .filter(|r| r.hosts.iter().any(|h| &h.node == by))
            .map(|r| (r.service, r.version))
            .collect::<Vec<(ServiceName, ReleaseVersion)>>()
    };
    match request {
        PeerRequest::GetRelease { service, version } => {
            if hosted().await.contains(&(service.clone(), version.clone())) {
                return Ok(());
            }
            Err(refuse(format!(
                "a worker may fetch only a release that the newest rollout of its service deploys to it, and {service}'s newest rollout here does not deploy {version} to {by}"
            )))
        }
        PeerRequest::GetArtifact { sha256, .. } => {
            for (service, version) in hosted().await {
                if node
                    .services
                    .release(&service, &version)
                    .await
                    .is_some_and(|entry| &entry.sha256 == sha256)
                {
                    return Ok(());
                }
            }
            Err(refuse(
                "a worker may fetch only the artifact of a release that the newest rollout of its service deploys to it".into(),
            ))
        }
        _ => Err(refuse(format!("it needs {}", request.access().needs()))),
    }
}
