//! Regression judgement of one updated host: its new release's signals against what its old
//! release showed before the flip. Pure: the rollout driver samples both through the host's
//! `Services` answer and feeds them here.
//!
//! ## Rules (thresholds from `[service.NAME.rollout]`)
//! - A crash loop, or health failing, is a regression at once.
//! - With at least `min_requests` in the window: a 5xx share above `max_error_rate` and above
//!   `error_ratio` × the old release's share is a regression.
//! - With at least `min_requests` in the window: a p99 above `p99_ratio` × the old release's p99
//!   and above `p99_floor` is a regression (the floor keeps microsecond jitter on an idle host
//!   from rolling a cluster back).

use halley_proto::deploy::{Health, Signals};
use halley_proto::spec::RolloutPolicy;

/// What the watcher sees of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Requests, 5xx and latency over the last window.
    pub signals: Signals,
    /// Health.
    pub health: Option<Health>,
    /// Crash-looping.
    pub crash_loop: bool,
}

/// `Some(why)` when `now` (the new release) regressed against `baseline` (the old one).
pub fn judge(baseline: &Sample, now: &Sample, policy: &RolloutPolicy) -> Option<String> {
    if now.crash_loop {
        return Some("crash loop (5 exits within 60 s)".into());
    }
    if now.health == Some(Health::Unhealthy) {
        return Some("health check failing".into());
    }
    let s = &now.signals;
    if s.requests < u64::from(policy.min_requests) {
        return None;
    }
    let rate = s.errors as f64 / s.requests as f64;
    let old = &baseline.signals;
    let old_rate = if old.requests > 0 {
        old.errors as f64 / old.requests as f64
    } else {
        0.0
    };
    if rate > policy.max_error_rate.fraction() && rate > f64::from(policy.error_ratio) * old_rate {
        return Some(format!(
            "5xx {:.1}% of {} requests > {} and > {}x the old release's {:.1}%",
            rate * 100.0,
            s.requests,
            policy.max_error_rate,
            policy.error_ratio,
            old_rate * 100.0
        ));
    }
    let floor_us = policy.p99_floor.0 * 1000;
    if old.p99_us > 0 && s.p99_us > floor_us && s.p99_us > u64::from(policy.p99_ratio) * old.p99_us
    {
        return Some(format!(
            "p99 {:.1} ms > {}x the pre-deploy {:.1} ms",
            s.p99_us as f64 / 1000.0,
            policy.p99_ratio,
            old.p99_us as f64 / 1000.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64, p99_us: u64) -> Sample {
        Sample {
            signals: Signals {
                requests,
                errors,
                p99_us,
                ..Signals::default()
            },
            health: Some(Health::Healthy),
            crash_loop: false,
        }
    }

    #[test]
    fn thresholds() {
        let p = RolloutPolicy::default();
        let old = sample(1000, 2, 5_000);
        assert_eq!(
            judge(&old, &sample(1000, 5, 6_000), &p),
            None,
            "0.5% is under 1%"
        );
        let why = judge(&old, &sample(1000, 50, 6_000), &p).unwrap();
        assert!(why.starts_with("5xx 5.0% of 1000 requests > 1%"), "{why}");
        // Above 1% but not above 2x an already-erroring old release.
        let noisy = sample(1000, 40, 5_000);
        assert_eq!(judge(&noisy, &sample(1000, 50, 5_000), &p), None);
        let why = judge(&old, &sample(1000, 0, 200_000), &p).unwrap();
        assert!(why.starts_with("p99 200.0 ms > 2x"), "{why}");
        // Jitter under the 50 ms floor is not a regression.
        assert_eq!(
            judge(&sample(1000, 0, 300), &sample(1000, 0, 2_000), &p),
            None
        );
        // Too few requests to judge rates.
        assert_eq!(judge(&old, &sample(10, 10, 900_000), &p), None);
        let mut down = sample(0, 0, 0);
        down.crash_loop = true;
        assert!(judge(&old, &down, &p).unwrap().contains("crash loop"));
        down.crash_loop = false;
        down.health = Some(Health::Unhealthy);
        assert!(judge(&old, &down, &p).unwrap().contains("health"));
    }
}
