//! The binary's help lists every command, and each command has its own help. (Also makes cargo build
//! the binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_halley-node");

#[test]
fn every_subcommand_has_help() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "init", "join", "run", "status", "token", "leave", "drain", "undrain", "demo",
    ] {
        assert!(
            text.contains(command),
            "--help does not list {command}:\n{text}"
        );
        let sub = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(sub.status.success(), "{command} --help failed");
        assert!(
            String::from_utf8_lossy(&sub.stdout).contains("--data-dir"),
            "{command} lacks --data-dir"
        );
    }
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}
