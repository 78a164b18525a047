//! Fencing: which coordinator's steps a host obeys for a service. A token is (epoch,
//! coordinator name), ordered by epoch, then name; a host obeys a token not below the highest it
//! obeyed, and remembers a higher one before it carries the step out.
//!
//! ## Guarantees
//! - Two coordinators never share a token (names are unique in a cluster), so a host never
//!   obeys two coordinators at one epoch once either is below the other: the lower one is
//!   refused from the first step the higher one sent.
//! - A token without a coordinator (a data dir from before fencing had owners) orders below
//!   every named token of its epoch.
//! - A token more than [`MAX_EPOCH_STEP`] above the one held is refused: coordinators take one
//!   above the highest epoch they have seen, so only a hostile or broken caller jumps that far,
//!   and accepting it would let one request push a service's epoch to where `+1` overflows.

/// How far above the held epoch a step's may be.
pub const MAX_EPOCH_STEP: u64 = 1 << 32;

use halley_proto::disk::FenceRecord;

/// What a host does with a step carrying `token` when it has obeyed `held`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Obey; the token is the one held already.
    Same,
    /// Obey, after saving the token: it is the new highest.
    Raise(FenceRecord),
    /// Refuse, saying why.
    Stale(String),
    /// Refuse: the epoch jumps further above the held one than any coordinator's would.
    TooFar(String),
}

/// Decides a step's token against the highest one held.
pub fn admit(held: &FenceRecord, token: &FenceRecord, service: &str) -> Admit {
    if token < held {
        return Admit::Stale(format!(
            "step refused: it carries {}, but service {service} has obeyed {}; a newer rollout owns it",
            show(token),
            show(held)
        ));
    }
    if token.epoch > held.epoch.saturating_add(MAX_EPOCH_STEP) {
        return Admit::TooFar(format!(
            "step refused: epoch {} is more than {MAX_EPOCH_STEP} above epoch {} that service {service} holds; a coordinator takes one above the highest epoch it has seen, so this caller is broken or hostile",
            token.epoch, held.epoch
        ));
    }
    if token > held {
        Admit::Raise(token.clone())
    } else {
        Admit::Same
    }
}

fn show(f: &FenceRecord) -> String {
    match &f.coordinator {
        Some(c) => format!("epoch {} of {c}", f.epoch),
        None => format!("epoch {}", f.epoch),
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/fence/*.txt`. Commands: `held E [NODE]` (the
    //! token the host holds), `step E NODE` (prints the decision and keeps a raised token).
    use halley_proto::NodeName;

    use super::*;

    fn token(words: &[&str]) -> FenceRecord {
        FenceRecord {
            epoch: words[0].parse().unwrap(),
            coordinator: words.get(1).map(|n| NodeName::parse(n).unwrap()),
        }
    }

    fn run(script: &str) -> String {
        let mut held = FenceRecord::default();
        crate::scenario::replay(script, |words, out| match words {
            ["held", rest @ ..] => held = token(rest),
            ["step", rest @ ..] => match admit(&held, &token(rest), "web") {
                Admit::Same => out.push_str("> obey\n"),
                Admit::Raise(t) => {
                    out.push_str("> obey, holding it from now on\n");
                    held = t;
                }
                Admit::Stale(why) | Admit::TooFar(why) => {
                    out.push_str(&format!("> refuse: {why}\n"))
                }
            },
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("fence", 1, run);
    }
}
