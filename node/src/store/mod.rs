//! # store: the data dir and everything on disk
//!
//! The data dir's layout, modes and crash-safe writes ([`datadir`]), the artifact store and
//! unpacked releases ([`releases`]), rollout journals and history books ([`journal`]), the data dir's disk use
//! ([`disk_use`]), and the sweep that keeps the artifact store bounded ([`sweep`]).
//!
//! ## Guarantees
//! - Records are written temp, fsync, rename: a crash leaves the old or the new record, never a
//!   torn one. Files are 0600 and directories 0700 unless a module says otherwise.
//! - An artifact is stored under its SHA-256 and checked against it; an unpacked release never
//!   writes outside its directory.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`.

pub mod datadir;
pub mod disk_use;
pub mod journal;
pub mod releases;
pub mod sweep;
