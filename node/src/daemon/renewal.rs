//! Certificate renewal: when two thirds of this node's certificate lifespan have passed
//! ([`crate::engine::renewal`]), it makes a new key and a CSR, has it signed (by its own CA key
//! on an admin that holds it, else by an admin that gossips it holds the key, over the mesh),
//! checks what came back, saves it and presents it from the next handshake on.
//!
//! ## Guarantees
//! - A returned certificate is installed only if it chains to the cluster CA and is valid now,
//!   names this node with its role, carries the new key, and outlives the current one; anything
//!   else (a worker claiming to hold the CA key, say) is logged and the next admin asked.
//! - The new key and certificate replace the old ones crash-safely: the key is written beside
//!   the old one first (`node.key.next`), then the certificate, then the key renamed into place;
//!   [`finish_interrupted`] completes or drops a renewal cut short, at the next start.
//! - A failed attempt is retried within a twentieth of the lifespan.
//!
//! ## Non-goals
//! Renewing the CA (valid 10 years) or a certificate that already expired: a node whose
//! certificate expired while it was down must join again.

use std::sync::Arc;
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::message::{PeerReply, PeerRequest};
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::clock::wall_ms;
use crate::daemon::node::Node;
use crate::engine::renewal;
use crate::error::{Error, Result};
use crate::mesh::endpoint::Mesh;
use crate::mesh::pki::{
    CertFacts, PeerIdentity, cert_from_pem, cert_to_pem, key_from_pem, make_csr,
};
use crate::mesh::tls::{Credentials, verify_member_cert};
use crate::store::datadir::{DataDir, NODE_CERT, NODE_KEY};

/// Where a renewed key waits until its certificate is in place.
const NODE_KEY_NEXT: &str = "node.key.next";
/// How long an admin may take to sign.
const ASK: Duration = Duration::from_secs(5);

/// Completes a renewal a crash cut short: a waiting key that belongs to `node.pem` replaces
/// `node.key`; one that does not (the certificate never arrived) is dropped.
pub(crate) fn finish_interrupted(data_dir: &DataDir) -> Result<()> {
    let next = data_dir.file(NODE_KEY_NEXT);
    if !next.exists() {
        return Ok(());
    }
    let key_pem = std::fs::read_to_string(&next).map_err(Error::io("cannot read", &next))?;
    let cert = cert_from_pem(&data_dir.read_file(NODE_CERT)?)?;
    let belongs = key_from_pem(&key_pem)
        .is_ok_and(|k| CertFacts::of(&cert).is_ok_and(|f| f.public_key == k.public_key_raw()));
    if belongs {
        std::fs::rename(&next, data_dir.file(NODE_KEY))
            .map_err(Error::io("cannot rename", &next))?;
        info!("completed a certificate renewal interrupted by a stop");
    } else {
        std::fs::remove_file(&next).map_err(Error::io("cannot remove", &next))?;
    }
    Ok(())
}

/// Renews this node's certificate whenever it is due, for as long as the node runs.
pub(crate) async fn run(
    node: Arc<Node>,
    mesh: Arc<Mesh>,
    data_dir: DataDir,
    mut creds: Credentials,
) {
    loop {
        let facts = node.certificate();
        let wait = renewal::wait(wall_ms(), facts.issued_ms, facts.expires_ms);
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        let lifespan = facts.expires_ms.saturating_sub(facts.issued_ms);
        match renew_once(&node, &mesh, &data_dir, &creds).await {
            Ok(next) => {
                let renewed = CertFacts::of(&next.cert);
                creds = next;
                if let Ok(renewed) = renewed {
                    info!(
                        expires_ms = renewed.expires_ms,
                        renews_ms = renewal::due(renewed.issued_ms, renewed.expires_ms),
                        "renewed this node's certificate"
                    );
                    node.set_certificate(renewed);
                }
                // A signer whose clock is far behind can hand out a certificate due at once:
                // never renew back to back.
                tokio::time::sleep(Duration::from_millis(renewal::retry_after(lifespan))).await;
            }
            Err(e) => {
                let retry = renewal::retry_after(lifespan);
                warn!(error = %e, expires_ms = facts.expires_ms, retry_ms = retry, "cannot renew this node's certificate yet");
                tokio::time::sleep(Duration::from_millis(retry)).await;
            }
        }
    }
}

/// One renewal: a new key, a certificate for it, checked, saved and installed.
async fn renew_once(
    node: &Node,
    mesh: &Mesh,
    data_dir: &DataDir,
    creds: &Credentials,
) -> Result<Credentials> {
    let me = PeerIdentity::from_cert(&creds.cert)?;
    let (key, csr) = make_csr(&me.name)?;
    let current = CertFacts::of(&creds.cert)?;
    let mut tried = Vec::new();
    for signer in signers(node).await {
        let cert = match sign(node, &me, &signer, &csr).await {
            Ok(der) => CertificateDer::from(der),
            Err(e) => {
                tried.push(format!("{signer}: {e}"));
                continue;
            }
        };
        let next = Credentials {
            ca: creds.ca.clone(),
            cert,
            key_pkcs8: key.serialize_der(),
        };
        if let Err(e) = check(&next, &me, &key, &current) {
            warn!(%signer, error = %e, "ignored a certificate an admin signed");
            tried.push(format!("{signer}: {e}"));
            continue;
        }
        save(data_dir, &next.cert, &key.serialize_pem())?;
        mesh.install(&next)?;
        return Ok(next);
    }
    Err(Error::Pki(if tried.is_empty() {
        "no node that holds the CA key is known yet".into()
    } else {
        format!("no admin renewed it ({})", tried.join("; "))
    }))
}

/// Who may sign: this node first if it holds the CA key, then each node that says it does.
async fn signers(node: &Node) -> Vec<NodeName> {
    let mut out = Vec::new();
    if node.admission.holds_ca() {
        out.push(node.name().clone());
    }
    for holder in node.cluster.gossip.ca_holders().await {
        if let Ok(name) = NodeName::parse(&holder)
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

async fn sign(node: &Node, me: &PeerIdentity, signer: &NodeName, csr: &[u8]) -> Result<Vec<u8>> {
    if signer == node.name() {
        return node.admission.renew(me, csr).map_err(Error::Remote);
    }
    let request = PeerRequest::RenewCertificate {
        csr_der: csr.to_vec(),
    };
    match node.cluster.peer(signer, request, ASK).await? {
        PeerReply::Certificate { cert_der } => Ok(cert_der),
        _ => Err(Error::Protocol(format!(
            "{signer} answered a renewal with something else"
        ))),
    }
}

/// A renewed certificate is this node's, for the new key, valid now and longer than the old.
fn check(
    next: &Credentials,
    me: &PeerIdentity,
    key: &rcgen::KeyPair,
    current: &CertFacts,
) -> Result<()> {
    verify_member_cert(next, &next.cert)?;
    let who = PeerIdentity::from_cert(&next.cert)?;
    let facts = CertFacts::of(&next.cert)?;
    if who.name != me.name || who.role != me.role {
        return Err(Error::Pki(format!(
            "it names {} ({}), not this node {} ({})",
            who.name, who.role, me.name, me.role
        )));
    }
    if facts.public_key != key.public_key_raw() {
        return Err(Error::Pki("it is not for the key this node sent".into()));
    }
    if facts.expires_ms <= current.expires_ms {
        return Err(Error::Pki(
            "it expires no later than the current one".into(),
        ));
    }
    Ok(())
}

/// Saves a renewed key and certificate (see the module's guarantees for the order).
fn save(data_dir: &DataDir, cert: &CertificateDer<'_>, key_pem: &str) -> Result<()> {
    data_dir.write_file(NODE_KEY_NEXT, key_pem.as_bytes(), 0o600)?;
    data_dir.write_file(NODE_CERT, cert_to_pem(cert).as_bytes(), 0o600)?;
    let next = data_dir.file(NODE_KEY_NEXT);
    std::fs::rename(&next, data_dir.file(NODE_KEY)).map_err(Error::io("cannot rename", &next))
}
