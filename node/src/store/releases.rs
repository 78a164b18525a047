//! Release artifacts: stored by SHA-256, checked, and unpacked to one directory per service and
//! version.
//!
//! An artifact is a `.tar.gz` or `.tar.zst` of a directory (unpacked as it is: `command` paths are
//! relative to the archive's root), or a single executable (an ELF binary or a `#!` script, placed
//! in the release directory under its own file name). The kind is read from the first bytes, not
//! from the file name.
//!
//! ## Guarantees
//! - An artifact is copied into `artifacts/SHA256` while being hashed and renamed into place only
//!   when complete and matching the expected hash, so the store never holds a partial or wrong
//!   file under a good name.
//! - The stored file is hashed again before every unpack, so a file corrupted on disk is refused.
//! - Entries that would land outside the release directory are refused with the entry's name:
//!   absolute paths, `..`, symlinks whose target leaves the directory, hard links out of it, and
//!   devices or FIFOs. Unpacking goes to a temporary directory that is renamed into place only on
//!   success and removed on any failure (including a full disk), so a half-unpacked release never
//!   exists under its version's name.
//! - Crash-safe: an artifact is fsynced before its rename and its directory after; an unpacked
//!   release's filesystem is synced (`syncfs`) before the rename that names it, and its parent
//!   after, so a power cut never leaves a named release or artifact with lost contents.
//!
//! ## Non-goals
//! No signature checking: the hash proves integrity in transit and at rest, not who built it.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use halley_proto::deploy::ReleaseVersion;
use halley_proto::hex;
use halley_proto::spec::ServiceName;
use ring::digest;

use crate::error::{Error, Result};

/// The largest artifact piece sent in one request: each is an RPC well under the frame limit.
pub const CHUNK: usize = 1 << 20;
/// The mode of an unpacked release's directory.
pub const RELEASE_MODE: u32 = 0o750;

/// The artifact store and the unpacked releases of a node.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

/// What kind of artifact a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TarGz,
    TarZst,
    Executable,
}

impl Releases {
    /// The store in the data dir at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Where a stored artifact lives.
    pub fn artifact_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.artifacts().join(hex::encode(sha256))
    }

    /// A service's directory.
    pub fn service_dir(&self, service: &ServiceName) -> PathBuf {
        self.root.join("services").join(service.as_str())
    }

    /// Where a release is unpacked.
    pub fn release_dir(&self, service: &ServiceName, version: &ReleaseVersion) -> PathBuf {
        self.service_dir(service)
            .join("releases")
            .join(version.as_str())
    }

    /// Copies a local file into the store, hashing it on the way. If `expected` is given the hash
    /// must match. Returns the hash.
    pub fn store_local(&self, path: &Path, expected: Option<[u8; 32]>) -> Result<[u8; 32]> {
        let dir = self.artifacts();
        fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
        let mut source = File::open(path).map_err(Error::io("cannot open artifact", path))?;
        if source.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(not_a_file(path));
        }
        let tmp = dir.join(format!(".incoming-{}", std::process::id()));
        let result = (|| {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("cannot create", &tmp))?;
            let sha = copy_hashing(&mut source, &mut out)
                .map_err(Error::io("cannot store artifact (is the disk full?)", &tmp))?;
            out.sync_all()
                .map_err(Error::io("cannot store artifact (is the disk full?)", &tmp))?;
            if let Some(want) = expected
                && want != sha
            {
                return Err(Error::Artifact(format!(
                    "artifact {} has SHA-256 {}, but {} was expected; it was changed or damaged in transit, so nothing was deployed",
                    path.display(),
                    hex::encode(&sha),
                    hex::encode(&want)
                )));
            }
            let dest = self.artifact_path(&sha);
            fs::rename(&tmp, &dest).map_err(Error::io("cannot rename into place", &dest))?;
            sync_dir(&dir)?;
            Ok(sha)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn partial_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.artifacts()
            .join(format!(".part-{}", hex::encode(sha256)))
    }

    /// How much of an artifact is here: `(bytes, complete)`. A complete one is touched: it is
    /// asked about because a deploy is about to use it, and a sweep leaves what was touched
    /// recently ([`crate::store::sweep::GRACE`]).
    pub fn artifact_received(&self, sha256: &[u8; 32]) -> (u64, bool) {
        let stored = self.artifact_path(sha256);
        if let Ok(meta) = fs::metadata(&stored) {
            if let Ok(f) = File::open(&stored) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return (meta.len(), true);
        }
        let partial = fs::metadata(self.partial_path(sha256)).map_or(0, |m| m.len());
        (partial, false)
    }

    /// Appends a piece of an artifact sent by a coordinator. A piece whose `offset` is not what
    /// is held is ignored and the held length returned, so the sender resumes from there (after
    /// a dropped connection, say). The last piece is checked against the hash before the
    /// artifact is stored under it. Returns `(bytes held, complete)`.
    pub fn put_chunk(
        &self,
        sha256: &[u8; 32],
        total: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(u64, bool)> {
        let (held, complete) = self.artifact_received(sha256);
        if complete {
            return Ok((held, true));
        }
        if held != offset {
            return Ok((held, false));
        }
        if offset + data.len() as u64 > total {
            let _ = fs::remove_file(self.partial_path(sha256));
            return Err(Error::Artifact(format!(
                "artifact {} is longer than the {total} bytes announced; transfer restarted",
                hex::encode(sha256)
            )));
        }
        let dir = self.artifacts();
        fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
        let partial = self.partial_path(sha256);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&partial)
            .map_err(Error::io("cannot open", &partial))?;
        file.write_all(data)
            .map_err(Error::io("cannot write (is the disk full?)", &partial))?;
        let held = offset + data.len() as u64;
        if held < total {
            return Ok((held, false));
        }
        file.sync_all()
            .map_err(Error::io("cannot write (is the disk full?)", &partial))?;
        drop(file);
        let mut check = File::open(&partial).map_err(Error::io("cannot open", &partial))?;
        let got = copy_hashing(&mut check, &mut io::sink())
            .map_err(Error::io("cannot read", &partial))?;
        if &got != sha256 {
            let _ = fs::remove_file(&partial);
            return Err(Error::Artifact(format!(
                "the artifact received has SHA-256 {}, not {}; it was damaged in transit and is discarded",
                hex::encode(&got),
                hex::encode(sha256)
            )));
        }
        let dest = self.artifact_path(sha256);
        fs::rename(&partial, &dest).map_err(Error::io("cannot rename into place", &dest))?;
        sync_dir(&self.artifacts())?;
        Ok((total, true))
    }

    /// A piece of a stored artifact: `(total size, bytes from offset, at most max)`.
    pub fn read_chunk(&self, sha256: &[u8; 32], offset: u64, max: usize) -> Result<(u64, Vec<u8>)> {
        use std::io::{Seek, SeekFrom};
        let path = self.artifact_path(sha256);
        let mut file =
            File::open(&path).map_err(Error::io("cannot open stored artifact", &path))?;
        let total = file
            .metadata()
            .map_err(Error::io("cannot read", &path))?
            .len();
        file.seek(SeekFrom::Start(offset.min(total)))
            .map_err(Error::io("cannot read", &path))?;
        let mut data = Vec::with_capacity(max);
        file.take(max as u64)
            .read_to_end(&mut data)
            .map_err(Error::io("cannot read", &path))?;
        Ok((total, data))
    }

    /// Hashes a stored artifact again and refuses it if it changed on disk.
    pub fn verify_stored(&self, sha256: &[u8; 32]) -> Result<()> {
        let path = self.artifact_path(sha256);
        let mut file =
            File::open(&path).map_err(Error::io("cannot open stored artifact", &path))?;
        let got = copy_hashing(&mut file, &mut io::sink())
            .map_err(Error::io("cannot read stored artifact", &path))?;
        if &got != sha256 {
            return Err(Error::Artifact(format!(
                "stored artifact {} is corrupt (its SHA-256 is now {}); remove it and deploy again",
                path.display(),
                hex::encode(&got)
            )));
        }
        Ok(())
    }

    /// Unpacks a stored artifact as `version` of `service`. Returns the release directory and
    /// whether it was unpacked now (false: that version was already unpacked from the same
    /// artifact). A version already unpacked from another artifact is refused.
    pub fn unpack(
        &self,
        service: &ServiceName,
        version: &ReleaseVersion,
        sha256: &[u8; 32],
        file_name: &str,
    ) -> Result<(PathBuf, bool)> {
        let dest = self.release_dir(service, version);
        let marker = dest.join(".halley-artifact");
        if dest.exists() {
            let recorded = fs::read_to_string(&marker).unwrap_or_default();
            if recorded.trim() == hex::encode(sha256) {
                return Ok((dest, false));
            }
            return Err(Error::Artifact(format!(
                "release {version} of {service} is already on this node from another artifact (SHA-256 {}); give the new build a new --version",
                if recorded.is_empty() {
                    "unknown"
                } else {
                    recorded.trim()
                }
            )));
        }
        // A sweep beside this unpack keeps an artifact touched within its grace.
        let stored = self.artifact_path(sha256);
        if let Ok(f) = File::open(&stored) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        self.verify_stored(sha256)?;
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(Error::io("cannot create", &parent))?;
        let tmp = parent.join(format!(".partial-{version}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| {
            fs::create_dir(&tmp).map_err(Error::io("cannot create", &tmp))?;
            let source = self.artifact_path(sha256);
            unpack_into(&source, file_name, &tmp)?;
            fs::write(tmp.join(".halley-artifact"), hex::encode(sha256))
                .map_err(Error::io("cannot write (is the disk full?)", &tmp))?;
            // Nobody but root and (once a slot of a service with `user` starts) that user's
            // group enters a release.
            fs::set_permissions(&tmp, fs::Permissions::from_mode(RELEASE_MODE))
                .map_err(Error::io("cannot set the mode of", &tmp))?;
            // Everything is on disk before the release is trusted under its name.
            sync_tree(&tmp)?;
            fs::rename(&tmp, &dest).map_err(Error::io("cannot rename into place", &dest))?;
            sync_dir(&parent)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok((dest, true))
    }

    /// Removes an unpacked release.
    pub fn remove_release(&self, service: &ServiceName, version: &ReleaseVersion) -> Result<()> {
        let dir = self.release_dir(service, version);
        fs::remove_dir_all(&dir).map_err(Error::io("cannot remove", &dir))
    }
}

/// Copies `source` to `out` and returns the SHA-256 of what went through (`io::sink()` to only
/// hash it).
pub fn copy_hashing(source: &mut impl Read, out: &mut impl Write) -> io::Result<[u8; 32]> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok(sha)
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync", dir))
}

/// Flushes everything written under `dir` to disk: one `syncfs(2)` of its filesystem, which
/// costs the same for a release of ten files or of a hundred thousand (a virtualenv), and needs
/// no read access to files an archive unpacked without it.
fn sync_tree(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).map_err(Error::io("cannot open", dir))?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(Error::io("cannot sync", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

fn kind_of(path: &Path) -> Result<Kind> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
    let n = file
        .read(&mut head)
        .map_err(Error::io("cannot read", path))?;
    match &head[..n] {
        [0x1f, 0x8b, ..] => Ok(Kind::TarGz),
        [0x28, 0xb5, 0x2f, 0xfd] => Ok(Kind::TarZst),
        [0x7f, b'E', b'L', b'F'] | [b'#', b'!', ..] => Ok(Kind::Executable),
        other => Err(Error::Artifact(format!(
            "the artifact is not a .tar.gz, a .tar.zst or an executable (it starts with bytes {other:02x?}); package the release directory with 'tar czf' or pass the binary itself"
        ))),
    }
}

fn unpack_into(source: &Path, file_name: &str, dest: &Path) -> Result<()> {
    let kind = kind_of(source)?;
    let file = File::open(source).map_err(Error::io("cannot open", source))?;
    match kind {
        Kind::Executable => {
            let name = Path::new(file_name)
                .file_name()
                .filter(|n| !n.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("app"));
            let target = dest.join(name);
            fs::copy(source, &target)
                .map_err(Error::io("cannot write (is the disk full?)", &target))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                .map_err(Error::io("cannot chmod", &target))?;
            Ok(())
        }
        Kind::TarGz => unpack_tar(flate2::read::GzDecoder::new(BufReader::new(file)), dest),
        Kind::TarZst => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(BufReader::new(file))
                .map_err(|e| Error::Artifact(format!("the .tar.zst artifact is damaged: {e}")))?;
            unpack_tar(decoder, dest)
        }
    }
}

/// Unpacks a tar stream into `dest`, refusing entries that would land outside it.
pub(crate) fn unpack_tar(reader: impl Read, dest: &Path) -> Result<()> {
    let damaged = |e: io::Error| Error::Artifact(format!("the archive is damaged: {e}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let shown = path.display().to_string();
        if !is_inside(&path) {
            return Err(escape(&shown, "its path leaves the release directory"));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory | T::GNUSparse => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(damaged)?
                    .ok_or_else(|| escape(&shown, "it is a symlink without a target"))?;
                let base = path.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || !is_inside(&base.join(&target)) {
                    return Err(escaping_link(&shown, &target));
                }
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(damaged)?
                    .ok_or_else(|| escape(&shown, "it is a hard link without a target"))?;
                if !is_inside(&target) {
                    return Err(escape(
                        &shown,
                        &format!(
                            "it is a hard link to {}, outside the release directory",
                            target.display()
                        ),
                    ));
                }
            }
            other => {
                return Err(escape(
                    &shown,
                    &format!(
                        "it is a {other:?} entry; only files, directories and links are allowed"
                    ),
                ));
            }
        }
        let placed = entry.unpack_in(dest).map_err(|e| {
            Error::Artifact(format!("cannot unpack {shown:?}: {e} (is the disk full?)"))
        })?;
        if !placed {
            return Err(escape(&shown, "its path leaves the release directory"));
        }
    }
    Ok(())
}

fn escape(entry: &str, why: &str) -> Error {
    Error::Artifact(format!(
        "refused archive entry {entry:?}: {why}. Nothing was deployed; rebuild the archive from inside the release directory (tar czf app.tar.gz -C DIR .)"
    ))
}

/// A symlink out of the release: the host it lands on may not have its target, and a service
/// must not reach outside its release through one.
fn escaping_link(entry: &str, target: &Path) -> Error {
    Error::Artifact(format!(
        "refused archive entry {entry:?}: it is a symlink to {}, outside the release directory. Nothing was deployed. A release may link only to its own files; a Python virtualenv links to this machine's interpreter, so vendor the packages into the release instead (pip install --target DIR/vendor -r requirements.txt, and PYTHONPATH=vendor in env), or replace the link with the file (tar --dereference); docs/packaging.md shows how",
        target.display()
    ))
}

/// A directory given as the artifact.
pub fn not_a_file(path: &Path) -> Error {
    Error::Artifact(format!(
        "the artifact {} is a directory; deploy takes an archive of it or a single executable: tar czf app.tar.gz -C {} . and give --artifact app.tar.gz",
        path.display(),
        path.display()
    ))
}

/// Whether a relative path stays inside its root when `..` is resolved lexically.
fn is_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_resume_at_what_is_held_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Releases::new(dir.path());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&data);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ctx.finish().as_ref());
        let total = data.len() as u64;
        assert_eq!(
            store.put_chunk(&sha, total, 0, &data[..4000]).unwrap(),
            (4000, false)
        );
        // A resend of an old piece (the reply was lost) only reports what is held.
        assert_eq!(
            store.put_chunk(&sha, total, 0, &data[..4000]).unwrap(),
            (4000, false)
        );
        assert_eq!(store.artifact_received(&sha), (4000, false));
        assert_eq!(
            store.put_chunk(&sha, total, 4000, &data[4000..]).unwrap(),
            (total, true)
        );
        assert_eq!(
            store.read_chunk(&sha, 9000, 4096).unwrap(),
            (total, data[9000..].to_vec())
        );
        // Damage in transit is caught by the hash.
        let other = [7u8; 32];
        assert!(store.put_chunk(&other, 3, 0, b"abc").is_err());
        assert_eq!(store.artifact_received(&other), (0, false));
    }

    #[test]
    fn lexical_containment() {
        assert!(is_inside(Path::new("a/b/../c")));
        assert!(is_inside(Path::new("./a")));
        assert!(!is_inside(Path::new("../a")));
        assert!(!is_inside(Path::new("a/../../b")));
        assert!(!is_inside(Path::new("/etc/passwd")));
    }
}
