//! Removing nodes: `halley-node remove NODE` on an admin, and every node's side of it.
//!
//! ## Guarantees
//! - A removed name is refused by this node's mesh in both directions from the moment this node
//!   learns it ([`crate::mesh::endpoint::Mesh::revoke`]), shows as `removed` in `status`, and
//!   cannot join again; the list is saved (`revoked.rec`) before it is acted on, so it holds
//!   across restarts.
//! - Removals travel in gossip (`removed`) and count only from a node whose certificate, seen
//!   on a connection, says admin: a worker cannot cut anyone off.
//! - The removed node is told first when it is reachable: it records that it was removed
//!   (`removed.rec`), stops, and its data dir refuses to `run` again. One that learns it from
//!   an admin's gossip does the same.
//!
//! ## Non-goals
//! Telling a node removed while it was down: it finds every member refusing it, and its own
//! data dir learns nothing until an operator looks.

use std::collections::BTreeSet;
use std::time::Duration;

use halley_proto::disk::{RemovalRecord, RevokedBook};
use halley_proto::gossip::KEY_REMOVED;
use halley_proto::message::{AdminResponse, ErrorKind, ErrorReply, PeerRequest};
use halley_proto::{NodeName, Role};
use tracing::{info, warn};

use crate::clock::wall_ms;
use crate::daemon::node::Node;
use crate::error::{Error, Result, bad_request, internal};
use crate::store::datadir::DataDir;

/// This node's list of removed names.
pub(crate) const REVOKED: &str = "revoked.rec";
/// Present once this node was removed.
pub(crate) const REMOVED: &str = "removed.rec";
/// How long the removed node has to hear that it was removed.
const TELL: Duration = Duration::from_secs(3);

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

/// The removed names this node knows (empty when it knows none or cannot read them).
pub(crate) fn load(data_dir: &DataDir) -> BTreeSet<NodeName> {
    data_dir
        .read_record_or_default::<RevokedBook>(REVOKED)
        .map(|b| b.names.into_iter().collect())
        .unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the list of removed nodes; refusing none until gossip brings it");
            BTreeSet::new()
        })
}

/// The operator's `remove NAME` on this node (an admin): tells the node if it can, then
/// revokes it here and in gossip.
pub(crate) async fn remove(
    node: &Node,
    name: NodeName,
) -> std::result::Result<AdminResponse, ErrorReply> {
    if &name == node.name() {
        return Err(bad_request(
            "a node cannot remove itself; run 'halley-node remove' for it on another admin node, or 'halley-node leave' to stop it",
        ));
    }
    let mut removed = known(node);
    if removed.contains(&name) {
        return Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("node {name} was removed already"),
        });
    }
    if !node.cluster.members().iter().any(|m| m.name == name) {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!(
                "no member of this cluster is named {name}; 'halley-node status' lists them"
            ),
        });
    }
    let told = node
        .cluster
        .peer(&name, PeerRequest::Removed, TELL)
        .await
        .is_ok();
    removed.insert(name.clone());
    adopt(node, removed)
        .await
        .map_err(|e| internal(&format!("cannot save the removal: {e}")))?;
    info!(node = %name, told, "removed a node from the cluster");
    Ok(AdminResponse::Done)
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

/// Takes in the removals admins gossip (each refresh): new names are saved, then refused; an
/// admin republishes the whole list, so it outlives the admin that made it.
pub(crate) async fn absorb(node: &Node) {
    let mut removed = known(node);
    let before = removed.len();
    let mut by_admin: Option<NodeName> = None;
    for (who, _, key, value) in node.cluster.gossip.values(KEY_REMOVED).await {
        let role = node.cluster.mesh().and_then(|m| m.certified_role(&who));
        if key != KEY_REMOVED || role != Some(Role::Admin) {
            continue;
        }
        for name in value.split(',').filter_map(|n| NodeName::parse(n).ok()) {
            if &name == node.name() {
                by_admin = Some(who.clone());
            } else {
                removed.insert(name);
            }
        }
    }
    if let Some(by) = by_admin {
        if let Err(e) = record_removal(node, &by) {
            warn!(error = %e, "cannot record this node's removal");
        }
        return;
    }
    if removed.len() != before
        && let Err(e) = adopt(node, removed).await
    {
        warn!(error = %e, "cannot save the list of removed nodes");
    }
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
