//! `halley-node init`: a new cluster. Makes the CA, this node's identity (an admin) and the first
//! join token.

use std::net::SocketAddr;

use halley_proto::disk::{NodeRecord, TokenBook};
use halley_proto::{JoinToken, NodeName, Role};

use crate::clock::wall_ms;
use crate::error::{Error, Result};
use crate::mesh::pki::{CA_VALIDITY, ClusterCa, cert_to_pem};
use crate::store::datadir::{DataDir, Identity};
use crate::{engine::tokens, random};

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// This node's name.
    pub name: NodeName,
    /// Where the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Where peers reach this node; defaults to `listen` when that is a specific IP.
    pub advertise: Option<SocketAddr>,
    /// What the first token grants.
    pub token: tokens::Grant,
    /// How long node certificates are valid (each node renews its own at two thirds).
    pub cert_validity: std::time::Duration,
}

/// The shortest node certificate lifespan `init` accepts: renewal needs a few tries' room.
pub const MIN_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates the cluster in `data_dir` and returns the first join token.
pub fn init(data_dir: &DataDir, opts: &InitOptions) -> Result<JoinToken> {
    let advertise = resolve_advertise(opts.listen, opts.advertise)?;
    let validity = cert_validity(opts.cert_validity)?;
    data_dir.create_fresh()?;
    let cluster_id = halley_proto::hex::encode(&random::bytes::<8>()?);
    let ca = ClusterCa::generate(&cluster_id)?.with_node_validity(validity);
    let (node_cert, node_key) = ca.issue_with_new_key(&opts.name, advertise.ip(), Role::Admin)?;
    let mut book = TokenBook::default();
    let token = tokens::issue(
        &mut book,
        &ca.cert_der,
        advertise,
        opts.token,
        wall_ms(),
        random::bytes()?,
        random::bytes()?,
    );
    let record = NodeRecord {
        cluster_id,
        name: opts.name.clone(),
        role: Role::Admin,
        listen: opts.listen,
        advertise,
        seeds: Vec::new(),
        created_ms: wall_ms(),
    };
    data_dir.write_identity(&Identity {
        ca_pem: &cert_to_pem(&ca.cert_der),
        ca_key_pem: Some(&ca.key.serialize_pem()),
        node_pem: &cert_to_pem(&node_cert),
        node_key_pem: &node_key.serialize_pem(),
        tokens: Some(&book),
        record: &record,
    })?;
    Ok(token)
}

/// `--cert-validity`, checked: from a minute up to the CA's own lifespan.
fn cert_validity(validity: std::time::Duration) -> Result<time::Duration> {
    let ca = CA_VALIDITY.unsigned_abs();
    if validity < MIN_CERT_VALIDITY || validity > ca {
        return Err(Error::Invalid(format!(
            "--cert-validity {}s is out of range: give between 1m and {}d (the cluster CA's own lifespan); nodes renew at two thirds of it",
            validity.as_secs(),
            ca.as_secs() / 86_400
        )));
    }
    time::Duration::try_from(validity).map_err(|e| Error::Invalid(format!("--cert-validity: {e}")))
}

/// The advertise address: given, or the listen address when it names a specific IP.
pub fn resolve_advertise(listen: SocketAddr, advertise: Option<SocketAddr>) -> Result<SocketAddr> {
    match advertise {
        Some(a) if a.ip().is_unspecified() => Err(Error::Invalid(format!(
            "--advertise {a} is not an address other hosts can reach; give this host's IP, e.g. --advertise 192.168.1.10:{}",
            a.port()
        ))),
        Some(a) => Ok(a),
        None if !listen.ip().is_unspecified() => Ok(listen),
        None => Err(Error::Invalid(format!(
            "--listen {listen} binds every interface, so say which address other hosts reach this one at: --advertise IP:{}",
            listen.port()
        ))),
    }
}
