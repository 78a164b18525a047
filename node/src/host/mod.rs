//! # host: this node's services
//!
//! [`services::Services`] holds one [`handle::ServiceHandle`] per service; each runs an actor
//! ([`actor`]) that owns the service's slots engine, its two slot processes ([`slot`],
//! [`process`]), their probes ([`probe`]) and its entry point; and the service's state work:
//! snapshots, restores, migrations ([`state`], [`backups`]).
//!
//! ## Guarantees
//! - Steps of one service run one at a time, in order, fenced by epoch; the service record is
//!   saved before a step is answered, so a restarted node adopts exactly what was running.
//!
//! ## May import
//! `error`, `clock`, `random`, `engine`, `store`, `mesh`, `cluster`, `proxy`.

pub mod actor;
pub mod backups;
pub mod confined;
pub mod drains;
pub mod handle;
pub mod handover;
pub mod logs;
pub mod probe;
pub mod process;
pub mod removal;
pub mod services;
pub mod slot;
pub mod state;
pub mod strays;
pub mod view;
