//! `forget NODE`: drops a dead, left or removed node from `status`, on this node and on every
//! live member, and keeps it out across restarts (`forgotten.rec`).
//!
//! ## Guarantees
//! - Only a node that this node sees dead, left or removed is forgotten, and a member that still
//!   sees that generation running refuses (and says so): a partition cannot make live nodes
//!   vanish from `status`.
//! - Forgetting hides one generation and the older ones; the same name started again (a newer
//!   generation) shows again. A removed node stays refused by the mesh: forgetting hides it
//!   from `status`, it does not take its removal back.
//!
//! ## Non-goals
//! A member that is down while a node is forgotten is not told; `forget` again once it is back.

use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::disk::ForgottenBook;
use halley_proto::message::{
    AdminResponse, ErrorKind, ErrorReply, MemberState, PeerReply, PeerRequest,
};
use tracing::{info, warn};

use crate::daemon::node::Node;
use crate::engine::membership::Unforgettable;
use crate::store::datadir::FORGOTTEN;

const ASK: Duration = Duration::from_secs(5);

/// Loads what earlier `forget`s dropped into the view.
pub fn load(node: &Node) {
    let book: ForgottenBook = node
        .data_dir()
        .read_record_or_default(FORGOTTEN)
        .unwrap_or_default();
    for (name, generation, heartbeat) in book.nodes {
        node.cluster.remember_forgotten(name, generation, heartbeat);
    }
}

/// The operator's `forget NODE`, on an admin.
pub async fn forget(node: &Node, name: &NodeName) -> Result<AdminResponse, ErrorReply> {
    let (generation, heartbeat) = node
        .cluster
        .forget(name)
        .map_err(|why| refusal(node.name(), name, why))?;
    save(node);
    info!(node = %name, generation, "forgot a node");
    let peers: Vec<NodeName> = node
        .cluster
        .members()
        .into_iter()
        .filter(|m| &m.name != node.name())
        .filter(|m| {
            matches!(
                m.state,
                MemberState::Alive | MemberState::Suspect | MemberState::Draining
            )
        })
        .map(|m| m.name)
        .collect();
    let (mut told, mut refused) = (Vec::new(), Vec::new());
    for peer in peers {
        let request = PeerRequest::Forget {
            node: name.clone(),
            generation,
            heartbeat,
        };
        match node.cluster.peer(&peer, request, ASK).await {
            Ok(_) => told.push(peer),
            Err(e) => refused.push((peer, e.to_string())),
        }
    }
    Ok(AdminResponse::Forgotten {
        generation,
        told,
        refused,
    })
}

/// An admin's word to forget `name` at `generation` up to `heartbeat`.
pub fn forget_here(
    node: &Node,
    name: &NodeName,
    generation: u64,
    heartbeat: u64,
) -> Result<PeerReply, ErrorReply> {
    match node.cluster.forget(name) {
        Ok(_) | Err(Unforgettable::Unknown) => {}
        Err(why) => return Err(refusal(node.name(), name, why)),
    }
    node.cluster
        .remember_forgotten(name.clone(), generation, heartbeat);
    save(node);
    Ok(PeerReply::Done)
}

fn save(node: &Node) {
    let book = ForgottenBook {
        nodes: node.cluster.forgotten(),
    };
    if let Err(e) = node.data_dir().write_record(FORGOTTEN, &book) {
        warn!(error = %e, "cannot save the forgotten nodes; they show again after a restart");
    }
}

fn refusal(here: &NodeName, name: &NodeName, why: Unforgettable) -> ErrorReply {
    let (kind, message) = match why {
        Unforgettable::Unknown => (
            ErrorKind::NotFound,
            format!(
                "no member is named {name}: `halley-node status` lists the members {here} knows (a node dead for over an hour is dropped by itself)"
            ),
        ),
        Unforgettable::Itself => (
            ErrorKind::BadRequest,
            format!(
                "{name} is this node; run `halley-node forget {name}` on another admin once it has left"
            ),
        ),
        Unforgettable::Running(state) => (
            ErrorKind::Conflict,
            format!(
                "{name} is {} as {here} sees it: only a dead, left or removed node can be forgotten; stop it with `halley-node leave` on {name}, or `halley-node remove {name}`",
                state.as_str()
            ),
        ),
    };
    ErrorReply { kind, message }
}
