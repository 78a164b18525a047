//! Health judgement of one slot from its check results. Pure: the driver runs the probes and
//! passes each result with `now`.
//!
//! ## Rules (Docker's, with Halley's deadline)
//! - A new process is `starting`. `healthy_threshold` consecutive passes make it `healthy`.
//! - Failures during `start_period` do not count. After it, `unhealthy_threshold` consecutive
//!   failures make a slot `unhealthy` (a starting slot too: its deadline has passed).
//! - An unhealthy slot recovers with `healthy_threshold` consecutive passes.
//! - A crash loop (reported by the supervisor) makes the slot unhealthy whatever its checks say,
//!   until the loop ends.

use halley_proto::deploy::Health;
use halley_proto::spec::HealthSpec;

/// Judges one slot's health.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    start_period_ms: u64,
    started_ms: u64,
    passes: u32,
    failures: u32,
    judged: Health,
    crash_loop: bool,
    last_output: String,
}

impl HealthTracker {
    /// A tracker for a process started at `now`.
    pub fn new(spec: &HealthSpec, now: u64) -> Self {
        Self {
            healthy_threshold: spec.healthy_threshold,
            unhealthy_threshold: spec.unhealthy_threshold,
            start_period_ms: spec.start_period.0,
            started_ms: now,
            passes: 0,
            failures: 0,
            judged: Health::Starting,
            crash_loop: false,
            last_output: String::new(),
        }
    }

    /// A tracker for a process found running after a node restart: it served before, so it is
    /// judged by the unhealthy threshold at once (no start period).
    pub fn adopted(spec: &HealthSpec, now: u64) -> Self {
        Self::new(spec, now.saturating_sub(spec.start_period.0))
    }

    /// The process was restarted after a crash: back to `starting` with a fresh start period.
    pub fn restarted(&mut self, now: u64) {
        self.started_ms = now;
        self.passes = 0;
        self.failures = 0;
        self.judged = Health::Starting;
    }

    /// Records one check result; returns the health after it.
    pub fn observe(&mut self, passed: bool, output: &str, now: u64) -> Health {
        if passed {
            self.passes += 1;
            self.failures = 0;
            if self.passes >= self.healthy_threshold {
                self.judged = Health::Healthy;
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            self.last_output = output.to_owned();
            let in_start_period = now < self.started_ms + self.start_period_ms;
            let counts = self.judged == Health::Healthy || !in_start_period;
            if counts && self.failures >= self.unhealthy_threshold {
                self.judged = Health::Unhealthy;
            }
        }
        self.health()
    }

    /// The supervisor says the process is (or no longer is) crash-looping.
    pub fn set_crash_loop(&mut self, on: bool) {
        self.crash_loop = on;
    }

    /// True once the start period is over and the slot has never been healthy: a deploy waiting
    /// for it should give up.
    pub fn missed_deadline(&self, now: u64) -> bool {
        self.judged != Health::Healthy && now >= self.started_ms + self.start_period_ms
    }

    /// The current judgement.
    pub fn health(&self) -> Health {
        if self.crash_loop {
            Health::Unhealthy
        } else {
            self.judged
        }
    }

    /// Whether the supervisor reported a crash loop.
    pub fn crash_loop(&self) -> bool {
        self.crash_loop
    }

    /// The output of the last failed check.
    pub fn last_failure(&self) -> &str {
        &self.last_output
    }
}

#[cfg(test)]
mod tests {
    use halley_proto::spec::Millis;

    use super::*;

    fn spec() -> HealthSpec {
        HealthSpec {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            start_period: Millis(1000),
            ..HealthSpec::default()
        }
    }

    #[test]
    fn passes_make_healthy_and_failures_in_start_period_do_not_count() {
        let mut t = HealthTracker::new(&spec(), 0);
        for now in [100, 200, 300, 400] {
            assert_eq!(t.observe(false, "refused", now), Health::Starting);
        }
        assert!(!t.missed_deadline(999));
        assert_eq!(t.observe(true, "", 500), Health::Starting);
        assert_eq!(t.observe(true, "", 600), Health::Healthy);
        assert_eq!(t.observe(false, "x", 700), Health::Healthy);
        assert_eq!(t.observe(false, "x", 800), Health::Healthy);
        assert_eq!(t.observe(false, "503", 900), Health::Unhealthy);
        assert_eq!(t.last_failure(), "503");
        assert_eq!(t.observe(true, "", 1000), Health::Unhealthy);
        assert_eq!(t.observe(true, "", 1100), Health::Healthy);
    }

    #[test]
    fn a_slot_that_never_passes_misses_its_deadline() {
        let mut t = HealthTracker::new(&spec(), 0);
        for now in [1000, 1100] {
            assert_eq!(t.observe(false, "x", now), Health::Starting);
        }
        assert_eq!(t.observe(false, "x", 1200), Health::Unhealthy);
        assert!(t.missed_deadline(1200));
    }

    #[test]
    fn crash_loop_overrides_checks() {
        let mut t = HealthTracker::new(&spec(), 0);
        t.observe(true, "", 1);
        t.observe(true, "", 2);
        t.set_crash_loop(true);
        assert_eq!(t.health(), Health::Unhealthy);
        t.set_crash_loop(false);
        assert_eq!(t.health(), Health::Healthy);
    }
}
