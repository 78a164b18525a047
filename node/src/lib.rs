//! # halley-node
//!
//! The Halley daemon, its CLI and the library they are built from. The module tree is the
//! architecture (see `docs/architecture.md`): layer folders, each importing only the layers
//! below it, checked by `node/tests/layers.rs`. Bottom to top:
//!
//! - [`error`] (the crate's one error type), [`clock`] (the wall clock, read in one place),
//!   [`random`] (the OS random source);
//! - [`engine`]: pure decision logic, no IO and no clock;
//! - [`store`]: the data dir and everything on disk;
//! - [`mesh`]: QUIC with mutual TLS, framing, gossip transport;
//! - [`cluster`]: this node in the cluster (membership, gossip, calls to members, admission);
//! - [`proxy`]: entry points, routing, the mesh hop;
//! - [`host`]: this node's services (slots, processes, probes, state);
//! - [`rollout`]: coordinating rollouts, rollbacks and convergence;
//! - [`daemon`]: `run`, the one request dispatcher, the admin socket;
//! - [`cli`]: the command line and the demo; the only user of anyhow.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod host;
pub mod mesh;
pub mod proxy;
pub mod random;
pub mod rollout;
#[cfg(test)]
mod scenario;
pub mod store;

pub use error::{Error, Result};

/// This build's version, published in gossip.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
