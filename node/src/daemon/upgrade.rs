//! `halley-node upgrade`: the old daemon's side of replacing itself with another binary without
//! refusing or failing a request.
//!
//! 1. The binary is checked (absolute, executable, its `version` names this node's architecture
//!    and wire protocol: see [`Build`]) and started with this
//!    daemon's own arguments and one end of a socket pair ([`HANDOVER_FD`]); it says hello.
//! 2. This daemon stops everything but its entry points (mesh, gossip, admin socket, every
//!    service's decisions: see [`Frozen`]) and lets go of the data dir's lock. Its entry points
//!    go on accepting and proxying to the local slots meanwhile.
//! 3. It hands the new daemon its listening sockets, the mesh's UDP socket and the metrics
//!    listener (`SCM_RIGHTS`, [`crate::daemon::fd_pass`]); both processes accept on them now.
//! 4. Once the new daemon says it serves, this one stops accepting, ends each keep-alive
//!    connection with its next answer ([`crate::proxy::closing`]), waits up to
//!    [`DRAIN_DEADLINE`] for open connections, answers the CLI and exits.
//!
//! ## Guarantees
//! - Service processes are not restarted: the new daemon adopts them (same pids).
//! - A new daemon that does not say hello, does not take over within [`TAKEOVER_TIMEOUT`] or
//!   exits is killed; this daemon then starts itself again on the same sockets (its frozen
//!   entry points serving meanwhile) and the CLI hears why.
//! - Nothing of the handover depends on the two builds' wire protocol or disk format: its
//!   frames are [`halley_proto::handover`]'s.
//!
//! - Refused while this node drives a rollout or answers state requests (their tasks would go
//!   on writing beside the new daemon), to a build of another data-dir format (this daemon
//!   could not start again on what that build wrote), and under systemd without `Type=notify`.
//!
//! ## Non-goals
//! - A connection still open after [`DRAIN_DEADLINE`] (a WebSocket, a long TCP session) is cut.
//! - Rollouts' drain holds live in memory: like a restart, an upgrade ends them (the
//!   operator's drain is kept on disk and stays).
//! - If the start again after a failed handover fails too, the process exits (as a start that
//!   fails does) and its entry points close.
//! - Requests that peers' entry points send here over the mesh while it changes hands are cut
//!   (the peer retries those it may).
//! - Under a service manager the main pid changes: `Type=notify` units hear it (see
//!   [`crate::daemon::notify`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use halley_proto::handover::Handover;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::daemon::fd_pass;
use crate::error::{Error, Result};
use crate::host::actor::Frozen;

/// The descriptor number of the socket pair in the new daemon.
pub const HANDOVER_FD: i32 = 3;
/// The environment variable that tells a starting daemon it takes over (its value: the fd).
pub const HANDOVER_ENV: &str = "HALLEY_HANDOVER_FD";
/// How long the new binary may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new daemon may take from the offer to serving.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open connections may take to finish once the new daemon serves.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// What a daemon starts from besides its data dir: sockets an upgrade handed over (or this
/// daemon's own, after a failed upgrade), and whom to tell once it serves.
#[derive(Default)]
pub struct Inherit {
    /// Listening sockets of entry points, by address.
    pub entry_points: std::collections::BTreeMap<SocketAddr, std::net::TcpListener>,
    /// The mesh's UDP socket.
    pub mesh: Option<std::net::UdpSocket>,
    /// The metrics listener.
    pub metrics: Option<std::net::TcpListener>,
    /// Told once the daemon serves.
    pub on_serving: Option<OnServing>,
    /// Why the upgrade this run starts again from failed.
    pub failed_upgrade: Option<String>,
}

/// Who waits for a daemon to serve.
pub enum OnServing {
    /// The old daemon, on the socket pair.
    Tell(StdUnixStream),
    /// This daemon's own frozen entry points, after a failed upgrade: they stop accepting and
    /// finish, then the CLI hears `message`.
    Finish {
        /// The entry points that served meanwhile.
        frozen: Vec<Frozen>,
        /// The CLI's connection (`None`: asked by a peer, `upgrade --all`).
        cli: Option<UnixStream>,
        /// Why the upgrade failed.
        message: String,
    },
}

impl OnServing {
    /// Says that this daemon serves.
    pub async fn serving(self) {
        match self {
            OnServing::Tell(sock) => {
                let sent = tokio::task::spawn_blocking(move || {
                    fd_pass::send(&sock, &Handover::Serving, &[])
                })
                .await;
                match sent {
                    Ok(Ok(())) => info!("took over from the old daemon"),
                    Ok(Err(e)) => warn!(error = %e, "cannot tell the old daemon this one serves"),
                    Err(e) => warn!(error = %e, "cannot tell the old daemon this one serves"),
                }
            }
            OnServing::Finish {
                frozen,
                mut cli,
                message,
            } => {
                tokio::spawn(async move {
                    finish(frozen).await;
                    answer(&mut cli, &Handover::Failed { message }).await;
                });
            }
        }
    }
}

/// An `upgrade` asked on the admin socket, with the CLI's connection to answer on.
pub struct Request {
    /// The binary, checked.
    pub binary: PathBuf,
    /// Its version.
    pub version: String,
    /// The CLI's connection (`None`: asked by a peer, `upgrade --all`).
    pub cli: Option<UnixStream>,
}

/// Writes one handover frame to the CLI, if a CLI asked.
pub async fn answer(cli: &mut Option<UnixStream>, message: &Handover) {
    let (Some(cli), Ok(bytes)) = (cli, halley_proto::codec::encode_handover(message)) else {
        return;
    };
    if let Err(e) = cli.write_all(&bytes).await {
        warn!(error = %e, "the upgrade's answer did not reach the CLI");
    }
    let _ = cli.flush().await;
}

/// The binary to start: `asked`, or the one this daemon started from.
pub fn resolve(asked: Option<String>, own: &Path) -> Result<PathBuf> {
    let path = asked.map_or_else(|| own.to_path_buf(), PathBuf::from);
    if !path.is_absolute() {
        return Err(Error::Invalid(format!(
            "--binary {} must be an absolute path (the daemon does not run in your directory)",
            path.display()
        )));
    }
    Ok(path)
}

/// What a build says of itself in `halley-node version`: `halley-node V protocol=P disk=D
/// arch=A`. Every build prints this shape, so that any build can check another before it
/// hands a node over to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The release version.
    pub version: String,
    /// Its wire protocol.
    pub protocol: u16,
    /// Its data-dir format.
    pub disk: u16,
    /// The architecture it was built for (Rust's names: x86_64, aarch64, arm).
    pub arch: String,
}

impl std::fmt::Display for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "halley-node {} protocol={} disk={} arch={}",
            self.version, self.protocol, self.disk, self.arch
        )
    }
}

impl Build {
    /// This build.
    pub fn ours() -> Self {
        Self {
            version: crate::VERSION.to_owned(),
            protocol: halley_proto::codec::PROTOCOL_VERSION,
            disk: halley_proto::codec::DISK_FORMAT_VERSION,
            arch: std::env::consts::ARCH.to_owned(),
        }
    }

    /// Reads a `version` line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        if words.next()? != "halley-node" {
            return None;
        }
        let version = words.next()?.to_owned();
        let mut field = |key: &str| words.next()?.strip_prefix(key).map(str::to_owned);
        let protocol = field("protocol=")?.parse().ok()?;
        let disk = field("disk=")?.parse().ok()?;
        let arch = field("arch=")?;
        Some(Self {
            version,
            protocol,
            disk,
            arch,
        })
    }

    /// Why this daemon must not hand over to `new`, if it must not.
    pub fn refuses(&self, new: &Build) -> Option<String> {
        if new.arch != self.arch {
            return Some(format!(
                "it is built for {}, this node runs {}: build halley-node for {} (a binary under emulation would run, slowly)",
                new.arch, self.arch, self.arch
            ));
        }
        if new.disk != self.disk {
            return Some(format!(
                "it keeps its data dir in format {}, this node in {}: once it had written there, this daemon could not start again if it failed. Stop the node, replace the binary, and start it",
                new.disk, self.disk
            ));
        }
        if new.protocol != self.protocol {
            return Some(format!(
                "it speaks wire protocol {}, this node and its peers {}: an upgraded node could not talk to the others. Stop every node, replace the binary on each, and start them again",
                new.protocol, self.protocol
            ));
        }
        None
    }
}

/// Under systemd without `NOTIFY_SOCKET` (a unit without `Type=notify`), the old daemon's exit
/// ends the unit, and systemd would stop the new daemon and every service with it.
pub fn refuse_without_notify() -> Result<()> {
    if std::env::var_os("INVOCATION_ID").is_some() && std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Err(Error::Invalid(
            "this daemon runs under systemd without Type=notify: systemd would take its exit for the service's end. Add 'Type=notify' and 'NotifyAccess=all' to the unit (README), 'systemctl daemon-reload', restart once, then upgrade".into(),
        ));
    }
    Ok(())
}

/// Checks that `binary` is a halley-node this node may hand over to, and returns its build.
pub async fn check_binary(binary: &Path) -> Result<Build> {
    use std::os::unix::fs::PermissionsExt;
    refuse_without_notify()?;
    let meta = std::fs::metadata(binary).map_err(|e| {
        Error::Invalid(format!(
            "cannot use {} as the new halley-node: {e}",
            binary.display()
        ))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::Invalid(format!(
            "{} is not an executable file; copy the new halley-node there and 'chmod +x' it",
            binary.display()
        )));
    }
    let run = tokio::process::Command::new(binary)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| {
            Error::Invalid(format!(
                "'{} version' did not answer within 10s",
                binary.display()
            ))
        })?
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot run {}: {e} (a binary built for another architecture cannot run here)",
                binary.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default().trim();
    let build = Build::parse(line).filter(|_| out.status.success()).ok_or_else(|| {
        Error::Invalid(format!(
            "{} is not a halley-node that can take over a running one: 'version' printed {line:?} ({})",
            binary.display(),
            out.status
        ))
    })?;
    match Build::ours().refuses(&build) {
        Some(why) => Err(Error::Invalid(format!(
            "will not hand this node over to {}: {why}",
            binary.display()
        ))),
        None => Ok(build),
    }
}

/// A new daemon that said hello and waits for the sockets.
pub struct NewDaemon {
    child: std::process::Child,
    sock: StdUnixStream,
    /// Its version.
    pub version: String,
}

impl NewDaemon {
    /// Starts `binary` with this daemon's arguments and waits for its hello.
    pub async fn start(binary: &Path) -> Result<Self> {
        let (ours, theirs) = StdUnixStream::pair()
            .map_err(|e| Error::Net(format!("cannot make a socket pair: {e}")))?;
        let mut command = std::process::Command::new(binary);
        command
            .args(std::env::args_os().skip(1))
            .env(HANDOVER_ENV, HANDOVER_FD.to_string())
            .stdin(std::process::Stdio::null());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        // SAFETY: between fork and exec only async-signal-safe calls (setsid, dup2, fcntl) run.
        unsafe {
            command.pre_exec(move || {
                // Its own session: a signal meant for this daemon's group is not its own.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if fd == HANDOVER_FD {
                    // dup2 onto itself keeps close-on-exec set.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, HANDOVER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::Process(format!("cannot start {}: {e}", binary.display())))?;
        drop(theirs);
        let mut new = Self {
            child,
            sock: ours,
            version: String::new(),
        };
        match new.hear(HELLO_TIMEOUT, 0).await {
            Ok(Handover::Hello { version, pid }) => {
                info!(%version, pid, "the new daemon said hello");
                new.version = version;
                Ok(new)
            }
            Ok(other) => Err(new
                .give_up(format!("it answered {other:?} instead of hello"))
                .await),
            Err(e) => Err(new.give_up(e).await),
        }
    }

    /// The new daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hands over the sockets and waits until the new daemon serves.
    pub async fn take_over(
        &mut self,
        entry_points: &[(SocketAddr, BorrowedFd<'_>)],
        mesh: Option<BorrowedFd<'_>>,
        metrics: Option<BorrowedFd<'_>>,
    ) -> std::result::Result<(), String> {
        let offer = Handover::Offer {
            entry_points: entry_points.iter().map(|(a, _)| *a).collect(),
            mesh: mesh.is_some(),
            metrics: metrics.is_some(),
        };
        let fds: Vec<BorrowedFd<'_>> = entry_points
            .iter()
            .map(|(_, fd)| *fd)
            .chain(mesh)
            .chain(metrics)
            .collect();
        fd_pass::send(&self.sock, &offer, &fds).map_err(|e| e.to_string())?;
        match self.hear(TAKEOVER_TIMEOUT, 0).await {
            Ok(Handover::Serving) => Ok(()),
            Ok(other) => Err(format!("it answered {other:?} instead of serving")),
            Err(e) => Err(e),
        }
    }

    /// Kills the new daemon (its whole session) before it was offered anything.
    pub fn kill(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the process group this daemon started and has not reaped.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Kills the new daemon (its whole session) and says why it was given up.
    pub async fn give_up(mut self, why: String) -> Error {
        let pid = self.child.id() as i32;
        // One that closed the socket is usually exiting: given a moment, it says how.
        let mut exited = self.child.try_wait();
        for _ in 0..20 {
            if !matches!(exited, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            exited = self.child.try_wait();
        }
        let status = match exited {
            Ok(Some(status)) => format!("it exited ({status})"),
            _ => {
                // SAFETY: signalling the process group this daemon started and has not reaped.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = self.child.wait();
                "it was killed".to_owned()
            }
        };
        Error::Process(format!(
            "the new daemon (pid {pid}) did not take over: {why}; {status}. Its output is in this daemon's log"
        ))
    }

    /// The next frame from the new daemon, within `timeout`.
    async fn hear(
        &mut self,
        timeout: Duration,
        fds: usize,
    ) -> std::result::Result<Handover, String> {
        let sock = self.sock.try_clone().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let read = tokio::task::spawn_blocking(move || fd_pass::receive(&sock, fds))
            .await
            .map_err(|e| e.to_string())?;
        match read {
            Ok(Some((message, _))) => Ok(message),
            Ok(None) => Err("it closed the handover socket".into()),
            Err(e) => Err(format!("{e} (waited {}s at most)", timeout.as_secs())),
        }
    }
}

/// Stops the frozen entry points accepting, ends their connections and waits for them.
pub async fn finish(mut frozen: Vec<Frozen>) {
    for f in &mut frozen {
        f.stop_accepting();
        f.routes.connections.close();
    }
    let until = tokio::time::Instant::now() + DRAIN_DEADLINE;
    for f in &frozen {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let open = f.routes.connections.drained(left).await;
        if open > 0 {
            warn!(service = %f.service, open, "connections still open at the handover's deadline are cut");
        }
    }
}

/// The handed-over descriptors of frozen entry points, as listeners again (a failed upgrade).
pub fn listeners_of(
    frozen: &[Frozen],
) -> std::collections::BTreeMap<SocketAddr, std::net::TcpListener> {
    frozen
        .iter()
        .filter_map(|f| {
            let fd: OwnedFd = f.listener.as_ref()?.as_fd().try_clone_to_owned().ok()?;
            Some((f.addr, std::net::TcpListener::from(fd)))
        })
        .collect()
}

/// The upgrade asked of this daemon, waiting for its run loop (one at a time).
pub struct Upgrades {
    busy: std::sync::atomic::AtomicBool,
    /// Why the last upgrade asked of this node did not take over.
    last_failure: std::sync::Mutex<Option<String>>,
    /// SHA-256 of the running binary, once hashed.
    own_sha: tokio::sync::OnceCell<[u8; 32]>,
    tx: tokio::sync::mpsc::Sender<Request>,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Request>>,
}

impl Default for Upgrades {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        Self {
            busy: std::sync::atomic::AtomicBool::new(false),
            last_failure: std::sync::Mutex::new(None),
            own_sha: tokio::sync::OnceCell::new(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
        }
    }
}

impl Upgrades {
    /// Queues an upgrade; gives it back if one is already under way.
    pub fn ask(&self, request: Request) -> std::result::Result<(), Request> {
        use std::sync::atomic::Ordering;
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(request);
        }
        self.tx.try_send(request).map_err(|e| {
            self.busy.store(false, Ordering::Release);
            e.into_inner()
        })
    }

    /// The upgrade under way failed with `why` (this daemon serves on); another may be asked.
    pub fn failed(&self, why: String) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(why);
        }
        self.busy.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Why the last upgrade asked of this daemon (or of the one it started again from) failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|l| l.clone())
    }

    /// SHA-256 of the binary this process runs (the running file, even if it was replaced on
    /// disk since), hashed once.
    pub async fn own_sha(&self) -> Result<[u8; 32]> {
        self.own_sha
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(|| {
                    let path = Path::new("/proc/self/exe");
                    let mut file =
                        std::fs::File::open(path).map_err(Error::io("cannot read", path))?;
                    crate::store::releases::copy_hashing(&mut file, &mut std::io::sink())
                        .map_err(Error::io("cannot read", path))
                })
                .await
                .map_err(|e| Error::Net(format!("hashing task failed: {e}")))?
            })
            .await
            .copied()
    }

    /// The next upgrade asked.
    pub async fn next(&self) -> Request {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(r) => r,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }
}

/// The binary this process started from, as found at its start (a binary replaced on disk
/// since then reads as "(deleted)" in /proc).
pub fn own_binary() -> &'static Path {
    static OWN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    OWN.get_or_init(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("halley-node")))
}

/// Checks an asked upgrade and queues it for the run loop, or answers the CLI why not.
pub async fn ask(upgrades: &Upgrades, binary: Option<String>, mut cli: Option<UnixStream>) {
    let checked = async {
        let binary = resolve(binary, own_binary())?;
        let build = check_binary(&binary).await?;
        Ok::<_, Error>((binary, build.version))
    };
    match checked.await {
        Err(e) => {
            let message = e.to_string();
            answer(&mut cli, &Handover::Failed { message }).await;
        }
        Ok((binary, version)) => {
            if let Err(mut back) = ask_checked(upgrades, binary, version, cli) {
                let message = BUSY.into();
                answer(&mut back.cli, &Handover::Failed { message }).await;
            }
        }
    }
}

/// Why a second upgrade is refused.
pub const BUSY: &str = "an upgrade of this node is already under way; wait for it";

/// Queues an upgrade to a checked binary; gives it back if one is under way.
pub fn ask_checked(
    upgrades: &Upgrades,
    binary: PathBuf,
    version: String,
    cli: Option<UnixStream>,
) -> std::result::Result<(), Request> {
    upgrades.ask(Request {
        binary,
        version,
        cli,
    })?;
    if let Ok(mut last) = upgrades.last_failure.lock() {
        *last = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_line_reads_back_and_names_what_stops_a_handover() {
        let ours = Build::ours();
        assert_eq!(Build::parse(&ours.to_string()), Some(ours.clone()));
        assert_eq!(Build::parse("halley-node 0.1.0"), None);
        assert_eq!(
            Build::parse("nginx 1.2 protocol=6 disk=2 arch=x86_64"),
            None
        );
        assert_eq!(ours.refuses(&ours), None);
        let newer = Build {
            version: "9.0.0".into(),
            disk: ours.disk + 1,
            ..ours.clone()
        };
        assert!(
            ours.refuses(&newer).unwrap().contains("format"),
            "a daemon that failed to take over must be able to start again on what it wrote"
        );
        let arm = Build {
            arch: "aarch64-not-ours".into(),
            ..ours.clone()
        };
        assert!(
            ours.refuses(&arm)
                .unwrap()
                .contains("built for aarch64-not-ours")
        );
    }
}
