//! The clocks, read in one place. Engines never read them: drivers pass `now` in.
//!
//! Wall-clock time is for records that need a date (history, backups, tokens) and for what is
//! compared across nodes. Monotonic time ([`mono_ms`]) is for timeouts within one process (the
//! orphan rule, drain holds): an NTP step does not move it. A rollout's times are both: they
//! are journaled and shown as dates, and its deadlines (bake, drain wait, pause) must not move
//! when the wall clock steps, so its driver reads a [`Steady`] clock: the wall clock read once
//! when the driver starts, advanced by the monotonic clock. A resume on another node anchors its
//! own, and restarts every wait from its own `now`.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds on this process's monotonic clock (from its first reading).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Unix milliseconds that advance with the monotonic clock from when it was made: a wall-clock
/// step (NTP, a user's `date -s`) neither ends a deadline early nor delays it, and its readings
/// still read as dates (off from the wall clock only by steps taken during its life).
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    wall0: u64,
    start: Instant,
}

impl Steady {
    /// Anchors at the wall clock now.
    pub fn new() -> Self {
        Self {
            wall0: wall_ms(),
            start: Instant::now(),
        }
    }

    /// Now, in Unix milliseconds on this clock.
    pub fn now_ms(&self) -> u64 {
        self.wall0
            .saturating_add(self.start.elapsed().as_millis() as u64)
    }
}

impl Default for Steady {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
