//! The command line as a user meets it: completions, and bad input answered with an error that
//! names the problem (real `halley-node` processes).

use std::process::{Command, Stdio};
use std::time::Duration;

use halley_tests::{assert_ok, binary, free_tcp_port, single_node, stderr, wait_until, web_config};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

#[test]
fn bash_completion_completes_subcommands() {
    let script = Command::new(binary())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_ok(&script, "completions bash");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("halley-node.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // The completion function bash calls on TAB, asked for "halley-node dep".
    let probe = format!(
        "source {}; COMP_WORDS=(halley-node dep); COMP_CWORD=1; _halley__node halley-node dep halley-node; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert_ok(&out, "bash completion");
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(words.lines().any(|w| w == "deploy"), "{words}");
    assert!(!words.lines().any(|w| w == "status"), "{words}");
}

#[test]
fn bad_input_is_named_and_a_relative_data_dir_deploys() {
    let root = tempfile::tempdir().unwrap();
    let node = single_node(root.path());
    let port = free_tcp_port();
    let config = web_config(root.path(), port, "");
    let config_arg = config.display().to_string();

    let out = node.cli(&["history", "nosuch"]);
    assert!(!out.status.success(), "history of an unknown service");
    assert!(
        stderr(&out).contains("no rollout of service nosuch"),
        "{}",
        stderr(&out)
    );

    let out = node.cli(&[
        "deploy",
        "web",
        "-c",
        &config_arg,
        "--version",
        "v 6",
        "--artifact",
        SERVICE_BIN,
    ]);
    assert!(
        stderr(&out).contains("invalid release version \"v 6\""),
        "{}",
        stderr(&out)
    );

    let dir = root.path().display().to_string();
    let out = node.cli(&[
        "deploy",
        "web",
        "-c",
        &config_arg,
        "--version",
        "v1",
        "--artifact",
        &dir,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("disk full"), "{}", stderr(&out));

    let missing = root.path().join("missing.toml").display().to_string();
    let out = node.cli(&[
        "deploy",
        "web",
        "-c",
        &missing,
        "--version",
        "v1",
        "--artifact",
        SERVICE_BIN,
    ]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).matches("os error 2").count(),
        1,
        "the OS error once: {}",
        stderr(&out)
    );

    // The data dir given relative to the working directory: slots start in their release dir,
    // where the relative path would not resolve (it failed with "No such file" before).
    let out = Command::new(binary())
        .current_dir(root.path())
        .args([
            "deploy",
            "web",
            "-c",
            &format!("halley-{port}.toml"),
            "--version",
            "v1",
        ])
        .args(["--artifact", SERVICE_BIN, "--data-dir", "n1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "deploy with a relative --data-dir");
    assert!(wait_until(Duration::from_secs(10), || node
        .committed("web")
        .as_deref()
        == Some("v1")));
    let services = node.cli(&["services"]);
    let text = String::from_utf8_lossy(&services.stdout);
    assert!(
        text.contains("releases: committed v1, previous -, on disk v1"),
        "{text}"
    );
}
