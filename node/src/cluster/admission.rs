//! Admitting nodes: the token book and, on an admin that holds it, the cluster CA key. Answers
//! `token create` and a joining node's [`JoinRequest`].
//!
//! ## Guarantees
//! - A token's use is recorded on disk before the certificate is handed out, so a crash cannot
//!   make a single-use token work twice.
//! - A name held by a live member is refused, naming where that member runs.
//! - The certificate carries the token's role. A node admitted as an admin also receives the CA
//!   key (inside the join's TLS connection only), so that joins outlive the `init` node; a
//!   worker never does.
//!
//! ## Non-goals
//! Deciding whether a token is valid (that is [`crate::engine::tokens`]).

use std::net::SocketAddr;

use halley_proto::disk::{NodeRecord, TokenBook};
use halley_proto::message::{AdminResponse, ErrorKind, ErrorReply, JoinRequest, JoinResponse};
use halley_proto::{NodeName, Role};
use rustls::pki_types::CertificateDer;
use tracing::info;

use crate::clock::wall_ms;
use crate::cluster::client::ClusterClient;
use crate::engine::tokens;
use crate::error::{bad_request, internal};
use crate::mesh::pki::{ClusterCa, PeerIdentity};
use crate::store::datadir::{DataDir, TOKENS};

/// The token book and the CA key of this node.
pub struct Admission {
    record: NodeRecord,
    data_dir: DataDir,
    ca: Option<ClusterCa>,
    ca_der: CertificateDer<'static>,
    tokens: tokio::sync::Mutex<TokenBook>,
}

impl Admission {
    /// Admission for this node; `ca` is `Some` on the node that holds the CA key.
    pub fn new(
        record: NodeRecord,
        data_dir: DataDir,
        ca: Option<ClusterCa>,
        ca_der: CertificateDer<'static>,
        tokens: TokenBook,
    ) -> Self {
        Self {
            record,
            data_dir,
            ca,
            ca_der,
            tokens: tokio::sync::Mutex::new(tokens),
        }
    }

    /// Whether this node holds the CA key.
    pub fn holds_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Issues a join token (`token create`).
    pub async fn create_token(
        &self,
        cluster: &ClusterClient,
        grant: tokens::Grant,
    ) -> Result<AdminResponse, ErrorReply> {
        if self.record.role != Role::Admin {
            return Err(ErrorReply {
                kind: ErrorKind::Unauthorised,
                message: format!(
                    "this node is a {}: only an admin node issues join tokens; run 'halley-node token create' on an admin (status shows each node's role)",
                    self.record.role
                ),
            });
        }
        if self.ca.is_none() {
            let holder = cluster
                .gossip
                .ca_holder()
                .await
                .map(|n| format!("node {n:?}"))
                .unwrap_or_else(|| "an admin node that holds the CA key".into());
            return Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "this node does not hold the cluster CA key, so it cannot admit new nodes; run 'halley-node token create' on {holder}"
                ),
            });
        }
        if !grant.role.is_member() {
            return Err(bad_request(&format!(
                "a token cannot admit a node as {}; give --role worker or --role admin",
                grant.role
            )));
        }
        if grant.ttl_secs == 0 {
            return Err(bad_request("a token's --ttl must be longer than 0s"));
        }
        let (id, secret) = match (crate::random::bytes::<8>(), crate::random::bytes::<16>()) {
            (Ok(id), Ok(secret)) => (id, secret),
            _ => return Err(internal("the OS random source failed")),
        };
        let mut book = self.tokens.lock().await;
        let mut updated = book.clone();
        let now = wall_ms();
        let token = tokens::issue(
            &mut updated,
            &self.ca_der,
            self.record.advertise,
            grant,
            now,
            id,
            secret,
        );
        self.data_dir
            .write_record(TOKENS, &updated)
            .map_err(|e| internal(&format!("cannot save the token: {e}")))?;
        *book = updated;
        info!(ttl_secs = grant.ttl_secs, uses = ?grant.uses, role = %grant.role, "join token created");
        Ok(AdminResponse::Token {
            token: token.to_string(),
            expires_at_ms: now + grant.ttl_secs * 1000,
        })
    }

    /// A new certificate for `caller`'s key in `csr_der`: the name, role and address of the
    /// certificate it called with, the cluster's node validity from now.
    pub fn renew(&self, caller: &PeerIdentity, csr_der: &[u8]) -> Result<Vec<u8>, ErrorReply> {
        let Some(ca) = &self.ca else {
            return Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: "this node does not hold the cluster CA key, so it cannot renew certificates; ask an admin node that holds it".into(),
            });
        };
        if !caller.role.is_member() {
            return Err(ErrorReply {
                kind: ErrorKind::Unauthorised,
                message: format!(
                    "renew-certificate refused: a {} is not a member",
                    caller.role
                ),
            });
        }
        let ip = caller.ip.ok_or_else(|| {
            bad_request("your certificate names no address to renew it for; join again")
        })?;
        let cert = ca
            .sign_csr(csr_der, &caller.name, ip, caller.role)
            .map_err(|e| bad_request(&e.to_string()))?;
        info!(name = %caller.name, role = %caller.role, "renewed a node certificate");
        Ok(cert.to_vec())
    }

    /// Answers a joining node: checks and spends its token, signs its certificate.
    pub async fn join(
        &self,
        cluster: &ClusterClient,
        request: JoinRequest,
        remote: SocketAddr,
    ) -> Result<JoinResponse, ErrorReply> {
        let Some(ca) = &self.ca else {
            return Err(ErrorReply {
                kind: ErrorKind::Unavailable,
                message: "this node does not hold the cluster CA key; use a token from an admin node that holds it (status shows each node's role)".into(),
            });
        };
        let mut book = self.tokens.lock().await;
        let index = tokens::check(&book, &request.token_id, &request.secret, wall_ms())?;
        if request.name == self.record.name {
            return Err(name_taken(&request.name, self.record.advertise));
        }
        if cluster.mesh().is_some_and(|m| m.is_revoked(&request.name)) {
            return Err(ErrorReply {
                kind: ErrorKind::NameTaken,
                message: format!(
                    "node name {:?} was removed from this cluster and cannot join again; choose another --name",
                    request.name.as_str()
                ),
            });
        }
        cluster.refresh().await;
        if let Some(addr) = cluster.live_holder_of(&request.name) {
            return Err(name_taken(&request.name, addr));
        }
        let role = book
            .tokens
            .get(index)
            .map(|t| t.role)
            .ok_or_else(|| internal("the token book changed while a join was checked"))?;
        let cert = ca
            .sign_csr(
                &request.csr_der,
                &request.name,
                request.advertise.ip(),
                role,
            )
            .map_err(|e| bad_request(&e.to_string()))?;
        let mut updated = book.clone();
        tokens::spend(&mut updated, index);
        self.data_dir
            .write_record(TOKENS, &updated)
            .map_err(|e| internal(&format!("cannot record the token use: {e}")))?;
        *book = updated;
        let mut seeds = vec![self.record.advertise];
        seeds.extend(cluster.peer_addrs());
        info!(name = %request.name, advertise = %request.advertise, from = %remote, role = %role, "admitted a new node");
        Ok(JoinResponse {
            cluster_id: self.record.cluster_id.clone(),
            cert_der: cert.to_vec(),
            ca_der: self.ca_der.to_vec(),
            seeds,
            ca_key_pem: (role == Role::Admin).then(|| ca.key.serialize_pem()),
        })
    }
}

fn name_taken(name: &NodeName, addr: SocketAddr) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::NameTaken,
        message: format!(
            "a live node named {:?} already exists at {addr}; choose another --name, or stop and remove that node first",
            name.as_str()
        ),
    }
}
