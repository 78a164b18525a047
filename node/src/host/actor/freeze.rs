//! Freezing a service's host for an `upgrade`: the actor stops deciding (no probes, restarts,
//! rotations or record writes: the new daemon adopts the service from disk and does all that),
//! while its entry point keeps accepting and proxying until the new daemon serves.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use halley_proto::spec::{Routing, ServiceName};
use tokio::task::JoinHandle;
use tracing::info;

use crate::host::actor::Host;
use crate::proxy::routes::ServiceRoutes;

/// A frozen service's entry point: still accepting until [`Frozen::stop_accepting`].
pub struct Frozen {
    /// The service.
    pub service: ServiceName,
    /// Its entry point's address.
    pub addr: SocketAddr,
    /// A second descriptor of the listening socket, to hand over (`None`: not bound yet).
    pub listener: Option<OwnedFd>,
    /// The routing table its connections use.
    pub routes: Arc<ServiceRoutes>,
    accept: Option<JoinHandle<()>>,
}

impl Frozen {
    /// Stops accepting; open connections go on.
    pub fn stop_accepting(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

impl Host {
    /// Stops every slot task of this host and gives up its entry point's accept loop.
    pub(super) fn freeze(&mut self) -> Frozen {
        for rt in &mut self.slots {
            if let Some(token) = rt.tasks.take() {
                token.cancel();
            }
        }
        // The mesh closes with this daemon: a healthy local slot serves every request left.
        if self.routes.router.current().is_some() && self.routes.local_ok() {
            self.routes.set_routing(Routing::Local);
        }
        info!(service = %self.record.name, "frozen for an upgrade; the entry point serves on until the new daemon does");
        let listener = self.entry_fd.lock().ok().and_then(|mut fd| fd.take());
        Frozen {
            service: self.record.name.clone(),
            addr: self.record.spec.listen.resolve(self.ctx.service_address),
            listener,
            routes: self.routes.clone(),
            accept: self.listener.take(),
        }
    }
}
