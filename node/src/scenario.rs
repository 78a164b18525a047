//! The runner of data-driven scenario scripts (test builds only): each `*.txt` file in a folder is
//! a script of commands; the engine's answers are recorded under each command as `> ` lines. A
//! run regenerates those lines and compares; `UPDATE_GOLDENFILES=1` writes them back instead, so a
//! behaviour change shows up as a reviewable diff.

use std::path::Path;

/// Runs every script in `node/tests/scenarios/<folder>` through `run` and checks the output.
pub fn run_folder(folder: &str, at_least: usize, run: fn(&str) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(folder);
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("scenario folder exists") {
        let path = entry.expect("readable folder").path();
        let script = std::fs::read_to_string(&path).expect("readable script");
        let got = run(&script);
        if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
            std::fs::write(&path, &got).expect("writable script");
        } else {
            assert_eq!(got, script, "scenario {} differs", path.display());
        }
        ran += 1;
    }
    assert!(
        ran >= at_least,
        "expected at least {at_least} {folder} scenarios, found {ran}"
    );
}

/// Replays a script: echoes every line except old `> ` expectations, skips blank lines and `#`
/// comments, and hands each command's words to `step`, which appends the new expectations.
pub fn replay(script: &str, mut step: impl FnMut(&[&str], &mut String)) -> String {
    let mut out = String::new();
    for line in script.lines() {
        if line.starts_with("> ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [c, ..] if c.starts_with('#') => {}
            command => step(command, &mut out),
        }
    }
    out
}

/// A rollout state for scripts: rollout `r1` of web 2 at epoch 1, coordinated by n1, running,
/// started at 0, over `hosts`. Scripts change what they test.
pub fn rollout_state(
    hosts: Vec<halley_proto::rollout::HostProgress>,
) -> halley_proto::rollout::RolloutState {
    use halley_proto::NodeName;
    use halley_proto::deploy::ReleaseVersion;
    use halley_proto::rollout::{Phase, RolloutState};
    use halley_proto::spec::ServiceName;
    RolloutState {
        id: "r1".into(),
        service: ServiceName::parse("web").expect("a service name"),
        mode: halley_proto::rollout::Mode::Deploy,
        version: ReleaseVersion::parse("2").expect("a version"),
        epoch: 1,
        seq: 0,
        coordinator: NodeName::parse("n1").expect("a node name"),
        hosts,
        batch: 1,
        phase: Phase::Running,
        reason: String::new(),
        started_ms: 0,
        ended_ms: None,
        release: None,
    }
}
