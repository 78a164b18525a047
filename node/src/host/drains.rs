//! This node's drain, shared by its entry points (which answer `GET /.halley/ready` with 503
//! while it is set), its services' hosts and the daemon: [`engine::drain`](crate::engine::drain)
//! decides who holds it; this keeps that state behind a lock and mirrors the result in the flag
//! the proxy reads without locking.
//!
//! ## Guarantees
//! - The flag is updated under the lock by every change, so it never lags a hold or release.
//! - Expired holds end only when [`NodeDrain::expire`] runs (the daemon's refresh tick), so a
//!   dead coordinator's hold outlives its `ttl` by at most one tick.
//!
//! ## Non-goals
//! Nothing here is kept on disk: the daemon saves the operator's drain (`drain.rec`) and sets
//! it again at its start; rollouts' holds end with the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use halley_proto::disk::FenceRecord;
use halley_proto::spec::ServiceName;
use tracing::{info, warn};

use crate::clock::mono_ms;
use crate::engine::drain::Drains;

/// This node's drain and its holders.
#[derive(Debug, Default)]
pub struct NodeDrain {
    flag: Arc<AtomicBool>,
    drains: Mutex<Drains>,
}

impl NodeDrain {
    /// The flag the entry points read.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// Whether the node is drained now.
    pub fn draining(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Who holds the node drained.
    pub fn holders(&self) -> Vec<String> {
        self.with(|d| d.holders())
    }

    /// The operator's `drain` / `undrain`.
    pub fn set_manual(&self, on: bool) {
        self.with(|d| d.set_manual(on));
        info!(draining = self.draining(), holders = ?self.holders(), "operator {}", if on { "drained this node" } else { "undrained this node" });
    }

    /// A rollout of `service` with `token` holds the node (false: a newer rollout holds it).
    pub fn hold(&self, service: &ServiceName, token: FenceRecord, ttl_ms: u64) -> bool {
        let held = self.with(|d| d.hold(service, token, mono_ms(), ttl_ms));
        info!(%service, held, holders = ?self.holders(), "rollout drain hold");
        held
    }

    /// Ends `service`'s hold if `token` is not below it.
    pub fn release(&self, service: &ServiceName, token: &FenceRecord) -> bool {
        let released = self.with(|d| d.release(service, token));
        info!(%service, released, draining = self.draining(), "rollout drain release");
        released
    }

    /// The host finished an orphaned deploy of `service`, having obeyed up to `epoch`.
    pub fn release_orphan(&self, service: &ServiceName, epoch: u64) {
        self.with(|d| d.release_orphan(service, epoch));
        info!(%service, draining = self.draining(), "orphaned deploy finished; its drain hold ends");
    }

    /// The host obeyed a step of `service` with `token`.
    pub fn stepped(&self, service: &ServiceName, token: &FenceRecord) {
        self.with(|d| d.stepped(service, token, mono_ms()));
    }

    /// Ends the holds whose coordinators went silent for their `ttl`.
    pub fn expire(&self) {
        let gone = self.with(|d| d.expire(mono_ms()));
        for service in gone {
            warn!(%service, "a rollout's drain hold expired with no coordinator in touch; it no longer holds this node drained");
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Drains) -> T) -> T {
        // A panic while holding the lock cannot leave `Drains` half-changed (every method
        // finishes its one map operation), so a poisoned lock is still usable.
        let mut d = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut d);
        self.flag.store(d.draining(), Ordering::Relaxed);
        out
    }
}
