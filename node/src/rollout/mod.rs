//! Rollouts.

pub mod cluster_rollback;
pub mod converge;
pub mod driver;
pub mod host_steps;
pub mod state_flow;
pub mod status;
