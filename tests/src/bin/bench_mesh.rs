//! Cluster routing benchmark driver (run by `scripts/bench-mesh`, which writes its section of
//! `BENCHMARKS.md`).
//!
//! Three `halley-node` release processes on 127.0.0.1-3 run `halley-test-service` as two
//! services: `one` with `routing = "local"` and `spread` with `routing = "balanced"`. In one run,
//! interleaved round by round:
//! - added latency of a mesh hop against a local hop: one keep-alive client, sequential requests
//!   to n1's entry point of `one` while n1 serves locally, then while n1 is drained so that its
//!   entry point forwards every request over QUIC to n2 or n3 (`one` is switched to local-first
//!   for that by its deploy);
//! - throughput (wrk) through n1's entry point: `one` (n1's slot only) against `spread` (n1, n2
//!   and n3's slots, two of them over the mesh), with direct requests to n1's slot as reference.
//!
//! Environment: `HALLEY_BIN`, `HALLEY_TEST_SERVICE`, `WRK` (paths), `HALLEY_BENCH_QUICK=1` for
//! short runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use halley_tests::bench::{max, median, min, run_wrk, sequential_p50, wait_for};
use halley_tests::cluster::Cluster;
use halley_tests::{assert_ok, free_tcp_port};

fn main() {
    let quick = std::env::var_os("HALLEY_BENCH_QUICK").is_some();
    let service_bin =
        PathBuf::from(std::env::var("HALLEY_TEST_SERVICE").expect("HALLEY_TEST_SERVICE"));
    let wrk = std::env::var("WRK").unwrap_or_else(|_| "wrk".into());
    let rt = halley_tests::bench::runtime();
    let cluster = Cluster::start();
    let nodes = &cluster.nodes;
    let (one_port, spread_port) = (free_tcp_port(), free_tcp_port());
    let config = cluster.dir.join("halley.toml");
    let service = |name: &str, port: u16, routing: &str| {
        format!(
            "[service.{name}]\ncommand = [\"./halley-test-service\"]\nlisten = \":{port}\"\nrouting = \"{routing}\"\n[service.{name}.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.{name}.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n"
        )
    };
    let write = |one_routing: &str| {
        std::fs::write(
            &config,
            service("one", one_port, one_routing) + &service("spread", spread_port, "balanced"),
        )
        .unwrap();
    };
    write("local-first");
    for name in ["one", "spread"] {
        assert_ok(
            &nodes[0].deploy(&config, name, "v1", &service_bin),
            "deploy",
        );
    }
    let entry = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    wait_for(&rt, entry(one_port));
    wait_for(&rt, entry(spread_port));
    let slot_port = nodes[0].slot("one", "active").expect("active slot")["port"]
        .as_u64()
        .expect("port") as u16;
    // Both peers must be routable before measuring.
    let peers_ready = || {
        nodes[0].services().as_array().is_some_and(|l| {
            l.iter().all(|s| {
                s["routing"]["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2)
            })
        })
    };
    assert!(
        halley_tests::wait_until(Duration::from_secs(15), peers_ready),
        "peers never became routable"
    );

    let (rounds, n, secs) = if quick { (1, 500, 3) } else { (5, 5000, 10) };
    let (mut direct, mut local, mut mesh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(rt.block_on(sequential_p50(entry(slot_port), n)));
        local.push(rt.block_on(sequential_p50(entry(one_port), n)));
        assert_ok(&nodes[0].cli(&["drain"]), "drain n1");
        mesh.push(rt.block_on(sequential_p50(entry(one_port), n)));
        assert_ok(&nodes[0].cli(&["undrain"]), "undrain n1");
    }
    let hop = |v: &[f64]| median(v.iter().copied());
    println!(
        "| path (one keep-alive client, sequential `GET /`) | p50 median of {rounds} rounds (min – max) | added over direct |"
    );
    println!("|---|---|---|");
    for (name, v) in [
        ("direct to the slot", &direct),
        ("local hop: n1 entry point → n1 slot", &local),
        (
            "mesh hop: n1 entry point → QUIC → n2/n3 proxy → slot",
            &mesh,
        ),
    ] {
        println!(
            "| {name} | {:.0} µs ({:.0} – {:.0}) | {:+.0} µs |",
            hop(v),
            min(v),
            max(v),
            hop(v) - hop(&direct)
        );
    }
    println!();
    println!(
        "A mesh hop adds {:.0} µs p50 over a local hop ({n} requests per path per round, rounds interleaved; goal ≤ 500 µs).",
        hop(&mesh) - hop(&local)
    );
    println!();

    let targets = [
        (
            "direct to n1's slot",
            format!("http://127.0.0.1:{slot_port}/"),
        ),
        (
            "n1 entry point, `local` (n1's slot)",
            format!("http://127.0.0.1:{one_port}/"),
        ),
        (
            "n1 entry point, `balanced` (3 slots, 2 over the mesh)",
            format!("http://127.0.0.1:{spread_port}/"),
        ),
    ];
    // `one` back to local-only routing for the throughput comparison.
    write("local");
    assert_ok(
        &nodes[0].deploy(&config, "one", "v2", &service_bin),
        "redeploy one with routing = local",
    );
    wait_for(&rt, entry(one_port));
    let slot_port = nodes[0].slot("one", "active").expect("active slot")["port"]
        .as_u64()
        .expect("port") as u16;
    let targets: Vec<(&str, String)> = targets
        .into_iter()
        .enumerate()
        .map(|(i, (name, url))| {
            if i == 0 {
                (name, format!("http://127.0.0.1:{slot_port}/"))
            } else {
                (name, url)
            }
        })
        .collect();
    for (_, url) in &targets {
        run_wrk(&wrk, url, 2);
    }
    let mut results: Vec<Vec<(f64, f64)>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds.min(3) {
        for (i, (_, url)) in targets.iter().enumerate() {
            let w = run_wrk(&wrk, url, secs);
            results[i].push((w.rps, w.p50_us));
        }
    }
    println!(
        "| path (wrk, 2 threads, 64 connections) | req/s median (min – max) | p50 | vs `local` |"
    );
    println!("|---|---|---|---|");
    let rps_med: Vec<f64> = results
        .iter()
        .map(|r| median(r.iter().map(|w| w.0)))
        .collect();
    for (i, (name, _)) in targets.iter().enumerate() {
        let rps: Vec<f64> = results[i].iter().map(|w| w.0).collect();
        println!(
            "| {name} | {:.0} ({:.0} – {:.0}) | {:.0} µs | {:.2}× |",
            rps_med[i],
            min(&rps),
            max(&rps),
            median(results[i].iter().map(|w| w.1)),
            rps_med[i] / rps_med[1]
        );
    }
    let counters = nodes[0].services();
    let forwarded = counters
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "spread"))
        .map(|s| s["routing"]["forwarded"].clone())
        .unwrap_or_default();
    println!();
    println!(
        "{secs} s per run, {} rounds, targets interleaved in each round; n1 opened {forwarded} mesh streams for `spread` (idle streams are pooled per peer and reused by other client connections). All three nodes, wrk and the slots share the same 2 cores, so `balanced` cannot add capacity here: the ratio shows what the mesh hop costs, not what a second machine gives.",
        rounds.min(3)
    );
}
