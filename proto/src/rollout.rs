//! A rollout across hosts: its state (what the coordinator journals before acting, what gossip
//! carries so every node can show it and another node can resume it), and the requests around it.
//!
//! ## Guarantees
//! - The state is plain data: the rollout engine (`halley-node`'s `rollout` module) is the only
//!   code that changes it, and it does so without IO or clocks.
//! - The gossip form ([`RolloutState::to_gossip`]) carries no spec and no env: only ids, versions,
//!   host names and steps, and the reason of the last decision.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::deploy::ReleaseVersion;
use crate::spec::ServiceName;
use crate::{Error, NodeName};

/// Where a host is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostStep {
    /// Not reached yet.
    Pending,
    /// Marked draining; waiting `drain_wait`.
    Draining,
    /// Receiving the release, starting, checking and flipping it.
    Deploying,
    /// Serving the new release; its signals are watched for `bake`.
    Baking,
    /// Baked; still watched until the rollout ends.
    Updated,
    /// Its deploy failed (it reverted itself: the new release got no traffic).
    Failed,
    /// Unreachable on its turn and skipped (`--skip-unreachable`).
    Skipped,
    /// Being put back on its committed release.
    Reverting,
    /// Back on its committed release.
    Reverted,
    /// Committing the new release.
    Committing,
    /// The new release is committed.
    Committed,
}

impl HostStep {
    /// All steps, for parsing.
    pub const ALL: [HostStep; 11] = [
        HostStep::Pending,
        HostStep::Draining,
        HostStep::Deploying,
        HostStep::Baking,
        HostStep::Updated,
        HostStep::Failed,
        HostStep::Skipped,
        HostStep::Reverting,
        HostStep::Reverted,
        HostStep::Committing,
        HostStep::Committed,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStep::Pending => "pending",
            HostStep::Draining => "draining",
            HostStep::Deploying => "deploying",
            HostStep::Baking => "baking",
            HostStep::Updated => "updated",
            HostStep::Failed => "failed",
            HostStep::Skipped => "skipped",
            HostStep::Reverting => "reverting",
            HostStep::Reverted => "reverted",
            HostStep::Committing => "committing",
            HostStep::Committed => "committed",
        }
    }

    /// Parses [`HostStep::as_str`] text.
    pub fn parse(text: &str) -> Option<HostStep> {
        HostStep::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the host has been changed by the rollout (so a rollback must put it back).
    pub fn touched(self) -> bool {
        !matches!(self, HostStep::Pending | HostStep::Skipped)
    }
}

/// The rollout as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Walking the batches.
    Running,
    /// Stopped, waiting for `deploy --resume` (a host was unreachable on its turn, or a
    /// regression with `auto_rollback = false`).
    Paused,
    /// Putting every touched host back.
    RollingBack,
    /// Committing the release on every updated host.
    Committing,
    /// Done: every host runs the new release.
    Completed,
    /// Done: every touched host is back on its committed release.
    RolledBack,
    /// Stopped because a host has seen a newer epoch: another coordinator owns the service.
    Fenced,
}

impl Phase {
    /// All phases, for parsing.
    pub const ALL: [Phase; 7] = [
        Phase::Running,
        Phase::Paused,
        Phase::RollingBack,
        Phase::Committing,
        Phase::Completed,
        Phase::RolledBack,
        Phase::Fenced,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::RollingBack => "rolling-back",
            Phase::Committing => "committing",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled-back",
            Phase::Fenced => "fenced",
        }
    }

    /// Parses [`Phase::as_str`] text.
    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Whether nothing more will happen (a paused rollout can still be resumed).
    pub fn finished(self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack | Phase::Fenced)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rollout does to its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Walks a new release across the hosts, batch by batch.
    Deploy,
    /// `halley-node rollback`: puts every host on its recorded target release, all at once.
    Rollback,
    /// `halley-node service remove`: stops the service on every host and frees its entry
    /// point. A host it did not reach removes the service itself once it sees the removal
    /// completed (a host's step `committed` means removed there). Its `version` says what
    /// becomes of the data: [`REMOVE_KEEP_DATA`] or [`REMOVE_PURGE`].
    Remove,
}

/// The `version` of a removal that keeps the service's data directory and backups.
pub const REMOVE_KEEP_DATA: &str = "keep-data";
/// The `version` of a removal that deletes them too (`--purge`).
pub const REMOVE_PURGE: &str = "purge";

impl Mode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Deploy => "deploy",
            Mode::Rollback => "rollback",
            Mode::Remove => "remove",
        }
    }
}

/// One host in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProgress {
    /// The host.
    pub node: NodeName,
    /// Its step.
    pub step: HostStep,
    /// When it entered the step (coordinator wall clock, unix ms).
    pub since_ms: u64,
    /// When its wait (drain, bake, retry) ends.
    pub until_ms: Option<u64>,
    /// Failed revert attempts (a revert is retried, never replaced by another rollout).
    pub attempts: u32,
    /// What happened last on this host, for the output.
    pub note: String,
    /// In a rollback: the release this host goes back to, recorded before any step is sent to
    /// it, so a resumed rollback sends it to the same release whatever it runs by then.
    pub target: Option<ReleaseVersion>,
}

impl HostProgress {
    /// `node` at `step` since `now_ms`, with no wait, no attempts and no note yet.
    pub fn at(node: NodeName, step: HostStep, now_ms: u64) -> Self {
        HostProgress {
            node,
            step,
            since_ms: now_ms,
            until_ms: None,
            attempts: 0,
            note: String::new(),
            target: None,
        }
    }
}

/// A rollout's state: the coordinator journals it before every action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Unique id.
    pub id: String,
    /// The service.
    pub service: ServiceName,
    /// Deploy or rollback.
    pub mode: Mode,
    /// The release rolled out (a rollback: the release most hosts go back to).
    pub version: ReleaseVersion,
    /// Fencing epoch (larger than any earlier rollout of the service).
    pub epoch: u64,
    /// Grows with every journal write, so the newest copy wins.
    pub seq: u64,
    /// The node driving it.
    pub coordinator: NodeName,
    /// Hosts in plan order.
    pub hosts: Vec<HostProgress>,
    /// Hosts per batch.
    pub batch: u32,
    /// The phase.
    pub phase: Phase,
    /// Why the rollout paused, rolled back or stopped.
    pub reason: String,
    /// When it started (unix ms).
    pub started_ms: u64,
    /// When it ended (unix ms), once finished.
    pub ended_ms: Option<u64>,
    /// The release's pin: SHA-256 over the spec, the artifact's digest and its file name, as
    /// the admin that started the rollout had them. A host that fetches the release from a
    /// peer takes it only if it matches, so a host serving the service (a worker among them)
    /// cannot hand others a doctored spec. `None` for a rollback whose coordinator did not
    /// hold the release itself, and for journals written before pins.
    pub release: Option<[u8; 32]>,
}

/// A [`RolloutState`] as journaled before rollouts carried a release pin (journal code 122).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpinnedRolloutState {
    /// See [`RolloutState`].
    pub id: String,
    /// See [`RolloutState`].
    pub service: ServiceName,
    /// See [`RolloutState`].
    pub mode: Mode,
    /// See [`RolloutState`].
    pub version: ReleaseVersion,
    /// See [`RolloutState`].
    pub epoch: u64,
    /// See [`RolloutState`].
    pub seq: u64,
    /// See [`RolloutState`].
    pub coordinator: NodeName,
    /// See [`RolloutState`].
    pub hosts: Vec<HostProgress>,
    /// See [`RolloutState`].
    pub batch: u32,
    /// See [`RolloutState`].
    pub phase: Phase,
    /// See [`RolloutState`].
    pub reason: String,
    /// See [`RolloutState`].
    pub started_ms: u64,
    /// See [`RolloutState`].
    pub ended_ms: Option<u64>,
}

impl UnpinnedRolloutState {
    /// The state with `release` as its pin.
    pub fn pinned(self, release: Option<[u8; 32]>) -> RolloutState {
        RolloutState {
            id: self.id,
            service: self.service,
            mode: self.mode,
            version: self.version,
            epoch: self.epoch,
            seq: self.seq,
            coordinator: self.coordinator,
            hosts: self.hosts,
            batch: self.batch,
            phase: self.phase,
            reason: self.reason,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            release,
        }
    }
}

impl RolloutState {
    /// Whether this is a removal that deletes the service's data too.
    pub fn purges(&self) -> bool {
        self.mode == Mode::Remove && self.version.as_str() == REMOVE_PURGE
    }

    /// The gossip value: `id=..;mode=..;epoch=..;seq=..;coord=..;v=..;phase=..;batch=..;start=..;
    /// end=..;hosts=n1:committed,n2:reverting@1.0;rel=HEX;why=...` (a host's rollback target
    /// after `@`; `rel`, the release pin, only when there is one; `why` last, as it is free text).
    pub fn to_gossip(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match &h.target {
                Some(t) => format!("{}:{}@{t}", h.node, h.step.as_str()),
                None => format!("{}:{}", h.node, h.step.as_str()),
            })
            .collect();
        format!(
            "id={};mode={};epoch={};seq={};coord={};v={};phase={};batch={};start={};end={};hosts={}{};why={}",
            self.id,
            self.mode.as_str(),
            self.epoch,
            self.seq,
            self.coordinator,
            self.version,
            self.phase.as_str(),
            self.batch,
            self.started_ms,
            self.ended_ms.map_or("-".into(), |e| e.to_string()),
            hosts.join(","),
            self.release.map_or(String::new(), |r| format!(
                ";rel={}",
                crate::hex::encode(&r)
            )),
            self.reason.replace('\n', " ")
        )
    }

    /// Parses [`RolloutState::to_gossip`] text (host notes are not carried).
    pub fn from_gossip(service: &ServiceName, text: &str) -> Result<Self, Error> {
        let bad = || Error::BadGossipValue {
            key: format!("rollout:{service}"),
            value: text.chars().take(64).collect(),
        };
        let (fields, why) = text.split_once(";why=").ok_or_else(bad)?;
        let mut state = RolloutState {
            id: String::new(),
            service: service.clone(),
            mode: Mode::Deploy,
            version: ReleaseVersion::parse("0").map_err(|_| bad())?,
            epoch: 0,
            seq: 0,
            coordinator: NodeName::parse("unknown").map_err(|_| bad())?,
            hosts: Vec::new(),
            batch: 1,
            phase: Phase::Running,
            reason: why.to_owned(),
            started_ms: 0,
            ended_ms: None,
            release: None,
        };
        for part in fields.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad());
            match k {
                "id" => state.id = v.to_owned(),
                "mode" => {
                    state.mode = match v {
                        "deploy" => Mode::Deploy,
                        "rollback" => Mode::Rollback,
                        "remove" => Mode::Remove,
                        _ => return Err(bad()),
                    }
                }
                "epoch" => state.epoch = num(v)?,
                "seq" => state.seq = num(v)?,
                "coord" => state.coordinator = NodeName::parse(v).map_err(|_| bad())?,
                "v" => state.version = ReleaseVersion::parse(v).map_err(|_| bad())?,
                "phase" => state.phase = Phase::parse(v).ok_or_else(bad)?,
                "batch" => state.batch = u32::try_from(num(v)?).map_err(|_| bad())?,
                "start" => state.started_ms = num(v)?,
                "end" => state.ended_ms = if v == "-" { None } else { Some(num(v)?) },
                "rel" => state.release = Some(crate::hex::decode_array::<32>(v).ok_or_else(bad)?),
                "hosts" => {
                    for entry in v.split(',').filter(|e| !e.is_empty()) {
                        let (name, step) = entry.split_once(':').ok_or_else(bad)?;
                        let (step, target) = match step.split_once('@') {
                            Some((step, t)) => {
                                (step, Some(ReleaseVersion::parse(t).map_err(|_| bad())?))
                            }
                            None => (step, None),
                        };
                        state.hosts.push(HostProgress {
                            target,
                            ..HostProgress::at(
                                NodeName::parse(name).map_err(|_| bad())?,
                                HostStep::parse(step).ok_or_else(bad)?,
                                0,
                            )
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(state)
    }

    /// `done/total` hosts updated or committed (a rollback: `done/total hosts back`), for
    /// messages.
    pub fn progress(&self) -> String {
        if self.mode == Mode::Rollback {
            let back = self
                .hosts
                .iter()
                .filter(|h| h.step == HostStep::Reverted)
                .count();
            return format!("{back}/{} hosts back", self.hosts.len());
        }
        if self.mode == Mode::Remove {
            let gone = self
                .hosts
                .iter()
                .filter(|h| h.step == HostStep::Committed)
                .count();
            return format!("removed from {gone}/{} hosts", self.hosts.len());
        }
        let done = self
            .hosts
            .iter()
            .filter(|h| {
                matches!(
                    h.step,
                    HostStep::Baking | HostStep::Updated | HostStep::Committed
                )
            })
            .count();
        format!("{done}/{} hosts", self.hosts.len())
    }
}

/// How to start a rollout (the CLI's `deploy`, sent to its local node, the coordinator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// The service.
    pub service: ServiceName,
    /// What to do.
    pub kind: RolloutKind,
    /// Skip hosts that are unreachable on their turn instead of pausing.
    pub skip_unreachable: bool,
}

/// What a rollout does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutKind {
    /// Roll a new release out.
    Deploy {
        /// The spec, env merged; boxed as it dwarfs the rest.
        spec: Box<crate::spec::ServiceSpec>,
        /// The version.
        version: ReleaseVersion,
        /// The artifact on the coordinator's host (absolute path).
        artifact: String,
        /// Its expected SHA-256.
        sha256: Option<[u8; 32]>,
    },
    /// Continue (or roll back) the rollout recorded in the journal, taking it over from a dead
    /// coordinator; `force` also takes it from one that still looks alive.
    Resume {
        /// Take over even from a coordinator that looks alive.
        force: bool,
    },
    /// Put every host back on a release it has (its previous committed one, or `to`), all hosts
    /// at once.
    Rollback {
        /// The release to go back to; default: each host's previous committed release.
        to: Option<ReleaseVersion>,
    },
    /// Stop the unfinished (or paused) rollout and revert every host it touched
    /// (`rollout abort`), taking it over from its coordinator if another node drives it.
    Abort,
    /// `service remove`: stop the service on every host and free its entry point; its data
    /// directory (and backups) go too with `purge`.
    Remove {
        /// Delete the service's data directory and backups as well.
        purge: bool,
    },
}

/// One line of a service's rollout history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The rollout id.
    pub id: String,
    /// The release.
    pub version: ReleaseVersion,
    /// Who coordinated it.
    pub coordinator: NodeName,
    /// When it started and ended (unix ms).
    pub started_ms: u64,
    /// When it ended (unix ms).
    pub ended_ms: u64,
    /// How it ended.
    pub outcome: Phase,
    /// Why (for a rollback or a pause).
    pub reason: String,
}

impl HistoryEntry {
    /// The history line of a rollout that ended (`ended_ms` fills in a missing end).
    pub fn of(state: &RolloutState, ended_ms: u64) -> Self {
        HistoryEntry {
            id: state.id.clone(),
            version: state.version.clone(),
            coordinator: state.coordinator.clone(),
            started_ms: state.started_ms,
            ended_ms: state.ended_ms.unwrap_or(ended_ms),
            outcome: state.phase,
            reason: state.reason.clone(),
        }
    }

    /// One line of the gossip value `hist:NAME`: `id|version|coordinator|start|end|outcome|reason`.
    pub fn to_line(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.id,
            self.version,
            self.coordinator,
            self.started_ms,
            self.ended_ms,
            self.outcome.as_str(),
            self.reason.replace('\n', " ")
        )
    }

    /// Parses [`HistoryEntry::to_line`] text.
    pub fn from_line(line: &str) -> Option<Self> {
        let mut parts = line.splitn(7, '|');
        Some(HistoryEntry {
            id: parts.next()?.to_owned(),
            version: ReleaseVersion::parse(parts.next()?).ok()?,
            coordinator: NodeName::parse(parts.next()?).ok()?,
            started_ms: parts.next()?.parse().ok()?,
            ended_ms: parts.next()?.parse().ok()?,
            outcome: Phase::parse(parts.next()?)?,
            reason: parts.next()?.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_form_round_trips_without_notes() {
        let state = RolloutState {
            id: "r1".into(),
            service: ServiceName::parse("web").unwrap(),
            mode: Mode::Rollback,
            version: ReleaseVersion::parse("2.0").unwrap(),
            epoch: 3,
            seq: 9,
            coordinator: NodeName::parse("n1").unwrap(),
            hosts: vec![HostProgress {
                node: NodeName::parse("n2").unwrap(),
                step: HostStep::Baking,
                since_ms: 0,
                until_ms: None,
                attempts: 0,
                note: String::new(),
                target: Some(ReleaseVersion::parse("1.9").unwrap()),
            }],
            batch: 1,
            phase: Phase::RollingBack,
            reason: "n2: 5xx 12%; p99=3ms".into(),
            started_ms: 5,
            ended_ms: None,
            release: None,
        };
        let text = state.to_gossip();
        assert_eq!(
            RolloutState::from_gossip(&state.service, &text).unwrap(),
            state
        );
        let pinned = RolloutState {
            release: Some([0xab; 32]),
            ..state
        };
        let text = pinned.to_gossip();
        assert!(
            text.contains(&format!(";rel={};why=", "ab".repeat(32))),
            "{text}"
        );
        assert_eq!(
            RolloutState::from_gossip(&pinned.service, &text).unwrap(),
            pinned
        );
    }
}
