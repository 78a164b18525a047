//! Planning a cluster rollback (`halley-node rollback`): which hosts take part, the release each
//! goes back to, and what the rollout state names. The rollback itself is a rollout in
//! [`Mode::Rollback`], walked by [`crate::engine::rollout`].
//!
//! ## Rules
//! - Every member that runs the service and has not left takes part. A dead one is skipped (it
//!   is not reachable); when it returns it converges to the release the others went back to
//!   (see [`crate::engine::converge`]).
//! - A host's target is `--to`, else its own previous committed release, recorded in the state
//!   before any step reaches the host: a resumed rollback sends the host to the same release,
//!   whatever it has committed since.
//! - A host with no previous release has nothing to go back to and is skipped, saying so.
//! - The state names the release most hosts go back to (the first in plan order on a tie).

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, ServiceStatus};
use halley_proto::message::{MemberRow, MemberState};
use halley_proto::rollout::{HostProgress, HostStep, Mode, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// The members that take part, with whether each is alive: every member that runs the service
/// and has not left, by name.
pub fn hosts(members: &[MemberRow], service: &ServiceName) -> Vec<(NodeName, bool)> {
    let mut out: Vec<(NodeName, bool)> = members
        .iter()
        .filter(|m| m.state != MemberState::Left)
        .filter(|m| m.services.iter().any(|(name, _)| name == service.as_str()))
        .map(|m| (m.name.clone(), m.state != MemberState::Dead))
        .collect();
    out.sort();
    out
}

/// The release `host` goes back to: `to`, else its previous committed release; `None` when it
/// has nothing to go back to.
pub fn target(status: &ServiceStatus, to: Option<&ReleaseVersion>) -> Option<ReleaseVersion> {
    to.cloned().or_else(|| status.previous.clone())
}

/// Why a host with no previous release is skipped.
pub fn nothing_to_go_back_to(host: &NodeName, status: &ServiceStatus) -> String {
    format!(
        "{host} has no release of {} to go back to (committed: {}); left as it is",
        status.name,
        status
            .committed
            .as_ref()
            .map_or("none".into(), |v| v.to_string())
    )
}

/// The rollback's state from a fresh rollout state over the hosts: each host's target
/// (`None`: not known yet, asked before its first step) and whether it is alive. `None` when no
/// target is known at all (no host answered): there is nothing to name the rollback by yet.
pub fn plan(
    mut state: RolloutState,
    targets: &[(NodeName, bool, Option<ReleaseVersion>)],
    to: Option<&ReleaseVersion>,
    now: u64,
) -> Option<RolloutState> {
    state.version = shown_version(targets.iter().filter_map(|(_, _, t)| t.as_ref()))?;
    state.mode = Mode::Rollback;
    state.phase = Phase::RollingBack;
    state.reason = match to {
        Some(v) => format!("rollback to {v}"),
        None => "rollback to each host's previous release".into(),
    };
    state.hosts = targets
        .iter()
        .map(|(node, alive, target)| {
            let mut h = HostProgress::at(node.clone(), HostStep::Reverting, now);
            h.target = target.clone();
            if !alive {
                h.step = HostStep::Skipped;
                h.note = "dead when the rollback started; it converges when it returns".into();
            }
            h
        })
        .collect();
    Some(state)
}

/// The release most of `targets` name, the first on a tie.
fn shown_version<'a>(targets: impl Iterator<Item = &'a ReleaseVersion>) -> Option<ReleaseVersion> {
    let all: Vec<&ReleaseVersion> = targets.collect();
    let count = |v: &ReleaseVersion| all.iter().filter(|t| **t == v).count();
    let mut best: Option<&ReleaseVersion> = None;
    for v in &all {
        if best.is_none_or(|b| count(v) > count(b)) {
            best = Some(v);
        }
    }
    best.cloned()
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/rollback/*.txt`. Commands:
    //! `member NAME live|dead|left [SERVICE...]`, `hosts` (who takes part in rolling back web),
    //! `target HOST committed=V previous=V|- [to=V]`, `plan [to=V] HOST=V|?...` (the state a
    //! rollback starts from; `?`: the host did not answer).
    use std::collections::BTreeMap;

    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    fn version(v: &str) -> ReleaseVersion {
        ReleaseVersion::parse(v).unwrap()
    }

    fn row(words: &[&str]) -> MemberRow {
        let [node, state, services @ ..] = words else {
            panic!("member NAME STATE [SERVICE...]")
        };
        MemberRow {
            name: name(node),
            addr: "127.0.0.1:7946".parse().unwrap(),
            state: match *state {
                "live" => MemberState::Alive,
                "dead" => MemberState::Dead,
                "left" => MemberState::Left,
                other => panic!("unknown member state {other:?}"),
            },
            last_heard_ms: None,
            version: "0.1.0".into(),
            role: "admin".into(),
            uptime_secs: None,
            generation: 1,
            services: services
                .iter()
                .map(|s| (s.to_string(), String::new()))
                .collect(),
        }
    }

    fn words_to(words: &[&str]) -> Option<ReleaseVersion> {
        words
            .iter()
            .find_map(|w| w.strip_prefix("to="))
            .map(version)
    }

    fn run(script: &str) -> String {
        let service = ServiceName::parse("web").unwrap();
        let mut members: BTreeMap<String, MemberRow> = BTreeMap::new();
        crate::scenario::replay(script, |words, out| match words {
            ["member", rest @ ..] => {
                let r = row(rest);
                members.insert(r.name.to_string(), r);
            }
            ["hosts"] => {
                let rows: Vec<MemberRow> = members.values().cloned().collect();
                let list: Vec<String> = hosts(&rows, &service)
                    .iter()
                    .map(|(h, alive)| format!("{h}{}", if *alive { "" } else { "(dead)" }))
                    .collect();
                out.push_str(&format!("> {}\n", list.join(" ")));
            }
            ["target", host, rest @ ..] => {
                let get = |key: &str| {
                    rest.iter()
                        .find_map(|w| w.strip_prefix(key))
                        .filter(|v| *v != "-")
                        .map(version)
                };
                let status = ServiceStatus {
                    name: service.clone(),
                    committed: get("committed="),
                    previous: get("previous="),
                    listen: String::new(),
                    protocol: "http".into(),
                    slots: Vec::new(),
                    releases: Vec::new(),
                    epoch: 0,
                    routing: Default::default(),
                };
                match target(&status, words_to(rest).as_ref()) {
                    Some(v) => out.push_str(&format!("> {v}\n")),
                    None => out.push_str(&format!(
                        "> skip: {}\n",
                        nothing_to_go_back_to(&name(host), &status)
                    )),
                }
            }
            ["plan", rest @ ..] => {
                let targets: Vec<(NodeName, bool, Option<ReleaseVersion>)> = rest
                    .iter()
                    .filter_map(|w| w.split_once('='))
                    .filter(|(k, _)| *k != "to")
                    .map(|(h, v)| match v {
                        "?" => (name(h), true, None),
                        "dead" => (name(h), false, None),
                        v => (name(h), true, Some(version(v))),
                    })
                    .collect();
                let fresh = crate::scenario::rollout_state(Vec::new());
                match plan(fresh, &targets, words_to(rest).as_ref(), 0) {
                    None => out.push_str("> refused: no target known\n"),
                    Some(s) => {
                        out.push_str(&format!(
                            "> version={} mode={} phase={} reason={:?}\n",
                            s.version,
                            s.mode.as_str(),
                            s.phase,
                            s.reason
                        ));
                        for h in &s.hosts {
                            out.push_str(&format!(
                                "> {} {} target={}\n",
                                h.node,
                                h.step.as_str(),
                                h.target.as_ref().map_or("?".into(), |t| t.to_string())
                            ));
                        }
                    }
                }
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("rollback", 1, run);
    }
}
