//! The command line.

pub mod backup;
pub mod commands;
pub mod config;
pub mod demo;
pub mod deploy;
pub mod duration;
pub mod progress;
pub mod render;
pub use commands::{Cli, DEFAULT_PORT, main};
