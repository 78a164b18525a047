//! The receiving end of a mesh hop: a peer opened a stream with
//! [`ProxyOpen`] to reach this node's instance of a service.
//!
//! ## Guarantees
//! - A hop is accepted only when this node has a routed local slot and either does not drain or
//!   the sender says it has no other instance; otherwise the sender gets an error before any of
//!   the client's bytes reached an upstream, so it may try another instance.
//! - An accepted hop is served by the service's own proxy from the local slot only: it never
//!   travels further.

use std::sync::Arc;

use halley_proto::Message;
use halley_proto::message::{ErrorKind, ErrorReply, ProxyOpen};
use halley_proto::spec::{Protocol, ServiceName};
use tracing::debug;

use crate::error::error_reply;
use crate::mesh::framing::write_message;
use crate::proxy::routes::ServiceRoutes;

/// Serves a hop that a peer opened: accepts it when this node can serve, then runs the
/// service's proxy on the stream, local slot only.
pub async fn accept(
    routes: Option<Arc<ServiceRoutes>>,
    open: ProxyOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    if let Err(reply) = admit(routes.as_deref(), &open.service, open.even_if_draining) {
        debug!(service = %open.service, reason = %reply.message, "mesh hop refused");
        if write_message(
            &mut send,
            &Message::ErrorReply(reply),
            halley_proto::Limit::Rpc,
        )
        .await
        .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
    let Some(routes) = routes else { return };
    if write_message(&mut send, &Message::ProxyAccept, halley_proto::Limit::Rpc)
        .await
        .is_err()
    {
        return;
    }
    let io = tokio::io::join(recv, send);
    match routes.protocol {
        Protocol::Http => crate::proxy::http::serve_hop(routes, io, open.client).await,
        Protocol::Tcp => crate::proxy::tcp::serve_hop(routes, io).await,
    }
}

fn admit(
    routes: Option<&ServiceRoutes>,
    service: &ServiceName,
    even_if_draining: bool,
) -> Result<(), ErrorReply> {
    let unavailable = |message: String| error_reply(ErrorKind::Unavailable, message);
    let Some(routes) = routes else {
        return Err(error_reply(
            ErrorKind::NotFound,
            format!("service {service} does not run on this node"),
        ));
    };
    if routes.router.current().is_none() {
        return Err(unavailable(format!(
            "no release of service {service} is serving on this node"
        )));
    }
    if routes.draining() && !even_if_draining {
        return Err(unavailable("this node is draining".into()));
    }
    Ok(())
}
