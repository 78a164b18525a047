//! The demo's steady load: a few keep-alive clients per entry point, each sending `GET /` at a
//! fixed pace, counting what came back. A client whose connection breaks opens a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// 2xx answers.
    pub ok: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Requests that got no answer at all.
    pub conn_errors: AtomicU64,
}

impl Counts {
    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.server_errors.load(Ordering::Relaxed)
            + self.conn_errors.load(Ordering::Relaxed)
    }
}

/// Running clients.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// The counters, live.
    pub counts: Arc<Counts>,
}

impl Load {
    /// `clients` clients per entry point, one request each per `every`.
    pub fn start(entries: &[SocketAddr], clients: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        for &addr in entries {
            for _ in 0..clients {
                let (stop, counts) = (stop.clone(), counts.clone());
                tasks.push(tokio::spawn(client(addr, every, stop, counts)));
            }
        }
        Self {
            stop,
            tasks,
            counts,
        }
    }

    /// Stops the clients after their current request.
    pub async fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.counts
    }
}

async fn client(addr: SocketAddr, every: Duration, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut tick = tokio::time::interval(every);
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(addr).await;
        }
        let Some(sender) = conn.as_mut() else {
            counts.conn_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match get(sender, addr).await {
            Some(status) if status < 500 => counts.ok.fetch_add(1, Ordering::Relaxed),
            Some(_) => counts.server_errors.fetch_add(1, Ordering::Relaxed),
            None => {
                conn = None;
                counts.conn_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr) -> Option<u16> {
    sender.ready().await.ok()?;
    let req = Request::get("/")
        .header("host", addr.to_string())
        .body(Empty::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}
