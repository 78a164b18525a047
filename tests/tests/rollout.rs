//! Rolling updates across three real nodes on one machine, each serving the service's entry point
//! on its own address (127.0.0.1, .2, .3, same port): a good rollout under load through every
//! entry point, a release failing its check, a release whose 5xx rate rises after its start, and
//! a coordinator killed mid-rollout and resumed from another node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use halley_tests::cluster::{Cluster, stop_all};
use halley_tests::http;
use halley_tests::{
    Node, assert_ok, deploy_in_background, free_tcp_port, runtime, stderr, wait_until,
};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn deploy(node: &Node, config: &Path, version: &str) -> std::process::Output {
    node.deploy(config, "web", version, Path::new(SERVICE_BIN))
}

#[test]
fn a_good_rollout_under_load_drops_nothing_on_any_entry_point() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("good", &[], "bake = \"1s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "first rollout");
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);

    // The plan, without changing anything.
    let plan = cluster.nodes[1].cli(&[
        "deploy",
        "web",
        "-c",
        &config.display().to_string(),
        "--version",
        "v2",
        "--artifact",
        SERVICE_BIN,
        "--dry-run",
    ]);
    assert_ok(&plan, "dry run");
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("batch 1   n1") && plan.contains("v1 -> v2"),
        "{plan}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);

    let loads = cluster.load(&rt);
    let out = deploy(&cluster.nodes[1], &config, "v2");
    assert_ok(&out, "rollout of v2 coordinated by n2");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for host in ["n1", "n2", "n3"] {
        assert!(stdout.contains(&format!("  {host}")), "{stdout}");
    }
    let (ok, failed, errors, summary) = stop_all(&rt, loads);
    assert_eq!((failed, errors), (0, 0), "{summary}");
    assert!(ok > 300, "{summary}");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);

    // Every node sees the outcome and the history through gossip.
    assert!(wait_until(Duration::from_secs(5), || {
        let out = cluster.nodes[2].cli(&["rollout", "status", "web"]);
        String::from_utf8_lossy(&out.stdout).contains("completed")
    }));
    // The coordinator publishes the history line just after the final state, so another node
    // may see the state a gossip round before the line.
    let history = || {
        let out = cluster.nodes[0].cli(&["history", "web"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(Duration::from_secs(5), || {
        history().matches("completed").count() == 2
    });
    let history = history();
    assert_eq!(history.matches("completed").count(), 2, "{history}");

    // Every host back to a named release, at once, from another node.
    let out = cluster.nodes[2].cli(&["rollback", "web", "--to", "v1"]);
    assert_ok(&out, "rollback --to v1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("its slot was warm: a flip"));
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);

    // Maintenance: drain another node; its readiness endpoint answers 503 meanwhile.
    assert_ok(&cluster.nodes[0].cli(&["drain", "n3"]), "drain n3 from n1");
    let ready = |i: usize| {
        rt.block_on(http::get(cluster.entry(i), "/.halley/ready"))
            .map(|a| a.status)
    };
    assert!(wait_until(Duration::from_secs(5), || ready(2) == Ok(503)));
    assert_eq!(ready(0), Ok(200));
    assert!(wait_until(Duration::from_secs(5), || cluster.nodes[0]
        .state_of("n3")
        .as_deref()
        == Some("draining")));
    assert_ok(&cluster.nodes[0].cli(&["undrain", "n3"]), "undrain n3");
    assert!(wait_until(Duration::from_secs(5), || ready(2) == Ok(200)));
}

#[test]
fn a_release_failing_its_check_stops_at_the_first_host() {
    let cluster = Cluster::start();
    let rt = runtime();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    // The failing release also changes the routing: nothing of its spec may stay behind.
    let bad = cluster.config_with(
        "bad",
        &[("TS_HEALTH", "fail")],
        "routing = \"balanced\"",
        "bake = \"0s\"",
    );
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("start_period = \"10s\"", "start_period = \"1s\"");
    std::fs::write(&bad, text).unwrap();
    let out = deploy(&cluster.nodes[0], &bad, "v2");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("rolled-back") && err.contains("did not become healthy"),
        "{err}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    // n2 and n3 were never touched: the release never reached them.
    for node in &cluster.nodes[1..] {
        let services = node.services();
        let releases = services[0]["releases"].to_string();
        assert!(!releases.contains("v2"), "{} got v2: {releases}", node.name);
        assert_eq!(node.state_of(&node.name).as_deref(), Some("alive"));
    }
    assert_eq!(
        cluster.nodes[0].state_of("n1").as_deref(),
        Some("alive"),
        "n1 undrained"
    );
    // Before, the failed release's spec replaced the service's at prepare and stayed.
    let n1 = cluster.nodes[0].services();
    assert_eq!(
        n1[0]["routing"]["policy"], "local-first",
        "n1 goes by the failed release's spec: {n1}"
    );
}

#[test]
fn a_regression_after_the_bake_rolls_every_touched_host_back() {
    let cluster = Cluster::start();
    let rt = runtime();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    // Half of v2's answers are 500s from 5 s after it starts: n1 bakes clean, then regresses
    // while the rollout is on a later host.
    let regressing = cluster.config(
        "regressing",
        &[("TS_ERROR_RATE", "0.5"), ("TS_ERRORS_AFTER_MS", "5000")],
        "bake = \"3s\"",
    );
    let loads = cluster.load(&rt);
    let out = deploy(&cluster.nodes[0], &regressing, "v2");
    let (_, _, errors, summary) = stop_all(&rt, loads);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = stderr(&out);
    assert!(err.contains("rolled-back") && err.contains("5xx"), "{err}");
    assert_eq!(
        errors, 0,
        "no connection errors during the rollback: {summary}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    for node in &cluster.nodes {
        let services = node.services();
        assert_eq!(services[0]["committed"], "v1", "{}", node.name);
    }
}

#[test]
fn a_killed_coordinator_is_resumed_from_another_node() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    let slow = cluster.config("slow", &[], "bake = \"6s\"");
    // n3 coordinates; kill it while n1 or n2 is baking.
    let coordinator = deploy_in_background(
        &cluster.nodes[2],
        &slow,
        "web",
        "v2",
        Path::new(SERVICE_BIN),
    );
    let baking = wait_until(Duration::from_secs(20), || {
        let out = cluster.nodes[0].cli(&["rollout", "status", "web"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            matches!(
                words.as_slice(),
                ["n1", "baking" | "updated", ..] | ["n2", "draining" | "deploying" | "baking", ..]
            )
        })
    });
    if !baking {
        let out = coordinator.join().unwrap();
        panic!(
            "the rollout never reached n1's bake: {} {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out),
            String::from_utf8_lossy(&cluster.nodes[0].cli(&["rollout", "status", "web"]).stdout)
        );
    }
    let before = cluster.generation(0, "n3");
    cluster.nodes[2].kill9();
    let _ = coordinator.join();
    // No host lacks a healthy slot meanwhile.
    let versions = cluster.versions(&rt);
    assert!(
        versions[0].is_some() && versions[1].is_some(),
        "{versions:?}"
    );
    cluster.nodes[2].start_with(&["--service-address", "127.0.0.3"]);
    // Once n1 has heard of n3's new life, n3's old one no longer counts as coordinating.
    assert!(wait_until(Duration::from_secs(10), || cluster
        .generation(0, "n3")
        > before));
    // A new deploy is refused while the rollout is unfinished, naming its coordinator.
    let out = deploy(&cluster.nodes[0], &slow, "v3");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unfinished rollout")
            && err.contains("by node n3")
            && err.contains("--resume"),
        "{err}"
    );
    let out = cluster.nodes[0].cli(&["deploy", "web", "--resume"]);
    assert_ok(&out, "resume from n1");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("coordinated by n1"), "{stdout}");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
    for node in &cluster.nodes {
        assert_eq!(node.services()[0]["committed"], "v2", "{}", node.name);
    }
}

#[test]
fn a_host_left_mid_rollout_without_a_coordinator_reverts_after_orphan_timeout() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = halley_tests::start_cluster(root.path(), &["n1", "n2"]);
    halley_tests::wait_converged(&nodes);
    let port = free_tcp_port();
    let entry: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = |bake: &str| {
        let path = root.path().join(format!("bake-{bake}.toml"));
        std::fs::write(
            &path,
            format!(
                "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \"{entry}\"\nhosts = [\"n1\"]\nkeep_warm = \"1m\"\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"{bake}\"\norphan_timeout = \"2s\"\n"
            ),
        )
        .unwrap();
        path
    };
    assert_ok(
        &deploy(&nodes[1], &config("0s"), "v1"),
        "first rollout, coordinated by n2",
    );
    let long = config("60s");
    let coordinator = deploy_in_background(&nodes[1], &long, "web", "v2", Path::new(SERVICE_BIN));
    let rt = runtime();
    let version = || {
        rt.block_on(http::get(entry, "/"))
            .ok()
            .and_then(|a| a.version().map(str::to_owned))
    };
    assert!(
        wait_until(Duration::from_secs(20), || version().as_deref()
            == Some("v2")),
        "n1 never flipped to v2"
    );
    // The coordinator dies during n1's bake: n1 keeps serving v2 (it has a healthy slot)...
    nodes[1].kill9();
    let _ = coordinator.join();
    assert_eq!(version().as_deref(), Some("v2"));
    // ...until orphan_timeout passes with no coordinator, then goes back to its committed v1.
    assert!(
        wait_until(Duration::from_secs(15), || version().as_deref()
            == Some("v1")),
        "n1 did not revert the orphaned deploy: {}",
        nodes[0].services()
    );
    assert_eq!(nodes[0].services()[0]["committed"], "v1");
    // Killed between the flip and the undrain, n1 was left draining: the revert clears it.
    assert!(
        wait_until(Duration::from_secs(5), || nodes[0]
            .state_of("n1")
            .as_deref()
            == Some("alive")),
        "n1 still draining: {:?}",
        nodes[0].state_of("n1")
    );
}

#[test]
fn a_host_skipped_while_down_converges_when_it_returns() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    // n3 is down on its turn: a rollout with --skip-unreachable leaves it behind.
    cluster.nodes[2].kill9();
    let out = cluster.nodes[0].cli(&[
        "deploy",
        "web",
        "-c",
        &good.display().to_string(),
        "--version",
        "v2",
        "--artifact",
        SERVICE_BIN,
        "--skip-unreachable",
    ]);
    assert_ok(&out, "rollout skipping n3");
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped"));
    assert_eq!(
        cluster.versions(&rt)[..2],
        [Some("v2".to_owned()), Some("v2".to_owned())]
    );
    // Back up, it catches up with the completed rollout by itself.
    cluster.nodes[2].start_with(&["--service-address", "127.0.0.3"]);
    assert!(
        wait_until(
            Duration::from_secs(30),
            || cluster.nodes[2].services()[0]["committed"] == "v2"
        ),
        "n3 did not converge: {}\n{}",
        cluster.nodes[2].services(),
        cluster.nodes[2].log()
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
}

#[test]
fn a_deploy_naming_an_unknown_host_is_refused_before_anything_changes() {
    let cluster = Cluster::start();
    let rt = runtime();
    // A typo in `hosts` used to start the rollout and pause it after the first host flipped.
    let config = cluster.config_with(
        "typo",
        &[],
        r#"hosts = ["n1", "n2", "m3"]"#,
        "bake = \"0s\"",
    );
    let config_arg = config.display().to_string();
    let dry_run = cluster.nodes[1].cli(&[
        "deploy",
        "web",
        "-c",
        &config_arg,
        "--version",
        "v1",
        "--artifact",
        SERVICE_BIN,
        "--dry-run",
    ]);
    assert!(!dry_run.status.success(), "the dry run accepted m3");
    assert!(stderr(&dry_run).contains("m3"), "{}", stderr(&dry_run));

    let out = deploy(&cluster.nodes[1], &config, "v1");
    assert!(!out.status.success(), "the deploy accepted m3");
    let why = stderr(&out);
    assert!(
        why.contains("m3")
            && why.contains("nothing was changed")
            && why.contains("halley-node status"),
        "{why}"
    );
    // No host was touched: nothing serves, nothing is deployed, no rollout exists.
    assert_eq!(cluster.versions(&rt), vec![None; 3]);
    for node in &cluster.nodes {
        let services = node.cli(&["services", "--json"]);
        assert_eq!(String::from_utf8_lossy(&services.stdout).trim(), "[]");
    }
    let status = cluster.nodes[0].cli(&["rollout", "status", "web"]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("m3"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // With the name fixed, the same deploy goes through.
    let fixed = cluster.config_with(
        "fixed",
        &[],
        r#"hosts = ["n1", "n2", "n3"]"#,
        "bake = \"0s\"",
    );
    assert_ok(
        &deploy(&cluster.nodes[1], &fixed, "v1"),
        "deploy with known hosts",
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
}

#[test]
fn a_journal_that_cannot_be_written_pauses_the_rollout_before_any_host_changes() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("journal", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "first rollout");
    // n2 coordinates; a file where its journal folder should be makes every journal write fail.
    let n2 = &cluster.nodes[1];
    std::fs::write(n2.dir.join("rollouts"), b"not a directory").unwrap();
    let out = deploy(n2, &config, "v2");
    assert!(
        !out.status.success(),
        "the rollout went on without a journal"
    );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        said.contains("cannot write the rollout journal") && said.contains("deploy --resume web"),
        "{said}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    // The first rollout's drain releases reach n1 by gossip within a round or two; a hold the
    // paused rollout took would last its `orphan_timeout` (minutes).
    let status = || String::from_utf8_lossy(&cluster.nodes[0].cli(&["status"]).stdout).into_owned();
    assert!(
        wait_until(Duration::from_secs(10), || !status().contains("draining")),
        "a host was drained: {}\nn3's log:\n{}",
        status(),
        cluster.nodes[2].log()
    );

    // Once the data dir is fixed, the paused rollout resumes and completes.
    std::fs::remove_file(n2.dir.join("rollouts")).unwrap();
    let out = n2.cli(&["deploy", "web", "--resume"]);
    assert_ok(&out, "resume after the journal is writable again");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
}

#[test]
fn rollout_abort_rolls_back_the_hosts_a_paused_rollout_touched() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("abort", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "first rollout");
    // n3 is down on its turn: the rollout of v2 pauses with n1 and n2 on v2.
    cluster.nodes[2].kill9();
    let out = deploy(&cluster.nodes[0], &config, "v2");
    assert!(!out.status.success(), "the rollout did not pause");
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    assert_eq!(
        cluster.versions(&rt)[..2],
        [Some("v2".to_owned()), Some("v2".to_owned())]
    );

    // Aborted from another node than its coordinator: n1 and n2 go back to v1.
    let out = cluster.nodes[1].cli(&["rollout", "abort", "web"]);
    assert_ok(&out, "rollout abort");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rolled-back"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        cluster.versions(&rt)[..2],
        [Some("v1".to_owned()), Some("v1".to_owned())]
    );
    let history = || {
        let out = cluster.nodes[0].cli(&["history", "web"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(5), || history().contains("aborted")),
        "{}",
        history()
    );

    // Nothing is left to abort.
    let again = cluster.nodes[1].cli(&["rollout", "abort", "web"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("no unfinished rollout to abort"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn rollout_abort_on_the_coordinator_stops_the_rollout_it_drives() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("quick", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "first rollout");
    let slow = cluster.config("slow", &[], "bake = \"60s\"");
    let running = deploy_in_background(
        &cluster.nodes[0],
        &slow,
        "web",
        "v2",
        Path::new(SERVICE_BIN),
    );
    // n1 serves v2 and bakes it for a minute; the abort comes during the bake.
    assert!(wait_until(Duration::from_secs(30), || {
        cluster.versions(&rt)[0].as_deref() == Some("v2")
    }));
    let out = cluster.nodes[0].cli(&["rollout", "abort", "web"]);
    assert_ok(&out, "abort on the coordinator");
    let deployed = running.join().unwrap();
    assert!(!deployed.status.success(), "the aborted deploy exited 0");
    assert!(
        stderr(&deployed).contains("aborted"),
        "{}",
        stderr(&deployed)
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
}

#[test]
fn a_resumed_rollout_does_not_complete_over_a_host_that_reverted_itself() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    // n1 and n2 run web; n3 only coordinates.
    let hosts = r#"hosts = ["n1", "n2"]"#;
    let quick = cluster.config_with("quick", &[], hosts, "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[2], &quick, "v2"), "rollout of v2");
    let slow = cluster.config_with(
        "slow",
        &[],
        hosts,
        "bake = \"30s\"\norphan_timeout = \"3s\"",
    );
    let running = deploy_in_background(
        &cluster.nodes[2],
        &slow,
        "web",
        "v3",
        Path::new(SERVICE_BIN),
    );
    assert!(wait_until(Duration::from_secs(30), || {
        let out = cluster.nodes[1].cli(&["rollout", "status", "web"]);
        String::from_utf8_lossy(&out.stdout).contains("baking")
    }));
    assert_eq!(cluster.versions(&rt)[0].as_deref(), Some("v3"));
    // The coordinator dies while n1 bakes v3; with nobody in touch, n1 goes back to v2 by itself.
    cluster.nodes[2].kill9();
    let _ = running.join();
    assert!(
        wait_until(Duration::from_secs(20), || {
            cluster.versions(&rt)[0].as_deref() == Some("v2")
        }),
        "n1 did not revert by itself"
    );

    // Taken over from n2, the rollout must not call v3 completed while n1 serves v2.
    let out = cluster.nodes[1].cli(&["deploy", "web", "--resume", "--force", "--skip-unreachable"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        !out.status.success(),
        "the resumed rollout completed: {said}"
    );
    assert!(said.contains("reverted by itself"), "{said}");
    assert_eq!(
        cluster.versions(&rt)[..2],
        [Some("v2".to_owned()), Some("v2".to_owned())]
    );
    let history = cluster.nodes[1].cli(&["history", "web"]);
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    assert!(
        !history
            .lines()
            .any(|l| l.contains(" v3 ") && l.contains("completed")),
        "{history}"
    );
}

#[test]
fn a_rollback_whose_coordinator_died_is_finished_from_another_node() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    // Cold slots, and v1 takes 2.5 s to listen: the rollback to v1 lasts a few seconds.
    let cold = |name: &str, env: &[(&str, &str)]| {
        let path = cluster.config(name, env, "bake = \"0s\"");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("keep_warm = \"1m\"", "keep_warm = \"0s\""),
        )
        .unwrap();
        path
    };
    let slow_start = cold("v1", &[("TS_START_DELAY_MS", "2500")]);
    let plain = cold("v2", &[]);
    assert_ok(
        &deploy(&cluster.nodes[0], &slow_start, "v1"),
        "rollout of v1",
    );
    assert_ok(&deploy(&cluster.nodes[0], &plain, "v2"), "rollout of v2");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);

    // n3 coordinates the rollback and is SIGKILLed a second into it.
    let rolling = cluster.nodes[2].cli_in_background(&["rollback", "web"]);
    assert!(wait_until(Duration::from_secs(10), || {
        let out = cluster.nodes[0].cli(&["rollout", "status", "web"]);
        String::from_utf8_lossy(&out.stdout).contains("rolling-back")
    }));
    std::thread::sleep(Duration::from_secs(1));
    let before = cluster.generation(0, "n3");
    cluster.nodes[2].kill9();
    let _ = rolling.join();
    // No host lacks a healthy slot meanwhile.
    let versions = cluster.versions(&rt);
    assert!(
        versions[0].is_some() && versions[1].is_some(),
        "{versions:?}"
    );
    cluster.nodes[2].start_with(&["--service-address", "127.0.0.3"]);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .generation(0, "n3")
        > before));

    // The refusal names the rollback and a command that works; that command finishes it
    // (before, it named the placeholder version `previous` and the resume found no release).
    let out = deploy(&cluster.nodes[0], &plain, "v3");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("version v1") && err.contains("deploy --resume web"),
        "{err}"
    );
    let out = cluster.nodes[0].cli(&["deploy", "web", "--resume"]);
    assert_ok(&out, "rollback taken over by n1");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("coordinated by n1") && said.contains("3/3 hosts back"),
        "{said}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    for node in &cluster.nodes {
        assert_eq!(node.services()[0]["committed"], "v1", "{}", node.name);
    }
    // History names the release it went back to, not a placeholder.
    let history = || {
        let out = cluster.nodes[1].cli(&["history", "web"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || history()
            .lines()
            .any(|l| l.contains(" v1 ") && l.contains("rolled-back"))),
        "{}",
        history()
    );
}

#[test]
fn a_rollback_host_left_without_its_coordinator_after_the_flip_keeps_the_target_even_across_a_restart()
 {
    let mut cluster = Cluster::start();
    let rt = runtime();
    // n1 and n2 run web; n3 only coordinates. v2 answers slowly, so draining it after the
    // rollback's flip takes the whole drain_timeout (2 s): the coordinator dies in that window.
    let hosts = r#"hosts = ["n1", "n2"]"#;
    let v1 = cluster.config_with("v1", &[], hosts, "bake = \"0s\"\norphan_timeout = \"3s\"");
    let v2 = cluster.config_with(
        "v2",
        &[("TS_LATENCY_MS", "4000")],
        hosts,
        "bake = \"0s\"\norphan_timeout = \"3s\"",
    );
    assert_ok(&deploy(&cluster.nodes[2], &v1, "v1"), "rollout of v1");
    assert_ok(&deploy(&cluster.nodes[2], &v2, "v2"), "rollout of v2");
    // Requests in flight to v2 on both hosts hold its drain open.
    let entries = [cluster.entry(0), cluster.entry(1)];
    let inflight: Vec<_> = entries
        .iter()
        .map(|&addr| std::thread::spawn(move || runtime().block_on(http::get(addr, "/"))))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rolling = cluster.nodes[2].cli_in_background(&["rollback", "web"]);
    let flipped = |node: &Node| {
        node.slot("web", "active")
            .is_some_and(|s| s["version"] == "v1")
    };
    assert!(
        wait_until(Duration::from_secs(10), || flipped(&cluster.nodes[0])
            && flipped(&cluster.nodes[1])),
        "the rollback never flipped"
    );
    cluster.nodes[2].kill9();
    let _ = rolling.join();
    assert_eq!(
        cluster.nodes[1].services()[0]["committed"],
        "v2",
        "n2 committed before its restart: the test would not exercise the marker"
    );
    // n2's daemon restarts too, before orphan_timeout: it adopts the rollback's uncommitted
    // deploy as a rollback (before, the marker lived in memory, and n2 reverted to v2).
    cluster.restart(1);
    for t in inflight {
        let _ = t.join();
    }
    // With nobody in touch, each host finishes the rollback by itself: v1 stays and is
    // committed (before, it reverted to v2, the release being rolled back).
    let committed = |node: &Node| node.services()[0]["committed"] == "v1";
    assert!(
        wait_until(Duration::from_secs(20), || committed(&cluster.nodes[0])
            && committed(&cluster.nodes[1])),
        "{} / {}",
        cluster.nodes[0].services(),
        cluster.nodes[1].services()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        cluster.versions(&rt)[..2],
        [Some("v1".to_owned()), Some("v1".to_owned())]
    );
}

#[test]
fn two_deploys_started_at_once_from_two_nodes_leave_exactly_one_winner() {
    let cluster = Cluster::start();
    let rt = runtime();
    let config = cluster.config("quick", &[], "bake = \"1s\"");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "rollout of v1");
    // Both coordinators see the same newest epoch and pick the same next one; the hosts order
    // them by (epoch, coordinator name), so n2's wins and n1's is fenced (or refused up front,
    // when n2's rollout reached gossip first).
    let first = deploy_in_background(
        &cluster.nodes[0],
        &config,
        "web",
        "v4",
        Path::new(SERVICE_BIN),
    );
    let second = deploy_in_background(
        &cluster.nodes[1],
        &config,
        "web",
        "v5",
        Path::new(SERVICE_BIN),
    );
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let said =
        |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
    assert!(
        first.status.success() != second.status.success(),
        "exactly one must win:\nv4: {}\nv5: {}",
        said(&first),
        said(&second)
    );
    let (winner, loser, lost) = if first.status.success() {
        ("v4", "v5", said(&second))
    } else {
        ("v5", "v4", said(&first))
    };
    assert!(
        lost.contains("fenced") || lost.contains("unfinished rollout"),
        "{loser}: {lost}"
    );
    assert_eq!(cluster.versions(&rt), vec![Some(winner.to_owned()); 3]);
    for node in &cluster.nodes {
        assert_eq!(node.services()[0]["committed"], winner, "{}", node.name);
    }
    // A third node's history has the winner's rollout, and the loser's once it started.
    let history = || {
        let out = cluster.nodes[2].cli(&["history", "web"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let h = history();
            h.lines()
                .any(|l| l.contains(&format!(" {winner} ")) && l.contains("completed"))
                && (!lost.contains("fenced")
                    || h.lines()
                        .any(|l| l.contains(&format!(" {loser} ")) && l.contains("fenced")))
        }),
        "{}",
        history()
    );
}

#[test]
fn history_survives_every_node_restarting() {
    let mut cluster = Cluster::start();
    let config = cluster.config("quick", &[], "bake = \"0s\"");
    assert_ok(
        &deploy(&cluster.nodes[2], &config, "v1"),
        "rollout of v1 from n3",
    );
    let history =
        |node: &Node| String::from_utf8_lossy(&node.cli(&["history", "web"]).stdout).into_owned();
    let listed = |node: &Node| {
        history(node)
            .lines()
            .any(|l| l.contains(" v1 ") && l.contains("completed"))
    };
    assert!(wait_until(Duration::from_secs(10), || listed(
        &cluster.nodes[0]
    )));
    // Every node dies at once (a power cut): gossip keeps nothing of what they published.
    for node in &mut cluster.nodes {
        node.kill9();
    }
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        node.start_with(&["--service-address", &format!("127.0.0.{}", i + 1)]);
    }
    halley_tests::wait_converged(&cluster.nodes);
    // The coordinator publishes its history book again (before, history was empty everywhere).
    for node in &cluster.nodes {
        assert!(
            wait_until(Duration::from_secs(10), || listed(node)),
            "{}: {}",
            node.name,
            history(node)
        );
    }
}

#[test]
fn a_deploy_following_a_rollout_nobody_drives_any_more_says_so_and_how_to_resume() {
    let mut cluster = Cluster::start();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    let slow = cluster.config("slow", &[], "bake = \"10s\"");
    // n1's CLI follows its rollout of v2; n2 takes it over (--force) and dies, so nobody
    // drives it any more. Before, n1's CLI waited for ever.
    let mut follower = std::process::Command::new(halley_tests::binary())
        .args(["deploy", "web", "-c"])
        .arg(&slow)
        .args(["--version", "v2", "--artifact", SERVICE_BIN, "--data-dir"])
        .arg(&cluster.nodes[0].dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let baking = wait_until(Duration::from_secs(20), || {
        let out = cluster.nodes[0].cli(&["rollout", "status", "web"]);
        String::from_utf8_lossy(&out.stdout).contains("baking")
    });
    assert!(baking, "the rollout never reached a bake");
    let taker = cluster.nodes[1].cli_in_background(&["deploy", "web", "--resume", "--force"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = cluster.nodes[0].cli(&["rollout", "status", "web"]);
            String::from_utf8_lossy(&out.stdout).contains("coordinator n2,")
        }),
        "n2 never took the rollout over: {}",
        String::from_utf8_lossy(&cluster.nodes[0].cli(&["rollout", "status", "web"]).stdout)
    );
    // n1's own driver saw the higher token in gossip and stopped.
    assert!(
        wait_until(Duration::from_secs(5), || cluster.nodes[0]
            .log()
            .contains("taken over by node n2")),
        "n1's driver did not stop when n2 took its rollout over"
    );
    cluster.nodes[1].kill9();
    let _ = taker.join();
    let ended = wait_until(Duration::from_secs(30), || {
        matches!(follower.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = follower.kill();
    }
    let out = follower.wait_with_output().unwrap();
    assert!(
        ended,
        "the deploy CLI still waited 30 s after its rollout's last coordinator died"
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no node drives it") && err.contains("'halley-node deploy --resume web'"),
        "{err}"
    );
    // What it says works: n1 takes the rollout over (n2 is down, so it is skipped; the
    // rollout converges n2 when it returns).
    assert_ok(
        &cluster.nodes[0].cli(&["deploy", "web", "--resume", "--skip-unreachable"]),
        "resume from n1",
    );
}

#[test]
fn a_deploy_right_after_the_coordinator_restarts_reaches_every_host() {
    // Found by the fault campaign (seeds 58 and 111): a node that had just restarted planned
    // `hosts = all` from the members it had heard of so far (itself), deployed to itself only,
    // and history called the release completed while the other hosts ran the old one.
    let mut cluster = Cluster::start();
    let rt = runtime();
    let good = cluster.config("good", &[], "bake = \"0s\"");
    assert_ok(&deploy(&cluster.nodes[0], &good, "v1"), "first rollout");
    cluster.restart(0);
    assert_ok(
        &deploy(&cluster.nodes[0], &good, "v2"),
        "rollout from the restarted n1",
    );
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
}
