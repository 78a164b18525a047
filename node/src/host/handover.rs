//! Directories of root's that a state command running as the service's user works in, and how
//! they come back: a backup command's dump dir, a backup lent for reading to `restore` and
//! `verify`, a scratch restore given to `verify`.
//!
//! ## Guarantees
//! - [`give`] hands a tree to the user only while no process of the user's can reach it (fresh,
//!   under root's 0700 backup dir, shown to no view yet), so walking it by path races nobody.
//! - [`take_back`] treats what the user returns as hostile: it walks by file descriptor, each
//!   entry opened relative to its directory without following a link and without blocking on a
//!   FIFO, takes each directory back (root's, 0700) before reading its entries, so nothing new
//!   can be added behind the walk, and refuses links, devices, FIFOs, sockets and files with more
//!   than one name (a hard link to another's file); what it accepts is root's 0600.
//! - [`lend`] makes a root-owned tree readable to the user's group (0750/0640) for one command,
//!   shown read-only in its view; [`Lent`] puts it back (0700/0600, group root) when dropped.
//!   The user never owns it, so it can neither change it nor plant anything in it.
//!
//! ## Non-goals
//! A process the command left behind keeps what it had open; the backup's hashes, checked
//! before every restore, catch a dump changed that way.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Gives the fresh tree at `dir` to `uid`/`gid`: see the module's guarantees for when this is
/// safe.
pub fn give(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(Error::io("cannot inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(Error::io("cannot hand over", dir))?;
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(Error::io("cannot read", dir))? {
            let entry = entry.map_err(Error::io("cannot read", dir))?;
            give(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// How deep a tree handed back may be.
const MAX_DEPTH: usize = 32;

/// Takes back the tree at `dir` that user `uid` wrote, making it root's (dirs 0700, files
/// 0600), or refuses it, naming what is wrong; see the module's guarantees.
pub fn take_back(dir: &Path, uid: u32) -> Result<()> {
    let top = open_entry(None, dir, dir)?;
    take(top, dir, uid, 0)
}

fn take(file: File, path: &Path, uid: u32, depth: usize) -> Result<()> {
    let meta = file.metadata().map_err(Error::io("cannot inspect", path))?;
    let kind = meta.file_type();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(Error::Invalid(format!(
            "{} belongs to uid {}, not to the service's user: a backup command may leave only its own files in HALLEY_BACKUP_DIR",
            path.display(),
            meta.uid()
        )));
    }
    if depth > MAX_DEPTH {
        return Err(Error::Invalid(format!(
            "{} is nested over {MAX_DEPTH} directories deep in HALLEY_BACKUP_DIR; keep a backup command's output flatter",
            path.display()
        )));
    }
    if kind.is_file() && meta.nlink() > 1 {
        return Err(Error::Invalid(format!(
            "{} has other names (a hard link): a backup command must write its own files into HALLEY_BACKUP_DIR, not link others",
            path.display()
        )));
    }
    if !kind.is_file() && !kind.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a regular file or a directory: a backup command may leave only files and directories in HALLEY_BACKUP_DIR",
            path.display()
        )));
    }
    std::os::unix::fs::fchown(&file, Some(0), Some(0))
        .map_err(Error::io("cannot take back", path))?;
    let mode = if kind.is_dir() { 0o700 } else { 0o600 };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::io("cannot take back", path))?;
    if kind.is_dir() {
        // Listed through the descriptor (the same directory, whatever its name leads to now).
        let listing = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        for entry in fs::read_dir(&listing).map_err(Error::io("cannot read", path))? {
            let name = entry.map_err(Error::io("cannot read", path))?.file_name();
            let child = path.join(&name);
            take(
                open_entry(Some(&file), Path::new(&name), &child)?,
                &child,
                uid,
                depth + 1,
            )?;
        }
    }
    Ok(())
}

/// Opens `name` (relative to `parent`, or as a path when `None`) without following a link or
/// blocking on a FIFO; `shown` names it in errors.
fn open_entry(parent: Option<&File>, name: &Path, shown: &Path) -> Result<File> {
    let c = std::ffi::CString::new(name.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", shown.display())))?;
    let dirfd = parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd());
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: openat with a live directory fd (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(Error::Invalid(format!(
                "{} is a symbolic link: a backup command may leave only files and directories in HALLEY_BACKUP_DIR",
                shown.display()
            )));
        }
        return Err(Error::io("cannot open", shown)(e));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A tree lent for reading; put back (root's alone) when dropped.
#[must_use = "the tree is put back when this is dropped"]
pub struct Lent {
    dir: PathBuf,
}

/// Lends the root-owned tree at `dir` to group `gid` for reading (dirs 0750, files 0640).
pub fn lend(dir: &Path, gid: u32) -> Result<Lent> {
    let lent = Lent {
        dir: dir.to_path_buf(),
    };
    set_tree(dir, gid, 0o750, 0o640)?;
    Ok(lent)
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Err(e) = set_tree(&self.dir, 0, 0o700, 0o600) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot take a lent backup back");
        }
    }
}

/// Sets group and modes over a root-owned tree in root's own dir (nothing else can change it
/// meanwhile); links are left alone, never followed.
fn set_tree(dir: &Path, gid: u32, dir_mode: u32, file_mode: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(Error::io("cannot inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(0), Some(gid)).map_err(Error::io("cannot lend", dir))?;
    let mode = if meta.is_dir() { dir_mode } else { file_mode };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(Error::io("cannot lend", dir))?;
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(Error::io("cannot read", dir))? {
            let entry = entry.map_err(Error::io("cannot read", dir))?;
            set_tree(&entry.path(), gid, dir_mode, file_mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Changing owners needs root; a node that is not root never confines anything.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn what_comes_back_is_files_and_directories_only() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dump = tmp.path().join("hook");
        fs::create_dir_all(dump.join("sub")).unwrap();
        fs::write(dump.join("sub/dump.sql"), "data").unwrap();
        take_back(&dump, 0).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dump.join("sub")), 0o700);
        assert_eq!(mode(&dump.join("sub/dump.sql")), 0o600);

        let victim = tmp.path().join("victim");
        fs::write(&victim, "someone else's").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&victim, dump.join("sub/link")).unwrap();
        let err = take_back(&dump, 0).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(mode(&victim), 0o644, "a link is never followed");
        fs::remove_file(dump.join("sub/link")).unwrap();

        fs::hard_link(&victim, dump.join("linked")).unwrap();
        let err = take_back(&dump, 0).unwrap_err().to_string();
        assert!(err.contains("hard link"), "{err}");
        assert_eq!(mode(&victim), 0o644);
        fs::remove_file(dump.join("linked")).unwrap();

        let fifo =
            std::ffi::CString::new(dump.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = take_back(&dump, 0).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_lent_tree_is_readable_to_the_group_and_root_s_again_after() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hook");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("dump"), "x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        {
            let _lent = lend(&dir, 0).unwrap();
            assert_eq!((mode(&dir), mode(&dir.join("dump"))), (0o750, 0o640));
        }
        assert_eq!((mode(&dir), mode(&dir.join("dump"))), (0o700, 0o600));
    }
}
