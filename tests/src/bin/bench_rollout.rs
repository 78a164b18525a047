//! Rollout benchmark driver (run by `scripts/bench-rollout`, which writes its section of
//! `BENCHMARKS.md`).
//!
//! Five `halley-node` processes (release build) on 127.0.0.1–5, each serving the test service's
//! entry point. Every rollout uses `drain_wait = 0s`, `bake = 0s`, `pause = 0s`, so what is
//! measured is Halley's own overhead per host: sending a fresh artifact (a different file each
//! version), preparing, starting the process, its first passing health check (probed 50 ms after
//! start, then every 100 ms), flipping, draining an idle slot, committing, and the coordinator's
//! round trips. Then:
//! - manual cluster rollbacks (`halley-node rollback`, warm previous slots): time from the
//!   request to the last of the 5 hosts flipped;
//! - automatic rollbacks: a release whose health check starts failing 1.5 s after start, rolled
//!   out to all 5 hosts in one batch; time from the decision to the last host reverted.
//!
//! Environment: `HALLEY_BIN`, `HALLEY_TEST_SERVICE`, `HALLEY_BENCH_QUICK=1` for fewer runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use halley_tests::{Node, assert_ok, free_tcp_port, wait_until};

fn main() {
    let quick = std::env::var_os("HALLEY_BENCH_QUICK").is_some();
    let runs = if quick { 2 } else { 5 };
    let service_bin =
        PathBuf::from(std::env::var("HALLEY_TEST_SERVICE").expect("HALLEY_TEST_SERVICE"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(tmp.path(), n)).collect();
    let token = nodes[0].init();
    for (i, node) in nodes.iter_mut().enumerate() {
        if i > 0 {
            assert_ok(&node.join(&token), "join");
        }
        node.start_with(&["--service-address", &format!("127.0.0.{}", i + 1)]);
    }
    assert!(wait_until(std::time::Duration::from_secs(20), || nodes
        .iter()
        .all(|n| n.count("alive") == 5)));
    let port = free_tcp_port();
    let config = |name: &str, env: &str, batch: u32, bake: &str| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \":{port}\"\nkeep_warm = \"1h\"\nenv = {{ {env} }}\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"{bake}\"\nbatch = {batch}\n"
            ),
        )
        .unwrap();
        path
    };
    let good = config("good", "", 1, "0s");
    let coordinator = &nodes[0];
    let artifact = |v: &str| -> PathBuf {
        // A distinct file per version, so each rollout really ships an artifact.
        let dir = tmp.path().join(format!("artifact-{v}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley-test-service");
        let mut bytes = std::fs::read(&service_bin).unwrap();
        bytes.extend_from_slice(format!("\n#{v}\n").as_bytes());
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    };
    let deploy = |config: &Path, v: &str| {
        let a = artifact(v);
        coordinator.deploy(config, "web", v, &a)
    };
    assert_ok(&deploy(&good, "v0"), "first rollout");

    let mut per_host = Vec::new();
    for run in 1..=runs {
        let v = format!("v{run}");
        let t = Instant::now();
        assert_ok(&deploy(&good, &v), "rollout");
        per_host.push(t.elapsed().as_secs_f64() * 1000.0 / 5.0);
    }

    let (mut manual, mut manual_total) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let out = coordinator.cli(&["rollback", "web"]);
        manual_total.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_ok(&out, "rollback");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = text
            .lines()
            .filter_map(|l| l.split("flipped after ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max);
        assert!(last > 0.0, "no flip times in: {text}");
        manual.push(last);
    }

    let mut automatic = Vec::new();
    let failing = config("failing", "TS_HEALTH_FAIL_AFTER_MS = \"1500\"", 5, "20s");
    for run in 0..runs {
        let v = format!("bad{run}");
        let out = deploy(&failing, &v);
        assert!(
            !out.status.success(),
            "the failing release must be rolled back"
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let reverted: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("reverted in ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse::<f64>().ok())
            .collect();
        assert_eq!(reverted.len(), 5, "five hosts reverted: {text}");
        automatic.push(reverted.iter().copied().fold(0.0, f64::max));
        // Back to a committed good release before the next run.
        assert_ok(&deploy(&good, &format!("good{run}")), "good rollout");
    }

    println!("| measurement | median | min – max | runs | goal |");
    println!("|---|---|---|---|---|");
    row(
        "rollout overhead per host (5 hosts, waits 0, new artifact each run)",
        &per_host,
        "≤ 300 ms",
    );
    row(
        "manual cluster rollback, start of the host steps to last of 5 hosts flipped (warm slots)",
        &manual,
        "≤ 1000 ms",
    );
    row(
        "manual cluster rollback, whole `halley-node rollback` command (incl. drain and commit on every host)",
        &manual_total,
        "",
    );
    row(
        "automatic rollback, decision to last of 5 hosts reverted (warm slots)",
        &automatic,
        "≤ 1000 ms",
    );
    for node in &nodes {
        node.kill_services();
    }
}

fn row(name: &str, samples: &[f64], goal: &str) {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!(
        "| {name} | {median:.0} ms | {:.0} – {:.0} | {} | {goal} |",
        v[0],
        v[v.len() - 1],
        v.len()
    );
}
