//! Continuous load from a pool of clients: some keep one connection alive across requests,
//! some open a fresh connection per request. Every request is counted as ok (2xx), failed
//! (another status) or a connection error, and the release that answered is tallied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::http::{self, Answer, Conn};

/// Counters of a load run.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// 2xx answers.
    pub ok: AtomicU64,
    /// Answers with another status.
    pub failed: AtomicU64,
    /// Requests that got no answer (connect refused, reset, cut body).
    pub conn_errors: AtomicU64,
    /// Answers per `version=` seen.
    pub versions: Mutex<BTreeMap<String, u64>>,
    /// Answers per `node=` seen (the host whose slot served them).
    pub nodes: Mutex<BTreeMap<String, u64>>,
    /// The first few problems, for the assertion message.
    pub problems: Mutex<Vec<String>>,
}

impl LoadStats {
    fn note(&self, result: Result<Answer, String>) {
        match result {
            Ok(a) if (200..300).contains(&a.status) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let (Some(v), Ok(mut map)) = (a.version(), self.versions.lock()) {
                    *map.entry(v.to_owned()).or_default() += 1;
                }
                if let (Some(n), Ok(mut map)) = (a.node(), self.nodes.lock()) {
                    *map.entry(n.to_owned()).or_default() += 1;
                }
            }
            Ok(a) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.problem(format!("status {}: {}", a.status, a.body.trim()));
            }
            Err(e) => {
                self.conn_errors.fetch_add(1, Ordering::Relaxed);
                self.problem(e);
            }
        }
    }

    fn problem(&self, text: String) {
        if let Ok(mut p) = self.problems.lock()
            && p.len() < 10
        {
            p.push(text);
        }
    }

    /// `ok`, `failed`, `conn_errors`.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.conn_errors.load(Ordering::Relaxed),
        )
    }

    /// Answers served by `node`'s slot so far.
    pub fn served_by(&self, node: &str) -> u64 {
        self.nodes
            .lock()
            .map(|m| m.get(node).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let (ok, failed, errors) = self.totals();
        format!(
            "ok={ok} failed={failed} conn_errors={errors} versions={:?} nodes={:?} problems={:?}",
            self.versions.lock().map(|v| v.clone()).unwrap_or_default(),
            self.nodes.lock().map(|v| v.clone()).unwrap_or_default(),
            self.problems.lock().map(|p| p.clone()).unwrap_or_default()
        )
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// The counters (live).
    pub stats: Arc<LoadStats>,
}

impl Load {
    /// Starts `keepalive` + `fresh` clients sending `GET path` to `addr`: back to back when
    /// `period` is zero, else each client one request per `period` (a paced, steady rate). Call
    /// inside a tokio runtime.
    pub fn start(
        addr: SocketAddr,
        keepalive: usize,
        fresh: usize,
        path: &'static str,
        period: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let mut tasks = Vec::new();
        for _ in 0..keepalive {
            let (stop, stats) = (stop.clone(), stats.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let mut pace = Pace::new(period);
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match Conn::open(addr).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                stats.note(Err(e));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let result = c.get(path).await;
                    // A server that says it closes the connection gets the next request on a
                    // new one, as HTTP/1.1 clients do.
                    if result.as_ref().map_or(true, |a| a.close) {
                        conn = None;
                    }
                    stats.note(result);
                    pace.tick().await;
                }
            }));
        }
        for _ in 0..fresh {
            let (stop, stats) = (stop.clone(), stats.clone());
            tasks.push(tokio::spawn(async move {
                let mut pace = Pace::new(period);
                while !stop.load(Ordering::Relaxed) {
                    stats.note(http::get(addr, path).await);
                    pace.tick().await;
                }
            }));
        }
        Self { stop, tasks, stats }
    }

    /// Stops the clients after their current request and returns the counters.
    pub async fn stop(self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}

/// A per-client request clock: nothing when the period is zero, else a steady interval.
struct Pace(Option<tokio::time::Interval>);

impl Pace {
    fn new(period: Duration) -> Self {
        Self((!period.is_zero()).then(|| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    async fn tick(&mut self) {
        if let Some(i) = self.0.as_mut() {
            i.tick().await;
        }
    }
}
