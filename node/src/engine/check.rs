//! The verdict of a `check` step: whether the next slot of a service became healthy, failed, or
//! is still starting, from what the slot engine and the health tracker say about it.
//!
//! ## Guarantees
//! - A slot that stopped being the next slot (a revert, a flip by another step) fails the check
//!   at once, saying what it is now.
//! - A crash loop fails at once with the last exit; a missed `start_period` or an unhealthy
//!   verdict fails with the last check's output (or "none ran") and the last exit.
//! - A stop-start slot that waits for the old slot to drain is still starting, not failed.

use halley_proto::deploy::{Color, Health, ReleaseVersion, SlotRole};

/// What the host knows of the slot under check.
#[derive(Debug, Clone)]
pub struct Slot<'a> {
    /// The slot.
    pub color: Color,
    /// Its role now.
    pub role: SlotRole,
    /// Its health now.
    pub health: Health,
    /// Its release.
    pub version: Option<&'a ReleaseVersion>,
    /// Stop-start: it starts only once the old slot has drained.
    pub pending: bool,
    /// The supervisor found a crash loop.
    pub crash_loop: bool,
    /// `start_period` passed without a passing check (true when nothing tracks its health).
    pub missed_deadline: bool,
    /// The last failing check's output, if any.
    pub last_failure: &'a str,
    /// How its process last exited, with its log's last lines.
    pub last_exit: Option<&'a str>,
}

/// How a check stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: ask again on the next event or tick.
    Wait,
    /// Healthy: the check passes.
    Healthy,
    /// The check fails, and why.
    Failed(String),
}

/// The verdict on `slot` now.
pub fn verdict(slot: &Slot<'_>) -> Verdict {
    let version = slot.version.map_or("-", |v| v.as_str());
    if slot.role != SlotRole::Next {
        return Verdict::Failed(format!(
            "slot {} is no longer the next slot (it is {})",
            slot.color,
            slot.role.as_str()
        ));
    }
    if slot.health == Health::Healthy {
        return Verdict::Healthy;
    }
    if slot.pending {
        return Verdict::Wait;
    }
    if slot.crash_loop {
        return Verdict::Failed(format!(
            "release {version} is crash-looping: {}",
            slot.last_exit.unwrap_or_default()
        ));
    }
    if slot.missed_deadline || slot.health == Health::Unhealthy {
        let exit = slot.last_exit.map(|e| format!("; {e}")).unwrap_or_default();
        let last = if slot.last_failure.is_empty() {
            "none ran"
        } else {
            slot.last_failure
        };
        return Verdict::Failed(format!(
            "release {version} did not become healthy within start_period; last check: {last}{exit}"
        ));
    }
    Verdict::Wait
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/check/*.txt`. `slot KEY=VALUE...` sets what the
    //! host knows (role, health, version, pending, crash-loop, missed, failure, exit; `_` stands
    //! for a space in values) and prints the verdict.
    use super::*;

    fn run(script: &str) -> String {
        let mut role = SlotRole::Next;
        let mut health = Health::Starting;
        let mut version = ReleaseVersion::parse("2").unwrap();
        let (mut pending, mut crash_loop, mut missed) = (false, false, false);
        let (mut failure, mut exit) = (String::new(), None::<String>);
        crate::scenario::replay(script, |words, out| match words {
            ["slot", rest @ ..] => {
                for word in rest {
                    let (k, v) = word.split_once('=').expect("key=value");
                    let text = v.replace('_', " ");
                    match k {
                        "role" => {
                            role = match v {
                                "next" => SlotRole::Next,
                                "active" => SlotRole::Active,
                                "draining" => SlotRole::Draining,
                                "idle" => SlotRole::Idle,
                                other => panic!("unknown role {other:?}"),
                            }
                        }
                        "health" => health = Health::parse(v).expect("a health"),
                        "version" => version = ReleaseVersion::parse(v).unwrap(),
                        "pending" => pending = v.parse().unwrap(),
                        "crash-loop" => crash_loop = v.parse().unwrap(),
                        "missed" => missed = v.parse().unwrap(),
                        "failure" => failure = text,
                        "exit" => exit = Some(text).filter(|e| e != "-"),
                        _ => panic!("bad word {word:?}"),
                    }
                }
                let v = verdict(&Slot {
                    color: Color::Green,
                    role,
                    health,
                    version: Some(&version),
                    pending,
                    crash_loop,
                    missed_deadline: missed,
                    last_failure: &failure,
                    last_exit: exit.as_deref(),
                });
                out.push_str(&format!("> {v:?}\n"));
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("check", 1, run);
    }
}
