//! The cluster rollback (`halley-node rollback`) as a pure engine: which hosts take part, what
//! each goes back to, and how the rollback's state moves as host attempts succeed or fail. The
//! driver (`rollout::cluster_rollback`) runs each host's steps and feeds the outcomes back.
//!
//! `now` is unix milliseconds, used only for the dates the state records; waits between
//! attempts are asked for as durations ([`Action::Run`]), which the driver sleeps on its own
//! monotonic clock.
//!
//! ## Guarantees
//! - Every host is attempted at once, and a failed host again after `retry_ms`, up to
//!   `max_attempts` in all; every change is published as a snapshot of the state, each with a
//!   `seq` one higher.
//! - The rollback ends when every host has succeeded or used its attempts; the hosts that failed
//!   are named with why in the reason, and the outcome is recorded in history.
//!
//! ## Known bugs (recorded in `scenarios/cluster_rollback/`, fixed by the rollback-safety issue)
//! - Without `--to` the state names the placeholder version `previous`, so a resume cannot find
//!   a release of that name.
//! - A rollback whose hosts all failed still ends `rolled-back` and releases the service.

use std::collections::BTreeMap;

use halley_proto::NodeName;
use halley_proto::deploy::{ReleaseVersion, ServiceStatus};
use halley_proto::message::{MemberRow, MemberState};
use halley_proto::rollout::{HistoryEntry, HostStep, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this state (gossip and this node's copy).
    Publish(Box<RolloutState>),
    /// Run the host's rollback steps after waiting `after_ms`.
    Run {
        /// The host.
        host: NodeName,
        /// How long to wait first.
        after_ms: u64,
    },
    /// The rollback ended: record this history entry.
    Record(HistoryEntry),
}

/// The members that take part: live (not dead, not gone) and running the service.
pub fn hosts(members: &[MemberRow], service: &ServiceName) -> Vec<NodeName> {
    members
        .iter()
        .filter(|m| !matches!(m.state, MemberState::Dead | MemberState::Left))
        .filter(|m| m.services.iter().any(|(name, _)| name == service.as_str()))
        .map(|m| m.name.clone())
        .collect()
}

/// The release `host` goes back to: `to`, else its previous committed release.
pub fn target(
    host: &NodeName,
    status: &ServiceStatus,
    to: Option<&ReleaseVersion>,
) -> Result<ReleaseVersion, String> {
    match to {
        Some(v) => Ok(v.clone()),
        None => status.previous.clone().ok_or_else(|| {
            format!(
                "{host} has no previous release of {} (committed: {})",
                status.name,
                status
                    .committed
                    .as_ref()
                    .map_or("none".into(), |v| v.to_string())
            )
        }),
    }
}

/// The version a rollback's state names: `to`, else the placeholder `previous` (a known bug:
/// no host has a release of that name).
pub fn shown_version(to: Option<&ReleaseVersion>) -> Result<ReleaseVersion, String> {
    match to {
        Some(v) => Ok(v.clone()),
        None => ReleaseVersion::parse("previous").map_err(|e| e.to_string()),
    }
}

/// One cluster rollback.
#[derive(Debug, Clone)]
pub struct ClusterRollback {
    state: RolloutState,
    max_attempts: u32,
    retry_ms: u64,
    /// Attempts made per host (the state's `attempts` counts the failed ones before the last).
    tried: BTreeMap<NodeName, u32>,
}

impl ClusterRollback {
    /// A rollback from a fresh rollout state (id, epoch, hosts, coordinator, and the version
    /// [`shown_version`] names): to `to`, or each host's previous release.
    pub fn new(
        mut state: RolloutState,
        to: Option<&ReleaseVersion>,
        max_attempts: u32,
        retry_ms: u64,
    ) -> Self {
        state.reason = match to {
            Some(v) => format!("rollback to {v}"),
            None => "rollback to each host's previous release".into(),
        };
        for h in &mut state.hosts {
            h.step = HostStep::Reverting;
        }
        state.phase = Phase::RollingBack;
        Self {
            state,
            max_attempts: max_attempts.max(1),
            retry_ms,
            tried: BTreeMap::new(),
        }
    }

    /// The state as it stands.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    fn publish(&mut self, actions: &mut Vec<Action>) {
        self.state.seq += 1;
        actions.push(Action::Publish(Box::new(self.state.clone())));
    }

    /// Publishes the first state and starts every host.
    pub fn start(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.publish(&mut actions);
        for h in &self.state.hosts {
            actions.push(Action::Run {
                host: h.node.clone(),
                after_ms: 0,
            });
        }
        actions
    }

    /// Takes the outcome of one attempt on `host`.
    pub fn attempted(
        &mut self,
        host: &NodeName,
        result: Result<String, String>,
        now: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let max = self.max_attempts;
        let Some(h) = self.state.hosts.iter_mut().find(|h| &h.node == host) else {
            return actions;
        };
        if h.step != HostStep::Reverting {
            return actions;
        }
        let attempt = {
            let n = self.tried.entry(host.clone()).or_default();
            *n += 1;
            *n
        };
        let done = result.is_ok() || attempt >= max;
        h.attempts = attempt - 1;
        match result {
            Ok(note) => {
                h.step = HostStep::Reverted;
                h.note = note;
            }
            Err(why) if done => {
                h.step = HostStep::Failed;
                h.note = why;
            }
            Err(why) => {
                h.note = format!("attempt {attempt} failed: {why}; retrying");
            }
        }
        self.publish(&mut actions);
        if !done {
            actions.push(Action::Run {
                host: host.clone(),
                after_ms: self.retry_ms,
            });
        } else if self
            .state
            .hosts
            .iter()
            .all(|h| h.step != HostStep::Reverting)
        {
            self.finish(now, &mut actions);
        }
        actions
    }

    fn finish(&mut self, now: u64, actions: &mut Vec<Action>) {
        let failed: Vec<String> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.step != HostStep::Reverted)
            .map(|h| format!("{}: {}", h.node, h.note))
            .collect();
        self.state.ended_ms = Some(now);
        // Finished either way: a host that could not be rolled back is reported (non-zero exit)
        // but does not hold the service's lock; rolling back again retries it.
        self.state.phase = Phase::RolledBack;
        if !failed.is_empty() {
            self.state.reason = format!(
                "rollback failed on {}; run 'halley-node rollback {}' again once they are reachable",
                failed.join("; "),
                self.state.service
            );
        }
        let entry = HistoryEntry::of(&self.state, now);
        self.publish(actions);
        actions.push(Action::Record(entry));
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/cluster_rollback/*.txt`. Commands:
    //! `member NAME live|dead|left [SERVICE...]`, `hosts` (who takes part in rolling back web),
    //! `target HOST committed=V previous=V|- [to=V]`, `start [to=V]`, `at MS`,
    //! `ok HOST NOTE...`, `fail HOST WHY...`, `show`.
    use halley_proto::rollout::HostProgress;

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

    fn render(out: &mut String, actions: &[Action]) {
        let list: Vec<String> = actions
            .iter()
            .map(|a| match a {
                Action::Publish(s) => format!("publish seq={} {}", s.seq, s.phase),
                Action::Run { host, after_ms } => format!("run {host} after {after_ms}ms"),
                Action::Record(e) => format!(
                    "record {} {} ended={} reason={:?}",
                    e.version, e.outcome, e.ended_ms, e.reason
                ),
            })
            .collect();
        out.push_str(&format!("> actions: {}\n", list.join(", ")));
    }

    fn run(script: &str) -> String {
        let service = ServiceName::parse("web").unwrap();
        let mut members: BTreeMap<String, MemberRow> = BTreeMap::new();
        let mut rollback: Option<ClusterRollback> = None;
        let mut now = 0;
        crate::scenario::replay(script, |words, out| match words {
            ["member", rest @ ..] => {
                let r = row(rest);
                members.insert(r.name.to_string(), r);
            }
            ["hosts"] => {
                let rows: Vec<MemberRow> = members.values().cloned().collect();
                let list: Vec<String> = hosts(&rows, &service)
                    .iter()
                    .map(|h| h.to_string())
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
                match target(&name(host), &status, words_to(rest).as_ref()) {
                    Ok(v) => out.push_str(&format!("> {v}\n")),
                    Err(why) => out.push_str(&format!("> error: {why}\n")),
                }
            }
            ["start", rest @ ..] => {
                let rows: Vec<MemberRow> = members.values().cloned().collect();
                let state = RolloutState {
                    id: "rb1".into(),
                    version: shown_version(words_to(rest).as_ref()).unwrap(),
                    epoch: 4,
                    started_ms: now,
                    ..crate::scenario::rollout_state(
                        hosts(&rows, &service)
                            .into_iter()
                            .map(|node| HostProgress::at(node, HostStep::Pending, now))
                            .collect(),
                    )
                };
                let mut r = ClusterRollback::new(state, words_to(rest).as_ref(), 3, 1000);
                render(out, &r.start());
                rollback = Some(r);
            }
            ["at", ms] => now = ms.parse().unwrap(),
            ["ok", host, note @ ..] => {
                let r = rollback.as_mut().expect("started");
                render(out, &r.attempted(&name(host), Ok(note.join(" ")), now));
            }
            ["fail", host, why @ ..] => {
                let r = rollback.as_mut().expect("started");
                render(out, &r.attempted(&name(host), Err(why.join(" ")), now));
            }
            ["show"] => {
                let s = rollback.as_ref().expect("started").state();
                out.push_str(&format!(
                    "> version={} phase={} seq={} reason={:?}\n",
                    s.version, s.phase, s.seq, s.reason
                ));
                for h in &s.hosts {
                    out.push_str(&format!(
                        "> {} {} attempts={} note={:?}\n",
                        h.node,
                        h.step.as_str(),
                        h.attempts,
                        h.note
                    ));
                }
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("cluster_rollback", 2, run);
    }
}
