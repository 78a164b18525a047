//! `halley-node demo`, the README's first command, run as a user runs it: it must finish with
//! every entry point on v2 after v3's rollback, no unanswered request, and nothing left behind;
//! and Ctrl-C must clean up too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use halley_tests::{binary, wait_until};

/// Processes whose working directory is inside `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// The temp dir the demo names in its first line.
fn demo_dir(first_line: &str) -> PathBuf {
    PathBuf::from(
        first_line
            .rsplit(" in ")
            .next()
            .expect("the demo names its temp dir")
            .trim(),
    )
}

#[test]
fn the_demo_rolls_out_v2_rolls_back_v3_under_load_and_leaves_nothing_behind() {
    let started = Instant::now();
    let out = Command::new(binary())
        .arg("demo")
        .env("HALLEY_PLAIN", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("serving now:          127.0.0.1: v2, 127.0.0.2: v2, 127.0.0.3: v2"),
        "{stdout}"
    );
    assert!(stdout.contains("failed to connect:    0"), "{stdout}");
    assert!(stdout.contains("why v3 was rolled back:"), "{stdout}");
    assert!(stdout.contains("5xx"), "{stdout}");
    let sent: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests sent:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a request count");
    assert!(sent > 1000, "{stdout}");
    let dir = demo_dir(stdout.lines().next().unwrap_or_default());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(
        processes_in(&dir).is_empty(),
        "processes left in {}",
        dir.display()
    );
    eprintln!("the demo took {:.0}s", started.elapsed().as_secs_f64());
}

#[test]
fn ctrl_c_stops_the_demo_and_cleans_up() {
    let mut child = Command::new(binary())
        .arg("demo")
        .env("HALLEY_PLAIN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let dir = demo_dir(&first);
    // Wait until services run (the first deploy has started slots), then interrupt.
    for line in lines.by_ref() {
        if line.unwrap().contains("each node serves") {
            break;
        }
    }
    assert!(!processes_in(&dir).is_empty(), "the demo runs processes");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted demo exits with an error");
    assert!(
        rest.iter().any(|l| l.contains("temp dir removed")),
        "{rest:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || processes_in(&dir).is_empty()));
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
