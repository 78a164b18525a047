//! Who holds a host drained, on real nodes: a rollout ends only its own drain (the operator's
//! `drain` outlives it), and a rollout whose coordinator dies between draining a host and
//! undraining it does not leave the host drained for good.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halley_tests::{Node, assert_ok, deploy_in_background, free_tcp_port, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

/// `web` on n1 only (so n2 coordinates without hosting it), with the given rollout settings.
fn config(root: &Path, entry: SocketAddr, name: &str, rollout: &str) -> PathBuf {
    let path = root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"{entry}\"\nhosts = [\"n1\"]\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\nbake = \"0s\"\n{rollout}\n"
        ),
    )
    .unwrap();
    path
}

fn state(viewer: &Node) -> Option<String> {
    viewer.state_of("n1")
}

#[test]
fn a_rollout_ends_only_its_own_drain_and_a_dead_coordinators_drain_expires() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = halley_tests::start_cluster(root.path(), &["n1", "n2"]);
    halley_tests::wait_converged(&nodes);
    let entry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quick = config(root.path(), entry, "quick", "drain_wait = \"0s\"");
    let artifact = Path::new(SERVICE_BIN);

    // The operator drains n1; a rollout that drains and undrains n1 must leave that drain on.
    // (The old flag was one bool: the rollout's undrain cleared the operator's drain.)
    assert_ok(&nodes[0].cli(&["drain"]), "drain n1");
    assert!(
        wait_until(Duration::from_secs(5), || state(&nodes[1]).as_deref()
            == Some("draining")),
        "n1 never showed draining: {:?}",
        state(&nodes[1])
    );
    assert_ok(
        &nodes[1].deploy(&quick, "web", "v1", artifact),
        "first rollout, coordinated by n2",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state(&nodes[1]).as_deref(),
        Some("draining"),
        "the rollout's undrain ended the operator's drain of n1"
    );
    let undrain = nodes[0].cli(&["undrain"]);
    assert_ok(&undrain, "undrain n1");
    assert!(
        wait_until(Duration::from_secs(5), || state(&nodes[1]).as_deref()
            == Some("alive")),
        "n1 still draining after undrain: {:?}",
        state(&nodes[1])
    );

    // n2 drains n1 for a rollout and dies in drain_wait, before any step reached n1: nothing
    // on n1 is unfinished, so no orphan rule applies. The hold ends drain_wait + orphan_timeout
    // (6 s) after it was taken. (The old flag stayed set until someone ran `undrain`.)
    let slow = config(
        root.path(),
        entry,
        "slow",
        "drain_wait = \"4s\"\norphan_timeout = \"2s\"",
    );
    let coordinator = deploy_in_background(&nodes[1], &slow, "web", "v2", artifact);
    assert!(
        wait_until(Duration::from_secs(15), || state(&nodes[0]).as_deref()
            == Some("draining")),
        "n2's rollout never drained n1: {:?}",
        state(&nodes[0])
    );
    let drained_at = Instant::now();
    nodes[1].kill9();
    let _ = coordinator.join();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state(&nodes[0]).as_deref(),
        Some("draining"),
        "the hold ended before its time"
    );
    assert!(
        wait_until(Duration::from_secs(20), || state(&nodes[0]).as_deref()
            == Some("alive")),
        "n1 stayed drained {:?} after its coordinator died: {:?}",
        drained_at.elapsed(),
        state(&nodes[0])
    );
    assert!(
        nodes[0].log().contains("drain hold expired"),
        "n1's log does not say why it stopped draining"
    );
}

#[test]
fn the_operators_drain_outlives_a_restart_and_an_upgrade() {
    let root = tempfile::tempdir().unwrap();
    let mut node = halley_tests::single_node(root.path());
    let port = free_tcp_port();
    let config = halley_tests::web_config(root.path(), port, "");
    assert_ok(
        &node.deploy(&config, "web", "1", SERVICE_BIN.as_ref()),
        "deploy",
    );
    let entry: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = halley_tests::runtime();
    let ready = || {
        rt.block_on(halley_tests::http::get(entry, "/.halley/ready"))
            .map(|a| a.status)
            .ok()
    };
    assert_eq!(ready(), Some(200));
    assert_ok(&node.cli(&["drain"]), "drain");
    assert_eq!(ready(), Some(503));

    // Before, a restart came back undrained: a balancer sent it work again unasked.
    assert!(node.terminate());
    node.start_with(&["--service-address", "127.0.0.1"]);
    assert_eq!(ready(), Some(503), "still drained after a restart");
    assert!(
        wait_until(Duration::from_secs(10), || node.state_of("n1").as_deref()
            == Some("draining")),
        "{:?}",
        node.status()
    );
    assert_ok(&node.upgrade(&[]), "upgrade");
    assert_eq!(ready(), Some(503), "still drained after an upgrade");

    assert_ok(&node.cli(&["undrain"]), "undrain");
    node.kill9();
    node.start_with(&["--service-address", "127.0.0.1"]);
    assert_eq!(ready(), Some(200), "undrained for good");
    node.kill_services();
}
