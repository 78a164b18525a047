//! `halley-node upgrade`: the daemon replaced three times under load from keep-alive and
//! fresh-connection clients with no refused and no failed request, the service's process
//! adopted (same pid), metrics served on by the new daemon, systemd told the new main pid; and
//! a binary that cannot take over leaves the old daemon serving, with the reason.

use std::net::SocketAddr;
use std::time::Duration;

use halley_tests::load::Load;
use halley_tests::{Node, assert_ok, free_tcp_port, runtime, stderr, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");
const BROKEN_BIN: &str = env!("CARGO_BIN_EXE_halley-failed-takeover");

#[test]
fn three_upgrades_under_load_refuse_and_fail_nothing_and_keep_the_service_process() {
    let root = tempfile::tempdir().unwrap();
    let notify_path = root.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut node = Node::new(root.path(), "n1");
    node.init();
    node.env
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let metrics_arg = metrics.to_string();
    node.start_with(&[
        "--service-address",
        "127.0.0.1",
        "--metrics-listen",
        &metrics_arg,
    ]);
    let first = read_notify(&notify);
    assert_eq!(first, format!("READY=1\nMAINPID={}\n", node.pid()));

    let port = free_tcp_port();
    let config = halley_tests::web_config(root.path(), port, "");
    assert_ok(
        &node.deploy(&config, "web", "1", SERVICE_BIN.as_ref()),
        "deploy web 1",
    );
    let service_pid = node.slot("web", "active").unwrap()["pid"].as_u64();
    assert!(service_pid.is_some());
    let entry: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let rt = runtime();
    let load = rt.block_on(async { Load::start(entry, 4, 4, "/", Duration::from_millis(2)) });
    std::thread::sleep(Duration::from_millis(500));
    let mut daemons = vec![node.daemon_pid()];
    for round in 1..=3 {
        let before = load.stats.totals().0;
        let out = node.upgrade(&[]);
        assert_ok(&out, &format!("upgrade {round}"));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(said.starts_with("upgraded: halley-node "), "{said}");
        let new = node.daemon_pid();
        assert!(
            !daemons.contains(&new),
            "a new daemon each time: {daemons:?} {new}"
        );
        daemons.push(new);
        // systemd hears which process is the service's main one now.
        assert_eq!(read_notify(&notify), format!("READY=1\nMAINPID={new}\n"));
        // The old daemon is gone, the new one answers, the service process is the same.
        let old = daemons[daemons.len() - 2];
        assert!(
            wait_until(Duration::from_secs(10), || !alive(old)),
            "the old daemon {old} exited"
        );
        assert!(alive(new));
        assert_eq!(
            node.slot("web", "active").unwrap()["pid"].as_u64(),
            service_pid,
            "the service was adopted, not restarted"
        );
        assert!(
            wait_until(Duration::from_secs(5), || load.stats.totals().0
                > before + 50),
            "traffic flows after upgrade {round}: {}",
            load.stats.summary()
        );
    }
    let (_, metrics_body) = halley_tests::scrape_metrics(metrics, "*/*");
    assert!(
        metrics_body.contains("halley_slot_requests_total"),
        "the new daemon serves metrics on the handed-over listener: {metrics_body}"
    );
    let stats = load.stats.clone();
    rt.block_on(load.stop());
    let (ok, failed, errors) = stats.totals();
    assert!(ok > 500, "{}", stats.summary());
    assert_eq!(
        (failed, errors),
        (0, 0),
        "no request failed or was refused: {}",
        stats.summary()
    );
    let log = node.log();
    assert!(log.contains("took over from the old daemon"), "{log}");
    node.kill_services();
}

#[test]
fn a_binary_that_cannot_take_over_leaves_the_old_daemon_serving_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let mut node = halley_tests::single_node(root.path());
    let port = free_tcp_port();
    let config = halley_tests::web_config(root.path(), port, "");
    assert_ok(
        &node.deploy(&config, "web", "1", SERVICE_BIN.as_ref()),
        "deploy web 1",
    );
    let entry: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = runtime();
    let load = rt.block_on(async { Load::start(entry, 2, 2, "/", Duration::from_millis(5)) });

    // Not a halley-node at all.
    refused(
        &mut node,
        &["--binary", "/bin/true"],
        &["/bin/true is not a halley-node"],
    );

    // A binary for another architecture, wire protocol or disk format is refused up front.
    let fake = root.path().join("fake-halley-node");
    let script = |line: &str| {
        format!(
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo '{line}'; exit 0; fi\necho 'cannot start' >&2\nexit 3\n"
        )
    };
    let ours = halley_node::daemon::upgrade::Build::ours();
    let other_arch = halley_node::daemon::upgrade::Build {
        arch: "riscv64".into(),
        ..ours.clone()
    };
    let other_protocol = halley_node::daemon::upgrade::Build {
        protocol: ours.protocol + 1,
        ..ours.clone()
    };
    let other_disk = halley_node::daemon::upgrade::Build {
        disk: ours.disk + 1,
        ..ours.clone()
    };
    for (build, says) in [
        (other_arch, "built for riscv64"),
        (other_protocol, "wire protocol"),
        (other_disk, "data dir in format"),
    ] {
        std::fs::write(&fake, script(&build.to_string())).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let args = ["--binary", fake.to_str().unwrap()];
        refused(&mut node, &args, &["will not hand this node over", says]);
    }

    // One that passes the check and dies before it says hello.
    std::fs::write(&fake, script(&ours.to_string())).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let args = ["--binary", fake.to_str().unwrap()];
    refused(&mut node, &args, &["did not take over", "serves on"]);
    assert!(!node.has_exited(), "the old daemon serves on");
    assert!(node.status().is_some());

    // One that says hello and takes the sockets, then exits: the old daemon has let go of
    // everything by then, and starts itself again on the same sockets.
    let says = ["did not take over", "exited", "serves on"];
    refused(&mut node, &["--binary", BROKEN_BIN], &says);
    assert!(!node.has_exited(), "the old daemon serves on");
    assert!(node.status().is_some(), "its admin socket answers again");
    assert_eq!(node.committed("web").as_deref(), Some("1"));
    let log = node.log();
    assert!(log.contains("starting again on the same sockets"), "{log}");
    // It can still be upgraded.
    assert_ok(&node.upgrade(&[]), "upgrade after a failed one");

    let stats = load.stats.clone();
    rt.block_on(load.stop());
    let (ok, failed, errors) = stats.totals();
    assert!(ok > 50, "{}", stats.summary());
    assert_eq!((failed, errors), (0, 0), "{}", stats.summary());
    node.kill_services();
}

fn read_notify(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn alive(pid: u32) -> bool {
    // A zombie (an exited daemon its parent has not reaped yet) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn upgrade_all_rolls_the_binary_across_three_nodes_under_load() {
    let cluster = halley_tests::cluster::Cluster::start();
    let rt = runtime();
    let config = cluster.config("web", &[], "");
    assert_ok(
        &cluster.nodes[0].deploy(&config, "web", "v1", SERVICE_BIN.as_ref()),
        "deploy v1",
    );
    let pids: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.slot("web", "active").unwrap()["pid"].as_u64())
        .collect();
    let before: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| cluster.generation(0, n).unwrap())
        .collect();
    let daemons: Vec<Vec<u32>> = cluster.nodes.iter().map(Node::daemons).collect();

    // The new build: this one without its debug info (a seventh of the size to ship).
    let new_binary = cluster.dir.join("halley-node-new");
    std::fs::copy(halley_tests::binary(), &new_binary).unwrap();
    let stripped = std::process::Command::new("strip")
        .arg(&new_binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        eprintln!("strip did not run: the whole debug binary is shipped");
    }
    let loads = cluster.load(&rt);
    std::thread::sleep(Duration::from_millis(300));
    let out = cluster.nodes[0].cli(&["upgrade", "--all", "--binary", new_binary.to_str().unwrap()]);
    assert_ok(&out, "upgrade --all");
    let progress = stderr(&out);
    for line in ["n2: runs", "n3: runs", "now this node"] {
        assert!(progress.contains(line), "{progress}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, errors, summary) = halley_tests::cluster::stop_all(&rt, loads);
    assert_eq!((failed, errors), (0, 0), "{summary}");
    assert!(ok > 300, "{summary}");

    for (i, node) in cluster.nodes.iter().enumerate() {
        let now = node.daemons();
        assert_eq!(now.len(), 1, "{}: one daemon runs: {now:?}", node.name);
        assert!(
            !daemons[i].contains(&now[0]),
            "{}: a new daemon runs ({:?} before, {now:?} now)",
            node.name,
            daemons[i]
        );
        assert_eq!(
            node.slot("web", "active").unwrap()["pid"].as_u64(),
            pids[i],
            "{}: the service was adopted",
            node.name
        );
    }
    // Every member shows the new generations.
    assert!(
        wait_until(Duration::from_secs(10), || {
            ["n1", "n2", "n3"]
                .iter()
                .enumerate()
                .all(|(i, n)| cluster.generation(1, n).is_some_and(|g| g > before[i]))
        }),
        "{:?}",
        cluster.nodes[1].status()
    );
    // The shipped binary sits in the members' data dirs, checked and executable.
    let shipped: Vec<_> = std::fs::read_dir(cluster.nodes[1].dir.join("binaries"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(shipped.len(), 1, "{shipped:?}");
    assert!(shipped[0].starts_with("halley-node-"), "{shipped:?}");
}

#[test]
fn a_node_that_drives_a_rollout_is_not_upgraded_until_it_ends() {
    let root = tempfile::tempdir().unwrap();
    let node = halley_tests::single_node(root.path());
    let port = free_tcp_port();
    // A long bake keeps the rollout running while the upgrade is asked.
    let config = halley_tests::web_config(root.path(), port, "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("bake = \"0s\"", "bake = \"60s\"");
    std::fs::write(&config, text).unwrap();
    let _deploy = halley_tests::deploy_in_background(
        &node,
        config.as_ref(),
        "web",
        "1",
        SERVICE_BIN.as_ref(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = node.cli(&["rollout", "status", "web"]);
            String::from_utf8_lossy(&out.stdout).contains("running")
        }),
        "the rollout runs"
    );
    let daemon = node.daemon_pid();
    let mut node = node;
    refused(
        &mut node,
        &[],
        &["coordinates the rollout of web", "serves on"],
    );
    assert_eq!(node.daemons(), vec![daemon], "the old daemon alone runs");
    node.kill_services();
}

#[test]
fn under_a_systemd_unit_without_type_notify_the_upgrade_is_refused_with_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let mut node = Node::new(root.path(), "n1");
    node.init();
    node.env
        .push(("INVOCATION_ID".into(), "0123456789abcdef".into()));
    node.start_with(&["--service-address", "127.0.0.1"]);
    let daemon = node.daemon_pid();
    refused(&mut node, &[], &["without Type=notify", "NotifyAccess=all"]);
    assert_eq!(node.daemons(), vec![daemon]);
}

/// Runs `upgrade ARGS`, which must fail saying each of `says`.
fn refused(node: &mut Node, args: &[&str], says: &[&str]) {
    let out = node.upgrade(args);
    assert!(!out.status.success(), "upgrade {args:?} was refused");
    let err = stderr(&out);
    assert!(says.iter().all(|s| err.contains(s)), "{err}");
}
