//! # engine: pure decision logic
//!
//! Every decision a node makes that can be made without IO: blue/green slots, health,
//! supervision, check verdicts, the orphan rule, who holds a node drained, rollouts (batches, bake, rollback), the cluster
//! rollback, the rollout lock and epochs, which gossiped rollouts count, regressions, convergence, routing, ejection,
//! membership, release pins, certificate renewal, join tokens and the handshake gate. Engines take events and `now` (milliseconds the driver supplies)
//! and return actions; where one needs a timer it says when (`poll_timeout`).
//!
//! ## Guarantees
//! - No IO, no clock reads, no threads, no async: `node/tests/layers.rs` fails the build's tests
//!   if a file here names tokio, `std::fs`/`net`/`process`/`thread`/`env`, `Instant::now` or
//!   `SystemTime::now`. The same inputs always give the same outputs.
//! - The engines that decide over time or over several inputs (slots, rollout, lock, cluster
//!   rollback, check, orphan, drain, converge, routing, membership, handshakes) have data-driven scenario scripts
//!   in `node/tests/scenarios/<engine>/` (`UPDATE_GOLDENFILES=1 cargo test -p halley-node`
//!   rewrites their expectations); the others have unit tests.
//!
//! ## May import
//! `crate::error` and `halley_proto` only (and `crate::scenario` in tests).

pub mod check;
pub mod converge;
pub mod drain;
pub mod ejection;
pub mod fence;
pub mod gossip_trust;
pub mod handshakes;
pub mod health;
pub mod lock;
pub mod membership;
pub mod orphan;
pub mod regression;
pub mod release_pin;
pub mod removal;
pub mod renewal;
pub mod restore_point;
pub mod rollback;
pub mod rollout;
pub mod routing;
pub mod slots;
pub mod supervise;
pub mod tokens;
