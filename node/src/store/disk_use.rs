//! How much disk a directory tree takes: what `status` and the metrics report for the data dir.
//!
//! ## Guarantees
//! - Counts allocated blocks (`st_blocks`), not apparent sizes, so sparse files and small files
//!   count as the card sees them; a file with several hard links in the tree counts once.
//! - Never follows a symlink and never descends more than [`MAX_DEPTH`] levels, so a tree a
//!   service made cannot make the walk loop or run away.
//! - Entries that vanish or cannot be read while walking are skipped: the figure is a measure,
//!   not an inventory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Levels below the root the walk descends.
pub const MAX_DEPTH: usize = 64;

/// Bytes allocated on disk to `root` and everything under it.
pub fn bytes_used(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(root, 0, &mut seen, &mut total);
    total
}

/// Bytes an unprivileged user may still write on the file system holding `path`.
pub fn bytes_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn walk(path: &Path, depth: usize, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return;
    }
    *total = total.saturating_add(meta.blocks().saturating_mul(512));
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        walk(&entry.path(), depth + 1, seen, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_once_per_file_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let empty = bytes_used(dir.path());
        std::fs::write(dir.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let used = bytes_used(dir.path()) - empty;
        assert!(
            (100_000..120_000).contains(&used),
            "one 100 kB file, linked twice, and a symlink: {used}"
        );
    }
}
