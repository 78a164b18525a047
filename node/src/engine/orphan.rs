//! The orphan rule: a host whose deploy is unfinished (next slot started, or flipped but not
//! committed) and that no coordinator has reached for `orphan_timeout` reverts by itself to its
//! committed release, so a dead coordinator never leaves it half-deployed.
//!
//! ## Guarantees
//! - Nothing is reverted while a check runs (the check answers first) or while the deploy is
//!   finished.
//!
//! ## Known bugs (recorded in `scenarios/orphan/`, fixed by the rollback-safety issue)
//! - Contact is per node, not per service: any peer request or step, for any service, counts.
//! - Contact and `now` are wall-clock times: a clock step forward reverts at once, and one back
//!   delays the revert.

/// What a host knows when it asks whether its deploy is orphaned.
#[derive(Debug, Clone, Copy)]
pub struct Orphan {
    /// The slot engine has an uncommitted deploy.
    pub uncommitted: bool,
    /// A check step is waiting for its answer.
    pub checking: bool,
    /// When a coordinator last reached the node (unix ms).
    pub last_contact_ms: u64,
    /// `orphan_timeout` of the service.
    pub timeout_ms: u64,
}

/// `Some(silent_ms)` when the deploy must be reverted now (`now` in unix ms).
pub fn revert_due(o: &Orphan, now: u64) -> Option<u64> {
    let silent = now.saturating_sub(o.last_contact_ms);
    (o.uncommitted && !o.checking && silent >= o.timeout_ms).then_some(silent)
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/orphan/*.txt`. Commands: `timeout MS`,
    //! `deploy uncommitted|committed`, `checking BOOL`, `contact MS` (a request from any
    //! coordinator, for any service), `at MS` (prints the decision).
    use super::*;

    fn run(script: &str) -> String {
        let mut o = Orphan {
            uncommitted: false,
            checking: false,
            last_contact_ms: 0,
            timeout_ms: 30_000,
        };
        crate::scenario::replay(script, |words, out| match words {
            ["timeout", ms] => o.timeout_ms = ms.parse().unwrap(),
            ["deploy", "uncommitted"] => o.uncommitted = true,
            ["deploy", "committed"] => o.uncommitted = false,
            ["checking", b] => o.checking = b.parse().unwrap(),
            ["contact", ms] => o.last_contact_ms = o.last_contact_ms.max(ms.parse().unwrap()),
            ["at", ms] => match revert_due(&o, ms.parse().unwrap()) {
                Some(silent) => out.push_str(&format!("> revert: silent for {silent} ms\n")),
                None => out.push_str("> keep\n"),
            },
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("orphan", 1, run);
    }
}
