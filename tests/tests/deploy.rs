//! One host, zero downtime: real `halley-node` and `halley-test-service` processes. Deploys and
//! rollbacks under continuous load, drains, failing and crash-looping releases, and a node restart
//! that adopts its services.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halley_tests::http::{self, Conn};
use halley_tests::load::Load;
use halley_tests::{Node, assert_ok, free_tcp_port, runtime, stderr, wait_until};
use std::io::Read;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

/// A single running node and a free entry point port. Fields drop in order: the node (which
/// kills its service processes, found through the data dir) before the temp dir.
struct Host {
    node: Node,
    entry: SocketAddr,
    dir: PathBuf,
    _root: tempfile::TempDir,
}

impl Host {
    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut node = Node::new(root.path(), "n1");
        node.init();
        node.start_with(&["--service-address", "127.0.0.1"]);
        let entry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let dir = root.path().to_path_buf();
        Self {
            node,
            entry,
            dir,
            _root: root,
        }
    }

    /// Writes a `halley.toml` for service `web` with `extra` appended inside its table, and the
    /// given env knobs for the test service.
    fn config(&self, name: &str, env: &[(&str, &str)], extra: &str) -> PathBuf {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        let text = format!(
            r#"[service.web]
command = ["./halley-test-service"]
listen = ":{port}"
keep_warm = "10m"
env = {{ {env} }}
{extra}
[service.web.health]
http = "/health"
interval = "100ms"
timeout = "1s"
start_period = "10s"
[service.web.stop]
drain_timeout = "3s"
kill_after = "2s"
[service.web.rollout]
drain_wait = "0s"
bake = "0s"
"#,
            port = self.entry.port(),
            env = env.join(", ")
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn deploy(&self, config: &Path, version: &str) -> std::process::Output {
        self.node
            .deploy(config, "web", version, Path::new(SERVICE_BIN))
    }

    fn rollback(&self) -> std::process::Output {
        self.node.cli(&["rollback", "web"])
    }
}

/// Runs `deploy` on a thread, for tests that watch the service while the deploy waits for a drain.
fn deploy_in_background(
    node: &Node,
    config: &Path,
    service: &str,
    version: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    halley_tests::deploy_in_background(node, config, service, version, Path::new(SERVICE_BIN))
}

#[test]
fn twenty_flips_under_load_lose_no_request() {
    let host = Host::start();
    let good = host.config("good", &[], "");
    assert_ok(&host.deploy(&good, "v1"), "first deploy");
    let rt = runtime();
    let load = rt.block_on(async { Load::start(host.entry, 4, 2, "/", Duration::ZERO) });
    // 10 cold deploys of new releases, each followed by a rollback to a warm slot: 20 flips.
    for i in 2..=11 {
        let version = format!("v{i}");
        assert_ok(&host.deploy(&good, &version), &format!("deploy {version}"));
        let out = host.rollback();
        assert_ok(&out, &format!("rollback from {version}"));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("warm"),
            "the rollback should reuse the warm slot: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let stats = rt.block_on(load.stop());
    let (ok, failed, errors) = stats.totals();
    assert_eq!((failed, errors), (0, 0), "{}", stats.summary());
    assert!(
        ok > 200,
        "too little load to prove anything: {}",
        stats.summary()
    );
    let versions = stats.versions.lock().unwrap().clone();
    assert!(
        versions.len() >= 5,
        "requests should have reached many releases: {versions:?}"
    );
    let answer = rt.block_on(http::get(host.entry, "/")).unwrap();
    assert_eq!(answer.version(), Some("v1"), "rolled back to v1 last");
    // keep_releases (5) pruned the old ones, never the committed v1 (the oldest) or v11.
    let services = host.node.services();
    let releases: Vec<&str> = services[0]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(releases.len(), 5, "{releases:?}");
    assert!(
        releases.contains(&"v1") && releases.contains(&"v11"),
        "{releases:?}"
    );
    let on_disk = std::fs::read_dir(host.node.dir.join("services/web/releases"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 5);
}

#[test]
fn drain_finishes_short_requests_cuts_long_ones_and_keeps_websockets_until_the_deadline() {
    let host = Host::start();
    let config = host.config("drain", &[], "");
    assert_ok(&host.deploy(&config, "v1"), "first deploy");
    let rt = runtime();
    let entry = host.entry;
    let (short, long, mut ws) = rt.block_on(async move {
        let short = tokio::spawn(http::get(entry, "/sleep?ms=1000"));
        let long = tokio::spawn(http::get(entry, "/sleep?ms=20000"));
        let ws = websocket(entry).await;
        // Let both requests reach v1 before the flip.
        tokio::time::sleep(Duration::from_millis(300)).await;
        (short, long, ws)
    });
    let flip_started = Instant::now();
    let deploy = deploy_in_background(&host.node, &config, "web", "v2");
    rt.block_on(async {
        // New requests reach v2 once the flip is done, while v1 drains.
        let flipped = async {
            loop {
                if let Ok(a) = http::get(entry, "/").await
                    && a.version() == Some("v2")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), flipped)
            .await
            .expect("v2 serves new requests after the flip");
        // The websocket opened on v1 still works during the drain...
        ws.write_all(b"ping-1").await.unwrap();
        let mut buf = [0u8; 6];
        ws.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping-1");
        let short = short.await.unwrap().expect("the short request completes");
        assert_eq!((short.status, short.version()), (200, Some("v1")));
        // ...and the long request is answered 504 once drain_timeout (3 s) has passed.
        let long = long
            .await
            .unwrap()
            .expect("the long request gets an answer");
        assert_eq!(long.status, 504, "{}", long.body);
        let after = flip_started.elapsed();
        assert!(
            after >= Duration::from_secs(3),
            "cut only after drain_timeout ({after:?})"
        );
        // The websocket is closed at the same deadline.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the websocket is closed after drain_timeout"
        );
    });
    let out = deploy.join().unwrap();
    assert_ok(&out, "deploy v2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The short request (and any poll that reached v1 before the flip) finished; the long request
    // and the websocket were cut.
    assert!(
        stdout.contains(" finished, 2 cut at drain_timeout"),
        "{stdout}"
    );
    assert!(!stdout.contains(" 0 finished"), "{stdout}");
}

/// Opens a WebSocket (handshake only; then raw bytes) through the proxy.
async fn websocket(entry: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(entry).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {entry}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

#[test]
fn a_release_that_fails_its_check_never_gets_a_request() {
    let host = Host::start();
    assert_ok(
        &host.deploy(&host.config("good", &[], ""), "v1"),
        "first deploy",
    );
    let rt = runtime();
    let load = rt.block_on(async { Load::start(host.entry, 2, 1, "/", Duration::ZERO) });
    let bad = host.config("bad", &[("TS_HEALTH", "fail")], "");
    // A short start period keeps the test quick.
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("start_period = \"10s\"", "start_period = \"1s\"");
    std::fs::write(&bad, text).unwrap();
    let out = host.deploy(&bad, "v2");
    assert!(
        !out.status.success(),
        "a failing release must fail the deploy"
    );
    let err = stderr(&out);
    assert!(
        err.contains("did not become healthy")
            && err.contains("503")
            && err.contains("failing on purpose"),
        "the error shows the last check's output: {err}"
    );
    let stats = rt.block_on(load.stop());
    let versions = stats.versions.lock().unwrap().clone();
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        ["v1"],
        "{}",
        stats.summary()
    );
    assert_eq!(
        stats.totals().1 + stats.totals().2,
        0,
        "{}",
        stats.summary()
    );
    let services = host.node.services();
    assert_eq!(services[0]["committed"], "v1");
    assert!(host.node.slot("web", "idle").is_some(), "{services}");
}

#[test]
fn crash_loops_are_marked_unhealthy_and_fail_a_deploy() {
    let host = Host::start();
    // A release that never listens and exits every 100 ms: the check fails as a crash loop,
    // long before its 10 s start period ends.
    let crashing = host.config(
        "crashing",
        &[("TS_START_DELAY_MS", "60000"), ("TS_CRASH_AFTER_MS", "100")],
        "",
    );
    let out = host.deploy(&crashing, "v0");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("crash-looping") && err.contains("crashing on purpose"),
        "{err}"
    );

    // A release that passes its check, takes traffic, then crashes every 300 ms after each start.
    let flaky = host.config("flaky", &[("TS_CRASH_AFTER_MS", "300")], "");
    assert_ok(
        &host.deploy(&flaky, "v1"),
        "deploy of a release that crashes later",
    );
    let marked = wait_until(Duration::from_secs(20), || {
        host.node.slot("web", "active").is_some_and(|s| {
            s["crash_loop"] == true
                && s["health"] == "unhealthy"
                && s["restarts"].as_u64() >= Some(5)
        })
    });
    assert!(
        marked,
        "slot never marked crash-looping: {}",
        host.node.services()
    );
}

#[test]
fn a_crashing_release_that_prints_a_secret_does_not_spread_it_into_errors_or_history() {
    let host = Host::start();
    let secret = "hunter2-very-secret-db-password";
    let leaky = host.config(
        "leaky",
        &[
            ("DB_PASSWORD", secret),
            ("TS_PRINT_ENV", "DB_PASSWORD"),
            ("TS_START_DELAY_MS", "60000"),
            ("TS_CRASH_AFTER_MS", "100"),
        ],
        "",
    );
    let out = host.deploy(&leaky, "v0");
    assert!(!out.status.success(), "the crash-looping release deployed");
    let err = stderr(&out);
    assert!(
        err.contains("crashing on purpose") && err.contains("=[redacted]"),
        "the log tail is missing or unredacted: {err}"
    );
    assert!(
        !err.contains(secret),
        "the secret reached the deploy's error: {err}"
    );
    let history = host.node.cli(&["history", "web"]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&history.stdout),
        stderr(&history)
    );
    assert!(
        !shown.contains(secret),
        "the secret reached history: {shown}"
    );
    // The log on the host itself keeps what the process printed.
    let log = host.node.dir.join("services/web/logs");
    let logs: String = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(logs.contains(secret), "the slot log lost the output");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_the_current_release_keeps_serving() {
    let host = Host::start();
    let good = host.config("good", &[], "");
    assert_ok(&host.deploy(&good, "v1"), "first deploy");

    // A malformed config names file, line and column.
    let broken = host.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[service.web]\ncommand = [\"./x\"]\nlisten = \":1\"\nprotocl = \"http\"\n",
    )
    .unwrap();
    let out = host.deploy(&broken, "v2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken.toml:4:1: unknown field `protocl`"),
        "{}",
        stderr(&out)
    );

    // A command that does not exist.
    let missing = host.config("missing", &[], "").display().to_string();
    let text = std::fs::read_to_string(&missing)
        .unwrap()
        .replace("./halley-test-service", "./no-such-program");
    std::fs::write(&missing, text).unwrap();
    let out = host.deploy(Path::new(&missing), "v3");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"./no-such-program\" does not exist in the release"),
        "{}",
        stderr(&out)
    );

    // A path-escaping tarball, and one with a symlink out of the release.
    for (name, tarball) in [
        (
            "escape",
            tar_gz_with_entry("../evil.sh", tar::EntryType::Regular, None),
        ),
        (
            "symlink",
            tar_gz_with_entry("etc", tar::EntryType::Symlink, Some("/etc")),
        ),
    ] {
        let path = host.dir.join(format!("{name}.tar.gz"));
        std::fs::write(&path, tarball).unwrap();
        let out = host.node.deploy(&good, "web", &format!("v-{name}"), &path);
        assert!(!out.status.success(), "{name} must be refused");
        assert!(
            stderr(&out).contains("refused archive entry"),
            "{}",
            stderr(&out)
        );
        let releases = host.node.dir.join("services/web/releases");
        assert!(!releases.join(format!("v-{name}")).exists());
        let leftovers: Vec<_> = std::fs::read_dir(&releases)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "partial unpack left behind");
    }
    assert!(!host.node.dir.join("services/web/evil.sh").exists());

    // Garbage instead of an artifact.
    let junk = host.dir.join("junk.bin");
    std::fs::write(&junk, b"PK\x03\x04 not what we take").unwrap();
    let out = host.node.deploy(&good, "web", "v-junk", &junk);
    assert!(
        stderr(&out).contains("not a .tar.gz, a .tar.zst or an executable"),
        "{}",
        stderr(&out)
    );

    // An entry point address another program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let other = host.dir.join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[service.api]\ncommand = [\"./halley-test-service\"]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let out = host
        .node
        .deploy(&other, "api", "v1", Path::new(SERVICE_BIN));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );

    // Through all of it, v1 kept serving.
    let rt = runtime();
    let answer = rt.block_on(http::get(host.entry, "/")).unwrap();
    assert_eq!((answer.status, answer.version()), (200, Some("v1")));
}

fn tar_gz_with_entry(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    // Written byte by byte: the tar crate refuses to build such entries itself.
    let name = &mut header.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o755);
    let body: &[u8] = if kind == tar::EntryType::Regular {
        b"#!/bin/sh\necho pwned\n"
    } else {
        b""
    };
    header.set_size(body.len() as u64);
    if let Some(target) = link {
        let l = &mut header.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, body).unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_restarted_node_adopts_its_services_without_restarting_them() {
    let mut host = Host::start();
    assert_ok(&host.deploy(&host.config("good", &[], ""), "v1"), "deploy");
    let pid_before = host.node.slot("web", "active").unwrap()["pid"].clone();
    assert!(pid_before.is_u64());
    assert!(host.node.terminate(), "node stops on SIGTERM");
    let stopped = Instant::now();
    host.node.spawn(&["--service-address", "127.0.0.1"], None);
    let rt = runtime();
    let entry = host.entry;
    let served = rt.block_on(async {
        loop {
            if let Ok(a) = http::get(entry, "/").await {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let gap = stopped.elapsed();
    eprintln!(
        "entry point gap across a node restart: {} ms",
        gap.as_millis()
    );
    assert_eq!(served.version(), Some("v1"));
    assert!(wait_until(Duration::from_secs(10), || host
        .node
        .status()
        .is_some()));
    let pid_after = host.node.slot("web", "active").unwrap()["pid"].clone();
    assert_eq!(
        pid_before, pid_after,
        "the service was adopted, not restarted"
    );
    // And it can still be deployed to and rolled back.
    assert_ok(
        &host.deploy(&host.config("good", &[], ""), "v2"),
        "deploy after restart",
    );
    assert_ok(&host.rollback(), "rollback after restart");
    let answer = rt.block_on(async {
        let mut c = Conn::open(entry).await.unwrap();
        c.get("/").await.unwrap()
    });
    assert_eq!(answer.version(), Some("v1"));
}

#[test]
fn tcp_services_flip_per_connection() {
    let host = Host::start();
    let tcp = host.dir.join("tcp.toml");
    std::fs::write(
        &tcp,
        format!(
            "[service.echo]\ncommand = [\"./halley-test-service\"]\nlisten = \"{}\"\nprotocol = \"tcp\"\nkeep_warm = \"1m\"\nenv = {{ TS_MODE = \"tcp\" }}\n[service.echo.health]\ntcp = true\ninterval = \"100ms\"\n[service.echo.stop]\ndrain_timeout = \"20s\"\n[service.echo.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n",
            host.entry
        ),
    )
    .unwrap();
    let deploy = |v: &str| host.node.deploy(&tcp, "echo", v, Path::new(SERVICE_BIN));
    assert_ok(&deploy("v1"), "deploy v1");
    let rt = runtime();
    let entry = host.entry;
    let mut old = rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(entry).await.unwrap();
        let mut greeting = [0u8; 11];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"version=v1\n");
        s
    });
    // The deploy waits for the old connection to drain; run it beside the checks.
    let handle = deploy_in_background(&host.node, &tcp, "echo", "v2");
    rt.block_on(async move {
        let fresh = async {
            loop {
                let mut s = tokio::net::TcpStream::connect(entry).await.unwrap();
                let mut greeting = [0u8; 11];
                if s.read_exact(&mut greeting).await.is_ok() && &greeting == b"version=v2\n" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fresh)
            .await
            .expect("new connections reach v2");
        old.write_all(b"still here").await.unwrap();
        let mut echo = [0u8; 10];
        old.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"still here", "the old connection survives the flip");
    });
    // Closing the old connection lets the drain finish.
    let out = handle.join().unwrap();
    assert_ok(&out, "deploy v2");
}

#[test]
fn a_wrong_hash_or_a_full_disk_stops_the_deploy_and_leaves_nothing_behind() {
    let mut host = Host::start();
    let good = host.config("good", &[], "");
    assert_ok(&host.deploy(&good, "v1"), "first deploy");
    let artifacts = host.node.dir.join("artifacts");
    let stored_before = std::fs::read_dir(&artifacts).unwrap().count();

    let out = host.node.cli(&[
        "deploy",
        "web",
        "-c",
        &good.display().to_string(),
        "--version",
        "v2",
        "--artifact",
        SERVICE_BIN,
        "--sha256",
        &"ab".repeat(32),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("but abab"), "{}", stderr(&out));
    assert!(stderr(&out).contains("was expected"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&artifacts).unwrap().count(),
        stored_before
    );

    // A disk that fills while unpacking: the node restarts (adopting v1) with a 2 MB file-size
    // limit, and the release holds a 4 MB file (its archive is a few KB).
    assert!(host.node.terminate());
    host.node
        .start_limited(&["--service-address", "127.0.0.1"], Some(2 << 20));
    let big = host.dir.join("big.tar.gz");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4 << 20);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "data.bin", std::io::repeat(0).take(4 << 20))
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
    std::fs::write(&big, gz.finish().unwrap()).unwrap();
    let out = host.node.deploy(&good, "web", "v-big", &big);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is the disk full?"),
        "{}",
        stderr(&out)
    );
    let releases = host.node.dir.join("services/web/releases");
    let names: Vec<String> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["v1"], "nothing half-unpacked is left");
    let rt = runtime();
    let answer = rt.block_on(http::get(host.entry, "/")).unwrap();
    assert_eq!((answer.status, answer.version()), (200, Some("v1")));
}

#[test]
fn the_proxy_counts_requests_errors_and_latency_and_forwards_client_headers() {
    let host = Host::start();
    let config = host.config(
        "signals",
        &[("TS_ERROR_RATE", "0.25"), ("TS_LATENCY_MS", "20")],
        "",
    );
    assert_ok(&host.deploy(&config, "v1"), "deploy");
    let rt = runtime();
    let entry = host.entry;
    let (statuses, headers) = rt.block_on(async move {
        let mut conn = Conn::open(entry).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..200 {
            statuses.push(conn.get("/").await.unwrap().status);
        }
        (statuses, conn.get("/headers").await.unwrap().body)
    });
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 50);
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    assert!(headers.contains("x-forwarded-proto: http"), "{headers}");
    assert!(
        headers.contains(&format!("x-forwarded-host: {entry}")),
        "{headers}"
    );
    let counted = wait_until(Duration::from_secs(5), || {
        host.node.slot("web", "active").is_some_and(|s| {
            let sig = &s["signals"];
            sig["total_requests"].as_u64() >= Some(201)
                && sig["total_errors"] == 50
                && sig["p99_us"].as_u64() >= Some(20_000)
        })
    });
    assert!(counted, "signals: {}", host.node.services());
}

#[test]
fn service_state_is_gossiped_to_peers() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, _) = halley_tests::start_cluster(root.path(), &["n1", "n2"]);
    halley_tests::wait_converged(&nodes);
    let port = free_tcp_port();
    let config = root.path().join("halley.toml");
    std::fs::write(
        &config,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"127.0.0.1:{port}\"\nhosts = [\"n1\"]\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n"
        ),
    )
    .unwrap();
    // n2 coordinates a rollout to n1 only (n2 is not in `hosts`): the artifact goes over the mesh.
    assert_ok(
        &nodes[1].deploy(&config, "web", "v7", Path::new(SERVICE_BIN)),
        "deploy to n1 coordinated by n2",
    );
    assert!(nodes[1].slot("web", "active").is_none(), "n2 runs nothing");
    let seen = wait_until(Duration::from_secs(10), || {
        nodes[1].status().is_some_and(|s| {
            s["members"].as_array().into_iter().flatten().any(|m| {
                m["name"] == "n1"
                    && m["services"][0]["name"] == "web"
                    && m["services"][0]["version"] == "v7"
                    && m["services"][0]["health"] == "healthy"
            })
        })
    });
    assert!(seen, "n2 never saw n1's service: {:?}", nodes[1].status());
}

#[test]
fn a_service_runs_as_its_user_when_the_node_is_root() {
    let host = Host::start();
    let config = host.config("user", &[], "user = \"nobody\"");
    assert_ok(&host.deploy(&config, "v1"), "deploy with user");
    let pid = host.node.slot("web", "active").unwrap()["pid"]
        .as_u64()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // The effective id of a `/proc/PID/status` line (`Uid:` or `Gid:`: real, effective, ...).
    let effective = |field: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let uid = effective("Uid:");
    // SAFETY: geteuid has no preconditions.
    let ours = unsafe { libc::geteuid() };
    if ours == 0 {
        assert_eq!(uid, 65534, "runs as nobody");
        // Its release is root's, entered by its group only; its data dir is its own alone.
        use std::os::unix::fs::MetadataExt;
        let release = host.node.dir.join("services/web/releases/v1");
        let meta = std::fs::metadata(&release).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid()),
            (0o750, 0),
            "{}",
            release.display()
        );
        assert_eq!(
            meta.gid(),
            effective("Gid:"),
            "the release's group is the service's"
        );
        let data = host.node.dir.join("services/web/data");
        let meta = std::fs::metadata(&data).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid()),
            (0o700, 65534),
            "{}",
            data.display()
        );
        // The node's data dir stays root's alone, and the service sees of it only its release
        // and its data dir: it writes its data, and cannot even find the node's certificate.
        let meta = std::fs::metadata(&host.node.dir).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, 0));
        let rt = runtime();
        let visit = rt.block_on(http::get(host.entry, "/visit")).unwrap();
        assert_eq!(visit.status, 200, "{}", visit.body);
        assert_eq!(std::fs::metadata(data.join("visits")).unwrap().uid(), 65534);
        let cert = host.node.dir.join("node.pem");
        let read = rt
            .block_on(http::get(
                host.entry,
                &format!("/read?path={}", cert.display()),
            ))
            .unwrap();
        assert_eq!(read.status, 403, "{}", read.body);
        assert!(read.body.contains("No such file"), "{}", read.body);
        // Its `exec` checks run as it does: one that passes only as nobody makes v2 healthy.
        let exec = host
            .config("exec-as-user", &[], "user = \"nobody\"")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&exec)
            .unwrap()
            .replace("http = \"/health\"", "exec = [\"sh\", \"-c\", \"test $(id -u) = 65534 && test -w $HALLEY_SERVICE_DATA && ! test -e $HALLEY_SERVICE_DATA/../../../node.pem\"]");
        std::fs::write(&exec, text).unwrap();
        assert_ok(
            &host.deploy(Path::new(&exec), "v2"),
            "deploy with an exec check as the user",
        );
    } else {
        assert_eq!(uid, ours, "without root, `user` is ignored");
    }
}

#[test]
fn a_step_with_an_older_epoch_is_refused() {
    use halley_node::store::datadir::DataDir;
    use halley_proto::deploy::{Step, StepRequest};
    use halley_proto::message::{AdminRequest, ErrorKind};

    let host = Host::start();
    assert_ok(&host.deploy(&host.config("good", &[], ""), "v1"), "deploy");
    let data_dir = DataDir::new(&host.node.dir);
    let step = |epoch| {
        let request = AdminRequest::Step(StepRequest {
            on_behalf_of: None,
            service: "web".parse().unwrap(),
            epoch,
            step: Step::Drain,
        });
        runtime().block_on(halley_node::daemon::admin::call(&data_dir, request))
    };
    assert!(step(5).is_ok(), "a newer epoch is taken");
    match step(3) {
        Err(halley_node::Error::Remote(reply)) => {
            assert_eq!(reply.kind, ErrorKind::StaleEpoch);
            assert!(
                reply.message.contains("epoch 3") && reply.message.contains("epoch 5"),
                "{}",
                reply.message
            );
        }
        other => panic!("an older epoch must be refused: {other:?}"),
    }
    // The epoch is durable: a restarted node still refuses it.
    let mut host = host;
    assert!(host.node.terminate());
    host.node.start_with(&["--service-address", "127.0.0.1"]);
    assert!(
        matches!(step(4), Err(halley_node::Error::Remote(r)) if r.kind == ErrorKind::StaleEpoch)
    );
}

#[test]
fn archives_unpack_and_a_cold_rollback_starts_the_previous_release_again() {
    let host = Host::start();
    // No keep_warm: the old slot stops once drained, so a rollback starts it again.
    let cold = host.config("cold", &[], "").display().to_string();
    let text = std::fs::read_to_string(&cold)
        .unwrap()
        .replace("keep_warm = \"10m\"", "keep_warm = \"0s\"")
        .replace("./halley-test-service", "bin/svc");
    std::fs::write(&cold, text).unwrap();
    let binary = std::fs::read(SERVICE_BIN).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(&mut header, "bin/svc", binary.as_slice())
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let zst = host.dir.join("app.tar.zst");
    std::fs::write(
        &zst,
        ruzstd::encoding::compress_to_vec(
            tar.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
    )
    .unwrap();
    let gz = host.dir.join("app.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();

    let cold = Path::new(&cold);
    assert_ok(
        &host.node.deploy(cold, "web", "z1", &zst),
        "deploy from .tar.zst",
    );
    assert_ok(
        &host.node.deploy(cold, "web", "g2", &gz),
        "deploy from .tar.gz",
    );
    let rt = runtime();
    assert_eq!(
        rt.block_on(http::get(host.entry, "/")).unwrap().version(),
        Some("g2")
    );
    assert!(
        wait_until(Duration::from_secs(5), || host
            .node
            .slot("web", "idle")
            .is_some()),
        "without keep_warm the old slot stops: {}",
        host.node.services()
    );
    let out = host.rollback();
    assert_ok(&out, "cold rollback");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cold: start, check, flip"), "{stdout}");
    assert_eq!(
        rt.block_on(http::get(host.entry, "/")).unwrap().version(),
        Some("z1")
    );

    // Garbage on the entry point gets a 400 and does not disturb the next client.
    let entry = host.entry;
    rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(entry).await.unwrap();
        s.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
            "{answer:?}"
        );
        assert_eq!(http::get(entry, "/").await.unwrap().status, 200);
    });
}

#[test]
fn env_reaches_the_service_but_no_log_or_gossip_and_its_data_outlives_releases() {
    let host = Host::start();
    let secret = "hunter2-do-not-leak";
    let env_file = host.dir.join("web.env");
    std::fs::write(&env_file, format!("FROM_FILE={secret}-file\n")).unwrap();
    std::fs::set_permissions(
        &env_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = host.config("env", &[("API_KEY", secret)], "env_file = \"web.env\"");
    assert_ok(&host.deploy(&config, "v1"), "deploy");
    let rt = runtime();
    let entry = host.entry;
    let (key, from_file, first) = rt.block_on(async move {
        (
            http::get(entry, "/env?name=API_KEY").await.unwrap().body,
            http::get(entry, "/env?name=FROM_FILE").await.unwrap().body,
            http::get(entry, "/visit").await.unwrap().body,
        )
    });
    assert_eq!(
        (key.as_str(), from_file.as_str()),
        (secret, "hunter2-do-not-leak-file")
    );
    assert_eq!(first.trim(), "1");
    assert_ok(&host.deploy(&config, "v2"), "deploy v2");
    let second = rt.block_on(http::get(entry, "/visit")).unwrap();
    assert_eq!(
        second.body.trim(),
        "2",
        "the data directory outlived the release"
    );
    assert!(
        !host.node.log().contains("hunter2"),
        "a secret reached the node log"
    );
    let status = host.node.status().unwrap().to_string();
    let services = host.node.services().to_string();
    assert!(!status.contains("hunter2") && !services.contains("hunter2"));
}

#[test]
fn a_refused_first_deploy_leaves_no_service_behind() {
    let host = Host::start();
    let good = host.config("good", &[], "");
    // An artifact that cannot be unpacked: the host refuses it at prepare, its first step.
    let bad = host.dir.join("broken.tar.gz");
    std::fs::write(&bad, b"this is not a gzip stream").unwrap();
    let out = host.node.deploy(&good, "web", "v1", &bad);
    assert!(!out.status.success(), "a broken artifact was deployed");
    // Nothing is left: no service, no entry point holding the port, no record.
    let services = host.node.cli(&["services", "--json"]);
    assert_eq!(String::from_utf8_lossy(&services.stdout).trim(), "[]");
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpListener::bind(
            host.entry
        )
        .is_ok()),
        "the refused service still holds {}",
        host.entry
    );
    assert!(!host.node.dir.join("services/web/service.rec").exists());
    // And the next deploy, with a good artifact, works as a first deploy.
    assert_ok(&host.deploy(&good, "v1"), "deploy after the refused one");
    let rt = runtime();
    let answer = rt.block_on(http::get(host.entry, "/")).unwrap();
    assert_eq!(answer.version(), Some("v1"));
}

#[test]
fn start_next_check_and_flip_issued_again_after_the_flip_change_nothing() {
    use halley_node::store::datadir::DataDir;
    use halley_proto::deploy::{ReleaseVersion, Step, StepReply};

    let host = Host::start();
    let good = host.config("good", &[], "");
    assert_ok(&host.deploy(&good, "v1"), "deploy v1");
    assert_ok(&host.deploy(&good, "v2"), "deploy v2");
    let rt = runtime();
    let data_dir = DataDir::new(&host.node.dir);
    let service = "web".parse().unwrap();
    let epoch = rt
        .block_on(halley_node::cli::deploy::services(&data_dir))
        .unwrap()[0]
        .epoch;
    let step = |s: Step| {
        rt.block_on(halley_node::cli::deploy::step(
            &data_dir, &service, epoch, s,
        ))
        .unwrap()
    };
    let v1: ReleaseVersion = "v1".parse().unwrap();
    let StepReply::Started { slot, .. } = step(Step::StartNext {
        version: v1.clone(),
        rollback: true,
    }) else {
        panic!("start-next did not start")
    };
    step(Step::Check);
    step(Step::Flip);
    step(Step::Drain);
    // A coordinator that resumes this deploy issues the same steps again.
    match step(Step::StartNext {
        version: v1.clone(),
        rollback: true,
    }) {
        StepReply::Started {
            slot: again,
            reused,
            ..
        } => assert!(reused && again == slot, "start-next started {again} again"),
        other => panic!("unexpected answer {other:?}"),
    }
    assert!(matches!(step(Step::Check), StepReply::Healthy { .. }));
    step(Step::Flip);
    step(Step::Drain);
    step(Step::Commit { version: v1 });
    // v2 stays warm for an instant rollback, and v1 serves.
    let warm = host.node.slot("web", "warm").expect("a warm slot");
    assert_eq!(warm["version"], "v2", "{warm}");
    let answer = rt.block_on(http::get(host.entry, "/")).unwrap();
    assert_eq!(answer.version(), Some("v1"));
}
