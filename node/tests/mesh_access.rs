//! The mesh authorises every request: a client that completed TLS without a certificate may send a
//! join request and nothing else, and a client pinned to another CA refuses the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use halley_node::mesh::endpoint::{Mesh, RequestHandler};
use halley_node::mesh::framing::{read_message, write_message};
use halley_node::mesh::pki::{ClusterCa, PeerIdentity, cert_hash};
use halley_node::mesh::tls::{self, Credentials};
use halley_proto::message::{ErrorKind, ErrorReply, GossipPacket, JoinRequest};
use halley_proto::{Limit, Message, NodeName, Role};

/// Counts the requests that reach it and answers each with a recognisable error.
#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle(
        &self,
        _caller: Option<PeerIdentity>,
        _remote: SocketAddr,
        request: Message,
    ) -> Message {
        self.0.fetch_add(1, Ordering::SeqCst);
        Message::ErrorReply(ErrorReply {
            kind: ErrorKind::TokenUnknown,
            message: format!("handled {}", request.kind()),
        })
    }

    async fn proxy(
        &self,
        _open: halley_proto::message::ProxyOpen,
        _send: quinn::SendStream,
        _recv: quinn::RecvStream,
    ) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn credentials(ca: &ClusterCa) -> Credentials {
    let name = NodeName::parse("server").unwrap();
    let (cert, key) = ca
        .issue_with_new_key(&name, "127.0.0.1".parse().unwrap(), Role::Node)
        .unwrap();
    Credentials {
        ca: ca.cert_der.clone(),
        cert,
        key_pkcs8: key.serialize_der(),
    }
}

async fn ask_without_certificate(
    server: SocketAddr,
    pin: [u8; 32],
    request: Message,
) -> Result<Message, String> {
    let (client, _outcome) = tls::join_client_config(pin).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client, server, "127.0.0.1")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_message(&mut send, &request, Limit::Rpc)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let reply = read_message(&mut recv, Limit::Rpc)
        .await
        .map_err(|e| e.to_string())?;
    reply.ok_or_else(|| "no reply".to_owned())
}

#[tokio::test]
async fn unauthenticated_clients_may_only_join() {
    let ca = ClusterCa::generate("test").unwrap();
    let handler = Arc::new(Counting::default());
    let (mesh, _gossip) = Mesh::start(
        "127.0.0.1:0".parse().unwrap(),
        &credentials(&ca),
        handler.clone(),
    )
    .unwrap();
    let addr = mesh.local_addr().unwrap();
    let pin = cert_hash(&ca.cert_der);

    let gossip = Message::Gossip(GossipPacket(vec![1, 2, 3]));
    match ask_without_certificate(addr, pin, gossip).await.unwrap() {
        Message::ErrorReply(reply) => assert_eq!(reply.kind, ErrorKind::Unauthorised, "{reply:?}"),
        other => panic!("gossip without a certificate must be refused, got {other:?}"),
    }
    assert_eq!(
        handler.0.load(Ordering::SeqCst),
        0,
        "a refused request must not reach the handler"
    );

    // Deploy steps need a node certificate too.
    let step = Message::Step(halley_proto::deploy::StepRequest {
        on_behalf_of: None,
        service: "web".parse().unwrap(),
        epoch: 1,
        step: halley_proto::deploy::Step::Flip,
    });
    match ask_without_certificate(addr, pin, step).await.unwrap() {
        Message::ErrorReply(reply) => assert_eq!(reply.kind, ErrorKind::Unauthorised, "{reply:?}"),
        other => panic!("a deploy step without a certificate must be refused, got {other:?}"),
    }
    assert_eq!(handler.0.load(Ordering::SeqCst), 0);

    // So does a mesh hop into a service's slots.
    let hop = Message::ProxyOpen(halley_proto::message::ProxyOpen {
        service: "web".parse().unwrap(),
        client: "192.0.2.1:5000".parse().unwrap(),
        even_if_draining: true,
    });
    match ask_without_certificate(addr, pin, hop).await.unwrap() {
        Message::ErrorReply(reply) => assert_eq!(reply.kind, ErrorKind::Unauthorised, "{reply:?}"),
        other => panic!("a mesh hop without a certificate must be refused, got {other:?}"),
    }
    assert_eq!(handler.0.load(Ordering::SeqCst), 0);

    let join = Message::JoinRequest(JoinRequest {
        token_id: [0; 8],
        secret: [0; 16],
        name: NodeName::parse("newcomer").unwrap(),
        advertise: "127.0.0.1:1".parse().unwrap(),
        csr_der: vec![],
    });
    match ask_without_certificate(addr, pin, join).await.unwrap() {
        Message::ErrorReply(reply) => assert_eq!(reply.message, "handled join-request"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(handler.0.load(Ordering::SeqCst), 1);

    // A joiner pinned to another CA stops in the handshake.
    let other = ClusterCa::generate("other").unwrap();
    let err = ask_without_certificate(
        addr,
        cert_hash(&other.cert_der),
        Message::Gossip(GossipPacket(vec![])),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(handler.0.load(Ordering::SeqCst), 1);
    mesh.close().await;
}
