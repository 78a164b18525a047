//! This node in the cluster.

pub mod admission;
pub mod client;
pub mod gossip;
pub mod init;
pub mod join;
