//! Harness for end-to-end tests: real `halley-node` processes on 127.0.0.1 with temp data dirs,
//! killed when the test ends (also on panic).
//!
//! The binary is the one `cargo test --workspace` builds next to the test executables
//! (`target/<profile>/halley-node`; the halley-node package's own integration tests make cargo
//! build it). Run alone, `cargo test -p halley-tests` needs `cargo build -p halley-node` first.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bench;
pub mod cluster;
pub mod http;
pub mod load;
pub mod thief;

/// Path of the `halley-node` binary under test: `$HALLEY_BIN`, else next to this executable, else
/// one directory up (test executables live in `target/<profile>/deps`).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("HALLEY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("halley-node"))
        .collect::<Vec<_>>();
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!(
            "halley-node not found at {candidates:?}: run 'cargo test --workspace' (or 'cargo build -p halley-node' first), or set HALLEY_BIN"
        )
    })
}

/// Test ports come from below Linux's ephemeral range (32768–60999): a port the kernel hands
/// out for `bind(0)` or an outgoing socket (a quinn client, a slot's service, another test's probe)
/// can then never land on a port a test chose and released, and a node restarting on its own port
/// finds it still free. Each process starts at its own offset and never hands a port out twice.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The next port of [`TEST_PORTS`] that is free for both UDP and TCP on 127.0.0.1 right now.
fn next_test_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    // Spread processes (nextest runs one per test) over the range by pid.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(977) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + offset as u16;
        let free = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port left in {TEST_PORTS:?} on 127.0.0.1")
}

/// A free UDP (and TCP) port on 127.0.0.1, released before use; see [`TEST_PORTS`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], next_test_port()))
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Polls `check` every 100 ms until it holds or `limit` passes. Returns whether it held.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One node: its data dir, address and (while running) its daemon process.
pub struct Node {
    /// Node name.
    pub name: String,
    /// Data dir.
    pub dir: PathBuf,
    /// Mesh address.
    pub addr: SocketAddr,
    /// Extra environment for the daemon (`run`), e.g. a preloaded fake clock.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Daemons that `upgrade` started in place of the first (not this process's children).
    successors: Vec<u32>,
}

impl Node {
    /// A node to be created under `root`.
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir: root.join(name),
            addr: free_addr(),
            env: Vec::new(),
            child: None,
            successors: Vec::new(),
        }
    }

    /// Runs a CLI command against this node's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run halley-node")
    }

    /// Runs a CLI command against this node's data dir on another thread.
    pub fn cli_in_background(&self, args: &[&str]) -> std::thread::JoinHandle<Output> {
        let dir = self.dir.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            Command::new(binary())
                .args(&args)
                .arg("--data-dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run halley-node")
        })
    }

    /// `init` this node; returns the token (last stdout line). The token admits any number of
    /// admins, so that every node of a test cluster may coordinate (see [`Node::init_with`]).
    pub fn init(&self) -> String {
        self.init_with(&["--token-role", "admin", "--token-uses", "unlimited"])
    }

    /// `init` with extra arguments; returns the token (last stdout line).
    pub fn init_with(&self, extra: &[&str]) -> String {
        let addr = self.addr.to_string();
        let mut args = vec!["init", "--name", &self.name, "--listen", &addr];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .expect("init prints the token last")
            .to_owned()
    }

    /// `join` with `token`, returning the raw output.
    pub fn join(&self, token: &str) -> Output {
        self.cli(&[
            "join",
            token,
            "--name",
            &self.name,
            "--listen",
            &self.addr.to_string(),
        ])
    }

    /// Starts `halley-node run`, logging to `<dir>.log`.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `halley-node run` with extra arguments, appending to `<dir>.log`.
    pub fn start_with(&mut self, args: &[&str]) {
        self.start_limited(args, None);
    }

    /// Starts `halley-node run` with extra arguments and, if given, a file-size limit
    /// (`RLIMIT_FSIZE`, bytes): a stand-in for a full disk. Waits for the admin socket.
    pub fn start_limited(&mut self, args: &[&str], max_file_bytes: Option<u64>) {
        self.spawn(args, max_file_bytes);
        assert!(
            wait_until(Duration::from_secs(10), || self.status().is_some()),
            "{} did not open its admin socket; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Starts `halley-node run` without waiting for it to be ready.
    pub fn spawn(&mut self, args: &[&str], max_file_bytes: Option<u64>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("create log");
        let mut command = Command::new(binary());
        command
            .arg("run")
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Not a systemd service, whatever runs the tests (`upgrade` checks for one).
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(limit) = max_file_bytes {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and only touches the child being started.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn halley-node run");
        self.child = Some(child);
    }

    /// SIGKILL the daemon (and any daemon an upgrade started) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.successors.clear();
        // Daemons an upgrade started (here or by `upgrade --all` elsewhere) are no child of
        // this process: found by their command line.
        for pid in self.daemons() {
            // SAFETY: a `halley-node run` on this node's data dir, found just now.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // No child of ours, so not reaped here: gone once its command line is (a zombie has
        // none, and holds no lock). A start right after would find the data dir still locked.
        wait_until(Duration::from_secs(5), || self.daemons().is_empty());
    }

    /// Pids of the `halley-node run` processes on this node's data dir.
    pub fn daemons(&self) -> Vec<u32> {
        let dir = self.dir.as_os_str().as_encoded_bytes().to_vec();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.contains(&b"run".as_slice())
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"--data-dir" && w[1] == dir.as_slice())
            })
            .collect()
    }

    /// Runs `upgrade` with `args`; on success, remembers the new daemon's pid (the answer's
    /// "(pid N) serves") so that the node can be stopped later.
    pub fn upgrade(&mut self, args: &[&str]) -> Output {
        let out = self.cli(&[&["upgrade"], args].concat());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = text
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let (true, Some(pid)) = (out.status.success(), pid) {
            self.successors.push(pid);
        }
        out
    }

    /// The pid of the daemon serving now: the last one an upgrade started, or the first.
    pub fn daemon_pid(&self) -> u32 {
        self.successors
            .last()
            .copied()
            .unwrap_or_else(|| self.pid())
    }

    /// SIGTERM the daemon and wait for it to exit (up to 10 s).
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited
    }

    /// Whether the daemon process has exited by itself.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// The daemon's process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `status --json`, or `None` if the daemon does not answer.
    pub fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The state this node reports for `name` (`None` if unknown or not answering).
    pub fn state_of(&self, name: &str) -> Option<String> {
        let status = self.status()?;
        status["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["state"].as_str().map(str::to_owned))
    }

    /// How many members this node reports in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.status()
            .and_then(|s| {
                s["members"]
                    .as_array()
                    .map(|m| m.iter().filter(|m| m["state"] == state).count())
            })
            .unwrap_or(0)
    }

    /// The daemon log path.
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// The daemon log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Node {
    /// SIGKILLs every service process group this node started (from the `SLOT.pid` files the
    /// node keeps in `services/NAME/`). Service processes outlive their node on purpose, so a test
    /// must clean them up.
    pub fn kill_services(&self) {
        let Ok(services) = std::fs::read_dir(self.dir.join("services")) else {
            return;
        };
        for service in services.flatten() {
            for slot in ["blue", "green"] {
                let pid_file = service.path().join(format!("{slot}.pid"));
                let pid: Option<i32> = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                if let Some(pid) = pid.filter(|p| *p > 1) {
                    // SAFETY: signalling a process group the node under test created.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Runs `deploy` against this node.
    pub fn deploy(&self, config: &Path, service: &str, version: &str, artifact: &Path) -> Output {
        self.cli(&[
            "deploy",
            service,
            "-c",
            &config.display().to_string(),
            "--version",
            version,
            "--artifact",
            &artifact.display().to_string(),
        ])
    }

    /// `services --json`, or `Value::Null` if the daemon does not answer.
    pub fn services(&self) -> Value {
        let out = self.cli(&["services", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The release of `service` this node has committed, if any.
    pub fn committed(&self, service: &str) -> Option<String> {
        self.services()
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)?["committed"]
            .as_str()
            .map(str::to_owned)
    }

    /// Whether this node runs `service` (or does not answer: it may still).
    pub fn runs(&self, service: &str) -> bool {
        self.services()
            .as_array()
            .is_none_or(|a| a.iter().any(|s| s["name"] == service))
    }

    /// The pids of every slot process of `service` on this node.
    pub fn slot_pids(&self, service: &str) -> Vec<u64> {
        let services = self.services();
        let slots = services
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .and_then(|s| s["slots"].as_array().cloned());
        slots
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["pid"].as_u64())
            .collect()
    }

    /// The status of one slot of a service, looked up by role (`active`, `warm`, ...).
    pub fn slot(&self, service: &str, role: &str) -> Option<Value> {
        let all = self.services();
        all.as_array()?.iter().find(|s| s["name"] == service)?["slots"]
            .as_array()?
            .iter()
            .find(|s| s["role"] == role)
            .cloned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        self.kill_services();
    }
}

/// One running node `n1` under `root` (its services bind 127.0.0.1).
pub fn single_node(root: &Path) -> Node {
    let mut node = Node::new(root, "n1");
    node.init();
    node.start_with(&["--service-address", "127.0.0.1"]);
    node
}

/// Writes `DIR/halley-PORT.toml`: service `web` (the test service) on `:PORT` with `service`
/// as extra `[service.web]` lines (`keep_releases = 2`, `env = { .. }`), health checked every
/// 100 ms, no drain wait and no bake.
pub fn web_config(dir: &Path, port: u16, service: &str) -> PathBuf {
    let path = dir.join(format!("halley-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "[service.web]\ncommand = [\"./halley-test-service\"]\nlisten = \":{port}\"\n{service}\n[service.web.health]\nhttp = \"/health\"\ninterval = \"100ms\"\n[service.web.rollout]\ndrain_wait = \"0s\"\nbake = \"0s\"\n"
        ),
    )
    .expect("write halley.toml");
    path
}

/// A free TCP (and UDP) port on 127.0.0.1, released before use; see [`TEST_PORTS`].
pub fn free_tcp_port() -> u16 {
    next_test_port()
}

/// Asserts a command succeeded, showing its output if not.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Running nodes with the given names: the first runs `init`, the others join with its token.
/// Returns the nodes and the token.
pub fn start_cluster(root: &Path, names: &[&str]) -> (Vec<Node>, String) {
    let (first, rest) = names.split_first().expect("at least one node");
    let mut founder = Node::new(root, first);
    let token = founder.init();
    founder.start();
    let mut nodes = vec![founder];
    for name in rest {
        let mut node = Node::new(root, name);
        let out = node.join(&token);
        assert!(
            out.status.success(),
            "join {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        node.start();
        nodes.push(node);
    }
    (nodes, token)
}

/// Three running nodes: `n1` (init) and `n2`, `n3` (joined).
pub fn three_node_cluster(root: &Path) -> (Vec<Node>, String) {
    start_cluster(root, &["n1", "n2", "n3"])
}

/// Stderr of a command as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A two-thread tokio runtime for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `deploy` against `node` on a thread, for tests that act while the rollout runs.
pub fn deploy_in_background(
    node: &Node,
    config: &Path,
    service: &str,
    version: &str,
    artifact: &Path,
) -> std::thread::JoinHandle<Output> {
    let (dir, config, artifact) = (
        node.dir.clone(),
        config.to_path_buf(),
        artifact.to_path_buf(),
    );
    let (service, version) = (service.to_owned(), version.to_owned());
    std::thread::spawn(move || {
        Command::new(binary())
            .args(["deploy", &service, "-c"])
            .arg(&config)
            .args(["--version", &version, "--artifact"])
            .arg(&artifact)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .expect("run halley-node deploy")
    })
}

/// Waits until every node sees every node alive (or panics after 15 s).
pub fn wait_converged(nodes: &[Node]) {
    assert!(
        wait_until(Duration::from_secs(15), || nodes
            .iter()
            .all(|n| n.count("alive") == nodes.len())),
        "the cluster did not converge"
    );
}

/// One GET of `/metrics` at `addr` with the given `Accept`; returns the content type and the body.
pub fn scrape_metrics(addr: SocketAddr, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (content_type, body.to_owned())
}
