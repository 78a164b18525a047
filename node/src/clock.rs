//! The clocks, read in one place. Engines never read them: drivers pass `now` in.
//!
//! Wall-clock time is for records that need a date (history, backups, tokens) and for what is
//! compared across nodes. Monotonic time ([`mono_ms`]) is for timeouts within one process (the
//! orphan rule): an NTP step does not move it. Known limit: the rollout engine's deadlines
//! still run on the wall clock (they are journaled and resumed on another node, where a
//! resume restarts every wait from its own `now`).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds on this process's monotonic clock (from its first reading).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
