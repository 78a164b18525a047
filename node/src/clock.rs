//! The wall clock, read in one place. Engines never read it: drivers pass `now` in.
//!
//! Wall-clock time is for records that need a date (history, backups, tokens) and for what is
//! compared across nodes. Known limit: the rollout engine's deadlines and the orphan rule also
//! run on it today (an NTP step moves them); the rollback-safety issue moves them to a monotonic
//! clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
