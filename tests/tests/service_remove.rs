//! `service remove SERVICE [--purge]` on three real nodes: every reachable host stops the
//! service's processes, closes its entry point and deletes its releases and record, keeping its
//! data; a host that was down removes it itself once it is back; the service can be deployed
//! again under its name, over its kept data; `--purge` deletes the data too, and asks first.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use halley_tests::cluster::Cluster;
use halley_tests::{Node, assert_ok, stderr, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn alive(pid: u64) -> bool {
    halley_tests::process_alive(pid)
}

fn pids(node: &Node) -> Vec<u64> {
    node.slot_pids("web")
}

fn runs_web(node: &Node) -> bool {
    node.runs("web")
}

/// The members whose gossip `node` sees announcing `web`.
fn announcing_web(node: &Node) -> Vec<String> {
    let Some(status) = node.status() else {
        return vec!["(no answer)".into()];
    };
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "web"))
        })
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect()
}

fn refused(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

fn deploy_everywhere(cluster: &Cluster, config: &Path, version: &str) {
    let out = cluster.nodes[0].deploy(config, "web", version, SERVICE_BIN.as_ref());
    assert_ok(&out, &format!("deploy {version}"));
}

#[test]
fn service_remove_stops_every_host_keeps_data_and_reaches_a_host_that_was_down() {
    let mut cluster = Cluster::start();
    let config = cluster.config("web", &[], "bake = \"0s\"");
    deploy_everywhere(&cluster, &config, "1");
    let before: Vec<Vec<u64>> = cluster.nodes.iter().map(pids).collect();
    assert!(before.iter().all(|p| !p.is_empty()), "{before:?}");
    for node in &cluster.nodes {
        std::fs::write(node.dir.join("services/web/data/kept.txt"), "mine").unwrap();
    }

    // n3 is down when the service is removed.
    cluster.nodes[2].kill9();
    assert!(
        wait_until(Duration::from_secs(30), || cluster.nodes[0]
            .state_of("n3")
            .as_deref()
            == Some("dead")),
        "n1 does not see n3 dead"
    );
    let out = cluster.nodes[0].cli(&["service", "remove", "web"]);
    assert_ok(&out, "service remove web");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("removal of web from 3 host(s) (data kept)"),
        "{said}"
    );
    assert!(said.contains("removed from 2/3 hosts"), "{said}");
    assert!(said.contains("not yet removed from n3"), "{said}");

    for (i, (node, pids)) in cluster.nodes.iter().zip(&before).take(2).enumerate() {
        assert!(
            !runs_web(node),
            "{} still runs web: {}",
            node.name,
            node.services()
        );
        for pid in pids {
            assert!(!alive(*pid), "{}: slot process {pid} still runs", node.name);
        }
        assert!(
            refused(cluster.entry(i)),
            "{}: entry point still open",
            node.name
        );
        let dir = node.dir.join("services/web");
        assert!(!dir.join("releases").exists() && !dir.join("service.rec").exists());
        assert!(!dir.join("logs").exists(), "logs go with the service");
        assert!(
            dir.join("fence.rec").exists(),
            "the token stays, so old rollouts stay refused"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("data/kept.txt")).unwrap(),
            "mine"
        );
        let artifacts = std::fs::read_dir(node.dir.join("artifacts"))
            .unwrap()
            .count();
        assert_eq!(artifacts, 0, "{}: artifacts left", node.name);
    }
    // Live peers stop announcing it, so no entry point routes to it (dead n3's last word may
    // linger).
    assert!(
        wait_until(Duration::from_secs(10), || announcing_web(
            &cluster.nodes[0]
        )
        .iter()
        .all(|n| n == "n3")),
        "still announced: {:?}",
        announcing_web(&cluster.nodes[0])
    );
    // n3's processes outlived its daemon; back, it removes the service itself.
    assert!(before[2].iter().all(|p| alive(*p)));
    cluster.nodes[2].start_with(&["--service-address", "127.0.0.3"]);
    assert!(
        wait_until(Duration::from_secs(40), || !runs_web(&cluster.nodes[2])
            && before[2].iter().all(|p| !alive(*p))),
        "n3 did not remove web once back: {}\n{}",
        cluster.nodes[2].services(),
        cluster.nodes[2].log()
    );
    assert!(refused(cluster.entry(2)), "n3: entry point still open");

    // The name is free again; the data is where it was.
    halley_tests::wait_converged(&cluster.nodes);
    deploy_everywhere(&cluster, &config, "2");
    for node in &cluster.nodes {
        let kept = node.dir.join("services/web/data/kept.txt");
        assert_eq!(
            std::fs::read_to_string(kept).unwrap(),
            "mine",
            "{}",
            node.name
        );
    }
    let history = cluster.nodes[0].cli(&["history", "web"]);
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("keep-data"),
        "{}",
        String::from_utf8_lossy(&history.stdout)
    );

    // --purge asks first: without a terminal or --yes nothing changes.
    let out = cluster.nodes[0].cli(&["service", "remove", "web", "--purge"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    assert!(cluster.nodes.iter().all(runs_web));
    // Removed again keeping the data, then purged: the purge reaches the hosts that removal
    // reached, though none runs the service any more.
    assert_ok(
        &cluster.nodes[0].cli(&["service", "remove", "web"]),
        "service remove web again",
    );
    assert!(cluster.nodes.iter().all(|n| !runs_web(n)));
    let out = cluster.nodes[0].cli(&["service", "remove", "web", "--purge", "--yes"]);
    assert_ok(&out, "service remove web --purge --yes");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("data and backups deleted"), "{said}");
    for node in &cluster.nodes {
        assert!(
            !node.dir.join("services/web/data").exists(),
            "{}: data kept",
            node.name
        );
    }

    // Nothing left to remove is an error that says so (once no member announces it).
    assert!(
        wait_until(Duration::from_secs(10), || announcing_web(
            &cluster.nodes[0]
        )
        .is_empty()),
        "still announced: {:?}",
        announcing_web(&cluster.nodes[0])
    );
    let out = cluster.nodes[0].cli(&["service", "remove", "web"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no node of this cluster runs service web"),
        "{}",
        stderr(&out)
    );
}

/// A coordinator cut off before the removal cannot bring the service back: its steps carry an
/// epoch below the removal's, and the token outlives the service. Before the fix, the first
/// refused prepare deleted the kept token along with the half-made service, so a second one
/// at the same old epoch was obeyed and the removed service ran again.
#[test]
fn a_step_of_a_rollout_older_than_the_removal_is_refused_again_and_again() {
    use halley_node::store::datadir::DataDir;
    use halley_proto::deploy::{ArtifactSource, ReleaseVersion, Step, StepRequest};
    use halley_proto::message::{AdminRequest, ErrorKind};

    let root = tempfile::tempdir().unwrap();
    let node = halley_tests::single_node(root.path());
    let port = halley_tests::free_tcp_port();
    let config = halley_tests::web_config(root.path(), port, "");
    assert_ok(
        &node.deploy(&config, "web", "1", SERVICE_BIN.as_ref()),
        "deploy",
    );
    let old_epoch = node.services()[0]["epoch"].as_u64().expect("an epoch");
    assert_ok(&node.cli(&["service", "remove", "web"]), "service remove");
    assert!(!runs_web(&node));

    let spec = halley_node::cli::config::load_service(&config, &"web".parse().unwrap()).unwrap();
    let data_dir = DataDir::new(&node.dir);
    let prepare = || {
        let request = AdminRequest::Step(StepRequest {
            on_behalf_of: None,
            service: "web".parse().unwrap(),
            epoch: old_epoch,
            step: Step::Prepare {
                spec: Box::new(spec.clone()),
                version: ReleaseVersion::parse("1").unwrap(),
                artifact: ArtifactSource::LocalPath {
                    path: SERVICE_BIN.into(),
                    sha256: None,
                },
            },
        });
        halley_tests::runtime().block_on(halley_node::daemon::admin::call(&data_dir, request))
    };
    for attempt in 1..=2 {
        match prepare() {
            Err(halley_node::Error::Remote(reply)) => {
                assert_eq!(
                    reply.kind,
                    ErrorKind::StaleEpoch,
                    "attempt {attempt}: {}",
                    reply.message
                )
            }
            other => {
                panic!("attempt {attempt}: an older rollout's prepare must be refused: {other:?}")
            }
        }
        assert!(!runs_web(&node), "attempt {attempt}: web is back");
        let entry: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            refused(entry),
            "attempt {attempt}: its entry point is open again"
        );
    }
    // A new deploy takes an epoch above the removal's, and is obeyed, even once gossip no
    // longer carries the removal (its coordinator's journal gone, as when that node left): the
    // host tells the token it kept.
    let mut node = node;
    assert!(node.terminate());
    std::fs::remove_file(node.dir.join("rollouts/web.rec")).unwrap();
    node.start_with(&["--service-address", "127.0.0.1"]);
    assert_ok(
        &node.deploy(&config, "web", "2", SERVICE_BIN.as_ref()),
        "deploy after the removal",
    );
    node.kill_services();
}
