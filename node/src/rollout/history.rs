//! Recording a finished rollout: this node's history book, and its newest lines in gossip
//! (`hist:NAME`) so that `history` on any node shows every coordinator's rollouts.
//!
//! ## Guarantees
//! - The newest 10 entries of this node's book are published after every change, and again
//!   when the node starts (gossip forgets what a node published before it restarted), with the
//!   last state of each finished rollout it journaled. An unfinished one is not published by
//!   its restarted coordinator: published by a live node it would look driven, and nobody
//!   could take it over. It is kept as this node's own copy (`deploy --resume` here finds it;
//!   other nodes find it in what gossip still holds of the dead coordinator).
//! - A book that cannot be saved is logged; the entry is still published.

use halley_proto::disk::HistoryBook;
use halley_proto::gossip::HISTORY_KEY_PREFIX;
use halley_proto::rollout::HistoryEntry;
use halley_proto::spec::ServiceName;
use tracing::warn;

use crate::rollout::context::Coordinator;
use crate::store::journal;

/// How many history entries a node publishes per service.
const PUBLISHED: usize = 10;

/// Appends a history entry to this node's book and publishes its newest lines.
pub(crate) async fn record(node: &Coordinator, service: &ServiceName, entry: HistoryEntry) {
    let (book, saved) = journal::append_history(&node.data_dir, service, entry);
    if let Err(e) = saved {
        warn!(service = %service, error = %e, "cannot write rollout history");
    }
    publish(node, service, &book).await;
}

/// Publishes this node's history books and its journals' last rollout states again (at start).
pub async fn republish(node: &Coordinator) {
    for service in journal::recorded_services(&node.data_dir) {
        let book = journal::read_history(&node.data_dir, &service);
        if !book.entries.is_empty() {
            publish(node, &service, &book).await;
        }
        match journal::read_journal(&node.data_dir, &service) {
            Ok(j) if j.state.phase.finished() => node.publish(&j.state).await,
            // Kept as this node's own copy, so `deploy --resume` here finds it.
            Ok(j) => node.remember(&j.state),
            Err(_) => {}
        }
    }
}

async fn publish(node: &Coordinator, service: &ServiceName, book: &HistoryBook) {
    let skip = book.entries.len().saturating_sub(PUBLISHED);
    let lines: Vec<String> = book
        .entries
        .iter()
        .skip(skip)
        .map(HistoryEntry::to_line)
        .collect();
    node.cluster
        .gossip
        .publish(format!("{HISTORY_KEY_PREFIX}{service}"), lines.join("\n"))
        .await;
}
