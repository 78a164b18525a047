//! The running node as the one dispatcher of every request: a peer's over the mesh (joins, peer
//! calls, deploy steps, mesh hops), this node's own calls to itself (through the same
//! [`RequestHandler`]), and the CLI's over the admin socket. Each request goes to the layer that
//! owns it: [`Admission`], the [`ClusterClient`], the [`Services`], the [`Coordinator`].
//!
//! ## Guarantees
//! - A request reaches a handler only after the mesh checked the caller against its access rule
//!   ([`halley_proto::Message::access`]); this node's calls to itself skip the network, not the
//!   handler.
//! - [`Node::refresh`] is the one place that moves what the cluster says into this node's
//!   routing and what this node's services say into gossip.
//! - A worker's own operator cannot make it order anyone: rollouts, tokens, another node's drain
//!   and state work are refused on a worker's admin socket with a pointer to the admin nodes
//!   (the peers would refuse its certificate anyway; this says so before anything starts).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cluster::client::draining_pair;
use halley_proto::deploy::{ArtifactSource, Step, StepRequest};
use halley_proto::disk::NodeRecord;
use halley_proto::message::{
    AdminRequest, AdminResponse, CertificateStatus, ErrorKind, ErrorReply, MemberState, PeerReply,
    PeerRequest, StatusReport,
};
use halley_proto::{Message, NodeName, Role};
use tokio::sync::Notify;
use tracing::warn;

use crate::cluster::admission::Admission;
use crate::cluster::client::ClusterClient;
use crate::daemon::admin::AdminHandler;
use crate::error::{Error, bad_request, internal};
use crate::host::services::Services;
use crate::mesh::endpoint::RequestHandler;
use crate::mesh::pki::{CertFacts, PeerIdentity};
use crate::rollout::context::Coordinator;

/// The running node.
pub struct Node {
    pub(crate) record: NodeRecord,
    pub(crate) cluster: Arc<ClusterClient>,
    pub(crate) admission: Admission,
    pub(crate) services: Arc<Services>,
    pub(crate) coordinator: Arc<Coordinator>,
    leave: Notify,
    certificate: std::sync::RwLock<CertFacts>,
    /// Held while the list of removed nodes changes (see `daemon::removal`).
    pub(crate) removals: tokio::sync::Mutex<()>,
    /// The data dir's last measured use and free space, and until when it is reused.
    disk_use: tokio::sync::Mutex<Option<(std::time::Instant, DiskUse)>>,
    /// An `upgrade` asked, for the run loop.
    pub(crate) upgrades: crate::daemon::upgrade::Upgrades,
}

/// Bytes a data dir takes, and bytes free on its file system if known.
type DiskUse = (u64, Option<u64>);

/// How long a measure of the data dir's disk use is reused, as a multiple of the time the walk
/// took, within [`DISK_USE_REUSE`]: walking a large data dir on an SD card takes a while and
/// scrapes come every 15 s or so, but a small one is measured afresh every few seconds.
const DISK_USE_REUSE_FACTOR: u32 = 20;
const DISK_USE_REUSE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(3),
    std::time::Duration::from_secs(60),
);

impl Node {
    /// The node, with its parts made by the daemon.
    pub fn new(
        record: NodeRecord,
        cluster: Arc<ClusterClient>,
        admission: Admission,
        services: Arc<Services>,
        coordinator: Arc<Coordinator>,
        certificate: CertFacts,
    ) -> Self {
        Self {
            record,
            cluster,
            admission,
            services,
            coordinator,
            leave: Notify::new(),
            certificate: std::sync::RwLock::new(certificate),
            removals: tokio::sync::Mutex::new(()),
            disk_use: tokio::sync::Mutex::new(None),
            upgrades: crate::daemon::upgrade::Upgrades::default(),
        }
    }

    /// This node's certificate as it presents it now.
    pub(crate) fn certificate(&self) -> CertFacts {
        match self.certificate.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// When this node's certificate expires and when it renews it.
    pub(crate) fn certificate_status(&self) -> CertificateStatus {
        let c = self.certificate();
        CertificateStatus {
            expires_ms: c.expires_ms,
            renews_ms: crate::engine::renewal::due(c.issued_ms, c.expires_ms),
        }
    }

    /// Bytes the data dir takes on disk and bytes free on its file system, reused for a while
    /// (see [`DISK_USE_REUSE_FACTOR`]; one caller measures, the others wait for its figure).
    pub(crate) async fn disk_use(&self) -> DiskUse {
        let mut last = self.disk_use.lock().await;
        if let Some((until, figures)) = *last
            && std::time::Instant::now() < until
        {
            return figures;
        }
        let started = std::time::Instant::now();
        let root = self.data_dir().root().to_path_buf();
        let figures = tokio::task::spawn_blocking(move || {
            use crate::store::disk_use;
            (disk_use::bytes_used(&root), disk_use::bytes_free(&root))
        })
        .await
        .unwrap_or((0, None));
        let reuse =
            (started.elapsed() * DISK_USE_REUSE_FACTOR).clamp(DISK_USE_REUSE.0, DISK_USE_REUSE.1);
        *last = Some((std::time::Instant::now() + reuse, figures));
        figures
    }

    /// Records a renewed certificate.
    pub(crate) fn set_certificate(&self, facts: CertFacts) {
        match self.certificate.write() {
            Ok(mut g) => *g = facts,
            Err(p) => *p.into_inner() = facts,
        }
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.record.name
    }

    /// This node's data dir.
    pub(crate) fn data_dir(&self) -> &crate::store::datadir::DataDir {
        &self.coordinator.data_dir
    }

    /// Stops the daemon as `leave` does.
    pub(crate) fn request_leave(&self) {
        self.leave.notify_one();
    }

    /// Resolves when an admin `leave` was requested.
    pub async fn leave_requested(&self) {
        self.leave.notified().await
    }

    /// Pulls gossip into the membership view and every service's routing table, and publishes
    /// this node's service summaries and draining flag.
    pub async fn refresh(&self) {
        if !self.cluster.gossip.is_running() {
            return;
        }
        let rows = self.cluster.refresh().await;
        self.services.cluster().update(&self.record.name, &rows);
        let published = self.services.gossip().await;
        // Holders change without a request too: an orphaned deploy ends its hold, and a dead
        // coordinator's hold expires.
        self.services.drains().expire();
        let drains = self.services.drains();
        self.cluster
            .gossip
            .replace_then(
                Some(halley_proto::gossip::SERVICE_KEY_PREFIX),
                published,
                || vec![draining_pair(drains.draining())],
            )
            .await;
    }

    /// The operator's `drain` / `undrain` of this node (a rollout's hold outlives `undrain`).
    pub(crate) async fn set_draining(&self, on: bool) -> Result<(), ErrorReply> {
        // Saved first: a drain the next start would forget must not look done.
        let record = halley_proto::disk::DrainRecord { manual: on };
        self.services
            .data_dir()
            .write_record(crate::store::datadir::DRAIN, &record)
            .map_err(|e| {
                internal(&format!(
                    "cannot save the drain, so nothing changed: {e}; free space in the data dir and try again"
                ))
            })?;
        self.services.drains().set_manual(on);
        self.cluster
            .publish_draining(|| self.services.drains().draining())
            .await
    }

    /// Refuses `what` on a worker, naming the admin nodes that can do it.
    fn admin_only(&self, what: &str) -> Result<(), ErrorReply> {
        if self.record.role == Role::Admin {
            return Ok(());
        }
        let admins: Vec<String> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| {
                m.role == Role::Admin.as_str()
                    && matches!(m.state, MemberState::Alive | MemberState::Draining)
            })
            .map(|m| m.name.to_string())
            .collect();
        let on = if admins.is_empty() {
            "an admin node".to_owned()
        } else {
            format!("an admin node ({})", admins.join(", "))
        };
        Err(ErrorReply {
            kind: ErrorKind::Unauthorised,
            message: format!(
                "{what} refused: this node ({}) is a {}, and only an admin may {what}; run it on {on}",
                self.name(),
                self.record.role
            ),
        })
    }

    /// [`Self::admin_only`], unless `node` is this one.
    fn admin_only_unless_self(&self, node: &NodeName, what: &str) -> Result<(), ErrorReply> {
        if node == self.name() {
            return Ok(());
        }
        self.admin_only(what)
    }

    async fn status(&self) -> AdminResponse {
        self.refresh().await;
        AdminResponse::Status(StatusReport {
            cluster_id: self.record.cluster_id.clone(),
            self_name: self.record.name.clone(),
            members: self.cluster.members(),
            mesh: self.cluster.mesh().map(|m| m.stats()).unwrap_or_default(),
            certificate: self.certificate_status(),
            data_dir_bytes: self.disk_use().await.0,
        })
    }

    /// A request of the CLI's for another node, forwarded over the mesh; `answer` turns the
    /// peer's reply into the CLI's (`None`: an answer of the wrong kind).
    async fn forward(
        &self,
        node: &NodeName,
        request: PeerRequest,
        timeout: std::time::Duration,
        answer: impl FnOnce(PeerReply) -> Option<AdminResponse>,
    ) -> Result<AdminResponse, ErrorReply> {
        let kind = request.kind();
        match self.cluster.peer(node, request, timeout).await {
            Ok(reply) => answer(reply)
                .ok_or_else(|| internal(&format!("unexpected answer to a {kind} request"))),
            Err(Error::Remote(reply)) => Err(reply),
            Err(e) => Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: format!("node {node}: {e}"),
            }),
        }
    }
}

/// Whether a step would read a file of this host by a path the caller chose: allowed only from
/// the admin socket and this node's own rollouts, or any peer could have this node copy any file
/// it can read (the CA key included) into its artifact store and fetch it back.
fn names_a_local_path(step: &StepRequest) -> bool {
    matches!(
        &step.step,
        Step::Prepare {
            artifact: ArtifactSource::LocalPath { .. },
            ..
        }
    )
}

#[async_trait::async_trait]
impl RequestHandler for Node {
    async fn handle(
        &self,
        caller: Option<PeerIdentity>,
        remote: SocketAddr,
        request: Message,
    ) -> Message {
        match request {
            Message::JoinRequest(join) => {
                match self.admission.join(&self.cluster, join, remote).await {
                    Ok(reply) => Message::JoinResponse(reply),
                    Err(reply) => {
                        warn!(from = %remote, caller = ?caller.map(|c| c.name), kind = ?reply.kind, "join refused");
                        Message::ErrorReply(reply)
                    }
                }
            }
            Message::Peer(PeerRequest::RenewCertificate { csr_der }) => {
                // Name, role and address come from the certificate the caller called with.
                let Some(caller) = caller else {
                    return Message::ErrorReply(bad_request(
                        "this node renews its own certificate with its CA key, not by a request",
                    ));
                };
                match self.admission.renew(&caller, &csr_der) {
                    Ok(cert_der) => Message::PeerReply(PeerReply::Certificate { cert_der }),
                    Err(reply) => Message::ErrorReply(reply),
                }
            }
            Message::Peer(request) => {
                // An in-process call is this node's own, an admin's by construction.
                let (by, role) =
                    caller.map_or_else(|| (self.name().clone(), Role::Admin), |c| (c.name, c.role));
                match crate::daemon::peers::answer(self, &by, role, request).await {
                    Ok(reply) => Message::PeerReply(reply),
                    Err(reply) => Message::ErrorReply(reply),
                }
            }
            Message::Step(step) => {
                if caller.is_some() && names_a_local_path(&step) {
                    return Message::ErrorReply(ErrorReply {
                        kind: ErrorKind::Unauthorised,
                        message: "prepare refused: an artifact given as a path on this host may come only from this node's own admin socket; a peer sends the artifact (put-artifact) and prepares it as stored".into(),
                    });
                }
                // The token's owner is who the certificate says called; an in-process call
                // (no certificate) is this node's own.
                let by = match caller {
                    Some(c) => c.name,
                    None => step
                        .on_behalf_of
                        .clone()
                        .unwrap_or_else(|| self.name().clone()),
                };
                match self.services.step(step, by).await {
                    Ok(reply) => Message::StepReply(reply),
                    Err(reply) => Message::ErrorReply(reply),
                }
            }
            other => {
                Message::ErrorReply(bad_request(&format!("{} is not a request", other.kind())))
            }
        }
    }

    async fn proxy(
        &self,
        open: halley_proto::message::ProxyOpen,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let routes = self.services.cluster().get(&open.service);
        crate::proxy::hop_server::accept(routes, open, send, recv).await;
    }
}

#[async_trait::async_trait]
impl AdminHandler for Node {
    async fn upgrade(&self, binary: Option<String>, all: bool, cli: tokio::net::UnixStream) {
        if all {
            crate::daemon::upgrade_all::coordinate(self, binary, cli).await;
        } else {
            crate::daemon::upgrade::ask(&self.upgrades, binary, Some(cli)).await;
        }
    }

    async fn admin(&self, request: AdminRequest) -> AdminResponse {
        let done = |r: Result<(), ErrorReply>| r.map(|()| AdminResponse::Done);
        let result = match request {
            AdminRequest::Status => Ok(self.status().await),
            AdminRequest::CreateToken {
                ttl_secs,
                uses,
                role,
            } => {
                let grant = crate::engine::tokens::Grant {
                    ttl_secs,
                    uses,
                    role,
                };
                self.admission.create_token(&self.cluster, grant).await
            }
            AdminRequest::SetDraining {
                node: None,
                draining,
            } => done(self.set_draining(draining).await),
            AdminRequest::SetDraining {
                node: Some(node),
                draining,
            } => {
                async {
                    self.admin_only_unless_self(&node, "drain another node")?;
                    done(self.cluster.set_draining_of(&node, draining).await)
                }
                .await
            }
            AdminRequest::Rollout(request) => {
                async {
                    self.admin_only("coordinate a rollout")?;
                    crate::rollout::start::start(&self.coordinator, request)
                        .await
                        .map(|(id, notes)| AdminResponse::RolloutStarted { id, notes })
                }
                .await
            }
            AdminRequest::State {
                node: None,
                request,
            } => crate::host::state::answer(&self.services, request)
                .await
                .map(AdminResponse::State),
            AdminRequest::State {
                node: Some(node),
                request,
            } => {
                async {
                    self.admin_only_unless_self(&node, "work on another node's state")?;
                    // A backup or restore of a large service takes a while.
                    let timeout = std::time::Duration::from_secs(3600);
                    self.forward(&node, PeerRequest::State(request), timeout, |r| match r {
                        PeerReply::State(s) => Some(AdminResponse::State(s)),
                        _ => None,
                    })
                    .await
                }
                .await
            }
            AdminRequest::Forget { node } => {
                async {
                    self.admin_only("forget a node")?;
                    crate::daemon::forget::forget(self, &node).await
                }
                .await
            }
            AdminRequest::Logs {
                node: None,
                request,
            } => crate::host::logs::answer(&self.services, request)
                .await
                .map(AdminResponse::Logs),
            AdminRequest::Logs {
                node: Some(node),
                request,
            } => {
                async {
                    self.admin_only_unless_self(&node, "read another node's logs")?;
                    let timeout = std::time::Duration::from_secs(30);
                    self.forward(&node, PeerRequest::Logs(request), timeout, |r| match r {
                        PeerReply::Logs(l) => Some(AdminResponse::Logs(l)),
                        _ => None,
                    })
                    .await
                }
                .await
            }
            AdminRequest::RolloutStatus(service) => Ok(AdminResponse::Rollouts(
                crate::rollout::status::rollouts(&self.coordinator, service.as_ref()).await,
            )),
            AdminRequest::RolloutDriven(service) => {
                let newest = crate::rollout::status::newest(&self.coordinator, &service).await;
                let driven = match &newest {
                    Some(state) if !state.phase.finished() => {
                        crate::rollout::status::is_driven(&self.coordinator, state).await
                    }
                    _ => false,
                };
                Ok(AdminResponse::Driven {
                    id: newest.map(|s| s.id),
                    driven,
                })
            }
            AdminRequest::History(service) => Ok(AdminResponse::History(
                crate::rollout::status::history(&self.coordinator, &service).await,
            )),
            AdminRequest::Remove { node, force } => {
                async {
                    self.admin_only("remove a node")?;
                    crate::daemon::removal::remove(self, node, force).await
                }
                .await
            }
            AdminRequest::Leave => {
                self.leave.notify_one();
                Ok(AdminResponse::Done)
            }
            AdminRequest::Step(step) => {
                // The local operator (the admin socket is 0600) may act for the coordinator
                // whose token the host holds, as the node's own convergence does.
                let by = step
                    .on_behalf_of
                    .clone()
                    .unwrap_or_else(|| self.name().clone());
                self.services.step(step, by).await.map(AdminResponse::Step)
            }
            AdminRequest::Services => Ok(AdminResponse::Services(self.services.statuses().await)),
        };
        result.unwrap_or_else(AdminResponse::Error)
    }
}
