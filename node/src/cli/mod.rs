//! # cli: the command line
//!
//! clap commands and their dispatch ([`commands`]), talking to the local daemon over its admin
//! socket: deploys, rollbacks and status ([`deploy`], [`progress`], [`render`]), backups
//! ([`backup`]), slot logs ([`logs`]), replacing the daemon ([`upgrade`]), `halley.toml` ([`config`]), durations ([`duration`]), and the demo
//! ([`demo`]). The only place that uses anyhow.
//!
//! ## May import
//! every layer.

pub mod backup;
pub mod commands;
pub mod config;
pub mod demo;
pub mod deploy;
pub mod dry_run;
pub mod duration;
pub mod logs;
pub mod progress;
pub mod render;
pub mod upgrade;
pub use commands::{Cli, DEFAULT_PORT, main};
