//! The admin channel between the CLI and its local node: a unix socket in the data dir, mode 0600
//! (the data dir itself is 0700). There is no TCP admin port. One request frame, one reply frame.
//!
//! ## Guarantees
//! - Only root and the data dir's owner are served, whatever the socket's and the dir's modes
//!   have become: the caller's uid comes from the kernel (`SO_PEERCRED`), not from the request.
//! - A client that has not sent its request within [`IDLE_TIMEOUT`] is dropped, so idle clients
//!   cannot pile up.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use halley_proto::codec::{self, HANDOVER_VERSION, Header, PROTOCOL_VERSION};
use halley_proto::handover::Handover;
use halley_proto::message::{AdminRequest, AdminResponse, ErrorKind, ErrorReply};
use halley_proto::{Limit, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::mesh::framing::{read_body, read_header, read_message, write_message};
use crate::store::datadir::DataDir;

/// How long an upgrade may go without a word: the new daemon's start, its takeover and the old
/// one's drain; with `--all`, one member's shipping and takeover.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a CLI request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client may take to send its request after connecting.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles admin requests.
#[async_trait::async_trait]
pub trait AdminHandler: Send + Sync + 'static {
    /// Answers one request.
    async fn admin(&self, request: AdminRequest) -> AdminResponse;
    /// Takes an `upgrade` (of every member if `all`) to `binary`, answering on `cli` as it goes
    /// and when it is over.
    async fn upgrade(&self, binary: Option<String>, all: bool, cli: UnixStream);
}

/// Binds the admin socket (replacing a stale one: the caller holds the daemon lock) and serves it.
pub fn serve(
    data_dir: &DataDir,
    handler: Arc<dyn AdminHandler>,
) -> Result<tokio::task::JoinHandle<()>> {
    let path = data_dir.admin_socket();
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(Error::io("cannot bind admin socket", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io("cannot set mode 0600 on", &path))?;
    let owner = std::fs::metadata(data_dir.root())
        .map_err(Error::io("cannot read", data_dir.root()))?
        .uid();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_one(stream, handler.clone(), owner));
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn serve_one(mut stream: UnixStream, handler: Arc<dyn AdminHandler>, owner: u32) {
    let uid = stream.peer_cred().map(|c| c.uid());
    if !matches!(uid, Ok(u) if u == 0 || u == owner) {
        let who = uid.map_or_else(|e| format!("an unknown user ({e})"), |u| format!("uid {u}"));
        warn!(caller = %who, "admin socket: refused a client that is neither root nor the data dir's owner");
        let reply = AdminResponse::Error(ErrorReply {
            kind: ErrorKind::Unauthorised,
            message: format!(
                "refused: {who} is neither root nor the owner (uid {owner}) of this node's data dir; run halley-node as one of them"
            ),
        });
        // Take the request first (within the small limit a stranger gets, never acted on), so
        // that the client is not cut off mid-write and sees why.
        let _ = tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut stream, Limit::Join)).await;
        let _ = write_message(&mut stream, &Message::AdminResponse(reply), Limit::Rpc).await;
        return;
    }
    let read = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut stream)).await;
    let Ok(read) = read else {
        debug!("admin client sent no request in time; dropped");
        return;
    };
    let read = match read {
        Ok(Request::Upgrade { binary, all }) => return handler.upgrade(binary, all, stream).await,
        Ok(Request::Admin(message)) => Ok(message.map(|m| *m)),
        Err(e) => Err(e),
    };
    let reply = match read {
        Ok(Some(Message::AdminRequest(request))) => handler.admin(request).await,
        Ok(None) => return,
        Ok(Some(other)) => AdminResponse::Error(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("expected an admin request, got {}", other.kind()),
        }),
        Err(e) => AdminResponse::Error(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("bad admin request: {e}"),
        }),
    };
    if let Err(e) = write_message(&mut stream, &Message::AdminResponse(reply), Limit::Rpc).await {
        debug!(error = %e, "admin reply not delivered");
    }
}

/// What a CLI sent: a wire-protocol request, or an upgrade (whose frames every build reads).
enum Request {
    Admin(Option<Box<Message>>),
    Upgrade { binary: Option<String>, all: bool },
}

async fn read_request(stream: &mut UnixStream) -> Result<Request> {
    let Some(header) = read_header(stream).await? else {
        return Ok(Request::Admin(None));
    };
    // Peeked without a limit's check: each kind's own parse checks it.
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version == HANDOVER_VERSION {
        let parsed = Header::parse(&header, HANDOVER_VERSION, Limit::Join)?;
        let body = read_body(stream, &parsed).await?;
        return match codec::decode_handover_body(&parsed, &body)? {
            Handover::Upgrade { binary } => Ok(Request::Upgrade { binary, all: false }),
            Handover::UpgradeAll { binary } => Ok(Request::Upgrade { binary, all: true }),
            other => Err(Error::Protocol(format!(
                "the admin socket takes 'upgrade' of the upgrade steps, not {other:?}"
            ))),
        };
    }
    let parsed = Header::parse(&header, PROTOCOL_VERSION, Limit::Rpc)?;
    let body = read_body(stream, &parsed).await?;
    Ok(Request::Admin(Some(Box::new(codec::decode_message_body(
        &parsed,
        &body,
        Limit::Rpc,
    )?))))
}

/// Asks the node running on `data_dir` to replace itself (or, with `all`, every live member,
/// this node last) with `binary` (see [`crate::daemon::upgrade`]); `progress` gets each line
/// the node reports on the way. Returns the last answer: `Upgraded` or `Failed`.
pub async fn call_upgrade(
    data_dir: &DataDir,
    binary: Option<String>,
    all: bool,
    mut progress: impl FnMut(&str),
) -> Result<Handover> {
    let (socket, mut stream) = connect(data_dir).await?;
    let request = match all {
        false => Handover::Upgrade { binary },
        true => Handover::UpgradeAll { binary },
    };
    stream
        .write_all(&codec::encode_handover(&request)?)
        .await
        .map_err(|e| Error::Net(format!("write failed: {e}")))?;
    loop {
        let next = async {
            let header = read_header(&mut stream).await?.ok_or_else(|| {
                Error::Net("the node closed the admin socket without an answer; see its log".into())
            })?;
            let parsed = Header::parse(&header, HANDOVER_VERSION, Limit::Join)?;
            let body = read_body(&mut stream, &parsed).await?;
            Ok::<_, Error>(codec::decode_handover_body(&parsed, &body)?)
        };
        // Each member's step may take a while; the wait starts again with every line.
        let frame = tokio::time::timeout(UPGRADE_TIMEOUT, next)
            .await
            .map_err(|_| {
                Error::Net(format!(
                    "the node on {} said nothing of the upgrade for {}s; see its log",
                    socket.display(),
                    UPGRADE_TIMEOUT.as_secs()
                ))
            })??;
        match frame {
            Handover::Progress { line } => progress(&line),
            last => return Ok(last),
        }
    }
}

/// Connects to the admin socket of the node running on `data_dir`.
async fn connect(data_dir: &DataDir) -> Result<(std::path::PathBuf, UnixStream)> {
    let socket = data_dir.admin_socket();
    if !socket.exists() {
        // Say "not initialised" rather than "not running" when that is the real problem.
        data_dir.load_node()?;
    }
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|source| Error::NotRunning {
            data_dir: data_dir.root().to_path_buf(),
            socket: socket.clone(),
            source,
        })?;
    Ok((socket, stream))
}

/// Sends one request to the node running on `data_dir` and returns its answer.
pub async fn call(data_dir: &DataDir, request: AdminRequest) -> Result<AdminResponse> {
    call_within(data_dir, request, REQUEST_TIMEOUT).await
}

/// Like [`call`], waiting up to `timeout` for the answer (deploy steps that wait for health or a
/// drain bound themselves on the node's side).
pub async fn call_within(
    data_dir: &DataDir,
    request: AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse> {
    let (socket, mut stream) = connect(data_dir).await?;
    let exchange = async {
        write_message(&mut stream, &Message::AdminRequest(request), Limit::Rpc).await?;
        read_message(&mut stream, Limit::Rpc).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(Error::Net(format!(
            "the node on {} did not answer within {}s",
            socket.display(),
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Some(Message::AdminResponse(AdminResponse::Error(reply))))) => {
            Err(Error::Remote(reply))
        }
        Ok(Ok(Some(Message::AdminResponse(response)))) => Ok(response),
        Ok(Ok(other)) => Err(Error::Protocol(format!(
            "unexpected admin reply: {:?}",
            other.map(|m| m.kind())
        ))),
    }
}
