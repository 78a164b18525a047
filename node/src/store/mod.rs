//! The data dir and what is on disk.

pub mod datadir;
pub mod releases;
