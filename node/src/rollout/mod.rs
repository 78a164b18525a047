//! # rollout: coordinating rollouts
//!
//! The coordinator side of deploys, run by whichever node the CLI asked: starting one
//! ([`start`]: `deploy`, `--resume`, `rollback`), the lock and epoch ([`lock`]), the driver
//! around the rollout engine ([`driver`]), one host's steps ([`host_steps`]), the cluster
//! rollback, a rollout in rollback mode ([`rollback`]), removing a service, a rollout in remove mode ([`remove`]), snapshots and migrations around a deploy ([`state_flow`]),
//! what every node knows of rollouts ([`status`]), history ([`history`]), and a node catching
//! up with a rollout it missed ([`converge`]). All of it works through the
//! [`context::Coordinator`] handle: hosts, itself included, are reached through the cluster
//! client only.
//!
//! ## Guarantees
//! - The decisions are the engines' ([`crate::engine::rollout`], [`crate::engine::lock`],
//!   [`crate::engine::rollback`], [`crate::engine::converge`]); this layer gathers their
//!   inputs and carries out their actions.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`, `store`, `mesh`, `cluster`, `proxy`, `host`.

pub mod context;
pub mod converge;
pub mod driver;
pub mod history;
pub mod host_steps;
pub mod lock;
pub mod remove;
pub mod rollback;
pub mod start;
pub mod state_flow;
pub mod status;
