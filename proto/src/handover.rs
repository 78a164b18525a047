//! `upgrade`: the messages that replace a running daemon with another binary, between the CLI
//! and the daemon (on the admin socket) and between the old daemon and the new one (on a
//! socket pair the old one hands its child).
//!
//! ## Guarantees
//! - These frames carry [`HANDOVER_VERSION`](crate::codec::HANDOVER_VERSION), which no build
//!   changes: the two sides of an upgrade are different builds, whose wire protocol and disk
//!   format may differ. For the same reason [`Handover`] only ever gains variants at its end,
//!   and no variant's fields change.
//!
//! ## Non-goals
//! The descriptors handed over travel beside these frames (`SCM_RIGHTS`), not in them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One step of an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    /// CLI → daemon: replace yourself with `binary` (`None`: the binary the daemon was started
    /// from, as it is on disk now).
    Upgrade {
        /// An absolute path.
        binary: Option<String>,
    },
    /// Daemon → CLI: the new daemon serves and the old one has finished its requests.
    Upgraded {
        /// The old daemon's version and pid.
        from_version: String,
        /// The old daemon's pid.
        old_pid: u32,
        /// The new daemon's version.
        to_version: String,
        /// The new daemon's pid.
        new_pid: u32,
    },
    /// Daemon → CLI: the upgrade did not happen; the old daemon serves on.
    Failed {
        /// Why, and what to do.
        message: String,
    },
    /// New → old, first: the new binary runs and speaks this protocol.
    Hello {
        /// Its version.
        version: String,
        /// Its pid.
        pid: u32,
    },
    /// Old → new: the descriptors sent with this frame, in order: one listening TCP socket per
    /// entry point, then the mesh's UDP socket if `mesh`, then the metrics listener if
    /// `metrics`. The old daemon has stopped everything but its entry points and let go of
    /// the data dir.
    Offer {
        /// Each entry point's address, in the order of the descriptors.
        entry_points: Vec<SocketAddr>,
        /// The mesh's UDP socket follows.
        mesh: bool,
        /// The metrics listener follows.
        metrics: bool,
    },
    /// New → old: the new daemon serves (admin socket, mesh, services adopted, entry points
    /// accepting); the old one may stop accepting and finish.
    Serving,
    /// CLI → daemon (an admin's): upgrade every live member, one at a time, this node last,
    /// shipping `binary` over the mesh.
    UpgradeAll {
        /// An absolute path (`None`: the daemon's own binary).
        binary: Option<String>,
    },
    /// Daemon → CLI, before the last answer: how far `UpgradeAll` got.
    Progress {
        /// One line for the operator.
        line: String,
    },
}
