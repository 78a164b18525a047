//! What every rollout task of this node shares: the [`Coordinator`] handle (the cluster client,
//! this node's services and data dir, and the rollouts it drives), and the timeouts of the
//! requests a rollout sends.
//!
//! ## Guarantees
//! - Coordinator code reaches hosts, itself included, only through the cluster client, the same
//!   way for every host.
//! - `rollouts` holds this node's fullest copy of each rollout it drove since it started (with
//!   host notes); `active` names the services whose driver runs in this process now, and
//!   `starting` those a rollout is being started for, so two starts on one node never overlap.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halley_proto::disk::RolloutJournal;
use halley_proto::message::ErrorReply;
use halley_proto::rollout::RolloutState;
use halley_proto::spec::ServiceName;

use tokio::sync::mpsc;

use crate::cluster::client::ClusterClient;
use crate::engine::rollout::Event;
use crate::host::services::Services;
use crate::store::datadir::DataDir;

/// A request that is answered at once (status, drain flag, a flip).
pub(crate) const SHORT: Duration = Duration::from_secs(10);
/// A request that may take long (prepare, revert, commit).
pub(crate) const LONG: Duration = Duration::from_secs(600);

/// A result whose error goes back to the CLI as is.
pub(crate) type Reply<T> = Result<T, ErrorReply>;

/// The rollout side of this node.
pub struct Coordinator {
    /// The cluster: members, gossip, calls to hosts.
    pub cluster: Arc<ClusterClient>,
    /// This node's own services (for its artifact store and its own status).
    pub services: Arc<Services>,
    /// The data dir (journals, history).
    pub data_dir: DataDir,
    /// Rollouts this node coordinates (or coordinated since it started), by service.
    pub(crate) rollouts: Mutex<HashMap<ServiceName, RolloutState>>,
    /// Services whose rollout driver runs in this node now, with the way to its event queue.
    pub(crate) active: Mutex<HashMap<ServiceName, mpsc::UnboundedSender<Event>>>,
    /// Journals that could not be written to disk, kept so that `deploy --resume` on this node
    /// still finds the spec and artifact once the disk is fixed.
    unsaved: Mutex<HashMap<ServiceName, RolloutJournal>>,
    /// Services a rollout is being started for here (from the lock check to the driver's
    /// start, across snapshots and migrations), so two starts on one node never overlap.
    starting: Mutex<HashSet<ServiceName>>,
}

/// A service held for a rollout this node is starting; let go when dropped (the driver, once
/// spawned, holds the service through `active`).
pub(crate) struct Starting<'a> {
    node: &'a Coordinator,
    service: ServiceName,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.node.starting.lock() {
            set.remove(&self.service);
        }
    }
}

impl Coordinator {
    /// Services whose rollout this node is starting or driving now.
    pub fn driving(&self) -> Vec<ServiceName> {
        let mut names: Vec<ServiceName> = self
            .active
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        if let Ok(starting) = self.starting.lock() {
            names.extend(starting.iter().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    /// The coordinator of this node.
    pub fn new(cluster: Arc<ClusterClient>, services: Arc<Services>, data_dir: DataDir) -> Self {
        Self {
            cluster,
            services,
            data_dir,
            rollouts: Mutex::default(),
            active: Mutex::default(),
            unsaved: Mutex::default(),
            starting: Mutex::default(),
        }
    }

    /// Holds `service` for a rollout starting here; refused while another one starts or runs
    /// on this node (the lock in gossip cannot see those yet).
    pub(crate) fn begin(&self, service: &ServiceName) -> Reply<Starting<'_>> {
        let driving = self
            .active
            .lock()
            .map(|m| m.contains_key(service))
            .unwrap_or(false);
        let mut set = self
            .starting
            .lock()
            .map_err(|_| crate::error::internal("the rollout start lock is poisoned"))?;
        if driving || !set.insert(service.clone()) {
            return Err(ErrorReply {
                kind: halley_proto::message::ErrorKind::Conflict,
                message: format!(
                    "a rollout of {service} is already starting or running on this node; wait for it ('halley-node rollout status {service}')"
                ),
            });
        }
        Ok(Starting {
            node: self,
            service: service.clone(),
        })
    }

    /// Hands `event` to this node's driver of `service`; `false` when none runs here.
    pub(crate) fn tell_driver(&self, service: &ServiceName, event: Event) -> bool {
        self.active
            .lock()
            .ok()
            .and_then(|m| m.get(service).map(|tx| tx.send(event).is_ok()))
            .unwrap_or(false)
    }

    /// Keeps a journal that could not be written.
    pub(crate) fn keep_unsaved(&self, journal: &RolloutJournal) {
        if let Ok(mut map) = self.unsaved.lock() {
            map.insert(journal.state.service.clone(), journal.clone());
        }
    }

    /// The journal of `service` that could not be written, if this process kept one.
    pub(crate) fn unsaved(&self, service: &ServiceName) -> Option<RolloutJournal> {
        self.unsaved.lock().ok()?.get(service).cloned()
    }

    /// This node's copy of the rollout of `service` it drove last, if any.
    pub fn local_state(&self, service: &ServiceName) -> Option<RolloutState> {
        self.rollouts.lock().ok()?.get(service).cloned()
    }

    /// Keeps `state` as this node's copy without publishing it.
    pub(crate) fn remember(&self, state: &RolloutState) {
        if let Ok(mut map) = self.rollouts.lock() {
            map.insert(state.service.clone(), state.clone());
        }
    }

    /// Keeps `state` as this node's copy and publishes it in gossip (`rollout:NAME`).
    pub(crate) async fn publish(&self, state: &RolloutState) {
        self.remember(state);
        self.cluster
            .gossip
            .publish(
                format!(
                    "{}{}",
                    halley_proto::gossip::ROLLOUT_KEY_PREFIX,
                    state.service
                ),
                state.to_gossip(),
            )
            .await;
    }
}
