//! The blue/green slot engine of one service on one host: which slot runs which release, which
//! one the proxy routes to, and what a deploy step, a finished drain or the passing of time must do.
//!
//! Pure: every input takes `now` (monotonic milliseconds) and returns [`Action`]s; the driver
//! (`host::actor`) spawns and stops processes, switches the proxy and persists the state, then
//! feeds back what happened (health, finished drains).
//!
//! ## Rules
//! - A new release starts in the slot that is not active; it gets no traffic until a `flip`, and a
//!   flip is refused unless that slot is healthy.
//! - A flip routes new requests to the new slot at once and puts the old one in `draining` until
//!   `drain_timeout`. When its in-flight work is done (or cut at the deadline), a slot running the
//!   committed release stays `warm` until the deploy is committed (so a revert is a flip), then
//!   for `keep_warm`; any other drained slot is kept warm for `keep_warm`, else stopped. A slot
//!   reverted away from is never kept warm.
//! - A release already running in the idle slot (warm, or still draining) is reused, not
//!   restarted: that is what makes a rollback a plain flip.
//! - `revert` undoes what is not committed: it stops an unflipped next slot, and routes back to
//!   the committed release when it still runs; when it does not, the driver must start it cold
//!   ([`Reverted::StartCommitted`]).
//! - A slot that is draining a release other than the one asked for is never stopped early: the
//!   start is refused until the drain ends, so in-flight requests keep their full `drain_timeout`.
//! - `stop-start` (a service that cannot run two copies): starting a release first takes the
//!   route away from the active slot and drains it; only when that drain ends (or is cut) and
//!   the slot is stopped is the new release spawned. Nothing is kept warm, so a revert starts the
//!   committed release cold, in the same order — unless the old slot is still draining, in which
//!   case the revert routes straight back to it.
//!
//! ## Non-goals
//! It does not know about processes, ports or health probes; only their outcomes.

use std::fmt;

use halley_proto::deploy::{Color, Health, ReleaseVersion, SlotRole};
use halley_proto::message::ErrorKind;

/// Per-service timing the engine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a drained slot's in-flight work may run.
    pub drain_ms: u64,
    /// How long a drained slot stays running out of rotation.
    pub keep_warm_ms: u64,
    /// Never run two slots at once (`strategy = "stop-start"`).
    pub stop_start: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `version` in `slot` (a fresh process on a fresh port).
    Spawn {
        /// The slot.
        slot: Color,
        /// The release.
        version: ReleaseVersion,
    },
    /// Stop the slot's process (signal, then kill after `kill_after`).
    Stop {
        /// The slot.
        slot: Color,
    },
    /// Switch the proxy to the slot, atomically.
    Route {
        /// The slot.
        slot: Color,
    },
    /// Take every route away: nothing serves (only after reverting a first-ever deploy).
    Unroute,
    /// Start watching the slot's in-flight work; report [`Slots::drained`] when it reaches zero.
    Drain {
        /// The slot.
        slot: Color,
    },
    /// Cut what is still in flight on the slot (its drain deadline passed): 504s and closed
    /// connections.
    Cut {
        /// The slot.
        slot: Color,
    },
    /// Persist the state.
    Save,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Spawn { slot, version } => write!(f, "spawn {slot} {version}"),
            Action::Stop { slot } => write!(f, "stop {slot}"),
            Action::Route { slot } => write!(f, "route {slot}"),
            Action::Unroute => write!(f, "unroute"),
            Action::Drain { slot } => write!(f, "drain {slot}"),
            Action::Cut { slot } => write!(f, "cut {slot}"),
            Action::Save => write!(f, "save"),
        }
    }
}

/// A step the engine will not take, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The class, for the caller.
    pub kind: ErrorKind,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(kind: ErrorKind, message: String) -> Refused {
    Refused { kind, message }
}

/// One slot's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The release it runs (or last ran).
    pub version: Option<ReleaseVersion>,
    /// What it does.
    pub role: SlotRole,
    /// Its health, as the driver reported it.
    pub health: Health,
    /// End of the drain (draining) or of `keep_warm` (warm).
    pub until_ms: Option<u64>,
    /// Stop rather than keep warm once drained (set when reverting away from it).
    stop_after_drain: bool,
    /// Kept warm until the deploy that replaced it is committed (a revert is then a flip).
    held: bool,
}

impl Slot {
    fn idle() -> Self {
        Self {
            version: None,
            role: SlotRole::Idle,
            health: Health::Stopped,
            until_ms: None,
            stop_after_drain: false,
            held: false,
        }
    }

    /// Whether a process should be running in it.
    pub fn running(&self) -> bool {
        self.role != SlotRole::Idle
    }
}

/// How a revert ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverted {
    /// Done (perhaps nothing was uncommitted).
    Done,
    /// The committed release no longer runs: start it with [`Slots::start_next`], wait for it to
    /// be healthy, then [`Slots::flip_back`].
    StartCommitted(ReleaseVersion),
}

/// A service's two slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    active: Option<Color>,
    slots: [Slot; 2],
    committed: Option<ReleaseVersion>,
    previous: Option<ReleaseVersion>,
    policy: Policy,
    /// A next slot waiting for the old active slot's drain before it is spawned (stop-start).
    pending: Option<Color>,
}

impl Slots {
    /// A service that runs nothing yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            active: None,
            slots: [Slot::idle(), Slot::idle()],
            committed: None,
            previous: None,
            policy,
            pending: None,
        }
    }

    /// State restored from disk: each running slot is taken as it was, health unknown.
    pub fn restore(
        policy: Policy,
        active: Option<Color>,
        versions: [Option<ReleaseVersion>; 2],
        committed: Option<ReleaseVersion>,
        previous: Option<ReleaseVersion>,
    ) -> Self {
        let mut slots = Self::new(policy);
        slots.committed = committed;
        slots.previous = previous;
        for color in Color::BOTH {
            let Some(version) = versions[color.index()].clone() else {
                continue;
            };
            let slot = &mut slots.slots[color.index()];
            slot.version = Some(version);
            slot.health = Health::Starting;
            // A non-active slot that survived a node restart is kept for rollback until the
            // warm period the driver sets on the first tick.
            slot.role = if active == Some(color) {
                SlotRole::Active
            } else {
                SlotRole::Warm
            };
        }
        slots.active = active.filter(|c| slots.slots[c.index()].running());
        slots
    }

    /// Sets the timing for what follows.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The slot the proxy routes to.
    pub fn active(&self) -> Option<Color> {
        self.active
    }

    /// A slot's state.
    pub fn slot(&self, color: Color) -> &Slot {
        &self.slots[color.index()]
    }

    /// The committed release.
    pub fn committed(&self) -> Option<&ReleaseVersion> {
        self.committed.as_ref()
    }

    /// The release committed before it.
    pub fn previous(&self) -> Option<&ReleaseVersion> {
        self.previous.as_ref()
    }

    /// The slot holding a started, not yet routed release.
    pub fn next(&self) -> Option<Color> {
        Color::BOTH
            .into_iter()
            .find(|c| self.slot(*c).role == SlotRole::Next)
    }

    fn slot_mut(&mut self, color: Color) -> &mut Slot {
        &mut self.slots[color.index()]
    }

    /// The next slot whose spawn waits for the old slot's drain (stop-start).
    pub fn pending(&self) -> Option<Color> {
        self.pending
    }

    /// Starts `version` in the slot that is not active, or reuses that slot when it already runs
    /// `version` and is not unhealthy. Returns the slot and whether it was reused. With
    /// stop-start, the active slot is unrouted and drained first and the spawn waits for it.
    pub fn start_next(
        &mut self,
        version: &ReleaseVersion,
        now: u64,
    ) -> Result<(Color, bool, Vec<Action>), Refused> {
        if let Some(active) = self.flipped_uncommitted(Some(version)) {
            return Ok((active, true, Vec::new()));
        }
        let target = match self.active {
            Some(active) => active.other(),
            // Nothing routed: the next slot if one was started, else an idle one, so that a
            // slot still draining is left alone.
            None => self
                .next()
                .or_else(|| Color::BOTH.into_iter().find(|c| !self.slot(*c).running()))
                .unwrap_or(Color::Blue),
        };
        let slot = self.slot(target).clone();
        let same = slot.version.as_ref() == Some(version);
        if slot.role == SlotRole::Draining && !same {
            let release = slot.version.as_ref().map_or("-", |v| v.as_str());
            return Err(refuse(
                ErrorKind::Conflict,
                format!(
                    "slot {target} is still draining in-flight requests of release {release}; wait for the drain to end (at most drain_timeout) and retry"
                ),
            ));
        }
        if same && slot.running() && slot.health != Health::Unhealthy {
            let s = self.slot_mut(target);
            s.role = SlotRole::Next;
            s.until_ms = None;
            s.stop_after_drain = false;
            s.held = false;
            return Ok((target, true, vec![Action::Save]));
        }
        let mut actions = Vec::new();
        if slot.running() {
            actions.push(Action::Stop { slot: target });
        }
        let old = self.active.filter(|_| self.policy.stop_start);
        if let Some(old) = old {
            let drain_until = now + self.policy.drain_ms;
            let s = self.slot_mut(old);
            s.role = SlotRole::Draining;
            s.until_ms = Some(drain_until);
            s.stop_after_drain = true;
            s.held = false;
            self.active = None;
            self.pending = Some(target);
            actions.extend([Action::Unroute, Action::Drain { slot: old }]);
        } else {
            actions.push(Action::Spawn {
                slot: target,
                version: version.clone(),
            });
        }
        actions.push(Action::Save);
        let s = self.slot_mut(target);
        *s = Slot::idle();
        s.version = Some(version.clone());
        s.role = SlotRole::Next;
        s.health = Health::Starting;
        Ok((target, false, actions))
    }

    /// Records a slot's health as the driver judged it.
    pub fn set_health(&mut self, color: Color, health: Health) {
        let slot = self.slot_mut(color);
        if slot.running() {
            slot.health = health;
        }
    }

    /// Routes new work to the next slot; the old active slot starts draining.
    pub fn flip(&mut self, now: u64) -> Result<Vec<Action>, Refused> {
        self.flip_inner(now, false)
    }

    /// Like [`Slots::flip`], for a revert: the slot flipped away from is stopped once drained,
    /// never kept warm.
    pub fn flip_back(&mut self, now: u64) -> Result<Vec<Action>, Refused> {
        self.flip_inner(now, true)
    }

    fn flip_inner(&mut self, now: u64, stop_old: bool) -> Result<Vec<Action>, Refused> {
        if !stop_old && self.flipped_uncommitted(None).is_some() {
            return Ok(Vec::new());
        }
        let Some(next) = self.next() else {
            return Err(refuse(
                ErrorKind::Conflict,
                "no started release to flip to; run start-next first".into(),
            ));
        };
        let health = self.slot(next).health;
        if health != Health::Healthy {
            return Err(refuse(
                ErrorKind::Conflict,
                format!(
                    "slot {next} is {}, not healthy; it gets no traffic until its check passes",
                    health.as_str()
                ),
            ));
        }
        let mut actions = vec![Action::Route { slot: next }];
        if let Some(old) = self.active {
            let drain_until = now + self.policy.drain_ms;
            let s = self.slot_mut(old);
            s.role = SlotRole::Draining;
            s.until_ms = Some(drain_until);
            s.stop_after_drain = stop_old;
            actions.push(Action::Drain { slot: old });
        }
        let s = self.slot_mut(next);
        s.role = SlotRole::Active;
        s.until_ms = None;
        s.held = false;
        self.active = Some(next);
        actions.push(Action::Save);
        Ok(actions)
    }

    /// The driver saw a draining slot's in-flight work reach zero (or cut it).
    pub fn drained(&mut self, color: Color, now: u64) -> Vec<Action> {
        let mut actions = self.drained_inner(color, now);
        if let Some(next) = self.pending
            && !Color::BOTH
                .into_iter()
                .any(|c| self.slot(c).role == SlotRole::Draining)
        {
            self.pending = None;
            if let Some(version) = self.slot(next).version.clone() {
                let at = actions.len().saturating_sub(1);
                actions.insert(
                    at,
                    Action::Spawn {
                        slot: next,
                        version,
                    },
                );
            }
        }
        actions
    }

    fn drained_inner(&mut self, color: Color, now: u64) -> Vec<Action> {
        let keep_warm = self.policy.keep_warm_ms;
        let committed = self.committed.clone();
        let slot = self.slot_mut(color);
        if slot.role != SlotRole::Draining {
            return Vec::new();
        }
        if !slot.stop_after_drain && committed.is_some() && slot.version == committed {
            // The committed release stays up until the new one is committed.
            slot.role = SlotRole::Warm;
            slot.until_ms = None;
            slot.held = true;
            return vec![Action::Save];
        }
        if keep_warm > 0 && !slot.stop_after_drain {
            slot.role = SlotRole::Warm;
            slot.until_ms = Some(now + keep_warm);
            return vec![Action::Save];
        }
        *slot = Slot {
            version: slot.version.take(),
            ..Slot::idle()
        };
        vec![Action::Stop { slot: color }, Action::Save]
    }

    /// Deadlines: a drain past `drain_timeout` is cut; a warm slot past `keep_warm` is stopped.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        for color in Color::BOTH {
            let slot = self.slot(color);
            let due = slot.until_ms.is_some_and(|t| t <= now);
            match slot.role {
                SlotRole::Draining if due => {
                    actions.push(Action::Cut { slot: color });
                    actions.extend(self.drained(color, now));
                }
                SlotRole::Warm if due => {
                    let s = self.slot_mut(color);
                    *s = Slot {
                        version: s.version.take(),
                        ..Slot::idle()
                    };
                    actions.push(Action::Stop { slot: color });
                    actions.push(Action::Save);
                }
                SlotRole::Warm if slot.until_ms.is_none() && !slot.held => {
                    // Restored from disk: the warm period starts now.
                    let keep = self.policy.keep_warm_ms;
                    self.slot_mut(color).until_ms = Some(now + keep);
                }
                _ => {}
            }
        }
        actions
    }

    /// When [`Slots::tick`] next has something to do (in the driver's `now`): a drain deadline, a
    /// warm slot's end, or `0` for a warm slot restored from disk whose warm period has not
    /// started. `None` while no deadline runs.
    pub fn poll_timeout(&self) -> Option<u64> {
        Color::BOTH
            .into_iter()
            .filter_map(|c| {
                let s = self.slot(c);
                match s.role {
                    SlotRole::Draining => s.until_ms,
                    SlotRole::Warm => s.until_ms.or((!s.held).then_some(0)),
                    _ => None,
                }
            })
            .min()
    }

    /// The active slot when a deploy of its release (`version`, if given) was already flipped
    /// and is not committed yet, with no next slot. A resumed deploy issues `start-next`, `check`
    /// and `flip` again; for that release they are then done already and change nothing (before,
    /// `start-next` stopped the warm previous slot and started the release a second time).
    pub fn flipped_uncommitted(&self, version: Option<&ReleaseVersion>) -> Option<Color> {
        let active = self.active?;
        if self.next().is_some() {
            return None;
        }
        let serving = self.slot(active).version.as_ref()?;
        if Some(serving) == self.committed.as_ref() || version.is_some_and(|v| v != serving) {
            return None;
        }
        Some(active)
    }

    /// Whether a deploy is under way: a started next slot, or routing to a release that is not
    /// the committed one.
    pub fn uncommitted(&self) -> bool {
        self.next().is_some()
            || (self.active.is_none() && self.committed.is_some())
            || self
                .active
                .is_some_and(|c| self.slot(c).version != self.committed)
    }

    /// Makes the active slot's release the committed one. Returns it and the one before it. A
    /// slot held warm for the deploy now follows `keep_warm`.
    pub fn commit(
        &mut self,
        now: u64,
    ) -> Result<(ReleaseVersion, Option<ReleaseVersion>, Vec<Action>), Refused> {
        let version = self
            .active
            .and_then(|c| self.slot(c).version.clone())
            .ok_or_else(|| {
                refuse(
                    ErrorKind::Conflict,
                    "nothing is routed, so there is nothing to commit; flip first".into(),
                )
            })?;
        if self.committed.as_ref() != Some(&version) {
            self.previous = self.committed.replace(version.clone());
        }
        let mut actions = Vec::new();
        let keep_warm = self.policy.keep_warm_ms;
        for color in Color::BOTH {
            let s = self.slot_mut(color);
            if s.role == SlotRole::Warm && s.held {
                s.held = false;
                if keep_warm > 0 {
                    s.until_ms = Some(now + keep_warm);
                } else {
                    *s = Slot {
                        version: s.version.take(),
                        ..Slot::idle()
                    };
                    actions.push(Action::Stop { slot: color });
                }
            }
        }
        actions.push(Action::Save);
        Ok((version, self.previous.clone(), actions))
    }

    /// Takes every route away and stops both slots (their releases are remembered), so that
    /// nothing writes the service's data; a [`Slots::revert`] then starts the committed release
    /// again.
    pub fn stop_all(&mut self) -> Vec<Action> {
        let mut actions = vec![Action::Unroute];
        self.active = None;
        self.pending = None;
        for color in Color::BOTH {
            if self.slot(color).running() {
                let s = self.slot_mut(color);
                *s = Slot {
                    version: s.version.take(),
                    ..Slot::idle()
                };
                actions.push(Action::Stop { slot: color });
            }
        }
        actions.push(Action::Save);
        actions
    }

    /// Undoes what is not committed. See the module rules.
    pub fn revert(&mut self, now: u64) -> (Reverted, Vec<Action>) {
        let mut actions = Vec::new();
        self.pending = None;
        if let Some(next) = self.next() {
            let s = self.slot_mut(next);
            *s = Slot {
                version: s.version.take(),
                ..Slot::idle()
            };
            actions.push(Action::Stop { slot: next });
        }
        let Some(active) = self.active else {
            // Stop-start took the route away from the committed release: route back to it while
            // it still runs, else it must start again.
            let Some(committed) = self.committed.clone() else {
                actions.push(Action::Save);
                return (Reverted::Done, actions);
            };
            let back = Color::BOTH.into_iter().find(|c| {
                let s = self.slot(*c);
                s.running()
                    && s.version.as_ref() == Some(&committed)
                    && s.health != Health::Unhealthy
            });
            if let Some(back) = back {
                let s = self.slot_mut(back);
                s.role = SlotRole::Next;
                s.health = Health::Healthy;
                s.stop_after_drain = false;
                match self.flip_back(now) {
                    Ok(flip) => actions.extend(flip),
                    Err(_) => actions.push(Action::Save),
                }
                return (Reverted::Done, actions);
            }
            actions.push(Action::Save);
            return (Reverted::StartCommitted(committed), actions);
        };
        if self.slot(active).version == self.committed {
            actions.push(Action::Save);
            return (Reverted::Done, actions);
        }
        let Some(committed) = self.committed.clone() else {
            // A first-ever deploy was flipped and is being undone: nothing else ever served.
            let drain_until = now + self.policy.drain_ms;
            let s = self.slot_mut(active);
            s.role = SlotRole::Draining;
            s.until_ms = Some(drain_until);
            s.stop_after_drain = true;
            self.active = None;
            actions.extend([
                Action::Unroute,
                Action::Drain { slot: active },
                Action::Save,
            ]);
            return (Reverted::Done, actions);
        };
        let other = active.other();
        let back = self.slot(other);
        if back.version.as_ref() == Some(&committed)
            && back.running()
            && back.health != Health::Unhealthy
        {
            self.slot_mut(other).role = SlotRole::Next;
            self.slot_mut(other).health = Health::Healthy;
            match self.flip_back(now) {
                Ok(flip) => actions.extend(flip),
                Err(_) => actions.push(Action::Save),
            }
            return (Reverted::Done, actions);
        }
        actions.push(Action::Save);
        (Reverted::StartCommitted(committed), actions)
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/slots/*.txt`. Commands:
    //! `policy drain=MS warm=MS strategy=blue-green|stop-start`,
    //! `at MS`, `start VERSION`, `health SLOT starting|healthy|unhealthy`, `flip`, `drained SLOT`,
    //! `tick`, `commit`, `revert`, `stop-all`, `show`, `wake` (when `tick` next has work). Under each command the engine's answer is recorded as
    //! `> ...` lines; `UPDATE_GOLDENFILES=1` rewrites them.
    use super::*;

    fn color(text: &str) -> Color {
        Color::parse(text).expect("blue or green")
    }

    fn actions(out: &mut String, actions: &[Action]) {
        let list: Vec<String> = actions.iter().map(ToString::to_string).collect();
        out.push_str(&format!("> actions: {}\n", list.join(", ")));
    }

    fn refused(out: &mut String, r: &Refused) {
        out.push_str(&format!("> refused {:?}: {}\n", r.kind, r.message));
    }

    fn show(out: &mut String, s: &Slots) {
        let v = |v: Option<&ReleaseVersion>| v.map_or("-".to_owned(), ToString::to_string);
        out.push_str(&format!(
            "> active={} committed={} previous={}\n",
            s.active().map_or("-", Color::as_str),
            v(s.committed()),
            v(s.previous())
        ));
        for c in Color::BOTH {
            let slot = s.slot(c);
            out.push_str(&format!(
                "> {c}: {} {} {}{}\n",
                v(slot.version.as_ref()),
                slot.role.as_str(),
                slot.health.as_str(),
                slot.until_ms
                    .map_or(String::new(), |t| format!(" until={t}"))
            ));
        }
    }

    fn run(script: &str) -> String {
        let mut slots = Slots::new(Policy {
            drain_ms: 30_000,
            keep_warm_ms: 0,
            stop_start: false,
        });
        let mut now = 0;
        crate::scenario::replay(script, |words, out| match words {
            ["policy", rest @ ..] => {
                let mut policy = slots.policy;
                for word in rest {
                    match word.split_once('=') {
                        Some(("drain", v)) => policy.drain_ms = v.parse().unwrap(),
                        Some(("warm", v)) => policy.keep_warm_ms = v.parse().unwrap(),
                        Some(("strategy", "stop-start")) => policy.stop_start = true,
                        Some(("strategy", "blue-green")) => policy.stop_start = false,
                        _ => panic!("bad policy word {word:?}"),
                    }
                }
                slots.set_policy(policy);
            }
            ["at", ms] => now = ms.parse().unwrap(),
            ["start", v] => match slots.start_next(&ReleaseVersion::parse(v).unwrap(), now) {
                Ok((slot, reused, list)) => {
                    out.push_str(&format!("> slot {slot} reused={reused}\n"));
                    actions(out, &list);
                }
                Err(r) => refused(out, &r),
            },
            ["health", c, h] => slots.set_health(color(c), Health::parse(h).unwrap()),
            ["flip"] => match slots.flip(now) {
                Ok(list) => actions(out, &list),
                Err(r) => refused(out, &r),
            },
            ["drained", c] => actions(out, &slots.drained(color(c), now)),
            ["tick"] => actions(out, &slots.tick(now)),
            ["wake"] => out.push_str(&format!(
                "> wake at {}\n",
                slots
                    .poll_timeout()
                    .map_or("never".into(), |t| t.to_string())
            )),
            ["commit"] => match slots.commit(now) {
                Ok((v, prev, list)) => {
                    out.push_str(&format!(
                        "> committed {v} previous {}\n",
                        prev.map_or("-".into(), |p| p.to_string())
                    ));
                    actions(out, &list);
                }
                Err(r) => refused(out, &r),
            },
            ["stop-all"] => actions(out, &slots.stop_all()),
            ["revert"] => {
                let (outcome, list) = slots.revert(now);
                out.push_str(&format!("> {outcome:?}\n"));
                actions(out, &list);
            }
            ["show"] => show(out, &slots),
            _ => panic!("unknown scenario command: {words:?}"),
        })
    }

    #[test]
    fn slot_scenarios() {
        crate::scenario::run_folder("slots", 4, run);
    }
}
