//! What a host does by itself when no coordinator finishes its deploy: the orphan rule
//! ([`orphan::decide`]) and the rollback marker that lets it survive a restart.
//!
//! ## Guarantees
//! - A rollback's uncommitted deploy is marked on disk before its `StartNext` is answered and
//!   unmarked only after its commit or revert is saved, so an orphan decision after a restart
//!   commits the target instead of going back to the release being rolled back.
//! - Finishing an orphaned deploy ends only the drain holds of epochs this host has obeyed.

use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::RollbackMarker;
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::spec::ServiceSpec;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::Host;
use crate::clock::mono_ms;
use crate::engine::orphan;
use crate::engine::slots::Reverted;
use crate::error::error_reply;
use crate::host::handle::rollback_name;

impl Host {
    /// A deploy left unfinished with no coordinator in touch for `orphan_timeout` is finished
    /// by the host: a deploy goes back to its committed release, a rollback whose target serves
    /// commits it; either way that rollout's drain hold ends.
    pub(super) fn revert_orphan(&mut self, now: u64) {
        let serving = self.serving();
        let decision = orphan::decide(
            &orphan::Orphan {
                uncommitted: self.engine.uncommitted(),
                checking: self.check.is_some() || self.drain.is_some(),
                rollback_serving: self.rolling_back_to.is_some() && self.rolling_back_to == serving,
                last_contact_ms: self.contact.load(std::sync::atomic::Ordering::Relaxed),
                timeout_ms: self.pending_spec().rollout.orphan_timeout.0,
            },
            mono_ms(),
        );
        let silent = match decision {
            orphan::Decision::Keep => return,
            orphan::Decision::Commit(silent) => {
                if let Ok((version, _, actions)) = self.engine.commit(now) {
                    warn!(service = %self.record.name, silent_ms = silent, %version, "no coordinator for orphan_timeout in a rollback; committing its target, which serves");
                    self.apply(actions);
                    self.committed();
                    let _ = self.mark_rollback(None);
                    self.undrain();
                    return;
                }
                silent
            }
            orphan::Decision::Revert(silent) => silent,
        };
        let _ = self.mark_rollback(None);
        warn!(service = %self.record.name, silent_ms = silent, "no coordinator for orphan_timeout; reverting to the committed release");
        let (outcome, actions) = self.engine.revert(now);
        self.apply(actions);
        if let Reverted::StartCommitted(version) = outcome
            && self.start_next(&version).is_ok()
        {
            let (reply, _) = oneshot::channel();
            self.begin_check(reply, true);
        }
        self.undrain();
    }

    /// The spec of the uncommitted deploy (the release in a slot that is not the committed
    /// one), else the service's.
    fn pending_spec(&self) -> &ServiceSpec {
        let committed = self.engine.committed();
        self.slots
            .iter()
            .zip(halley_proto::deploy::Color::BOTH)
            .filter(|(_, c)| self.engine.slot(*c).running())
            .filter(|(_, c)| self.engine.slot(*c).version.as_ref() != committed)
            .find_map(|(rt, _)| rt.spec.as_ref())
            .unwrap_or(&self.record.spec)
    }

    /// Records (`Some`) or ends (`None`) the rollback whose target this uncommitted deploy
    /// starts, on disk first: a restart must not turn a rollback's orphan into a revert to the
    /// release being rolled back.
    pub(super) fn mark_rollback(
        &mut self,
        target: Option<ReleaseVersion>,
    ) -> Result<(), ErrorReply> {
        let name = rollback_name(&self.record.name);
        let saved = match &target {
            Some(version) => self.ctx.data_dir.write_record(
                &name,
                &RollbackMarker {
                    version: version.clone(),
                },
            ),
            None => {
                let path = self.ctx.data_dir.file(&name);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(crate::error::Error::io("cannot remove", &path)(e))
                    }
                    _ => Ok(()),
                }
            }
        };
        self.rolling_back_to = target;
        saved.map_err(|e| {
            error!(service = %self.record.name, error = %e, "cannot save the rollback marker");
            error_reply(
                ErrorKind::Internal,
                format!(
                    "cannot save the rollback marker of {}: {e}",
                    self.record.name
                ),
            )
        })
    }

    /// The orphaned deploy is finished: the drain holds of the epochs it obeyed end with it.
    fn undrain(&self) {
        self.ctx
            .drains
            .release_orphan(&self.record.name, self.fence.epoch);
    }
}
