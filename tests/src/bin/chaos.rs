//! `halley-chaos`: the seeded random fault campaign (run by `scripts/chaos`, which writes its
//! section of `BENCHMARKS.md`).
//!
//! Each schedule starts 3 real nodes on 127.0.0.1–3 with the test service under steady load
//! through every entry point, then, for a number of steps chosen by its seed: deploys (some of a
//! release that fails its check), rollbacks, aborts and resumes started on random nodes, and
//! SIGKILL, SIGSTOP/SIGCONT and restarts of random nodes at random moments (cluster rollbacks
//! included). Then the faults stop (stopped nodes continue, killed ones restart), unfinished
//! rollouts are resumed, and the checker asserts:
//! - no rollout is left unfinished;
//! - every host serves exactly one committed release from a healthy active slot;
//! - history agrees with what hosts run (the newest rollout that completed, or rollback that
//!   finished, names what every host committed; a rolled-back deploy's release runs nowhere),
//!   within 60 s: a host a completed rollout left behind converges to it after it settles;
//! - requests to the entry points of hosts that were never faulted got no connection errors.
//!
//! Then the service is removed (`service remove web`) from a random node, with a host killed
//! before it, or the removal's own coordinator killed while it runs, or no fault; killed nodes
//! restart, an unfinished removal is run again (as an operator would), and the checker asserts
//! that within 60 s no host runs the service, no slot process of it lives and no entry point
//! answers, and that the service deploys again on every host.
//!
//! A schedule depends only on its seed, so a failing seed replays: `scripts/chaos --seed S`.
//! Usage: `halley-chaos [--seeds N] [--first S] [--seed S]`; prints one line per schedule and a
//! summary; exits 1 on any violation. Environment: `HALLEY_BIN`, `HALLEY_TEST_SERVICE`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halley_tests::cluster::Cluster;
use halley_tests::{Node, process_alive, runtime, wait_until};

/// xorshift64*: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn ms(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[derive(Default)]
struct Outcome {
    faults: u32,
    operations: u32,
    violations: Vec<String>,
}

/// A node's state in the schedule.
#[derive(Clone, Copy, PartialEq)]
enum Life {
    Up,
    Stopped,
    Killed,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{flag} takes a number"))
            })
    };
    let seeds: Vec<u64> = match value("--seed") {
        Some(seed) => vec![seed],
        None => {
            let first = value("--first").unwrap_or(1);
            (first..first + value("--seeds").unwrap_or(10)).collect()
        }
    };
    let service = PathBuf::from(std::env::var("HALLEY_TEST_SERVICE").expect("HALLEY_TEST_SERVICE"));
    let started = Instant::now();
    let (mut faults, mut operations, mut failed) = (0, 0, Vec::new());
    for &seed in &seeds {
        let t = Instant::now();
        // A schedule that panics (its cluster could not start: the machine's conntrack table
        // full, say) counts as failing and the campaign goes on to the next seed.
        let outcome = std::panic::catch_unwind(|| schedule(seed, &service)).unwrap_or_else(|e| {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome {
                violations: vec![format!("the schedule panicked: {why}")],
                ..Outcome::default()
            }
        });
        faults += outcome.faults;
        operations += outcome.operations;
        println!(
            "seed {seed}: {} operations, {} faults, {} violations ({:.0} s){}",
            outcome.operations,
            outcome.faults,
            outcome.violations.len(),
            t.elapsed().as_secs_f64(),
            outcome
                .violations
                .iter()
                .map(|v| format!("\n  violation: {v}"))
                .collect::<String>()
        );
        if !outcome.violations.is_empty() {
            failed.push(seed);
        }
    }
    println!(
        "schedules={} operations={operations} faults={faults} violations={} failing_seeds={failed:?} seconds={:.0}",
        seeds.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        for seed in &failed {
            println!("replay: scripts/chaos --seed {seed}");
        }
        std::process::exit(1);
    }
}

fn signal(node: &Node, sig: i32) {
    let pid = node.pid();
    if pid != 0 {
        // SAFETY: a signal to a child process this program started.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

/// A CLI command against `node`, in the background (its output is not needed: the checks look
/// at the cluster afterwards).
fn spawn_cli(node: &Node, args: &[&str]) -> Child {
    Command::new(halley_tests::binary())
        .args(args)
        .arg("--data-dir")
        .arg(&node.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run halley-node")
}

/// Waits up to `limit` for the background commands; ends the rest (a CLI following a rollout
/// whose coordinator died waits until someone resumes it, which settling did).
fn reap(children: Vec<Child>, limit: Duration) {
    let deadline = Instant::now() + limit;
    for mut child in children {
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn restart(cluster: &mut Cluster, i: usize) {
    cluster.nodes[i].start_with(&["--service-address", &format!("127.0.0.{}", i + 1)]);
}

/// One schedule: setup, random operations and faults, then the faults stop and the checks run.
fn schedule(seed: u64, service: &Path) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut out = Outcome::default();
    let mut cluster = Cluster::start();
    let rt = runtime();
    let rollout = "bake = \"1s\"\norphan_timeout = \"4s\"";
    let good = cluster.config("good", &[], rollout);
    let bad = cluster.config("bad", &[("TS_HEALTH", "fail")], rollout);
    if !cluster.nodes[0]
        .deploy(&good, "web", "v1", service)
        .status
        .success()
    {
        out.violations.push("the first deploy failed".into());
        return out;
    }
    let loads = cluster.load(&rt);
    let mut life = [Life::Up; 3];
    let mut faulted = [false; 3];
    let mut background: Vec<Child> = Vec::new();
    let steps = 6 + rng.below(7);
    for n in 0..steps {
        let i = rng.below(3) as usize;
        let up = life[i] == Life::Up;
        match rng.below(10) {
            0..=2 if up => {
                let config = if rng.below(4) == 0 { &bad } else { &good };
                let version = format!("v{}", n + 2);
                let (config, service) = (config.to_string_lossy(), service.to_string_lossy());
                eprintln!(
                    "seed {seed}: n{} deploy {version}{}",
                    i + 1,
                    if config.contains("bad") {
                        " (failing its check)"
                    } else {
                        ""
                    }
                );
                background.push(spawn_cli(
                    &cluster.nodes[i],
                    &[
                        "deploy",
                        "web",
                        "-c",
                        &config,
                        "--version",
                        &version,
                        "--artifact",
                        &service,
                    ],
                ));
                out.operations += 1;
            }
            3 | 4 if up => {
                eprintln!("seed {seed}: n{} rollback", i + 1);
                background.push(spawn_cli(&cluster.nodes[i], &["rollback", "web"]));
                out.operations += 1;
            }
            5 if up => {
                let args: &[&str] = if rng.below(2) == 0 {
                    &["rollout", "abort", "web"]
                } else {
                    &["deploy", "web", "--resume"]
                };
                eprintln!("seed {seed}: n{} {}", i + 1, args.join(" "));
                background.push(spawn_cli(&cluster.nodes[i], args));
                out.operations += 1;
            }
            6 | 7 if up => {
                eprintln!("seed {seed}: SIGKILL n{}", i + 1);
                cluster.nodes[i].kill9();
                life[i] = Life::Killed;
                faulted[i] = true;
                out.faults += 1;
            }
            8 if up => {
                eprintln!("seed {seed}: SIGSTOP n{}", i + 1);
                signal(&cluster.nodes[i], libc::SIGSTOP);
                life[i] = Life::Stopped;
                faulted[i] = true;
                out.faults += 1;
            }
            _ => match life[i] {
                Life::Stopped => {
                    eprintln!("seed {seed}: SIGCONT n{}", i + 1);
                    signal(&cluster.nodes[i], libc::SIGCONT);
                    life[i] = Life::Up;
                }
                Life::Killed => {
                    eprintln!("seed {seed}: restart n{}", i + 1);
                    restart(&mut cluster, i);
                    life[i] = Life::Up;
                }
                Life::Up => {}
            },
        }
        std::thread::sleep(rng.ms(200, 2500));
    }
    eprintln!("seed {seed}: the faults stop");
    for (i, state) in life.iter().enumerate() {
        match state {
            Life::Stopped => signal(&cluster.nodes[i], libc::SIGCONT),
            Life::Killed => restart(&mut cluster, i),
            Life::Up => {}
        }
    }
    // Commands under way finish (or reach a rollout nobody drives any more) first.
    std::thread::sleep(Duration::from_secs(5));
    settle(&cluster, &mut out);
    reap(background, Duration::from_secs(30));
    // A command that started its rollout late is settled too.
    settle(&cluster, &mut out);
    check(&cluster, &rt, &mut out);
    for (i, load) in loads.into_iter().enumerate() {
        let stats = rt.block_on(load.stop());
        let (_, _, errors) = stats.totals();
        if !faulted[i] && errors > 0 {
            out.violations.push(format!(
                "n{}: never faulted, yet {errors} requests to its entry point got no answer: {}",
                i + 1,
                stats.summary()
            ));
        }
    }
    if out.violations.is_empty() {
        removal(seed, &mut rng, &mut cluster, (&good, service), &mut out);
    }
    out
}

/// The removal phase (see the module docs).
fn removal(
    seed: u64,
    rng: &mut Rng,
    cluster: &mut Cluster,
    (good, service): (&Path, &Path),
    out: &mut Outcome,
) {
    let pids: Vec<u64> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.slot_pids("web"))
        .collect();
    let by = rng.below(3) as usize;
    let victim = rng.below(3) as usize;
    let mut killed = None;
    match rng.below(3) {
        0 if victim != by => {
            eprintln!(
                "seed {seed}: SIGKILL n{}, then n{} service remove web",
                victim + 1,
                by + 1
            );
            cluster.nodes[victim].kill9();
            killed = Some(victim);
            let _ = cluster.nodes[by].cli(&["service", "remove", "web"]);
        }
        1 => {
            let after = rng.ms(0, 400);
            eprintln!(
                "seed {seed}: n{} service remove web, SIGKILLed after {after:?}",
                by + 1
            );
            let mut cli = spawn_cli(&cluster.nodes[by], &["service", "remove", "web"]);
            std::thread::sleep(after);
            cluster.nodes[by].kill9();
            killed = Some(by);
            let _ = cli.kill();
            let _ = cli.wait();
        }
        _ => {
            eprintln!("seed {seed}: n{} service remove web", by + 1);
            let _ = cluster.nodes[by].cli(&["service", "remove", "web"]);
        }
    }
    out.operations += 1;
    if let Some(i) = killed {
        out.faults += 1;
        std::thread::sleep(rng.ms(200, 2000));
        restart(cluster, i);
    }
    settle_removal(cluster, out);
    let gone = wait_until(Duration::from_secs(60), || {
        cluster.nodes.iter().all(|n| !n.runs("web")) && pids.iter().all(|p| !process_alive(*p))
    });
    if !gone {
        let left: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|n| n.runs("web"))
            .map(|n| n.name.clone())
            .collect();
        let living: Vec<&u64> = pids.iter().filter(|p| process_alive(**p)).collect();
        out.violations.push(format!(
            "60 s after the removal settled, web still runs on {left:?}, slot processes {living:?} live"
        ));
        return;
    }
    for i in 0..3 {
        if std::net::TcpStream::connect_timeout(&cluster.entry(i), Duration::from_secs(1)).is_ok() {
            out.violations.push(format!(
                "n{}: web's entry point still answers after its removal",
                i + 1
            ));
        }
    }
    halley_tests::wait_converged(&cluster.nodes);
    let again = cluster.nodes[rng.below(3) as usize].deploy(good, "web", "again", service);
    if !again.status.success() {
        out.violations.push(format!(
            "web does not deploy again after its removal: {}",
            String::from_utf8_lossy(&again.stderr)
        ));
    }
}

/// Runs `service remove web` again (as an operator would) until the newest rollout of web is a
/// completed removal, for up to 2 minutes.
fn settle_removal(cluster: &Cluster, out: &mut Outcome) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 0.. {
        let node = &cluster.nodes[attempt % 3];
        let status = node.cli(&["rollout", "status", "web"]);
        let first = String::from_utf8_lossy(&status.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if first.contains(": completed (removed from") {
            return;
        }
        if Instant::now() > deadline {
            out.violations.push(format!(
                "the removal of web did not complete 2 minutes after the faults stopped: {first}"
            ));
            return;
        }
        // A removal still driven refuses this; it is then waited for.
        let _ = node.cli(&["service", "remove", "web"]);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The phase of the newest rollout of web, as `rollout status` shows it on `node`.
fn phase(node: &Node) -> Option<String> {
    let out = node.cli(&["rollout", "status", "web"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next()?;
    let (_, rest) = first.split_once(": ")?;
    rest.split_whitespace().next().map(str::to_owned)
}

fn unfinished(phase: &str) -> bool {
    matches!(phase, "running" | "paused" | "rolling-back" | "committing")
}

/// Resumes whatever is unfinished (as an operator would) until nothing is, for up to 3 minutes.
fn settle(cluster: &Cluster, out: &mut Outcome) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut attempt = 0;
    loop {
        let node = &cluster.nodes[attempt % 3];
        match phase(node) {
            Some(p) if unfinished(&p) => {
                if Instant::now() > deadline {
                    out.violations.push(format!(
                        "a rollout is still {p} 3 minutes after the faults stopped:\n{}",
                        String::from_utf8_lossy(&node.cli(&["rollout", "status", "web"]).stdout)
                    ));
                    return;
                }
                // A driven rollout refuses the resume; that is fine, it is then waited for.
                let _ = node.cli(&["deploy", "web", "--resume"]);
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => return,
        }
        attempt += 1;
    }
}

/// The checks once the faults stopped and nothing is unfinished.
fn check(cluster: &Cluster, rt: &tokio::runtime::Runtime, out: &mut Outcome) {
    let mut committed = Vec::new();
    for node in &cluster.nodes {
        // Convergence (a skipped host catching up) runs every 3 s.
        let settled = wait_until(Duration::from_secs(30), || {
            let s = &node.services()[0];
            let active = node.slot("web", "active");
            active.is_some_and(|a| a["version"] == s["committed"] && a["health"] == "healthy")
        });
        let s = node.services()[0].clone();
        if !settled {
            out.violations.push(format!(
                "{}: does not serve its committed release from a healthy active slot: {s}",
                node.name
            ));
        }
        committed.push(s["committed"].as_str().unwrap_or("-").to_owned());
    }
    let versions = cluster.versions(rt);
    for (i, v) in versions.iter().enumerate() {
        if v.as_deref() != Some(committed[i].as_str()) {
            out.violations.push(format!(
                "n{}: its entry point answers {v:?}, its committed release is {}",
                i + 1,
                committed[i]
            ));
        }
    }
    // A completed rollout may leave hosts to converge (skipped, or reverted by themselves while
    // their coordinator was gone; history says "it converges to V"): that runs every 3 s once a
    // restarted node has settled, so agreement is waited for, not read once.
    let mut verdict = agreement(cluster, &committed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while verdict.is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| {
                n.services()[0]["committed"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect();
        verdict = agreement(cluster, &now);
    }
    if let Err(why) = verdict {
        out.violations.push(why);
    }
}

/// Whether history's newest entry agrees with what the hosts committed; if not, why.
fn agreement(cluster: &Cluster, committed: &[String]) -> Result<(), String> {
    let history =
        String::from_utf8_lossy(&cluster.nodes[0].cli(&["history", "web"]).stdout).into_owned();
    // STARTED-DATE STARTED-TIME VERSION COORDINATOR OUTCOME SECONDS WHY...
    let newest = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 6 && w[4] != "fenced")
        .last();
    let Some(line) = newest else {
        return Err(format!("no history:\n{history}"));
    };
    let (version, outcome) = (line[2], line[4]);
    let rollback = line.get(6).is_some_and(|w| *w == "rollback");
    let agree = match (outcome, rollback) {
        ("completed", _) | ("rolled-back", true) => committed.iter().all(|c| c == version),
        ("rolled-back", false) => committed.iter().all(|c| c != version),
        _ => false,
    };
    if agree {
        return Ok(());
    }
    Err(format!(
        "history's newest entry ({version} {outcome}) disagrees with what hosts committed ({committed:?}) 60 s after the checks began:\n{history}"
    ))
}
