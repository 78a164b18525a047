//! `remove NODE` on real processes: the removed node is told and stops, its data dir refuses to
//! run, every member (the one that removed it, another, and one restarted since) refuses its
//! certificate, `status` shows it `removed`, and its name cannot join again. A node removed while
//! it was down is told by the first admin that refuses it, and stops for good too.

use std::time::Duration;

use halley_proto::Message;
use halley_proto::message::PeerRequest;
use halley_tests::cluster::Cluster;
use halley_tests::thief::stolen_identity;
use halley_tests::{Node, runtime, start_cluster, stderr, wait_converged, wait_until};

#[test]
fn remove_cuts_a_node_off_for_good() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let out = cluster.nodes[0].cli(&["remove", "n3"]);
    assert!(out.status.success(), "remove n3: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("n3 heard it"), "{said}");
    assert!(
        wait_until(Duration::from_secs(15), || cluster.nodes[2].has_exited()),
        "n3 did not stop:\n{}",
        cluster.nodes[2].log()
    );
    for viewer in 0..2 {
        assert!(
            wait_until(Duration::from_secs(15), || cluster.nodes[viewer]
                .state_of("n3")
                .as_deref()
                == Some("removed")),
            "{} does not show n3 removed: {:?}",
            cluster.nodes[viewer].name,
            cluster.nodes[viewer].status()
        );
    }

    // Its data dir refuses to run.
    cluster.nodes[2].spawn(&[], None);
    assert!(
        wait_until(Duration::from_secs(10), || cluster.nodes[2].has_exited()),
        "a removed node's data dir ran"
    );
    let log = cluster.nodes[2].log();
    assert!(log.contains("was removed from its cluster by n1"), "{log}");

    // Its certificate (n3 was an admin) gets nothing from anyone, a restarted member included.
    cluster.restart(1);
    let (n3_name, addrs) = (
        halley_proto::NodeName::parse("n3").unwrap(),
        [cluster.nodes[0].addr, cluster.nodes[1].addr],
    );
    let names = ["n1", "n2"].map(|n| halley_proto::NodeName::parse(n).unwrap());
    rt.block_on(async {
        let thief = stolen_identity(&cluster.nodes[2]);
        for (addr, name) in addrs.iter().zip(&names) {
            let reply = thief
                .request(
                    *addr,
                    name,
                    &Message::Peer(PeerRequest::Services),
                    Duration::from_secs(5),
                )
                .await;
            assert!(
                reply.is_err(),
                "{name} answered the removed node {n3_name}: {reply:?}"
            );
        }
        thief.close().await;
    });

    // The name cannot join again, and removing twice or an unknown node says so.
    let token_out = cluster.nodes[0].cli(&["token", "create"]);
    let token = String::from_utf8_lossy(&token_out.stdout).trim().to_owned();
    let again = Node::new(&cluster.dir.join("again"), "n3");
    let out = again.join(&token);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("was removed from this cluster"),
        "{}",
        stderr(&out)
    );
    let out = cluster.nodes[1].cli(&["remove", "n3"]);
    assert!(stderr(&out).contains("removed already"), "{}", stderr(&out));
    let out = cluster.nodes[0].cli(&["remove", "n9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("knows no member named n9") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    // One long gone (forgotten by the membership) is removed with --force.
    let out = cluster.nodes[0].cli(&["remove", "n9", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("n9 did not answer"));
}

#[test]
fn a_node_removed_while_down_is_told_when_it_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(root.path(), &["n1", "n2"]);
    wait_converged(&nodes);
    nodes[1].kill9();
    let out = nodes[0].cli(&["remove", "n2"]);
    assert!(out.status.success(), "remove n2: {}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("n2 did not answer"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Back up, it dials n1 (its seed), which refuses it as removed: it records that and stops.
    nodes[1].spawn(&[], None);
    assert!(
        wait_until(Duration::from_secs(30), || nodes[1].has_exited()),
        "n2, removed while down, kept running:\n{}",
        nodes[1].log()
    );
    assert!(
        nodes[1]
            .log()
            .contains("this node was removed from the cluster"),
        "{}",
        nodes[1].log()
    );
    nodes[1].spawn(&[], None);
    assert!(
        wait_until(Duration::from_secs(10), || nodes[1].has_exited()),
        "a removed node's data dir ran"
    );
    let log = nodes[1].log();
    assert!(log.contains("was removed from its cluster by n1"), "{log}");
    // n1 carries on.
    assert_eq!(nodes[0].state_of("n2").as_deref(), Some("removed"));
}
