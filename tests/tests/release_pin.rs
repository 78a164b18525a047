//! The release pin on real processes: a host that missed a rollout fetches the release from a
//! host that committed it, and takes it only if it is the release the admin rolled out. A host
//! whose data dir was tampered with (a stolen or hostile worker) cannot hand its peers a
//! doctored spec.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halley_proto::codec::{decode_record, encode_record};
use halley_proto::disk::ServiceRecord;
use halley_proto::spec::Secret;
use halley_tests::cluster::Cluster;
use halley_tests::{Node, assert_ok, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn record_path(node: &Node) -> PathBuf {
    node.dir.join("services/web/service.rec")
}

fn read_record(path: &Path) -> ServiceRecord {
    decode_record(&std::fs::read(path).expect("the service record")).expect("a service record")
}

fn mark_of(record: &ServiceRecord, version: &str) -> Option<String> {
    record
        .releases
        .iter()
        .find(|r| r.version.as_str() == version)
        .and_then(|r| r.spec.env.get("MARK").map(|s| s.0.clone()))
}

fn deploy(node: &Node, config: &Path, version: &str, extra: &[&str]) -> std::process::Output {
    let config = config.display().to_string();
    let mut args = vec![
        "deploy",
        "web",
        "-c",
        &config,
        "--version",
        version,
        "--artifact",
        SERVICE_BIN,
    ];
    args.extend_from_slice(extra);
    node.cli(&args)
}

#[test]
fn a_host_that_missed_a_rollout_refuses_a_doctored_release_and_takes_the_genuine_one() {
    let mut cluster = Cluster::start();
    // n1 coordinates and hosts nothing, so the only host that committed v2 is n2.
    let config = cluster.config_with(
        "pinned",
        &[("MARK", "genuine")],
        r#"hosts = ["n2", "n3"]"#,
        "bake = \"0s\"",
    );
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1", &[]), "deploy v1");
    cluster.nodes[2].kill9();
    assert_ok(
        &deploy(&cluster.nodes[0], &config, "v2", &["--skip-unreachable"]),
        "deploy v2 while n3 is down",
    );
    assert_eq!(cluster.nodes[1].committed("web").as_deref(), Some("v2"));

    // Someone with n2's disk doctors the spec of v2 it would hand n3.
    cluster.nodes[1].kill9();
    let path = record_path(&cluster.nodes[1]);
    let genuine = std::fs::read(&path).unwrap();
    let mut record = read_record(&path);
    for release in record
        .releases
        .iter_mut()
        .filter(|r| r.version.as_str() == "v2")
    {
        release
            .spec
            .env
            .insert("MARK".into(), Secret("doctored".into()));
    }
    std::fs::write(&path, encode_record(&record).unwrap()).unwrap();
    cluster.nodes[1].start_with(&["--service-address", "127.0.0.2"]);

    cluster.nodes[2].start_with(&["--service-address", "127.0.0.3"]);
    let refused = "does not match the rollout's release pin";
    wait_until(Duration::from_secs(30), || {
        cluster.nodes[2].log().contains(refused)
            || cluster.nodes[2].committed("web").as_deref() == Some("v2")
    });
    assert_eq!(
        cluster.nodes[2].committed("web").as_deref(),
        Some("v1"),
        "n3 took n2's release of v2 (MARK={:?})",
        mark_of(&read_record(&record_path(&cluster.nodes[2])), "v2")
    );
    assert!(
        cluster.nodes[2].log().contains(refused),
        "n3 never turned down n2's doctored release:\n{}",
        cluster.nodes[2].log()
    );
    assert_eq!(
        mark_of(&read_record(&record_path(&cluster.nodes[2])), "v2"),
        None
    );

    // n2's genuine record back: n3 converges, with the spec the admin rolled out.
    cluster.nodes[1].kill9();
    std::fs::write(&path, genuine).unwrap();
    cluster.nodes[1].start_with(&["--service-address", "127.0.0.2"]);
    assert!(
        wait_until(Duration::from_secs(30), || cluster.nodes[2]
            .committed("web")
            .as_deref()
            == Some("v2")),
        "n3 did not converge to the genuine v2: {}\n{}",
        cluster.nodes[2].services(),
        cluster.nodes[2].log()
    );
    assert_eq!(
        mark_of(&read_record(&record_path(&cluster.nodes[2])), "v2").as_deref(),
        Some("genuine")
    );
}
