//! Restart policy for a slot's process. Pure: the driver reports each exit with `now` and how
//! long the process ran, and gets back how long to wait before restarting it.
//!
//! ## Rules
//! - Back-off doubles from 200 ms up to 10 s for processes that die young; a process that ran
//!   for at least 30 s restarts after the base delay again.
//! - A crash loop is 5 exits within 60 s: the slot is then unhealthy (it gets no traffic from a
//!   flip, and a deploy waiting for it fails), and restarts continue at the longest back-off until
//!   the process has stayed up for 60 s.

use std::collections::VecDeque;

/// Restart timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay.
    pub base_ms: u64,
    /// Longest delay.
    pub max_ms: u64,
    /// Exits within `loop_window_ms` that make a crash loop.
    pub loop_exits: usize,
    /// The crash-loop window.
    pub loop_window_ms: u64,
    /// A process that ran this long resets the back-off.
    pub reset_after_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            base_ms: 200,
            max_ms: 10_000,
            loop_exits: 5,
            loop_window_ms: 60_000,
            reset_after_ms: 30_000,
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Wait this long, then start the process again.
    pub delay_ms: u64,
    /// Whether the slot is now crash-looping.
    pub crash_loop: bool,
}

/// Exit history of one slot.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    policy: RestartPolicy,
    exits: VecDeque<u64>,
    streak: u32,
    restarts: u32,
}

impl Supervisor {
    /// A supervisor with `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The process exited at `now` after running `ran_ms`.
    pub fn exited(&mut self, now: u64, ran_ms: u64) -> Restart {
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > self.policy.loop_window_ms)
        {
            self.exits.pop_front();
        }
        if ran_ms >= self.policy.reset_after_ms {
            self.streak = 0;
        }
        let crash_loop = self.exits.len() >= self.policy.loop_exits;
        let delay_ms = if crash_loop {
            self.policy.max_ms
        } else {
            let shift = self.streak.min(16);
            (self.policy.base_ms << shift).min(self.policy.max_ms)
        };
        self.streak += 1;
        self.restarts += 1;
        Restart {
            delay_ms,
            crash_loop,
        }
    }

    /// Whether the process, running since `started` at `now`, has outlived a crash loop.
    pub fn recovered(&self, started: u64, now: u64) -> bool {
        now.saturating_sub(started) >= self.policy.loop_window_ms
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_crash_loop() {
        let mut s = Supervisor::new(RestartPolicy::default());
        let delays: Vec<Restart> = (0..5).map(|i| s.exited(i * 1000, 300)).collect();
        let ms: Vec<u64> = delays.iter().map(|r| r.delay_ms).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 10_000]);
        assert!(!delays[3].crash_loop);
        assert!(delays[4].crash_loop);
        assert_eq!(s.restarts(), 5);
    }

    #[test]
    fn exits_spread_out_are_no_loop_and_long_runs_reset_backoff() {
        let mut s = Supervisor::new(RestartPolicy::default());
        for i in 0..10 {
            let r = s.exited(i * 61_000, 40_000);
            assert_eq!(r.delay_ms, 200);
            assert!(!r.crash_loop);
        }
        assert!(s.recovered(0, 60_000));
        assert!(!s.recovered(0, 59_999));
    }
}
