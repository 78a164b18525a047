//! The node crate's one error type. The CLI wraps it with anyhow at the edge only.

use std::path::PathBuf;

use halley_proto::message::{ErrorKind, ErrorReply};

/// Everything a node operation can fail with. Each message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A network operation failed.
    #[error("{0}")]
    Net(String),
    /// Decoding or encoding failed.
    #[error(transparent)]
    Proto(#[from] halley_proto::Error),
    /// The data dir is missing, already used, or written by another version.
    #[error("{0}")]
    DataDir(String),
    /// Certificates or keys could not be made or checked.
    #[error("certificate error: {0}")]
    Pki(String),
    /// The join server's certificate chain does not end at the CA pinned by the token.
    #[error(
        "the node at {addr} presented a certificate chain that does not end at the cluster CA named in the token; a man-in-the-middle is possible, so nothing was sent. Check the address, or ask for a fresh token"
    )]
    CaPinMismatch {
        /// The address dialled.
        addr: std::net::SocketAddr,
    },
    /// A peer or the local node answered a request with an error.
    #[error("{}", .0.message)]
    Remote(ErrorReply),
    /// The local daemon is not running (no admin socket).
    #[error(
        "no halley-node is running for data dir {data_dir}: cannot reach {socket} ({source}). Start it with 'halley-node run --data-dir {data_dir}'"
    )]
    NotRunning {
        /// The data dir.
        data_dir: PathBuf,
        /// The socket path.
        socket: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// A peer sent something that makes no sense at this point of a conversation.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad argument or configuration value.
    #[error("{0}")]
    Invalid(String),
    /// A release artifact is damaged, of an unknown kind, or would escape its directory.
    #[error("{0}")]
    Artifact(String),
    /// A service process could not be started or stopped.
    #[error("{0}")]
    Process(String),
}

impl Error {
    /// Wraps an IO error with what was being done and where.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answer to a request: what went wrong, of a kind the caller can act on.
pub fn error_reply(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

/// An error answer for a request that makes no sense (the caller must change it).
pub fn bad_request(message: &str) -> ErrorReply {
    error_reply(ErrorKind::BadRequest, message)
}

/// An error answer for a failure of this node, not of the request.
pub fn internal(message: &str) -> ErrorReply {
    error_reply(ErrorKind::Internal, message)
}
