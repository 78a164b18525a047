//! Measuring helpers shared by the benchmark drivers: wrk runs, a sequential latency probe and
//! small statistics. Benchmarks only: nothing here asserts a speed.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::http;

/// One wrk run's figures.
pub struct Wrk {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout), summed.
    pub socket_errors: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
}

/// The benchmark drivers' runtime: two worker threads, like the machines they run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits up to 15 s until `addr` answers `GET /`.
pub fn wait_for(rt: &tokio::runtime::Runtime, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    rt.block_on(async {
        while http::get(addr, "/").await.is_err() {
            assert!(Instant::now() < deadline, "{addr} never answered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// The median latency of `n` sequential `GET /` on one keep-alive connection, in µs.
pub async fn sequential_p50(addr: SocketAddr, n: usize) -> f64 {
    let mut conn = http::Conn::open(addr).await.expect("connect");
    for _ in 0..100 {
        conn.get("/").await.expect("warm-up request");
    }
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        let t = Instant::now();
        match conn.get("/").await {
            Ok(answer) => {
                assert_eq!(answer.status, 200);
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            // nginx closes a client connection after 1,000 requests (keepalive_requests).
            Err(_) => conn = http::Conn::open(addr).await.expect("reconnect"),
        }
    }
    median(samples.into_iter())
}

/// Runs wrk (2 threads, 64 connections) against `url` for `secs` seconds.
pub fn run_wrk(wrk: &str, url: &str, secs: u64) -> Wrk {
    let out = Command::new(wrk)
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no Requests/sec:\n{text}"));
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| micros(v.trim()))
            .unwrap_or(f64::NAN)
    };
    // `Socket errors: connect 0, read 765, write 0, timeout 0`, printed only when there are.
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Wrk {
        rps,
        p50_us: pct("50%"),
        p99_us: pct("99%"),
        socket_errors,
        non_2xx,
    }
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `2.01s`.
fn micros(text: &str) -> f64 {
    let (num, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1000.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        (text, 1.0)
    };
    num.parse::<f64>().map(|n| n * factor).unwrap_or(f64::NAN)
}

/// The median (NaN when empty).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest value.
pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The largest value.
pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
