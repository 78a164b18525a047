//! The running node's shared state and its answers to mesh requests (joins) and admin requests.
//!
//! It owns the membership view, the token book and (on the node that ran `init`) the CA key. The
//! daemon driver feeds it chitchat snapshots; request handlers read and change it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chitchat::{Chitchat, ChitchatId};
use halley_proto::disk::{NodeRecord, TokenBook};
use halley_proto::gossip::{
    self, KEY_CA_HOLDER, KEY_DRAINING, KEY_LEFT, KEY_STARTED_MS, KEY_VERSION,
};
use halley_proto::message::{
    AdminRequest, AdminResponse, ErrorKind, ErrorReply, JoinRequest, JoinResponse, MemberState,
    StatusReport,
};
use halley_proto::rollout::RolloutState;
use halley_proto::spec::ServiceName;
use halley_proto::{Message, NodeName, Role};
use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::daemon::admin::AdminHandler;
use crate::engine::membership::{Liveness, MembershipView, Observation};
use crate::engine::tokens;
use crate::host::services::Services;
use crate::mesh::endpoint::{Mesh, RequestHandler};
use crate::mesh::pki::{ClusterCa, PeerIdentity};
use crate::store::datadir::{DataDir, TOKENS};

/// Unix time in milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The running node's state.
pub struct NodeService {
    pub(crate) record: NodeRecord,
    pub(crate) data_dir: DataDir,
    ca: Option<ClusterCa>,
    ca_der: CertificateDer<'static>,
    tokens: tokio::sync::Mutex<TokenBook>,
    view: Mutex<MembershipView>,
    started: Instant,
    pub(crate) chitchat: OnceLock<Arc<tokio::sync::Mutex<Chitchat>>>,
    pub(crate) mesh: OnceLock<Arc<Mesh>>,
    leave: Notify,
    pub(crate) services: Services,
    draining: Arc<AtomicBool>,
    me: OnceLock<Weak<NodeService>>,
    /// Rollouts this node coordinates (or coordinated since it started), by service.
    pub(crate) rollouts: Mutex<HashMap<ServiceName, RolloutState>>,
    /// Services whose rollout driver runs in this node now.
    pub(crate) active_drivers: Mutex<HashSet<ServiceName>>,
}

impl NodeService {
    /// State for a node about to start.
    pub fn new(
        record: NodeRecord,
        data_dir: DataDir,
        ca: Option<ClusterCa>,
        ca_der: CertificateDer<'static>,
        tokens: TokenBook,
        suspect_after_ms: u64,
        services: Services,
    ) -> Self {
        let draining = services.draining();
        let view = MembershipView::new(record.name.clone(), suspect_after_ms);
        Self {
            record,
            data_dir,
            ca,
            ca_der,
            tokens: tokio::sync::Mutex::new(tokens),
            view: Mutex::new(view),
            started: Instant::now(),
            chitchat: OnceLock::new(),
            mesh: OnceLock::new(),
            leave: Notify::new(),
            services,
            draining,
            me: OnceLock::new(),
            rollouts: Mutex::default(),
            active_drivers: Mutex::default(),
        }
    }

    /// Gives the service a handle on itself, for the tasks it spawns (rollouts).
    pub fn set_self(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// This service as an `Arc`, once the daemon has set it.
    pub(crate) fn arc(&self) -> Option<Arc<NodeService>> {
        self.me.get().and_then(Weak::upgrade)
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.record.name
    }

    /// The mesh address of a member that is not dead or gone.
    pub fn member_addr(&self, name: &NodeName) -> Option<SocketAddr> {
        let now = self.mono_ms();
        let rows = self.view.lock().ok()?.rows(now, wall_ms());
        rows.into_iter()
            .find(|r| &r.name == name)
            .filter(|r| !matches!(r.state, MemberState::Dead | MemberState::Left))
            .map(|r| r.addr)
    }

    /// Every member the view knows, with its state.
    pub fn members(&self) -> Vec<halley_proto::message::MemberRow> {
        let now = self.mono_ms();
        self.view
            .lock()
            .map(|v| v.rows(now, wall_ms()))
            .unwrap_or_default()
    }

    /// Values of gossip keys starting with `prefix`, from every node and generation:
    /// `(node, live, key, value)`, where `live` says the failure detector holds that node
    /// generation alive (a restarted node's old generation is not).
    pub async fn gossip_values(&self, prefix: &str) -> Vec<(NodeName, bool, String, String)> {
        let Some(chitchat) = self.chitchat.get() else {
            return Vec::new();
        };
        let chitchat = chitchat.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        // A restarted node's new generation supersedes the old one at once, before the failure
        // detector declares the old one dead.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for id in chitchat.node_states().keys() {
            let g = newest.entry(&*id.node_id).or_default();
            *g = (*g).max(id.generation_id);
        }
        let mut out = Vec::new();
        for (id, state) in chitchat.node_states() {
            let Ok(node) = NodeName::parse(&id.node_id) else {
                continue;
            };
            let is_live = live.contains(id) && newest.get(&*id.node_id) == Some(&id.generation_id);
            for (k, v) in state.iter_prefix(prefix) {
                out.push((node.clone(), is_live, k.to_owned(), v.value.clone()));
            }
        }
        out
    }

    /// Sets one of this node's gossip keys.
    pub async fn publish(&self, key: String, value: String) {
        if let Some(chitchat) = self.chitchat.get() {
            chitchat.lock().await.self_node_state().set(key, value);
        }
    }

    /// Connects the service to the gossip state and the mesh once both are running.
    pub fn attach(&self, chitchat: Arc<tokio::sync::Mutex<Chitchat>>, mesh: Arc<Mesh>) {
        let _ = self.chitchat.set(chitchat);
        self.services.cluster().attach(mesh.clone());
        let _ = self.mesh.set(mesh);
    }

    /// Whether this node holds the CA key.
    pub fn holds_ca(&self) -> bool {
        self.ca.is_some()
    }

    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Resolves when an admin `leave` was requested.
    pub async fn leave_requested(&self) {
        self.leave.notified().await
    }

    /// Pulls a snapshot of chitchat's state into the membership view.
    pub async fn refresh(&self) {
        let Some(chitchat) = self.chitchat.get() else {
            return;
        };
        let snapshot = {
            let chitchat = chitchat.lock().await;
            let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
            let dead: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
            chitchat
                .node_states()
                .iter()
                .filter_map(|(id, state)| {
                    let name = NodeName::parse(&id.node_id).ok()?;
                    let liveness = if live.contains(id) {
                        Liveness::Live
                    } else if dead.contains(id) {
                        Liveness::Dead
                    } else {
                        Liveness::Unknown
                    };
                    Some(Observation {
                        name,
                        generation: id.generation_id,
                        addr: id.gossip_advertise_addr,
                        heartbeat: u64::from(state.heartbeat()),
                        liveness,
                        version: state.get(KEY_VERSION).unwrap_or("?").to_owned(),
                        draining: gossip::parse_flag(KEY_DRAINING, state.get(KEY_DRAINING))
                            .unwrap_or(false),
                        left: gossip::parse_flag(KEY_LEFT, state.get(KEY_LEFT)).unwrap_or(false),
                        started_ms: state
                            .get(KEY_STARTED_MS)
                            .and_then(|v| gossip::parse_millis(KEY_STARTED_MS, v).ok()),
                        services: state
                            .iter_prefix(gossip::SERVICE_KEY_PREFIX)
                            .map(|(k, v)| {
                                let name = k.trim_start_matches(gossip::SERVICE_KEY_PREFIX);
                                (name.to_owned(), v.value.clone())
                            })
                            .collect(),
                    })
                })
                .collect::<Vec<_>>()
        };
        let now = self.mono_ms();
        let rows = match self.view.lock() {
            Ok(mut view) => {
                view.observe(snapshot, now);
                view.rows(now, wall_ms())
            }
            Err(_) => Vec::new(),
        };
        self.services.cluster().update(&self.record.name, &rows);
        let published = self.services.gossip().await;
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (key, value) in published {
            state.set(key, value);
        }
        // The flag can also be cleared by a service host (an orphaned deploy reverting).
        state.set(
            KEY_DRAINING,
            gossip::flag(self.draining.load(Ordering::Relaxed)),
        );
    }

    /// Gossip addresses of the other members not known to be dead or gone.
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        let now = self.mono_ms();
        self.view
            .lock()
            .map(|v| v.peer_addrs(now))
            .unwrap_or_default()
    }

    /// Marks this node as left in gossip and pushes that to every peer at once.
    pub async fn announce_leave(&self) {
        let Some(chitchat) = self.chitchat.get() else {
            return;
        };
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(KEY_LEFT, gossip::flag(true));
    }

    async fn status(&self) -> AdminResponse {
        self.refresh().await;
        let now = self.mono_ms();
        let members = self
            .view
            .lock()
            .map(|v| v.rows(now, wall_ms()))
            .unwrap_or_default();
        AdminResponse::Status(StatusReport {
            cluster_id: self.record.cluster_id.clone(),
            self_name: self.record.name.clone(),
            members,
            mesh: self.mesh.get().map(|m| m.stats()).unwrap_or_default(),
        })
    }

    async fn ca_holder_name(&self) -> Option<String> {
        let chitchat = self.chitchat.get()?.lock().await;
        chitchat
            .node_states()
            .iter()
            .find(|(_, s)| s.get(KEY_CA_HOLDER) == Some("true"))
            .map(|(id, _)| id.node_id.to_string())
    }

    async fn create_token(
        &self,
        ttl_secs: u64,
        uses: Option<u32>,
    ) -> Result<AdminResponse, ErrorReply> {
        if self.ca.is_none() {
            let holder = self
                .ca_holder_name()
                .await
                .map(|n| format!("node {n:?}"))
                .unwrap_or_else(|| "the node that ran 'init'".into());
            return Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "this node does not hold the cluster CA key, so it cannot admit new nodes; run 'halley-node token create' on {holder}"
                ),
            });
        }
        if ttl_secs == 0 {
            return Err(bad_request("a token's --ttl must be longer than 0s"));
        }
        let (id, secret) = match (crate::random::bytes::<8>(), crate::random::bytes::<16>()) {
            (Ok(id), Ok(secret)) => (id, secret),
            _ => return Err(internal("the OS random source failed")),
        };
        let mut book = self.tokens.lock().await;
        let mut updated = book.clone();
        let now = wall_ms();
        let token = tokens::issue(
            &mut updated,
            &self.ca_der,
            self.record.advertise,
            ttl_secs,
            uses,
            now,
            id,
            secret,
        );
        self.data_dir
            .write_record(TOKENS, &updated)
            .map_err(|e| internal(&format!("cannot save the token: {e}")))?;
        *book = updated;
        info!(ttl_secs, uses = ?uses, "join token created");
        Ok(AdminResponse::Token {
            token: token.to_string(),
            expires_at_ms: now + ttl_secs * 1000,
        })
    }

    async fn join(
        &self,
        request: JoinRequest,
        remote: SocketAddr,
    ) -> Result<JoinResponse, ErrorReply> {
        let Some(ca) = &self.ca else {
            return Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: "this node does not hold the cluster CA key; use a token from the node that ran 'init'".into(),
            });
        };
        let mut book = self.tokens.lock().await;
        let index = tokens::check(&book, &request.token_id, &request.secret, wall_ms())?;
        if request.name == self.record.name {
            return Err(name_taken(&request.name, self.record.advertise));
        }
        self.refresh().await;
        let holder = self
            .view
            .lock()
            .ok()
            .and_then(|v| v.live_holder_of(&request.name, self.mono_ms()));
        if let Some(addr) = holder {
            return Err(name_taken(&request.name, addr));
        }
        let cert = ca
            .sign_csr(
                &request.csr_der,
                &request.name,
                request.advertise.ip(),
                Role::Node,
            )
            .map_err(|e| bad_request(&e.to_string()))?;
        let mut updated = book.clone();
        tokens::spend(&mut updated, index);
        self.data_dir
            .write_record(TOKENS, &updated)
            .map_err(|e| internal(&format!("cannot record the token use: {e}")))?;
        *book = updated;
        let mut seeds = vec![self.record.advertise];
        seeds.extend(self.peer_addrs());
        info!(name = %request.name, advertise = %request.advertise, from = %remote, "admitted a new node");
        Ok(JoinResponse {
            cluster_id: self.record.cluster_id.clone(),
            cert_der: cert.to_vec(),
            ca_der: self.ca_der.to_vec(),
            seeds,
        })
    }

    pub(crate) async fn set_draining(&self, draining: bool) -> Result<AdminResponse, ErrorReply> {
        self.draining.store(draining, Ordering::Relaxed);
        let chitchat = self
            .chitchat
            .get()
            .ok_or_else(|| internal("gossip is not running yet"))?;
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(KEY_DRAINING, gossip::flag(draining));
        info!(draining, "draining flag changed");
        Ok(AdminResponse::Done)
    }
}

#[async_trait::async_trait]
impl RequestHandler for NodeService {
    async fn handle(
        &self,
        caller: Option<PeerIdentity>,
        remote: SocketAddr,
        request: Message,
    ) -> Message {
        match request {
            Message::JoinRequest(join) => match self.join(join, remote).await {
                Ok(reply) => Message::JoinResponse(reply),
                Err(reply) => {
                    warn!(from = %remote, caller = ?caller.map(|c| c.name), kind = ?reply.kind, "join refused");
                    Message::ErrorReply(reply)
                }
            },
            Message::Peer(request) => match self.handle_peer(request).await {
                Ok(reply) => Message::PeerReply(reply),
                Err(reply) => Message::ErrorReply(reply),
            },
            Message::Step(step) => match self.services.step(step).await {
                Ok(reply) => Message::StepReply(reply),
                Err(reply) => Message::ErrorReply(reply),
            },
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
        crate::proxy::hop::accept(routes, open, send, recv).await;
    }
}

#[async_trait::async_trait]
impl AdminHandler for NodeService {
    async fn admin(&self, request: AdminRequest) -> AdminResponse {
        let result = match request {
            AdminRequest::Status => Ok(self.status().await),
            AdminRequest::CreateToken { ttl_secs, uses } => self.create_token(ttl_secs, uses).await,
            AdminRequest::SetDraining {
                node: None,
                draining,
            } => self.set_draining(draining).await,
            AdminRequest::SetDraining {
                node: Some(node),
                draining,
            } => self.set_draining_of(&node, draining).await,
            AdminRequest::Rollout(request) => crate::rollout::driver::start(self, request)
                .await
                .map(|(id, notes)| AdminResponse::RolloutStarted { id, notes }),
            AdminRequest::State {
                node: None,
                request,
            } => self.state(request).await.map(AdminResponse::State),
            AdminRequest::State {
                node: Some(node),
                request,
            } => match self
                .peer(
                    &node,
                    halley_proto::message::PeerRequest::State(request),
                    std::time::Duration::from_secs(3600),
                )
                .await
            {
                Ok(halley_proto::message::PeerReply::State(reply)) => {
                    Ok(AdminResponse::State(reply))
                }
                Ok(_) => Err(internal("unexpected answer to a state request")),
                Err(crate::Error::Remote(reply)) => Err(reply),
                Err(e) => Err(ErrorReply {
                    kind: ErrorKind::Unavailable,
                    message: format!("node {node}: {e}"),
                }),
            },
            AdminRequest::RolloutStatus(service) => Ok(AdminResponse::Rollouts(
                crate::rollout::status::rollouts(self, service.as_ref()).await,
            )),
            AdminRequest::History(service) => Ok(AdminResponse::History(
                crate::rollout::status::history(self, &service).await,
            )),
            AdminRequest::Leave => {
                self.leave.notify_one();
                Ok(AdminResponse::Done)
            }
            AdminRequest::Step(step) => self.services.step(step).await.map(AdminResponse::Step),
            AdminRequest::Services => Ok(AdminResponse::Services(self.services.statuses().await)),
        };
        result.unwrap_or_else(AdminResponse::Error)
    }
}

fn name_taken(name: &NodeName, addr: SocketAddr) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::NameTaken,
        message: format!(
            "a live node named {:?} already exists at {addr}; choose another --name, or stop and remove that node first",
            name.as_str()
        ),
    }
}

pub(crate) fn bad_request(message: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::BadRequest,
        message: message.to_owned(),
    }
}

pub(crate) fn internal(message: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Internal,
        message: message.to_owned(),
    }
}
