//! This node in the cluster.

pub mod init;
pub mod join;
