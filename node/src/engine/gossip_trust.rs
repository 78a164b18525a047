//! Which rollout claims in gossip a node acts on. Gossip carries what each node says; a rollout
//! state or history line moves hosts (convergence), blocks deploys (the lock) and is taken over
//! (resume), so a claim counts only when it is its coordinator's own word.
//!
//! ## Guarantees
//! - A rollout state counts only from the key space of the node it names as coordinator: a node
//!   cannot publish a rollout in another's name.
//! - Nothing published by a node whose certificate (seen on a mesh connection) says it is not an
//!   admin counts: workers coordinate nothing, so a rollout they publish is forged.
//!
//! ## Non-goals
//! A publisher this node never connected to is judged by name only (in a small cluster every
//! member connects to every other within a few gossip rounds). Deltas that one node relays
//! about another's keys are chitchat's, unsigned: a member that forges another node's deltas
//! is not caught here.

use halley_proto::{NodeName, Role};

/// Whether a rollout claim published by `publisher` (whose certificate showed `certified`, if
/// this node has seen it) about a rollout coordinated by `coordinator` counts.
pub fn counts(publisher: &NodeName, certified: Option<Role>, coordinator: &NodeName) -> bool {
    publisher == coordinator && certified.is_none_or(|r| r == Role::Admin)
}

/// Whether anything `publisher` says about rollouts (history lines included) counts.
pub fn may_speak(certified: Option<Role>) -> bool {
    certified.is_none_or(|r| r == Role::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_admins_own_rollouts_count() {
        let (n1, n2) = (
            NodeName::parse("n1").unwrap(),
            NodeName::parse("n2").unwrap(),
        );
        assert!(counts(&n1, Some(Role::Admin), &n1));
        assert!(counts(&n1, None, &n1), "not yet connected: judged by name");
        assert!(!counts(&n2, Some(Role::Admin), &n1), "in another's name");
        assert!(
            !counts(&n2, Some(Role::Worker), &n2),
            "a worker coordinates nothing"
        );
        assert!(!may_speak(Some(Role::Worker)) && may_speak(Some(Role::Admin)));
    }
}
