//! chitchat's `Transport` over the QUIC mesh.
//!
//! chitchat 0.11 exposes its message codec, so each `ChitchatMessage` is serialised by chitchat,
//! wrapped in a `Gossip` frame by `halley_proto::codec` (limit 64 KiB, as chitchat packs up to 65,507
//! bytes) and sent on its own QUIC uni stream, never as a datagram (QUIC datagrams fit about 1,200
//! bytes). `send` only queues (see [`Mesh::send_gossip`]), so a slow handshake with one peer never
//! holds up the gossip loop. Every received message passes the [`GossipFilter`] first, with the
//! sender its certificate names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Serializable};
use halley_proto::codec::encode_message;
use halley_proto::message::GossipPacket;
use halley_proto::{Limit, Message};
use tokio::sync::mpsc;
use tracing::warn;

use crate::mesh::endpoint::{InboundGossip, Mesh};
use crate::mesh::gossip_filter::{GossipFilter, Sender};

/// The transport handed to `chitchat::spawn_chitchat`. It can be opened once.
pub struct QuicGossipTransport {
    mesh: Arc<Mesh>,
    inbound: Mutex<Option<mpsc::Receiver<InboundGossip>>>,
}

impl QuicGossipTransport {
    /// Wraps a started mesh and its inbound gossip stream.
    pub fn new(mesh: Arc<Mesh>, inbound: mpsc::Receiver<InboundGossip>) -> Self {
        Self {
            mesh,
            inbound: Mutex::new(Some(inbound)),
        }
    }
}

#[async_trait::async_trait]
impl Transport for QuicGossipTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        // The mesh endpoint is already bound; chitchat's listen address is the same one.
        let inbound = self
            .inbound
            .lock()
            .map_err(|_| anyhow!("gossip transport lock poisoned"))?
            .take()
            .ok_or_else(|| anyhow!("the gossip transport can be opened only once"))?;
        Ok(Box::new(QuicGossipSocket {
            mesh: self.mesh.clone(),
            inbound,
            filter: GossipFilter::default(),
        }))
    }
}

struct QuicGossipSocket {
    mesh: Arc<Mesh>,
    inbound: mpsc::Receiver<InboundGossip>,
    filter: GossipFilter,
}

#[async_trait::async_trait]
impl Socket for QuicGossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut payload = Vec::with_capacity(message.serialized_len());
        message.serialize(&mut payload);
        match encode_message(&Message::Gossip(GossipPacket(payload)), Limit::Gossip) {
            Ok(frame) => self.mesh.send_gossip(to, frame),
            // chitchat sizes its messages to fit; if one does not, gossip repairs on a later round.
            Err(e) => warn!(peer = %to, error = %e, "gossip message not sent"),
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (from, identity, payload) = self
                .inbound
                .recv()
                .await
                .ok_or_else(|| anyhow!("the mesh has stopped"))?;
            let sender = Sender {
                name: &identity.name,
                role: identity.role,
            };
            match self.filter.admit(&payload, &sender) {
                Ok(message) => return Ok((from, message)),
                Err(e) if self.mesh.may_warn(from.ip()) => {
                    warn!(peer = %from, error = %e, "chitchat message dropped");
                }
                Err(_) => {}
            }
        }
    }
}
