//! Removal decisions (`service remove`): which hosts a removal tells, and how it ends once
//! they answered. Pure: the coordinator (`rollout::remove`) gathers the inputs and carries
//! the result out.
//!
//! ## Rules
//! - The hosts are the members gossip shows running the service (`gossiped`), and those of its
//!   newest rollout, which had it whatever gossip shows of them now (a dead member's
//!   announcements may be gone); of a removal, only those it did not remove the service from,
//!   but for a purge after a removal that kept the data, which reaches them all. Members that
//!   left are not told; dead ones are listed as not alive (skipped).
//! - A host that answered is `committed` (removed there) or `failed` with why; a stale-epoch
//!   answer fences the removal (a newer rollout owns the service); otherwise it completes, its
//!   reason naming the hosts that remove the service themselves once they are back.

use halley_proto::NodeName;
use halley_proto::message::{ErrorKind, ErrorReply, MemberRow, MemberState};
use halley_proto::rollout::{HostStep, Mode, Phase, RolloutState};

/// The hosts a removal tells, each with whether it is alive, sorted by name.
pub fn hosts(
    mut gossiped: Vec<(NodeName, bool)>,
    members: &[MemberRow],
    newest: Option<&RolloutState>,
    purge: bool,
) -> Vec<(NodeName, bool)> {
    let had = newest.iter().flat_map(|s| {
        let kept_data = s.mode == Mode::Remove && !s.purges();
        s.hosts.iter().filter(move |h| {
            s.mode != Mode::Remove || h.step != HostStep::Committed || (purge && kept_data)
        })
    });
    for h in had {
        let member = members.iter().find(|m| m.name == h.node);
        let Some(member) = member.filter(|m| m.state != MemberState::Left) else {
            continue;
        };
        if !gossiped.iter().any(|(n, _)| n == &h.node) {
            gossiped.push((h.node.clone(), member.state != MemberState::Dead));
        }
    }
    gossiped.sort();
    gossiped
}

/// Records each host's answer in `state` and ends it at `now`; returns a line per host.
pub fn conclude(
    state: &mut RolloutState,
    answers: Vec<(NodeName, Result<String, ErrorReply>)>,
    now: u64,
) -> Vec<String> {
    let mut fenced = None;
    for (host, answer) in answers {
        let Some(h) = state.hosts.iter_mut().find(|h| h.node == host) else {
            continue;
        };
        h.since_ms = now;
        (h.step, h.note) = match answer {
            Ok(note) => (HostStep::Committed, note),
            Err(e) => {
                if e.kind == ErrorKind::StaleEpoch {
                    fenced = Some(format!("{host}: {}", e.message));
                }
                (
                    HostStep::Failed,
                    format!(
                        "{}; it removes the service itself on its next pass",
                        e.message
                    ),
                )
            }
        };
    }
    let failed: Vec<String> = state
        .hosts
        .iter()
        .filter(|h| h.step != HostStep::Committed)
        .map(|h| format!("{} ({})", h.node, h.step.as_str()))
        .collect();
    (state.phase, state.reason) = match fenced {
        Some(why) => (
            Phase::Fenced,
            format!("a newer rollout owns the service: {why}"),
        ),
        None if failed.is_empty() => (Phase::Completed, String::new()),
        None => (
            Phase::Completed,
            format!(
                "not yet removed from {}: each removes it itself once it is back",
                failed.join(", ")
            ),
        ),
    };
    state.ended_ms = Some(now);
    state
        .hosts
        .iter()
        .map(|h| format!("{}: {}", h.node, h.note))
        .collect()
}

#[cfg(test)]
mod tests {
    use halley_proto::deploy::ReleaseVersion;
    use halley_proto::rollout::HostProgress;

    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    fn member(n: &str, state: MemberState) -> MemberRow {
        MemberRow {
            name: name(n),
            addr: "127.0.0.1:7946".parse().unwrap(),
            state,
            last_heard_ms: None,
            version: "0.1.0".into(),
            role: "admin".into(),
            uptime_secs: None,
            generation: 1,
            services: Vec::new(),
        }
    }

    fn removal(version: &str, steps: &[(&str, HostStep)]) -> RolloutState {
        RolloutState {
            mode: Mode::Remove,
            version: ReleaseVersion::parse(version).unwrap(),
            ..crate::scenario::rollout_state(
                steps
                    .iter()
                    .map(|(n, s)| HostProgress::at(name(n), *s, 0))
                    .collect(),
            )
        }
    }

    #[test]
    fn the_newest_rollouts_hosts_are_told_but_those_a_removal_reached_and_left_members() {
        let members = [
            member("n1", MemberState::Alive),
            member("n2", MemberState::Dead),
            member("n3", MemberState::Alive),
            member("n4", MemberState::Left),
        ];
        let deploy = crate::scenario::rollout_state(
            ["n2", "n3", "n4"]
                .iter()
                .map(|n| HostProgress::at(name(n), HostStep::Committed, 0))
                .collect(),
        );
        let told = hosts(vec![(name("n1"), true)], &members, Some(&deploy), false);
        assert_eq!(
            told,
            vec![(name("n1"), true), (name("n2"), false), (name("n3"), true)]
        );
        let kept = removal(
            "keep-data",
            &[("n1", HostStep::Committed), ("n2", HostStep::Skipped)],
        );
        assert_eq!(
            hosts(Vec::new(), &members, Some(&kept), false),
            vec![(name("n2"), false)]
        );
        assert_eq!(
            hosts(Vec::new(), &members, Some(&kept), true),
            vec![(name("n1"), true), (name("n2"), false)]
        );
    }

    #[test]
    fn a_stale_answer_fences_the_removal_and_others_complete_it_with_the_hosts_left() {
        let steps = [("n1", HostStep::Deploying), ("n2", HostStep::Skipped)];
        let stale = ErrorReply {
            kind: ErrorKind::StaleEpoch,
            message: "step refused".into(),
        };
        let mut state = removal("keep-data", &steps);
        conclude(&mut state, vec![(name("n1"), Err(stale))], 7);
        assert_eq!(state.phase, Phase::Fenced);
        let mut state = removal("keep-data", &steps);
        let notes = conclude(&mut state, vec![(name("n1"), Ok("removed".into()))], 7);
        assert_eq!((state.phase, state.ended_ms), (Phase::Completed, Some(7)));
        assert!(state.reason.contains("not yet removed from n2 (skipped)"));
        assert_eq!(notes[0], "n1: removed");
    }
}
