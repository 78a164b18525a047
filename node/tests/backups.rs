//! The backup store against real SQLite databases, directories and commands: a snapshot taken
//! while a writer runs, verification, restore, corruption, a failing command, retention.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use halley_node::host::backups::{Backups, Hooks, Snapshot};
use halley_node::host::view::Confinement;
use halley_proto::NodeName;
use halley_proto::spec::{ServiceName, StateSpec};

fn spec(toml_text: &str) -> StateSpec {
    toml::from_str(toml_text).expect("a valid [state] table")
}

fn hooks(cwd: &Path) -> Hooks {
    Hooks {
        cwd: cwd.to_path_buf(),
        env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
        secrets: Vec::new(),
        user: None,
    }
}

fn snapshot<'a>(
    service: &'a ServiceName,
    node: &'a NodeName,
    spec: &'a StateSpec,
    data: &'a Path,
    hooks: &'a Hooks,
    now_ms: u64,
) -> Snapshot<'a> {
    Snapshot {
        service,
        node,
        spec,
        service_data: data,
        release: None,
        for_release: None,
        hooks,
        now_ms,
    }
}

fn count(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_snapshot_taken_while_a_writer_runs_holds_every_row_committed_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
    }
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                conn.execute("INSERT INTO t (v) VALUES (?1)", ["some text to make pages"])
                    .unwrap();
                committed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while committed.load(Ordering::SeqCst) < 2000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let state = spec(
        "sqlite = [\"app.db\"]\nverify = [\"sh\", \"-c\", \"test -s $HALLEY_RESTORED/app.db\"]",
    );
    let hooks = hooks(tmp.path());
    let backups = Backups::new(tmp.path());
    let before = committed.load(Ordering::SeqCst);
    let manifest = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 1))
        .unwrap();
    let after = committed.load(Ordering::SeqCst);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        after > before,
        "the writer kept writing during the snapshot"
    );

    let copy = tmp
        .path()
        .join("backups/web")
        .join(&manifest.id)
        .join("sqlite/0.db");
    let rows = count(&copy) as u64;
    assert!(
        rows >= before,
        "{rows} rows in the copy, {before} committed before it"
    );
    assert!(
        rows <= after,
        "{rows} rows in the copy, only {after} committed at its end"
    );
    let checked = backups
        .verify(&service, &manifest.id, &state, &hooks)
        .unwrap();
    assert!(checked.contains("integrity_check ok"), "{checked}");
    assert!(checked.contains("verify command passed"), "{checked}");

    // Restore puts exactly the snapshot back.
    assert!(count(&db) as u64 > rows);
    backups
        .restore(&service, &manifest.id, &state, &data, &hooks)
        .unwrap();
    assert_eq!(count(&db) as u64, rows);
}

#[test]
fn a_corrupt_backup_is_refused_before_anything_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("uploads/a")).unwrap();
    std::fs::write(data.join("uploads/a/one.txt"), "one").unwrap();
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let state = spec("dirs = [\"uploads\"]");
    let hooks = hooks(tmp.path());
    let backups = Backups::new(tmp.path());
    let m = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 1))
        .unwrap();
    std::fs::write(data.join("uploads/a/one.txt"), "changed").unwrap();
    std::fs::write(data.join("uploads/two.txt"), "new").unwrap();

    // Intact: the directory comes back as it was.
    backups
        .restore(&service, &m.id, &state, &data, &hooks)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("uploads/a/one.txt")).unwrap(),
        "one"
    );
    assert!(!data.join("uploads/two.txt").exists());

    // One flipped byte: refused, naming the file, and nothing changes.
    let archive = tmp
        .path()
        .join("backups/web")
        .join(&m.id)
        .join("dirs/0.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    std::fs::write(data.join("uploads/a/one.txt"), "kept").unwrap();
    let err = backups
        .restore(&service, &m.id, &state, &data, &hooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") && err.contains("dirs/0.tar"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("uploads/a/one.txt")).unwrap(),
        "kept"
    );
    let err = backups
        .verify(&service, &m.id, &state, &hooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_failing_backup_command_leaves_no_backup_and_shows_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let state = spec(
        "backup = [\"sh\", \"-c\", \"echo half > $HALLEY_BACKUP_DIR/dump; echo 'pg_dump: connection refused' >&2; exit 3\"]\nrestore = [\"true\"]",
    );
    let hooks = hooks(tmp.path());
    let backups = Backups::new(tmp.path());
    let err = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connection refused"), "{err}");
    assert!(backups.list(&service).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("backups/web"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing database is named too.
    let state = spec("sqlite = [\"missing.db\"]");
    let err = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.db"), "{err}");
    assert!(backups.list(&service).is_empty());
}

#[test]
fn the_command_hooks_round_trip_and_retention_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("value"), "v1").unwrap();
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let state = spec(&format!(
        "backup = [\"sh\", \"-c\", \"cp {d}/value $HALLEY_BACKUP_DIR/value\"]\nrestore = [\"sh\", \"-c\", \"cp $HALLEY_BACKUP_DIR/value {d}/value\"]\nkeep_backups = 2",
        d = data.display()
    ));
    let hooks = hooks(tmp.path());
    let backups = Backups::new(tmp.path());
    let first = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 1_000))
        .unwrap();
    assert_eq!(first.files.len(), 1);
    std::fs::write(data.join("value"), "v2").unwrap();
    backups
        .restore(&service, &first.id, &state, &data, &hooks)
        .unwrap();
    assert_eq!(std::fs::read_to_string(data.join("value")).unwrap(), "v1");
    for ms in [2_000, 3_000] {
        backups
            .create(&snapshot(&service, &node, &state, &data, &hooks, ms))
            .unwrap();
    }
    assert_eq!(
        backups.prune(&service, state.keep_backups, None),
        vec![first.id]
    );
    assert_eq!(backups.list(&service).len(), 2);
}

#[test]
fn a_link_planted_in_the_service_data_dir_never_makes_a_restore_or_snapshot_leave_it() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let tmp = tempfile::tempdir().unwrap();
    let (data, outside) = (tmp.path().join("data"), tmp.path().join("outside"));
    std::fs::create_dir_all(data.join("db")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let db = data.join("db/app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t DEFAULT VALUES;")
        .unwrap();
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let state = spec("sqlite = [\"db/app.db\"]\ndirs = [\"files\"]");
    std::fs::create_dir_all(data.join("files")).unwrap();
    std::fs::write(data.join("files/a.txt"), "kept").unwrap();
    let hooks = hooks(tmp.path());
    let backups = Backups::new(&tmp.path().join("node"));
    let m = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 1))
        .unwrap();
    // The backup is root's alone.
    let backup_dir = tmp.path().join("node/backups/web").join(&m.id);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&backup_dir), 0o700);
    assert_eq!(mode(&backup_dir.join("sqlite/0.db")), 0o600);
    assert_eq!(mode(&backup_dir.join("dirs/0.tar")), 0o600);

    // A link at the staged copy's name would have made root write through it.
    let victim = outside.join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    symlink(&victim, data.join("db/.app.db.halley-restoring")).unwrap();
    backups
        .restore(&service, &m.id, &state, &data, &hooks)
        .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert_eq!(count(&db), 1);

    // A directory of the path swapped for a link to elsewhere: refused, nothing written there.
    std::fs::remove_dir_all(data.join("db")).unwrap();
    symlink(&outside, data.join("db")).unwrap();
    let err = backups
        .restore(&service, &m.id, &state, &data, &hooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(
        !outside.join("app.db").exists(),
        "the restore wrote outside the data dir"
    );
    let err = backups
        .create(&snapshot(&service, &node, &state, &data, &hooks, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a symbolic link"), "{err}");
}

#[test]
fn a_snapshot_reads_and_a_restore_writes_the_service_data_as_the_services_user() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let Some((uid, gid)) = halley_node::host::process::service_user(Some("nobody")).unwrap() else {
        eprintln!("not root: a service's `user` is ignored, so there is nothing to prove here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The node's data dir is root's alone (0700), as halley-node keeps it: the user reaches its
    // data dir only through its view.
    let root = tmp.path().join("node");
    let data = root.join("services/web/data");
    std::fs::create_dir_all(data.join("files/root-only")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(root.join("node.key"), "the node's").unwrap();
    std::fs::create_dir_all(data.join("db")).unwrap();
    std::fs::write(data.join("files/a.txt"), "the user's").unwrap();
    std::fs::write(data.join("files/root-only/secret"), "root's").unwrap();
    let db = data.join("db/app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t DEFAULT VALUES;")
        .unwrap();
    // The service's user owns its data dir, except what root put there for itself (a link
    // swapped in mid-walk would lead to the same kind of place).
    for p in [
        &data,
        &data.join("files"),
        &data.join("files/a.txt"),
        &data.join("db"),
    ] {
        chown(p, Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(
        data.join("files/root-only"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (service, node) = (
        ServiceName::parse("web").unwrap(),
        NodeName::parse("n1").unwrap(),
    );
    let hooks = hooks(tmp.path());
    let confined = Hooks {
        user: Some(Confinement::new(uid, gid, &root, &[&data])),
        ..hooks.clone()
    };
    let backups = Backups::new(&root);
    let as_nobody = |spec: &StateSpec, n: u64| {
        let s = snapshot(&service, &node, spec, &data, &confined, n);
        backups.create(&s).map(|m| m.id)
    };

    // Root's directory inside the tree: root could read it, the service's user cannot.
    let dirs = spec("dirs = [\"files\"]");
    let err = as_nobody(&dirs, 1).unwrap_err().to_string();
    assert!(err.contains("ermission denied"), "{err}");
    assert!(
        backups
            .create(&snapshot(&service, &node, &dirs, &data, &hooks, 2))
            .is_ok(),
        "as root the same tree is read"
    );
    std::fs::remove_dir_all(data.join("files/root-only")).unwrap();
    as_nobody(&dirs, 3).expect("the user's own files are read as the user");

    // A database the user cannot read is not read for it; once it is the user's, it is (WAL
    // mode: its -wal and -shm are opened as the user too).
    let sqlite = spec("sqlite = [\"db/app.db\"]");
    let err = as_nobody(&sqlite, 4).unwrap_err().to_string();
    assert!(err.contains("cannot snapshot SQLite database"), "{err}");
    for p in [
        db.clone(),
        data.join("db/app.db-wal"),
        data.join("db/app.db-shm"),
    ] {
        if p.exists() {
            chown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
    let id = as_nobody(&sqlite, 5).expect("the user's database is read as the user");
    let copy = tmp
        .path()
        .join("node/backups/web")
        .join(&id)
        .join("sqlite/0.db");
    assert_eq!(count(&copy), 1);

    // A restore writes as the user: what it puts back is the user's, so the service (running
    // as that user) can open it.
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
    backups
        .restore(&service, &id, &sqlite, &data, &confined)
        .unwrap();
    assert_eq!(owner(&db), uid, "the restored database is the user's");
    assert_eq!(count(&db), 1);
    let both = spec("sqlite = [\"db/app.db\"]\ndirs = [\"files\"]");
    let id = as_nobody(&both, 6).unwrap();
    std::fs::remove_dir_all(data.join("files")).unwrap();
    backups
        .restore(&service, &id, &both, &data, &confined)
        .unwrap();
    assert_eq!(owner(&data.join("files/a.txt")), uid);
    assert_eq!(owner(&data.join("files")), uid);

    // The hooks run as the user too, in the same view: they write their dump into the backup's
    // hook dir (theirs while they run, root's after), and see nothing else of the node's.
    let hooked = spec(
        "backup = [\"sh\", \"-c\", \"id -u > $HALLEY_BACKUP_DIR/uid; cat ../../../node.key > $HALLEY_BACKUP_DIR/key 2>&1 || echo hidden > $HALLEY_BACKUP_DIR/key\"]\nrestore = [\"sh\", \"-c\", \"cp $HALLEY_BACKUP_DIR/uid $HALLEY_SERVICE_DATA/restored-by\"]\nverify = [\"sh\", \"-c\", \"test $(id -u) = $(cat $HALLEY_BACKUP_DIR/uid) && test $(id -u) != 0 && ls $HALLEY_RESTORED\"]",
    );
    let confined = Hooks {
        env: vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HALLEY_SERVICE_DATA".into(), data.display().to_string()),
        ],
        cwd: data.clone(),
        ..confined
    };
    let s = snapshot(&service, &node, &hooked, &data, &confined, 7);
    let m = backups.create(&s).unwrap();
    let hook_dir = root.join("backups/web").join(&m.id).join("hook");
    assert_eq!(
        std::fs::read_to_string(hook_dir.join("uid"))
            .unwrap()
            .trim(),
        uid.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(hook_dir.join("key"))
            .unwrap()
            .trim(),
        "hidden"
    );
    assert_eq!(
        owner(&hook_dir.join("uid")),
        0,
        "the dump is root's once taken"
    );
    backups
        .verify(&service, &m.id, &hooked, &confined)
        .expect("verify runs as the user, seeing the dump and the scratch restore");
    backups
        .restore(&service, &m.id, &hooked, &data, &confined)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("restored-by"))
            .unwrap()
            .trim(),
        uid.to_string()
    );
    assert_eq!(
        owner(&hook_dir.join("uid")),
        0,
        "root's again after the restore"
    );

    // What a backup command leaves is taken back by file descriptor: a link in it fails the
    // backup and is never followed; a restore command cannot change a finished backup.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let linking = spec(&format!(
        "backup = [\"sh\", \"-c\", \"echo dump > $HALLEY_BACKUP_DIR/dump; ln -s {} $HALLEY_BACKUP_DIR/evil\"]\nrestore = [\"true\"]",
        victim.display()
    ));
    let err = backups
        .create(&snapshot(&service, &node, &linking, &data, &confined, 8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a symbolic link"), "{err}");
    let meta = std::fs::metadata(&victim).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o644));
    let planting = spec(
        "backup = [\"sh\", \"-c\", \"id -u > $HALLEY_BACKUP_DIR/uid\"]\nrestore = [\"sh\", \"-c\", \"touch $HALLEY_BACKUP_DIR/planted\"]",
    );
    let m = backups
        .create(&snapshot(&service, &node, &planting, &data, &confined, 9))
        .unwrap();
    let err = backups
        .restore(&service, &m.id, &planting, &data, &confined)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Read-only file system"), "{err}");
    let hook_dir = root.join("backups/web").join(&m.id).join("hook");
    assert!(!hook_dir.join("planted").exists());
    let mode = std::fs::metadata(hook_dir.join("uid"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((owner(&hook_dir.join("uid")), mode), (0, 0o600));
}
