//! `forget NODE` on real processes: a node that left is dropped from `status` on every live
//! member and stays out across a restart; a live node or the node itself is refused.

use std::time::Duration;

use halley_tests::{assert_ok, start_cluster, stderr, wait_until};

fn names(node: &halley_tests::Node) -> Vec<String> {
    node.status()
        .and_then(|s| {
            s["members"].as_array().map(|m| {
                m.iter()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn a_node_that_left_is_forgotten_everywhere_and_stays_forgotten() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(root.path(), &["n1", "n2", "n3"]);
    assert!(
        wait_until(Duration::from_secs(15), || nodes
            .iter()
            .all(|n| n.count("alive") == 3)),
        "the cluster did not converge"
    );
    assert_ok(&nodes[2].cli(&["leave"]), "n3 leaves");
    assert!(
        wait_until(Duration::from_secs(10), || nodes[..2]
            .iter()
            .all(|n| n.state_of("n3").as_deref() == Some("left"))),
        "n3 not shown as left"
    );

    let out = nodes[0].cli(&["forget", "n2"]);
    assert!(!out.status.success(), "a live node is not forgotten");
    assert!(
        stderr(&out).contains("n2 is alive as n1 sees it: only a dead, left or removed node"),
        "{}",
        stderr(&out)
    );
    let out = nodes[0].cli(&["forget", "n1"]);
    assert!(stderr(&out).contains("n1 is this node"), "{}", stderr(&out));
    let out = nodes[0].cli(&["forget", "nosuch"]);
    assert!(
        stderr(&out).contains("no member is named nosuch"),
        "{}",
        stderr(&out)
    );

    let out = nodes[0].cli(&["forget", "n3"]);
    assert_ok(&out, "forget n3");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("forgot n3 (generation"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for node in &nodes[..2] {
        assert_eq!(names(node), ["n1", "n2"], "{} still shows n3", node.name);
    }
    // Peers still gossip n3's state for an hour; the restarted n1 keeps it out.
    assert!(nodes[0].terminate(), "n1 stops");
    nodes[0].start();
    assert!(
        wait_until(Duration::from_secs(10), || nodes[0].count("alive") == 2),
        "n1 does not see n2 again"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(names(&nodes[0]), ["n1", "n2"]);
    assert_eq!(names(&nodes[1]), ["n1", "n2"]);
}
