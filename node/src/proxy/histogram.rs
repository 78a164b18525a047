//! A lock-free latency histogram for the proxy's hot path, and quantiles from it.
//!
//! Buckets are log-linear: 8 sub-buckets per power of two of microseconds, so any recorded value
//! is reported within 12.5 % of itself, from 1 µs to over an hour, in 256 counters. Recording is one
//! relaxed atomic add. A [`Snapshot`] is a copy of the counters; the difference of two snapshots
//! is the histogram of the window between them.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 32 * SUB;

/// Counters, shared between request tasks.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let power = 63 - us.leading_zeros();
    let sub = (us >> (power - SUB_BITS)) as usize & (SUB - 1);
    (((power - SUB_BITS + 1) as usize) * SUB + sub).min(BUCKETS - 1)
}

/// The largest value that falls into bucket `i` (what quantiles report).
fn bucket_high(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let power = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub + 1) << (power - SUB_BITS)) - 1
}

impl Histogram {
    /// Records one latency.
    pub fn record(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

/// A copy of a histogram's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(Vec<u64>);

impl Snapshot {
    /// The counts recorded after `earlier` was taken.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot(
            self.0
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value at quantile `q` (0.0–1.0), rounded up to its bucket's top; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i);
            }
        }
        bucket_high(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_an_eighth() {
        for us in [0, 1, 7, 8, 9, 15, 16, 100, 999, 1000, 123_456, 10_000_000] {
            let high = bucket_high(bucket_of(us));
            assert!(high >= us, "{us} -> {high}");
            assert!(high as f64 <= us as f64 * 1.125 + 1.0, "{us} -> {high}");
        }
        for i in 1..BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_high(i)), i);
            assert_eq!(bucket_of(bucket_high(i) + 1), i + 1);
        }
    }

    #[test]
    fn quantiles_of_a_window() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.record(100);
        }
        let before = h.snapshot();
        for _ in 0..99 {
            h.record(1000);
        }
        h.record(50_000);
        let window = h.snapshot().since(&before);
        assert_eq!(window.count(), 100);
        assert!((1000..=1125).contains(&window.quantile(0.5)));
        assert!((1000..=1125).contains(&window.quantile(0.99)));
        assert!(window.quantile(1.0) >= 50_000);
        assert_eq!(Snapshot::default().quantile(0.99), 0);
    }
}
