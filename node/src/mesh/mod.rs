//! The QUIC mesh.

pub mod endpoint;
pub mod framing;
pub mod gossip_transport;
pub mod pki;
pub mod tls;
