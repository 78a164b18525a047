//! Convergence decisions: which completed rollouts this node missed (skipped while it was away)
//! and must catch up with by itself, and which hosts can give it the release.
//!
//! ## Rules
//! - Only a completed rollout counts (the newest of its service, as the caller passes them): a
//!   running, paused or rolled-back one leaves the host as it is.
//! - The node must be listed in that rollout, not committed there, and its own committed release
//!   of the service must differ from the rollout's.
//! - The release comes from the hosts that committed it, in rollout order.

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::rollout::{HostStep, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// The rollouts `me` must catch up with; `committed` says what `me` has committed of a service.
pub fn missed<'a>(
    rollouts: &'a [RolloutState],
    me: &NodeName,
    committed: impl Fn(&ServiceName) -> Option<ReleaseVersion>,
) -> Vec<&'a RolloutState> {
    rollouts
        .iter()
        .filter(|state| state.phase == Phase::Completed)
        .filter(|state| {
            state
                .hosts
                .iter()
                .find(|h| &h.node == me)
                .is_some_and(|h| h.step != HostStep::Committed)
        })
        .filter(|state| committed(&state.service).as_ref() != Some(&state.version))
        .collect()
}

/// The hosts that can give the release of `state`: those that committed it.
pub fn sources(state: &RolloutState) -> Vec<NodeName> {
    state
        .hosts
        .iter()
        .filter(|h| h.step == HostStep::Committed)
        .map(|h| h.node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/converge/*.txt`. Commands:
    //! `rollout SERVICE VERSION PHASE HOST=STEP...` (the newest rollout of a service),
    //! `committed SERVICE VERSION|-` (what this node, n3, has committed), `pass` (prints what
    //! n3 catches up with, and from where).
    use std::collections::BTreeMap;

    use halley_proto::rollout::HostProgress;

    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    fn step(s: &str) -> HostStep {
        HostStep::ALL
            .iter()
            .copied()
            .find(|h| h.as_str() == s)
            .unwrap_or_else(|| panic!("unknown host step {s:?}"))
    }

    fn run(script: &str) -> String {
        let mut rollouts: BTreeMap<String, RolloutState> = BTreeMap::new();
        let mut committed: BTreeMap<String, ReleaseVersion> = BTreeMap::new();
        crate::scenario::replay(script, |words, out| match words {
            ["rollout", service, version, phase, hosts @ ..] => {
                let state = RolloutState {
                    id: format!("{service}-{version}"),
                    service: ServiceName::parse(service).unwrap(),
                    version: ReleaseVersion::parse(version).unwrap(),
                    phase: Phase::ALL
                        .iter()
                        .copied()
                        .find(|p| p.as_str() == *phase)
                        .expect("a phase"),
                    ..crate::scenario::rollout_state(
                        hosts
                            .iter()
                            .map(|w| {
                                let (h, s) = w.split_once('=').expect("HOST=STEP");
                                HostProgress::at(name(h), step(s), 0)
                            })
                            .collect(),
                    )
                };
                rollouts.insert(service.to_string(), state);
            }
            ["committed", service, "-"] => {
                committed.remove(*service);
            }
            ["committed", service, version] => {
                committed.insert(service.to_string(), ReleaseVersion::parse(version).unwrap());
            }
            ["pass"] => {
                let list: Vec<RolloutState> = rollouts.values().cloned().collect();
                let todo = missed(&list, &name("n3"), |s| committed.get(s.as_str()).cloned());
                if todo.is_empty() {
                    out.push_str("> nothing to catch up\n");
                }
                for state in todo {
                    let from: Vec<String> = sources(state).iter().map(|h| h.to_string()).collect();
                    out.push_str(&format!(
                        "> catch up {} to {} from [{}]\n",
                        state.service,
                        state.version,
                        from.join(" ")
                    ));
                }
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("converge", 1, run);
    }
}
