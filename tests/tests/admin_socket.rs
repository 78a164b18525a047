//! The admin socket serves only root and the data dir's owner, whatever its mode has become, and
//! drops a client that sends nothing.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use halley_tests::{Node, stderr};

#[test]
fn another_user_is_refused_even_through_an_open_socket_and_idle_clients_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "n1");
    n1.init();
    n1.start();
    let socket = n1.dir.join("admin.sock");

    // An operator's mistake opens the way: the dirs traversable, the socket world-writable.
    let mode = |path: &std::path::Path, m: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(tmp.path(), 0o711);
    mode(&n1.dir, 0o711);
    mode(&socket, 0o666);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(halley_tests::binary())
        .arg("status")
        .arg("--data-dir")
        .arg(&n1.dir)
        .output()
        .expect("setpriv runs (util-linux); the test runs as root");
    assert!(
        !out.status.success() && stderr(&out).contains("uid 65534 is neither root nor the owner"),
        "status: {:?}\nstderr: {}\nstdout: {}",
        out.status,
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    // Root still is served.
    assert!(n1.status().is_some());

    // A client that connects and says nothing is dropped after the idle timeout.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    let waited = began.elapsed();
    assert_eq!(n, 0, "the node answered a client that sent nothing");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "idle client dropped after {waited:?}, expected about 10 s"
    );
    assert!(n1.status().is_some(), "the node still serves its operator");
}
