//! A node's data dir: where it lives, its layout, and crash-safe writes.
//!
//! ## Layout (mode 0700)
//! ```text
//! node.rec        NodeRecord: cluster id, name, role, listen/advertise, seeds. Written last by
//!                 init/join, so its presence means "this dir holds a complete identity".
//! ca.pem          cluster CA certificate
//! ca.key          cluster CA private key (0600; only on the node that ran `init`)
//! node.pem        this node's certificate
//! node.key        this node's private key (0600; never leaves the host)
//! tokens.rec      TokenBook: issued join tokens, secrets as SHA-256 only (0600)
//! generation.rec  GenerationRecord: the last gossip generation used
//! peers.rec       PeersRecord: recently seen members, seeds for the next start
//! admin.sock      the CLI's unix socket (0600), while the daemon runs
//! daemon.lock     held (flock) by the running daemon, so two daemons never share a dir
//! ```
//!
//! ## Guarantees
//! Every file is written to a temporary name, fsynced, renamed into place and the directory fsynced,
//! so a crash leaves either the old or the new file, never a torn one. Records are framed and
//! versioned by `halley_proto::codec`, so a file from another format version is refused by name.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use halley_proto::codec::{self, Record};
use halley_proto::disk::{LegacyTokenBook, NodeRecord, TokenBook};

use crate::error::{Error, Result};

/// Numbers the temp files of crash-safe writes in this process.
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A node's data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (not checked or created yet).
    /// A relative `root` is made absolute against the working directory now: slots, hooks and
    /// checks run in their release dir, where a relative path would name something else.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    /// The default when neither `--data-dir` nor `HALLEY_DATA_DIR` is given: `/var/lib/halley` as
    /// root, else `$XDG_DATA_HOME/halley` or `~/.local/share/halley`.
    pub fn default_root() -> PathBuf {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/halley");
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("halley");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/halley"),
            None => PathBuf::from("./halley-data"),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a file in the dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.file(ADMIN_SOCKET)
    }

    /// Creates the dir (mode 0700) for `init` or `join`, refusing one that already holds a node.
    pub fn create_fresh(&self) -> Result<()> {
        if self.file(NODE_RECORD).exists() {
            let who = self
                .read_record::<NodeRecord>(NODE_RECORD)
                .map(|n| format!(" (node {:?} of cluster {})", n.name.as_str(), n.cluster_id))
                .unwrap_or_default();
            return Err(Error::DataDir(format!(
                "data dir {} already holds a node identity{who}; use another --data-dir, or remove it to start over",
                self.root.display()
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(Error::io("cannot create data dir", &self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("cannot set mode 0700 on", &self.root))?;
        Ok(())
    }

    /// The dir's mode when others than its owner may enter it (an earlier version made it
    /// 0711 for services with `user`; they now reach their directories through a private view).
    pub fn loose_mode(&self) -> Option<u32> {
        let mode = fs::metadata(&self.root).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }

    /// Loads the node record, with a clear error when the dir was never initialised.
    pub fn load_node(&self) -> Result<NodeRecord> {
        if !self.file(NODE_RECORD).exists() {
            return Err(Error::DataDir(format!(
                "data dir {} holds no node: run 'halley-node init' or 'halley-node join TOKEN' with this --data-dir first",
                self.root.display()
            )));
        }
        self.read_record(NODE_RECORD)
    }

    /// Reads a record file.
    pub fn read_record<R: Record>(&self, name: &str) -> Result<R> {
        let path = self.file(name);
        let bytes = fs::read(&path).map_err(Error::io("cannot read", &path))?;
        codec::decode_record(&bytes).map_err(|e| {
            Error::DataDir(format!(
                "{} is unreadable: {e}. It may be from another halley-node version or damaged",
                path.display()
            ))
        })
    }

    /// Reads a record file, or the default when it does not exist.
    pub fn read_record_or_default<R: Record + Default>(&self, name: &str) -> Result<R> {
        if self.file(name).exists() {
            self.read_record(name)
        } else {
            Ok(R::default())
        }
    }

    /// Reads the token book, converting one written before tokens carried a role (its tokens
    /// then admit workers) and saving it in the new form.
    pub fn load_tokens(&self) -> Result<TokenBook> {
        let path = self.file(TOKENS);
        if !path.exists() {
            return Ok(TokenBook::default());
        }
        let bytes = fs::read(&path).map_err(Error::io("cannot read", &path))?;
        if let Ok(legacy) = codec::decode_record::<LegacyTokenBook>(&bytes) {
            let book = TokenBook::from(legacy);
            self.write_record(TOKENS, &book)?;
            return Ok(book);
        }
        self.read_record(TOKENS)
    }

    /// Writes a record file crash-safely with mode 0600.
    pub fn write_record<R: Record>(&self, name: &str, record: &R) -> Result<()> {
        let bytes = codec::encode_record(record)?;
        self.write_file(name, &bytes, 0o600)
    }

    /// Writes a file crash-safely (temp, fsync, rename, fsync dir) with `mode`.
    pub fn write_file(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let path = self.file(name);
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A temp name of its own per write: writers of the same file at once (two drivers of one
        // service) must not truncate or rename each other's temp file.
        let unique = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{file_name}.{}-{unique}.tmp", std::process::id()));
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(Error::io("cannot create", &tmp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io("cannot write (is the disk full?)", &tmp)(e)
            })?;
        drop(file);
        fs::rename(&tmp, &path).map_err(Error::io("cannot rename into place", &path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("cannot sync", &dir))?;
        Ok(())
    }

    /// Reads a whole file.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.file(name);
        fs::read(&path).map_err(Error::io("cannot read", &path))
    }

    /// Removes files written by a failed init or join, so nothing half-written is left.
    pub fn remove_files(&self, names: &[&str]) {
        for name in names {
            let _ = fs::remove_file(self.file(name));
        }
    }

    /// Writes a complete node identity, `node.rec` last. On any failure every file written so far
    /// is removed, so the dir is left as it was (init and join never leave half an identity).
    pub fn write_identity(&self, identity: &Identity<'_>) -> Result<()> {
        let mut written: Vec<&str> = Vec::new();
        let result = (|| {
            let mut put = |name: &'static str, bytes: &[u8], mode: u32| {
                self.write_file(name, bytes, mode)?;
                written.push(name);
                Ok::<(), Error>(())
            };
            put(CA_CERT, identity.ca_pem.as_bytes(), 0o644)?;
            if let Some(key) = identity.ca_key_pem {
                put(CA_KEY, key.as_bytes(), 0o600)?;
            }
            put(NODE_CERT, identity.node_pem.as_bytes(), 0o644)?;
            put(NODE_KEY, identity.node_key_pem.as_bytes(), 0o600)?;
            if let Some(book) = identity.tokens {
                put(TOKENS, &codec::encode_record(book)?, 0o600)?;
            }
            put(NODE_RECORD, &codec::encode_record(identity.record)?, 0o600)
        })();
        if result.is_err() {
            self.remove_files(&written);
        }
        result
    }

    /// Takes the daemon lock, failing if another daemon holds it. The lock lasts as long as the file.
    pub fn lock_daemon(&self) -> Result<File> {
        let path = self.file(DAEMON_LOCK);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("cannot open", &path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::DataDir(format!(
                "another halley-node is already running with data dir {}; stop it first or use another --data-dir",
                self.root.display()
            )));
        }
        Ok(file)
    }
}

/// Everything `init` or `join` writes.
pub struct Identity<'a> {
    /// CA certificate, PEM.
    pub ca_pem: &'a str,
    /// CA key, PEM (only on the node that ran `init`).
    pub ca_key_pem: Option<&'a str>,
    /// Node certificate, PEM.
    pub node_pem: &'a str,
    /// Node key, PEM.
    pub node_key_pem: &'a str,
    /// Token book (only on the node that ran `init`).
    pub tokens: Option<&'a halley_proto::disk::TokenBook>,
    /// The node record, written last.
    pub record: &'a NodeRecord,
}

/// File names in the data dir.
pub const NODE_RECORD: &str = "node.rec";
/// CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// CA key.
pub const CA_KEY: &str = "ca.key";
/// Node certificate.
pub const NODE_CERT: &str = "node.pem";
/// Node key.
pub const NODE_KEY: &str = "node.key";
/// Token book.
pub const TOKENS: &str = "tokens.rec";
/// Generation counter.
pub const GENERATION: &str = "generation.rec";
/// Known peers.
pub const PEERS: &str = "peers.rec";
/// Nodes `forget` dropped from the view.
pub const FORGOTTEN: &str = "forgotten.rec";
/// The operator's drain.
pub const DRAIN: &str = "drain.rec";
/// Admin socket.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Daemon lock.
pub const DAEMON_LOCK: &str = "daemon.lock";

#[cfg(test)]
mod tests {
    use super::*;
    use halley_proto::disk::GenerationRecord;

    #[test]
    fn fresh_dir_is_0700_and_records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("n1"));
        dir.create_fresh().unwrap();
        let mode = fs::metadata(dir.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.write_record(GENERATION, &GenerationRecord { last: 3 })
            .unwrap();
        let back: GenerationRecord = dir.read_record(GENERATION).unwrap();
        assert_eq!(back.last, 3);
        let mode = fs::metadata(dir.file(GENERATION))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn writers_of_one_file_at_once_never_fail_or_tear_it() {
        // Two coordinators' drivers may journal the same service at the same moment.
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let body = vec![t; 64 * 1024];
                    (0..100)
                        .filter(|_| dir.write_file("journal.rec", &body, 0o600).is_err())
                        .count()
                })
            })
            .collect();
        let failed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(failed, 0, "writes failed while others wrote the same file");
        let body = fs::read(dir.file("journal.rec")).unwrap();
        assert_eq!(body.len(), 64 * 1024);
        assert!(body.iter().all(|b| *b == body[0]), "a torn file");
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temp files left behind: {left:?}");
    }

    #[test]
    fn foreign_or_corrupt_files_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        dir.write_file(NODE_RECORD, b"HLEY\x00\x07\x00\x64\x00\x00\x00\x00", 0o600)
            .unwrap();
        let err = dir.load_node().unwrap_err().to_string();
        assert!(
            err.contains("node.rec") && err.contains("version 7"),
            "{err}"
        );
        let err = dir.create_fresh().unwrap_err().to_string();
        assert!(err.contains("already holds a node identity"), "{err}");
        let empty = DataDir::new(tmp.path().join("empty"));
        let err = empty.load_node().unwrap_err().to_string();
        assert!(err.contains("halley-node init"), "{err}");
    }

    #[test]
    fn second_daemon_lock_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let _held = dir.lock_daemon().unwrap();
        let err = dir.lock_daemon().unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
    }
}
