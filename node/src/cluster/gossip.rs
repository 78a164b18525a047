//! This node's handle on the gossip state (chitchat): what it reads of every node's keys and what
//! it publishes of its own.
//!
//! ## Guarantees
//! - Before the daemon attaches chitchat, reads are empty and writes are dropped (a node that is
//!   still starting has nothing to say and nobody to say it to).
//! - [`Gossip::values`] marks a node generation live only while the failure detector holds it
//!   live and it is the newest generation of that node, so a restarted node's old state never
//!   counts as live.
//!
//! ## Non-goals
//! Interpreting keys (that is [`halley_proto::gossip`] and the layers that own each key).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use chitchat::{Chitchat, ChitchatId};
use halley_proto::NodeName;
use halley_proto::gossip::{
    self, KEY_CA_HOLDER, KEY_DRAINING, KEY_LEFT, KEY_ROLE, KEY_STARTED_MS, KEY_VERSION,
};

use crate::engine::membership::{Liveness, Observation};

/// The gossip state, once running.
#[derive(Default)]
pub struct Gossip {
    chitchat: OnceLock<Arc<tokio::sync::Mutex<Chitchat>>>,
}

impl Gossip {
    /// Connects to chitchat once it runs.
    pub fn attach(&self, chitchat: Arc<tokio::sync::Mutex<Chitchat>>) {
        let _ = self.chitchat.set(chitchat);
    }

    /// Whether chitchat runs yet.
    pub fn is_running(&self) -> bool {
        self.chitchat.get().is_some()
    }

    /// Values of gossip keys starting with `prefix`, from every node and generation:
    /// `(node, live, key, value)`, where `live` says the failure detector holds that node
    /// generation alive (a restarted node's old generation is not).
    pub async fn values(&self, prefix: &str) -> Vec<(NodeName, bool, String, String)> {
        let Some(chitchat) = self.chitchat.get() else {
            return Vec::new();
        };
        let chitchat = chitchat.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        // A restarted node's new generation supersedes the old one at once, before the failure
        // detector declares the old one dead.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for id in chitchat.node_states().keys() {
            let g = newest.entry(&*id.node_id).or_default();
            *g = (*g).max(id.generation_id);
        }
        let mut out = Vec::new();
        for (id, state) in chitchat.node_states() {
            let Ok(node) = NodeName::parse(&id.node_id) else {
                continue;
            };
            let is_live = live.contains(id) && newest.get(&*id.node_id) == Some(&id.generation_id);
            for (k, v) in state.iter_prefix(prefix) {
                out.push((node.clone(), is_live, k.to_owned(), v.value.clone()));
            }
        }
        out
    }

    /// Sets one of this node's keys.
    pub async fn publish(&self, key: String, value: String) {
        self.publish_all(vec![(key, value)]).await;
    }

    /// Sets several of this node's keys under one lock.
    pub async fn publish_all(&self, pairs: Vec<(String, String)>) {
        self.publish_all_then(pairs, Vec::new).await;
    }

    /// Like [`Gossip::publish_all`], then the keys `late` gives, read while the lock is held: a
    /// value others change concurrently (the draining flag) is then never overwritten by an
    /// older reading of it.
    pub async fn publish_all_then(
        &self,
        pairs: Vec<(String, String)>,
        late: impl FnOnce() -> Vec<(String, String)>,
    ) {
        self.replace_then(None, pairs, late).await;
    }

    /// Like [`Gossip::publish_all_then`], and under the same lock deletes this node's keys under
    /// `prefix` that `pairs` does not set: a service removed from this node stops being
    /// announced, instead of its last summary lingering as healthy.
    pub async fn replace_then(
        &self,
        prefix: Option<&str>,
        pairs: Vec<(String, String)>,
        late: impl FnOnce() -> Vec<(String, String)>,
    ) {
        let Some(chitchat) = self.chitchat.get() else {
            return;
        };
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        if let Some(prefix) = prefix {
            let gone: Vec<String> = state
                .iter_prefix(prefix)
                .map(|(k, _)| k.to_owned())
                .filter(|k| !pairs.iter().any(|(key, _)| key == k))
                .collect();
            for key in gone {
                state.delete(&key);
            }
        }
        for (key, value) in pairs.into_iter().chain(late()) {
            state.set(key, value);
        }
    }

    /// What every node's state says now, as observations for the membership view.
    pub async fn observations(&self) -> Option<Vec<Observation>> {
        let chitchat = self.chitchat.get()?.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let dead: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
        Some(
            chitchat
                .node_states()
                .iter()
                .filter_map(|(id, state)| {
                    let name = NodeName::parse(&id.node_id).ok()?;
                    let liveness = if live.contains(id) {
                        Liveness::Live
                    } else if dead.contains(id) {
                        Liveness::Dead
                    } else {
                        Liveness::Unknown
                    };
                    Some(Observation {
                        name,
                        generation: id.generation_id,
                        addr: id.gossip_advertise_addr,
                        heartbeat: u64::from(state.heartbeat()),
                        liveness,
                        version: state.get(KEY_VERSION).unwrap_or("?").to_owned(),
                        // What a node says of itself: shown, never trusted (each request is
                        // authorised by the role in the caller's certificate).
                        role: state
                            .get(KEY_ROLE)
                            .and_then(|v| halley_proto::Role::parse(v).ok())
                            .map_or("?", |r| r.as_str())
                            .to_owned(),
                        draining: gossip::parse_flag(KEY_DRAINING, state.get(KEY_DRAINING))
                            .unwrap_or(false),
                        left: gossip::parse_flag(KEY_LEFT, state.get(KEY_LEFT)).unwrap_or(false),
                        started_ms: state
                            .get(KEY_STARTED_MS)
                            .and_then(|v| gossip::parse_millis(KEY_STARTED_MS, v).ok()),
                        services: state
                            .iter_prefix(gossip::SERVICE_KEY_PREFIX)
                            .map(|(k, v)| {
                                let name = k.trim_start_matches(gossip::SERVICE_KEY_PREFIX);
                                (name.to_owned(), v.value.clone())
                            })
                            .collect(),
                    })
                })
                .collect(),
        )
    }

    /// The name of the node that says it holds the CA key.
    pub async fn ca_holder(&self) -> Option<String> {
        self.ca_holders().await.into_iter().next()
    }

    /// Every node that gossips that it holds the CA key (a claim: check what they sign).
    pub async fn ca_holders(&self) -> Vec<String> {
        let Some(chitchat) = self.chitchat.get() else {
            return Vec::new();
        };
        let chitchat = chitchat.lock().await;
        chitchat
            .node_states()
            .iter()
            .filter(|(_, s)| s.get(KEY_CA_HOLDER) == Some("true"))
            .map(|(id, _)| id.node_id.to_string())
            .collect()
    }
}
