//! Recording a finished rollout: this node's history book, and its newest lines in gossip
//! (`hist:NAME`) so that `history` on any node shows every coordinator's rollouts.
//!
//! ## Guarantees
//! - The newest 10 entries of this node's book are published after every change.
//! - A book that cannot be saved is logged; the entry is still published.

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
