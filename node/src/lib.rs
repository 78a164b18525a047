//! # halley-node
//!
//! The Halley daemon, its CLI and the library they are built from.
//!
//! ## Layers (see `docs/architecture.md`)
//! - [`cli`]: argument parsing and output; the only place that uses anyhow.
//! - [`daemon`]: the driver of a running node: wires [`mesh`], gossip ([`gossip_transport`] into
//!   chitchat), the admin socket ([`admin`]) and the [`service`], ticks the [`membership`] view.
//! - Pure logic, no IO and no clock: [`membership`] (status view), [`tokens`] (join tokens).
//! - Identity: [`pki`] (CA, certificates, CSRs), [`tls`] (rustls/quinn configs), [`init`], [`join`],
//!   [`datadir`] (layout, crash-safe writes).

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
