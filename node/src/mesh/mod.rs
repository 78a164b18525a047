//! # mesh: the QUIC transport between nodes
//!
//! One quinn endpoint per node ([`endpoint`]) with mutual TLS from the cluster CA ([`tls`],
//! [`pki`]), one framed message per stream ([`framing`]), and chitchat's transport over it
//! ([`gossip_transport`]), which lets a member speak only for itself ([`gossip_filter`]).
//!
//! ## Guarantees
//! - Every request is checked against its access rule (`Message::access`) with the caller's
//!   certificate before a handler sees it; a frame is bounded before its body is read.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`, `store`.

pub mod endpoint;
pub mod framing;
pub mod gossip_filter;
pub mod gossip_transport;
pub mod pki;
pub mod tls;
