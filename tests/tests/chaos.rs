//! Schedules of the fault campaign (`scripts/chaos`) that once found a bug, replayed on every
//! test run. Each runs the `halley-chaos` binary on its seed with the debug builds.

use std::process::Command;

fn replay(seed: u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_halley-chaos"))
        .args(["--seed", &seed.to_string()])
        .env(
            "HALLEY_TEST_SERVICE",
            env!("CARGO_BIN_EXE_halley-test-service"),
        )
        .output()
        .expect("run halley-chaos");
    assert!(
        out.status.success(),
        "seed {seed} found a violation:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seed 12: a host that reverted by itself refused the resumed rollout's commit and was left to
/// converge, but convergence carried its own name at the rollout's epoch, below the token the
/// host held from the rollout's coordinator, so it was refused and the host stayed on v1.
#[test]
fn seed_12_a_host_left_to_converge_converges() {
    replay(12);
}
