//! The mesh authorises every request: a client that completed TLS without a certificate may send a
//! join request and nothing else, a worker may not order an admin, a request goes only to the node
//! it names, and a client pinned to another CA refuses the server.

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
    credentials_of(ca, "server", Role::Admin)
}

fn credentials_of(ca: &ClusterCa, name: &str, role: Role) -> Credentials {
    let name = NodeName::parse(name).unwrap();
    let (cert, key) = ca
        .issue_with_new_key(&name, "127.0.0.1".parse().unwrap(), role)
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

fn step(service: &str) -> Message {
    Message::Step(halley_proto::deploy::StepRequest {
        on_behalf_of: None,
        service: service.parse().unwrap(),
        epoch: 1,
        step: halley_proto::deploy::Step::Flip,
    })
}

#[tokio::test]
async fn a_worker_may_not_order_a_peer_and_is_told_which_role_it_needs() {
    use halley_proto::message::PeerRequest;
    use std::time::Duration;
    let ca = ClusterCa::generate("test").unwrap();
    let admin_handler = Arc::new(Counting::default());
    let (admin, _g1) = Mesh::start(
        "127.0.0.1:0".parse().unwrap(),
        &credentials_of(&ca, "boss", Role::Admin),
        admin_handler.clone(),
    )
    .unwrap();
    let (worker, _g2) = Mesh::start(
        "127.0.0.1:0".parse().unwrap(),
        &credentials_of(&ca, "pi-7", Role::Worker),
        Arc::new(Counting::default()),
    )
    .unwrap();
    let to = admin.local_addr().unwrap();
    let boss = NodeName::parse("boss").unwrap();
    let ask = Duration::from_secs(5);
    let orders = [
        step("web"),
        Message::Peer(PeerRequest::SetDraining(true)),
        Message::Peer(PeerRequest::HoldDrain {
            service: "web".parse().unwrap(),
            epoch: 1,
            ttl_ms: 1000,
        }),
        Message::Peer(PeerRequest::State(
            halley_proto::message::StateRequest::List("web".parse().unwrap()),
        )),
        Message::Peer(PeerRequest::PutArtifact {
            sha256: [0; 32],
            total: 1,
            offset: 0,
            data: vec![1],
        }),
    ];
    for order in orders {
        match worker.request(to, &boss, &order, ask).await {
            Err(halley_node::Error::Remote(reply)) => {
                assert_eq!(reply.kind, ErrorKind::Unauthorised, "{reply:?}");
                assert!(
                    reply.message.contains("needs the admin role")
                        && reply.message.contains("pi-7 is a worker"),
                    "{}",
                    reply.message
                );
            }
            other => panic!("a worker's {} must be refused, got {other:?}", order.kind()),
        }
    }
    assert_eq!(admin_handler.0.load(Ordering::SeqCst), 0);

    // Fetching a release is a member's request: it reaches the handler, which decides.
    let fetch = Message::Peer(PeerRequest::GetRelease {
        service: "web".parse().unwrap(),
        version: "v1".parse().unwrap(),
    });
    match worker.request(to, &boss, &fetch, ask).await {
        Err(halley_node::Error::Remote(reply)) => assert_eq!(reply.message, "handled peer"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(admin_handler.0.load(Ordering::SeqCst), 1);

    // The admin's own steps to the worker pass the role check.
    let back = worker.local_addr().unwrap();
    let pi = NodeName::parse("pi-7").unwrap();
    match admin.request(back, &pi, &step("web"), ask).await {
        Err(halley_node::Error::Remote(reply)) => assert_eq!(reply.message, "handled step"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_request_goes_only_to_the_node_it_names() {
    use std::time::Duration;
    let ca = ClusterCa::generate("test").unwrap();
    let handler = Arc::new(Counting::default());
    let (server, _g1) = Mesh::start(
        "127.0.0.1:0".parse().unwrap(),
        &credentials_of(&ca, "n2", Role::Admin),
        handler.clone(),
    )
    .unwrap();
    let (client, _g2) = Mesh::start(
        "127.0.0.1:0".parse().unwrap(),
        &credentials_of(&ca, "n1", Role::Admin),
        Arc::new(Counting::default()),
    )
    .unwrap();
    let to = server.local_addr().unwrap();
    let ask = Duration::from_secs(5);
    // The caller means n3, whose address n2 now has: nothing is sent.
    let n3 = NodeName::parse("n3").unwrap();
    let err = client
        .request(to, &n3, &step("web"), ask)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is node n2, not n3"), "{err}");
    assert_eq!(handler.0.load(Ordering::SeqCst), 0);
    let n2 = NodeName::parse("n2").unwrap();
    match client.request(to, &n2, &step("web"), ask).await {
        Err(halley_node::Error::Remote(reply)) => assert_eq!(reply.message, "handled step"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(handler.0.load(Ordering::SeqCst), 1);
}
