//! # daemon: the running node
//!
//! `halley-node run` ([`run`]) wires every layer together; [`node::Node`] is the one dispatcher
//! of requests from peers, from this node itself and from the CLI's admin socket ([`admin`]),
//! with peers' requests answered in [`peers`]; [`renewal`] keeps its certificate current;
//! [`metrics`] serves `/metrics` ([`exposition`] says what it contains); [`forget`] drops a gone
//! node from `status`; [`upgrade`] and [`takeover`] replace the daemon with another binary,
//! handing its sockets over ([`fd_pass`]) without refusing a request, and [`upgrade_all`]
//! rolls a binary across the cluster.
//!
//! ## Guarantees
//! - One daemon per data dir; each start uses a new, larger generation; a graceful stop
//!   announces `left` to every peer.
//!
//! ## May import
//! every layer below: `error`, `clock`, `random`, `engine`, `store`, `mesh`, `cluster`,
//! `proxy`, `host`, `rollout`.

pub mod admin;
pub mod exposition;
pub mod fd_pass;
pub mod forget;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod peers;
pub mod removal;
pub mod renewal;
pub mod run;
pub mod takeover;
pub mod upgrade;
pub mod upgrade_all;
