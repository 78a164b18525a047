//! `halley-node join TOKEN`: the joining side.
//!
//! Order matters: the server's chain is checked against the token's CA pin during the handshake,
//! before the secret is sent; the private key is made here and never sent (only a CSR); and nothing
//! is written to the data dir until the cluster has answered with a certificate for this node, so a
//! failed join leaves the dir as it was.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use halley_proto::disk::NodeRecord;
use halley_proto::message::{JoinRequest, JoinResponse};
use halley_proto::{JoinToken, Limit, Message, NodeName, Role};

use crate::clock::wall_ms;
use crate::cluster::init::resolve_advertise;
use crate::error::{Error, Result};
use crate::mesh::framing::{read_message, write_message};
use crate::mesh::pki::{ClusterCa, PeerIdentity, cert_hash, cert_to_pem, make_csr};
use crate::mesh::tls;
use crate::store::datadir::{DataDir, Identity};

/// How long the whole join exchange may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The token.
    pub token: JoinToken,
    /// This node's name.
    pub name: NodeName,
    /// Where this node's QUIC endpoint will bind.
    pub listen: SocketAddr,
    /// Where peers will reach it; defaults to `listen`, or the local address that routes to the
    /// token's node when `listen` is unspecified.
    pub advertise: Option<SocketAddr>,
}

/// Joins the cluster and writes this node's identity into `data_dir`.
pub async fn join(data_dir: &DataDir, opts: &JoinOptions) -> Result<NodeRecord> {
    let advertise = match (opts.advertise, opts.listen.ip().is_unspecified()) {
        (None, true) => route_to(opts.token.addr, opts.listen.port())?,
        _ => resolve_advertise(opts.listen, opts.advertise)?,
    };
    // Fail on a used data dir before touching the network.
    data_dir.create_fresh()?;
    let (key, csr_der) = make_csr(&opts.name)?;
    let request = JoinRequest {
        token_id: opts.token.id,
        secret: opts.token.secret,
        name: opts.name.clone(),
        advertise,
        csr_der,
    };
    let response = tokio::time::timeout(JOIN_TIMEOUT, exchange(&opts.token, request))
        .await
        .map_err(|_| {
            Error::Net(format!(
                "no answer from {} within {}s; is 'halley-node run' going there, and is UDP port {} open?",
                opts.token.addr,
                JOIN_TIMEOUT.as_secs(),
                opts.token.addr.port()
            ))
        })??;
    if cert_hash(&response.ca_der) != opts.token.ca_hash {
        return Err(Error::CaPinMismatch {
            addr: opts.token.addr,
        });
    }
    let identity = PeerIdentity::from_cert(&response.cert_der)?;
    if identity.name != opts.name || !identity.role.is_member() {
        return Err(Error::Protocol(format!(
            "the cluster issued a certificate for {:?} ({}) instead of {:?}",
            identity.name.as_str(),
            identity.role,
            opts.name.as_str()
        )));
    }
    // An admin receives the CA key so that it can admit and renew too; a key that is not the
    // pinned CA's is refused rather than stored.
    let ca_key_pem = match (&response.ca_key_pem, identity.role) {
        (Some(pem), Role::Admin) => {
            ClusterCa::from_pem(cert_to_pem(&response.ca_der).as_bytes(), pem)?;
            Some(pem.clone())
        }
        _ => None,
    };
    let mut seeds = response.seeds.clone();
    seeds.retain(|s| *s != advertise);
    let record = NodeRecord {
        cluster_id: response.cluster_id.clone(),
        name: opts.name.clone(),
        role: identity.role,
        listen: opts.listen,
        advertise,
        seeds,
        created_ms: wall_ms(),
    };
    data_dir.write_identity(&Identity {
        ca_pem: &cert_to_pem(&response.ca_der),
        ca_key_pem: ca_key_pem.as_deref(),
        node_pem: &cert_to_pem(&response.cert_der),
        node_key_pem: &key.serialize_pem(),
        tokens: None,
        record: &record,
    })?;
    Ok(record)
}

async fn exchange(token: &JoinToken, request: JoinRequest) -> Result<JoinResponse> {
    let (client, pin) = tls::join_client_config(token.ca_hash)?;
    let bind: SocketAddr = if token.addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(|e| Error::Net(format!("bad bind address: {e}")))?;
    let endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| Error::Net(format!("cannot open a UDP socket: {e}")))?;
    let connecting = endpoint
        .connect_with(client, token.addr, &token.addr.ip().to_string())
        .map_err(|e| Error::Net(format!("cannot dial {}: {e}", token.addr)))?;
    let conn = connecting.await.map_err(|e| {
        if pin.mismatched() {
            Error::CaPinMismatch { addr: token.addr }
        } else {
            Error::Net(format!(
                "handshake with {} failed: {e}; is it a halley-node of the same release?",
                token.addr
            ))
        }
    })?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::Net(format!("cannot open a stream to {}: {e}", token.addr)))?;
    write_message(&mut send, &Message::JoinRequest(request), Limit::Join).await?;
    let _ = send.finish();
    let reply = read_message(&mut recv, Limit::Rpc).await?;
    conn.close(quinn::VarInt::from_u32(0), b"joined");
    endpoint.wait_idle().await;
    match reply {
        Some(Message::JoinResponse(response)) => Ok(response),
        Some(Message::ErrorReply(reply)) => Err(Error::Remote(reply)),
        other => Err(Error::Protocol(format!(
            "unexpected reply to a join request: {:?}",
            other.map(|m| m.kind())
        ))),
    }
}

/// The local address the OS would use to reach `target` (a connected UDP socket sends nothing).
fn route_to(target: SocketAddr, port: u16) -> Result<SocketAddr> {
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket =
        UdpSocket::bind(bind).map_err(|e| Error::Net(format!("cannot open a UDP socket: {e}")))?;
    socket
        .connect(target)
        .map_err(|e| Error::Net(format!("no route to {target}: {e}")))?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::Net(format!("cannot read local address: {e}")))?;
    Ok(SocketAddr::new(local.ip(), port))
}
