//! What a user sees for bad tokens and bad joins, and that a failed join writes nothing.

use std::time::Duration;

use halley_tests::{Node, stderr, wait_until};

fn assert_fails_with(out: &std::process::Output, expect: &str) {
    assert!(
        !out.status.success(),
        "expected failure containing {expect:?}"
    );
    let err = stderr(out);
    assert!(
        err.contains(expect),
        "stderr should mention {expect:?}:\n{err}"
    );
}

fn assert_nothing_written(node: &Node) {
    assert!(
        !node.dir.join("node.rec").exists(),
        "a failed join must not leave node.rec"
    );
    assert!(
        !node.dir.join("node.key").exists(),
        "a failed join must not leave node.key"
    );
}

#[test]
fn bad_tokens_and_names_give_clear_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    let token = n1.init();
    n1.start();

    // Malformed.
    let n9 = Node::new(tmp.path(), "n9");
    assert_fails_with(&n9.join("not-a-token"), "invalid join token");
    assert_fails_with(&n9.join(&token[..token.len() / 2]), "invalid join token");

    // A CA hash that is not this cluster's: the joiner refuses to send the secret.
    let mut forged = token.clone();
    let hash_start = "HLY1.".len();
    let flipped = if &forged[hash_start..hash_start + 1] == "0" {
        "1"
    } else {
        "0"
    };
    forged.replace_range(hash_start..hash_start + 1, flipped);
    assert_fails_with(&n9.join(&forged), "man-in-the-middle");
    assert_nothing_written(&n9);

    // A wrong secret.
    let secret_end = token.find('@').unwrap();
    let mut wrong_secret = token.clone();
    let last = &wrong_secret[secret_end - 1..secret_end];
    let flipped = if last == "0" { "1" } else { "0" };
    wrong_secret.replace_range(secret_end - 1..secret_end, flipped);
    assert_fails_with(&n9.join(&wrong_secret), "secret is wrong");
    assert_nothing_written(&n9);

    // Nobody listening at the token's address.
    let dead_addr = halley_tests::free_addr();
    let elsewhere = format!("{}@{dead_addr}", &token[..secret_end]);
    let out = n9.join(&elsewhere);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&dead_addr.to_string()),
        "{}",
        stderr(&out)
    );
    assert_nothing_written(&n9);

    // A single-use token works once.
    let out = n1.cli(&["token", "create", "--uses", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let once = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let n2 = Node::new(tmp.path(), "n2");
    assert!(n2.join(&once).status.success());
    let n3 = Node::new(tmp.path(), "n3");
    assert_fails_with(&n3.join(&once), "used as many times");
    assert_nothing_written(&n3);

    // An expired token.
    let out = n1.cli(&["token", "create", "--ttl", "1s"]);
    let short = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::thread::sleep(Duration::from_millis(1_200));
    assert_fails_with(&n3.join(&short), "expired");
    assert_nothing_written(&n3);

    // A name a live node holds (n1 itself here; n2 is not running).
    let dup = Node::new(tmp.path(), "dup");
    let out = std::process::Command::new(halley_tests::binary())
        .args([
            "join",
            &token,
            "--name",
            "n1",
            "--listen",
            &dup.addr.to_string(),
            "--data-dir",
        ])
        .arg(&dup.dir)
        .output()
        .unwrap();
    assert_fails_with(&out, "already exists");
    assert!(!dup.dir.join("node.rec").exists());

    // Joining into a data dir that already holds a node.
    assert_fails_with(&n2.join(&token), "already holds a node identity");

    // The node that failed all of that is still healthy.
    assert!(wait_until(Duration::from_secs(2), || n1.status().is_some()));
}

#[test]
fn cli_errors_for_a_missing_daemon_and_a_bad_name() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = Node::new(tmp.path(), "n1");
    assert_fails_with(&n1.cli(&["status"]), "holds no node");
    let out = n1.cli(&["init", "--name", "Bad_Name"]);
    assert_fails_with(&out, "invalid node name");
    let out = n1.cli(&["init", "--name", "n1", "--listen", "0.0.0.0:7946"]);
    assert_fails_with(&out, "--advertise");
    assert!(!n1.dir.join("node.rec").exists());
    n1.init();
    assert_fails_with(&n1.cli(&["status"]), "no halley-node is running");
    assert_fails_with(&n1.cli(&["token", "create"]), "no halley-node is running");
}
