//! A node whose certificate comes from another CA cannot gossip with the cluster, and the cluster
//! keeps running.

use std::time::Duration;

use halley_proto::codec::encode_record;
use halley_proto::disk::PeersRecord;
use halley_tests::{Node, three_node_cluster, wait_until};

#[test]
fn a_node_from_another_ca_is_refused_in_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _token) = three_node_cluster(tmp.path());
    assert!(wait_until(Duration::from_secs(15), || nodes[0]
        .count("alive")
        == 3));

    // A self-made cluster whose only node is told (via its peers file) to gossip with n1.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut intruder = Node::new(&other, "intruder");
    intruder.init();
    let peers = PeersRecord {
        addrs: vec![nodes[0].addr, nodes[1].addr],
    };
    std::fs::write(
        intruder.dir.join("peers.rec"),
        encode_record(&peers).unwrap(),
    )
    .unwrap();
    intruder.start();

    std::thread::sleep(Duration::from_secs(3));
    for node in &nodes {
        let status = node.status().expect("cluster node still answers");
        let names: Vec<&str> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["n1", "n2", "n3"],
            "{} let the intruder in",
            node.name
        );
    }
    let intruder_view = intruder.status().expect("intruder still runs");
    assert_eq!(
        intruder_view["members"].as_array().unwrap().len(),
        1,
        "{intruder_view}"
    );
    let log = nodes[0].log();
    assert!(
        log.contains("refused a connection"),
        "n1 should log the refusal:\n{log}"
    );
    let refusals = log.matches("refused a connection").count();
    assert!(
        refusals <= 2,
        "refusals must be rate-limited per peer, got {refusals}:\n{log}"
    );
    assert!(wait_until(Duration::from_secs(2), || nodes[0]
        .count("alive")
        == 3));
}
