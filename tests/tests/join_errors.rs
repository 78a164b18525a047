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

    // A token works once unless told otherwise.
    let out = n1.cli(&["token", "create"]);
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

#[test]
fn the_token_may_come_from_a_file_or_stdin_instead_of_the_command_line() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    let token = n1.init();
    n1.start();
    let join_args = |node: &Node| {
        vec![
            "join".to_owned(),
            "--name".to_owned(),
            node.name.clone(),
            "--listen".to_owned(),
            node.addr.to_string(),
        ]
    };

    // From a file.
    let file = tmp.path().join("token.txt");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let n2 = Node::new(tmp.path(), "n2");
    let mut args = join_args(&n2);
    args.extend(["--token-file".to_owned(), file.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = n2.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(n2.dir.join("node.rec").exists());

    // From stdin.
    let n3 = Node::new(tmp.path(), "n3");
    let mut child = Command::new(halley_tests::binary())
        .args(join_args(&n3))
        .arg("--data-dir")
        .arg(&n3.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(n3.dir.join("node.rec").exists());

    // Nothing on stdin, an empty or missing file, or both a token and a file: clear errors.
    let n4 = Node::new(tmp.path(), "n4");
    let args = join_args(&n4);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_with(&n4.cli(&args), "no join token in stdin");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let mut with_empty = args.clone();
    with_empty.extend(["--token-file", empty.to_str().unwrap()]);
    assert_fails_with(&n4.cli(&with_empty), "no join token in");
    let mut with_missing = args.clone();
    with_missing.extend(["--token-file", "/nonexistent/token"]);
    assert_fails_with(&n4.cli(&with_missing), "cannot read the token file");
    let mut with_both = args.clone();
    with_both.extend([token.as_str(), "--token-file", file.to_str().unwrap()]);
    assert_fails_with(&n4.cli(&with_both), "cannot be used with");
    assert_nothing_written(&n4);
}
