//! Bounded disk on a real node: artifacts go with their releases, and leftovers of interrupted
//! copies and unpacks are removed when the daemon starts.

use std::path::{Path, PathBuf};

use halley_tests::{assert_ok, free_tcp_port, single_node, web_config};

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_halley-test-service");

/// Names in `dir`, hidden ones included, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A copy of the test service with `n` bytes appended: it runs the same, with another SHA-256.
fn distinct_build(dir: &Path, n: usize) -> PathBuf {
    let mut bytes = std::fs::read(SERVICE_BIN).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, n));
    let path = dir.join(format!("build-{n}")).join("halley-test-service");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

#[test]
fn artifacts_are_pruned_with_releases_and_leftovers_removed_at_start() {
    let root = tempfile::tempdir().unwrap();
    let mut node = single_node(root.path());
    let config = web_config(root.path(), free_tcp_port(), "keep_releases = 2");
    let artifacts = node.dir.join("artifacts");
    let releases = node.dir.join("services/web/releases");
    for v in 1..=6 {
        let build = distinct_build(root.path(), v);
        let out = node.deploy(&config, "web", &v.to_string(), &build);
        assert_ok(&out, &format!("deploy web {v}"));
    }
    // A sweep beside deploys leaves what was touched in the last 2 hours (a deploy may be
    // between storing and unpacking it); these six deploys took seconds, so they age first.
    assert_eq!(names(&artifacts).len(), 6);
    let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    for name in names(&artifacts) {
        let f = std::fs::File::open(artifacts.join(name)).unwrap();
        f.set_modified(hours_ago).unwrap();
    }
    let build = distinct_build(root.path(), 7);
    assert_ok(&node.deploy(&config, "web", "7", &build), "deploy web 7");
    let on_disk = names(&releases);
    assert!(
        (2..=3).contains(&on_disk.len()) && on_disk.contains(&"7".to_owned()),
        "keep_releases = 2 (and the warm slot's): {on_disk:?}"
    );
    let stored = names(&artifacts);
    assert_eq!(
        stored.len(),
        on_disk.len(),
        "one artifact per release kept, after 7 deploys of 7 builds: {stored:?} for {on_disk:?}"
    );
    for release in &on_disk {
        let marker =
            std::fs::read_to_string(releases.join(release).join(".halley-artifact")).unwrap();
        assert!(
            stored.contains(&marker.trim().to_owned()),
            "{release}: {marker}"
        );
    }

    // What a daemon killed mid-copy or mid-unpack leaves, and an artifact nothing names.
    assert!(node.terminate(), "the daemon stops on SIGTERM");
    let leftovers = [
        artifacts.join(format!(".part-{}", "c".repeat(64))),
        artifacts.join(".incoming-4242"),
        artifacts.join("d".repeat(64)),
    ];
    for path in &leftovers {
        std::fs::write(path, vec![7u8; 100_000]).unwrap();
    }
    let unpacking = releases.join(".partial-7-4242");
    std::fs::create_dir_all(unpacking.join("bin")).unwrap();
    std::fs::write(unpacking.join("bin/half"), b"half an unpack").unwrap();
    node.start_with(&["--service-address", "127.0.0.1"]);
    for path in leftovers.iter().chain([&unpacking]) {
        assert!(!path.exists(), "{} survived the start", path.display());
    }
    assert_eq!(names(&artifacts), stored, "needed artifacts stay");
    assert_eq!(names(&releases), on_disk);
    assert_eq!(node.committed("web").as_deref(), Some("7"));
    assert!(
        node.log().contains("removed artifacts no release needs"),
        "the sweep is logged"
    );
    node.kill_services();
}
