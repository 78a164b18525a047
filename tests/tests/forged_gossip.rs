//! Gossip in a worker's name: a stolen worker certificate that relays forged state about another
//! node (its `left` flag, a member that does not exist) over the real mesh must change nothing in
//! what the other nodes believe, while honest gossip between workers still converges.

use std::time::Duration;

use chitchat::{ChitchatId, ChitchatMessage, Deserializable, Serializable};
use halley_proto::codec::encode_message;
use halley_proto::message::GossipPacket;
use halley_proto::{Limit, Message};
use halley_tests::thief::stolen_identity;
use halley_tests::{Node, runtime, wait_converged, wait_until};

/// A SynAck, written byte by byte as chitchat 0.11 lays it out (chitchat builds digests and
/// deltas only from its own state, so a forger writes them): a digest claiming a heartbeat for
/// `victim_id` and for `ghost`, and a delta that says, as from `victim_id`'s own state,
/// `left = true` at a version far above any real one (so the real node's later updates would be
/// ignored).
fn forgery(victim_id: &ChitchatId, ghost: &ChitchatId) -> Vec<u8> {
    let mut m = Vec::new();
    45_139u16.serialize(&mut m); // magic
    m.extend([0, 1]); // protocol version, SynAck
    2u16.serialize(&mut m);
    for (id, heartbeat) in [(victim_id, 1u64 << 40), (ghost, 7)] {
        id.serialize(&mut m);
        for n in [heartbeat, 0, 0] {
            n.serialize(&mut m); // heartbeat, last GC version, max version
        }
    }
    let mut ops = vec![0u8]; // node op
    victim_id.serialize(&mut ops);
    0u64.serialize(&mut ops); // last GC version
    0u64.serialize(&mut ops); // from version (excluded)
    ops.push(1); // key-value op
    "left".serialize(&mut ops);
    "true".serialize(&mut ops);
    (1u64 << 40).serialize(&mut ops);
    ops.push(0); // set, not deleted
    m.push(2); // an uncompressed block
    (ops.len() as u16).serialize(&mut m);
    m.extend(ops);
    m.push(0); // no more blocks
    let parsed = ChitchatMessage::deserialize(&mut m.as_slice()).expect("chitchat reads it");
    assert!(matches!(parsed, ChitchatMessage::SynAck { .. }));
    encode_message(&Message::Gossip(GossipPacket(m)), Limit::Gossip).unwrap()
}

fn members(viewer: &Node) -> Vec<(String, String)> {
    viewer
        .status()
        .and_then(|s| {
            s["members"].as_array().map(|m| {
                m.iter()
                    .map(|m| {
                        let field = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
                        (field("name"), field("state"))
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn a_worker_cannot_gossip_in_another_nodes_name_and_workers_still_converge() {
    let root = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(root.path(), "n1");
    let token = n1.init_with(&["--token-role", "worker", "--token-uses", "unlimited"]);
    n1.start();
    let mut nodes = vec![n1];
    for name in ["n2", "n3"] {
        let mut node = Node::new(root.path(), name);
        halley_tests::assert_ok(&node.join(&token), "join a worker");
        node.start();
        nodes.push(node);
    }
    wait_converged(&nodes);
    // Honest gossip: the two workers know each other (through the admin or directly).
    assert!(
        wait_until(Duration::from_secs(20), || {
            nodes[1].state_of("n3").as_deref() == Some("alive")
                && nodes[2].state_of("n2").as_deref() == Some("alive")
        }),
        "the workers see each other alive: n2 sees {:?}, n3 sees {:?}",
        members(&nodes[1]),
        members(&nodes[2])
    );

    let generation = nodes[0].status().unwrap()["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n2")
        .and_then(|m| m["generation"].as_u64())
        .expect("n1 knows n2's generation");
    let victim_id = ChitchatId::new("n2", generation, nodes[1].addr);
    let ghost = ChitchatId::new("n9", 1, "127.0.0.1:9".parse().unwrap());
    let frame = forgery(&victim_id, &ghost);

    let rt = runtime();
    rt.block_on(async {
        // n3's certificate and key, as a thief who copied its data dir would hold them.
        let thief = stolen_identity(&nodes[2]);
        for _ in 0..10 {
            thief.send_gossip(nodes[0].addr, frame.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        thief.close().await;
    });

    // What n1 believes: n2 is still alive (not left) and there is no n9. Checked over a few
    // gossip rounds, since a forgery that took would also stop n2's own updates from landing.
    for _ in 0..5 {
        let seen = members(&nodes[0]);
        assert!(
            seen.iter().any(|(n, s)| n == "n2" && s == "alive"),
            "n1 took the forged `left` for n2: {seen:?}"
        );
        assert!(
            !seen.iter().any(|(n, _)| n == "n9"),
            "n1 took the forged member n9: {seen:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // And the real n2 still gets its word through: drain it, then see n1 say so.
    halley_tests::assert_ok(&nodes[1].cli(&["drain"]), "drain n2");
    assert!(
        wait_until(Duration::from_secs(20), || {
            nodes[0].state_of("n2").as_deref() == Some("draining")
        }),
        "n1 sees n2's own drain: {:?}",
        members(&nodes[0])
    );
}
