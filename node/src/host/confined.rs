//! Paths inside a service's data dir that this node (root) reads or writes for the service: a
//! snapshot's sources and a restore's targets. The service's user owns that dir and may have
//! planted symbolic links in it, aiming a root-run copy at `/etc/shadow` or a write at any file.
//!
//! ## Guarantees
//! - [`confined`] refuses a path that is absolute, climbs out (`..`), or passes through or ends
//!   in a symbolic link, checking each component that exists; so a copy made right after it
//!   stays inside the service's data dir.
//! - [`create_new`] makes a file that did not exist (`O_EXCL`, `O_NOFOLLOW`): a link planted at
//!   its name fails it rather than being followed.
//! - [`as_user`] reads and writes the service's files with the service user's file-system
//!   identity, seeing of the node's data dir only what the service's hooks see, its release and
//!   its data dir ([`Confinement::run`]), so what it opens is
//!   only what that user could open itself: a directory swapped for a link between
//!   [`confined`]'s check and the read (the service writes while a snapshot runs) leads nowhere
//!   the service could not reach already, and what a restore writes is the user's.
//!
//! ## Non-goals
//! A service without `user` runs as root and could read anything anyway, so its paths are read
//! and written as root.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::host::view::Confinement;

/// `root/rel`, checked to stay inside `root` (see the module's guarantees).
pub fn confined(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    let mut exists = true;
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => continue,
            _ => {
                return Err(Error::Invalid(format!(
                    "{rel:?} in [state] must be a path inside the service's data dir, without '..' or a leading '/'"
                )));
            }
        }
        if !exists {
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::Invalid(format!(
                    "{} is a symbolic link: halley-node never follows one out of the service's data dir when it snapshots or restores ({rel:?} in [state]); remove the link or point [state] at the real path",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => exists = false,
            Err(e) => return Err(Error::io("cannot inspect", &path)(e)),
        }
    }
    Ok(path)
}

/// Runs `read` confined to `user` ([`Confinement::run`]: a thread of its own that sees only
/// the directories `user` shows of the node's data dir, with the user's file-system identity),
/// or here as this process when `user` is `None`.
pub fn as_user<T: Send>(
    user: Option<&Confinement>,
    read: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match user {
        None => read(),
        Some(user) => user.run(read),
    }
}

/// Creates `path` as a new file with `mode`, never following a link at its name.
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::io("cannot create", path))
}

/// Removes whatever is at `path` (a file, a link, a directory tree) without following links.
pub fn clear(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_and_escapes_are_refused_and_plain_paths_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("data"), tmp.path().join("outside"));
        fs::create_dir_all(root.join("db")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        assert_eq!(
            confined(&root, "db/app.db").unwrap(),
            root.join("db/app.db")
        );
        assert_eq!(
            confined(&root, "new/dir/x").unwrap(),
            root.join("new/dir/x")
        );
        for bad in ["../outside/x", "/etc/shadow", "db/../../outside"] {
            assert!(
                confined(&root, bad)
                    .unwrap_err()
                    .to_string()
                    .contains("inside the service's data dir"),
                "{bad}"
            );
        }
        symlink(&outside, root.join("sub")).unwrap();
        symlink(outside.join("f"), root.join("db/link.db")).unwrap();
        for bad in ["sub/app.db", "db/link.db"] {
            assert!(
                confined(&root, bad)
                    .unwrap_err()
                    .to_string()
                    .contains("is a symbolic link"),
                "{bad}"
            );
        }
        symlink(outside.join("victim"), root.join("planted")).unwrap();
        assert!(create_new(&root.join("planted"), 0o600).is_err());
        assert!(!outside.join("victim").exists());
        clear(&root.join("planted"));
        assert!(create_new(&root.join("planted"), 0o600).is_ok());
    }
}
