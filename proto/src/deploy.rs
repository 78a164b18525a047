//! Deploy steps: the RPCs a coordinator (the local CLI today, the rollout coordinator of another
//! node later) sends to the node that runs a service, and what the node reports about its services.
//!
//! A deploy on one host is `Prepare` → `StartNext` → `Check` → `Flip` → `Drain` → `Commit`; any
//! step after `StartNext` can be undone with `Revert`. A rollback is the same walk to the previous
//! release, where `StartNext` reuses the previous slot if it is still running ("warm").
//!
//! ## Guarantees
//! - Every step names its service and carries a fencing `epoch`; a node refuses a step whose epoch
//!   is older than one it has seen for that service.
//! - Version strings are checked ([`ReleaseVersion`]) so that they are safe as directory names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{ServiceName, ServiceSpec};
use crate::{Error, NodeName};

/// A release's version, as given to `deploy --version`: 1 to 64 characters of `A-Z a-z 0-9 . _ -`
/// and `+`, not starting with `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReleaseVersion(String);

impl ReleaseVersion {
    /// Parses a version, saying which rule a bad one breaks.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && !text.starts_with('.')
            && !text.starts_with('-')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::BadName {
                kind: "release version",
                name: text.chars().take(80).collect(),
                why: "a version is 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '+' and may not start with '.' or '-'",
            })
        }
    }

    /// The version as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ReleaseVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ReleaseVersion {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<ReleaseVersion> for String {
    fn from(v: ReleaseVersion) -> String {
        v.0
    }
}

/// One of a service's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Slot 0.
    Blue,
    /// Slot 1.
    Green,
}

impl Color {
    /// The other slot.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// 0 for blue, 1 for green.
    pub fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }

    /// Both slots, blue first.
    pub const BOTH: [Color; 2] = [Color::Blue, Color::Green];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// Parses `blue` or `green`.
    pub fn parse(text: &str) -> Option<Color> {
        match text {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deploy step for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    /// The service.
    pub service: ServiceName,
    /// Fencing epoch of the caller's rollout (0 for a local operator command). A host orders
    /// rollouts by (epoch, the caller's node name from its certificate), so two coordinators
    /// never share a fencing token.
    pub epoch: u64,
    /// A node's convergence acting for a finished rollout by that coordinator: the token is
    /// then (epoch, this name). Honoured only for a node's calls to itself; a peer's token is
    /// always its certificate's name.
    pub on_behalf_of: Option<NodeName>,
    /// What to do.
    pub step: Step,
}

/// What a step asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Store and unpack a release and remember the spec it runs with.
    Prepare {
        /// The spec (env already merged from `env_file`); boxed, as it dwarfs the other steps.
        spec: Box<ServiceSpec>,
        /// The version.
        version: ReleaseVersion,
        /// Where the artifact comes from.
        artifact: ArtifactSource,
    },
    /// Start a prepared release in the slot that is not active (reusing it when it already runs
    /// that release, as after a flip with `keep_warm`).
    StartNext {
        /// The release to start.
        version: ReleaseVersion,
        /// Part of a rollback: should the coordinator go silent once this release serves, the
        /// host commits it rather than reverting to the release being rolled back.
        rollback: bool,
    },
    /// Wait until the next slot is healthy, or fail with the last check's output.
    Check,
    /// Route new requests and connections to the next slot; the old one starts draining.
    Flip,
    /// Wait until the old slot has drained (or `drain_timeout` cut what was left).
    Drain,
    /// Record the active slot's release as the committed one; prune old releases. Refused
    /// when the active slot serves another release than `version` (the host reverted by itself,
    /// or was changed by hand), so a rollout never commits what it did not deploy.
    Commit {
        /// The release the caller means to commit.
        version: ReleaseVersion,
    },
    /// Undo an uncommitted deploy: route back to the committed release and stop the other slot.
    Revert,
    /// Remove the service from this node: take its routes away, stop both slots, close its entry
    /// point, delete its releases, logs and record. Its fencing token is kept, so an older
    /// rollout's steps stay refused; its data directory and backups are kept unless `purge`.
    Remove {
        /// Delete the data directory and backups too.
        purge: bool,
    },
}

impl Step {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Prepare { .. } => "prepare",
            Step::StartNext { .. } => "start-next",
            Step::Check => "check",
            Step::Flip => "flip",
            Step::Drain => "drain",
            Step::Commit { .. } => "commit",
            Step::Revert => "revert",
            Step::Remove { .. } => "remove",
        }
    }
}

/// Where a release's artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactSource {
    /// A file on the node's own host (the local CLI passes an absolute path). Its SHA-256 is
    /// computed by the node and must match `sha256` when one is given.
    LocalPath {
        /// Absolute path.
        path: String,
        /// The expected SHA-256, if the caller knows it.
        sha256: Option<[u8; 32]>,
    },
    /// An artifact already in the node's store.
    Stored {
        /// Its SHA-256.
        sha256: [u8; 32],
        /// Its original file name (used for a single-executable release).
        file_name: String,
    },
}

/// The answer to a [`StepRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepReply {
    /// The release is on disk.
    Prepared {
        /// The artifact's SHA-256, hex.
        sha256: String,
        /// False if that version was already unpacked from the same artifact.
        unpacked: bool,
    },
    /// The next slot runs the release.
    Started {
        /// Which slot.
        slot: Color,
        /// Its port on 127.0.0.1.
        port: u16,
        /// True if the slot already ran it (warm) and was not restarted.
        reused: bool,
    },
    /// The next slot passed its health check.
    Healthy {
        /// Which slot.
        slot: Color,
        /// How long the step waited.
        waited_ms: u64,
    },
    /// The proxy now routes to the new slot.
    Flipped {
        /// The previous active slot.
        from: Option<Color>,
        /// The new active slot.
        to: Color,
        /// Time to switch the route inside the node, nanoseconds.
        took_ns: u64,
    },
    /// The old slot is drained.
    Drained {
        /// The drained slot (none if there was nothing to drain).
        slot: Option<Color>,
        /// Requests and connections that finished during the drain.
        completed: u64,
        /// Requests and connections cut at `drain_timeout`.
        cut: u64,
        /// How long the drain took.
        took_ms: u64,
    },
    /// The active release is committed.
    Committed {
        /// The committed version.
        version: ReleaseVersion,
        /// The previous committed version, kept for rollback.
        previous: Option<ReleaseVersion>,
        /// Releases removed from disk.
        pruned: Vec<ReleaseVersion>,
    },
    /// The uncommitted deploy was undone.
    Reverted {
        /// The version now serving, if any.
        serving: Option<ReleaseVersion>,
    },
    /// The service is gone from this node (or was not here).
    Removed {
        /// Processes stopped (pid, start time in clock ticks after boot).
        stopped: Vec<(u32, u64)>,
        /// Whether its data directory and backups went too.
        purged: bool,
    },
}

/// The health of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet, or still in its start period.
    Starting,
    /// Passing its checks.
    Healthy,
    /// Failing its checks, or crash-looping.
    Unhealthy,
    /// Not running.
    Stopped,
}

impl Health {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Stopped => "stopped",
        }
    }

    /// Parses [`Health::as_str`] text.
    pub fn parse(text: &str) -> Option<Health> {
        match text {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            "stopped" => Some(Health::Stopped),
            _ => None,
        }
    }
}

/// What a slot is doing in the service's blue/green pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotRole {
    /// Nothing runs in it.
    Idle,
    /// Started by a deploy, not routed yet.
    Next,
    /// Receives new requests.
    Active,
    /// Out of rotation, finishing in-flight work.
    Draining,
    /// Out of rotation, kept running for an instant rollback until `keep_warm` ends.
    Warm,
}

impl SlotRole {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotRole::Idle => "idle",
            SlotRole::Next => "next",
            SlotRole::Active => "active",
            SlotRole::Draining => "draining",
            SlotRole::Warm => "warm",
        }
    }
}

/// Regression signals of one slot over the last window, as the proxy measured them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Window length the rates are over.
    pub window_ms: u64,
    /// Requests (or connections) completed in the window.
    pub requests: u64,
    /// Of those, 5xx responses (including the proxy's own 502/504) or failed connections.
    pub errors: u64,
    /// Median latency to response headers, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Requests since the slot started.
    pub total_requests: u64,
    /// 5xx since the slot started.
    pub total_errors: u64,
}

/// One slot in a [`ServiceStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Which slot.
    pub color: Color,
    /// What it does.
    pub role: SlotRole,
    /// The release it runs or last ran.
    pub version: Option<ReleaseVersion>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its process id, while running.
    pub pid: Option<u32>,
    /// Its health.
    pub health: Health,
    /// Restarts after crashes since it was started by a deploy.
    pub restarts: u32,
    /// True while it crashes too often (it is then unhealthy).
    pub crash_loop: bool,
    /// Requests, errors and latency over the last window.
    pub signals: Signals,
}

/// A service as its node sees it (`halley-node services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service.
    pub name: ServiceName,
    /// The bound entry point.
    pub listen: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// The committed release.
    pub committed: Option<ReleaseVersion>,
    /// The release before it, the rollback target.
    pub previous: Option<ReleaseVersion>,
    /// Both slots.
    pub slots: Vec<SlotStatus>,
    /// Releases unpacked on disk, oldest first.
    pub releases: Vec<ReleaseVersion>,
    /// The highest fencing epoch the node has seen for the service.
    pub epoch: u64,
    /// Where this node's entry point sends work.
    pub routing: RoutingStatus,
}

/// The entry point's routing on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingStatus {
    /// `local`, `local-first` or `balanced`.
    pub policy: String,
    /// Peers whose instance gossip reports healthy (`NAME`, or `NAME (draining)`).
    pub peers: Vec<String>,
    /// Requests and connections handed to peers over the mesh since the node started.
    pub forwarded: u64,
    /// Requests and connections sent again after a failure before any byte reached an upstream
    /// (or, for bodiless safe requests, after a broken connection).
    pub retries: u64,
    /// Instances ejected by passive health.
    pub ejections: u64,
}
