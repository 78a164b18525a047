//! The raw TCP proxy of one service's entry point (`protocol = "tcp"`), and of the mesh hops
//! that peers' entry points send here.
//!
//! ## Guarantees
//! - The instance is chosen per connection from the service's routes: after a flip or a host
//!   drain, the next connection goes where the routes say; connections already open stay put.
//! - A connection whose first instance cannot be reached (refused, or a peer that cannot be
//!   reached or will not take it) is sent once to another instance: no byte was sent yet.
//! - A connection on a draining slot stays open until the slot's cut-off fires
//!   (`drain_timeout` after the flip), then it is closed.
//! - Each connection counts as one request on the slot that serves it; a failed connect counts
//!   as an error, and its latency is the connect time.
//! - Without any instance a new connection is closed at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::debug;

use crate::engine::ejection::Outcome;
use crate::proxy::hop::{HopIo, Io, connect_local, connect_peer};
use crate::proxy::routes::{Picked, ServiceRoutes};

/// Serves TCP on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, routes: Arc<ServiceRoutes>) {
    loop {
        let (client, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let open = routes.connections.track();
        let routes = routes.clone();
        tokio::spawn(async move {
            proxy(client, routes, remote, false).await;
            drop(open);
        });
    }
}

/// Serves one mesh hop (a TCP connection from a peer's entry point) from this host's slot.
pub async fn serve_hop(routes: Arc<ServiceRoutes>, io: HopIo) {
    // The hop's client address only matters for HTTP headers.
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    proxy(io, routes, unknown, true).await;
}

async fn proxy<C>(mut client: C, routes: Arc<ServiceRoutes>, remote: SocketAddr, hop: bool)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let first = if hop {
        routes.router.current().map(Picked::Local)
    } else {
        routes.pick(None, None)
    };
    let Some(first) = first else {
        debug!(%remote, "no instance is serving; connection closed");
        return;
    };
    let (picked, mut server) = match connect(&routes, first, remote).await {
        Ok(pair) => pair,
        Err((target, e)) => {
            let second = if hop {
                None
            } else {
                routes.pick(None, Some(&target))
            };
            let Some(second) = second else {
                debug!(%remote, error = %e, "no instance took the connection; closed");
                return;
            };
            routes.counters.retries.fetch_add(1, Ordering::Relaxed);
            match connect(&routes, second, remote).await {
                Ok(pair) => pair,
                Err((_, then)) => {
                    debug!(%remote, error = %e, then = %then, "no instance took the connection; closed");
                    return;
                }
            }
        }
    };
    let target = picked.target();
    let (_flight, cut) = match &picked {
        Picked::Local(up) => {
            let (flight, cut) = up.begin();
            (Some(flight), Some(cut))
        }
        Picked::Peer(_) => (None, None),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    let ended_well = match cut {
        Some(cut) => tokio::select! {
            r = copy => r.is_ok(),
            _ = cut.cancelled() => {
                debug!(%remote, "connection closed at drain_timeout");
                true
            }
        },
        None => copy.await.is_ok(),
    };
    if ended_well {
        routes.record(&target, Outcome::Good);
    }
    drop(picked);
}

/// Connects to an instance; on failure says which one failed and why.
async fn connect(
    routes: &ServiceRoutes,
    picked: Picked,
    remote: SocketAddr,
) -> Result<(Picked, Io), (crate::engine::routing::Target, String)> {
    let started = Instant::now();
    let io = match &picked {
        Picked::Local(up) => connect_local(up.port).await,
        Picked::Peer(p) => connect_peer(routes, p, remote).await,
    };
    if let Picked::Local(up) = &picked {
        up.record(io.is_err(), started.elapsed());
    }
    match io {
        Ok(io) => Ok((picked, io)),
        Err(e) => {
            let target = picked.target();
            routes.record(&target, Outcome::ConnectFailed);
            Err((target, e))
        }
    }
}
