//! Node-to-node requests of a rollout coordinator, both sides: calling a peer (or this node
//! itself, without the network) and answering a peer's [`PeerRequest`].
//!
//! ## Guarantees
//! - A call to this node's own name never leaves the process, so a coordinator deploys to itself
//!   exactly as to any other host.
//! - Artifacts move in pieces of at most 1 MiB, each an RPC well under the frame limit; the
//!   receiver appends only at the length it holds, so a transfer cut by a dropped connection
//!   resumes where it stopped.
//! - Peer requests are only accepted from callers whose certificate has the `node` role (the
//!   mesh checks `Message::access`).

use std::time::Duration;

use halley_proto::deploy::{StepReply, StepRequest};
use halley_proto::message::{AdminResponse, ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::{Message, NodeName};

use crate::daemon::node::{NodeService, bad_request, internal};
use crate::error::{Error, Result};

/// The largest artifact piece sent in one request.
pub const CHUNK: usize = 1 << 20;

impl NodeService {
    /// Sends a peer request to `node` (handled in-process when it is this node).
    pub async fn peer(
        &self,
        node: &NodeName,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply> {
        if node == self.name() {
            return self.handle_peer(request).await.map_err(Error::Remote);
        }
        match self.call(node, Message::Peer(request), timeout).await? {
            Message::PeerReply(reply) => Ok(reply),
            other => Err(Error::Protocol(format!(
                "{node} answered a peer request with {}",
                other.kind()
            ))),
        }
    }

    /// Runs a deploy step on `node` (in-process when it is this node).
    pub async fn step_on(
        &self,
        node: &NodeName,
        request: StepRequest,
        timeout: Duration,
    ) -> Result<StepReply> {
        if node == self.name() {
            return self.services.step(request).await.map_err(Error::Remote);
        }
        match self.call(node, Message::Step(request), timeout).await? {
            Message::StepReply(reply) => Ok(reply),
            other => Err(Error::Protocol(format!(
                "{node} answered a deploy step with {}",
                other.kind()
            ))),
        }
    }

    async fn call(&self, node: &NodeName, message: Message, timeout: Duration) -> Result<Message> {
        let addr = self.member_addr(node).ok_or_else(|| {
            Error::Net(format!(
                "node {node} is not reachable (dead, gone or unknown to this node)"
            ))
        })?;
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| Error::Net("the mesh is not running yet".into()))?;
        mesh.request(addr, &message, timeout).await
    }

    /// Sets the draining flag of `node`, here or remotely.
    pub(crate) async fn set_draining_of(
        &self,
        node: &NodeName,
        draining: bool,
    ) -> std::result::Result<AdminResponse, ErrorReply> {
        self.peer(
            node,
            PeerRequest::SetDraining(draining),
            Duration::from_secs(10),
        )
        .await
        .map(|_| AdminResponse::Done)
        .map_err(|e| match e {
            Error::Remote(reply) => reply,
            other => ErrorReply {
                kind: ErrorKind::Unavailable,
                message: other.to_string(),
            },
        })
    }

    /// Answers a peer's request.
    pub(crate) async fn handle_peer(
        &self,
        request: PeerRequest,
    ) -> std::result::Result<PeerReply, ErrorReply> {
        self.services.touch();
        let releases = self.services.releases().clone();
        let blocking = |e: tokio::task::JoinError| internal(&format!("storage task failed: {e}"));
        match request {
            PeerRequest::SetDraining(draining) => {
                self.set_draining(draining).await?;
                Ok(PeerReply::Done)
            }
            PeerRequest::Services => Ok(PeerReply::Services(self.services.statuses().await)),
            PeerRequest::State(request) => self.state(request).await.map(PeerReply::State),
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
                let (total, data) = tokio::task::spawn_blocking(move || {
                    releases.read_chunk(&sha256, offset, CHUNK)
                })
                .await
                .map_err(blocking)?
                .map_err(|e| ErrorReply {
                    kind: ErrorKind::NotFound,
                    message: e.to_string(),
                })?;
                Ok(PeerReply::Chunk { total, data })
            }
            PeerRequest::Rollout(service) => {
                let state = self
                    .rollouts
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&service).cloned());
                Ok(PeerReply::Rollout(state))
            }
            PeerRequest::GetRelease { service, version } => {
                let entry = self
                    .services
                    .release(&service, &version)
                    .await
                    .ok_or_else(|| ErrorReply {
                        kind: ErrorKind::NotFound,
                        message: format!(
                            "node {} has no release {version} of {service}",
                            self.name()
                        ),
                    })?;
                Ok(PeerReply::Release {
                    spec: Box::new(entry.spec),
                    sha256: entry.sha256,
                    file_name: entry.file_name,
                })
            }
        }
    }
}
