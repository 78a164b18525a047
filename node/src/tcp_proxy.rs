//! The raw TCP proxy of one service's entry point (`protocol = "tcp"`).
//!
//! ## Guarantees
//! - The upstream is chosen per connection from the [`Router`]: after a flip, the next
//!   connection goes to the new slot; connections already open stay on the old one.
//! - A connection on a draining slot stays open until the slot's cut-off fires
//!   (`drain_timeout` after the flip), then it is closed.
//! - Each connection counts as one request on its slot; a failed connect to the slot counts as
//!   an error, and its latency is the connect time.
//! - Without a routed release a new connection is closed at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::upstream::Router;

/// Serves TCP on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, router: Arc<Router>) {
    loop {
        let (mut client, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(upstream) = router.current() else {
            debug!(%remote, "no release is routed; connection closed");
            continue;
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let (_flight, cut) = upstream.begin();
            let mut server = match TcpStream::connect(("127.0.0.1", upstream.port)).await {
                Ok(s) => s,
                Err(e) => {
                    upstream.record(true, started.elapsed());
                    debug!(error = %e, slot = %upstream.slot, "cannot connect to slot");
                    return;
                }
            };
            upstream.record(false, started.elapsed());
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.cancelled() => debug!(%remote, "connection closed at drain_timeout"),
            }
        });
    }
}
