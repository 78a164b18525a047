//! Cumulative request meters per service and slot, for the metrics endpoint.
//!
//! An [`Upstream`](crate::proxy::upstream::Upstream) lives as long as one start of one slot; its
//! own counters feed the windowed signals. The [`SlotMeters`] here outlive it: every upstream of
//! a service's blue slot records into the same meters, so a scraper sees counters that only grow
//! while the daemon runs, whatever releases come and go.
//!
//! ## Guarantees
//! - Recording is a few relaxed atomic adds; no lock on the request path.
//! - Latency buckets are fixed (Prometheus-style, in seconds), so histograms of several hosts
//!   add up bucket by bucket.
//! - A scrape may see a request counted and its latency not yet recorded (or the reverse): the
//!   counters are read one by one, not as one snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halley_proto::deploy::Color;
use halley_proto::spec::ServiceName;

/// Upper bounds of the latency buckets, in microseconds (the last bucket, +Inf, is implied).
pub const BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// One slot's cumulative counters.
#[derive(Debug, Default)]
pub struct SlotMeters {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Non-cumulative counts, one per bound in [`BUCKETS_US`] and one for +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl SlotMeters {
    /// Records one response (or proxied connection).
    pub fn record(&self, error: bool, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let i = BUCKETS_US.partition_point(|bound| *bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> MeterReading {
        MeterReading {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A [`SlotMeters`] read out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterReading {
    /// Responses and connections since the daemon started.
    pub requests: u64,
    /// Of which 5xx (or failed connections).
    pub errors: u64,
    /// Non-cumulative bucket counts, as in [`SlotMeters`].
    pub buckets: [u64; BUCKETS_US.len() + 1],
    /// Sum of latencies in microseconds.
    pub sum_us: u64,
}

/// Every slot's meters on this node.
#[derive(Debug, Default)]
pub struct Meters {
    slots: Mutex<BTreeMap<(ServiceName, Color), Arc<SlotMeters>>>,
}

impl Meters {
    /// The meters of `service`'s `slot`, made on first use.
    pub fn slot(&self, service: &ServiceName, slot: Color) -> Arc<SlotMeters> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry((service.clone(), slot)).or_default().clone()
    }

    /// Forgets a removed service's meters, so its series leave `/metrics`.
    pub fn remove(&self, service: &ServiceName) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(name, _), _| name != service);
    }

    /// Every slot's counters, by service and slot.
    pub fn read(&self) -> Vec<(ServiceName, Color, MeterReading)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|((service, slot), m)| (service.clone(), *slot, m.read()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_first_bucket_that_holds_them() {
        let meters = Meters::default();
        let name = ServiceName::parse("web").unwrap();
        let m = meters.slot(&name, Color::Blue);
        m.record(false, Duration::from_micros(1_000));
        m.record(false, Duration::from_micros(1_001));
        m.record(true, Duration::from_secs(60));
        let r = meters.slot(&name, Color::Blue).read();
        assert_eq!((r.requests, r.errors), (3, 1));
        assert_eq!((r.buckets[0], r.buckets[1]), (1, 1));
        assert_eq!(r.buckets[BUCKETS_US.len()], 1, "over 30 s is +Inf");
        assert_eq!(r.sum_us, 60_002_001);
        assert_eq!(meters.read().len(), 1);
    }
}
