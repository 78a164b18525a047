//! Which instance of a service gets a new request or connection at one entry point.
//!
//! Pure: the candidates (each instance with what gossip and this entry point's own passive
//! health say of it) in, one choice out. The proxy calls [`choose`] per request (HTTP) or per
//! connection (TCP), and once more, excluding the first choice, for its one retry.
//!
//! ## Rules
//! - Candidates fall in three tiers: ready (not draining, not ejected), draining (but not
//!   ejected), ejected. The choice is made in the best tier that has any candidate, so a drained
//!   host is routed around while anyone else serves, and ejection never leaves a service with no
//!   instance to try.
//! - `local`: this host's instance only (whatever its tier): the one-host behaviour.
//! - `local-first`: this host's instance when it is in the best tier, else the peer with the
//!   fewest requests in flight.
//! - `balanced`: the instance with the fewest requests in flight from this entry point (this
//!   host's instance counts everything in flight on its slot).
//! - The instance this client connection already uses keeps it while it has at most half again
//!   as many requests in flight as the least loaded one, plus [`PIN_SLACK`]: switching costs a new
//!   connection (or a mesh stream and its round trip), which outweighs a small imbalance. Other
//!   ties rotate by `spin`, so new clients spread over the instances.
//!
//! ## Non-goals
//! Health from gossip (the caller lists only instances gossip calls healthy, plus its own).

use halley_proto::NodeName;
use halley_proto::spec::Routing;

/// How many more requests in flight the instance a client connection already uses may have
/// than the least loaded one before the connection's next request goes elsewhere, on top of
/// half the least loaded one's count.
pub const PIN_SLACK: u64 = 2;

/// The most requests in flight the pinned instance may have and keep the client connection.
fn pin_limit(least: u64) -> u64 {
    least + least / 2 + PIN_SLACK
}

/// An instance of a service: this host's, or a peer node's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// This host's active slot.
    Local,
    /// A peer node's active slot, reached over the mesh.
    Peer(NodeName),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local => f.write_str("local"),
            Target::Peer(n) => write!(f, "{n}"),
        }
    }
}

/// One instance as the entry point sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Which instance.
    pub target: Target,
    /// Its host drains (a rollout, or `halley-node drain`).
    pub draining: bool,
    /// Passive health has it out of rotation.
    pub ejected: bool,
    /// Requests or connections in flight to it.
    pub inflight: u64,
}

impl Candidate {
    fn tier(&self) -> u8 {
        match (self.ejected, self.draining) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        }
    }
}

/// Picks the index of the candidate to use, or `None` when there is none (after `exclude`).
pub fn choose(
    policy: Routing,
    candidates: &[Candidate],
    pinned: Option<&Target>,
    exclude: Option<&Target>,
    spin: u64,
) -> Option<usize> {
    let open: Vec<usize> = (0..candidates.len())
        .filter(|&i| Some(&candidates[i].target) != exclude)
        .filter(|&i| policy != Routing::Local || candidates[i].target == Target::Local)
        .collect();
    let best = open.iter().map(|&i| candidates[i].tier()).min()?;
    let tier: Vec<usize> = open
        .into_iter()
        .filter(|&i| candidates[i].tier() == best)
        .collect();
    if policy != Routing::Balanced
        && let Some(&local) = tier
            .iter()
            .find(|&&i| candidates[i].target == Target::Local)
    {
        return Some(local);
    }
    let least = tier.iter().map(|&i| candidates[i].inflight).min()?;
    if let Some(&p) = tier.iter().find(|&&i| {
        Some(&candidates[i].target) == pinned && candidates[i].inflight <= pin_limit(least)
    }) {
        return Some(p);
    }
    let tied: Vec<usize> = tier
        .into_iter()
        .filter(|&i| candidates[i].inflight == least)
        .collect();
    Some(tied[(spin % tied.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/routing/*.txt`. Commands:
    //! `policy local|local-first|balanced`, `instance TARGET [draining] [inflight=N]` (adds or
    //! replaces), `gone TARGET`, `at MS`, `outcome TARGET good|5xx|connect-failed`,
    //! `pick [pinned=T] [exclude=T] [spin=N]`. `pick` answers with the chosen instance;
    //! `outcome` with a new ejection deadline, if any. `UPDATE_GOLDENFILES=1` rewrites answers.
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::ejection::{Outcome, Passive};

    fn target(word: &str) -> Target {
        match word {
            "local" => Target::Local,
            name => Target::Peer(NodeName::parse(name).expect("a node name")),
        }
    }

    fn run(script: &str) -> String {
        let mut policy = Routing::LocalFirst;
        let mut instances: Vec<Candidate> = Vec::new();
        let mut passive: BTreeMap<Target, Passive> = BTreeMap::new();
        let mut now = 0;
        crate::scenario::replay(script, |words, out| match words {
            ["policy", p] => {
                policy = match *p {
                    "local" => Routing::Local,
                    "local-first" => Routing::LocalFirst,
                    "balanced" => Routing::Balanced,
                    other => panic!("unknown policy {other}"),
                }
            }
            ["at", ms] => now = ms.parse().expect("milliseconds"),
            ["instance", t, rest @ ..] => {
                let t = target(t);
                instances.retain(|c| c.target != t);
                let mut c = Candidate {
                    target: t,
                    draining: false,
                    ejected: false,
                    inflight: 0,
                };
                for w in rest {
                    match w.split_once('=') {
                        Some(("inflight", n)) => c.inflight = n.parse().expect("a count"),
                        None if *w == "draining" => c.draining = true,
                        _ => panic!("unknown instance option {w}"),
                    }
                }
                instances.push(c);
            }
            ["gone", t] => {
                let t = target(t);
                instances.retain(|c| c.target != t);
            }
            ["outcome", t, o] => {
                let outcome = match *o {
                    "good" => Outcome::Good,
                    "5xx" => Outcome::ServerError,
                    "connect-failed" => Outcome::ConnectFailed,
                    other => panic!("unknown outcome {other}"),
                };
                if let Some(until) = passive.entry(target(t)).or_default().record(outcome, now) {
                    out.push_str(&format!("> ejected until {until}\n"));
                }
            }
            ["pick", options @ ..] => {
                let (mut pinned, mut exclude, mut spin) = (None, None, 0);
                for w in options {
                    match w.split_once('=') {
                        Some(("pinned", t)) => pinned = Some(target(t)),
                        Some(("exclude", t)) => exclude = Some(target(t)),
                        Some(("spin", n)) => spin = n.parse().expect("a number"),
                        _ => panic!("unknown pick option {w}"),
                    }
                }
                let candidates: Vec<Candidate> = instances
                    .iter()
                    .map(|c| Candidate {
                        ejected: passive.get(&c.target).is_some_and(|p| p.ejected(now)),
                        ..c.clone()
                    })
                    .collect();
                match choose(policy, &candidates, pinned.as_ref(), exclude.as_ref(), spin) {
                    Some(i) => out.push_str(&format!("> {}\n", candidates[i].target)),
                    None => out.push_str("> none\n"),
                }
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn routing_scenarios() {
        crate::scenario::run_folder("routing", 4, run);
    }
}
