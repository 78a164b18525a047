//! Pure decision logic.

pub mod check;
pub mod cluster_rollback;
pub mod converge;
pub mod ejection;
pub mod health;
pub mod lock;
pub mod membership;
pub mod orphan;
pub mod regression;
pub mod rollout;
pub mod routing;
pub mod slots;
pub mod supervise;
pub mod tokens;
