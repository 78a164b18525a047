//! # halley-proto
//!
//! Every type that crosses Halley's wire (QUIC streams between nodes, the admin unix socket) or its
//! disk (records in the data dir), and [`codec`], the one module that turns them into bytes.
//!
//! ## What this crate guarantees
//! - A frame is `magic | version | code | length | body`; see [`codec`]. Decoding never panics and
//!   never allocates more than the limit of the frame's kind, whatever the bytes claim.
//! - Message codes are stable: a code, once shipped, keeps its meaning. New messages get new codes.
//! - Values that have rules ([`NodeName`], [`JoinToken`]) are parsed once into types that cannot hold
//!   an invalid value ("parse, don't validate").
//!
//! ## What it does not do
//! No IO, no clock, no crypto: the node crate reads sockets and files, hashes secrets and checks
//! certificates, then hands bytes and parsed values to this crate.

pub mod codec;
pub mod deploy;
pub mod disk;
pub mod error;
pub mod gossip;
pub mod handover;
pub mod hex;
pub mod message;
pub mod name;
pub(crate) mod quantity;
pub mod role;
pub mod rollout;
pub mod size;
pub mod spec;
pub mod token;

pub use codec::{Header, Limit};
pub use error::Error;
pub use message::Message;
pub use name::NodeName;
pub use role::Role;
pub use token::JoinToken;
