//! Cluster routing over the mesh, with three real nodes on one machine: a drained host's entry
//! point forwards to its peers, a hung peer is routed around, a stop-start rollout loses no
//! request, and a failed request is sent again only once and only when that is safe.

use std::path::Path;
use std::time::Duration;

use halley_tests::cluster::{Cluster, stop_all};
use halley_tests::http;
use halley_tests::load::Load;
use halley_tests::{Node, assert_ok, runtime, wait_until};
use serde_json::Value;

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn deploy(node: &Node, config: &Path, version: &str) -> std::process::Output {
    node.deploy(config, "web", version, Path::new(SERVICE_BIN))
}

/// The `routing` status of service `web` on a node.
fn routing(node: &Node) -> Value {
    node.services()
        .as_array()
        .and_then(|list| list.iter().find(|s| s["name"] == "web"))
        .map(|s| s["routing"].clone())
        .unwrap_or(Value::Null)
}

fn counter(node: &Node, name: &str) -> u64 {
    routing(node)[name].as_u64().unwrap_or(0)
}

/// Waits until `node` routes to `n` healthy peers.
fn wait_peers(node: &Node, n: usize) {
    assert!(
        wait_until(Duration::from_secs(15), || routing(node)["peers"]
            .as_array()
            .is_some_and(|p| p.len() == n)),
        "{} never saw {n} peers serving: {}",
        node.name,
        routing(node)
    );
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

fn active_pid(node: &Node) -> u32 {
    node.slot("web", "active").unwrap()["pid"].as_u64().unwrap() as u32
}

fn crashes(cluster: &Cluster) -> usize {
    cluster
        .nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(n.dir.join("services/web/data/crashes"))
                .map(|s| s.len())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn a_drained_host_forwards_to_its_peers_and_serves_locally_again_when_undrained() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("v1", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "deploy v1");
    wait_peers(&cluster.nodes[0], 2);
    let n1 = &cluster.nodes[0];

    // Load only through n1's entry point; local-first keeps it on n1's own slot.
    let entry = cluster.entry(0);
    let load = rt.block_on(async { Load::start(entry, 2, 1, "/", Duration::from_millis(5)) });
    std::thread::sleep(Duration::from_secs(1));
    let stats = load.stats.clone();
    assert!(stats.served_by("n1") > 20, "{}", stats.summary());
    assert_eq!(stats.served_by("n2") + stats.served_by("n3"), 0);

    // Drain n1 and hang its slot: nothing may reach it, and nothing may fail.
    assert_ok(&n1.cli(&["drain"]), "drain n1");
    std::thread::sleep(Duration::from_millis(300));
    let pid = active_pid(n1);
    signal(pid, "-STOP");
    let on_n1 = stats.served_by("n1");
    let on_peers = stats.served_by("n2") + stats.served_by("n3");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stats.served_by("n1"), on_n1, "{}", stats.summary());
    assert!(
        stats.served_by("n2") + stats.served_by("n3") > on_peers + 50,
        "{}",
        stats.summary()
    );
    assert!(
        stats.served_by("n2") > 0 && stats.served_by("n3") > 0,
        "both peers share the drained host's work: {}",
        stats.summary()
    );
    assert!(counter(n1, "forwarded") > 0, "{}", routing(n1));
    signal(pid, "-CONT");

    // Undrained, n1 serves its own entry point again.
    assert_ok(&n1.cli(&["undrain"]), "undrain n1");
    let back = stats.served_by("n1");
    assert!(
        wait_until(Duration::from_secs(15), || stats.served_by("n1")
            > back + 50),
        "{}",
        stats.summary()
    );
    let peers_then = stats.served_by("n2") + stats.served_by("n3");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stats.served_by("n2") + stats.served_by("n3"),
        peers_then,
        "{}",
        stats.summary()
    );
    let stats = rt.block_on(load.stop());
    let (_, failed, errors) = stats.totals();
    assert_eq!((failed, errors), (0, 0), "{}", stats.summary());
}

#[test]
fn a_hung_peer_is_routed_around_and_requests_keep_succeeding() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config_with("bal", &[], "routing = \"balanced\"", "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "deploy v1");
    wait_peers(&cluster.nodes[0], 2);
    let n1 = &cluster.nodes[0];
    let n2_pid = cluster.nodes[1].pid();

    let entry = cluster.entry(0);
    let load = rt.block_on(async { Load::start(entry, 4, 1, "/", Duration::from_millis(5)) });
    let stats = load.stats.clone();
    assert!(
        wait_until(Duration::from_secs(10), || ["n1", "n2", "n3"]
            .iter()
            .all(|n| stats.served_by(n) > 20)),
        "balanced routing spreads one entry point's load: {}",
        stats.summary()
    );

    // n2's node hangs (a partitioned or frozen machine): its slot can no longer be reached.
    signal(n2_pid, "-STOP");
    std::thread::sleep(Duration::from_secs(7));
    let on_n2 = stats.served_by("n2");
    let (n1_before, n3_before) = (stats.served_by("n1"), stats.served_by("n3"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stats.served_by("n2"), on_n2, "{}", stats.summary());
    assert!(
        stats.served_by("n1") > n1_before + 20 && stats.served_by("n3") > n3_before + 20,
        "{}",
        stats.summary()
    );
    let seen = routing(n1);
    assert!(
        !seen["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap_or("").starts_with("n2")),
        "{seen}"
    );

    // Healed, it takes its share again.
    signal(n2_pid, "-CONT");
    let healed = stats.served_by("n2");
    assert!(
        wait_until(Duration::from_secs(20), || stats.served_by("n2")
            > healed + 20),
        "{}",
        stats.summary()
    );
    let stats = rt.block_on(load.stop());
    let (ok, failed, errors) = stats.totals();
    assert_eq!(
        (failed, errors),
        (0, 0),
        "{} routing={}",
        stats.summary(),
        routing(n1)
    );
    assert!(ok > 500, "{}", stats.summary());
}

#[test]
fn a_stop_start_rollout_across_three_hosts_under_load_loses_nothing() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config_with(
        "ss",
        &[],
        "strategy = \"stop-start\"",
        "drain_wait = \"1s\"\nbake = \"0s\"",
    );
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "deploy v1");
    for node in &cluster.nodes {
        wait_peers(node, 2);
    }
    let loads = cluster.load(&rt);
    let out = deploy(&cluster.nodes[1], &config, "v2");
    assert_ok(&out, "stop-start rollout of v2");
    let (ok, failed, errors, summary) = stop_all(&rt, loads);
    assert_eq!((failed, errors), (0, 0), "{summary}");
    assert!(ok > 300, "{summary}");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
    for node in &cluster.nodes {
        // Never two copies: the old release was stopped, not kept warm.
        assert!(node.slot("web", "warm").is_none(), "{}", node.services());
        assert!(counter(node, "forwarded") > 0, "{}", routing(node));
    }
}

#[test]
fn a_request_is_sent_again_once_and_only_when_no_byte_reached_an_upstream_or_it_is_safe() {
    let cluster = Cluster::start();
    let rt = runtime();
    // Slow health checks, so that a slot that stops listening is still "healthy" for a while.
    let config = cluster.config("r", &[], "bake = \"0s\"");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval = \"100ms\"", "interval = \"3s\"");
    std::fs::write(&config, text).unwrap();
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "deploy v1");
    wait_peers(&cluster.nodes[0], 2);
    let n1 = &cluster.nodes[0];
    let entry = cluster.entry(0);

    // A POST that reached a slot, which then died without answering, is never sent again.
    let answer = rt.block_on(http::post(entry, "/crash", "order=1")).unwrap();
    assert_eq!(answer.status, 502, "{answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(crashes(&cluster), 1);
    assert_eq!(counter(n1, "retries"), 0, "{}", routing(n1));

    // A GET without a body is safe to send again, once: two slots die, not three.
    let restarted = |node: &Node| {
        node.slot("web", "active")
            .is_some_and(|s| s["health"] == "healthy" && s["restarts"].as_u64() == Some(1))
    };
    assert!(wait_until(Duration::from_secs(20), || restarted(n1)));
    let answer = rt.block_on(http::get(entry, "/crash")).unwrap();
    assert_eq!(answer.status, 502, "{answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(crashes(&cluster), 3);
    assert_eq!(counter(n1, "retries"), 1, "{}", routing(n1));
    // Every crashed slot is back and answering (health checks run only every 3 s here).
    for node in &cluster.nodes {
        let answers = || {
            let Some(port) = node.slot("web", "active").and_then(|s| s["port"].as_u64()) else {
                return false;
            };
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            rt.block_on(http::get(addr, "/health"))
                .is_ok_and(|a| a.status == 200)
        };
        assert!(
            wait_until(Duration::from_secs(20), answers),
            "{}",
            node.services()
        );
    }
    wait_peers(n1, 2);

    // n1's slot stops accepting connections: a request refused there goes once to a peer.
    let answer = rt.block_on(http::get(entry, "/stop-listening")).unwrap();
    assert_eq!(answer.status, 200);
    let (retries, ejections) = (counter(n1, "retries"), counter(n1, "ejections"));
    let answer = rt.block_on(http::get(entry, "/")).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_ne!(answer.node(), Some("n1"), "{answer:?}");
    let events = || {
        n1.log()
            .lines()
            .filter(|l| l.contains("ejected") || l.contains("sent again"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        counter(n1, "retries"),
        retries + 1,
        "{} {}",
        routing(n1),
        events()
    );
    assert!(
        counter(n1, "ejections") > ejections,
        "{} {}",
        routing(n1),
        n1.log()
            .lines()
            .filter(|l| l.contains("ejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Ejected, n1's slot is skipped without another failed try.
    let answer = rt.block_on(http::get(entry, "/")).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(counter(n1, "retries"), retries + 1, "{}", routing(n1));
}

#[test]
fn a_host_a_later_deploy_dropped_draws_no_traffic_from_the_hosts_it_names() {
    let cluster = Cluster::start();
    let rt = runtime();
    let all = cluster.config_with("all", &[], "routing = \"balanced\"", "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &all, "v1"), "deploy v1 on all");
    wait_peers(&cluster.nodes[0], 2);
    // v2 names n1 and n2 only: n3 is not touched and still serves v1 where it is asked, and
    // still gossips a healthy web.
    let two = cluster.config_with(
        "two",
        &[],
        "routing = \"balanced\"\nhosts = [\"n1\", \"n2\"]",
        "bake = \"0s\"",
    );
    assert_ok(
        &deploy(&cluster.nodes[0], &two, "v2"),
        "deploy v2 on n1, n2",
    );
    assert_eq!(cluster.versions(&rt)[2].as_deref(), Some("v1"));
    wait_peers(&cluster.nodes[0], 1);
    assert_eq!(
        routing(&cluster.nodes[0])["peers"][0]
            .as_str()
            .map(|p| p.starts_with("n2")),
        Some(true),
        "{}",
        routing(&cluster.nodes[0])
    );
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        let answer = rt
            .block_on(http::get(cluster.entry(0), "/"))
            .expect("n1 answers");
        let who = format!(
            "{}@{}",
            answer.version().unwrap_or("?"),
            answer.node().unwrap_or("?")
        );
        *served.entry(who).or_default() += 1;
    }
    assert!(
        served.keys().all(|k| k == "v2@n1" || k == "v2@n2"),
        "n1's entry point served from a host v2 does not name: {served:?}"
    );
    assert!(
        served.contains_key("v2@n2"),
        "balanced routing used n2: {served:?}"
    );
}
