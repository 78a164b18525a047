//! Records kept in a node's data dir. See `docs/architecture.md` for the layout.
//!
//! Each file holds one record framed by [`crate::codec::encode_record`], so a file written by another
//! format version, or a file of another kind, is refused with a clear error instead of misread.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::Record;
use crate::deploy::{Color, ReleaseVersion};
use crate::spec::{ServiceName, ServiceSpec};
use crate::token::TokenIdBytes;
use crate::{NodeName, Role};

/// `node.rec`: who this node is and how it reaches the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The cluster's id (gossip between clusters with different ids is refused).
    pub cluster_id: String,
    /// This node's name.
    pub name: NodeName,
    /// This node's role (also in its certificate).
    pub role: Role,
    /// Where the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Where peers reach it (in its certificate, and its gossip address).
    pub advertise: SocketAddr,
    /// Gossip addresses to contact on start, besides those learned later.
    pub seeds: Vec<SocketAddr>,
    /// When the node was initialised or joined, unix milliseconds.
    pub created_ms: u64,
}

impl Record for NodeRecord {
    const CODE: u16 = 100;
}

/// `tokens.rec`: join tokens this node issued. Secrets are stored only as SHA-256 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBook {
    /// Issued tokens, expired ones pruned on each write.
    pub tokens: Vec<TokenRecord>,
}

impl Record for TokenBook {
    // 101 was the book of tokens without a role ([`LegacyTokenBook`]).
    const CODE: u16 = 104;
}

/// `tokens.rec` as written before tokens carried a role: read once and converted, each token
/// admitting workers (the least a token can grant), then written back as a [`TokenBook`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyTokenBook {
    /// Issued tokens.
    pub tokens: Vec<LegacyTokenRecord>,
}

impl Record for LegacyTokenBook {
    const CODE: u16 = 101;
}

/// One token of a [`LegacyTokenBook`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyTokenRecord {
    /// The token id.
    pub id: TokenIdBytes,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Issued at, unix milliseconds.
    pub created_ms: u64,
    /// Expires at, unix milliseconds.
    pub expires_ms: u64,
    /// Joins left; `None` for unlimited until expiry.
    pub uses_left: Option<u32>,
}

impl From<LegacyTokenBook> for TokenBook {
    fn from(legacy: LegacyTokenBook) -> Self {
        let tokens = legacy
            .tokens
            .into_iter()
            .map(|t| TokenRecord {
                id: t.id,
                secret_sha256: t.secret_sha256,
                created_ms: t.created_ms,
                expires_ms: t.expires_ms,
                uses_left: t.uses_left,
                role: Role::Worker,
            })
            .collect();
        TokenBook { tokens }
    }
}

/// One issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token id.
    pub id: TokenIdBytes,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Issued at, unix milliseconds.
    pub created_ms: u64,
    /// Expires at, unix milliseconds.
    pub expires_ms: u64,
    /// Joins left; `None` for unlimited until expiry.
    pub uses_left: Option<u32>,
    /// The role of the nodes it admits.
    pub role: Role,
}

/// `generation.rec`: the last gossip generation this node used; each start uses a larger one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// The last generation handed out.
    pub last: u64,
}

impl Record for GenerationRecord {
    const CODE: u16 = 102;
}

/// `peers.rec`: gossip addresses of members seen recently, so a restarted node finds the cluster
/// even if the node it joined through is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersRecord {
    /// Gossip addresses.
    pub addrs: Vec<SocketAddr>,
}

impl Record for PeersRecord {
    const CODE: u16 = 103;
}

/// `services/NAME/service.rec`: what a node runs for one service, so that a restarted node adopts
/// the running processes instead of restarting them. Mode 0600: the spec holds env secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service.
    pub name: ServiceName,
    /// The spec of the newest prepared release.
    pub spec: ServiceSpec,
    /// The committed release.
    pub committed: Option<ReleaseVersion>,
    /// The release committed before it.
    pub previous: Option<ReleaseVersion>,
    /// The slot the proxy routes to.
    pub active: Option<Color>,
    /// Blue, then green.
    pub slots: [SlotRecord; 2],
    /// Unpacked releases, oldest first.
    pub releases: Vec<ReleaseEntry>,
    /// The highest fencing epoch seen for this service.
    pub epoch: u64,
}

impl Record for ServiceRecord {
    const CODE: u16 = 110;
}

/// A slot's process, as far as the node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// The release it runs.
    pub version: Option<ReleaseVersion>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its process id (also its process group id), while running.
    pub pid: Option<u32>,
    /// The process start time in clock ticks after boot (`/proc/PID/stat` field 22), so that a
    /// reused pid is never mistaken for the slot's process.
    pub start_ticks: u64,
    /// The spec it was started with (a rollback restarts the previous release with its own spec).
    pub spec: Option<ServiceSpec>,
}

/// An unpacked release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// Its version.
    pub version: ReleaseVersion,
    /// SHA-256 of its artifact.
    pub sha256: [u8; 32],
    /// The artifact's file name (the name a single executable gets in the release).
    pub file_name: String,
    /// When it was unpacked, unix milliseconds.
    pub created_ms: u64,
    /// The spec it was prepared with.
    pub spec: ServiceSpec,
}

/// `rollouts/NAME.rec`: the journal of the coordinator's newest rollout of a service, written
/// before every action it takes (0600: the spec holds env).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutJournal {
    /// The rollout's state.
    pub state: crate::rollout::RolloutState,
    /// The spec rolled out.
    pub spec: ServiceSpec,
    /// The artifact.
    pub sha256: [u8; 32],
    /// The artifact's file name.
    pub file_name: String,
}

impl Record for RolloutJournal {
    // 120 was the journal before rollbacks were rollouts (no mode, no host targets); 122 the
    // journal before rollouts carried a release pin ([`UnpinnedRolloutJournal`]).
    const CODE: u16 = 123;
}

/// `rollouts/NAME.rec` as written before rollouts carried a release pin: read and converted
/// by the node (which recomputes a deploy's pin from the spec and artifact beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpinnedRolloutJournal {
    /// The rollout's state.
    pub state: crate::rollout::UnpinnedRolloutState,
    /// The spec rolled out.
    pub spec: ServiceSpec,
    /// The artifact.
    pub sha256: [u8; 32],
    /// The artifact's file name.
    pub file_name: String,
}

impl Record for UnpinnedRolloutJournal {
    const CODE: u16 = 122;
}

/// `revoked.rec`: the nodes removed from the cluster (by any admin, learned from gossip or made
/// here), whose certificates this node refuses. Names only: every certificate of a removed
/// name is refused, renewed or not, and the name cannot join again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedBook {
    /// Removed node names, sorted.
    pub names: Vec<NodeName>,
}

impl Record for RevokedBook {
    const CODE: u16 = 105;
}

/// `forgotten.rec`: nodes `forget` dropped from this node's view, each at a generation and
/// heartbeat (a newer generation, or that one's heartbeat advancing, shows again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenBook {
    /// Name, the newest generation forgotten and its heartbeat then, sorted by name.
    pub nodes: Vec<(NodeName, u64, u64)>,
}

impl Record for ForgottenBook {
    const CODE: u16 = 107;
}

/// `drain.rec`: the operator's drain of this node (`drain` / `undrain`), kept across restarts
/// and upgrades. Rollouts' holds are not kept: their coordinators hold again or they expire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// The operator drained this node.
    pub manual: bool,
}

impl Record for DrainRecord {
    const CODE: u16 = 108;
}

/// `removed.rec`: this node was removed from its cluster; its data dir refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalRecord {
    /// Who said so: the admin that removed it, or the admin whose gossip listed it.
    pub by: NodeName,
    /// When this node learned it (unix ms).
    pub at_ms: u64,
}

impl Record for RemovalRecord {
    const CODE: u16 = 106;
}

/// `services/NAME/fence.rec`: the highest fencing token a host has obeyed for a service:
/// (epoch, coordinator), ordered by epoch, then coordinator name. Written before the step it
/// admits is carried out. A host without it (a data dir from before fencing had owners) falls
/// back to the service record's epoch with no owner, which orders below any owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The epoch.
    pub epoch: u64,
    /// The coordinator that sent it.
    pub coordinator: Option<NodeName>,
}

impl Record for FenceRecord {
    const CODE: u16 = 111;
}

/// `services/NAME/rollback.rec`: the host is in a cluster rollback's uncommitted deploy whose
/// target is `version` (written before the `StartNext` of the rollback is answered, removed when
/// the deploy is committed or reverted). A host restarted with it, and with no coordinator in
/// touch, commits the target instead of going back to the release being rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackMarker {
    /// The rollback's target on this host.
    pub version: ReleaseVersion,
}

impl Record for RollbackMarker {
    const CODE: u16 = 112;
}

/// `history/NAME.rec`: rollouts of a service this node coordinated, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryBook {
    /// Entries, at most 50.
    pub entries: Vec<crate::rollout::HistoryEntry>,
}

impl Record for HistoryBook {
    const CODE: u16 = 121;
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its path inside the backup directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// `backups/SERVICE/ID/manifest.rec`: what a backup holds. Written last: a backup without it (or
/// still in a `.partial-` directory) is not a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Its id (sortable: `YYYYMMDDTHHMMSSmmmZ`).
    pub id: String,
    /// The service.
    pub service: crate::spec::ServiceName,
    /// The node that took it.
    pub node: crate::NodeName,
    /// The release serving when it was taken.
    pub release: Option<ReleaseVersion>,
    /// Why: `manual`, or `before deploy of V`.
    pub reason: String,
    /// The release whose deploy it was taken for.
    pub for_release: Option<ReleaseVersion>,
    /// When it was taken, unix ms.
    pub created_ms: u64,
    /// SQLite databases (paths relative to the service data directory) in `sqlite/`.
    pub sqlite: Vec<String>,
    /// Directories (relative paths) archived in `dirs/`.
    pub dirs: Vec<String>,
    /// Whether the `backup` command wrote `hook/`.
    pub hook: bool,
    /// Every file, with its size and hash.
    pub files: Vec<BackupFile>,
}

impl BackupManifest {
    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

impl Record for BackupManifest {
    const CODE: u16 = 130;
}
