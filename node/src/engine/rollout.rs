//! The rollout engine: walks a release across the hosts of a service one batch at a time, and
//! decides when to roll every touched host back. Pure: events and `now` (the coordinator's wall
//! clock, unix ms) in, [`Action`]s out; no IO, no clock, no spawning. The driver
//! (`rollout::driver`) carries the actions out and reports back.
//!
//! ## Rules
//! - A batch's hosts are each drained (`Drain`), left draining for `drain_wait`, then deployed
//!   (`Deploy`: the release is sent, started, checked in isolation, flipped, the old slot drained,
//!   the host undrained). A host then bakes for `bake`; when the whole batch has baked (and
//!   `pause` passed) the next batch starts. After the last batch every updated host commits.
//! - Every action is preceded by `Journal`: the state is written before anything is done.
//! - A failure is: a host's deploy failing (its new release never got traffic), a regression on
//!   a host in its bake, or regressions on `max_failed_hosts` updated hosts at once. Then, with
//!   `auto_rollback`, every touched host is reverted, in parallel; without it the rollout pauses.
//!   Hosts never touched are left alone.
//! - A revert or commit that fails is retried on that host (every `retry`), and reported; a
//!   rollback never starts another rollout, and is never rolled back itself.
//! - A host unreachable on its turn pauses the rollout, or is skipped with `skip_unreachable`.
//! - A host that refuses a step for a stale epoch ends the rollout as `fenced`: a newer
//!   coordinator owns the service, so this one touches nothing more.
//! - `resume` continues from a journal: waits restart from `now`, and steps in flight are issued
//!   again (the driver's steps are idempotent).
//! - A rollback ([`Mode::Rollback`], planned by [`crate::engine::rollback`]) is a rollout too,
//!   journaled and resumable the same way: it starts rolling back, every host at once, each to
//!   its recorded target (`RollBack`); a host whose target is not known yet is asked first
//!   (`Resolve`), and its answer is journaled before any step reaches it. A rollback cannot be
//!   aborted; a host that fails [`ROLLBACK_ATTEMPTS`] times is skipped (it converges when it
//!   comes back), so the rollback ends `rolled-back` once every host is back or skipped.

use std::collections::BTreeSet;

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::rollout::{HostProgress, HostStep, Mode, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// Timing and thresholds the engine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Hosts per batch (at least 1).
    pub batch: usize,
    /// Drain wait per host.
    pub drain_wait_ms: u64,
    /// Bake per batch.
    pub bake_ms: u64,
    /// Pause between batches.
    pub pause_ms: u64,
    /// Updated hosts failing at once that trigger a rollback.
    pub max_failed_hosts: usize,
    /// Roll back (true) or pause (false) on failure.
    pub auto_rollback: bool,
    /// Skip hosts unreachable on their turn instead of pausing.
    pub skip_unreachable: bool,
    /// Delay before a failed revert or commit is retried.
    pub retry_ms: u64,
}

/// What happened, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed.
    Tick,
    /// The host is marked draining.
    Drained(NodeName),
    /// The host's deploy ended: `Ok(note)` serving the new release, or `Err(why)`.
    Deployed(NodeName, Result<String, String>),
    /// The watcher's judgement of an updated host: `Some(why)` when it crosses a threshold.
    Verdict(NodeName, Option<String>),
    /// The host's revert ended.
    Reverted(NodeName, Result<String, String>),
    /// The host's commit ended.
    Committed(NodeName, Result<String, String>),
    /// The host refused the commit: it serves another release (it reverted by itself after
    /// `orphan_timeout`, or was changed by hand), so committing again would not help.
    CommitRefused(NodeName, String),
    /// The host could not be reached on its turn.
    Unreachable(NodeName),
    /// The host refused a step: it has seen a newer epoch.
    Fenced(NodeName, String),
    /// Another coordinator took the service over with a higher token (seen in gossip): this
    /// one stops before it sends anything more, instead of learning it from a refused step.
    TakenOver {
        /// The new coordinator.
        by: NodeName,
        /// Its epoch.
        epoch: u64,
    },
    /// The journal could not be written (the driver carried out nothing after it).
    JournalFailed(String),
    /// `rollout abort`: stop and revert every touched host.
    Abort,
    /// A rollback host's target, as it answered: `Ok(None)` when it has nothing to go back to.
    Resolved(NodeName, Result<Option<ReleaseVersion>, String>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the state to the journal (and gossip) before what follows.
    Journal,
    /// Mark the host draining; report [`Event::Drained`].
    Drain(NodeName),
    /// Deploy the release on the host; report [`Event::Deployed`].
    Deploy(NodeName),
    /// Put the host back on its committed release and undrain it; report [`Event::Reverted`].
    Revert(NodeName),
    /// Commit the release on the host; report [`Event::Committed`].
    Commit(NodeName),
    /// A rollback: ask the host which release it goes back to; report [`Event::Resolved`].
    Resolve(NodeName),
    /// A rollback: put the host on this release and commit it; report [`Event::Reverted`].
    RollBack(NodeName, ReleaseVersion),
    /// A line for the operator.
    Say(String),
}

/// A rollout in progress.
#[derive(Debug, Clone)]
pub struct Rollout {
    state: RolloutState,
    policy: Policy,
    failing: BTreeSet<NodeName>,
    pause_until: Option<u64>,
}

impl Rollout {
    /// A rollout of `state` (hosts pending), not started.
    pub fn new(mut state: RolloutState, policy: Policy) -> Self {
        state.batch = policy.batch.max(1) as u32;
        Self {
            state,
            policy,
            failing: BTreeSet::new(),
            pause_until: None,
        }
    }

    /// The state, as journaled.
    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// Records the journal's write counter in the state.
    pub fn set_seq(&mut self, seq: u64) {
        self.state.seq = seq;
    }

    /// Starts the first batch (a rollback: every host at once).
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        if self.state.mode == Mode::Rollback {
            return self.start_rollback(now);
        }
        self.state.phase = Phase::Running;
        let mut out = vec![Action::Say(format!(
            "rollout {} of {} {}: {} hosts in batches of {}",
            self.state.id,
            self.state.service,
            self.state.version,
            self.state.hosts.len(),
            self.policy.batch.max(1)
        ))];
        out.extend(self.advance(now));
        journaled(out)
    }

    fn start_rollback(&mut self, now: u64) -> Vec<Action> {
        self.state.phase = Phase::RollingBack;
        let mut out = vec![Action::Say(format!(
            "rollback {} of {}: {} hosts at once ({})",
            self.state.id,
            self.state.service,
            self.state.hosts.len(),
            self.state.reason
        ))];
        for h in &self.state.hosts {
            if h.step == HostStep::Reverting {
                out.push(back(self.state.mode, h));
            }
        }
        out.extend(self.advance(now));
        journaled(out)
    }

    /// Takes a journaled rollout over: steps in flight are issued again, waits restart at `now`.
    pub fn resume(&mut self, now: u64) -> Vec<Action> {
        let mut out = vec![Action::Say(format!(
            "resuming rollout {} ({}, {}) as epoch {}",
            self.state.id,
            self.state.phase,
            self.state.progress(),
            self.state.epoch
        ))];
        if self.state.phase == Phase::Paused {
            self.state.phase = Phase::Running;
            self.state.reason.clear();
        }
        let (phase, mode) = (self.state.phase, self.state.mode);
        for i in 0..self.state.hosts.len() {
            let host = &mut self.state.hosts[i];
            let node = host.node.clone();
            match (phase, host.step) {
                (Phase::Running, HostStep::Draining) => {
                    host.until_ms = None;
                    out.push(Action::Drain(node));
                }
                (Phase::Running, HostStep::Deploying) => out.push(Action::Deploy(node)),
                (Phase::Running, HostStep::Baking) => {
                    host.until_ms = Some(now + self.policy.bake_ms)
                }
                (Phase::RollingBack, HostStep::Reverting) => {
                    host.until_ms = None;
                    out.push(back(mode, host));
                }
                (Phase::Committing, HostStep::Committing) => out.push(Action::Commit(node)),
                _ => {}
            }
        }
        out.extend(self.advance(now));
        journaled(out)
    }

    /// Feeds one event.
    pub fn step(&mut self, event: Event, now: u64) -> Vec<Action> {
        if self.state.phase.finished() {
            return Vec::new();
        }
        let before = self.state.clone();
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Drained(node) => {
                let drain_wait = self.policy.drain_wait_ms;
                if let Some(h) = self.host_in(&node, HostStep::Draining) {
                    h.until_ms = Some(now + drain_wait);
                }
            }
            Event::Deployed(node, Ok(note)) => {
                let bake = self.policy.bake_ms;
                if self.state.phase == Phase::Running
                    && self
                        .host(&node)
                        .is_some_and(|h| h.step == HostStep::Deploying)
                {
                    let version = self.state.version.clone();
                    let note = if note.is_empty() {
                        format!("serving {version}")
                    } else {
                        note
                    };
                    if let Some(h) = self.host_in(&node, HostStep::Deploying) {
                        set(h, HostStep::Baking, now, Some(now + bake), &note);
                    }
                    out.push(Action::Say(format!("{node}: {note}; baking")));
                } else if let Some(h) = self.host_in(&node, HostStep::Deploying) {
                    // A failure elsewhere started the rollback while this host deployed.
                    set(h, HostStep::Reverting, now, None, &note);
                    out.push(Action::Revert(node));
                }
            }
            Event::Deployed(node, Err(why)) => {
                let rolling_back = self.state.phase == Phase::RollingBack;
                if let Some(h) = self.host_in(&node, HostStep::Deploying) {
                    if rolling_back {
                        // The rollback started while it deployed: undrain and revert it too.
                        set(h, HostStep::Reverting, now, None, &why);
                        out.push(Action::Revert(node.clone()));
                    } else {
                        set(h, HostStep::Failed, now, None, &why);
                    }
                }
                if !rolling_back {
                    out.extend(self.fail(format!("{node}: deploy failed: {why}"), now));
                }
            }
            Event::Verdict(node, verdict) => {
                let step = self.host(&node).map(|h| h.step);
                match (step, verdict) {
                    (Some(HostStep::Baking), Some(why)) => {
                        out.extend(self.fail(format!("{node} (baking): {why}"), now));
                    }
                    (Some(HostStep::Updated), Some(why)) => {
                        self.failing.insert(node.clone());
                        if self.failing.len() >= self.policy.max_failed_hosts.max(1) {
                            let hosts: Vec<String> =
                                self.failing.iter().map(ToString::to_string).collect();
                            out.extend(self.fail(
                                format!(
                                    "{} updated host(s) failing ({}); last: {node}: {why}",
                                    self.failing.len(),
                                    hosts.join(", ")
                                ),
                                now,
                            ));
                        } else {
                            out.push(Action::Say(format!("{node}: {why} (watching)")));
                        }
                    }
                    (_, None) => {
                        self.failing.remove(&node);
                    }
                    _ => {}
                }
            }
            Event::Reverted(node, result) => {
                let retry = self.policy.retry_ms;
                let rollback = self.state.mode == Mode::Rollback;
                if let Some(h) = self.host_in(&node, HostStep::Reverting) {
                    match result {
                        Ok(note) => {
                            let said = if note.is_empty() {
                                format!("{node}: reverted")
                            } else {
                                format!("{node}: reverted: {note}")
                            };
                            set(h, HostStep::Reverted, now, None, &note);
                            out.push(Action::Say(said));
                        }
                        Err(why) if rollback => out.push(retry_or_give_up(h, now + retry, why)),
                        Err(why) => out.push(retry_later(h, now + retry, "revert", why)),
                    }
                }
            }
            Event::Committed(node, result) => self.committed(&node, result, now, &mut out),
            Event::CommitRefused(node, why) => self.commit_refused(&node, &why, now, &mut out),
            Event::Unreachable(node) => {
                if self.unreachable(&node, now, &mut out) {
                    return journaled(out);
                }
            }
            Event::Resolved(node, answer) => self.resolved(&node, answer, now, &mut out),
            Event::JournalFailed(why) => return self.journal_failed(&why),
            Event::Abort => return self.abort(now),
            Event::TakenOver { by, epoch } => {
                self.state.phase = Phase::Fenced;
                self.state.reason =
                    format!("taken over by node {by} at epoch {epoch}; this coordinator stopped");
                self.state.ended_ms = Some(now);
                out.push(Action::Say(format!("stopped: {}", self.state.reason)));
                return journaled(out);
            }
            Event::Fenced(node, why) => {
                self.state.phase = Phase::Fenced;
                self.state.reason = format!("{node} refused a step: {why}");
                self.state.ended_ms = Some(now);
                out.push(Action::Say(format!("stopped: {}", self.state.reason)));
                return journaled(out);
            }
        }
        out.extend(self.advance(now));
        if out.is_empty() && self.state == before {
            return out;
        }
        journaled(out)
    }

    fn any_in(&self, step: HostStep) -> bool {
        self.state.hosts.iter().any(|h| h.step == step)
    }

    fn host(&self, node: &NodeName) -> Option<&HostProgress> {
        self.state.hosts.iter().find(|h| &h.node == node)
    }

    fn host_in(&mut self, node: &NodeName, step: HostStep) -> Option<&mut HostProgress> {
        self.state
            .hosts
            .iter_mut()
            .find(|h| &h.node == node && h.step == step)
    }

    /// `rollout abort`: every touched host is reverted, whatever `auto_rollback` says; hosts not
    /// touched yet stay as they are. A rollout that is committing goes on (see [`abortable`]).
    fn abort(&mut self, now: u64) -> Vec<Action> {
        if let Err(why) = abortable(&self.state) {
            return vec![Action::Say(why)];
        }
        let was = self.state.phase;
        self.state.reason = if self.state.reason.is_empty() {
            "aborted with 'halley-node rollout abort'".to_owned()
        } else {
            format!(
                "aborted with 'halley-node rollout abort' (it was {was}: {})",
                self.state.reason
            )
        };
        self.state.phase = Phase::RollingBack;
        let mut out = vec![Action::Say(format!(
            "aborting rollout {}: rolling back every touched host",
            self.state.id
        ))];
        for h in &mut self.state.hosts {
            if h.step.touched() && h.step != HostStep::Reverted {
                let note = h.note.clone();
                set(h, HostStep::Reverting, now, None, &note);
                out.push(Action::Revert(h.node.clone()));
            }
        }
        out.extend(self.advance(now));
        journaled(out)
    }

    /// A host's commit ended: committed, or tried again later.
    fn committed(
        &mut self,
        node: &NodeName,
        result: Result<String, String>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let retry = self.policy.retry_ms;
        let Some(h) = self.host_in(node, HostStep::Committing) else {
            return;
        };
        match result {
            Ok(note) => {
                // Keep what the deploy reported: it is the host's story.
                let note = match (h.note.is_empty(), note.is_empty()) {
                    (true, _) => note,
                    (false, true) => h.note.clone(),
                    (false, false) => format!("{}; {note}", h.note),
                };
                set(h, HostStep::Committed, now, None, &note)
            }
            Err(why) => out.push(retry_later(h, now + retry, "commit", why)),
        }
    }

    /// A host that refused the commit (it serves another release) is left to converge to the
    /// release by itself; the rollout's reason names it.
    fn commit_refused(&mut self, node: &NodeName, why: &str, now: u64, out: &mut Vec<Action>) {
        let version = self.state.version.clone();
        let note = format!("not committed: {why}; it converges to {version}");
        let Some(h) = self.host_in(node, HostStep::Committing) else {
            return;
        };
        out.push(Action::Say(format!("{node}: {note}")));
        set(h, HostStep::Skipped, now, None, &note);
        let line = format!("{node} {note}");
        self.state.reason = if self.state.reason.is_empty() {
            line
        } else {
            format!("{}; {line}", self.state.reason)
        };
    }

    /// A rollback host's target arrived: it is recorded (journaled before the step that uses
    /// it), or the host is skipped when it has nothing to go back to, or asked again later.
    fn resolved(
        &mut self,
        node: &NodeName,
        answer: Result<Option<ReleaseVersion>, String>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let (retry, skip) = (self.policy.retry_ms, self.policy.skip_unreachable);
        let Some(h) = self.host_in(node, HostStep::Reverting) else {
            return;
        };
        if h.target.is_some() {
            return;
        }
        match answer {
            Ok(Some(target)) => {
                h.target = Some(target.clone());
                h.note = format!("going back to {target}");
                out.push(Action::RollBack(node.clone(), target));
            }
            Ok(None) => {
                set(h, HostStep::Skipped, now, None, "nothing to go back to");
                out.push(Action::Say(format!(
                    "{node}: nothing to go back to; left as it is"
                )));
            }
            Err(why) if skip => {
                set(h, HostStep::Skipped, now, None, &why);
                out.push(Action::Say(format!("{node}: {why}; skipped")));
            }
            Err(why) => out.push(retry_or_give_up(h, now + retry, why)),
        }
    }

    /// A finished rollback's reason names the hosts it left as they were, and why.
    fn name_skipped(&mut self) {
        let skipped: Vec<String> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.step == HostStep::Skipped)
            .map(|h| format!("{} ({})", h.node, h.note))
            .collect();
        if !skipped.is_empty() {
            self.state.reason = format!(
                "{}; left as they were: {}",
                self.state.reason,
                skipped.join(", ")
            );
        }
    }

    /// A host unreachable on its turn is skipped (`--skip-unreachable`) or pauses the rollout;
    /// returns whether it paused.
    fn unreachable(&mut self, node: &NodeName, now: u64, out: &mut Vec<Action>) -> bool {
        let skip = self.policy.skip_unreachable;
        let waiting =
            self.state.hosts.iter_mut().find(|h| {
                &h.node == node && matches!(h.step, HostStep::Pending | HostStep::Draining)
            });
        let Some(h) = waiting else {
            return false;
        };
        if skip {
            set(h, HostStep::Skipped, now, None, "unreachable on its turn");
            out.push(Action::Say(format!("{node}: unreachable; skipped")));
            return false;
        }
        set(h, HostStep::Pending, now, None, "unreachable on its turn");
        self.state.phase = Phase::Paused;
        self.state.reason = format!(
            "{node} is unreachable on its turn; start it and run 'deploy --resume {}', or resume with --skip-unreachable",
            self.state.service
        );
        out.push(Action::Say(format!("paused: {}", self.state.reason)));
        true
    }

    /// Without a journal nothing may move forward: a running rollout pauses. A revert or commit
    /// under way goes on, since stopping it would leave hosts worse off than finishing it.
    fn journal_failed(&mut self, why: &str) -> Vec<Action> {
        if self.state.phase != Phase::Running {
            return vec![Action::Say(format!(
                "cannot write the rollout journal ({why}); going on with the {}",
                self.state.phase
            ))];
        }
        self.state.phase = Phase::Paused;
        self.state.reason = format!(
            "cannot write the rollout journal ({why}); free the disk or fix the data dir, then run 'halley-node deploy --resume {}'",
            self.state.service
        );
        vec![Action::Say(format!("paused: {}", self.state.reason))]
    }

    /// Starts the rollback (or pauses), once.
    fn fail(&mut self, reason: String, now: u64) -> Vec<Action> {
        if self.state.phase != Phase::Running {
            return vec![Action::Say(format!("also: {reason}"))];
        }
        self.state.reason = reason.clone();
        if !self.policy.auto_rollback {
            self.state.phase = Phase::Paused;
            return vec![Action::Say(format!(
                "paused (auto_rollback is off): {reason}"
            ))];
        }
        self.state.phase = Phase::RollingBack;
        let mut out = vec![Action::Say(format!(
            "rolling back every touched host: {reason}"
        ))];
        for h in &mut self.state.hosts {
            match h.step {
                // Its current deploy reports first; the rollback follows it.
                HostStep::Deploying => {}
                step if step.touched() && step != HostStep::Reverted => {
                    let note = h.note.clone();
                    set(h, HostStep::Reverting, now, None, &note);
                    out.push(Action::Revert(h.node.clone()));
                }
                _ => {}
            }
        }
        out
    }

    /// When the engine next needs an [`Event::Tick`] (unix ms): the earliest drain wait, bake,
    /// pause or retry that is running. `None` while nothing waits on time (only events move the
    /// rollout then) and once it stopped. A deadline in the past means "tick now".
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state.phase.finished() || self.state.phase == Phase::Paused {
            return None;
        }
        let hosts = self.state.hosts.iter().filter(|h| {
            matches!(
                h.step,
                HostStep::Draining | HostStep::Baking | HostStep::Reverting | HostStep::Committing
            )
        });
        hosts
            .filter_map(|h| h.until_ms)
            .chain(self.pause_until)
            .min()
    }

    /// Moves waits forward and starts what is due.
    fn advance(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state.phase {
            Phase::Running => out.extend(self.advance_running(now)),
            Phase::RollingBack => {
                let mode = self.state.mode;
                for h in &mut self.state.hosts {
                    if h.step == HostStep::Reverting && h.until_ms.is_some_and(|t| t <= now) {
                        h.until_ms = None;
                        out.push(back(mode, h));
                    }
                }
                let busy = self
                    .state
                    .hosts
                    .iter()
                    .any(|h| matches!(h.step, HostStep::Reverting | HostStep::Deploying));
                if !busy {
                    self.state.phase = Phase::RolledBack;
                    self.state.ended_ms = Some(now);
                    if self.state.mode == Mode::Rollback {
                        self.name_skipped();
                    }
                    out.push(Action::Say(format!("rolled back: {}", self.state.reason)));
                }
            }
            Phase::Committing => {
                for h in &mut self.state.hosts {
                    if h.step == HostStep::Committing && h.until_ms.is_some_and(|t| t <= now) {
                        h.until_ms = None;
                        out.push(Action::Commit(h.node.clone()));
                    }
                }
                if !self.any_in(HostStep::Committing) {
                    self.state.phase = Phase::Completed;
                    self.state.ended_ms = Some(now);
                    out.push(Action::Say(format!(
                        "completed: {} {} on {}",
                        self.state.service,
                        self.state.version,
                        self.state.progress()
                    )));
                }
            }
            _ => {}
        }
        out
    }

    fn advance_running(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let size = self.policy.batch.max(1);
        let batches = self.state.hosts.len().div_ceil(size);
        for b in 0..batches {
            let range = b * size..((b + 1) * size).min(self.state.hosts.len());
            let mut batch_done = true;
            for i in range {
                let drain_wait_due = |h: &HostProgress| h.until_ms.is_some_and(|t| t <= now);
                let h = &mut self.state.hosts[i];
                match h.step {
                    HostStep::Pending => {
                        set(h, HostStep::Draining, now, None, "draining");
                        out.push(Action::Drain(h.node.clone()));
                        batch_done = false;
                    }
                    HostStep::Draining if drain_wait_due(h) => {
                        set(h, HostStep::Deploying, now, None, "deploying");
                        out.push(Action::Deploy(h.node.clone()));
                        batch_done = false;
                    }
                    HostStep::Baking if h.until_ms.is_some_and(|t| t <= now) => {
                        let note = h.note.clone();
                        set(h, HostStep::Updated, now, None, &note);
                        out.push(Action::Say(format!("{}: baked", h.node)));
                    }
                    HostStep::Updated | HostStep::Skipped => {}
                    _ => batch_done = false,
                }
            }
            if !batch_done {
                return out;
            }
            let more = b + 1 < batches;
            if more && self.policy.pause_ms > 0 {
                // The pause follows each batch once.
                let first_of_next = (b + 1) * size;
                if self.state.hosts[first_of_next].step == HostStep::Pending {
                    match self.pause_until {
                        None => {
                            self.pause_until = Some(now + self.policy.pause_ms);
                            return out;
                        }
                        Some(t) if t > now => return out,
                        Some(_) => self.pause_until = None,
                    }
                }
            }
        }
        // Every batch is done: commit.
        self.state.phase = Phase::Committing;
        for h in &mut self.state.hosts {
            if h.step == HostStep::Updated {
                let note = h.note.clone();
                set(h, HostStep::Committing, now, None, &note);
                out.push(Action::Commit(h.node.clone()));
            }
        }
        if !self.any_in(HostStep::Committing) {
            out.extend(self.advance(now));
        }
        out
    }
}

/// How a host in `Reverting` is put back: a deploy's host reverts its uncommitted release; a
/// rollback's host goes to its target, which is asked for first when not known.
fn back(mode: Mode, h: &HostProgress) -> Action {
    match (mode, &h.target) {
        (Mode::Deploy, _) => Action::Revert(h.node.clone()),
        (Mode::Rollback, Some(t)) => Action::RollBack(h.node.clone(), t.clone()),
        (Mode::Rollback, None) => Action::Resolve(h.node.clone()),
        // A removal is driven by `rollout::remove`, never walked here.
        (Mode::Remove, _) => Action::Say(format!("{} is not put back by a removal", h.node)),
    }
}

/// Attempts a rollback makes on one host before it leaves the host as it is (a host that comes
/// back later converges to the rollback's release by itself).
pub const ROLLBACK_ATTEMPTS: u32 = 5;

/// A rollback host whose attempt failed: tried again at `at`, or skipped after
/// [`ROLLBACK_ATTEMPTS`], so a host that is gone for good does not hold the service forever.
fn retry_or_give_up(h: &mut HostProgress, at: u64, why: String) -> Action {
    if h.attempts + 1 < ROLLBACK_ATTEMPTS {
        return retry_later(h, at, "rollback", why);
    }
    let note = format!("gave up after {ROLLBACK_ATTEMPTS} attempts: {why}");
    h.attempts += 1;
    let said = format!("{}: {note}; left as it is", h.node);
    set(h, HostStep::Skipped, at, None, &note);
    Action::Say(said)
}

/// A revert or commit that failed on a host: it is tried again at `at`, never given up.
fn retry_later(h: &mut HostProgress, at: u64, what: &str, why: String) -> Action {
    h.attempts += 1;
    h.until_ms = Some(at);
    let said = format!(
        "{}: {what} attempt {} failed: {why}; retrying",
        h.node, h.attempts
    );
    h.note = why;
    Action::Say(said)
}

fn set(h: &mut HostProgress, step: HostStep, now: u64, until: Option<u64>, note: &str) {
    h.step = step;
    h.since_ms = now;
    h.until_ms = until;
    h.note = note.to_owned();
}

/// The hosts of a service in rollout order: `order` first, then `hosts` as listed (or every
/// member by name for `"*"`). `members` are the cluster's nodes that have not left.
pub fn plan(
    hosts: &halley_proto::spec::Hosts,
    order: &[NodeName],
    members: &[NodeName],
) -> Vec<NodeName> {
    let listed: Vec<NodeName> = match hosts {
        halley_proto::spec::Hosts::All => {
            let mut all = members.to_vec();
            all.sort();
            all
        }
        halley_proto::spec::Hosts::Names(names) => names.clone(),
    };
    let mut out: Vec<NodeName> = Vec::new();
    for name in order.iter().chain(&listed) {
        if listed.contains(name) && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// Whether `rollout abort` can stop `state`: any unfinished rollout that is not committing (a
/// commit cannot be taken back; roll back once it completed).
pub fn abortable(state: &RolloutState) -> Result<(), String> {
    if state.mode == Mode::Rollback && !state.phase.finished() {
        return Err(format!(
            "rollout {} of {} is a rollback and cannot be aborted: it puts every host back on a release it ran before, retrying until each is back; follow it with 'halley-node rollout status {}'",
            state.id, state.service, state.service
        ));
    }
    if state.mode == Mode::Remove && !state.phase.finished() {
        return Err(format!(
            "rollout {} of {} is a removal and cannot be aborted (a removal has no way back); run 'halley-node service remove {}' again to finish it",
            state.id, state.service, state.service
        ));
    }
    if state.phase.finished() {
        return Err(format!(
            "rollout {} of {} already ended ({}); nothing to abort",
            state.id, state.service, state.phase
        ));
    }
    if state.phase == Phase::Committing {
        return Err(format!(
            "rollout {} of {} is committing on every host and cannot be aborted; once it completed, run 'halley-node rollback {}'",
            state.id, state.service, state.service
        ));
    }
    Ok(())
}

/// Marks a deploy whose coordinator had begun committing it (a host it deployed has committed
/// its release; only a coordinator past its last batch sends commits) as committing, though
/// the state this node holds is older: its coordinator died or froze before gossip carried the
/// news. Taken over, it commits on every host it deployed (a commit of the release a host has
/// committed changes nothing) and completes; it is never reverted, and [`abortable`] refuses to
/// abort it.
pub fn resume_committing(state: &mut RolloutState, now: u64) {
    state.phase = Phase::Committing;
    for h in &mut state.hosts {
        if !matches!(h.step, HostStep::Skipped | HostStep::Failed) {
            let note = h.note.clone();
            set(h, HostStep::Committing, now, None, &note);
        }
    }
}

/// Whether a running deploy has deployed every host it did not skip or fail: only then can
/// hosts that committed its release have done so for this rollout (a host it has not reached
/// may have committed the same version long before, as for a redeploy of it).
pub fn deployed_everywhere(state: &RolloutState) -> bool {
    let mut deployed = 0;
    for h in &state.hosts {
        match h.step {
            HostStep::Baking | HostStep::Updated | HostStep::Committing | HostStep::Committed => {
                deployed += 1
            }
            HostStep::Skipped | HostStep::Failed => {}
            _ => return false,
        }
    }
    deployed > 0 && matches!(state.phase, Phase::Running | Phase::Committing)
}

/// The names in `hosts` that no member of the cluster has (`known` lists every member the node
/// knows, dead or gone ones too): a typo there would start a rollout that pauses on a host that
/// does not exist.
pub fn unknown_hosts(hosts: &halley_proto::spec::Hosts, known: &[NodeName]) -> Vec<NodeName> {
    match hosts {
        halley_proto::spec::Hosts::All => Vec::new(),
        halley_proto::spec::Hosts::Names(names) => names
            .iter()
            .filter(|n| !known.contains(n))
            .cloned()
            .collect(),
    }
}

/// Why a deploy of `service` naming `unknown` hosts is refused, and what to do.
pub fn unknown_hosts_refusal(service: &ServiceName, unknown: &[NodeName]) -> String {
    let names: Vec<&str> = unknown.iter().map(NodeName::as_str).collect();
    format!(
        "`hosts` of service {service} names {} that no node of this cluster has: {}; nothing was changed. Fix `hosts` in halley.toml (the members are listed by 'halley-node status'), or join that node first",
        if names.len() == 1 { "a node" } else { "nodes" },
        names.join(", ")
    )
}

/// Puts `Journal` first when anything is to be done.
fn journaled(actions: Vec<Action>) -> Vec<Action> {
    if actions.is_empty() {
        return actions;
    }
    let mut out = Vec::with_capacity(actions.len() + 1);
    out.push(Action::Journal);
    out.extend(actions);
    out
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/rollout/*.txt`. Commands: `hosts N...`,
    //! `policy batch=N drain=MS bake=MS pause=MS max-failed=N auto-rollback=BOOL skip=BOOL`,
    //! `at MS`, `start`, `resume [commit-began]` (the engine is rebuilt from its own state, as
    //! from a journal; a host having answered that it committed the release),
    //! `tick`, `drained H`, `deployed H ok|WHY...`, `verdict H ok|WHY...`, `reverted H ok|WHY...`,
    //! `committed H ok|WHY...`, `commit-refused H WHY...`, `unreachable H`, `fenced H WHY...`, `journal-failed WHY...`,
    //! `abort`, `show`, `wake` (when the engine next needs a tick); a rollback:
    //! `rollback H=V|?|dead...` (each host's target, not known yet, or dead), `resolved H
    //! V|none|error WHY...`.

    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    fn result(words: &[&str]) -> Result<String, String> {
        match words {
            ["ok", rest @ ..] => Ok(rest.join(" ")),
            why => Err(why.join(" ")),
        }
    }

    fn render(out: &mut String, actions: &[Action]) {
        let mut list = Vec::new();
        for a in actions {
            match a {
                Action::Say(text) => out.push_str(&format!("> say: {text}\n")),
                Action::Journal => list.push("journal".to_owned()),
                Action::Drain(h) => list.push(format!("drain {h}")),
                Action::Deploy(h) => list.push(format!("deploy {h}")),
                Action::Revert(h) => list.push(format!("revert {h}")),
                Action::Commit(h) => list.push(format!("commit {h}")),
                Action::Resolve(h) => list.push(format!("resolve {h}")),
                Action::RollBack(h, v) => list.push(format!("rollback {h} to {v}")),
            }
        }
        out.push_str(&format!("> actions: {}\n", list.join(", ")));
    }

    fn run(script: &str) -> String {
        let mut policy = Policy {
            batch: 1,
            drain_wait_ms: 1000,
            bake_ms: 5000,
            pause_ms: 0,
            max_failed_hosts: 1,
            auto_rollback: true,
            skip_unreachable: false,
            retry_ms: 1000,
        };
        let mut rollout: Option<Rollout> = None;
        let mut hosts = Vec::new();
        let mut now = 0;
        crate::scenario::replay(script, |words, out| {
            let event = match words {
                ["hosts", list @ ..] => {
                    hosts = list.iter().map(|h| name(h)).collect();
                    return;
                }
                ["policy", rest @ ..] => {
                    for word in rest {
                        let (k, v) = word.split_once('=').expect("key=value");
                        match k {
                            "batch" => policy.batch = v.parse().unwrap(),
                            "drain" => policy.drain_wait_ms = v.parse().unwrap(),
                            "bake" => policy.bake_ms = v.parse().unwrap(),
                            "pause" => policy.pause_ms = v.parse().unwrap(),
                            "max-failed" => policy.max_failed_hosts = v.parse().unwrap(),
                            "auto-rollback" => policy.auto_rollback = v.parse().unwrap(),
                            "skip" => policy.skip_unreachable = v.parse().unwrap(),
                            _ => panic!("bad policy word {word:?}"),
                        }
                    }
                    return;
                }
                ["at", ms] => {
                    now = ms.parse().unwrap();
                    return;
                }
                ["start"] => {
                    let state = RolloutState {
                        started_ms: now,
                        ..crate::scenario::rollout_state(
                            hosts
                                .iter()
                                .map(|h| HostProgress::at(h.clone(), HostStep::Pending, 0))
                                .collect(),
                        )
                    };
                    let mut r = Rollout::new(state, policy);
                    render(out, &r.start(now));
                    rollout = Some(r);
                    return;
                }
                ["rollback", rest @ ..] => {
                    let targets: Vec<(NodeName, bool, Option<ReleaseVersion>)> = rest
                        .iter()
                        .map(|w| {
                            let (h, v) = w.split_once('=').expect("HOST=VERSION|?|dead");
                            match v {
                                "?" => (name(h), true, None),
                                "dead" => (name(h), false, None),
                                v => (name(h), true, Some(ReleaseVersion::parse(v).unwrap())),
                            }
                        })
                        .collect();
                    let fresh = RolloutState {
                        started_ms: now,
                        ..crate::scenario::rollout_state(Vec::new())
                    };
                    let state = crate::engine::rollback::plan(fresh, &targets, None, now)
                        .expect("a target");
                    let mut r = Rollout::new(state, policy);
                    render(out, &r.start(now));
                    rollout = Some(r);
                    return;
                }
                ["resume", rest @ ..] => {
                    let mut journal = rollout.as_ref().expect("started").state().clone();
                    if rest == ["commit-began"] {
                        resume_committing(&mut journal, now);
                    }
                    let mut r = Rollout::new(journal, policy);
                    r.state.epoch += 1;
                    render(out, &r.resume(now));
                    rollout = Some(r);
                    return;
                }
                ["show"] => {
                    let s = rollout.as_ref().expect("started").state();
                    out.push_str(&format!("> phase={} reason={:?}\n", s.phase, s.reason));
                    for h in &s.hosts {
                        out.push_str(&format!(
                            "> {} {}{}{}\n",
                            h.node,
                            h.step.as_str(),
                            h.target
                                .as_ref()
                                .map_or(String::new(), |t| format!(" target={t}")),
                            h.until_ms.map_or(String::new(), |t| format!(" until={t}"))
                        ));
                    }
                    return;
                }
                ["tick"] => Event::Tick,
                ["wake"] => {
                    let r = rollout.as_ref().expect("started");
                    let wake = r.poll_timeout().map_or("never".into(), |t| t.to_string());
                    out.push_str(&format!("> wake at {wake}\n"));
                    return;
                }
                ["drained", h] => Event::Drained(name(h)),
                ["deployed", h, rest @ ..] => Event::Deployed(name(h), result(rest)),
                ["verdict", h, rest @ ..] => Event::Verdict(
                    name(h),
                    match rest {
                        ["ok"] => None,
                        why => Some(why.join(" ")),
                    },
                ),
                ["reverted", h, rest @ ..] => Event::Reverted(name(h), result(rest)),
                ["committed", h, rest @ ..] => Event::Committed(name(h), result(rest)),
                ["commit-refused", h, rest @ ..] => Event::CommitRefused(name(h), rest.join(" ")),
                ["unreachable", h] => Event::Unreachable(name(h)),
                ["fenced", h, rest @ ..] => Event::Fenced(name(h), rest.join(" ")),
                ["taken-over", by, epoch] => Event::TakenOver {
                    by: name(by),
                    epoch: epoch.parse().unwrap(),
                },
                ["journal-failed", rest @ ..] => Event::JournalFailed(rest.join(" ")),
                ["abort"] => Event::Abort,
                ["resolved", h, rest @ ..] => Event::Resolved(
                    name(h),
                    match rest {
                        ["none"] => Ok(None),
                        ["error", why @ ..] => Err(why.join(" ")),
                        [v] => Ok(Some(ReleaseVersion::parse(v).unwrap())),
                        other => panic!("resolved H V|none|error WHY..., not {other:?}"),
                    },
                ),
                _ => panic!("unknown scenario command: {words:?}"),
            };
            let actions = rollout.as_mut().expect("started").step(event, now);
            render(out, &actions);
        })
    }

    #[test]
    fn plan_follows_order_then_hosts() {
        use halley_proto::spec::Hosts;
        let members = [name("c"), name("a"), name("b")];
        assert_eq!(
            plan(&Hosts::All, &[], &members),
            [name("a"), name("b"), name("c")]
        );
        assert_eq!(
            plan(&Hosts::All, &[name("c"), name("x")], &members),
            [name("c"), name("a"), name("b")]
        );
        let listed = Hosts::Names(vec![name("b"), name("z")]);
        assert_eq!(plan(&listed, &[], &members), [name("b"), name("z")]);
    }

    #[test]
    fn rollout_scenarios() {
        crate::scenario::run_folder("rollout", 8, run);
    }
}
