//! The admin channel between the CLI and its local node: a unix socket in the data dir, mode 0600
//! (the data dir itself is 0700). There is no TCP admin port. One request frame, one reply frame.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use halley_proto::message::{AdminRequest, AdminResponse, ErrorKind, ErrorReply};
use halley_proto::{Limit, Message};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::mesh::framing::{read_message, write_message};
use crate::store::datadir::DataDir;

/// How long a CLI request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Handles admin requests.
#[async_trait::async_trait]
pub trait AdminHandler: Send + Sync + 'static {
    /// Answers one request.
    async fn admin(&self, request: AdminRequest) -> AdminResponse;
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
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_one(stream, handler.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn serve_one(mut stream: UnixStream, handler: Arc<dyn AdminHandler>) {
    let reply = match read_message(&mut stream, Limit::Rpc).await {
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
    let socket = data_dir.admin_socket();
    if !socket.exists() {
        // Say "not initialised" rather than "not running" when that is the real problem.
        data_dir.load_node()?;
    }
    let mut stream = UnixStream::connect(&socket)
        .await
        .map_err(|source| Error::NotRunning {
            data_dir: data_dir.root().to_path_buf(),
            socket: socket.clone(),
            source,
        })?;
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
