//! The membership view: what `status` shows, derived from chitchat's state. Pure: the driver feeds
//! it snapshots and a monotonic `now`; it reads no clock and does no IO.
//!
//! ## Rules
//! - One row per node name: a restarted node has a new, larger generation, and the newest
//!   generation replaces the old one (whose chitchat id then dies).
//! - State, first match wins: `left` flag set → left; the answering node itself → alive (or
//!   draining); failure detector says dead → dead; heartbeat not advanced for `suspect_after`, or
//!   not yet judged → suspect; draining flag → draining; else alive.
//! - "Last heard" is the time since the node's heartbeat last advanced in our copy of its state.
//! - A node that is dead, left or removed can be forgotten (`forget NODE`): its generation and
//!   every older one are left out from then on, though chitchat keeps reporting them for an
//!   hour. It shows again as soon as it proves alive: a newer generation (it started again),
//!   or its forgotten generation's heartbeat advancing past the one it was forgotten at (it was
//!   only cut off).
//!
//! ## Non-goals
//! It does not judge liveness itself: that is chitchat's phi-accrual detector.

use core::net::SocketAddr;
use std::collections::HashMap;

use halley_proto::NodeName;
use halley_proto::message::{MemberRow, MemberState};

/// What the failure detector says about a chitchat id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// In chitchat's live set.
    Live,
    /// In chitchat's dead set.
    Dead,
    /// Known but not judged yet (fewer than two heartbeats seen).
    Unknown,
}

/// One chitchat node as seen in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Node name (chitchat node id).
    pub name: NodeName,
    /// Generation.
    pub generation: u64,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Failure detector verdict.
    pub liveness: Liveness,
    /// Published version.
    pub version: String,
    /// The role it says it has (shown only; requests are authorised by certificates).
    pub role: String,
    /// Draining flag.
    pub draining: bool,
    /// Left flag.
    pub left: bool,
    /// Daemon start, unix ms.
    pub started_ms: Option<u64>,
    /// Services it publishes: name and summary text.
    pub services: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    heartbeat: u64,
    changed_at_ms: u64,
}

/// The membership table of one node.
#[derive(Debug)]
pub struct MembershipView {
    self_name: NodeName,
    suspect_after_ms: u64,
    heard: HashMap<(NodeName, u64), Heard>,
    newest: HashMap<NodeName, Observation>,
    /// Per name, the newest generation forgotten and its heartbeat then.
    forgotten: HashMap<NodeName, (u64, u64)>,
}

/// Why a node cannot be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unforgettable {
    /// No member has that name.
    Unknown,
    /// It is the answering node.
    Itself,
    /// It may still be running (alive, suspect or draining).
    Running(MemberState),
}

impl MembershipView {
    /// An empty view for the node `self_name`.
    pub fn new(self_name: NodeName, suspect_after_ms: u64) -> Self {
        Self {
            self_name,
            suspect_after_ms,
            heard: HashMap::new(),
            newest: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }

    /// Leaves `name` out of the view, if it is dead or left (or `removed` by an admin); returns
    /// the generation forgotten and its heartbeat.
    pub fn forget(
        &mut self,
        name: &NodeName,
        removed: bool,
        now_ms: u64,
    ) -> Result<(u64, u64), Unforgettable> {
        if name == &self.self_name {
            return Err(Unforgettable::Itself);
        }
        let row = self
            .rows(now_ms, 0)
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or(Unforgettable::Unknown)?;
        if !removed && !matches!(row.state, MemberState::Dead | MemberState::Left) {
            return Err(Unforgettable::Running(row.state));
        }
        // A node that left stopped for good in this generation (its last heartbeats may still be
        // spreading); only a dead one can come back in the same generation.
        let heartbeat = match row.state {
            MemberState::Left => u64::MAX,
            _ => self.newest.get(name).map_or(0, |o| o.heartbeat),
        };
        self.remember_forgotten(name.clone(), row.generation, heartbeat);
        Ok((row.generation, heartbeat))
    }

    /// Leaves `name` out at `generation` up to `heartbeat`, and older generations (a forget made
    /// earlier, or by another admin).
    pub fn remember_forgotten(&mut self, name: NodeName, generation: u64, heartbeat: u64) {
        let entry = self
            .forgotten
            .entry(name.clone())
            .or_insert((generation, heartbeat));
        *entry = (*entry).max((generation, heartbeat));
        if self.newest.get(&name).is_some_and(|o| self.hidden(o)) {
            self.newest.remove(&name);
        }
    }

    /// Whether an observation is of a forgotten node that has not proved alive since.
    fn hidden(&self, obs: &Observation) -> bool {
        // Only a heartbeat proves it: a node that just left can still count as live for the
        // failure detector for a few seconds.
        self.forgotten.get(&obs.name).is_some_and(|(g, hb)| {
            obs.generation < *g || (obs.generation == *g && obs.heartbeat <= *hb)
        })
    }

    /// Every name forgotten, with the newest generation forgotten and its heartbeat then,
    /// sorted by name.
    pub fn forgotten(&self) -> Vec<(NodeName, u64, u64)> {
        let mut list: Vec<(NodeName, u64, u64)> = self
            .forgotten
            .iter()
            .map(|(n, (g, hb))| (n.clone(), *g, *hb))
            .collect();
        list.sort();
        list
    }

    /// Takes in a full snapshot of chitchat's state at monotonic time `now_ms`.
    pub fn observe(&mut self, snapshot: Vec<Observation>, now_ms: u64) {
        let mut newest: HashMap<NodeName, Observation> = HashMap::new();
        let mut keys = Vec::with_capacity(snapshot.len());
        for obs in snapshot {
            if self.hidden(&obs) {
                continue;
            }
            let key = (obs.name.clone(), obs.generation);
            keys.push(key.clone());
            let heard = self.heard.entry(key).or_insert(Heard {
                heartbeat: obs.heartbeat,
                changed_at_ms: now_ms,
            });
            if obs.heartbeat != heard.heartbeat {
                *heard = Heard {
                    heartbeat: obs.heartbeat,
                    changed_at_ms: now_ms,
                };
            }
            match newest.get(&obs.name) {
                Some(seen) if seen.generation >= obs.generation => {}
                _ => {
                    newest.insert(obs.name.clone(), obs);
                }
            }
        }
        // Forget ids that chitchat no longer reports (garbage-collected dead nodes).
        let reported: std::collections::HashSet<(NodeName, u64)> = keys.into_iter().collect();
        self.heard.retain(|key, _| reported.contains(key));
        self.newest = newest;
    }

    /// The table at monotonic `now_ms`; `wall_ms` (unix ms) is used for uptimes. Sorted by name.
    pub fn rows(&self, now_ms: u64, wall_ms: u64) -> Vec<MemberRow> {
        let mut rows: Vec<MemberRow> = self
            .newest
            .values()
            .map(|obs| {
                let is_self = obs.name == self.self_name;
                let last_heard_ms = (!is_self)
                    .then(|| self.heard.get(&(obs.name.clone(), obs.generation)))
                    .flatten()
                    .map(|h| now_ms.saturating_sub(h.changed_at_ms));
                let state = self.state(obs, is_self, last_heard_ms);
                let running = !matches!(state, MemberState::Dead | MemberState::Left);
                MemberRow {
                    name: obs.name.clone(),
                    addr: obs.addr,
                    state,
                    last_heard_ms,
                    version: obs.version.clone(),
                    role: obs.role.clone(),
                    uptime_secs: obs
                        .started_ms
                        .filter(|_| running)
                        .map(|s| wall_ms.saturating_sub(s) / 1000),
                    generation: obs.generation,
                    services: obs.services.clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    fn state(&self, obs: &Observation, is_self: bool, last_heard_ms: Option<u64>) -> MemberState {
        if obs.left {
            return MemberState::Left;
        }
        if is_self {
            return if obs.draining {
                MemberState::Draining
            } else {
                MemberState::Alive
            };
        }
        match obs.liveness {
            Liveness::Dead => MemberState::Dead,
            Liveness::Unknown => MemberState::Suspect,
            Liveness::Live if last_heard_ms.unwrap_or(0) > self.suspect_after_ms => {
                MemberState::Suspect
            }
            Liveness::Live if obs.draining => MemberState::Draining,
            Liveness::Live => MemberState::Alive,
        }
    }

    /// The address of a live (alive, suspect or draining) node with this name, other than self.
    pub fn live_holder_of(&self, name: &NodeName, now_ms: u64) -> Option<SocketAddr> {
        self.rows(now_ms, 0).into_iter().find_map(|row| {
            let live = matches!(
                row.state,
                MemberState::Alive | MemberState::Suspect | MemberState::Draining
            );
            (live && &row.name == name).then_some(row.addr)
        })
    }

    /// Gossip addresses of every other node not known to be dead or gone, for seeds and join replies.
    pub fn peer_addrs(&self, now_ms: u64) -> Vec<SocketAddr> {
        self.rows(now_ms, 0)
            .into_iter()
            .filter(|row| row.name != self.self_name)
            .filter(|row| !matches!(row.state, MemberState::Dead | MemberState::Left))
            .map(|row| row.addr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/membership/*.txt`. Commands:
    //! `self NAME`, `suspect-after MS`, `at MS` (applies the observations since the last `at`),
    //! `observe NAME gen=G hb=H live|dead|unknown [draining] [left] [started=MS]`, and
    //! `rows WALL_MS` followed by the expected rows, each `> name state heard uptime gen`, and
    //! `forget NAME` followed by `> forgot gen=G hb=H` or `> refused WHY`.
    //! `UPDATE_GOLDENFILES=1` rewrites the expectations.
    use super::*;

    /// Makes the view on first use (after `self` and `suspect-after`) and applies the observations
    /// gathered since the last `at`.
    fn apply(
        view: &mut Option<MembershipView>,
        pending: &mut Vec<Observation>,
        now: u64,
        self_name: &Option<NodeName>,
        suspect_after: u64,
    ) {
        let view = view.get_or_insert_with(|| {
            MembershipView::new(
                self_name.clone().expect("scenario sets `self` first"),
                suspect_after,
            )
        });
        if !pending.is_empty() {
            view.observe(std::mem::take(pending), now);
        }
    }

    fn run(script: &str) -> String {
        let mut view: Option<MembershipView> = None;
        let (mut self_name, mut suspect_after) = (None, 1000);
        let mut pending = Vec::new();
        let mut now = 0;
        crate::scenario::replay(script, |words, out| match words {
            ["self", name] => self_name = Some(NodeName::parse(name).unwrap()),
            ["suspect-after", ms] => suspect_after = ms.parse().unwrap(),
            ["at", ms] => {
                apply(&mut view, &mut pending, now, &self_name, suspect_after);
                now = ms.parse().unwrap();
            }
            ["observe", name, rest @ ..] => {
                let mut obs = Observation {
                    name: NodeName::parse(name).unwrap(),
                    generation: 1,
                    addr: format!("127.0.0.1:{}", 7000 + name.len()).parse().unwrap(),
                    heartbeat: 0,
                    liveness: Liveness::Unknown,
                    version: "0.1.0".into(),
                    role: "admin".into(),
                    draining: false,
                    left: false,
                    started_ms: None,
                    services: Vec::new(),
                };
                for word in rest {
                    match word.split_once('=') {
                        Some(("gen", v)) => obs.generation = v.parse().unwrap(),
                        Some(("hb", v)) => obs.heartbeat = v.parse().unwrap(),
                        Some(("started", v)) => obs.started_ms = Some(v.parse().unwrap()),
                        None if *word == "live" => obs.liveness = Liveness::Live,
                        None if *word == "dead" => obs.liveness = Liveness::Dead,
                        None if *word == "unknown" => obs.liveness = Liveness::Unknown,
                        None if *word == "draining" => obs.draining = true,
                        None if *word == "left" => obs.left = true,
                        _ => panic!("bad observe word {word:?}"),
                    }
                }
                pending.push(obs);
            }
            ["forget", name] => {
                apply(&mut view, &mut pending, now, &self_name, suspect_after);
                let name = NodeName::parse(name).unwrap();
                let said = match view.as_mut().map(|v| v.forget(&name, false, now)) {
                    Some(Ok((generation, hb))) => format!("forgot gen={generation} hb={hb}"),
                    Some(Err(why)) => format!("refused {why:?}"),
                    None => "no view".into(),
                };
                out.push_str(&format!("> {said}\n"));
            }
            ["rows", wall] => {
                apply(&mut view, &mut pending, now, &self_name, suspect_after);
                let rows = view.as_ref().map(|v| v.rows(now, wall.parse().unwrap()));
                for row in rows.unwrap_or_default() {
                    let heard = row.last_heard_ms.map_or("-".into(), |h| format!("{h}ms"));
                    let up = row.uptime_secs.map_or("-".into(), |u| format!("{u}s"));
                    out.push_str(&format!(
                        "> {} {} {heard} {up} gen={}\n",
                        row.name,
                        row.state.as_str(),
                        row.generation
                    ));
                }
            }
            _ => panic!("unknown scenario command: {words:?}"),
        })
    }

    #[test]
    fn membership_scenarios() {
        crate::scenario::run_folder("membership", 3, run);
    }
}
