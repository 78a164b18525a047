//! The proxy's view of slots: an [`Upstream`] per running slot (its port, its in-flight count,
//! its drain cut-off and its request signals), and the [`Router`] that says which upstream new
//! work goes to.
//!
//! ## Guarantees
//! - A flip is one pointer swap under a write lock held for nanoseconds: every request or
//!   connection that reads the route after it goes to the new slot, and none of them waits.
//! - Work in flight holds its upstream (an `Arc`) and a [`Flight`] guard, so an old slot is counted
//!   and reachable until the last of its requests, bodies and upgraded connections finish.
//! - The cut-off is a cancellation token per drain: once cancelled, everything still running on
//!   that upstream ends (504 before headers, a cut body or connection after). Reusing a slot
//!   (rollback to a warm slot) gets a fresh token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use halley_proto::deploy::{Color, ReleaseVersion, Signals};
use tokio_util::sync::CancellationToken;

use crate::proxy::histogram::{Histogram, Snapshot};
use crate::proxy::meters::SlotMeters;

/// One running slot as the proxy sees it.
#[derive(Debug)]
pub struct Upstream {
    /// The slot.
    pub slot: Color,
    /// The release it runs.
    pub version: ReleaseVersion,
    /// Its port on 127.0.0.1.
    pub port: u16,
    inflight: AtomicU64,
    finished: AtomicU64,
    cut: Mutex<CancellationToken>,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
    meters: Arc<SlotMeters>,
}

impl Upstream {
    /// An upstream for a slot process on `port`, recording also into the slot's cumulative
    /// `meters`.
    pub fn new(
        slot: Color,
        version: ReleaseVersion,
        port: u16,
        meters: Arc<SlotMeters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            slot,
            version,
            port,
            inflight: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            cut: Mutex::new(CancellationToken::new()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::default(),
            meters,
        })
    }

    /// Starts one request or connection: counts it in flight until the guard drops, and returns
    /// the token that fires if the slot's drain deadline passes first.
    pub fn begin(self: &Arc<Self>) -> (Flight, CancellationToken) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let token = self
            .cut
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        (
            Flight {
                upstream: self.clone(),
            },
            token,
        )
    }

    /// Requests and connections in flight.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Requests and connections finished since start.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Ends everything in flight now (the drain deadline passed).
    pub fn cut(&self) {
        if let Ok(t) = self.cut.lock() {
            t.cancel();
        }
    }

    /// A fresh cut-off for a slot that serves again after a cut.
    pub fn renew(&self) {
        if let Ok(mut t) = self.cut.lock()
            && t.is_cancelled()
        {
            *t = CancellationToken::new();
        }
    }

    /// Records a completed response (or proxied connection): its status class and latency.
    pub fn record(&self, error: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(latency.as_micros() as u64);
        self.meters.record(error, latency);
    }

    /// A copy of the counters, for windowed signals.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

/// Counters of an upstream at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests since start.
    pub requests: u64,
    /// 5xx since start.
    pub errors: u64,
    /// Latency histogram since start.
    pub latency: Snapshot,
}

impl StatsSnapshot {
    /// The signals of the window between `earlier` and `self`, `window_ms` long.
    pub fn signals_since(&self, earlier: &StatsSnapshot, window_ms: u64) -> Signals {
        let latency = self.latency.since(&earlier.latency);
        Signals {
            window_ms,
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            p50_us: latency.quantile(0.50),
            p99_us: latency.quantile(0.99),
            total_requests: self.requests,
            total_errors: self.errors,
        }
    }
}

/// Holds one request or connection in its upstream's in-flight count.
#[derive(Debug)]
pub struct Flight {
    upstream: Arc<Upstream>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.upstream.inflight.fetch_sub(1, Ordering::AcqRel);
        self.upstream.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Which upstream receives new work.
#[derive(Debug, Default)]
pub struct Router {
    current: RwLock<Option<Arc<Upstream>>>,
}

impl Router {
    /// The upstream for a new request or connection, if any release is routed.
    pub fn current(&self) -> Option<Arc<Upstream>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Routes new work to `upstream` (or nowhere); returns the one routed before.
    pub fn set(&self, upstream: Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
        if let Some(up) = &upstream {
            up.renew();
        }
        match self.current.write() {
            Ok(mut g) => std::mem::replace(&mut *g, upstream),
            Err(p) => std::mem::replace(&mut *p.into_inner(), upstream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flights_are_counted_and_cut_tokens_renew() {
        let up = Upstream::new(
            Color::Blue,
            ReleaseVersion::parse("1").unwrap(),
            1,
            Arc::default(),
        );
        let (a, cut_a) = up.begin();
        let (b, _) = up.begin();
        assert_eq!(up.inflight(), 2);
        up.cut();
        assert!(cut_a.is_cancelled());
        drop(a);
        drop(b);
        assert_eq!((up.inflight(), up.finished()), (0, 2));
        let router = Router::default();
        router.set(Some(up.clone()));
        let (_c, cut_c) = up.begin();
        assert!(
            !cut_c.is_cancelled(),
            "routing a slot again renews its cut-off"
        );
        up.record(false, Duration::from_micros(900));
        up.record(true, Duration::from_micros(5000));
        let s = up.snapshot().signals_since(&StatsSnapshot::default(), 1000);
        assert_eq!((s.requests, s.errors), (2, 1));
        assert!(s.p99_us >= 5000);
    }
}
