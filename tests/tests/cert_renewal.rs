//! Certificate lifecycle on real processes: a cluster whose node certificates live one minute
//! renews them (each node through an admin, a worker included) and is still converged and
//! deploying after five minutes, across restarts that load a renewed certificate, one of them
//! from the middle of saving a renewal and one with a key whose certificate never came; `status`
//! reports each node's expiry; `init --cert-validity` refuses what cannot work.

use std::path::Path;
use std::time::{Duration, Instant};

use halley_tests::{Node, assert_ok, free_tcp_port, stderr, wait_converged, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn expires_ms(node: &Node) -> Option<u64> {
    node.status()?["certificate"]["expires_ms"].as_u64()
}

fn deploy(node: &Node, config: &Path, version: &str) -> std::process::Output {
    node.deploy(config, "web", version, Path::new(SERVICE_BIN))
}

#[test]
fn one_minute_certificates_renew_and_the_cluster_still_converges_and_deploys_after_five_minutes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    let admin_token = n1.init_with(&["--cert-validity", "1m", "--token-role", "admin"]);
    n1.start_with(&["--service-address", "127.0.0.1"]);
    let out = n1.cli(&["token", "create"]);
    assert_ok(&out, "token create");
    let worker_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut n2 = Node::new(tmp.path(), "n2");
    assert_ok(&n2.join(&worker_token), "join n2 as a worker");
    n2.start_with(&["--service-address", "127.0.0.2"]);
    let mut n3 = Node::new(tmp.path(), "n3");
    assert_ok(&n3.join(&admin_token), "join n3 as an admin");
    n3.start_with(&["--service-address", "127.0.0.3"]);
    let mut nodes = vec![n1, n2, n3];
    wait_converged(&nodes);

    let first: Vec<u64> = nodes.iter().map(|n| expires_ms(n).unwrap()).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (node, expires) in nodes.iter().zip(&first) {
        assert!(
            expires.abs_diff(now_ms + 60_000) < 30_000,
            "{}'s certificate lives a minute: expires {expires}, now {now_ms}",
            node.name
        );
    }
    let config = tmp.path().join("web.toml");
    std::fs::write(
        &config,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \":{}\"\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n",
            free_tcp_port()
        ),
    )
    .unwrap();

    // Five minutes: five lifetimes of the first certificates. Every half minute every node
    // still sees every node alive. Halfway, the worker restarts on a renewed certificate, killed
    // as if in the middle of saving a renewal: the certificate written, its key not yet renamed
    // into place. A minute later n3 restarts with a waiting key that never got its certificate.
    let start = Instant::now();
    let (mut restarted, mut restarted_n3) = (false, false);
    let first_key = std::fs::read(nodes[1].dir.join("node.key")).unwrap();
    while start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_secs(30));
        assert!(
            wait_until(Duration::from_secs(10), || nodes
                .iter()
                .all(|n| n.count("alive") == 3)),
            "the cluster fell apart after {:?}: {:?}\n{}",
            start.elapsed(),
            nodes.iter().map(Node::status).collect::<Vec<_>>(),
            nodes[1].log()
        );
        if !restarted && start.elapsed() > Duration::from_secs(150) {
            restarted = true;
            nodes[1].kill9();
            let dir = nodes[1].dir.clone();
            let renewed_key = std::fs::read(dir.join("node.key")).unwrap();
            assert_ne!(renewed_key, first_key, "n2 renewed its key by now");
            std::fs::rename(dir.join("node.key"), dir.join("node.key.next")).unwrap();
            std::fs::write(dir.join("node.key"), &first_key).unwrap();
            nodes[1].start_with(&["--service-address", "127.0.0.2"]);
            assert!(!dir.join("node.key.next").exists());
            assert_eq!(std::fs::read(dir.join("node.key")).unwrap(), renewed_key);
        } else if restarted && !restarted_n3 && start.elapsed() > Duration::from_secs(210) {
            restarted_n3 = true;
            nodes[2].kill9();
            let dir = nodes[2].dir.clone();
            let key = std::fs::read(dir.join("node.key")).unwrap();
            std::fs::copy(nodes[0].dir.join("node.key"), dir.join("node.key.next")).unwrap();
            nodes[2].start_with(&["--service-address", "127.0.0.3"]);
            assert!(!dir.join("node.key.next").exists());
            assert_eq!(std::fs::read(dir.join("node.key")).unwrap(), key);
        }
    }
    assert!(restarted && restarted_n3);
    for (i, node) in nodes.iter().enumerate() {
        let now = expires_ms(node).unwrap();
        assert!(
            now > first[i] + 200_000,
            "{} renewed its certificate: first expiry {}, now {now}\n{}",
            node.name,
            first[i],
            node.log()
        );
    }
    // And the cluster deploys: from the init node and from the admin that joined.
    assert_ok(&deploy(&nodes[0], &config, "v1"), "deploy v1 from n1");
    assert_ok(&deploy(&nodes[2], &config, "v2"), "deploy v2 from n3");
    for node in &nodes {
        assert_eq!(
            node.committed("web").as_deref(),
            Some("v2"),
            "{}",
            node.name
        );
    }
}

#[test]
fn init_refuses_a_certificate_validity_it_cannot_keep() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path(), "n1");
    let addr = node.addr.to_string();
    for bad in ["30s", "4000d"] {
        let out = node.cli(&[
            "init",
            "--name",
            "n1",
            "--listen",
            &addr,
            "--cert-validity",
            bad,
        ]);
        assert!(!out.status.success());
        let text = stderr(&out);
        assert!(
            text.contains("--cert-validity") && text.contains("between 1m and 3650d"),
            "{text}"
        );
        assert!(!node.dir.join("node.pem").exists(), "nothing was created");
    }
}
