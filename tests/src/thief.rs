//! A member's identity in hostile hands: a mesh endpoint holding a node's real certificate and
//! key (as a thief who copied its data dir would), for sending crafted requests to its peers.

use std::net::SocketAddr;
use std::sync::Arc;

use halley_node::mesh::endpoint::{Mesh, RequestHandler};
use halley_node::mesh::pki::{PeerIdentity, cert_from_pem, key_from_pem};
use halley_node::mesh::tls::Credentials;
use halley_proto::Message;
use halley_proto::message::{ErrorKind, ErrorReply};

use crate::Node;

/// The thief's own endpoint answers nothing.
struct Silent;

#[async_trait::async_trait]
impl RequestHandler for Silent {
    async fn handle(&self, _: Option<PeerIdentity>, _: SocketAddr, _: Message) -> Message {
        Message::ErrorReply(ErrorReply {
            kind: ErrorKind::Unavailable,
            message: "the thief answers nothing".into(),
        })
    }

    async fn proxy(
        &self,
        _: halley_proto::message::ProxyOpen,
        _: quinn::SendStream,
        _: quinn::RecvStream,
    ) {
    }
}

/// A mesh endpoint on 127.0.0.1 with `node`'s certificate and key. Call inside a tokio runtime.
pub fn stolen_identity(node: &Node) -> Arc<Mesh> {
    let read = |f: &str| std::fs::read(node.dir.join(f)).expect("the node's identity files");
    let creds = Credentials {
        ca: cert_from_pem(&read("ca.pem")).expect("ca.pem"),
        cert: cert_from_pem(&read("node.pem")).expect("node.pem"),
        key_pkcs8: key_from_pem(&String::from_utf8_lossy(&read("node.key")))
            .expect("node.key")
            .serialize_der(),
    };
    let (mesh, _gossip) = Mesh::start("127.0.0.1:0".parse().unwrap(), &creds, Arc::new(Silent))
        .expect("the thief's endpoint");
    mesh
}
