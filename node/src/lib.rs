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

pub mod admin;
pub mod backup_cli;
pub mod backups;
pub mod cli;
pub mod cluster_rollback;
pub mod config;
pub mod converge;
pub mod daemon;
pub mod datadir;
pub mod demo;
pub mod demo_load;
pub mod demo_service;
pub mod deploy;
pub mod duration;
pub mod ejection;
pub mod error;
pub mod framing;
pub mod gossip_transport;
pub mod health;
pub mod histogram;
pub mod http_headers;
pub mod http_proxy;
pub mod init;
pub mod join;
pub mod membership;
pub mod mesh;
pub mod mesh_hop;
pub mod peers;
pub mod pki;
pub mod probe;
pub mod process;
pub mod progress;
pub mod random;
pub mod regression;
pub mod releases;
pub mod rollout;
pub mod rollout_driver;
pub mod rollout_host;
pub mod rollout_status;
pub mod routes;
pub mod routing;
#[cfg(test)]
mod scenario;
pub mod service;
pub mod service_handle;
pub mod service_host;
pub mod services;
pub mod slots;
pub mod state;
pub mod state_flow;
pub mod status;
pub mod supervise;
pub mod tcp_proxy;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use error::{Error, Result};

/// This build's version, published in gossip.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
