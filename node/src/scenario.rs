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
