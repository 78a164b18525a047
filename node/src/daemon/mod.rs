//! The running node.

pub mod admin;
pub mod node;
pub mod peers;
pub mod run;
