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
    // Each launch is written ahead with an id the slot process carries.
    let launch = environ(v1_pid)
        .into_iter()
        .find(|(k, _)| k == "HALLEY_LAUNCH")
        .map(|(_, v)| v)
        .expect("slot processes carry their launch id");
    let color = active["color"].as_str().unwrap().to_owned();
    let intent = n1.dir.join(format!("services/web/{color}.launch"));
    assert_eq!(std::fs::read_to_string(&intent).unwrap().trim(), launch);

    // The node dies just after a new launch of the other slot: its intent is on disk, the
    // process runs (here a stand-in with that launch's id, in its own group), the record does
    // not name it.
    n1.kill9();
    let other = if color == "blue" { "green" } else { "blue" };
    let stray_launch = "00112233445566778899aabbccddeeff";
    std::fs::write(
        n1.dir.join(format!("services/web/{other}.launch")),
        stray_launch,
    )
    .unwrap();
    let sleeper = |launch: &str| {
        std::process::Command::new("sleep")
            .arg("600")
            .env_clear()
            .env("HALLEY_LAUNCH", launch)
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut stray = sleeper(stray_launch);
    // A process of an older launch of that slot (another id) is not the node's to stop.
    let mut bystander = sleeper("ffeeddccbbaa99887766554433221100");
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
    assert!(
        matches!(bystander.try_wait(), Ok(None)),
        "a process of another launch was stopped"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    // The recorded one was adopted, not stopped.
    let adopted = n1.slot("web", "active").expect("an active slot");
    assert_eq!(adopted["pid"].as_u64(), Some(v1_pid));
    assert!(
        n1.log().contains("never recorded it"),
        "the node does not say why it stopped a process"
    );
}
