//! State safety inside the deploy flow, with three real nodes: a snapshot and a verified
//! restore before the migration, the migration once, the contract after the commit; a failing
//! migration that changes no host; backups listed, restored, refused when corrupt; a rollback
//! that restores the data too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halley_tests::cluster::Cluster;
use halley_tests::{Node, assert_ok, runtime, stderr, wait_until};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

fn deploy(node: &Node, config: &Path, version: &str) -> std::process::Output {
    node.deploy(config, "web", version, Path::new(SERVICE_BIN))
}

fn data(node: &Node) -> PathBuf {
    node.dir.join("services/web/data")
}

/// Creates (or extends) `app.db` in a node's service data with `n` more rows.
fn add_rows(node: &Node, n: usize) {
    let conn = rusqlite::Connection::open(data(node).join("app.db")).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    for _ in 0..n {
        conn.execute("INSERT INTO t (v) VALUES ('row')", [])
            .unwrap();
    }
}

fn rows(node: &Node) -> i64 {
    let conn = rusqlite::Connection::open(data(node).join("app.db")).unwrap();
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `[state]` table on n1: app.db, a verify command, and migrate/contract commands that log
/// each run in the service data directory. `fail_on` makes that release's migration fail.
fn state_config(cluster: &Cluster, name: &str, fail_on: &str) -> PathBuf {
    let state = format!(
        r#"[service.web.state]
sqlite = ["app.db"]
verify = ["sh", "-c", "test -s \"$HALLEY_RESTORED/app.db\""]
migrate = ["sh", "-c", "if [ \"$HALLEY_RELEASE\" = '{fail_on}' ]; then echo 'ALTER TABLE t: no such column' >&2; exit 1; fi; echo \"migrated $HALLEY_RELEASE\" >> \"$HALLEY_SERVICE_DATA/migrations\""]
contract = ["sh", "-c", "echo \"contracted $HALLEY_RELEASE\" >> \"$HALLEY_SERVICE_DATA/contracts\""]
on = ["n1"]
keep_backups = 3"#
    );
    cluster.config_with(name, &[], &state, "bake = \"0s\"")
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_deploy_snapshots_and_verifies_then_migrates_once_and_contracts_after_the_commit() {
    let cluster = Cluster::start();
    let rt = runtime();
    let n1 = &cluster.nodes[0];
    let config = state_config(&cluster, "s", "never");
    let out = deploy(n1, &config, "v1");
    assert_ok(&out, "first deploy");
    assert!(
        text(&out).contains("no committed release on this node yet"),
        "{}",
        text(&out)
    );
    add_rows(n1, 25);

    let out = deploy(&cluster.nodes[1], &config, "v2");
    assert_ok(&out, "deploy v2 coordinated by n2");
    let said = text(&out);
    assert!(said.contains("taken and verified"), "{said}");
    assert!(said.contains("integrity_check ok"), "{said}");
    assert!(said.contains("migration of v2 ran"), "{said}");
    assert_eq!(cluster.versions(&rt), vec![Some("v2".to_owned()); 3]);
    assert_eq!(
        read(data(n1).join("migrations")),
        "migrated v1\nmigrated v2\n"
    );
    assert!(wait_until(Duration::from_secs(10), || read(
        data(n1).join("contracts")
    )
    .contains("contracted v2")));
    // Only on the state host.
    assert!(!data(&cluster.nodes[1]).join("migrations").exists());

    let list = String::from_utf8_lossy(&n1.cli(&["backup", "list", "web"]).stdout).into_owned();
    assert!(list.contains("before deploy of v2"), "{list}");
    let listed_from_n3 = cluster.nodes[2].cli(&["backup", "list", "web", "--node", "n1"]);
    assert!(
        String::from_utf8_lossy(&listed_from_n3.stdout).contains("before deploy of v2"),
        "{}",
        text(&listed_from_n3)
    );

    // The same release again: the migration does not run twice. Its snapshot (taken while v2
    // served, holding 5 rows written under v2) is not the one a rollback of v2 restores.
    add_rows(n1, 5);
    let out = deploy(n1, &config, "v2");
    assert_ok(&out, "deploy v2 again");
    assert!(text(&out).contains("already ran"), "{}", text(&out));
    assert_eq!(
        read(data(n1).join("migrations")),
        "migrated v1\nmigrated v2\n"
    );

    // Code and data back: the rows written since the v2 deploy's snapshot are gone, those
    // written under v2 before its second deploy too (before, that snapshot was restored).
    let before_v2 = 25;
    add_rows(n1, 10);
    assert_eq!(rows(n1), before_v2 + 15);
    let refused = n1.cli(&["rollback", "web", "--restore-data"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(rows(n1), before_v2 + 15);
    let out = n1.cli(&["rollback", "web", "--restore-data", "--yes"]);
    assert_ok(&out, "rollback --restore-data");
    assert!(text(&out).contains("will be lost"), "{}", text(&out));
    assert_eq!(rows(n1), before_v2);
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
}

#[test]
fn a_failing_migration_stops_the_deploy_before_any_host_changes() {
    let cluster = Cluster::start();
    let rt = runtime();
    let n1 = &cluster.nodes[0];
    let config = state_config(&cluster, "f", "v2");
    assert_ok(&deploy(n1, &config, "v1"), "first deploy");
    add_rows(n1, 5);
    let out = deploy(n1, &config, "v2");
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("ALTER TABLE t: no such column"), "{said}");
    assert!(said.contains("no host serves v2"), "{said}");
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    for node in &cluster.nodes {
        assert!(node.slot("web", "next").is_none(), "{}", node.services());
        assert_eq!(node.slot("web", "active").unwrap()["version"], "v1");
    }
    // The snapshot taken before it is kept and listed.
    let list = String::from_utf8_lossy(&n1.cli(&["backup", "list", "web"]).stdout).into_owned();
    assert!(list.contains("before deploy of v2"), "{list}");
    assert_eq!(read(data(n1).join("migrations")), "migrated v1\n");
}

#[test]
fn refused_deploys_never_prune_the_backup_a_rollback_of_the_committed_release_restores() {
    let cluster = Cluster::start();
    let n1 = &cluster.nodes[0];
    let good = state_config(&cluster, "good", "never");
    let failing = state_config(&cluster, "failing", "v3");
    assert_ok(&deploy(n1, &good, "v1"), "first deploy");
    add_rows(n1, 7);
    assert_ok(
        &deploy(n1, &good, "v2"),
        "deploy v2 (its snapshot holds 7 rows)",
    );
    add_rows(n1, 3);
    // Four refused deploys of v3 with keep_backups = 3: each snapshots first.
    for _ in 0..4 {
        let out = deploy(n1, &failing, "v3");
        assert!(!out.status.success(), "{}", text(&out));
    }
    let list = String::from_utf8_lossy(&n1.cli(&["backup", "list", "web"]).stdout).into_owned();
    assert!(list.contains("before deploy of v2"), "pruned: {list}");
    let out = n1.cli(&["rollback", "web", "--restore-data", "--yes"]);
    assert_ok(&out, "rollback --restore-data");
    assert_eq!(rows(n1), 7, "{}", text(&out));
}

#[test]
fn a_backup_restores_after_its_hashes_are_checked_and_a_corrupt_one_is_refused() {
    let cluster = Cluster::start();
    let rt = runtime();
    let n1 = &cluster.nodes[0];
    let config = state_config(&cluster, "r", "never");
    assert_ok(&deploy(n1, &config, "v1"), "first deploy");
    add_rows(n1, 7);
    let out = n1.cli(&["backup", "create", "web"]);
    assert_ok(&out, "backup create");
    let said = text(&out);
    assert!(said.contains("verified"), "{said}");
    let id = said
        .split_whitespace()
        .nth(1)
        .expect("backup ID in the output")
        .to_owned();
    add_rows(n1, 3);

    // No terminal and no --yes: nothing happens.
    let out = n1.cli(&["backup", "restore", "web", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(rows(n1), 10);

    let out = n1.cli(&["backup", "restore", "web", &id, "--yes"]);
    assert_ok(&out, "backup restore");
    assert!(text(&out).contains("will be lost"), "{}", text(&out));
    assert_eq!(rows(n1), 7);
    assert!(
        wait_until(Duration::from_secs(15), || cluster.versions(&rt)[0]
            .as_deref()
            == Some("v1")),
        "the service serves again after the restore"
    );

    // A flipped byte in the copy: refused before the service is touched.
    let copy = n1.dir.join("backups/web").join(&id).join("sqlite/0.db");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&copy, bytes).unwrap();
    add_rows(n1, 1);
    let pid = n1.slot("web", "active").unwrap()["pid"].clone();
    let out = n1.cli(&["backup", "restore", "web", &id, "--yes"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("corrupt"), "{}", text(&out));
    assert_eq!(rows(n1), 8);
    assert_eq!(n1.slot("web", "active").unwrap()["pid"], pid);
}

#[test]
fn a_disk_filling_during_the_snapshot_stops_the_deploy_and_leaves_no_backup() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let config = state_config(&cluster, "d", "never");
    assert_ok(&deploy(&cluster.nodes[0], &config, "v1"), "first deploy");
    {
        // A 4 MB database; the restarted node may write files of at most 2 MB.
        let conn = rusqlite::Connection::open(data(&cluster.nodes[0]).join("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        let filler = "x".repeat(10_000);
        for _ in 0..400 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [&filler])
                .unwrap();
        }
    }
    let n1 = &mut cluster.nodes[0];
    assert!(n1.terminate());
    n1.start_limited(&["--service-address", "127.0.0.1"], Some(2 << 20));
    halley_tests::wait_converged(&cluster.nodes);
    let n1 = &cluster.nodes[0];

    // Coordinated by n2 (n1 could not even store the artifact under its limit).
    let out = deploy(&cluster.nodes[1], &config, "v2");
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("snapshot on n1 failed") && said.contains("before any host changed"),
        "{said}"
    );
    let list = String::from_utf8_lossy(&n1.cli(&["backup", "list", "web"]).stdout).into_owned();
    assert!(list.contains("(no backups)"), "{list}");
    let leftovers: Vec<String> = std::fs::read_dir(n1.dir.join("backups/web"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(cluster.versions(&rt), vec![Some("v1".to_owned()); 3]);
    assert_eq!(rows(n1), 400);
}

#[test]
fn two_migrations_of_one_release_at_once_run_it_once() {
    use halley_node::store::datadir::DataDir;
    use halley_proto::message::{AdminRequest, AdminResponse, StateReply, StateRequest};

    let cluster = Cluster::start();
    let n1 = &cluster.nodes[0];
    // A migration slow enough that a second request arrives while the first runs.
    let state = r#"[service.web.state]
migrate = ["sh", "-c", "sleep 1; echo \"migrated $HALLEY_RELEASE\" >> \"$HALLEY_SERVICE_DATA/migrations\""]
on = ["n1"]"#;
    let config = cluster.config_with("slow", &[], state, "bake = \"0s\"");
    assert_ok(&deploy(n1, &config, "v1"), "first deploy");
    assert_eq!(read(data(n1).join("migrations")), "migrated v1\n");

    // As if v1 had never migrated: the ledger and the log start empty.
    std::fs::remove_file(n1.dir.join("services/web/migrated")).unwrap();
    std::fs::remove_file(data(n1).join("migrations")).unwrap();
    let data_dir = DataDir::new(&n1.dir);
    let request = AdminRequest::State {
        node: None,
        request: StateRequest::Migrate {
            service: "web".parse().unwrap(),
            version: "v1".parse().unwrap(),
        },
    };
    let (a, b) = runtime().block_on(async {
        tokio::join!(
            halley_node::daemon::admin::call(&data_dir, request.clone()),
            halley_node::daemon::admin::call(&data_dir, request)
        )
    });
    let already = |r: halley_node::Result<AdminResponse>| match r {
        Ok(AdminResponse::State(StateReply::Ran { already, .. })) => already,
        other => panic!("unexpected answer to a migration: {other:?}"),
    };
    let mut answers = [already(a), already(b)];
    answers.sort();
    assert_eq!(read(data(n1).join("migrations")), "migrated v1\n");
    assert_eq!(answers, [false, true], "one ran, the other found it done");
    assert_eq!(read(n1.dir.join("services/web/migrated")), "v1\n");
}

#[test]
fn a_dry_run_checks_the_artifact_and_the_lock_and_lists_the_state_steps() {
    let cluster = Cluster::start();
    let n2 = &cluster.nodes[1];
    let config = state_config(&cluster, "dry", "never");
    let dry_run = |artifact: &str| {
        n2.cli(&[
            "deploy",
            "web",
            "-c",
            &config.display().to_string(),
            "--version",
            "v1",
            "--artifact",
            artifact,
            "--dry-run",
        ])
    };
    // A missing artifact fails the dry run as it would fail the deploy.
    let missing = cluster.dir.join("no-such-artifact");
    let out = dry_run(&missing.display().to_string());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no-such-artifact"), "{}", text(&out));

    // The state steps are part of the plan.
    let out = dry_run(SERVICE_BIN);
    assert_ok(&out, "dry run");
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.contains("state: snapshot and verify on n1"), "{plan}");
    assert!(
        plan.contains("state: migrate on n1 before any host changes"),
        "{plan}"
    );
    assert!(plan.contains("state: contract on n1 after"), "{plan}");
    assert!(!plan.contains("on n2"), "{plan}");
}
