//! Messages between nodes (QUIC streams) and between the CLI and its node (the admin unix socket).
//!
//! Each variant of [`Message`] has a stable code ([`Message::code`]) that goes into the frame header,
//! and an [`Access`] rule saying who may send it as a request on a mesh connection.
//!
//! | code | message          | stream                       | access            |
//! |------|------------------|------------------------------|-------------------|
//! | 1    | `Gossip`         | QUIC uni stream, one a frame | any member        |
//! | 2    | `ErrorReply`     | reply on any stream          | never a request   |
//! | 10   | `JoinRequest`    | QUIC bi stream, request      | anyone (token)    |
//! | 11   | `JoinResponse`   | QUIC bi stream, reply        | never a request   |
//! | 20   | `AdminRequest`   | unix socket, request         | never on the mesh |
//! | 21   | `AdminResponse`  | unix socket, reply           | never on the mesh |
//! | 30   | `Step`           | QUIC bi stream, request      | role `admin`      |
//! | 31   | `StepReply`      | QUIC bi stream, reply        | never a request   |
//! | 40   | `Peer`           | QUIC bi stream, request      | per request (1)   |
//! | 41   | `PeerReply`      | QUIC bi stream, reply        | never a request   |
//! | 50   | `ProxyOpen`      | QUIC bi stream, then raw bytes | any member      |
//! | 51   | `ProxyAccept`    | QUIC bi stream, reply        | never a request   |
//!
//! (1) [`PeerRequest::access`]: role `admin`, except fetching a release and its artifact, which
//! any member may ask for and the receiver grants only to a host of that service (a host that
//! missed a rollout fetches it to converge).
//!
//! `ProxyOpen` is the one request after which the stream is not closed: once the receiver answers
//! `ProxyAccept`, both directions carry the proxied bytes (HTTP/1.1 or the TCP connection's) until
//! either side finishes. An `ErrorReply` instead means nothing was handed to any upstream.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::deploy::{Color, ReleaseVersion, ServiceStatus, StepReply, StepRequest};
use crate::disk::BackupManifest;
use crate::role::{Access, Role};
use crate::rollout::{HistoryEntry, RolloutRequest, RolloutState};
use crate::spec::{ServiceName, ServiceSpec};
use crate::token::{TokenIdBytes, TokenSecretBytes};

/// Every message Halley sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A chitchat gossip packet, in chitchat's own encoding (which 0.11 makes public so that a
    /// transport can carry it). Kept opaque here so that this crate does not depend on chitchat.
    Gossip(GossipPacket),
    /// The answer to a request that failed.
    ErrorReply(ErrorReply),
    /// A new node asks to join, proving a token.
    JoinRequest(JoinRequest),
    /// The cluster's answer to a successful join.
    JoinResponse(JoinResponse),
    /// The CLI asks its local node for something.
    AdminRequest(AdminRequest),
    /// The local node answers the CLI.
    AdminResponse(AdminResponse),
    /// A deploy step for a service on the receiving node.
    Step(StepRequest),
    /// The answer to a deploy step.
    StepReply(StepReply),
    /// A node-to-node request of a rollout coordinator (drain, signals, artifacts).
    Peer(PeerRequest),
    /// The answer to a [`PeerRequest`].
    PeerReply(PeerReply),
    /// A peer's entry point hands proxied traffic to this node's instance of a service.
    ProxyOpen(ProxyOpen),
    /// This node takes the proxied traffic: raw bytes follow on the stream.
    ProxyAccept,
}

/// Opens a mesh hop: the stream that carries it then carries one proxied client connection
/// (HTTP/1.1 requests, or a TCP connection's bytes) to the receiver's local active slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyOpen {
    /// The service.
    pub service: ServiceName,
    /// The client's address at the entry point (for `X-Forwarded-For`).
    pub client: SocketAddr,
    /// Take the traffic even while the receiver drains (the sender has no other instance).
    pub even_if_draining: bool,
}

impl Message {
    /// The stable code of this message's kind.
    pub fn code(&self) -> u16 {
        match self {
            Message::Gossip(_) => 1,
            Message::ErrorReply(_) => 2,
            Message::JoinRequest(_) => 10,
            Message::JoinResponse(_) => 11,
            Message::AdminRequest(_) => 20,
            Message::AdminResponse(_) => 21,
            Message::Step(_) => 30,
            Message::StepReply(_) => 31,
            Message::Peer(_) => 40,
            Message::PeerReply(_) => 41,
            Message::ProxyOpen(_) => 50,
            Message::ProxyAccept => 51,
        }
    }

    /// Who may send this message as a request on a mesh (QUIC) connection.
    pub fn access(&self) -> Access {
        match self {
            Message::Gossip(_) | Message::ProxyOpen(_) => Access::Member,
            Message::Step(_) => Access::Admin,
            Message::Peer(request) => request.access(),
            Message::JoinRequest(_) => Access::Anyone,
            Message::StepReply(_)
            | Message::PeerReply(_)
            | Message::ProxyAccept
            | Message::ErrorReply(_)
            | Message::JoinResponse(_)
            | Message::AdminRequest(_)
            | Message::AdminResponse(_) => Access::Never,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Gossip(_) => "gossip",
            Message::ErrorReply(_) => "error-reply",
            Message::JoinRequest(_) => "join-request",
            Message::JoinResponse(_) => "join-response",
            Message::AdminRequest(_) => "admin-request",
            Message::AdminResponse(_) => "admin-response",
            Message::Step(_) => "step",
            Message::StepReply(_) => "step-reply",
            Message::Peer(_) => "peer",
            Message::PeerReply(_) => "peer-reply",
            Message::ProxyOpen(_) => "proxy-open",
            Message::ProxyAccept => "proxy-accept",
        }
    }
}

/// One chitchat message, serialised by chitchat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipPacket(pub Vec<u8>);

/// Why a request failed, in a form the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A sentence for the operator: what is wrong and what to do.
    pub message: String,
}

/// Classes of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The token id is not known to the node (never issued, or pruned after expiry).
    TokenUnknown,
    /// The token has expired.
    TokenExpired,
    /// The token's uses are spent.
    TokenUsedUp,
    /// The secret does not match the token id.
    TokenSecretWrong,
    /// Another live node already has the requested name.
    NameTaken,
    /// The request is malformed (bad CSR, bad address, ...).
    BadRequest,
    /// The caller's certificate or role does not allow this request.
    Unauthorised,
    /// The node cannot do this (for example it does not hold the CA key).
    Unavailable,
    /// Something failed inside the node.
    Internal,
    /// The service is not in a state that allows this step (says which state it is in).
    Conflict,
    /// The new release failed its health check or would not start.
    CheckFailed,
    /// No such service or release on this node.
    NotFound,
    /// The step carries an older fencing epoch than one the node has seen.
    StaleEpoch,
}

/// A join request. Sent only over a TLS connection whose server chain ends at the CA pinned by the
/// token, so the secret reaches nobody else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Which token.
    pub token_id: TokenIdBytes,
    /// The token's secret.
    pub secret: TokenSecretBytes,
    /// The name the new node wants.
    pub name: NodeName,
    /// Where the new node will listen for the mesh (goes into its certificate).
    pub advertise: SocketAddr,
    /// A PKCS#10 certificate signing request; the private key never leaves the joining host.
    pub csr_der: Vec<u8>,
}

/// What a joining node receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The cluster id (chitchat refuses gossip between clusters with different ids).
    pub cluster_id: String,
    /// The new node's certificate, signed by the cluster CA.
    pub cert_der: Vec<u8>,
    /// The cluster CA certificate.
    pub ca_der: Vec<u8>,
    /// Gossip addresses of the members known to the issuing node, itself first.
    pub seeds: Vec<SocketAddr>,
    /// The CA key (PEM), for a node admitted as an admin so that it can admit and renew too;
    /// `None` for a worker. Travels only inside the join's TLS connection, never in gossip.
    pub ca_key_pem: Option<String>,
}

/// Requests from the CLI to its local node over the admin unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The membership table.
    Status,
    /// A new join token.
    CreateToken {
        /// Lifetime in seconds.
        ttl_secs: u64,
        /// How many joins it allows; `None` for unlimited until expiry.
        uses: Option<u32>,
        /// The role of the nodes it admits.
        role: Role,
    },
    /// Set or clear a node's draining flag (this node's when `node` is `None`).
    SetDraining {
        /// The node; `None` for this one.
        node: Option<NodeName>,
        /// Draining or not.
        draining: bool,
    },
    /// Leave the cluster gracefully and stop the daemon.
    Leave,
    /// A deploy step on this node.
    Step(StepRequest),
    /// The services this node runs.
    Services,
    /// Start (or resume, or roll back) a rollout with this node as coordinator.
    Rollout(RolloutRequest),
    /// Rollouts known to this node (its own and those gossiped), for one service or all.
    RolloutStatus(Option<ServiceName>),
    /// A service's rollout history, from every node's gossip.
    History(ServiceName),
    /// Whether a live coordinator drives the service's newest rollout (answered as
    /// [`AdminResponse::Driven`]; false when there is none or it is finished).
    RolloutDriven(ServiceName),
    /// Backups and migrations of a service's state, on this node or on `node` over the mesh.
    State {
        /// The node; `None` for this one.
        node: Option<NodeName>,
        /// What to do.
        request: StateRequest,
    },
    /// Remove a node from the cluster for good (an admin's): every member refuses its
    /// certificate from then on.
    Remove {
        /// The node.
        node: NodeName,
        /// Remove it even if this node does not know it as a member (a typo is then a name
        /// that can never join).
        force: bool,
    },
    /// Drop a dead, left or removed node from `status` on this node and every live member
    /// (an admin's).
    Forget {
        /// The node.
        node: NodeName,
    },
    /// A service's slot logs, on this node or on `node` over the mesh.
    Logs {
        /// The node; `None` for this one.
        node: Option<NodeName>,
        /// Which lines.
        request: LogsRequest,
    },
}

/// `logs`: which lines of a service's slot logs to read. Each release and slot has its own log
/// (`services/NAME/logs/VERSION-SLOT.log`, rotated by size to `.1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// The service.
    pub service: ServiceName,
    /// The release; `None` for the one the active slot runs (else the committed one).
    pub release: Option<ReleaseVersion>,
    /// Lines from the end of each log, when there is no cursor for it.
    pub lines: u32,
    /// Where the last answer ended, per log file: only what was written since is sent.
    pub after: Vec<LogCursor>,
}

/// How far a log was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// The log's file name (`VERSION-SLOT.log`).
    pub file: String,
    /// Bytes of it read.
    pub offset: u64,
}

impl LogCursor {
    /// The start of the log of `release` in `slot`.
    pub fn start_of(release: &ReleaseVersion, slot: Color) -> Self {
        Self {
            file: format!("{release}-{slot}.log"),
            offset: 0,
        }
    }
}

/// Lines of one slot's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The release.
    pub release: ReleaseVersion,
    /// The slot.
    pub slot: Color,
    /// The text (env values redacted); whole lines except perhaps the last.
    pub text: String,
    /// Where to go on from (pass it back in [`LogsRequest::after`]).
    pub cursor: LogCursor,
    /// Output the reader may have missed: the log was rotated past the cursor.
    pub skipped: bool,
}

/// The answer to a [`LogsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The node whose logs these are.
    pub node: NodeName,
    /// The release read.
    pub release: ReleaseVersion,
    /// One per slot that has a log of it.
    pub chunks: Vec<LogChunk>,
}

/// Work on a service's state on the receiving node (admin socket, or a coordinator's peer call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRequest {
    /// Take a backup, verify it restores, prune to `keep_backups`. `spec` is the spec whose
    /// `[state]` applies (a deploy's new one); `None` uses the committed release's.
    Snapshot {
        /// The service.
        service: ServiceName,
        /// The spec to take it by.
        spec: Option<Box<ServiceSpec>>,
        /// The release it is taken before deploying.
        for_release: Option<ReleaseVersion>,
    },
    /// Run `version`'s `migrate` command once (the release must be prepared here).
    Migrate {
        /// The service.
        service: ServiceName,
        /// The release whose migration runs.
        version: ReleaseVersion,
    },
    /// Run `version`'s `contract` command (after its rollout committed everywhere).
    Contract {
        /// The service.
        service: ServiceName,
        /// The committed release.
        version: ReleaseVersion,
    },
    /// The service's backups.
    List(ServiceName),
    /// Stop the service's slots, restore a backup, start the committed release again.
    Restore {
        /// The service.
        service: ServiceName,
        /// The backup.
        id: String,
    },
}

/// Answers to [`StateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateReply {
    /// A backup taken and verified (with what was checked), or `None` when there was nothing
    /// to take yet (the service has never run here), with why.
    Snapshot {
        /// The backup.
        backup: Option<BackupManifest>,
        /// What was checked, or why nothing was taken.
        note: String,
    },
    /// A command ran (or had run before: `already`), with its output.
    Ran {
        /// It had already run for this release; not run again.
        already: bool,
        /// Its output.
        output: String,
    },
    /// Backups, oldest first.
    Backups(Vec<BackupManifest>),
    /// A backup restored.
    Restored(BackupManifest),
}

/// Answers to [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    /// The membership table.
    Status(StatusReport),
    /// A new join token (text form) and when it expires.
    Token {
        /// The token text.
        token: String,
        /// Expiry, unix milliseconds.
        expires_at_ms: u64,
    },
    /// The request was carried out.
    Done,
    /// The answer to a deploy step.
    Step(StepReply),
    /// The services this node runs.
    Services(Vec<ServiceStatus>),
    /// A rollout started (or resumed): its id, and what was done before it (snapshots,
    /// migration).
    RolloutStarted {
        /// The rollout id.
        id: String,
        /// Lines about the state work done first.
        notes: Vec<String>,
    },
    /// Rollouts, newest state of each.
    Rollouts(Vec<RolloutState>),
    /// History, oldest first.
    History(Vec<HistoryEntry>),
    /// The answer to a state request.
    State(StateReply),
    /// Whether the rollout asked about is driven by a live coordinator, and by whom it was.
    Driven {
        /// The rollout's id (`None`: the service has no rollout).
        id: Option<String>,
        /// A live coordinator drives it.
        driven: bool,
    },
    /// The request failed.
    Error(ErrorReply),
    /// A node was removed.
    Removed {
        /// It heard so itself (and stopped).
        told: bool,
        /// It said it held the CA key: it can still sign certificates for other names.
        held_ca: bool,
    },
    /// Slot logs.
    Logs(LogsReply),
    /// A node was forgotten here, up to `generation`; `told` members did so too, `refused`
    /// ones did not (with why).
    Forgotten {
        /// The generation forgotten.
        generation: u64,
        /// Members that forgot it as well.
        told: Vec<NodeName>,
        /// Members that did not, and why.
        refused: Vec<(NodeName, String)>,
    },
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The cluster id.
    pub cluster_id: String,
    /// The answering node.
    pub self_name: NodeName,
    /// One row per node name (the newest generation of each).
    pub members: Vec<MemberRow>,
    /// The answering node's own mesh traffic.
    pub mesh: MeshStats,
    /// The answering node's certificate.
    pub certificate: CertificateStatus,
    /// Bytes its data dir takes on disk (releases, artifacts, logs, backups, state), as last
    /// measured (a few seconds old, a minute at most where the walk is slow).
    pub data_dir_bytes: u64,
}

/// When a node's certificate expires and when it renews it (unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// NotAfter.
    pub expires_ms: u64,
    /// When two thirds of its lifespan have passed: the node renews it from then on.
    pub renews_ms: u64,
}

/// Traffic counters of one node's QUIC endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStats {
    /// UDP bytes sent, over all connections since start.
    pub udp_tx_bytes: u64,
    /// UDP bytes received, over all connections since start.
    pub udp_rx_bytes: u64,
    /// Connections open now.
    pub connections: u64,
    /// Streams this node opened since start (requests, proxied connections, gossip).
    pub streams_opened: u64,
    /// Streams peers opened to this node since start.
    pub streams_accepted: u64,
}

/// One node in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// The node's name.
    pub name: NodeName,
    /// Its gossip (mesh) address.
    pub addr: SocketAddr,
    /// Its state as seen from the answering node.
    pub state: MemberState,
    /// Milliseconds since its heartbeat last advanced; `None` if never heard (or it is self).
    pub last_heard_ms: Option<u64>,
    /// Its halley-node version.
    pub version: String,
    /// Its role (`admin`, `worker`), as it gossips it.
    pub role: String,
    /// Seconds since its daemon started, if known.
    pub uptime_secs: Option<u64>,
    /// Its generation (grows on every restart).
    pub generation: u64,
    /// The services it runs: name and gossiped summary (`halley_proto::gossip::ServiceSummary`).
    pub services: Vec<(String, String)>,
}

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Heartbeats arrive on time.
    Alive,
    /// Still counted live by the failure detector, but no heartbeat for a while.
    Suspect,
    /// The failure detector declared it dead.
    Dead,
    /// It left gracefully (`halley-node leave` or SIGTERM).
    Left,
    /// Alive, and asks not to be sent new work.
    Draining,
    /// An admin removed it (`halley-node remove`): every member refuses its certificate.
    Removed,
}

impl MemberState {
    /// Lower-case text for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
            MemberState::Draining => "draining",
            MemberState::Removed => "removed",
        }
    }
}

/// Node-to-node requests of a rollout coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The operator's drain (true) or undrain (false) of the receiver; a rollout's hold
    /// outlives an undrain.
    SetDraining(bool),
    /// A rollout of `service` at `epoch`, coordinated by the caller, holds the receiver drained
    /// until it releases it or `ttl_ms` passes with no step or watch of that service.
    HoldDrain {
        /// The service.
        service: ServiceName,
        /// The rollout's epoch (with the caller's name, its fencing token).
        epoch: u64,
        /// How long the hold lives past the service's last contact.
        ttl_ms: u64,
    },
    /// Ends the hold of the rollout of `service` at `epoch` by the caller (a newer rollout's
    /// hold stays).
    ReleaseDrain {
        /// The service.
        service: ServiceName,
        /// The rollout's epoch.
        epoch: u64,
    },
    /// The receiver's services.
    Services,
    /// The receiver's status of one service (answered as [`PeerReply::Services`], empty when it
    /// does not run it), from a coordinator watching it: contact for that service's
    /// `orphan_timeout`, which a plain status request is not.
    Watch(crate::spec::ServiceName),
    /// How much of an artifact the receiver holds (to resume a transfer).
    ArtifactStatus {
        /// The artifact.
        sha256: [u8; 32],
    },
    /// A piece of an artifact, written at `offset` (which must be what the receiver holds).
    PutArtifact {
        /// The artifact.
        sha256: [u8; 32],
        /// Its whole size.
        total: u64,
        /// Where this piece starts.
        offset: u64,
        /// The piece (at most 1 MiB).
        data: Vec<u8>,
    },
    /// A piece of an artifact the receiver holds.
    GetArtifact {
        /// The artifact.
        sha256: [u8; 32],
        /// Where to start.
        offset: u64,
    },
    /// The receiver's own newest state of a service's rollout, fresher than gossip.
    Rollout(ServiceName),
    /// The spec and artifact of a release the receiver has prepared.
    GetRelease {
        /// The service.
        service: ServiceName,
        /// The release.
        version: ReleaseVersion,
    },
    /// Work on a service's state (snapshot, migrate, contract, restore).
    State(StateRequest),
    /// A new certificate for the caller, for the key of this signing request (DER). The
    /// receiver (an admin holding the CA key) takes name, role and address from the caller's
    /// current certificate, never from the request.
    RenewCertificate {
        /// The CSR.
        csr_der: Vec<u8>,
    },
    /// The caller (an admin) removed the receiver from the cluster: it stops and its data dir
    /// refuses to run again.
    Removed,
    /// The names the receiver (an admin) has removed from the cluster: what a node checks a
    /// gossiped `removed` list against before acting on it.
    RemovedList,
    /// A service's slot logs on the receiver.
    Logs(LogsRequest),
    /// Drop `node` up to `generation` from the receiver's view (it refuses if it sees that
    /// generation running).
    Forget {
        /// The node.
        node: NodeName,
        /// Its newest generation to forget.
        generation: u64,
        /// That generation's heartbeat when the admin forgot it: once it advances, the node
        /// shows again.
        heartbeat: u64,
    },
    /// Replace the receiver's daemon with the halley-node binary it holds as artifact
    /// `sha256` (`upgrade --all`); answered once the new daemon has started to take over.
    Upgrade {
        /// The binary's SHA-256, as stored.
        sha256: [u8; 32],
    },
    /// Which binary the receiver's daemon runs.
    Binary,
    /// The highest fencing epoch the receiver obeyed for a service, kept after the service was
    /// removed there (`service remove`), so a new rollout of it takes an epoch above it.
    Fence(ServiceName),
}

impl PeerRequest {
    /// Who may send this request. Only admins order or query a peer; a release and its
    /// artifact may be fetched by any member, and the receiver then checks that the caller is
    /// a host of that service.
    pub fn access(&self) -> Access {
        match self {
            PeerRequest::GetRelease { .. }
            | PeerRequest::GetArtifact { .. }
            | PeerRequest::RenewCertificate { .. }
            | PeerRequest::RemovedList => Access::Member,
            PeerRequest::SetDraining(_)
            | PeerRequest::HoldDrain { .. }
            | PeerRequest::ReleaseDrain { .. }
            | PeerRequest::Services
            | PeerRequest::Watch(_)
            | PeerRequest::ArtifactStatus { .. }
            | PeerRequest::PutArtifact { .. }
            | PeerRequest::Rollout(_)
            | PeerRequest::State(_)
            | PeerRequest::Logs(_)
            | PeerRequest::Forget { .. }
            | PeerRequest::Upgrade { .. }
            | PeerRequest::Binary
            | PeerRequest::Fence(_)
            | PeerRequest::Removed => Access::Admin,
        }
    }

    /// A short name for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRequest::SetDraining(_) => "drain",
            PeerRequest::HoldDrain { .. } => "hold-drain",
            PeerRequest::ReleaseDrain { .. } => "release-drain",
            PeerRequest::Services => "services",
            PeerRequest::Watch(_) => "watch",
            PeerRequest::ArtifactStatus { .. } => "artifact-status",
            PeerRequest::PutArtifact { .. } => "put-artifact",
            PeerRequest::GetArtifact { .. } => "get-artifact",
            PeerRequest::Rollout(_) => "rollout",
            PeerRequest::GetRelease { .. } => "get-release",
            PeerRequest::State(_) => "state",
            PeerRequest::RenewCertificate { .. } => "renew-certificate",
            PeerRequest::Removed => "removed",
            PeerRequest::RemovedList => "removed-list",
            PeerRequest::Logs(_) => "logs",
            PeerRequest::Forget { .. } => "forget",
            PeerRequest::Upgrade { .. } => "upgrade",
            PeerRequest::Binary => "binary",
            PeerRequest::Fence(_) => "fence",
        }
    }
}

/// Answers to [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    /// Done.
    Done,
    /// The receiver's services.
    Services(Vec<ServiceStatus>),
    /// Bytes of the artifact the receiver holds; `complete` once stored and verified.
    Artifact {
        /// Bytes held.
        received: u64,
        /// Stored under its hash and verified.
        complete: bool,
    },
    /// A piece of an artifact.
    Chunk {
        /// The artifact's whole size.
        total: u64,
        /// The piece (empty at the end).
        data: Vec<u8>,
    },
    /// A rollout state, if the receiver has one.
    Rollout(Option<RolloutState>),
    /// A prepared release.
    Release {
        /// Its spec.
        spec: Box<ServiceSpec>,
        /// Its artifact.
        sha256: [u8; 32],
        /// The artifact's file name (for a single executable).
        file_name: String,
    },
    /// The answer to a state request.
    State(StateReply),
    /// A renewed certificate (DER).
    Certificate {
        /// The certificate.
        cert_der: Vec<u8>,
    },
    /// The names removed from the cluster, as the receiver knows them.
    Removed(Vec<NodeName>),
    /// Slot logs.
    Logs(LogsReply),
    /// The binary the receiver's daemon runs, and why its last upgrade failed if it did.
    Binary {
        /// SHA-256 of the running binary.
        sha256: [u8; 32],
        /// Its version.
        version: String,
        /// The reason the last upgrade asked of it did not take over, if one did not.
        last_failure: Option<String>,
    },
    /// The epoch asked for by [`PeerRequest::Fence`] (0: none held).
    Epoch(u64),
}
