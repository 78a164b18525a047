//! The wall clock, read in one place. Engines never read it: drivers pass `now` in.
//!
//! Wall-clock time is only for records that need a date (history, backups, tokens) and for
//! what is compared across nodes; deadlines on one node use a monotonic clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
