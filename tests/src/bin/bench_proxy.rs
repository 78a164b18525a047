//! Proxy and flip benchmark driver (run by `scripts/bench-proxy`, which writes its section of
//! `BENCHMARKS.md`).
//!
//! One `halley-node` (release build) serves `halley-test-service` behind its entry point. In one
//! run, interleaved round by round, wrk measures the same upstream slot:
//! - direct (wrk → slot port),
//! - through Halley's proxy (wrk → entry point),
//! - through nginx as a plain reverse proxy (`proxy_pass`, a new upstream connection per request),
//! - through nginx with an upstream keep-alive pool (`keepalive 64`, HTTP/1.1 upstream).
//!
//! Then, under a steady paced load of about 2,000 req/s (keep-alive and fresh-connection clients),
//! it flips the service 100 times (rollbacks between two warm slots, through the node's deploy
//! steps) and reports each flip's route switch inside the node, the flip RPC's round trip, and
//! every failed request. Then the entry point's gap across three node restarts, and last what
//! three restarts and three `upgrade`s each cost clients under wrk.
//!
//! Environment: `HALLEY_BIN` (node), `HALLEY_TEST_SERVICE`, `WRK`, `NGINX_BIN` (paths),
//! `HALLEY_BENCH_QUICK=1` for short runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halley_node::cli::deploy;
use halley_node::store::datadir::DataDir;
use halley_proto::deploy::{ReleaseVersion, Step, StepReply};
use halley_proto::spec::ServiceName;
use halley_tests::bench::{Wrk, max, median, min, run_wrk, sequential_p50, wait_for};
use halley_tests::load::Load;
use halley_tests::{Node, assert_ok, free_tcp_port};

fn main() {
    let quick = std::env::var_os("HALLEY_BENCH_QUICK").is_some();
    let service_bin =
        PathBuf::from(std::env::var("HALLEY_TEST_SERVICE").expect("HALLEY_TEST_SERVICE"));
    let wrk = std::env::var("WRK").unwrap_or_else(|_| "wrk".into());
    let nginx = std::env::var("NGINX_BIN").unwrap_or_else(|_| "nginx".into());
    let rt = halley_tests::bench::runtime();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut node = Node::new(tmp.path(), "bench");
    node.init();
    node.start_with(&["--service-address", "127.0.0.1"]);
    let entry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = tmp.path().join("halley.toml");
    std::fs::write(
        &config,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"{entry}\"\nkeep_warm = \"1h\"\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.stop]\ndrain_timeout = \"5s\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n"
        ),
    )
    .unwrap();
    assert_ok(
        &node.deploy(&config, "web", "v1", &service_bin),
        "deploy v1",
    );
    let slot_port = node.slot("web", "active").expect("active slot")["port"]
        .as_u64()
        .expect("port") as u16;

    // nginx beside Halley, proxying to the same slot.
    let (plain_port, pooled_port) = (free_tcp_port(), free_tcp_port());
    let mut nginx_proc = start_nginx(&nginx, tmp.path(), slot_port, plain_port, pooled_port);
    wait_for(&rt, format!("127.0.0.1:{plain_port}").parse().unwrap());

    let targets = [
        ("direct", format!("http://127.0.0.1:{slot_port}/")),
        ("halley", format!("http://{entry}/")),
        ("nginx", format!("http://127.0.0.1:{plain_port}/")),
        (
            "nginx-keepalive",
            format!("http://127.0.0.1:{pooled_port}/"),
        ),
    ];
    let (rounds, secs) = if quick { (1, 3) } else { (3, 10) };
    let mut results: Vec<Vec<Wrk>> = targets.iter().map(|_| Vec::new()).collect();
    for (_, url) in &targets {
        run_wrk(&wrk, url, 2); // warm-up
    }
    for _ in 0..rounds {
        for (i, (_, url)) in targets.iter().enumerate() {
            results[i].push(run_wrk(&wrk, url, secs));
        }
    }
    // Added latency without queueing: one keep-alive client, requests one after another.
    let sequential: Vec<f64> = targets
        .iter()
        .map(|(_, url)| {
            let addr: SocketAddr = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .expect("target address");
            rt.block_on(sequential_p50(addr, if quick { 500 } else { 5000 }))
        })
        .collect();
    let _ = nginx_proc.kill();
    let _ = nginx_proc.wait();

    println!("| path | req/s median (min – max) | p50 | p99 | req/s vs direct | req/s vs nginx |");
    println!("|---|---|---|---|---|---|");
    let rps_med: Vec<f64> = results
        .iter()
        .map(|r| median(r.iter().map(|w| w.rps)))
        .collect();
    let p50_med: Vec<f64> = results
        .iter()
        .map(|r| median(r.iter().map(|w| w.p50_us)))
        .collect();
    for (i, (name, _)) in targets.iter().enumerate() {
        let rps: Vec<f64> = results[i].iter().map(|w| w.rps).collect();
        let p99 = median(results[i].iter().map(|w| w.p99_us));
        println!(
            "| {name} | {:.0} ({:.0} – {:.0}) | {:.0} µs | {:.0} µs | {:.2}× | {:.2}× |",
            rps_med[i],
            min(&rps),
            max(&rps),
            p50_med[i],
            p99,
            rps_med[i] / rps_med[0],
            rps_med[i] / rps_med[2],
        );
    }
    println!();
    println!(
        "wrk: 2 threads, 64 connections, {secs} s per run, {rounds} rounds, targets interleaved in each round. Under that saturating load the p50 difference is mostly queueing: Halley {:.0} µs over direct, nginx {:.0} µs.",
        p50_med[1] - p50_med[0],
        p50_med[2] - p50_med[0]
    );
    println!();
    println!(
        "Added latency without queueing (one keep-alive client, {} sequential requests per path, p50): direct {:.0} µs, Halley {:.0} µs (+{:.0} µs), nginx {:.0} µs (+{:.0} µs), nginx-keepalive {:.0} µs (+{:.0} µs).",
        if quick { 500 } else { 5000 },
        sequential[0],
        sequential[1],
        sequential[1] - sequential[0],
        sequential[2],
        sequential[2] - sequential[0],
        sequential[3],
        sequential[3] - sequential[0]
    );
    println!();

    // 100 flips under a steady load of about 2,000 req/s.
    assert_ok(
        &node.deploy(&config, "web", "v2", &service_bin),
        "deploy v2",
    );
    let data_dir = DataDir::new(&node.dir);
    let service = ServiceName::parse("web").unwrap();
    let flips = if quick { 20 } else { 100 };
    let load = rt.block_on(async { Load::start(entry, 16, 4, "/", Duration::from_millis(10)) });
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let before = load.stats.totals();
    let (mut switch_us, mut rpc_us) = (Vec::new(), Vec::new());
    for _ in 0..flips {
        let statuses = rt.block_on(deploy::services(&data_dir)).expect("services");
        let previous: ReleaseVersion = statuses[0].previous.clone().expect("a previous release");
        let epoch = statuses[0].epoch;
        let steps = [
            Step::StartNext {
                version: previous.clone(),
                rollback: true,
            },
            Step::Check,
            Step::Flip,
            Step::Drain,
            Step::Commit { version: previous },
        ];
        for step in steps {
            let is_flip = matches!(step, Step::Flip);
            let t = Instant::now();
            let reply = rt
                .block_on(deploy::step(&data_dir, &service, epoch, step))
                .expect("deploy step");
            if is_flip {
                rpc_us.push(t.elapsed().as_micros() as f64);
                if let StepReply::Flipped { took_ns, .. } = reply {
                    switch_us.push(took_ns as f64);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let stats = rt.block_on(load.stop());
    let (ok, failed, errors) = stats.totals();
    let sent = (ok + failed + errors) - (before.0 + before.1 + before.2);
    println!("| flips under load | value |");
    println!("|---|---|");
    println!("| flips | {flips} (rollbacks between two warm slots) |");
    println!(
        "| load during the flips | {:.0} req/s (16 keep-alive + 4 fresh-connection clients, one request per 10 ms each) |",
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| route switch inside the node, median (min – max) | {:.0} ns ({:.0} – {:.0}) |",
        median(switch_us.iter().copied()),
        min(&switch_us),
        max(&switch_us)
    );
    println!(
        "| flip step round trip over the admin socket (switch + record fsync), median (min – max) | {:.0} µs ({:.0} – {:.0}) |",
        median(rpc_us.iter().copied()),
        min(&rpc_us),
        max(&rpc_us)
    );
    println!("| requests failed (non-2xx) over the whole run | {failed} |");
    println!("| connection errors over the whole run | {errors} |");
    println!("| requests answered 2xx over the whole run | {ok} |");
    println!();

    // The entry point's gap across node restarts (services adopted, not restarted).
    let mut gaps = Vec::new();
    for _ in 0..3 {
        assert!(node.terminate());
        let stopped = Instant::now();
        node.spawn(&["--service-address", "127.0.0.1"], None);
        wait_for(&rt, entry);
        gaps.push(stopped.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "Entry point gap across a node restart (from the old node's exit to the first request answered through the new one, polled every 1 ms; services adopted, not restarted): median {:.1} ms ({:.1} – {:.1}, 3 runs).",
        median(gaps.iter().copied()),
        min(&gaps),
        max(&gaps)
    );
    println!();
    restart_vs_upgrade(&rt, &mut node, entry, &wrk, quick);
    node.kill_services();
}

/// Three daemon restarts, then three `upgrade`s, each under wrk (64 keep-alive connections) and
/// 4 fresh-connection clients: what each costs the clients, side by side.
fn restart_vs_upgrade(
    rt: &tokio::runtime::Runtime,
    node: &mut Node,
    entry: SocketAddr,
    wrk: &str,
    quick: bool,
) {
    let rounds = 3;
    let spacing = Duration::from_secs(if quick { 2 } else { 4 });
    let secs = spacing.as_secs() * (rounds + 1);
    let url = format!("http://{entry}/");
    println!(
        "| under load, 3 times each | wrk requests/s | wrk socket errors | wrk non-2xx | fresh-connection requests ok | refused or failed |"
    );
    println!("|---|---|---|---|---|---|");
    for method in ["restart (SIGTERM, run)", "upgrade"] {
        let fresh = rt.block_on(async { Load::start(entry, 0, 4, "/", Duration::from_millis(5)) });
        let wrk_run = {
            let (wrk, url) = (wrk.to_owned(), url.clone());
            std::thread::spawn(move || run_wrk(&wrk, &url, secs))
        };
        for _ in 0..rounds {
            std::thread::sleep(spacing);
            if method == "upgrade" {
                assert_ok(&node.upgrade(&[]), "upgrade");
            } else {
                assert!(node.terminate());
                node.spawn(&["--service-address", "127.0.0.1"], None);
                wait_for(rt, entry);
            }
        }
        let figures = wrk_run.join().expect("wrk thread");
        let stats = rt.block_on(fresh.stop());
        let (ok, failed, errors) = stats.totals();
        println!(
            "| {method} | {:.0} | {} | {} | {ok} | {} |",
            figures.rps,
            figures.socket_errors,
            figures.non_2xx,
            failed + errors
        );
    }
    println!();
    println!(
        "wrk: 2 threads, 64 keep-alive connections, {secs} s per method, a restart or upgrade every {} s; the fresh-connection clients send one request per 5 ms each.",
        spacing.as_secs()
    );
}

fn start_nginx(nginx: &str, dir: &Path, slot: u16, plain: u16, pooled: u16) -> Child {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream pooled {{ server 127.0.0.1:{slot}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{plain};
        location / {{ proxy_pass http://127.0.0.1:{slot}; }}
    }}
    server {{
        listen 127.0.0.1:{pooled};
        location / {{
            proxy_pass http://pooled;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx")
}
