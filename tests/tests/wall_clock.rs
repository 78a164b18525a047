//! A rollout's deadlines run on monotonic time: the coordinator's wall clock stepping two hours
//! ahead during a bake (an NTP correction, a user's `date -s`) does not end the bake early. The
//! daemon's wall clock is moved with libfaketime (Debian's `faketime` package, preloaded; its
//! monotonic clock is left alone), so nothing on the machine changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halley_tests::{Node, assert_ok, deploy_in_background, free_tcp_port, http, runtime};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(|d| d.ok())
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
}

/// The hour (`YYYY-MM-DDTHH:`, UTC) on the node's fake clock, as its log lines start.
fn fake_hour(node: &Node) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:"])
        .envs(node.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn config(root: &Path, entry: SocketAddr, bake: &str) -> PathBuf {
    let path = root.join(format!("bake-{bake}.toml"));
    std::fs::write(
        &path,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"{entry}\"\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"{bake}\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_wall_clock_step_during_a_bake_does_not_end_it_early() {
    let Some(lib) = libfaketime() else {
        eprintln!(
            "skipped: libfaketime is not installed (Debian package faketime; .ci/run installs it)"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let offset = root.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut n1 = Node::new(root.path(), "n1");
    n1.init();
    n1.env = vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    n1.start();
    let entry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let artifact = Path::new(SERVICE_BIN);
    assert_ok(
        &n1.deploy(&config(root.path(), entry, "0s"), "web", "v1", artifact),
        "first rollout",
    );

    let bake = Duration::from_secs(6);
    let rollout = deploy_in_background(
        &n1,
        &config(root.path(), entry, "6s"),
        "web",
        "v2",
        artifact,
    );
    let rt = runtime();
    let serves_v2 = || {
        rt.block_on(http::get(entry, "/"))
            .ok()
            .is_some_and(|a| a.version() == Some("v2"))
    };
    assert!(
        halley_tests::wait_until(Duration::from_secs(20), serves_v2),
        "n1 never flipped to v2:\n{}",
        n1.log()
    );
    let baking = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&offset, "+2h\n").unwrap();
    let hour_then = fake_hour(&n1);
    let out = rollout.join().unwrap();
    let baked = baking.elapsed();
    assert_ok(&out, "the rollout of v2");
    // The flip is seen a moment after it happened; the bake started then.
    assert!(
        baked >= bake - Duration::from_millis(800),
        "the bake of {bake:?} ended {baked:?} after the flip: the wall-clock step cut it short"
    );
    // The step did reach the daemon: its log lines after the step are dated two hours on (the
    // hour is read through the same fake clock, before and after, in case an hour turns).
    let log = n1.log();
    let after = [hour_then, fake_hour(&n1)];
    assert!(
        after.iter().any(|h| log.contains(h.as_str())),
        "the daemon's wall clock did not step (no log line dated {after:?}):\n{log}"
    );
}
