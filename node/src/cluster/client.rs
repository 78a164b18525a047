//! The cluster client: what code that coordinates or hosts needs of the cluster, instead of the
//! whole node. It holds this node's name, the mesh, the membership view, gossip (where it
//! publishes this node's draining flag), and a way to call this node itself through the same request handler peers
//! reach over the mesh.
//!
//! ## Guarantees
//! - A call to this node's own name never leaves the process and is answered by the same
//!   handler a peer's request reaches, so a coordinator deploys to itself exactly as to any other
//!   host.
//! - A call to a member that is dead, gone or unknown fails at once with that reason, without a
//!   connection attempt.
//!
//! ## Non-goals
//! Authorising requests (the mesh checks [`halley_proto::Message::access`] before a handler
//! sees a peer's request) and answering them (the daemon's dispatcher does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tracing::{info, warn};

use chitchat::Chitchat;
use halley_proto::deploy::{StepReply, StepRequest};
use halley_proto::gossip::{self, KEY_DRAINING, KEY_LEFT};
use halley_proto::message::{
    ErrorKind, ErrorReply, MemberRow, MemberState, PeerReply, PeerRequest,
};
use halley_proto::{Message, NodeName};

use crate::clock::wall_ms;
use crate::cluster::gossip::Gossip;
use crate::engine::membership::{MembershipView, Unforgettable};
use crate::error::{Error, Result, internal};
use crate::mesh::endpoint::{Mesh, RequestHandler};

/// This node's view of the cluster and its way to reach any member.
pub struct ClusterClient {
    name: NodeName,
    advertise: SocketAddr,
    view: Mutex<MembershipView>,
    started: Instant,
    /// The gossip state.
    pub gossip: Gossip,
    mesh: OnceLock<Arc<Mesh>>,
    local: OnceLock<Weak<dyn RequestHandler>>,
    /// How long after its start this node's membership view may still miss live members.
    settle: Duration,
    /// Gossip addresses this node knew of when it started (its saved peers): planning waits,
    /// for a bounded time, until each of them is heard of again.
    expected: Mutex<Vec<SocketAddr>>,
}

/// How many times `settle` planning waits at most for saved peers that nobody mentions (they
/// may have left for good while this node was down).
const SETTLE_BOUND: u32 = 5;

/// The gossip key and value of a draining flag.
pub fn draining_pair(draining: bool) -> (String, String) {
    (KEY_DRAINING.to_owned(), gossip::flag(draining).to_owned())
}

impl ClusterClient {
    /// A client for node `name`.
    pub fn new(name: NodeName, advertise: SocketAddr, suspect_after_ms: u64) -> Self {
        Self {
            settle: Duration::from_millis(suspect_after_ms),
            view: Mutex::new(MembershipView::new(name.clone(), suspect_after_ms)),
            name,
            advertise,
            started: Instant::now(),
            gossip: Gossip::default(),
            mesh: OnceLock::new(),
            local: OnceLock::new(),
            expected: Mutex::new(Vec::new()),
        }
    }

    /// Records the members this node knew of before it started (its saved peers), so that
    /// [`ClusterClient::settled`] waits until each is heard of again.
    pub fn expect(&self, addrs: &[SocketAddr]) {
        if let Ok(mut expected) = self.expected.lock() {
            *expected = addrs
                .iter()
                .filter(|a| **a != self.advertise)
                .copied()
                .collect();
        }
    }

    /// Connects to gossip and the mesh once both run.
    pub fn attach(&self, chitchat: Arc<tokio::sync::Mutex<Chitchat>>, mesh: Arc<Mesh>) {
        self.gossip.attach(chitchat);
        let _ = self.mesh.set(mesh);
    }

    /// Sets the handler that answers this node's calls to itself (the daemon's dispatcher).
    pub fn set_local(&self, handler: Weak<dyn RequestHandler>) {
        let _ = self.local.set(handler);
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// The mesh, once it runs.
    pub fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.get()
    }

    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Waits until this node's membership view is whole: it has been up for `suspect_after`
    /// and has heard again of every member it knew before it started. A rollout planned by a
    /// node that just restarted would otherwise see only the members gossip has brought so far
    /// and leave the others out. A saved peer nobody mentions (it may have left while this node
    /// was down) is waited for at most `SETTLE_BOUND` × `suspect_after` after the start.
    pub async fn settled(&self) {
        let bound = self.settle * SETTLE_BOUND;
        let mut told = false;
        loop {
            let up = self.started.elapsed();
            let missing = self.missing_expected().await;
            if up >= self.settle && missing.is_empty() {
                return;
            }
            if up >= bound {
                warn!(
                    missing = ?missing,
                    "planning without members this node knew before its restart: nobody has mentioned them since"
                );
                return;
            }
            if !told {
                told = true;
                info!(
                    missing = missing.len(),
                    "waiting for gossip to bring every member before planning"
                );
            }
            let wait = if up < self.settle {
                self.settle - up
            } else {
                Duration::ZERO
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100)).min(bound - up)).await;
        }
    }

    /// The saved peers the membership view has not heard of yet, in any state.
    async fn missing_expected(&self) -> Vec<SocketAddr> {
        let known: std::collections::BTreeSet<SocketAddr> =
            self.refresh().await.into_iter().map(|r| r.addr).collect();
        self.expected
            .lock()
            .map(|e| e.iter().filter(|a| !known.contains(a)).copied().collect())
            .unwrap_or_default()
    }

    /// Pulls gossip into the membership view; returns every member as it now stands.
    pub async fn refresh(&self) -> Vec<MemberRow> {
        let Some(snapshot) = self.gossip.observations().await else {
            return self.members();
        };
        let now = self.mono_ms();
        let rows = match self.view.lock() {
            Ok(mut view) => {
                view.observe(snapshot, now);
                view.rows(now, wall_ms())
            }
            Err(_) => Vec::new(),
        };
        self.mark_removed(rows)
    }

    /// Every member the view knows, with its state (`removed` for a name an admin removed).
    pub fn members(&self) -> Vec<MemberRow> {
        let now = self.mono_ms();
        let rows = self
            .view
            .lock()
            .map(|v| v.rows(now, wall_ms()))
            .unwrap_or_default();
        self.mark_removed(rows)
    }

    fn mark_removed(&self, mut rows: Vec<MemberRow>) -> Vec<MemberRow> {
        let Some(mesh) = self.mesh() else {
            return rows;
        };
        for row in &mut rows {
            if mesh.is_revoked(&row.name) {
                row.state = MemberState::Removed;
            }
        }
        rows
    }

    /// Drops a dead, left or removed member from the view; returns the generation forgotten.
    pub fn forget(&self, name: &NodeName) -> std::result::Result<(u64, u64), Unforgettable> {
        let removed = self.mesh().is_some_and(|m| m.is_revoked(name));
        let now = self.mono_ms();
        match self.view.lock() {
            Ok(mut view) => view.forget(name, removed, now),
            Err(p) => p.into_inner().forget(name, removed, now),
        }
    }

    /// Leaves `name` out at `generation` up to `heartbeat` (a forget loaded from disk, or an
    /// admin's).
    pub fn remember_forgotten(&self, name: NodeName, generation: u64, heartbeat: u64) {
        match self.view.lock() {
            Ok(mut view) => view.remember_forgotten(name, generation, heartbeat),
            Err(p) => p
                .into_inner()
                .remember_forgotten(name, generation, heartbeat),
        }
    }

    /// Every name forgotten here, with its newest forgotten generation and heartbeat.
    pub fn forgotten(&self) -> Vec<(NodeName, u64, u64)> {
        match self.view.lock() {
            Ok(view) => view.forgotten(),
            Err(p) => p.into_inner().forgotten(),
        }
    }

    /// The mesh address of a member that is not dead or gone.
    pub fn member_addr(&self, name: &NodeName) -> Option<SocketAddr> {
        self.members()
            .into_iter()
            .find(|r| &r.name == name)
            .filter(|r| {
                !matches!(
                    r.state,
                    MemberState::Dead | MemberState::Left | MemberState::Removed
                )
            })
            .map(|r| r.addr)
    }

    /// Gossip addresses of the other members not known to be dead or gone.
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        let now = self.mono_ms();
        self.view
            .lock()
            .map(|v| v.peer_addrs(now))
            .unwrap_or_default()
    }

    /// The address of a live node named `name`, if one is known.
    pub fn live_holder_of(&self, name: &NodeName) -> Option<SocketAddr> {
        let now = self.mono_ms();
        self.view.lock().ok()?.live_holder_of(name, now)
    }

    /// Sends a peer request to `node` (answered in-process when it is this node).
    pub async fn peer(
        &self,
        node: &NodeName,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply> {
        match self.call(node, Message::Peer(request), timeout).await? {
            Message::PeerReply(reply) => Ok(reply),
            Message::ErrorReply(reply) => Err(Error::Remote(reply)),
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
        match self.call(node, Message::Step(request), timeout).await? {
            Message::StepReply(reply) => Ok(reply),
            Message::ErrorReply(reply) => Err(Error::Remote(reply)),
            other => Err(Error::Protocol(format!(
                "{node} answered a deploy step with {}",
                other.kind()
            ))),
        }
    }

    async fn call(&self, node: &NodeName, message: Message, timeout: Duration) -> Result<Message> {
        if node == &self.name {
            let handler = self.local.get().and_then(Weak::upgrade).ok_or_else(|| {
                Error::Net(
                    "this node's request handler is not running (it is starting or stopping)"
                        .into(),
                )
            })?;
            return Ok(handler.handle(None, self.advertise, message).await);
        }
        let addr = self.member_addr(node).ok_or_else(|| {
            Error::Net(format!(
                "node {node} is not reachable (dead, gone or unknown to this node)"
            ))
        })?;
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| Error::Net("the mesh is not running yet".into()))?;
        match mesh.request(addr, node, &message, timeout).await? {
            Message::ErrorReply(reply) => Err(Error::Remote(reply)),
            other => Ok(other),
        }
    }

    /// Publishes this node's draining flag in gossip (who holds it is the host layer's),
    /// reading it with `draining` under the gossip lock so that the newest value wins.
    pub async fn publish_draining(
        &self,
        draining: impl FnOnce() -> bool,
    ) -> std::result::Result<(), ErrorReply> {
        if !self.gossip.is_running() {
            return Err(internal("gossip is not running yet"));
        }
        self.gossip
            .publish_all_then(Vec::new(), || vec![draining_pair(draining())])
            .await;
        Ok(())
    }

    /// Sets the draining flag of `node`, here or remotely.
    pub async fn set_draining_of(
        &self,
        node: &NodeName,
        draining: bool,
    ) -> std::result::Result<(), ErrorReply> {
        self.peer(
            node,
            PeerRequest::SetDraining(draining),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|e| match e {
            Error::Remote(reply) => reply,
            other => ErrorReply {
                kind: ErrorKind::Unavailable,
                message: other.to_string(),
            },
        })
    }

    /// Marks this node as left in gossip (the daemon then pushes it to every peer).
    pub async fn announce_leave(&self) {
        self.gossip
            .publish(KEY_LEFT.to_owned(), gossip::flag(true).to_owned())
            .await;
    }
}
