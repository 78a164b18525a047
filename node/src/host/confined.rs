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
//!
//! ## Non-goals
//! Races with a process of the service changing the tree between the check and the copy.
//! Restores run with the service's slots stopped, so nothing of the service's races them. A
//! snapshot runs while the service writes: a service that swaps a checked directory for a link
//! at the right moment could still make root read through it into the backup (walking by
//! directory handle, `openat2` with `RESOLVE_NO_SYMLINKS`, would close that; not done yet).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

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
