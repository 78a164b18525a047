//! Convergence decisions: which completed rollouts this node missed (skipped while it was away)
//! and must catch up with by itself, and which hosts can give it the release.
//!
//! ## Rules
//! - Only a completed rollout counts (the newest of its service, as the caller passes them): a
//!   running, paused or rolled-back one leaves the host as it is.
//! - The node must be listed in that rollout, not committed there, and its own committed release
//!   of the service must differ from the rollout's.
//! - The release comes from the hosts that committed it, in rollout order.
//! - A completed removal ([`removals`]) makes a node that still has the service remove it.
//! - A finished rollback counts too: a node it skipped (dead when it started) goes back to the
//!   release the rollback named, if the node has that release (it ran it before); a node that
//!   never had it was left as it is by the rollback, and stays so.

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::rollout::{HostStep, Mode, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// The rollouts `me` must catch up with; `local` says what `me` has of a service: its
/// committed release and every release on its disk.
pub fn missed<'a>(
    rollouts: &'a [RolloutState],
    me: &NodeName,
    local: impl Fn(&ServiceName) -> (Option<ReleaseVersion>, Vec<ReleaseVersion>),
) -> Vec<&'a RolloutState> {
    rollouts
        .iter()
        .filter(|state| {
            let step = state.hosts.iter().find(|h| &h.node == me).map(|h| h.step);
            let (committed, on_disk) = local(&state.service);
            if committed.as_ref() == Some(&state.version) {
                return false;
            }
            match (state.mode, state.phase, step) {
                (Mode::Deploy, Phase::Completed, Some(step)) => step != HostStep::Committed,
                (Mode::Rollback, Phase::RolledBack, Some(HostStep::Skipped)) => {
                    on_disk.contains(&state.version)
                }
                _ => false,
            }
        })
        .collect()
}

/// The completed removals of services `me` still has (`held` gives the epoch it obeyed for
/// one, `None` when it does not have it): it was unreachable when the removal ran, or its
/// removal failed there. One that obeyed a newer token since (the service deployed again,
/// before gossip says so) is left alone; the host removes the others with the removal's token.
pub fn removals(
    rollouts: &[RolloutState],
    held: impl Fn(&ServiceName) -> Option<u64>,
) -> Vec<&RolloutState> {
    rollouts
        .iter()
        .filter(|s| s.mode == Mode::Remove && s.phase == Phase::Completed)
        .filter(|s| held(&s.service).is_some_and(|epoch| epoch <= s.epoch))
        .collect()
}

/// The hosts that can give the release of `state`: those that committed it (a rollback: went
/// back to it).
pub fn sources(state: &RolloutState) -> Vec<NodeName> {
    state
        .hosts
        .iter()
        .filter(|h| match state.mode {
            Mode::Deploy => h.step == HostStep::Committed,
            Mode::Rollback => {
                h.step == HostStep::Reverted && h.target.as_ref() == Some(&state.version)
            }
            Mode::Remove => false,
        })
        .map(|h| h.node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/converge/*.txt`. Commands:
    //! `rollout SERVICE VERSION PHASE HOST=STEP...` (the newest rollout of a service; `rollback`
    //! and `remove` for one of those modes; epoch 1), `epoch SERVICE E` (the epoch n3 obeyed),
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
        let mut on_disk: BTreeMap<String, Vec<ReleaseVersion>> = BTreeMap::new();
        let mut epochs: BTreeMap<String, u64> = BTreeMap::new();
        crate::scenario::replay(script, |words, out| match words {
            [
                "rollout" | "rollback" | "remove",
                service,
                version,
                phase,
                hosts @ ..,
            ] => {
                let mode = match words[0] {
                    "rollback" => Mode::Rollback,
                    "remove" => Mode::Remove,
                    _ => Mode::Deploy,
                };
                let state = RolloutState {
                    mode,
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
                                let mut p = HostProgress::at(name(h), step(s), 0);
                                if mode == Mode::Rollback && p.step == HostStep::Reverted {
                                    p.target = Some(ReleaseVersion::parse(version).unwrap());
                                }
                                p
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
            ["epoch", service, epoch] => {
                epochs.insert(service.to_string(), epoch.parse().expect("an epoch"));
            }
            ["releases", service, versions @ ..] => {
                let list = versions.iter().map(|v| ReleaseVersion::parse(v).unwrap());
                on_disk.insert(service.to_string(), list.collect());
            }
            ["pass"] => {
                let list: Vec<RolloutState> = rollouts.values().cloned().collect();
                let todo = missed(&list, &name("n3"), |s| {
                    (
                        committed.get(s.as_str()).cloned(),
                        on_disk.get(s.as_str()).cloned().unwrap_or_default(),
                    )
                });
                let held = |s: &ServiceName| {
                    (committed.contains_key(s.as_str()) || on_disk.contains_key(s.as_str()))
                        .then(|| epochs.get(s.as_str()).copied().unwrap_or(0))
                };
                let gone = removals(&list, held);
                if todo.is_empty() && gone.is_empty() {
                    out.push_str("> nothing to catch up\n");
                }
                for state in gone {
                    out.push_str(&format!(
                        "> remove {} (epoch {} of {})\n",
                        state.service, state.epoch, state.coordinator
                    ));
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
