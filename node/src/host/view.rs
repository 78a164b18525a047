//! What a service that runs as its own `user` sees of the node's data dir: a mount namespace of
//! its own in which the data dir is an empty tmpfs (mode 0711) holding only that service's
//! directories, bound in at their real paths. Its slots, its health commands, its state hooks
//! and the reads and writes of its files done for it all go through one [`Confinement`].
//!
//! ## Guarantees
//! - The node's data dir keeps mode 0700: a service's user reaches its own directories (same
//!   paths as everywhere: `HALLEY_SERVICE_DATA`, the release as working directory) and nothing
//!   else of the node's (keys, tokens, the admin socket, other services, backups).
//! - Nothing changes outside the confined process or thread: the namespace is private
//!   (mounts do not propagate back) and goes away with it.
//! - [`Confinement::pre_exec`] and the thread form make only system calls on memory prepared
//!   beforehand, so they are safe between `fork` and `exec` in a multi-threaded daemon.
//! - A process drops to the user's uid, gid and that gid alone as groups after the view is
//!   built; a thread takes only the user's file-system ids (fsuid, fsgid, groups), its own.
//!
//! ## Non-goals
//! It needs root (`CAP_SYS_ADMIN`) to build the namespace: a node that is not root ignores
//! `user` altogether ([`crate::host::process::service_user`]), and one in a container without
//! that capability fails to start such a service with an error that says so. It hides the
//! node's data dir only: the rest of the file system is seen as the user would see it anyway.
//! Services that share a user are not kept from each other: a process of that user can reach
//! another's view through `/proc/PID/root`, so give each service a user of its own.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directories shown in one view at most (a service dir and a backup's hook dir, with room).
const MAX_SHOWN: usize = 4;

/// A service's user and what of the node's data dir it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
    root: PathBuf,
    /// Each shown directory, and whether it is shown read-only.
    shown: Vec<(PathBuf, bool)>,
}

/// A view ready to enter: every path as a C string, made before any `fork`.
#[derive(Debug)]
struct Prepared {
    root: CString,
    /// Per shown directory: the directories to make in the tmpfs, outermost first, ending with
    /// the mount point itself (its real path); and whether it is read-only.
    shown: Vec<(Vec<CString>, bool)>,
    cwd: Option<CString>,
}

impl Confinement {
    /// `uid`/`gid`, seeing of `root` (the node's data dir) only `shown`, directories inside it.
    /// Relative paths are made absolute here: a child resolves them after its `chdir`.
    pub fn new(uid: u32, gid: u32, root: &Path, shown: &[&Path]) -> Self {
        Self {
            uid,
            gid,
            root: absolute(root),
            shown: shown.iter().map(|p| (absolute(p), false)).collect(),
        }
    }

    /// The same user and view, also showing `dir`.
    pub fn showing(&self, dir: &Path) -> Self {
        let mut more = self.clone();
        more.shown.push((absolute(dir), false));
        more
    }

    /// The same user and view, also showing `dir`, read-only.
    pub fn showing_read_only(&self, dir: &Path) -> Self {
        let mut more = self.clone();
        more.shown.push((absolute(dir), true));
        more
    }

    fn prepare(&self, cwd: Option<&Path>) -> Result<Prepared> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", p.display())))
        };
        if self.shown.len() > MAX_SHOWN {
            return Err(Error::Invalid(format!(
                "a confined view shows at most {MAX_SHOWN} directories"
            )));
        }
        let mut shown = Vec::new();
        for (dir, read_only) in &self.shown {
            if let Some((other, _)) = self
                .shown
                .iter()
                .find(|(o, _)| o != dir && dir.starts_with(o))
            {
                return Err(Error::Invalid(format!(
                    "{} is inside {}: a view shows directories side by side only",
                    dir.display(),
                    other.display()
                )));
            }
            let rel = dir.strip_prefix(&self.root).map_err(|_| {
                Error::Invalid(format!(
                    "{} is not inside the node's data dir {}",
                    dir.display(),
                    self.root.display()
                ))
            })?;
            let mut path = self.root.clone();
            let mut chain = Vec::new();
            for part in rel.components() {
                path.push(part);
                chain.push(c(&path)?);
            }
            if chain.is_empty() {
                return Err(Error::Invalid(
                    "a view cannot show the whole data dir".into(),
                ));
            }
            shown.push((chain, *read_only));
        }
        Ok(Prepared {
            root: c(&self.root)?,
            shown,
            cwd: cwd.map(c).transpose()?,
        })
    }

    /// What a child must run between `fork` and `exec` to start confined: enter the view,
    /// change to `cwd` inside it, then become the user. Used instead of `Command::uid`, which
    /// would drop root before the view could be built.
    pub fn pre_exec(
        &self,
        cwd: &Path,
    ) -> Result<impl FnMut() -> io::Result<()> + Send + Sync + use<>> {
        let prepared = self.prepare(Some(cwd))?;
        let (uid, gid) = (self.uid, self.gid);
        Ok(move || {
            prepared.enter()?;
            become_user(uid, gid)
        })
    }

    /// Runs `work` on a thread of its own that sees this view and has the user's file-system
    /// identity; the thread ends with `work`, so neither leaks into other work.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let prepared = self.prepare(None)?;
        let (uid, gid) = (self.uid, self.gid);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    prepared.enter().map_err(|e| refused(&self.root, &e))?;
                    take_fs_identity(uid, gid)?;
                    work()
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Process("a confined reader panicked".into())))
        })
    }
}

fn refused(root: &Path, e: &Failed) -> Error {
    let hint = if e.error.raw_os_error() == Some(libc::EPERM) {
        "halley-node needs to run as root with CAP_SYS_ADMIN (not in an unprivileged container) for a service with `user`; run it so, or remove `user` from halley.toml"
    } else {
        "check that the directory exists and is a directory"
    };
    Error::Process(format!(
        "cannot give the service's user its private view of {}: {} failed ({}): {hint}",
        root.display(),
        e.step,
        e.error
    ))
}

/// Which step of entering a view failed, and how (a `&'static str`: made without allocating).
#[derive(Debug)]
struct Failed {
    step: &'static str,
    error: io::Error,
}

impl From<Failed> for io::Error {
    fn from(f: Failed) -> Self {
        f.error
    }
}

/// `Err(Failed)` naming `step` when `rc` is not 0.
fn step(rc: libc::c_int, step: &'static str) -> std::result::Result<(), Failed> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Failed {
            step,
            error: io::Error::last_os_error(),
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Prepared {
    /// Builds the view in a new mount namespace of the calling thread (a child's only thread).
    fn enter(&self) -> std::result::Result<(), Failed> {
        // SAFETY: every pointer passed is a NUL-terminated string owned by `self` or a literal,
        // or null where the call allows it; the fds are ours and closed on every path.
        unsafe {
            step(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
            step(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                "making mounts private",
            )?;
            // Opened in the new namespace, before the tmpfs hides them: a bind mount takes its
            // source from the caller's namespace.
            let mut fds = [-1; MAX_SHOWN];
            let result = self.bind_all(&mut fds);
            for fd in fds.into_iter().filter(|fd| *fd >= 0) {
                libc::close(fd);
            }
            result?;
            if let Some(cwd) = &self.cwd {
                step(libc::chdir(cwd.as_ptr()), "entering the working directory")?;
            }
        }
        Ok(())
    }

    /// # Safety
    /// Called only from [`Prepared::enter`], in its fresh mount namespace.
    unsafe fn bind_all(
        &self,
        fds: &mut [libc::c_int; MAX_SHOWN],
    ) -> std::result::Result<(), Failed> {
        // SAFETY: as in `enter`.
        unsafe {
            for (fd, (chain, _)) in fds.iter_mut().zip(&self.shown) {
                let Some(dir) = chain.last() else { continue };
                // A link is followed: these are root's paths (a data dir moved to another disk
                // and linked back is fine).
                *fd = libc::open(
                    dir.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                step(if *fd < 0 { -1 } else { 0 }, "opening a shown directory")?;
            }
            step(
                libc::mount(
                    c"halley-view".as_ptr(),
                    self.root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=0711,size=64k".as_ptr().cast(),
                ),
                "mounting a tmpfs over the data dir",
            )?;
            for (fd, (chain, read_only)) in fds.iter().zip(&self.shown) {
                for dir in chain {
                    let rc = libc::mkdir(dir.as_ptr(), 0o711);
                    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                        step(rc, "making a mount point")?;
                    }
                }
                let source = fd_path(*fd);
                let Some(target) = chain.last() else { continue };
                step(
                    libc::mount(
                        source.as_ptr().cast(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ),
                    "binding a shown directory",
                )?;
                if *read_only {
                    step(
                        libc::mount(
                            std::ptr::null(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                            std::ptr::null(),
                        ),
                        "making a shown directory read-only",
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// `/proc/self/fd/N` as a NUL-terminated string, made without allocating.
fn fd_path(fd: libc::c_int) -> [u8; 32] {
    let mut out = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        out[prefix.len() + i] = *d;
    }
    out
}

/// The id system calls that take 32-bit ids: on 32-bit ARM and x86 the plain ones are the
/// 16-bit calls of old.
#[cfg(any(target_arch = "arm", target_arch = "x86"))]
mod ids {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const SETGID: libc::c_long = libc::SYS_setgid32;
    pub const SETUID: libc::c_long = libc::SYS_setuid32;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid32;
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid32;
}
#[cfg(not(any(target_arch = "arm", target_arch = "x86")))]
mod ids {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const SETGID: libc::c_long = libc::SYS_setgid;
    pub const SETUID: libc::c_long = libc::SYS_setuid;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid;
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid;
}

/// Becomes `uid`/`gid` (groups: `gid` alone) for good: in a child about to `exec`, whose only
/// thread this is, so raw syscalls change the whole process.
fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid];
    // SAFETY: setgroups reads one gid from a live array; setgid and setuid take plain ids.
    unsafe {
        if libc::syscall(ids::SETGROUPS, 1, groups.as_ptr()) != 0
            || libc::syscall(ids::SETGID, gid) != 0
            || libc::syscall(ids::SETUID, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets this thread's groups, fsgid and fsuid (never the process's: glibc's wrappers would set
/// every thread's, so these are raw syscalls). Root's file capabilities drop while the fsuid
/// is not 0.
fn take_fs_identity(uid: u32, gid: u32) -> Result<()> {
    let groups = [gid];
    // SAFETY: setgroups reads `groups.len()` gids from a live array; setfsgid and setfsuid take
    // plain ids and return the previous one.
    let set = unsafe {
        libc::syscall(ids::SETGROUPS, groups.len(), groups.as_ptr()) == 0 && {
            libc::syscall(ids::SETFSGID, gid);
            libc::syscall(ids::SETFSUID, uid);
            // Called again, each returns the id now in force.
            libc::syscall(ids::SETFSGID, gid) == gid as libc::c_long
                && libc::syscall(ids::SETFSUID, uid) == uid as libc::c_long
        }
    };
    if set {
        Ok(())
    } else {
        Err(Error::Process(format!(
            "cannot take the service user's identity (uid {uid}, gid {gid}) to reach its files: {}",
            io::Error::last_os_error()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_spelled_without_allocating() {
        let text = |fd| {
            let raw = fd_path(fd);
            let end = raw.iter().position(|b| *b == 0).unwrap();
            String::from_utf8(raw[..end].to_vec()).unwrap()
        };
        assert_eq!(text(0), "/proc/self/fd/0");
        assert_eq!(text(7), "/proc/self/fd/7");
        assert_eq!(text(1234567), "/proc/self/fd/1234567");
    }

    #[test]
    fn a_view_shows_only_directories_inside_the_data_dir() {
        let c = Confinement::new(1, 1, Path::new("/d"), &[Path::new("/d/services/web")]);
        let p = c
            .prepare(Some(Path::new("/d/services/web/releases/v1")))
            .unwrap();
        assert_eq!(
            p.shown[0],
            (
                vec![
                    CString::new("/d/services").unwrap(),
                    CString::new("/d/services/web").unwrap()
                ],
                false
            )
        );
        let err = Confinement::new(1, 1, Path::new("/d"), &[Path::new("/etc")])
            .prepare(None)
            .unwrap_err();
        assert!(
            err.to_string().contains("not inside the node's data dir"),
            "{err}"
        );
        assert!(
            Confinement::new(1, 1, Path::new("/d"), &[Path::new("/d")])
                .prepare(None)
                .is_err()
        );
        let nested = Confinement::new(1, 1, Path::new("/d"), &[Path::new("/d/a")])
            .showing_read_only(Path::new("/d/a/b"))
            .prepare(None)
            .unwrap_err();
        assert!(nested.to_string().contains("side by side"), "{nested}");
        let ro = c.showing_read_only(Path::new("/d/backups/web/1/hook"));
        assert!(ro.prepare(None).unwrap().shown[1].1, "shown read-only");
    }
}
