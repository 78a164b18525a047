//! Gossip benchmark driver (run by `scripts/bench-gossip`, which writes `BENCHMARKS.md`).
//!
//! Starts real `halley-node` processes on 127.0.0.1 and measures, printing one Markdown table:
//! - convergence: time from `drain` on one node until every other node reports it draining, for
//!   3, 10 and 30 nodes (5 runs each, alternating drain/undrain);
//! - detection: time from SIGKILL of a node until every survivor reports it dead (10 nodes, 3 runs);
//! - idle RSS and CPU per node in a 5-node cluster over 60 s;
//! - gossip UDP bytes sent per second per node in a 10-node cluster over 30 s.
//!
//! Status is read in-process over each node's admin socket every 10 ms, so the resolution is about
//! 10 ms plus one admin round trip.

use std::path::Path;
use std::time::{Duration, Instant};

use halley_node::daemon::admin;
use halley_node::store::datadir::DataDir;
use halley_proto::message::{AdminRequest, AdminResponse, MemberState, StatusReport};
use halley_tests::{Node, start_cluster, wait_until};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    let quick = std::env::var_os("HALLEY_BENCH_QUICK").is_some();
    let mut rows = Vec::new();

    for size in [3usize, 10, 30] {
        let nodes = cluster(tmp.path(), &format!("c{size}"), size);
        let mut samples = Vec::new();
        for run in 0..if quick { 2 } else { 5 } {
            let draining = run % 2 == 0;
            let target = &nodes[run % nodes.len()];
            let want = if draining {
                MemberState::Draining
            } else {
                MemberState::Alive
            };
            let started = Instant::now();
            let out = target.cli(&[if draining { "drain" } else { "undrain" }]);
            assert!(out.status.success());
            let others: Vec<&Node> = nodes.iter().filter(|n| n.name != target.name).collect();
            let took = runtime.block_on(until_all(
                &others,
                &target.name,
                want,
                started,
                Duration::from_secs(20),
            ));
            samples.push(took);
        }
        rows.push(row(
            &format!("convergence of a state change, {size} nodes"),
            &samples,
            "ms",
            1000.0,
            if size == 30 { "≤ 1000 ms" } else { "" },
        ));
        drop(nodes);
    }

    {
        let mut nodes = cluster(tmp.path(), "det", 10);
        let mut samples = Vec::new();
        for victim in [9usize, 8, 7].iter().take(if quick { 1 } else { 3 }) {
            let name = nodes[*victim].name.clone();
            let killed = Instant::now();
            nodes[*victim].kill9();
            let survivors: Vec<&Node> = nodes[..7].iter().collect();
            samples.push(runtime.block_on(until_all(
                &survivors,
                &name,
                MemberState::Dead,
                killed,
                Duration::from_secs(30),
            )));
        }
        rows.push(row(
            "detection of a SIGKILLed node, 10 nodes",
            &samples,
            "ms",
            1000.0,
            "≤ 3000 ms",
        ));
    }

    {
        let nodes = cluster(tmp.path(), "idle", 5);
        let window = Duration::from_secs(if quick { 10 } else { 60 });
        let before: Vec<(u64, u64)> = nodes.iter().map(|n| cpu_ticks(n.pid())).collect();
        std::thread::sleep(window);
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        let cpu: Vec<f64> = nodes
            .iter()
            .zip(&before)
            .map(|(n, (u0, s0))| {
                let (u1, s1) = cpu_ticks(n.pid());
                ((u1 + s1 - u0 - s0) as f64 / ticks_per_sec) / window.as_secs_f64() * 100.0
            })
            .collect();
        let rss: Vec<f64> = nodes
            .iter()
            .map(|n| rss_kib(n.pid()) as f64 / 1024.0)
            .collect();
        rows.push(format_row(
            &format!("idle RSS per node, 5 nodes, after {}s", window.as_secs()),
            &rss,
            "MB",
            "≤ 15 MB",
        ));
        rows.push(format_row(
            &format!("idle CPU per node, 5 nodes, over {}s", window.as_secs()),
            &cpu,
            "% of a core",
            "≤ 1 %",
        ));
    }

    {
        let nodes = cluster(tmp.path(), "bytes", 10);
        let window = Duration::from_secs(if quick { 10 } else { 30 });
        let before = runtime.block_on(tx_bytes(&nodes));
        std::thread::sleep(window);
        let after = runtime.block_on(tx_bytes(&nodes));
        let rates: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) as f64 / window.as_secs_f64() / 1000.0)
            .collect();
        rows.push(format_row(
            &format!(
                "gossip UDP bytes sent per node, 10 nodes, over {}s",
                window.as_secs()
            ),
            &rates,
            "KB/s",
            "≤ 10 KB/s",
        ));
    }

    println!("| measurement | median | min – max | runs | goal |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

fn cluster(root: &Path, prefix: &str, size: usize) -> Vec<Node> {
    let dir = root.join(prefix);
    std::fs::create_dir_all(&dir).expect("cluster dir");
    let names: Vec<String> = (1..=size).map(|i| format!("{prefix}-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (nodes, _token) = start_cluster(&dir, &names);
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(60), || node.count("alive") == size),
            "{} did not converge",
            node.name
        );
    }
    nodes
}

async fn status(dir: &Path) -> Option<StatusReport> {
    match admin::call(&DataDir::new(dir), AdminRequest::Status).await {
        Ok(AdminResponse::Status(r)) => Some(r),
        _ => None,
    }
}

/// Time from `started` until every node in `nodes` reports `name` in `state`.
async fn until_all(
    nodes: &[&Node],
    name: &str,
    state: MemberState,
    started: Instant,
    limit: Duration,
) -> Duration {
    let mut pending: Vec<&Node> = nodes.to_vec();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "{} nodes never saw {name} {state:?}",
            pending.len()
        );
        let mut still = Vec::new();
        for node in pending {
            let seen = status(&node.dir).await.is_some_and(|r| {
                r.members
                    .iter()
                    .any(|m| m.name.as_str() == name && m.state == state)
            });
            if !seen {
                still.push(node);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

async fn tx_bytes(nodes: &[Node]) -> Vec<u64> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(status(&node.dir).await.map_or(0, |r| r.mesh.udp_tx_bytes));
    }
    out
}

fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (get(11), get(12))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn row(what: &str, samples: &[Duration], unit: &str, scale: f64, goal: &str) -> String {
    let values: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * scale).collect();
    format_row(what, &values, unit, goal)
}

fn format_row(what: &str, values: &[f64], unit: &str, goal: &str) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    format!(
        "| {what} | {median:.2} {unit} | {:.2} – {:.2} | {} | {goal} |",
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
        sorted.len()
    )
}
