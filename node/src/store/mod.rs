//! The data dir and everything on disk.

pub mod datadir;
pub mod journal;
pub mod releases;
