//! A slot's process: started in its own process group with the service's environment, watched
//! until it exits, stopped with the service's signal and then killed, and found again after a
//! node restart.
//!
//! ## Guarantees
//! - Each slot process leads its own process group, so stopping a slot reaches everything it
//!   started, and a signal meant for the node (Ctrl-C in a terminal) never reaches it.
//! - Processes outlive the node: `halley-node run` can be restarted without restarting services.
//!   A restarted node adopts a process only if its pid still names the same process (the start
//!   time in `/proc/PID/stat` matches), so a recycled pid is never signalled.
//! - The environment is built from scratch: `PATH`, `HOME`, `LANG`, `TZ` from the node, then the
//!   spec's `env`, then `PORT` and the `HALLEY_*` variables. Env values are never logged.
//! - stdout and stderr go to `services/NAME/logs/VERSION-SLOT.log` (appended, rotated by
//!   [`crate::host::logs`]), which outlives the node.
//! - A service with `user` (on a node that runs as root) runs as that user and sees of the
//!   node's data dir only its release and its data dir ([`confinement`], [`crate::host::view`]);
//!   the node's data dir stays 0700.
//!
//! ## Non-goals
//! No cgroup limits (logs are rotated by [`crate::host::logs`]).

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use halley_proto::deploy::{Color, ReleaseVersion};
use halley_proto::spec::{ServiceName, ServiceSpec, StopSignal};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::host::view::Confinement;

/// What a slot process needs to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The service.
    pub service: ServiceName,
    /// The release.
    pub version: ReleaseVersion,
    /// The slot.
    pub slot: Color,
    /// The slot's port on 127.0.0.1.
    pub port: u16,
    /// The unpacked release (the working directory).
    pub release_dir: PathBuf,
    /// The persistent data directory (`HALLEY_SERVICE_DATA`).
    pub data_dir: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// The spec the release runs with.
    pub spec: ServiceSpec,
    /// The node's data dir (hidden, but for the release and the data dir, from a service that
    /// runs as its own `user`).
    pub node_root: PathBuf,
    /// The node's name (`HALLEY_NODE`).
    pub node: halley_proto::NodeName,
}

/// A running (or just exited) slot process.
#[derive(Debug)]
pub struct Process {
    /// Its pid, also its process group id.
    pub pid: u32,
    /// Its start time in clock ticks after boot.
    pub start_ticks: u64,
    /// When this node started or adopted it.
    pub since: Instant,
    exit: watch::Receiver<Option<String>>,
}

impl Process {
    /// Resolves when the process has exited, with a description of how.
    pub async fn exited(&mut self) -> String {
        loop {
            if let Some(how) = self.exit.borrow().clone() {
                return how;
            }
            if self.exit.changed().await.is_err() {
                return "the watcher stopped".into();
            }
        }
    }

    /// A receiver that sees the exit, for a task that waits on it.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }
}

/// Builds an argv with `{port}` replaced.
pub fn argv(spec_argv: &[String], port: u16) -> Vec<String> {
    spec_argv
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect()
}

/// The environment of a slot process (also used for `exec` health checks).
pub fn environment(launch: &Launch) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "LANG", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.extend(
        launch
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    env.extend([
        ("PORT".to_owned(), launch.port.to_string()),
        ("HALLEY_SERVICE".to_owned(), launch.service.to_string()),
        ("HALLEY_NODE".to_owned(), launch.node.to_string()),
        ("HALLEY_RELEASE".to_owned(), launch.version.to_string()),
        ("HALLEY_SLOT".to_owned(), launch.slot.to_string()),
        (
            "HALLEY_SERVICE_DATA".to_owned(),
            launch.data_dir.display().to_string(),
        ),
    ]);
    env
}

/// Resolves the program: a path with a `/` is taken relative to the release directory and must
/// exist there; a bare name is looked up in `PATH` by the OS.
pub fn program(release_dir: &Path, argv0: &str) -> Result<PathBuf> {
    if !argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = release_dir.join(argv0);
    if path.is_file() {
        return Ok(path);
    }
    let mut listing: Vec<String> = std::fs::read_dir(release_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    listing.sort();
    listing.truncate(20);
    Err(Error::Process(format!(
        "command {argv0:?} does not exist in the release ({}); it contains: {}. Fix `command` in halley.toml or the artifact",
        release_dir.display(),
        listing.join(", ")
    )))
}

/// Starts a slot process.
///
/// `launch_id` goes into the process's environment as `HALLEY_LAUNCH` (only the slot process's,
/// not its checks' or hooks'): a restarted node finds an unrecorded launch by it
/// ([`crate::host::strays`]).
pub fn spawn(launch: &Launch, launch_id: &str) -> Result<Process> {
    let argv = argv(&launch.spec.command, launch.port);
    let program = program(&launch.release_dir, &argv[0])?;
    std::fs::create_dir_all(&launch.data_dir)
        .map_err(Error::io("cannot create", &launch.data_dir))?;
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&launch.log)
        .map_err(Error::io("cannot open log", &launch.log))?;
    let log2 = log
        .try_clone()
        .map_err(Error::io("cannot open log", &launch.log))?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .current_dir(&launch.release_dir)
        .env_clear()
        .envs(environment(launch))
        .env(crate::host::strays::LAUNCH_VAR, launch_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(false);
    if let Some(confinement) = confinement(launch)? {
        hand_over(launch, &confinement)?;
        // Tried on a thread first: a node that cannot build the view says so by name here,
        // where a child's failure would only read "cannot start".
        confinement.run(|| Ok(()))?;
        let enter = confinement.pre_exec(&launch.release_dir)?;
        // SAFETY: the closure only makes system calls on memory prepared before the fork
        // (see `host::view`), which is what may run between fork and exec.
        unsafe {
            cmd.pre_exec(enter);
        }
    }
    // SAFETY: the closure runs in the forked child before exec and only calls signal(2), which is
    // async-signal-safe. It gives the service the default SIGXFSZ the node itself ignores.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::Process(format!(
            "cannot start {:?} for {} {} in slot {}: {e}. Check `command` in halley.toml (is the file executable?)",
            argv[0], launch.service, launch.version, launch.slot
        ))
    })?;
    let pid = child.id().ok_or_else(|| {
        Error::Process(format!("{:?} exited before it could be watched", argv[0]))
    })?;
    let start_ticks = start_ticks(pid).unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let how = match child.wait().await {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let _ = tx.send(Some(how));
    });
    info!(service = %launch.service, version = %launch.version, slot = %launch.slot, pid, port = launch.port, "slot process started");
    Ok(Process {
        pid,
        start_ticks,
        since: Instant::now(),
        exit: rx,
    })
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".into(),
    }
}

/// How a launch's processes (the slot, its `exec` checks, its state hooks) are confined: as the
/// service's `user`, seeing of the node's data dir only the release and the service's data dir
/// ([`crate::host::view`]); `None` when they run as this node does.
pub fn confinement(launch: &Launch) -> Result<Option<Confinement>> {
    let Some((uid, gid)) = service_user(launch.spec.user.as_deref())? else {
        if launch.spec.user.is_some() {
            debug!(user = ?launch.spec.user, "not running as root; `user` is ignored");
        }
        return Ok(None);
    };
    Ok(Some(Confinement::new(
        uid,
        gid,
        &launch.node_root,
        &[&launch.release_dir, &launch.data_dir],
    )))
}

/// Gives the user what it may touch: its release stays root's, entered by the user's group
/// only (0750); its data dir is the user's alone (0700). The node's data dir keeps 0700.
pub fn hand_over(launch: &Launch, user: &Confinement) -> Result<()> {
    for (dir, owner, mode) in [
        (&launch.release_dir, 0, 0o750),
        (&launch.data_dir, user.uid, 0o700),
    ] {
        let path = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", dir.display())))?;
        // SAFETY: lchown on a NUL-terminated path we own; a link is not followed.
        if unsafe { libc::lchown(path.as_ptr(), owner, user.gid) } != 0 {
            warn!(dir = %dir.display(), error = %std::io::Error::last_os_error(), "cannot hand the directory to the service's user");
        }
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    Ok(())
}

/// The uid and primary gid a service with `user` runs as, or `None` when it runs as this
/// process does (no `user`, or this node is not root, so `user` is ignored).
pub fn service_user(user: Option<&str>) -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    let Some(user) = user.filter(|_| unsafe { libc::geteuid() } == 0) else {
        return Ok(None);
    };
    let name = CString::new(user)
        .map_err(|_| Error::Invalid(format!("user {user:?} contains a NUL byte")))?;
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both owned here and large enough; `result`
    // is set to null or to `&pwd`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(Error::Invalid(format!(
            "user {user:?} does not exist on this host; create it (useradd --system {user}) or change `user` in halley.toml"
        )));
    }
    Ok(Some((pwd.pw_uid, pwd.pw_gid)))
}

/// The start time of a process in clock ticks after boot, or `None` if it is gone (or a zombie).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it are plain.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` still names the process that started at `ticks`.
pub fn same_process(pid: u32, ticks: u64) -> bool {
    start_ticks(pid).is_some_and(|t| t == ticks)
}

/// Takes over a process found in the service record after a node restart, if it still runs.
pub fn adopt(pid: u32, ticks: u64) -> Option<Process> {
    if !same_process(pid, ticks) {
        return None;
    }
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Not our child, so it cannot be waited for: poll.
        while same_process(pid, ticks) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = tx.send(Some("exited (adopted process; status unknown)".into()));
    });
    Some(Process {
        pid,
        start_ticks: ticks,
        since: Instant::now(),
        exit: rx,
    })
}

fn signal_number(signal: StopSignal) -> libc::c_int {
    match signal {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Int => libc::SIGINT,
        StopSignal::Quit => libc::SIGQUIT,
        StopSignal::Hup => libc::SIGHUP,
        StopSignal::Usr1 => libc::SIGUSR1,
        StopSignal::Usr2 => libc::SIGUSR2,
    }
}

/// SIGKILLs the process group `pid` leads, if `pid` is still the process started at `ticks`.
pub fn kill_group(pid: u32, ticks: u64) {
    signal_group(pid, ticks, libc::SIGKILL);
}

fn signal_group(pid: u32, ticks: u64, sig: libc::c_int) {
    if pid <= 1 || !same_process(pid, ticks) {
        return;
    }
    // SAFETY: kill with a negative pid signals the process group the slot process leads.
    unsafe { libc::kill(-(pid as libc::pid_t), sig) };
}

/// Stops a slot process: `signal` to its group, then SIGKILL after `kill_after`. Resolves when
/// the process is gone.
pub async fn stop(pid: u32, ticks: u64, signal: StopSignal, kill_after: Duration) {
    signal_group(pid, ticks, signal_number(signal));
    let deadline = Instant::now() + kill_after;
    while same_process(pid, ticks) {
        if Instant::now() >= deadline {
            warn!(
                pid,
                signal = signal.name(),
                "slot process ignored its stop signal; killing its process group"
            );
            signal_group(pid, ticks, libc::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After SIGKILL the process may take a moment to be reaped.
    let reaped_by = Instant::now() + Duration::from_secs(5);
    while same_process(pid, ticks) && Instant::now() < reaped_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free port on 127.0.0.1 for a new slot.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Net(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Net(format!("cannot find a free port on 127.0.0.1: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let t = start_ticks(me).expect("our own /proc entry");
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
        assert_eq!(start_ticks(u32::MAX), None);
    }

    #[test]
    fn port_placeholder_is_replaced() {
        let args = argv(&["./app".into(), "--listen=127.0.0.1:{port}".into()], 4100);
        assert_eq!(args, ["./app", "--listen=127.0.0.1:4100"]);
    }
}
