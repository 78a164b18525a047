//! Which rollout claims in gossip a node acts on. Gossip carries what each node says; a rollout
//! state or history line moves hosts (convergence), blocks deploys (the lock) and is taken over
//! (resume), so a claim counts only when it is its coordinator's own word.
//!
//! ## Guarantees
//! - A rollout state counts only from the key space of the node it names as coordinator: a node
//!   cannot publish a rollout in another's name.
//! - Nothing published by a node whose certificate (seen on a mesh connection) says it is not an
//!   admin counts: workers coordinate nothing, so a rollout they publish is forged.
//! - A gossiped `removed` list is never acted on as such: [`removal_news`] only says whether it
//!   names someone to confirm with its admin directly.
//!
//! - [`may_speak_for`]: a node's gossiped state counts only from that node itself or from an
//!   admin relaying it (the mesh's gossip filter applies it to every message).
//!
//! ## Non-goals
//! A publisher this node never connected to is judged by name only (in a small cluster every
//! member connects to every other within a few gossip rounds).

use halley_proto::{NodeName, Role};

/// Whether a rollout claim published by `publisher` (whose certificate showed `certified`, if
/// this node has seen it) about a rollout coordinated by `coordinator` counts.
pub fn counts(publisher: &NodeName, certified: Option<Role>, coordinator: &NodeName) -> bool {
    publisher == coordinator && certified.is_none_or(|r| r == Role::Admin)
}

/// Whether gossip from `sender` (as its certificate names it) may carry the state of the node
/// `about`: a node speaks for itself; only an admin relays others (it holds the CA key, so it
/// could mint their certificates anyway).
pub fn may_speak_for(sender: &NodeName, role: Role, about: &str) -> bool {
    role == Role::Admin || sender.as_str() == about
}

/// Whether anything `publisher` says about rollouts (history lines included) counts.
pub fn may_speak(certified: Option<Role>) -> bool {
    certified.is_none_or(|r| r == Role::Admin)
}

/// Whether a `removed` list an admin gossips (`a,b,c`) says something this node must confirm
/// with that admin: a name it does not refuse yet, or its own.
pub fn removal_news(
    listed: &str,
    refused: &std::collections::BTreeSet<NodeName>,
    me: &NodeName,
) -> bool {
    listed
        .split(',')
        .filter_map(|n| NodeName::parse(n).ok())
        .any(|n| !refused.contains(&n) || &n == me)
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
        assert!(may_speak_for(&n2, Role::Worker, "n2"));
        assert!(
            !may_speak_for(&n2, Role::Worker, "n1"),
            "a worker relays nobody"
        );
        assert!(may_speak_for(&n1, Role::Admin, "n2"));
    }

    #[test]
    fn a_removal_list_is_news_when_it_names_someone_new_or_this_node() {
        let name = |n: &str| NodeName::parse(n).unwrap();
        let refused: std::collections::BTreeSet<NodeName> = [name("n3")].into();
        assert!(!removal_news("n3", &refused, &name("n1")));
        assert!(!removal_news("", &refused, &name("n1")));
        assert!(removal_news("n3,n4", &refused, &name("n1")));
        assert!(removal_news("n1", &refused, &name("n1")));
    }
}
