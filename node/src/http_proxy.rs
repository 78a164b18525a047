//! The HTTP/1.1 reverse proxy of one service's entry point (hyper 1).
//!
//! ## Guarantees
//! - The upstream is chosen per request from the [`Router`], so a client's keep-alive connection
//!   survives a flip: its next request goes to the new slot.
//! - Each client connection keeps one upstream connection to the slot it last used and reuses it
//!   while that slot stays routed; after a flip its next request opens one to the new slot.
//! - Bodies stream both ways; nothing is buffered whole. Request heads are bounded (64 KiB) and
//!   must arrive within 30 s; an upstream must send response headers within 5 minutes (else 504).
//! - `X-Forwarded-For` gets the client address appended; `X-Forwarded-Proto` (`http`) and
//!   `X-Forwarded-Host` are set when absent. Hop-by-hop headers are not forwarded.
//! - Drain: work in flight on an old slot runs until its cut-off fires (`drain_timeout` after
//!   the flip): a request still waiting for headers then gets 504, a response body still
//!   streaming is ended, and an upgraded (WebSocket) connection is closed — not before.
//! - Every response and failure is counted on its slot (requests, 5xx, latency to headers); the
//!   proxy's own 502/504 count as 5xx.
//! - Without a routed release the entry point answers 503 and says so.
//! - `GET /.halley/ready` is answered by the proxy itself: 200, or 503 while the node is draining
//!   (a rollout's drain, or `halley-node drain`), for external load balancers' health checks.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;

use crate::upstream::{Flight, Router, Upstream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every proxied response.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_HEAD: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The path a load balancer polls: 200 while the node takes work, 503 while it is draining.
pub const READY_PATH: &str = "/.halley/ready";

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    service: String,
    draining: Arc<AtomicBool>,
) {
    let service: Arc<str> = service.into();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = service.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            // Requests of one client connection come one after another, so one upstream
            // connection per client connection serves them all, with no pool to lock.
            let pinned: Arc<Mutex<Option<Pinned>>> = Arc::default();
            let svc = service_fn(move |req: Request<Incoming>| {
                let router = router.clone();
                let service = service.clone();
                let pinned = pinned.clone();
                let draining = draining.clone();
                async move {
                    if req.uri().path() == READY_PATH {
                        return Ok::<_, Infallible>(ready(draining.load(Ordering::Relaxed)));
                    }
                    Ok(handle(req, &router, remote, &service, &pinned).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(error = %e, %remote, "client connection ended with an error");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    router: &Router,
    remote: SocketAddr,
    service: &str,
    pinned: &Mutex<Option<Pinned>>,
) -> Response<ProxyBody> {
    let Some(upstream) = router.current() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("halley: no release of service {service} is serving on this node\n"),
        );
    };
    let started = Instant::now();
    let (flight, cut) = upstream.begin();
    if is_upgrade(req.headers()) {
        return upgrade(req, upstream, flight, cut, remote, started).await;
    }
    let req = match rewrite(req, remote, false) {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, forward(req, &upstream, pinned));
    let result = tokio::select! {
        r = sent => r,
        _ = cut.cancelled() => {
            upstream.record(true, started.elapsed());
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                "halley: this request was still running when its release's drain_timeout ended\n".into(),
            );
        }
    };
    match result {
        Ok(Ok(resp)) => {
            upstream.record(resp.status().is_server_error(), started.elapsed());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            Response::from_parts(parts, guarded(body, flight, cut))
        }
        Ok(Err(e)) => {
            upstream.record(true, started.elapsed());
            debug!(error = %e, slot = %upstream.slot, "upstream request failed");
            local(
                StatusCode::BAD_GATEWAY,
                format!(
                    "halley: release {} (slot {}) of service {service} did not answer: {e}\n",
                    upstream.version, upstream.slot,
                ),
            )
        }
        Err(_) => {
            upstream.record(true, started.elapsed());
            local(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "halley: release {} of service {service} sent no response headers within {}s\n",
                    upstream.version,
                    RESPONSE_TIMEOUT.as_secs()
                ),
            )
        }
    }
}

/// The upstream connection a client connection uses, and the slot it leads to.
struct Pinned {
    upstream: Arc<Upstream>,
    sender: SendRequest<Incoming>,
}

/// Sends a request to `upstream` on the client connection's pinned upstream connection, opening
/// one when there is none, it leads to another slot (after a flip), or it was closed. A request
/// that a reused connection could not take (it closed first) goes out once on a fresh one:
/// nothing of it was sent yet, so that is safe for any method.
async fn forward(
    req: Request<Incoming>,
    upstream: &Arc<Upstream>,
    pinned: &Mutex<Option<Pinned>>,
) -> Result<Response<Incoming>, String> {
    let reuse = lock(pinned)
        .take()
        .filter(|p| Arc::ptr_eq(&p.upstream, upstream) && !p.sender.is_closed());
    let mut req = req;
    if let Some(mut p) = reuse
        && p.sender.ready().await.is_ok()
    {
        match p.sender.try_send_request(req).await {
            Ok(resp) => {
                *lock(pinned) = Some(p);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(root_cause(&e.into_error())),
            },
        }
    }
    let mut sender = connect(upstream.port).await?;
    let resp = sender.send_request(req).await.map_err(|e| root_cause(&e))?;
    *lock(pinned) = Some(Pinned {
        upstream: upstream.clone(),
        sender,
    });
    Ok(resp)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connect(port: u16) -> Result<SendRequest<Incoming>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| format!("connecting to 127.0.0.1:{port} timed out"))?
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| root_cause(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn upgrade(
    mut req: Request<Incoming>,
    upstream: Arc<Upstream>,
    flight: Flight,
    cut: CancellationToken,
    remote: SocketAddr,
    started: Instant,
) -> Response<ProxyBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let failed = |what: String| {
        upstream.record(true, started.elapsed());
        local(StatusCode::BAD_GATEWAY, format!("halley: {what}\n"))
    };
    let stream = match TcpStream::connect(("127.0.0.1", upstream.port)).await {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot connect to slot {}: {e}", upstream.slot)),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return failed(format!("upgrade handshake failed: {e}")),
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    rewrite_headers(&mut parts.headers, remote, true);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => return failed(format!("upgrade request failed: {e}")),
    };
    upstream.record(resp.status().is_server_error(), started.elapsed());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, guarded(body, flight, cut));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _flight = flight;
        let (client, server) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cut.cancelled() => debug!("upgraded connection closed at drain_timeout"),
        }
    });
    resp.map(|_| empty())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[allow(clippy::result_large_err)]
fn rewrite(
    req: Request<Incoming>,
    remote: SocketAddr,
    keep_upgrade: bool,
) -> Result<Request<Incoming>, Response<ProxyBody>> {
    let (mut parts, body) = req.into_parts();
    // The upstream connection is ours, so the target goes out in origin form (`/path?query`).
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => {
                return Err(local(
                    StatusCode::BAD_REQUEST,
                    "halley: the request target is not a valid path\n".into(),
                ));
            }
        };
    }
    rewrite_headers(&mut parts.headers, remote, keep_upgrade);
    Ok(Request::from_parts(parts, body))
}

fn rewrite_headers(headers: &mut HeaderMap, remote: SocketAddr, keep_upgrade: bool) {
    strip_hop_by_hop(headers, keep_upgrade);
    let ip: IpAddr = remote.ip();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    if !headers.contains_key("x-forwarded-host")
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn ready(draining: bool) -> Response<ProxyBody> {
    if draining {
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this node takes no new work; send it elsewhere\n".into(),
        )
    } else {
        local(StatusCode::OK, "ready\n".into())
    }
}

fn local(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn guarded(body: Incoming, flight: Flight, cut: CancellationToken) -> ProxyBody {
    Guarded {
        inner: body,
        _flight: flight,
        cut: Box::pin(cut.cancelled_owned()),
    }
    .boxed_unsync()
}

/// A response body that keeps its request in flight until it ends, and ends early with an error
/// (the client sees a cut response) when the slot's drain deadline passes.
struct Guarded {
    inner: Incoming,
    _flight: Flight,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("drain_timeout ended this response".into())));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        rewrite_headers(&mut h, "192.0.2.7:5000".parse().unwrap(), false);
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(header::TE));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.org");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        rewrite_headers(&mut h, "127.0.0.1:1".parse().unwrap(), true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
