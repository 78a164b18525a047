//! The one-rollout-per-service lock and the epoch a new rollout takes, as decisions over what
//! the coordinator gathered (the newest known state, its coordinator's fresh answer, whether a
//! driver still runs it, the epochs hosts have seen).
//!
//! ## Guarantees
//! - A new rollout is refused while the newest known one is unfinished, unless forced; the
//!   refusal names the rollout, its coordinator, version and progress, and what to do.
//! - A coordinator's own answer replaces gossip's copy only when it is the same rollout and not
//!   older by (epoch, seq).
//! - A new epoch is above every epoch seen.
//!
//! ## Non-goals
//! Two coordinators that gathered the same view choose the same epoch; the hosts order them by
//! (epoch, coordinator name) ([`crate::engine::fence`]), so only one is obeyed.

use halley_proto::NodeName;
use halley_proto::rollout::{Mode, Phase, RolloutState};
use halley_proto::spec::ServiceName;

/// Whether `current`, as gossip shows it, needs a fresh look from its coordinator before it
/// blocks anyone: gossip may lag a rollout that just ended.
pub fn ask_coordinator(current: &RolloutState, me: &NodeName) -> bool {
    !current.phase.finished() && &current.coordinator != me
}

/// The state to judge by: the coordinator's fresh answer when it is the same rollout and not
/// older, else what gossip showed.
pub fn fresher(current: RolloutState, fresh: Option<RolloutState>) -> RolloutState {
    match fresh {
        Some(f) if f.id == current.id && (f.epoch, f.seq) >= (current.epoch, current.seq) => f,
        _ => current,
    }
}

/// Whether `current` keeps a new rollout (or a rollback) from starting.
pub fn blocks(current: &RolloutState, force: bool) -> bool {
    !current.phase.finished() && !force
}

/// Why a new rollout of `service` is refused while `current` is unfinished; `driven` says a
/// coordinator still drives it.
pub fn refusal(service: &ServiceName, current: &RolloutState, driven: bool) -> String {
    if current.mode == Mode::Remove {
        let again = format!(
            "halley-node service remove {service}{}",
            if current.purges() { " --purge" } else { "" }
        );
        return if driven {
            format!(
                "service {service} is being removed by node {} (removal {}, {}); wait for it ('halley-node rollout status {service}'), then deploy it again if you want it back",
                current.coordinator,
                current.id,
                current.progress()
            )
        } else {
            format!(
                "service {service} has an unfinished removal {} by node {}, which no longer drives it ({}); finish it with '{again}', then deploy it again if you want it back",
                current.id,
                current.coordinator,
                current.progress()
            )
        };
    }
    let what = format!(
        "service {service} has an unfinished rollout {} by node {}: version {}, {}, {}",
        current.id,
        current.coordinator,
        current.version,
        current.phase,
        current.progress()
    );
    if current.phase == Phase::Paused {
        format!(
            "{what} ({}); continue it with 'halley-node deploy --resume {service}'",
            current.reason
        )
    } else if driven {
        format!("{what}; wait for it ('halley-node rollout status {service}')")
    } else {
        format!(
            "{what}, and node {} no longer drives it (dead or restarted); take it over with 'halley-node deploy --resume {service}'",
            current.coordinator
        )
    }
}

/// Whether node `me` may take `state` over with `deploy --resume`: a paused rollout, or one no
/// coordinator drives, always; one that is driven only when forced and not by `me` itself.
pub fn may_resume(
    service: &ServiceName,
    state: &RolloutState,
    me: &NodeName,
    driven: bool,
    force: bool,
) -> Result<(), String> {
    if state.phase == Phase::Paused || !driven {
        return Ok(());
    }
    if &state.coordinator == me {
        return Err(format!(
            "this node is already coordinating rollout {} of {service}",
            state.id
        ));
    }
    if !force {
        return Err(format!(
            "node {} is alive and coordinating rollout {} of {service}; use --force to take it over",
            state.coordinator, state.id
        ));
    }
    Ok(())
}

/// The epoch of a new rollout: one above every epoch seen (in gossip and on the hosts that
/// answered).
pub fn next_epoch(seen: impl IntoIterator<Item = u64>) -> u64 {
    seen.into_iter().max().unwrap_or(0).saturating_add(1)
}

/// The epoch of a resumed rollout: above every epoch seen and above the rollout's own.
pub fn resume_epoch(own: u64, seen: impl IntoIterator<Item = u64>) -> u64 {
    next_epoch(seen).max(own.saturating_add(1))
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/lock/*.txt`. Commands:
    //! `newest id=ID coordinator=N phase=P epoch=E seq=S` (the state gossip shows; `newest none`
    //! clears it), `fresh id=ID phase=P epoch=E seq=S` (its coordinator's answer; `fresh none`),
    //! `deploy me=N force=BOOL driven=BOOL`, `resume me=N force=BOOL driven=BOOL`,
    //! `epoch E...` (epochs seen).
    use halley_proto::rollout::{HostProgress, HostStep};

    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::parse(n).unwrap()
    }

    fn phase(p: &str) -> Phase {
        match p {
            "running" => Phase::Running,
            "paused" => Phase::Paused,
            "rolling-back" => Phase::RollingBack,
            "completed" => Phase::Completed,
            "rolled-back" => Phase::RolledBack,
            "fenced" => Phase::Fenced,
            other => panic!("unknown phase {other:?}"),
        }
    }

    fn state(words: &[&str], base: Option<&RolloutState>) -> RolloutState {
        let mut s = base.cloned().unwrap_or_else(|| RolloutState {
            seq: 1,
            reason: "a reason".into(),
            ..crate::scenario::rollout_state(
                ["n1", "n2"]
                    .iter()
                    .map(|h| HostProgress::at(name(h), HostStep::Pending, 0))
                    .collect(),
            )
        });
        for word in words {
            let (k, v) = word.split_once('=').expect("key=value");
            match k {
                "id" => s.id = v.into(),
                "coordinator" => s.coordinator = name(v),
                "phase" => s.phase = phase(v),
                "epoch" => s.epoch = v.parse().unwrap(),
                "seq" => s.seq = v.parse().unwrap(),
                "mode" => {
                    s.mode = match v {
                        "remove" => Mode::Remove,
                        "rollback" => Mode::Rollback,
                        _ => Mode::Deploy,
                    }
                }
                "version" => {
                    s.version = halley_proto::deploy::ReleaseVersion::parse(v).unwrap();
                }
                _ => panic!("bad word {word:?}"),
            }
        }
        s
    }

    fn flags(words: &[&str]) -> (NodeName, bool, bool) {
        let (mut me, mut force, mut driven) = (name("n1"), false, false);
        for word in words {
            let (k, v) = word.split_once('=').expect("key=value");
            match k {
                "me" => me = name(v),
                "force" => force = v.parse().unwrap(),
                "driven" => driven = v.parse().unwrap(),
                _ => panic!("bad word {word:?}"),
            }
        }
        (me, force, driven)
    }

    fn run(script: &str) -> String {
        let service = ServiceName::parse("web").unwrap();
        let mut newest: Option<RolloutState> = None;
        let mut fresh: Option<RolloutState> = None;
        crate::scenario::replay(script, |words, out| match words {
            ["newest", "none"] => newest = None,
            ["newest", rest @ ..] => newest = Some(state(rest, None)),
            ["fresh", "none"] => fresh = None,
            ["fresh", rest @ ..] => fresh = Some(state(rest, newest.as_ref())),
            ["deploy", rest @ ..] => {
                let (me, force, driven) = flags(rest);
                let Some(current) = newest.clone() else {
                    out.push_str("> allowed: no rollout known\n");
                    return;
                };
                let asked = ask_coordinator(&current, &me);
                let current = if asked {
                    fresher(current, fresh.clone())
                } else {
                    current
                };
                if asked {
                    out.push_str(&format!(
                        "> asked {}: judging {} epoch={} seq={}\n",
                        current.coordinator, current.phase, current.epoch, current.seq
                    ));
                }
                if blocks(&current, force) {
                    out.push_str(&format!(
                        "> refused: {}\n",
                        refusal(&service, &current, driven)
                    ));
                } else {
                    out.push_str("> allowed\n");
                }
            }
            ["resume", rest @ ..] => {
                let (me, force, driven) = flags(rest);
                match newest.as_ref().filter(|s| !s.phase.finished()) {
                    None => out.push_str("> refused: nothing unfinished to resume\n"),
                    Some(s) => match may_resume(&service, s, &me, driven, force) {
                        Ok(()) => out.push_str(&format!(
                            "> allowed: epoch {}\n",
                            resume_epoch(s.epoch, [s.epoch])
                        )),
                        Err(why) => out.push_str(&format!("> refused: {why}\n")),
                    },
                }
            }
            ["epoch", seen @ ..] => {
                let e = next_epoch(seen.iter().map(|e| e.parse::<u64>().unwrap()));
                out.push_str(&format!("> {e}\n"));
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("lock", 2, run);
    }
}
