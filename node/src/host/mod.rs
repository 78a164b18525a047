//! This node's services.

pub mod actor;
pub mod backups;
pub mod handle;
pub mod probe;
pub mod process;
pub mod services;
pub mod slot;
pub mod state;
