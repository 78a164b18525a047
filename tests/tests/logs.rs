//! `halley-node logs`: one log per release and slot, read on this node or another over the mesh,
//! followed, redacted, refused to a worker, and rotated so a noisy service stays bounded.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use halley_tests::{Node, assert_ok, binary, free_tcp_port, runtime, stderr, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");
const SECRET: &str = "averysecretvalue123";

fn config(root: &Path, port: u16, extra_env: &str) -> std::path::PathBuf {
    let env = format!(
        "env = {{ SECRET_TOKEN = \"{SECRET}\", TS_PRINT_ENV = \"SECRET_TOKEN\"{extra_env} }}"
    );
    halley_tests::web_config(root, port, &env)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logs_by_release_from_another_node_followed_and_refused_to_a_worker() {
    let root = tempfile::tempdir().unwrap();
    let mut admin = Node::new(root.path(), "n1");
    admin.init();
    admin.start_with(&["--service-address", "127.0.0.1"]);
    let worker_token = stdout(&admin.cli(&["token", "create"]))
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let mut worker = Node::new(root.path(), "n2");
    assert_ok(&worker.join(&worker_token), "join as a worker");
    worker.start_with(&["--service-address", "127.0.0.2"]);
    assert!(
        wait_until(Duration::from_secs(10), || admin.count("alive") == 2),
        "n2 did not show up"
    );
    let nodes = [admin, worker];
    let port = free_tcp_port();
    let cfg = config(root.path(), port, "");
    assert_ok(
        &nodes[0].deploy(&cfg, "web", "1", SERVICE_BIN.as_ref()),
        "deploy 1",
    );
    assert_ok(
        &nodes[0].deploy(&cfg, "web", "2", SERVICE_BIN.as_ref()),
        "deploy 2",
    );

    // The serving release's log holds its own output only.
    let out = nodes[0].cli(&["logs", "web"]);
    assert_ok(&out, "logs web");
    let text = stdout(&out);
    assert!(text.contains("test-service 2 listening"), "{text}");
    assert!(
        !text.contains("test-service 1 listening"),
        "release 1's lines: {text}"
    );
    // The env value the release printed (and, at 8 characters or more, the variable's name,
    // which is TS_PRINT_ENV's value) is redacted.
    assert!(
        text.contains("=[redacted]") && !text.contains(SECRET),
        "{text}"
    );

    let out = nodes[0].cli(&["logs", "web", "--release", "1"]);
    assert_ok(&out, "logs web --release 1");
    assert!(
        stdout(&out).contains("test-service 1 listening"),
        "{}",
        stdout(&out)
    );

    // n2's own log, read from n1 over the mesh: its last line, as on n2's disk.
    let out = nodes[0].cli(&["logs", "web", "--node", "n2", "--lines", "1"]);
    assert_ok(&out, "logs web --node n2");
    let logs_dir = nodes[1].dir.join("services/web/logs");
    let on_n2: String = std::fs::read_dir(&logs_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("2-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let last = on_n2.lines().last().unwrap_or_default().to_owned();
    assert_eq!(stdout(&out).trim_end(), last.replace(SECRET, "[redacted]"));

    // A worker may read its own logs, not an admin's.
    assert_ok(
        &nodes[1].cli(&["logs", "web", "--lines", "1"]),
        "a worker's own logs",
    );
    let out = nodes[1].cli(&["logs", "web", "--node", "n1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("read another node's logs"),
        "{}",
        stderr(&out)
    );

    let out = nodes[0].cli(&["logs", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("service nosuch does not run on node n1"),
        "{}",
        stderr(&out)
    );
    let out = nodes[0].cli(&["logs", "web", "--release", "9"]);
    assert!(
        stderr(&out).contains("no log of release 9 of web on node n1"),
        "{}",
        stderr(&out)
    );

    // --follow prints what the slot writes next: here, its next start after a crash.
    let mut follow = Command::new(binary())
        .args(["logs", "web", "--follow", "--lines", "0", "--data-dir"])
        .arg(&nodes[0].dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let entry = format!("127.0.0.1:{port}").parse().unwrap();
    let _ = runtime().block_on(halley_tests::http::get(entry, "/crash"));
    let mut pipe = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("test-service 2 listening") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let done = wait_until(Duration::from_secs(15), || reader.is_finished());
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(done, "--follow printed no new start within 15 s");
    let followed = reader.join().unwrap();
    assert!(followed.contains("test-service 2 listening"), "{followed}");
    for node in nodes {
        node.kill_services();
    }
}

#[test]
fn a_noisy_service_keeps_two_log_files_bounded_by_log_max() {
    let root = tempfile::tempdir().unwrap();
    let node = halley_tests::single_node(root.path());
    let port = free_tcp_port();
    // 16 MiB at about 4 MiB a second, against `log_max = "1MiB"`.
    let noise: u64 = 16 << 20;
    let env = format!(
        "log_max = \"1MiB\"\nenv = {{ SECRET_TOKEN = \"{SECRET}\", TS_NOISE_BYTES = \"{noise}\" }}"
    );
    let cfg = halley_tests::web_config(root.path(), port, &env);
    assert_ok(
        &node.deploy(&cfg, "web", "1", SERVICE_BIN.as_ref()),
        "deploy",
    );
    let logs_dir = node.dir.join("services/web/logs");
    let log = logs_dir.join("1-blue.log");
    let done = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("noise done"))
    });
    assert!(done, "the service's noise did not finish");
    let sizes: Vec<(String, u64)> = std::fs::read_dir(&logs_dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let len = e.metadata().unwrap().len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    let total: u64 = sizes.iter().map(|(_, l)| l).sum();
    assert!(
        sizes.iter().any(|(n, _)| n == "1-blue.log.1"),
        "rotated once at least: {sizes:?}"
    );
    assert_eq!(sizes.len(), 2, "two files: {sizes:?}");
    // Each file stops growing within a second or so of passing 1 MiB: at about 4 MiB a second,
    // under 7 MiB. Rotated at the default 8 MiB, one file would be 8 MiB at least.
    for (name, len) in &sizes {
        assert!(*len < 7 << 20, "{name} is {len} bytes");
    }
    assert!(total < noise, "{total} bytes kept of {noise} written");

    let out = node.cli(&["logs", "web", "--lines", "2"]);
    assert_ok(&out, "logs after rotation");
    let text = stdout(&out);
    assert!(text.contains("noise done"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    node.kill_services();
}
