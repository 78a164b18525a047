//! Backups of a service's state on this node: `DATA_DIR/backups/SERVICE/ID/`, each with the
//! SQLite copies (`sqlite/N.db`), directory archives (`dirs/N.tar`), what the `backup` command
//! wrote (`hook/`) and a `manifest.rec` naming every file with its size and SHA-256.
//!
//! ## Guarantees
//! - A backup is written into `.partial-ID` and renamed into place only once every file and the
//!   manifest are written and synced: a failed or interrupted snapshot (a full disk, a failing
//!   command) leaves nothing that is listed, and its partial directory is removed.
//! - SQLite databases are copied with SQLite's online backup API in one step, under one read
//!   transaction: the copy is consistent and holds every transaction committed before it started,
//!   while the service keeps writing.
//! - Every file's hash is checked before a backup is verified or restored; a corrupted backup is
//!   refused, naming the file.
//! - Verification restores into a scratch directory laid out like the service data directory,
//!   runs `PRAGMA integrity_check` on every database, unpacks every archive, then runs `verify`
//!   with `HALLEY_RESTORED` pointing there.
//! - A restore replaces each database and directory by rename from a copy made next to it, so a
//!   failure part-way leaves each item either old or new, never half-written.
//! - Snapshot sources and restore targets pass [`confined`]: no path in `[state]` reaches through
//!   a symbolic link the service planted, and a staged copy is a new file (`O_EXCL|O_NOFOLLOW`),
//!   so root never reads or writes outside the service's data dir for it. For a service with
//!   `user`, sources are read and targets written with that user's identity
//!   ([`as_user`]), so even a tree changed mid-copy yields only what the user could read
//!   itself, and restored files are the user's (the backup itself stays root's).
//! - A backup is root's alone: its directories are 0700 and its files 0600.
//!
//! ## Non-goals
//! Stopping the service's writers (the service host does that around [`Backups::restore`]) and
//! remote copies of backups.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use halley_proto::NodeName;
use halley_proto::codec::{decode_record, encode_record};
use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::{BackupFile, BackupManifest};
use halley_proto::spec::{ServiceName, StateSpec};
use ring::digest;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::host::confined::{as_user, clear, confined, create_new};
use crate::host::handover;
use crate::host::view::Confinement;

const MANIFEST: &str = "manifest.rec";

/// What a snapshot is taken of, and for what.
pub struct Snapshot<'a> {
    /// The service.
    pub service: &'a ServiceName,
    /// This node.
    pub node: &'a NodeName,
    /// What to take.
    pub spec: &'a StateSpec,
    /// The service data directory (`HALLEY_SERVICE_DATA`).
    pub service_data: &'a Path,
    /// The release serving now.
    pub release: Option<ReleaseVersion>,
    /// The release about to be deployed, if it is taken for a deploy.
    pub for_release: Option<ReleaseVersion>,
    /// How the hooks run.
    pub hooks: &'a Hooks,
    /// Unix ms now.
    pub now_ms: u64,
}

/// How a state command may use a directory named in its environment, when it runs as the
/// service's user ([`crate::host::handover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It writes its output there (a backup's fresh dump dir): the user's while it runs, taken
    /// back (checked, root's) after.
    Write,
    /// It reads there (a finished backup's dump): lent to the user's group, shown read-only.
    Read,
    /// It may do anything there (a scratch restore, removed by the caller after).
    Scratch,
}

/// How state commands run: from `cwd` (a release directory), with the service's environment,
/// as the service's user if it has one.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// The working directory.
    pub cwd: PathBuf,
    /// The environment (the service's, as its slots get it).
    pub env: Vec<(String, String)>,
    /// The service's `env` values, redacted from what a command prints before it is returned
    /// (its output goes to the coordinator, the CLI and, on failure, rollout reasons).
    pub secrets: Vec<String>,
    /// The service's user and view ([`crate::host::process::confinement`]): commands run so,
    /// and the service's files are read and written so; `None` runs them as this node.
    pub user: Option<Confinement>,
}

impl Hooks {
    /// Runs `argv` with `extra` variables added (each a directory, and how the command may use
    /// it); returns its output, or an error that names the command (`what`) and shows the end of
    /// its output.
    ///
    /// With a user, each `extra` directory that exists is shown in the command's view and
    /// handed over as its [`Access`] says; whatever the command left running in its process
    /// group is killed when it exits.
    pub fn run(
        &self,
        what: &str,
        argv: &[String],
        extra: &[(&str, &Path, Access)],
    ) -> Result<String> {
        let program = crate::host::process::program(&self.cwd, &argv[0])?;
        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .process_group(0);
        for (k, v, _) in extra {
            cmd.env(k, v);
        }
        let shown: Vec<&(&str, &Path, Access)> =
            extra.iter().filter(|(_, dir, _)| dir.exists()).collect();
        let (mut lent, mut written) = (Vec::new(), Vec::new());
        if let Some(user) = &self.user {
            let view = shown.iter().fold(user.clone(), |view, (_, dir, access)| {
                if *access == Access::Read {
                    view.showing_read_only(dir)
                } else {
                    view.showing(dir)
                }
            });
            let enter = view.pre_exec(&self.cwd)?;
            // SAFETY: the closure only makes system calls on memory prepared before the fork.
            unsafe {
                cmd.pre_exec(enter);
            }
            for (_, dir, access) in &shown {
                if *access == Access::Read {
                    lent.push(handover::lend(dir, user.gid)?);
                } else {
                    if *access == Access::Write {
                        written.push((*dir, user.uid));
                    }
                    handover::give(dir, user.uid, user.gid)?;
                }
            }
        }
        let out = run_to_exit(&mut cmd);
        drop(lent);
        // Every dir is taken back even if one is refused; the command's own failure is told
        // first, since a refusal after a failed command is most often its leftovers.
        let mut refused = None;
        for (dir, uid) in written {
            if let Err(e) = handover::take_back(dir, uid) {
                refused.get_or_insert(e);
            }
        }
        let (status, output) = out
            .map_err(|e| Error::Process(format!("cannot run the {what} command {argv:?}: {e}")))?;
        let text = String::from_utf8_lossy(&output);
        let text = crate::host::slot::redact(&text, &self.secrets);
        if !status.success() {
            let also = refused.map_or_else(String::new, |e| format!("\n(also: {e})"));
            return Err(Error::Process(format!(
                "the {what} command {argv:?} failed ({status}); its output:\n{}{also}",
                tail(&text)
            )));
        }
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(text)
    }
}

/// The most of a command's output kept (its end).
const MAX_OUTPUT: u64 = 1 << 20;

/// Runs `cmd` (which leads its own process group) until it exits, then kills whatever it left
/// running in that group; returns its status and the end of its output. The output goes to an
/// anonymous in-memory file (`memfd`: no `/tmp` needed, which a `FROM scratch` host lacks), not
/// a pipe, so a child left holding it cannot keep this waiting.
fn run_to_exit(cmd: &mut Command) -> std::io::Result<(std::process::ExitStatus, Vec<u8>)> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File from here.
    let fd = unsafe { libc::memfd_create(c"halley-state-command".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut log = unsafe { File::from_raw_fd(fd) };
    cmd.stdout(log.try_clone()?).stderr(log.try_clone()?);
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // Waited for without reaping, so the group's id cannot be reused before the kill. A signal
    // interrupting the wait must not kill a command that is still running: wait again.
    loop {
        // SAFETY: waitid fills a zeroed siginfo_t for our own child.
        let waited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if waited == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    // SAFETY: signalling the process group of our own child, which has exited but is not reaped.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let status = child.wait()?;
    let len = log.seek(SeekFrom::End(0))?;
    log.seek(SeekFrom::Start(len.saturating_sub(MAX_OUTPUT)))?;
    let mut output = Vec::new();
    log.read_to_end(&mut output)?;
    Ok((status, output))
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

/// This node's backups.
#[derive(Debug, Clone)]
pub struct Backups {
    root: PathBuf,
}

impl Backups {
    /// The backups under a node's data dir.
    pub fn new(data_root: &Path) -> Self {
        Self {
            root: data_root.join("backups"),
        }
    }

    fn dir(&self, service: &ServiceName) -> PathBuf {
        self.root.join(service.as_str())
    }

    /// Every complete backup of a service, oldest first.
    pub fn list(&self, service: &ServiceName) -> Vec<BackupManifest> {
        let dir = self.dir(service);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<BackupManifest> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| match read_manifest(&e.path()) {
                Ok(m) => Some(m),
                Err(err) => {
                    warn!(path = %e.path().display(), error = %err, "unreadable backup manifest; not listed");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One backup's manifest.
    pub fn get(&self, service: &ServiceName, id: &str) -> Result<BackupManifest> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(Error::Invalid(format!("{id:?} is not a backup id")));
        }
        let dir = self.dir(service).join(id);
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "service {service} has no backup {id} on this node; 'halley-node backup list {service}' shows them"
            )));
        }
        read_manifest(&dir)
    }

    /// Takes a snapshot. Nothing is left behind when it fails.
    pub fn create(&self, s: &Snapshot<'_>) -> Result<BackupManifest> {
        let parent = self.dir(s.service);
        fs::create_dir_all(&parent).map_err(Error::io("cannot create", &parent))?;
        seal(&parent)?;
        let id = unique_id(&parent, s.now_ms);
        let partial = parent.join(format!(".partial-{id}"));
        let _ = fs::remove_dir_all(&partial);
        let result: Result<BackupManifest> = (|| {
            fs::create_dir(&partial).map_err(Error::io("cannot create", &partial))?;
            let manifest = self.write_snapshot(s, &id, &partial)?;
            let bytes = encode_record(&manifest)?;
            write_synced(&partial.join(MANIFEST), &bytes)?;
            seal_tree(&partial)?;
            let dest = parent.join(&id);
            fs::rename(&partial, &dest).map_err(Error::io("cannot rename into place", &dest))?;
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        let manifest = result?;
        info!(service = %s.service, id = %manifest.id, bytes = manifest.size(), "backup taken");
        Ok(manifest)
    }

    fn write_snapshot(&self, s: &Snapshot<'_>, id: &str, dir: &Path) -> Result<BackupManifest> {
        let mut files = Vec::new();
        if !s.spec.sqlite.is_empty() {
            fs::create_dir(dir.join("sqlite")).map_err(Error::io("cannot create", dir))?;
        }
        for (i, rel) in s.spec.sqlite.iter().enumerate() {
            let (source, connection) =
                as_user(s.hooks.user.as_ref(), || open_sqlite(s.service_data, rel))?;
            let name = format!("sqlite/{i}.db");
            copy_sqlite(&source, connection, &dir.join(&name))?;
            files.push(describe(dir, &name)?);
        }
        if !s.spec.dirs.is_empty() {
            fs::create_dir(dir.join("dirs")).map_err(Error::io("cannot create", dir))?;
        }
        for (i, rel) in s.spec.dirs.iter().enumerate() {
            let name = format!("dirs/{i}.tar");
            let dest = dir.join(&name);
            // Opened here (the backup dir is root's); filled by the reader as the service user.
            let file = File::create(&dest).map_err(Error::io("cannot create", &dest))?;
            as_user(s.hooks.user.as_ref(), || {
                archive_dir(&confined(s.service_data, rel)?, file, &dest)
            })?;
            files.push(describe(dir, &name)?);
        }
        if let Some(argv) = &s.spec.backup {
            let hook = dir.join("hook");
            fs::create_dir(&hook).map_err(Error::io("cannot create", &hook))?;
            s.hooks.run(
                "backup",
                argv,
                &[("HALLEY_BACKUP_DIR", &hook, Access::Write)],
            )?;
            for name in walk_files(dir, &hook)? {
                files.push(describe(dir, &name)?);
            }
        }
        sync_dir(dir);
        Ok(BackupManifest {
            id: id.to_owned(),
            service: s.service.clone(),
            node: s.node.clone(),
            release: s.release.clone(),
            reason: match &s.for_release {
                Some(v) => format!("before deploy of {v}"),
                None => "manual".into(),
            },
            for_release: s.for_release.clone(),
            created_ms: s.now_ms,
            sqlite: s.spec.sqlite.clone(),
            dirs: s.spec.dirs.clone(),
            hook: s.spec.backup.is_some(),
            files,
        })
    }

    /// Checks every file of a backup against its recorded size and hash.
    pub fn check(&self, service: &ServiceName, id: &str) -> Result<BackupManifest> {
        let manifest = self.get(service, id)?;
        let dir = self.dir(service).join(id);
        for f in &manifest.files {
            let path = dir.join(&f.name);
            let (size, sha) = hash_file(&path)?;
            if size != f.size || sha != f.sha256 {
                return Err(Error::Invalid(format!(
                    "backup {id} of service {service} is corrupt: {} does not match its recorded size and SHA-256; it cannot be restored. Use another backup",
                    path.display()
                )));
            }
        }
        Ok(manifest)
    }

    /// Proves a backup restores: hashes, a scratch restore, integrity checks, then `verify`.
    /// Returns what was checked.
    pub fn verify(
        &self,
        service: &ServiceName,
        id: &str,
        spec: &StateSpec,
        hooks: &Hooks,
    ) -> Result<String> {
        let manifest = self.check(service, id)?;
        let dir = self.dir(service).join(id);
        let scratch = self.dir(service).join(format!(".verify-{id}"));
        // Made afresh or not at all: a `verify` command of the user's had the last one, and
        // what it left there is never reused.
        match fs::remove_dir_all(&scratch) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(
                    "cannot remove the last scratch restore",
                    &scratch,
                )(e));
            }
            _ => {}
        }
        let result: Result<String> = (|| {
            fs::create_dir(&scratch).map_err(Error::io("cannot create", &scratch))?;
            let mut checked = Vec::new();
            for (i, rel) in manifest.sqlite.iter().enumerate() {
                let target = scratch.join(rel);
                make_parent(&target)?;
                fs::copy(dir.join(format!("sqlite/{i}.db")), &target)
                    .map_err(Error::io("cannot copy into", &target))?;
                integrity_check(&target)?;
                checked.push(format!("{rel}: integrity_check ok"));
            }
            for (i, rel) in manifest.dirs.iter().enumerate() {
                let target = scratch.join(rel);
                fs::create_dir_all(&target).map_err(Error::io("cannot create", &target))?;
                unarchive(&dir.join(format!("dirs/{i}.tar")), &target)?;
                checked.push(format!("{rel}: archive unpacked"));
            }
            if let Some(argv) = &spec.verify {
                hooks.run(
                    "verify",
                    argv,
                    &[
                        ("HALLEY_RESTORED", &scratch, Access::Scratch),
                        ("HALLEY_BACKUP_DIR", &dir.join("hook"), Access::Read),
                    ],
                )?;
                checked.push("verify command passed".into());
            }
            Ok(checked.join("; "))
        })();
        let _ = fs::remove_dir_all(&scratch);
        result
    }

    /// Restores a backup over the service data directory (the service must not be writing),
    /// then runs the `restore` command when the backup has a `hook/` part.
    pub fn restore(
        &self,
        service: &ServiceName,
        id: &str,
        spec: &StateSpec,
        service_data: &Path,
        hooks: &Hooks,
    ) -> Result<BackupManifest> {
        let user = hooks.user.as_ref();
        let manifest = self.check(service, id)?;
        let dir = self.dir(service).join(id);
        // Each part is opened here (the backup is root's) and written as the service's user, so
        // the restored files are the user's and no write lands where the user could not write.
        for (i, rel) in manifest.sqlite.iter().enumerate() {
            let from = dir.join(format!("sqlite/{i}.db"));
            let source = File::open(&from).map_err(Error::io("cannot read", &from))?;
            as_user(user, || {
                let target = confined(service_data, rel)?;
                make_parent(&target)?;
                let staged = sibling(&target, "restoring");
                clear(&staged);
                copy_new(source, &staged)?;
                // A leftover journal or WAL would be applied to the restored file.
                for suffix in ["-wal", "-shm", "-journal"] {
                    let _ = fs::remove_file(format!("{}{suffix}", target.display()));
                }
                fs::rename(&staged, &target).map_err(Error::io("cannot rename into place", &target))
            })?;
        }
        for (i, rel) in manifest.dirs.iter().enumerate() {
            let from = dir.join(format!("dirs/{i}.tar"));
            let archive = File::open(&from).map_err(Error::io("cannot open", &from))?;
            as_user(user, || {
                let target = confined(service_data, rel)?;
                make_parent(&target)?;
                let staged = sibling(&target, "restoring");
                clear(&staged);
                fs::create_dir(&staged).map_err(Error::io("cannot create", &staged))?;
                crate::store::releases::unpack_tar(BufReader::new(archive), &staged)?;
                let old = sibling(&target, "replaced");
                clear(&old);
                if target.exists() {
                    fs::rename(&target, &old).map_err(Error::io("cannot move aside", &target))?;
                }
                fs::rename(&staged, &target)
                    .map_err(Error::io("cannot rename into place", &target))?;
                let _ = fs::remove_dir_all(&old);
                Ok(())
            })?;
        }
        if manifest.hook
            && let Some(argv) = &spec.restore
        {
            hooks.run(
                "restore",
                argv,
                &[("HALLEY_BACKUP_DIR", &dir.join("hook"), Access::Read)],
            )?;
        }
        info!(%service, %id, "backup restored");
        Ok(manifest)
    }

    /// Removes the oldest backups beyond `keep`, never the restore point of the `committed`
    /// release ([`restore_point::prune`](crate::engine::restore_point::prune)); returns their ids.
    pub fn prune(
        &self,
        service: &ServiceName,
        keep: u32,
        committed: Option<&ReleaseVersion>,
    ) -> Vec<String> {
        let list = self.list(service);
        let mut removed = Vec::new();
        for id in crate::engine::restore_point::prune(&list, keep, committed) {
            let dir = self.dir(service).join(&id);
            if fs::remove_dir_all(&dir).is_ok() {
                removed.push(id);
            }
        }
        removed
    }
}

/// Copies `source` to a new file `to` (never through a link at `to`), synced, mode 0600.
fn copy_new(mut source: File, to: &Path) -> Result<()> {
    let mut dest = create_new(to, 0o600)?;
    std::io::copy(&mut source, &mut dest).map_err(Error::io("cannot copy into", to))?;
    dest.sync_all().map_err(Error::io("cannot sync", to))
}

/// Backups are root's alone: directories 0700.
fn seal(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(Error::io("cannot set the mode of", dir))
}

/// A finished backup: directories 0700, files 0600 (SQLite and tar create theirs 0644).
fn seal_tree(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    seal(dir)?;
    for entry in fs::read_dir(dir).map_err(Error::io("cannot read", dir))? {
        let entry = entry.map_err(Error::io("cannot read", dir))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(Error::io("cannot inspect", &path))?;
        if kind.is_dir() {
            seal_tree(&path)?;
        } else if kind.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(Error::io("cannot set the mode of", &path))?;
        }
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<BackupManifest> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(Error::io("cannot read", &path))?;
    decode_record(&bytes).map_err(|e| {
        Error::Invalid(format!(
            "backup manifest {} is unreadable ({e}); the backup is incomplete or damaged",
            path.display()
        ))
    })
}

/// `YYYYMMDDTHHMMSSmmmZ`, with `-N` added if that id exists.
fn unique_id(parent: &Path, now_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    let mut id = base.clone();
    let mut n = 2;
    while parent.join(&id).exists() {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

fn sqlite_error(source: &Path, e: rusqlite::Error) -> Error {
    Error::Invalid(format!(
        "cannot snapshot SQLite database {}: {e}",
        source.display()
    ))
}

/// Opens `[state] sqlite` entry `rel` read-only and reads its schema, so that SQLite has opened
/// every file it reads (the database, and in WAL mode its `-wal` and `-shm`) by the time this
/// returns: run as the service's user, everything the copy reads was opened with its identity.
fn open_sqlite(service_data: &Path, rel: &str) -> Result<(PathBuf, rusqlite::Connection)> {
    let source = confined(service_data, rel)?;
    if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
        return Err(Error::Invalid(format!(
            "state sqlite database {} does not exist; create it (the service's first start usually does) or remove it from [state] sqlite",
            source.display()
        )));
    }
    let fail = |e| sqlite_error(&source, e);
    let src = rusqlite::Connection::open_with_flags(
        &source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(fail)?;
    src.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(fail)?;
    Ok((source, src))
}

fn copy_sqlite(source: &Path, src: rusqlite::Connection, dest: &Path) -> Result<()> {
    let fail = |e| sqlite_error(source, e);
    let mut dst = rusqlite::Connection::open(dest).map_err(fail)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(fail)?;
        // Every page in one step (-1): one read transaction, so one consistent moment. A busy
        // or locked source (a writer holding the lock) is waited for and tried again.
        let mut waited = std::time::Duration::ZERO;
        loop {
            match backup.step(-1).map_err(fail)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ if waited < std::time::Duration::from_secs(30) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    waited += std::time::Duration::from_millis(10);
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "cannot snapshot SQLite database {}: it stayed locked for 30 s",
                        source.display()
                    )));
                }
            }
        }
    }
    dst.close().map_err(|(_, e)| fail(e))?;
    sync_file(dest)
}

fn integrity_check(path: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open(path).map_err(|e| {
        Error::Invalid(format!("cannot open restored copy {}: {e}", path.display()))
    })?;
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| Error::Invalid(format!("integrity_check on {}: {e}", path.display())))?;
    if result != "ok" {
        return Err(Error::Invalid(format!(
            "restored copy {} fails integrity_check: {result}",
            path.display()
        )));
    }
    Ok(())
}

fn archive_dir(source: &Path, file: File, dest: &Path) -> Result<()> {
    if !source.is_dir() {
        return Err(Error::Invalid(format!(
            "state directory {} does not exist; create it or remove it from [state] dirs",
            source.display()
        )));
    }
    let mut builder = tar::Builder::new(BufWriter::new(file));
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", source)
        .map_err(Error::io("cannot archive (is the disk full?)", source))?;
    let writer = builder
        .into_inner()
        .map_err(Error::io("cannot write (is the disk full?)", dest))?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io("cannot write (is the disk full?)", dest)(e.into_error()))?;
    file.sync_all().map_err(Error::io("cannot sync", dest))
}

fn unarchive(archive: &Path, dest: &Path) -> Result<()> {
    let file = File::open(archive).map_err(Error::io("cannot open", archive))?;
    crate::store::releases::unpack_tar(BufReader::new(file), dest)
}

fn walk_files(base: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(Error::io("cannot read", &d))? {
            let entry = entry.map_err(Error::io("cannot read", &d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(Error::io("cannot read", &path))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn describe(dir: &Path, name: &str) -> Result<BackupFile> {
    let (size, sha256) = hash_file(&dir.join(name))?;
    Ok(BackupFile {
        name: name.to_owned(),
        size,
        sha256,
    })
}

fn hash_file(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut file = File::open(path).map_err(Error::io("cannot read", path))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(Error::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((size, out))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(Error::io("cannot create", path))?;
    file.write_all(bytes)
        .map_err(Error::io("cannot write (is the disk full?)", path))?;
    file.sync_all().map_err(Error::io("cannot sync", path))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("cannot sync (is the disk full?)", path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn make_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) => fs::create_dir_all(p).map_err(Error::io("cannot create", p)),
        None => Ok(()),
    }
}

/// `.NAME.halley-WHAT` next to `path`.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.halley-{what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_leaves_a_child_behind_returns_when_it_exits_and_the_child_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks {
            cwd: dir.path().to_path_buf(),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            secrets: Vec::new(),
            user: None,
        };
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 600 & echo $! > {}; echo done", pid_file.display());
        let out = hooks
            .run("backup", &["sh".into(), "-c".into(), script], &[])
            .unwrap();
        assert_eq!(out.trim(), "done");
        let pid = fs::read_to_string(&pid_file).unwrap().trim().to_owned();
        let gone = (0..100).any(|_| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            if stat.is_empty() || state.starts_with('Z') {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            false
        });
        assert!(gone, "the child left behind (pid {pid}) still runs");
    }

    #[test]
    fn a_hook_that_prints_a_secret_does_not_return_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "pg-password-0123456789".to_owned();
        let hooks = Hooks {
            cwd: dir.path().to_path_buf(),
            env: vec![("DB_PASSWORD".into(), secret.clone())],
            secrets: vec![secret.clone()],
            user: None,
        };
        let argv = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let ok = hooks
            .run("backup", &argv("echo using $DB_PASSWORD"), &[])
            .unwrap();
        assert_eq!(ok.trim(), "using [redacted]");
        let err = hooks
            .run(
                "backup",
                &argv("echo auth failed for $DB_PASSWORD >&2; exit 3"),
                &[],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth failed for [redacted]") && !err.contains(&secret),
            "{err}"
        );
    }
}
