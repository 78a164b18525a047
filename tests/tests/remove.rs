//! `remove NODE` on real processes: the removed node is told and stops, its data dir refuses to
//! run, every member (the one that removed it, another, and one restarted since) refuses its
//! certificate, `status` shows it `removed`, and its name cannot join again.

use std::time::Duration;

use halley_proto::Message;
use halley_proto::message::PeerRequest;
use halley_tests::cluster::Cluster;
use halley_tests::thief::stolen_identity;
use halley_tests::{Node, runtime, stderr, wait_until};

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
