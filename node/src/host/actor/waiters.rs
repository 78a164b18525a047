//! The steps a host answers later: a check waits until the next slot is healthy (or fails), a
//! drain until the old slot has drained. At most one of each waits; a newer request replaces
//! the older, which is answered with a conflict.

use halley_proto::deploy::{Color, Health, SlotRole, StepReply};
use halley_proto::message::ErrorKind;
use tokio::sync::oneshot;
use tracing::warn;

use super::Host;
use crate::engine::check;
use crate::error::error_reply;
use crate::host::handle::{StepResult, from_refused};

pub(super) struct CheckWaiter {
    pub(super) reply: oneshot::Sender<StepResult>,
    pub(super) slot: Color,
    pub(super) started_ms: u64,
    /// Part of a revert that had to start the committed release cold: flip back when healthy.
    pub(super) flip_back: bool,
}

pub(super) struct DrainWaiter {
    pub(super) reply: oneshot::Sender<StepResult>,
    pub(super) slot: Color,
}

impl Host {
    pub(super) fn answer_drain(&mut self, now: u64) {
        let Some(waiter) = &self.drain else { return };
        let slot = waiter.slot;
        if self.engine.slot(slot).role == SlotRole::Draining {
            return;
        }
        let Some(waiter) = self.drain.take() else {
            return;
        };
        let rt = &mut self.slots[slot.index()];
        let (completed, cut, took_ms) = match rt.drain.take() {
            Some(d) => {
                let finished = rt.upstream.as_ref().map_or(0, |u| u.finished());
                let done = d
                    .completed
                    .unwrap_or_else(|| finished.saturating_sub(d.finished_at_start));
                (done, d.cut, now.saturating_sub(d.started_ms))
            }
            None => (0, 0, 0),
        };
        let _ = waiter.reply.send(Ok(StepReply::Drained {
            slot: Some(slot),
            completed,
            cut,
            took_ms,
        }));
    }

    pub(super) fn answer_check(&mut self, now: u64) {
        let Some(waiter) = &self.check else { return };
        let slot = waiter.slot;
        let state = self.engine.slot(slot);
        let rt = &self.slots[slot.index()];
        let tracker = rt.tracker.as_ref();
        let failure = match check::verdict(&check::Slot {
            color: slot,
            role: state.role,
            health: state.health,
            version: state.version.as_ref(),
            pending: self.engine.pending() == Some(slot),
            crash_loop: tracker.is_some_and(|t| t.crash_loop()),
            missed_deadline: tracker.is_none_or(|t| t.missed_deadline(now)),
            last_failure: tracker.map_or("", |t| t.last_failure()),
            last_exit: rt.last_exit.as_deref(),
        }) {
            check::Verdict::Wait => return,
            check::Verdict::Healthy => None,
            check::Verdict::Failed(why) => Some(why),
        };
        let Some(waiter) = self.check.take() else {
            return;
        };
        let waited_ms = now.saturating_sub(waiter.started_ms);
        let result = match failure {
            None if waiter.flip_back => match self.engine.flip_back(now) {
                Ok(actions) => {
                    self.apply(actions);
                    Ok(StepReply::Reverted {
                        serving: self.serving(),
                    })
                }
                Err(r) => Err(from_refused(r)),
            },
            None => Ok(StepReply::Healthy { slot, waited_ms }),
            Some(message) => {
                warn!(service = %self.record.name, %slot, %message, "health check failed");
                if !waiter.flip_back {
                    // A release that never became healthy never gets traffic: stop it now.
                    let (_, actions) = self.engine.revert(now);
                    self.apply(actions);
                }
                Err(error_reply(ErrorKind::CheckFailed, message))
            }
        };
        let _ = waiter.reply.send(result);
    }

    pub(super) fn begin_check(&mut self, reply: oneshot::Sender<StepResult>, flip_back: bool) {
        // A resumed deploy checks a release it already flipped to: healthy is enough.
        if !flip_back
            && let Some(active) = self.engine.flipped_uncommitted(None)
            && self.engine.slot(active).health == Health::Healthy
        {
            let _ = reply.send(Ok(StepReply::Healthy {
                slot: active,
                waited_ms: 0,
            }));
            return;
        }
        let Some(slot) = self.engine.next() else {
            let _ = reply.send(Err(error_reply(
                ErrorKind::Conflict,
                "no started release to check; run start-next first",
            )));
            return;
        };
        if let Some(old) = self.check.replace(CheckWaiter {
            reply,
            slot,
            started_ms: self.now(),
            flip_back,
        }) {
            let _ = old.reply.send(Err(error_reply(
                ErrorKind::Conflict,
                "another check request replaced this one",
            )));
        }
        let now = self.now();
        self.answer_check(now);
    }
}
