//! Removing nodes: `halley-node remove NODE` on an admin, and every node's side of it.
//!
//! ## Guarantees
//! - A removed name is refused by this node's mesh in both directions from the moment this node
//!   learns it ([`crate::mesh::endpoint::Mesh::revoke`], which only ever adds names), shows as
//!   `removed` in `status`, and cannot join again; the list is saved (`revoked.rec`) before it is
//!   acted on, so it holds across restarts, and a start refuses a list it cannot read.
//! - Gossip only says where to look: a `removed` list counts once the admin that gossips it
//!   confirms it, asked over a connection whose certificate names that admin and says admin
//!   (`PeerRequest::RemovedList`). A worker forging an admin's key (chitchat relays unsigned
//!   deltas) cannot cut anyone off.
//! - The removed node is told first when it is reachable: it records that it was removed
//!   (`removed.rec`), its daemon stops (its service processes are left running, for the
//!   operator to stop), and its data dir refuses to `run` again. One that hears it confirmed by
//!   an admin does the same, and so does one removed while it was down: the first admin that
//!   closes its connection as "removed" (close code 5, from a certificate that says admin;
//!   [`crate::mesh::endpoint::Mesh::told_removed`]) tells it.
//! - Changes to the list are made one at a time ([`Node::removals`]), so none is lost.
//!
//! ## Non-goals
//! A node whose certificate expired while it was down is refused in the TLS handshake, before
//! anyone can tell it why: it keeps trying until an operator looks (`status` shows the expiry).
//! A removed node that only reaches workers keeps trying too, since a worker's word does not
//! count. Removing an admin does not take back the CA key it holds: a thief with it can sign
//! certificates for other names (make a new cluster).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use halley_proto::disk::{RemovalRecord, RevokedBook};
use halley_proto::gossip::KEY_REMOVED;
use halley_proto::message::{AdminResponse, ErrorKind, ErrorReply, PeerReply, PeerRequest};
use halley_proto::{NodeName, Role};
use tracing::{info, warn};

use crate::clock::wall_ms;
use crate::daemon::node::Node;
use crate::engine::gossip_trust;
use crate::error::{Error, Result, bad_request, internal};
use crate::store::datadir::DataDir;

/// This node's list of removed names.
pub(crate) const REVOKED: &str = "revoked.rec";
/// Present once this node was removed.
pub(crate) const REMOVED: &str = "removed.rec";
/// How long the removed node, or an admin asked to confirm, has to answer.
const ASK: Duration = Duration::from_secs(3);
/// How often gossip is looked at for removals.
const WATCH: Duration = Duration::from_secs(1);

/// Refuses to run a data dir whose node was removed from its cluster.
pub(crate) fn refuse_if_removed(data_dir: &DataDir) -> Result<()> {
    if !data_dir.file(REMOVED).exists() {
        return Ok(());
    }
    let record: RemovalRecord = data_dir.read_record(REMOVED)?;
    Err(Error::Invalid(format!(
        "this node was removed from its cluster by {} (learned at unix ms {}); every member refuses its certificate, so it cannot run again. To bring this machine back, join with a new token into a new data dir (halley-node join TOKEN --name NEW-NAME --data-dir NEW-DIR)",
        record.by, record.at_ms
    )))
}

/// The removed names this node has saved (none when it has no list).
pub(crate) fn load(data_dir: &DataDir) -> Result<BTreeSet<NodeName>> {
    let book: RevokedBook = data_dir.read_record_or_default(REVOKED).map_err(|e| {
        Error::DataDir(format!(
            "{e}; it lists the nodes removed from the cluster, so this node will not run without it: restore it from a backup, or copy another admin's revoked.rec"
        ))
    })?;
    Ok(book.names.into_iter().collect())
}

/// The operator's `remove NAME` on this node (an admin): tells the node if it can, then
/// revokes it here and in gossip.
pub(crate) async fn remove(
    node: &Node,
    name: NodeName,
    force: bool,
) -> std::result::Result<AdminResponse, ErrorReply> {
    if &name == node.name() {
        return Err(bad_request(
            "a node cannot remove itself; run 'halley-node remove' for it on another admin node, or 'halley-node leave' to stop it",
        ));
    }
    let _one_at_a_time = node.removals.lock().await;
    let mut removed = known(node);
    if removed.contains(&name) {
        return Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("node {name} was removed already"),
        });
    }
    if !force && !node.cluster.members().iter().any(|m| m.name == name) {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!(
                "this node knows no member named {name} ('halley-node status' lists them; one dead for over an hour is forgotten); check the name, or give --force to remove it anyway (the name can then never join)"
            ),
        });
    }
    let held_ca = node
        .cluster
        .gossip
        .ca_holders()
        .await
        .iter()
        .any(|h| h == name.as_str());
    let told = node
        .cluster
        .peer(&name, PeerRequest::Removed, ASK)
        .await
        .is_ok();
    removed.insert(name.clone());
    adopt(node, removed)
        .await
        .map_err(|e| internal(&format!("cannot save the removal: {e}")))?;
    info!(node = %name, told, held_ca, "removed a node from the cluster");
    Ok(AdminResponse::Removed { told, held_ca })
}

/// A peer's `RemovedList`: the names this node refuses.
pub(crate) fn list(node: &Node) -> PeerReply {
    PeerReply::Removed(known(node).into_iter().collect())
}

/// The peer's `Removed`: an admin removed this node. Records it and stops the daemon.
pub(crate) fn removed_here(node: &Node, by: &NodeName) -> std::result::Result<(), ErrorReply> {
    if by == node.name() {
        return Err(bad_request("a node cannot remove itself"));
    }
    record_removal(node, by).map_err(|e| internal(&format!("cannot record the removal: {e}")))
}

fn record_removal(node: &Node, by: &NodeName) -> Result<()> {
    warn!(%by, "this node was removed from the cluster; stopping for good");
    node.data_dir().write_record(
        REMOVED,
        &RemovalRecord {
            by: by.clone(),
            at_ms: wall_ms(),
        },
    )?;
    node.request_leave();
    Ok(())
}

/// Watches gossip for removals for as long as the node runs: a `removed` list from a node whose
/// certificate said admin, with a name this node does not refuse yet (or its own), is checked
/// with that admin, and what it confirms is taken in.
pub(crate) async fn watch(node: Arc<Node>) {
    // What each admin's list said when it was last checked, so a forged one is asked about once.
    let mut checked: HashMap<NodeName, String> = HashMap::new();
    let mut rounds = 0u32;
    loop {
        tokio::time::sleep(WATCH).await;
        // Now and then every list is looked at afresh: a check that failed (an admin briefly
        // unreachable) is tried again.
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(30) {
            checked.clear();
        }
        if let Some(by) = node.cluster.mesh().and_then(|m| m.told_removed()) {
            if let Err(e) = record_removal(&node, &by) {
                warn!(admin = %by, error = %e, "cannot record this node's removal");
            }
            return;
        }
        for (who, _, key, value) in node.cluster.gossip.values(KEY_REMOVED).await {
            let role = node.cluster.mesh().and_then(|m| m.certified_role(&who));
            if key != KEY_REMOVED || role != Some(Role::Admin) || checked.get(&who) == Some(&value)
            {
                continue;
            }
            if gossip_trust::removal_news(&value, &known(&node), node.name())
                && let Err(e) = confirm(&node, &who).await
            {
                warn!(admin = %who, error = %e, "cannot confirm the nodes an admin gossips it removed; will ask again when its list changes");
            }
            checked.insert(who, value);
        }
    }
}

/// Asks `admin` for its list and takes it in.
async fn confirm(node: &Node, admin: &NodeName) -> Result<()> {
    let PeerReply::Removed(names) = node
        .cluster
        .peer(admin, PeerRequest::RemovedList, ASK)
        .await?
    else {
        return Err(Error::Protocol(format!(
            "{admin} answered removed-list with something else"
        )));
    };
    // The answer came over a connection whose certificate names `admin`; it must say admin.
    if node.cluster.mesh().and_then(|m| m.certified_role(admin)) != Some(Role::Admin) {
        return Err(Error::Protocol(format!("{admin} is not an admin")));
    }
    if names.contains(node.name()) {
        return record_removal(node, admin);
    }
    let _one_at_a_time = node.removals.lock().await;
    let mut removed = known(node);
    let before = removed.len();
    removed.extend(names);
    if removed.len() != before {
        adopt(node, removed).await?;
    }
    Ok(())
}

/// The removed names this node refuses now.
fn known(node: &Node) -> BTreeSet<NodeName> {
    node.cluster
        .mesh()
        .map(|m| m.revoked_names())
        .unwrap_or_default()
}

/// Saves `removed`, refuses it in the mesh and, on an admin, publishes it.
async fn adopt(node: &Node, removed: BTreeSet<NodeName>) -> Result<()> {
    node.data_dir().write_record(
        REVOKED,
        &RevokedBook {
            names: removed.iter().cloned().collect(),
        },
    )?;
    apply(node, &removed).await;
    Ok(())
}

/// Refuses `removed` in the mesh and, on an admin, publishes it (at start and on change).
pub(crate) async fn apply(node: &Node, removed: &BTreeSet<NodeName>) {
    if let Some(mesh) = node.cluster.mesh() {
        mesh.revoke(removed);
    }
    if node.record.role == Role::Admin && !removed.is_empty() {
        let list: Vec<&str> = removed.iter().map(NodeName::as_str).collect();
        node.cluster
            .gossip
            .publish(KEY_REMOVED.to_owned(), list.join(","))
            .await;
    }
}
