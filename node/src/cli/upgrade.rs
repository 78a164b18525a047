//! `halley-node upgrade [--binary PATH] [--all]`: replaces this node's daemon with another
//! binary (by default the one at the daemon's own path, as it is on disk now) without a refused
//! or failed request (see [`crate::daemon::upgrade`]); with `--all`, every live member's, one
//! at a time ([`crate::daemon::upgrade_all`]).
//!
//! ## Guarantees
//! - The CLI speaks the handover frames every build reads, so a new binary's CLI can upgrade
//!   an old daemon (and the other way round).
//! - The command succeeds only once the new daemon serves and the old one has finished its
//!   connections; otherwise it fails with the node's reason, and the old daemon serves on.

use std::path::PathBuf;

use halley_proto::handover::Handover;

use crate::daemon::admin;
use crate::error::{Error, Result};
use crate::store::datadir::DataDir;

/// What `upgrade` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeArgs {
    /// The new halley-node [default: the daemon's own path, e.g. after copying a new build over
    /// it]. An absolute path on this machine.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Upgrade every live member, one at a time and this node last, shipping the binary over
    /// the mesh (from an admin node).
    #[arg(long)]
    pub all: bool,
}

/// Runs `upgrade` and returns the line to print.
pub async fn run(data_dir: &DataDir, args: UpgradeArgs) -> Result<String> {
    let binary = match args.binary {
        None => None,
        Some(path) => {
            let absolute = std::path::absolute(&path).map_err(|e| {
                Error::Invalid(format!("cannot make {} absolute: {e}", path.display()))
            })?;
            Some(absolute.to_string_lossy().into_owned())
        }
    };
    let progress = |line: &str| eprintln!("{line}");
    match admin::call_upgrade(data_dir, binary, args.all, progress).await? {
        Handover::Upgraded {
            from_version,
            old_pid,
            to_version,
            new_pid,
        } => Ok(format!(
            "upgraded: halley-node {to_version} (pid {new_pid}) serves; {from_version} (pid {old_pid}) finished its requests and stopped"
        )),
        Handover::Failed { message } => Err(Error::Process(format!("upgrade failed: {message}"))),
        other => Err(Error::Protocol(format!(
            "the node answered the upgrade with {other:?}"
        ))),
    }
}
