//! `halley-node demo`: a throwaway 3-node cluster on loopback in a temp dir. It runs this same
//! binary as separate processes (init, run, join), shows the membership converge, kills one node
//! with SIGKILL and shows the others detect it, lets another leave gracefully, and cleans up. Ctrl-C
//! at any point kills the nodes and removes the temp dir.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halley_proto::message::{AdminRequest, AdminResponse, MemberState, StatusReport};
use tokio::process::{Child, Command};

use crate::admin;
use crate::datadir::DataDir;
use crate::status;

/// Runs the demo; Ctrl-C stops it early and still cleans up.
pub async fn run() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("halley-demo-")
        .tempdir()
        .context("cannot create a temp dir")?;
    println!(
        "halley demo: a 3-node cluster on 127.0.0.1 in {}",
        tmp.path().display()
    );
    let outcome = tokio::select! {
        result = script(tmp.path()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Child processes are killed when their handles drop (kill_on_drop); the temp dir goes next.
    drop(tmp);
    println!("demo finished; temp dir removed");
    outcome
}

struct Node {
    name: &'static str,
    dir: DataDir,
    addr: SocketAddr,
    child: Option<Child>,
}

async fn script(root: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(Node {
            name,
            dir: DataDir::new(root.join(name)),
            addr: free_udp_addr()?,
            child: None,
        });
    }

    step("1. init n1: cluster CA, node certificate, join token");
    let out = cli(
        &exe,
        &nodes[0],
        &[
            "init",
            "--name",
            "n1",
            "--listen",
            &nodes[0].addr.to_string(),
        ],
    )
    .await?;
    let token = out.lines().last().unwrap_or_default().to_owned();
    println!("   token: {}…", token.chars().take(24).collect::<String>());
    start(&exe, &mut nodes[0], root)?;
    wait_for_admin(&nodes[0].dir).await?;

    step("2. n2 and n3 join with the token over QUIC (CA pinned by the token), then run");
    for node in &mut nodes[1..] {
        let (name, addr) = (node.name, node.addr.to_string());
        cli(
            &exe,
            node,
            &["join", &token, "--name", name, "--listen", &addr],
        )
        .await?;
        start(&exe, node, root)?;
    }

    step("3. gossip converges: every node sees 3 alive");
    let began = Instant::now();
    for node in &nodes {
        wait_until(&node.dir, Duration::from_secs(20), |r| {
            count(r, MemberState::Alive) == 3
        })
        .await?;
    }
    println!("   converged in {:.1}s", began.elapsed().as_secs_f64());
    print!("{}", indent(&status::table(&report(&nodes[0].dir).await?)));

    step("4. kill -9 n3: the others detect it as dead");
    if let Some(child) = nodes[2].child.as_mut() {
        child.start_kill().context("cannot kill n3")?;
    }
    let killed = Instant::now();
    wait_until(&nodes[0].dir, Duration::from_secs(15), |r| {
        state_of(r, "n3") == Some(MemberState::Dead)
    })
    .await?;
    println!(
        "   n1 saw n3 dead after {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    print!("{}", indent(&status::table(&report(&nodes[0].dir).await?)));

    step("5. n2 leaves gracefully: peers mark it left at once");
    let left = Instant::now();
    admin::call(&nodes[1].dir, AdminRequest::Leave).await?;
    wait_until(&nodes[0].dir, Duration::from_secs(10), |r| {
        state_of(r, "n2") == Some(MemberState::Left)
    })
    .await?;
    println!(
        "   n1 saw n2 leave after {:.2}s",
        left.elapsed().as_secs_f64()
    );
    print!("{}", indent(&status::table(&report(&nodes[0].dir).await?)));

    step("6. stop n1");
    admin::call(&nodes[0].dir, AdminRequest::Leave).await?;
    for node in &mut nodes {
        if let Some(mut child) = node.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
    Ok(())
}

fn step(text: &str) {
    println!("\n{text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

async fn cli(exe: &PathBuf, node: &Node, args: &[&str]) -> Result<String> {
    let out = Command::new(exe)
        .args(args)
        .arg("--data-dir")
        .arg(node.dir.root())
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "halley-node {} for {} failed: {}",
            args.first().unwrap_or(&""),
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start(exe: &PathBuf, node: &mut Node, root: &Path) -> Result<()> {
    let log = std::fs::File::create(root.join(format!("{}.log", node.name)))?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--data-dir")
        .arg(node.dir.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", node.name))?;
    node.child = Some(child);
    Ok(())
}

async fn report(dir: &DataDir) -> Result<StatusReport> {
    match admin::call(dir, AdminRequest::Status).await? {
        AdminResponse::Status(r) => Ok(r),
        _ => bail!("unexpected answer to status"),
    }
}

async fn wait_for_admin(dir: &DataDir) -> Result<()> {
    wait_until(dir, Duration::from_secs(10), |_| true).await
}

async fn wait_until(
    dir: &DataDir,
    limit: Duration,
    done: impl Fn(&StatusReport) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = report(dir).await
            && done(&r)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not reach the expected state within {}s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(report: &StatusReport, state: MemberState) -> usize {
    report.members.iter().filter(|m| m.state == state).count()
}

fn state_of(report: &StatusReport, name: &str) -> Option<MemberState> {
    report
        .members
        .iter()
        .find(|m| m.name.as_str() == name)
        .map(|m| m.state)
}

fn free_udp_addr() -> Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot find a free UDP port")?;
    Ok(socket.local_addr()?)
}
