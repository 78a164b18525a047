//! The orphan rule: a host whose deploy is unfinished (next slot started, or flipped but not
//! committed) and that no coordinator has reached about that service for `orphan_timeout`
//! finishes by itself, so a dead coordinator never leaves it half-deployed: a deploy reverts to
//! the committed release; a rollback whose target already serves commits it (going back to the
//! release being rolled back would undo the rollback).
//!
//! ## Guarantees
//! - Nothing is decided while a step waits for its answer (a check or a drain: the
//!   coordinator is in touch) or while the deploy is finished.
//! - Contact is per service (a step, or a coordinator watching that service's signals), and
//!   every time is monotonic: a wall-clock step neither reverts early nor delays a revert.

/// What a host knows when it asks whether its deploy is orphaned.
#[derive(Debug, Clone, Copy)]
pub struct Orphan {
    /// The slot engine has an uncommitted deploy.
    pub uncommitted: bool,
    /// A step (check or drain) is waiting for its answer.
    pub checking: bool,
    /// The uncommitted deploy is a rollback, and its target is the release that serves.
    pub rollback_serving: bool,
    /// When a coordinator last reached the service (monotonic ms).
    pub last_contact_ms: u64,
    /// `orphan_timeout` of the service.
    pub timeout_ms: u64,
}

/// What the host does about its unfinished deploy now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (in touch, finished, or a check is answering).
    Keep,
    /// Revert to the committed release; silent for this long.
    Revert(u64),
    /// Commit the rollback target that serves; silent for this long.
    Commit(u64),
}

/// The decision at `now` (monotonic ms).
pub fn decide(o: &Orphan, now: u64) -> Decision {
    let silent = now.saturating_sub(o.last_contact_ms);
    if !o.uncommitted || o.checking || silent < o.timeout_ms {
        return Decision::Keep;
    }
    if o.rollback_serving {
        Decision::Commit(silent)
    } else {
        Decision::Revert(silent)
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/orphan/*.txt`. Commands: `timeout MS`,
    //! `deploy uncommitted|committed`, `checking BOOL`, `rollback serving|no` (the deploy is a
    //! rollback whose target serves), `contact MS` (a coordinator reached this service),
    //! `at MS` (prints the decision).
    use super::*;

    fn run(script: &str) -> String {
        let mut o = Orphan {
            uncommitted: false,
            checking: false,
            rollback_serving: false,
            last_contact_ms: 0,
            timeout_ms: 30_000,
        };
        crate::scenario::replay(script, |words, out| match words {
            ["timeout", ms] => o.timeout_ms = ms.parse().unwrap(),
            ["deploy", "uncommitted"] => o.uncommitted = true,
            ["deploy", "committed"] => o.uncommitted = false,
            ["checking", b] => o.checking = b.parse().unwrap(),
            ["rollback", what] => o.rollback_serving = *what == "serving",
            ["contact", ms] => o.last_contact_ms = o.last_contact_ms.max(ms.parse().unwrap()),
            ["at", ms] => match decide(&o, ms.parse().unwrap()) {
                Decision::Revert(silent) => {
                    out.push_str(&format!("> revert: silent for {silent} ms\n"))
                }
                Decision::Commit(silent) => out.push_str(&format!(
                    "> commit the rollback target: silent for {silent} ms\n"
                )),
                Decision::Keep => out.push_str("> keep\n"),
            },
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("orphan", 2, run);
    }
}
