//! Three real nodes on loopback: convergence, failure detection, restart, leave, drain, and garbage
//! on the QUIC port.

use std::net::UdpSocket;
use std::time::Duration;

use halley_tests::{three_node_cluster, wait_until};

#[test]
fn three_nodes_converge_detect_a_kill_and_welcome_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _token) = three_node_cluster(tmp.path());

    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(15), || node.count("alive") == 3),
            "{} never saw 3 alive: {:?}\nlog:\n{}",
            node.name,
            node.status(),
            node.log()
        );
    }
    let generation_before = nodes[0].status().unwrap()["members"][2]["generation"]
        .as_u64()
        .unwrap();

    nodes[2].kill9();
    for node in &nodes[..2] {
        assert!(
            wait_until(Duration::from_secs(5), || node.state_of("n3").as_deref()
                == Some("dead")),
            "{} did not mark the killed n3 dead within 5 s: {:?}",
            node.name,
            node.status()
        );
    }

    nodes[2].start();
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(15), || node.count("alive") == 3),
            "{} did not see the restarted n3 alive: {:?}",
            node.name,
            node.status()
        );
    }
    let status = nodes[0].status().unwrap();
    let n3 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n3")
        .unwrap()
        .clone();
    assert!(
        n3["generation"].as_u64().unwrap() > generation_before,
        "a restart must use a larger generation: {n3}"
    );
    assert_eq!(
        status["members"].as_array().unwrap().len(),
        3,
        "one row per node name: {status}"
    );
}

#[test]
fn leave_drain_and_sigterm_are_seen_by_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _token) = three_node_cluster(tmp.path());
    assert!(wait_until(Duration::from_secs(15), || nodes[0]
        .count("alive")
        == 3));

    let out = nodes[1].cli(&["drain"]);
    assert!(out.status.success(), "{}", halley_tests::stderr(&out));
    assert!(
        wait_until(Duration::from_secs(5), || nodes[0]
            .state_of("n2")
            .as_deref()
            == Some("draining")),
        "n1 did not see n2 draining: {:?}",
        nodes[0].status()
    );
    assert!(nodes[1].cli(&["undrain"]).status.success());
    assert!(wait_until(Duration::from_secs(5), || nodes[0]
        .state_of("n2")
        .as_deref()
        == Some("alive")));

    // `leave`: peers see "left" well before the failure detector would call it dead.
    assert!(nodes[1].cli(&["leave"]).status.success());
    assert!(
        wait_until(Duration::from_secs(2), || nodes[0]
            .state_of("n2")
            .as_deref()
            == Some("left")),
        "n1 did not see n2 leave: {:?}",
        nodes[0].status()
    );
    assert!(
        wait_until(Duration::from_secs(10), || nodes[1].has_exited()),
        "leave must stop the daemon"
    );

    // SIGTERM is a graceful leave too.
    assert!(nodes[2].terminate(), "n3 did not exit on SIGTERM");
    assert!(
        wait_until(Duration::from_secs(2), || nodes[0]
            .state_of("n3")
            .as_deref()
            == Some("left")),
        "n1 did not see n3 leave on SIGTERM: {:?}",
        nodes[0].status()
    );
}

#[test]
fn garbage_on_the_quic_port_does_not_disturb_the_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _token) = three_node_cluster(tmp.path());
    assert!(wait_until(Duration::from_secs(15), || nodes[0]
        .count("alive")
        == 3));

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..2_000usize {
        let len = 1 + (i * 37) % 1400;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Some datagrams look like QUIC long headers, to reach deeper into the parser.
        let mut datagram = datagram;
        if i % 3 == 0 {
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
        }
        let _ = socket.send_to(&datagram, nodes[0].addr);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        nodes[0].status().is_some(),
        "n1 stopped answering after garbage"
    );
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(5), || node.count("alive") == 3),
            "{} lost members after garbage: {:?}",
            node.name,
            node.status()
        );
    }
}
