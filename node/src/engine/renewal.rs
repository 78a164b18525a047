//! When a node renews its certificate: once two thirds of its lifespan (from issue to expiry)
//! have passed, and again soon after a failed attempt, so a certificate is replaced long before
//! it expires however long it lives (a year, or a minute in tests).
//!
//! ## Guarantees
//! - [`due`] is never later than two thirds of the way from issue to expiry.
//! - [`wait`] never sleeps past that point nor longer than [`MAX_WAIT_MS`], so a clock that jumps
//!   (a Pi setting its time from NTP) is noticed within the hour.
//! - A retry after a failure comes within a twentieth of the lifespan (between 1 s and 1 min),
//!   so several attempts fit before expiry.
//!
//! ## Non-goals
//! Choosing an admin to ask, or what to do at expiry (the mesh refuses an expired certificate).

/// Longest sleep between looks at the certificate.
pub const MAX_WAIT_MS: u64 = 60 * 60 * 1000;

/// When a certificate issued at `issued_ms` and expiring at `expires_ms` is due for renewal.
pub fn due(issued_ms: u64, expires_ms: u64) -> u64 {
    issued_ms + expires_ms.saturating_sub(issued_ms) / 3 * 2
}

/// How long to sleep at `now_ms` before looking again (0: renew now).
pub fn wait(now_ms: u64, issued_ms: u64, expires_ms: u64) -> u64 {
    due(issued_ms, expires_ms)
        .saturating_sub(now_ms)
        .min(MAX_WAIT_MS)
}

/// How long to wait after a failed renewal of a certificate that lives `lifespan_ms`.
pub fn retry_after(lifespan_ms: u64) -> u64 {
    (lifespan_ms / 20).clamp(1_000, 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 60 * 60 * 1000;

    #[test]
    fn a_year_long_certificate_renews_after_eight_months_and_looks_hourly() {
        let (issued, expires) = (1_000, 1_000 + 365 * DAY);
        assert_eq!(due(issued, expires), 1_000 + 365 * DAY / 3 * 2);
        assert_eq!(wait(issued, issued, expires), MAX_WAIT_MS);
        assert_eq!(wait(due(issued, expires) - 5, issued, expires), 5);
        assert_eq!(wait(due(issued, expires), issued, expires), 0);
        assert_eq!(wait(expires + DAY, issued, expires), 0, "late: at once");
        assert_eq!(retry_after(365 * DAY), 60_000);
    }

    #[test]
    fn a_minute_long_certificate_renews_at_forty_seconds_and_retries_each_few_seconds() {
        assert_eq!(due(0, 60_000), 40_000);
        assert_eq!(wait(10_000, 0, 60_000), 30_000);
        assert_eq!(retry_after(60_000), 3_000);
        assert_eq!(retry_after(10), 1_000);
        assert_eq!(
            due(5, 5),
            5,
            "a certificate already expired at issue is due at once"
        );
    }
}
