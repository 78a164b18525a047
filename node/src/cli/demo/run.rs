//! `halley-node demo`: a throwaway 3-node cluster on loopback in a temp dir, running this same
//! binary as separate processes (init, join, run), each node serving on its own 127.0.0.N. It
//! deploys this binary's built-in demo service (`demo-service`) as v1, sends steady load through
//! all three entry points, rolls out v2 (good) with live per-host progress, then v3, which starts
//! failing half its requests once it is serving, so the bake catches it and the cluster rolls
//! back. It ends with a summary (requests sent, answered, failed; rollout and rollback times;
//! what each entry point serves) and stops everything. Ctrl-C at any point kills the nodes and
//! their service processes and removes the temp dir.
//!
//! Exit status 0 only when no request went unanswered and every entry point serves v2 at the end.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halley_proto::message::{AdminRequest, AdminResponse, MemberState, StatusReport};
use tokio::process::{Child, Command};

use halley_proto::deploy::ReleaseVersion;
use halley_proto::spec::ServiceName;

use crate::cli::demo::load::Load;
use crate::cli::deploy::DeployOptions;
use crate::cli::render as status;
use crate::daemon::admin;
use crate::store::datadir::DataDir;

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
    // Nodes are killed when their handles drop (kill_on_drop). Slot processes run in their own
    // process groups and outlive their node by design; the demo's must not outlive the demo.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for name in ["n1", "n2", "n3"] {
        kill_services(&DataDir::new(tmp.path().join(name)));
    }
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
    walk(&exe, root, &mut nodes).await
}

async fn walk(exe: &Path, root: &Path, nodes: &mut [Node]) -> Result<()> {
    step(
        "1. a 3-node cluster: n1 (an admin) makes the CA, n2 and n3 join over QUIC as workers with its token",
    );
    let out = cli(
        exe,
        &nodes[0],
        &[
            "init",
            "--name",
            "n1",
            "--listen",
            &nodes[0].addr.to_string(),
            "--token-uses",
            "2",
        ],
    )
    .await?;
    let token = out.lines().last().unwrap_or_default().to_owned();
    start(exe, &mut nodes[0], root, 1)?;
    wait_for_admin(&nodes[0].dir).await?;
    for (i, node) in nodes.iter_mut().enumerate().skip(1) {
        let (name, addr) = (node.name, node.addr.to_string());
        cli(
            exe,
            node,
            &["join", &token, "--name", name, "--listen", &addr],
        )
        .await?;
        start(exe, node, root, i + 1)?;
    }
    let began = Instant::now();
    for node in nodes.iter() {
        wait_until(&node.dir, Duration::from_secs(20), |r| {
            count(r, MemberState::Alive) == 3
        })
        .await?;
    }
    println!(
        "   gossip converged in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    print!("{}", indent(&status::table(&report(&nodes[0].dir).await?)));

    let port = free_tcp_port()?;
    let entries: Vec<SocketAddr> = (1..=3)
        .map(|i| SocketAddr::from(([127, 0, 0, i], port)))
        .collect();
    let service = ServiceName::parse("hello").map_err(|e| anyhow!("{e}"))?;
    let program = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "halley-node".into());
    let n1 = nodes[0].dir.clone();

    step("2. deploy v1 of service `hello` (this binary's built-in demo service) on every node");
    let v1 = deploy(&n1, root, &service, &program, port, "v1", None, exe).await;
    v1.map_err(|e| anyhow!("the first deploy failed: {e}"))?;
    println!(
        "   each node serves http://127.0.0.N:{port}/ (N = 1, 2, 3); load starts: 2 clients per entry point, 50 req/s each"
    );
    let load = Load::start(&entries, 2, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    step("3. roll out v2 (good): one host at a time, drain, start, check, flip, bake");
    let t = Instant::now();
    let v2 = deploy(&n1, root, &service, &program, port, "v2", None, exe).await;
    let v2_secs = t.elapsed().as_secs_f64();
    v2.map_err(|e| anyhow!("the v2 rollout failed: {e}"))?;

    step("4. roll out v3: healthy at first, then half its answers are 500s; the bake catches it");
    let t = Instant::now();
    let v3 = deploy(&n1, root, &service, &program, port, "v3", Some(1500), exe).await;
    let v3_secs = t.elapsed().as_secs_f64();
    let why = match v3 {
        Ok(()) => bail!("v3 should have been rolled back, but its rollout completed"),
        Err(e) => e.to_string(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = load.stop().await;

    step("5. summary");
    let serving = serving(&entries).await;
    let (ok, errors, lost) = (
        counts.ok.load(Ordering::Relaxed),
        counts.server_errors.load(Ordering::Relaxed),
        counts.conn_errors.load(Ordering::Relaxed),
    );
    println!("   requests sent:        {}", counts.sent());
    println!("   answered 2xx:         {ok}");
    println!("   answered 5xx:         {errors} (v3's own errors while it was baking)");
    println!("   failed to connect:    {lost}");
    println!("   v2 rollout:           {v2_secs:.1}s for 3 hosts");
    println!("   v3 rollout+rollback:  {v3_secs:.1}s");
    println!(
        "   why v3 was rolled back: {}",
        why.lines().next().unwrap_or("")
    );
    println!("   serving now:          {}", serving.join(", "));
    if lost > 0 {
        bail!("{lost} requests got no answer during the demo");
    }
    if serving.iter().any(|s| !s.ends_with("v2")) {
        bail!("not every entry point serves v2 after the rollback: {serving:?}");
    }

    step("6. stop the nodes");
    for node in nodes.iter() {
        let _ = admin::call(&node.dir, AdminRequest::Leave).await;
    }
    for node in nodes.iter_mut() {
        if let Some(mut child) = node.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
    Ok(())
}

/// Writes the demo's `halley.toml` for `version` and rolls it out from n1, printing progress.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    n1: &DataDir,
    root: &Path,
    service: &ServiceName,
    program: &str,
    port: u16,
    version: &str,
    errors_after_ms: Option<u64>,
    exe: &Path,
) -> crate::Result<()> {
    let env = errors_after_ms
        .map(|ms| format!("env = {{ DEMO_ERRORS_AFTER_MS = \"{ms}\" }}\n"))
        .unwrap_or_default();
    let text = format!(
        "[service.hello]\ncommand = [\"./{program}\", \"demo-service\"]\nlisten = \":{port}\"\n{env}[service.hello.health]\nhttp = \"/health\"\ninterval = \"200ms\"\n[service.hello.stop]\ndrain_timeout = \"3s\"\n[service.hello.rollout]\norder = [\"n1\", \"n2\", \"n3\"]\ndrain_wait = \"500ms\"\nbake = \"3s\"\nmin_requests = 10\n"
    );
    let path = root.join(format!("halley-{version}.toml"));
    std::fs::write(&path, text).map_err(crate::Error::io("cannot write", &path))?;
    let opts = DeployOptions {
        service: service.clone(),
        spec: crate::cli::config::load_service(&path, service)?,
        version: ReleaseVersion::parse(version)
            .map_err(|e| crate::Error::Invalid(e.to_string()))?,
        artifact: exe.to_path_buf(),
        sha256: None,
        skip_unreachable: false,
    };
    crate::cli::deploy::deploy(n1, &opts, &mut std::io::stdout()).await
}

/// What each entry point answers now (`127.0.0.N: vX`).
async fn serving(entries: &[SocketAddr]) -> Vec<String> {
    let mut out = Vec::new();
    for &addr in entries {
        let answer = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => first_line(stream, addr).await,
            Err(e) => format!("no answer ({e})"),
        };
        out.push(format!("{}: {answer}", addr.ip()));
    }
    out
}

async fn first_line(stream: tokio::net::TcpStream, addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    let request = format!("GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "no answer".into();
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .last()
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with('v')))
        .unwrap_or("no answer")
        .to_owned()
}

/// Kills the service processes a node started (by the process groups in its pid files).
fn kill_services(dir: &DataDir) {
    let services = dir.file("services");
    let Ok(entries) = std::fs::read_dir(&services) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        for slot in ["blue", "green"] {
            let pid_file = entry.path().join(format!("{slot}.pid"));
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                // SAFETY: kill(2) on a process group id read from our own pid file; no memory
                // is shared.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free TCP port")?;
    Ok(l.local_addr()?.port())
}

fn step(text: &str) {
    println!("\n{text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

async fn cli(exe: &Path, node: &Node, args: &[&str]) -> Result<String> {
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

fn start(exe: &Path, node: &mut Node, root: &Path, index: usize) -> Result<()> {
    let log = std::fs::File::create(root.join(format!("{}.log", node.name)))?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--data-dir")
        .arg(node.dir.root())
        .args(["--service-address", &format!("127.0.0.{index}")])
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

fn free_udp_addr() -> Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot find a free UDP port")?;
    Ok(socket.local_addr()?)
}
