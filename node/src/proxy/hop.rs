//! The mesh hop: an entry point hands a client connection (HTTP/1.1 requests, or a TCP
//! connection's bytes) to a peer's instance over the existing mutually authenticated QUIC
//! connection to that peer, on a bidirectional stream opened with
//! [`ProxyOpen`]. The peer's proxy serves the stream from its
//! local active slot, under its own drain rules and signals.
//!
//! ## Guarantees
//! - Slots keep listening on 127.0.0.1 only; the hop reaches them through the peer's node.
//! - A peer accepts a hop only when it has a routed local slot and either does not drain or the
//!   sender says it has no other instance; otherwise it answers with an error and the sender
//!   knows that nothing of the client's traffic reached any upstream (so it may try another).
//! - On the receiving side ([`crate::proxy::hop_server`]) a hop never travels further: the peer
//!   serves it locally or refuses.
//!
//! ## Non-goals
//! Choosing the peer ([`crate::proxy::routes`]) and HTTP semantics ([`crate::proxy::http`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use halley_proto::Message;
use halley_proto::message::ProxyOpen;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::routes::{PeerPick, ServiceRoutes};

/// How long a peer may take to accept a hop before the sender tries another instance.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a local slot may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The receiving end's view of a hop stream, and the sender's.
pub type HopIo = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// A byte stream to an instance: a TCP connection to a local slot, or a mesh hop to a peer.
pub enum Io {
    /// This host's slot on 127.0.0.1.
    Tcp(TcpStream),
    /// A stream to a peer's node.
    Hop(Box<HopIo>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Hop(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Hop(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Hop(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Hop(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to this host's slot on `port`.
pub async fn connect_local(port: u16) -> Result<Io, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| format!("connecting to 127.0.0.1:{port} timed out"))?
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(Io::Tcp(stream))
}

/// Opens a hop to `peer`'s instance of the service for a client at `client`. An error means
/// nothing reached the peer's slot.
pub async fn connect_peer(
    routes: &ServiceRoutes,
    peer: &PeerPick,
    client: SocketAddr,
) -> Result<Io, String> {
    let mesh = routes
        .mesh()
        .ok_or_else(|| "the mesh is not running yet".to_owned())?;
    let open = Message::ProxyOpen(ProxyOpen {
        service: routes.service.clone(),
        client,
        even_if_draining: peer.draining,
    });
    let (send, recv) = mesh
        .open_stream(peer.addr, &peer.node, &open, OPEN_TIMEOUT)
        .await
        .map_err(|e| format!("node {}: {e}", peer.node))?;
    routes
        .counters
        .forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Io::Hop(Box::new(tokio::io::join(recv, send))))
}
