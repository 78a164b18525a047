//! # cluster: this node in the cluster
//!
//! The [`client::ClusterClient`] (this node's name, the mesh, the membership view, gossip, the
//! draining flag, calls to any member including itself), what this node reads from and writes
//! to gossip ([`gossip`]), admitting new nodes ([`admission`]), and making an identity
//! ([`init`], [`join`]).
//!
//! ## Guarantees
//! - A call to this node's own name is answered in-process by the same handler a peer reaches.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`, `store`, `mesh`.

pub mod admission;
pub mod client;
pub mod gossip;
pub mod init;
pub mod join;
