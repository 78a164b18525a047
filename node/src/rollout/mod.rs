//! Rollouts.

pub mod cluster_rollback;
pub mod context;
pub mod converge;
pub mod driver;
pub mod history;
pub mod host_steps;
pub mod lock;
pub mod start;
pub mod state_flow;
pub mod status;
