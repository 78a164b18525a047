//! A slot process the node started but never recorded (the node died between the spawn and the
//! save) is stopped when the node starts again, instead of running for ever unseen; recorded
//! slot processes are adopted as before.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use halley_tests::{Node, assert_ok, free_tcp_port, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn environ(pid: u64) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv).into_owned();
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_slot_process_the_node_never_recorded_is_stopped_when_it_starts_again() {
    let root = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(root.path(), "n1");
    n1.init();
    n1.start_with(&["--service-address", "127.0.0.1"]);
    let entry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let config = root.path().join("web.toml");
    std::fs::write(
        &config,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"{entry}\"\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n"
        ),
    )
    .unwrap();
    assert_ok(
        &n1.deploy(&config, "web", "v1", Path::new(SERVICE_BIN)),
        "first deploy",
    );
    let active = n1.slot("web", "active").expect("an active slot");
    let v1_pid = active["pid"].as_u64().expect("a pid");
    // The owner tag the node gives its slot processes.
    let tags: Vec<(String, String)> = environ(v1_pid)
        .into_iter()
        .filter(|(k, _)| k.starts_with("HALLEY_"))
        .collect();
    assert!(
        tags.iter().any(|(k, _)| k == "HALLEY_NODE_ROOT"),
        "slot processes carry no owner tag: {tags:?}"
    );

    // The node dies; a process of the other slot, started by it but not recorded, runs on.
    n1.kill9();
    let other = if active["color"] == "blue" {
        "green"
    } else {
        "blue"
    };
    let mut stray = std::process::Command::new("sleep")
        .arg("600")
        .env_clear()
        .envs(tags.iter().filter(|(k, _)| k != "HALLEY_SLOT").cloned())
        .env("HALLEY_SLOT", other)
        .process_group(0)
        .spawn()
        .unwrap();
    let stray_pid = stray.id();
    n1.start_with(&["--service-address", "127.0.0.1"]);
    let stopped = wait_until(Duration::from_secs(10), || {
        matches!(stray.try_wait(), Ok(Some(_))) || !alive(stray_pid)
    });
    if !stopped {
        let _ = stray.kill();
    }
    let _ = stray.wait();
    assert!(
        stopped,
        "the unrecorded slot process {stray_pid} still runs after the node restarted"
    );
    // The recorded one was adopted, not stopped.
    let adopted = n1.slot("web", "active").expect("an active slot");
    assert_eq!(adopted["pid"].as_u64(), Some(v1_pid));
    assert!(
        n1.log().contains("was never recorded"),
        "the node does not say why it stopped a process"
    );
}
