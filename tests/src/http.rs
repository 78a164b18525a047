//! A small HTTP/1.1 client for tests and benchmarks (hyper's connection API, no pooling), so that
//! each caller decides whether it reuses a connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An open keep-alive connection.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

/// What a request got back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// The server ends the connection after this answer (`Connection: close`).
    pub close: bool,
}

impl Answer {
    /// The `version=` field of a test-service answer.
    pub fn version(&self) -> Option<&str> {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("version="))
    }

    /// The `node=` field of a test-service answer: the host whose slot served it.
    pub fn node(&self) -> Option<&str> {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("node="))
    }
}

impl Conn {
    /// Opens a connection.
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        Ok(Self {
            sender: connect(addr).await?,
            addr,
        })
    }

    /// Sends a GET and reads the whole answer.
    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        self.request(path, false).await
    }

    async fn request(&mut self, path: &str, close: bool) -> Result<Answer, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let mut req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if close {
            req.headers_mut()
                .insert("connection", "close".parse().map_err(|_| "header")?);
        }
        exchange(&mut self.sender, req).await
    }
}

/// A client connection to `addr`, its driver spawned.
async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends a request and reads the whole answer.
async fn exchange<B>(sender: &mut SendRequest<B>, req: Request<B>) -> Result<Answer, String>
where
    B: hyper::body::Body + Send + 'static,
{
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let close = resp
        .headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

/// One GET on a fresh connection (`Connection: close`).
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    Conn::open(addr).await?.request(path, true).await
}

/// One POST with `body` on a fresh connection (`Connection: close`).
pub async fn post(addr: SocketAddr, path: &str, body: &'static str) -> Result<Answer, String> {
    let mut sender = connect(addr).await?;
    let req = Request::post(path)
        .header("host", addr.to_string())
        .header("connection", "close")
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .map_err(|e| e.to_string())?;
    exchange(&mut sender, req).await
}
