//! The HTTP/1.1 reverse proxy of one service's entry point (hyper 1), and of the mesh hops that
//! peers' entry points send here.
//!
//! ## Guarantees
//! - The instance is chosen per request from the service's [`ServiceRoutes`] (this host's slot,
//!   or a peer's over the mesh, by `routing`), so a client's keep-alive connection survives a
//!   flip or a drained host: its next request goes where the routes say.
//! - Each client connection keeps one upstream connection (or mesh stream) to the instance it
//!   last used and reuses it while that instance is chosen; a flip or a new choice opens another.
//!   A mesh stream a client connection stops using (it moved, or closed) goes to a per-peer pool
//!   of idle streams (up to 64 a peer) that the entry point's other client connections take
//!   before opening a new one.
//! - A request that failed before any byte reached an upstream (connect refused, a peer that
//!   could not be reached or would not take it, a connection closed before it took the request)
//!   is sent once more, to another instance. After bytes were sent, only a request without a
//!   body and with a safe method (GET, HEAD, OPTIONS) is sent again, once; any other gets 502.
//! - Bodies stream both ways; nothing is buffered whole. Request heads are bounded (64 KiB) and
//!   must arrive within 30 s; an upstream must send response headers within 5 minutes (else 504).
//! - Forwarding headers are set at the entry point the client reached ([`crate::proxy::headers`]).
//! - Drain: work in flight on an old slot runs until its cut-off fires (`drain_timeout` after
//!   the flip): a request still waiting for headers then gets 504, a response body still
//!   streaming is ended, and an upgraded (WebSocket) connection is closed — not before.
//! - Every response and failure of this host's slot is counted on that slot (requests, 5xx,
//!   latency to headers), whichever entry point the request came through; the proxy's own
//!   502/504 count as 5xx. Outcomes also feed passive health ([`crate::engine::ejection`]).
//! - Without any instance to serve the entry point answers 503 and says so.
//! - `GET /.halley/ready` is answered by the proxy itself: 200, or 503 while the node is draining
//!   (a rollout's drain, or `halley-node drain`), for external load balancers' health checks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;

use halley_proto::NodeName;

use crate::engine::ejection::Outcome;
use crate::engine::routing::Target;
use crate::proxy::headers::{is_upgrade, origin_form, rewrite_headers, strip_hop_by_hop};
use crate::proxy::hop::{HopIo, Io, connect_local, connect_peer};
use crate::proxy::routes::{PeerPick, Picked, ServiceRoutes};
use crate::proxy::upstream::{Flight, Upstream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every proxied response.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_HEAD: usize = 64 * 1024;
/// How long a keep-alive connection of a process handing over may wait for its next request,
/// whose answer then closes it, before it is closed idle.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// The path a load balancer polls: 200 while the node takes work, 503 while it is draining.
pub const READY_PATH: &str = "/.halley/ready";

/// Marks a peer's own answer given before any byte of the request reached its slot, so the
/// sending entry point may try another instance. Never reaches a client.
const UNSENT: HeaderName = HeaderName::from_static("x-halley-unsent");

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A client at this node's entry point: routed anywhere, retried.
    Entry,
    /// A peer's entry point over a mesh hop: served by the local slot only.
    Hop,
}

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, routes: Arc<ServiceRoutes>) {
    let pool = Arc::new(HopPool::default());
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
        let open = routes.connections.track();
        let (routes, pool) = (routes.clone(), pool.clone());
        tokio::spawn(async move {
            serve_connection(
                TokioIo::new(stream),
                routes,
                remote,
                Mode::Entry,
                Some(pool),
            )
            .await;
            drop(open);
        });
    }
}

/// Serves one mesh hop (HTTP/1.1 from a peer's entry point) from this host's slot.
pub async fn serve_hop(routes: Arc<ServiceRoutes>, io: HopIo, client: SocketAddr) {
    serve_connection(TokioIo::new(io), routes, client, Mode::Hop, None).await;
}

async fn serve_connection<I>(
    io: I,
    routes: Arc<ServiceRoutes>,
    remote: SocketAddr,
    mode: Mode,
    pool: Option<Arc<HopPool>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Requests of one client connection come one after another, so one upstream connection
    // per client connection serves them all; mesh streams it stops using go to the pool.
    let pinned = Arc::new(ClientConn {
        pinned: Mutex::new(None),
        pool,
    });
    let connections = routes.connections.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let routes = routes.clone();
        let pinned = pinned.clone();
        async move {
            let mut resp = if mode == Mode::Entry && req.uri().path() == READY_PATH {
                ready(routes.draining())
            } else {
                handle(req, &routes, remote, mode, &pinned).await
            };
            if mode == Mode::Entry
                && routes.connections.closing()
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                // The next request goes to the process that took the entry point over.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = if mode == Mode::Entry {
        tokio::select! {
            ended = conn.as_mut() => ended,
            () = connections.closed() => {
                // A busy client's next answer closes the connection; one that stays quiet this
                // long is closed while idle (a request it sends at that very moment is cut).
                match tokio::time::timeout(IDLE_GRACE, conn.as_mut()).await {
                    Ok(ended) => ended,
                    Err(_) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        }
    } else {
        conn.await
    };
    if let Err(e) = ended {
        debug!(error = %e, %remote, "client connection ended with an error");
    }
}

/// The outcome of sending a request to one instance.
enum Attempt {
    /// An answer to pass on (perhaps the proxy's own 504).
    Answered(Response<ProxyBody>),
    /// Nothing reached an upstream: the request is still whole.
    Unsent(Request<ReqBody>, String),
    /// It failed after bytes were sent; the answer to give if it is not sent again.
    Failed(String, Response<ProxyBody>),
}

async fn handle(
    req: Request<Incoming>,
    routes: &ServiceRoutes,
    remote: SocketAddr,
    mode: Mode,
    pinned: &ClientConn,
) -> Response<ProxyBody> {
    let first = match mode {
        Mode::Hop => routes.router.current().map(Picked::Local),
        Mode::Entry => {
            let pinned_target = lock(&pinned.pinned).as_ref().map(|p| p.target.clone());
            routes.pick(pinned_target.as_ref(), None)
        }
    };
    let Some(first) = first else {
        return no_instance(routes, mode);
    };
    if is_upgrade(req.headers()) {
        return upgrade(req, routes, first, remote, mode).await;
    }
    let (mut parts, body) = req.into_parts();
    let Some(uri) = origin_form(&parts.uri) else {
        return local(
            StatusCode::BAD_REQUEST,
            "halley: the request target is not a valid path\n".into(),
        );
    };
    parts.uri = uri;
    match mode {
        Mode::Entry => rewrite_headers(&mut parts.headers, remote, false),
        Mode::Hop => strip_hop_by_hop(&mut parts.headers, false),
    }
    // Cheap checks first: `has_peers` reads the routes.
    let replay = (mode == Mode::Entry
        && body.is_end_stream()
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && routes.has_peers())
    .then(|| Head::of(&parts));
    let req = Request::from_parts(parts, ReqBody::Incoming(body));
    let first_target = first.target();
    let (again, why) = match attempt(req, first, routes, remote, mode, pinned).await {
        Attempt::Answered(resp) => return resp,
        Attempt::Unsent(req, why) if mode == Mode::Entry => (req, why),
        Attempt::Unsent(_, why) => return unsent(StatusCode::BAD_GATEWAY, why),
        Attempt::Failed(why, resp) => match replay {
            Some(head) if mode == Mode::Entry => (head.request(), why),
            _ => return resp,
        },
    };
    let Some(second) = routes.pick(None, Some(&first_target)) else {
        return bad_gateway(routes, &why);
    };
    routes.counters.retries.fetch_add(1, Ordering::Relaxed);
    tracing::info!(service = %routes.service, first = %first_target, second = %second.target(), reason = %why, "request sent again");
    match attempt(again, second, routes, remote, mode, pinned).await {
        Attempt::Answered(resp) | Attempt::Failed(_, resp) => resp,
        Attempt::Unsent(_, then) => bad_gateway(routes, &format!("{why}; then {then}")),
    }
}

async fn attempt(
    req: Request<ReqBody>,
    picked: Picked,
    routes: &ServiceRoutes,
    client: SocketAddr,
    mode: Mode,
    pinned: &ClientConn,
) -> Attempt {
    let target = picked.target();
    let mut slot = OnSlot::begin(&picked);
    let sent = tokio::time::timeout(
        RESPONSE_TIMEOUT,
        forward(req, &picked, routes, client, pinned),
    );
    let result = match &slot.cut {
        Some(cut) => tokio::select! {
            r = sent => r,
            _ = cut.cancelled() => {
                slot.record(true);
                return Attempt::Answered(local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "halley: this request was still running when its release's drain_timeout ended\n".into(),
                ));
            }
        },
        None => sent.await,
    };
    let name = describe(&picked);
    match result {
        Ok(Ok(resp)) => {
            if mode == Mode::Entry && resp.headers().contains_key(UNSENT) {
                // The peer could not hand it to its slot: that instance is failing.
                routes.record(&target, Outcome::ConnectFailed);
                let (mut parts, body) = resp.into_parts();
                parts.headers.remove(UNSENT);
                let why = format!("{name} answered {} without serving it", parts.status);
                let hold = Hold::new(slot.flight.take(), picked);
                return Attempt::Failed(
                    why,
                    Response::from_parts(parts, guarded(body, hold, slot.cut.take())),
                );
            }
            let error = resp.status().is_server_error();
            slot.record(error);
            routes.record(&target, Outcome::of_answer(error));
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            let hold = Hold::new(slot.flight.take(), picked);
            Attempt::Answered(Response::from_parts(
                parts,
                guarded(body, hold, slot.cut.take()),
            ))
        }
        Ok(Err(Forward::Unsent(req, e))) => {
            slot.record(true);
            routes.record(&target, Outcome::ConnectFailed);
            Attempt::Unsent(*req, format!("{name}: {e}"))
        }
        Ok(Err(Forward::Sent(e))) => {
            slot.record(true);
            routes.record(
                &target,
                match target {
                    // A broken mesh connection says more about the peer than one failed request.
                    Target::Peer(_) => Outcome::ConnectFailed,
                    Target::Local => Outcome::ServerError,
                },
            );
            debug!(instance = %target, error = %e, "upstream request failed");
            let why = format!("{name} did not answer: {e}");
            let resp = local(
                StatusCode::BAD_GATEWAY,
                format!("halley: {why} (service {})\n", routes.service),
            );
            Attempt::Failed(why, resp)
        }
        Err(_) => {
            slot.record(true);
            routes.record(&target, Outcome::ServerError);
            Attempt::Answered(local(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "halley: {name} of service {} sent no response headers within {}s\n",
                    routes.service,
                    RESPONSE_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

fn describe(picked: &Picked) -> String {
    match picked {
        Picked::Local(up) => format!("release {} (slot {})", up.version, up.slot),
        Picked::Peer(p) => format!("node {}", p.node),
    }
}

/// The upstream connection a client connection uses, and the instance it leads to.
struct Pinned {
    target: Target,
    /// For this host's slot: which slot (a flip makes it stale).
    upstream: Option<Arc<Upstream>>,
    sender: SendRequest<ReqBody>,
}

impl Pinned {
    fn leads_to(&self, picked: &Picked) -> bool {
        match (picked, &self.upstream) {
            (Picked::Local(up), Some(mine)) => Arc::ptr_eq(up, mine),
            (Picked::Peer(p), None) => self.target == Target::Peer(p.node.clone()),
            _ => false,
        }
    }
}

enum Forward {
    /// Boxed: the failure path is rare, and the request is large.
    Unsent(Box<Request<ReqBody>>, String),
    Sent(String),
}

/// Sends a request on the client connection's pinned upstream connection when it leads to the
/// chosen instance, else on a new one (TCP to this host's slot, or a mesh hop). A request that
/// a reused connection could not take (it closed first) goes out once on a fresh one: nothing of
/// it was sent yet, so that is safe for any method.
async fn forward(
    req: Request<ReqBody>,
    picked: &Picked,
    routes: &ServiceRoutes,
    client: SocketAddr,
    conn: &ClientConn,
) -> Result<Response<Incoming>, Forward> {
    let current = lock(&conn.pinned).take();
    let reuse = match current {
        Some(p) if p.leads_to(picked) && !p.sender.is_closed() => Some(p),
        Some(p) => {
            conn.release(p);
            None
        }
        None => None,
    };
    let reuse = reuse.or_else(|| match picked {
        Picked::Peer(peer) => conn.pool.as_ref()?.take(&peer.node).map(|sender| Pinned {
            target: picked.target(),
            upstream: None,
            sender,
        }),
        Picked::Local(_) => None,
    });
    let mut req = req;
    if let Some(mut p) = reuse
        && p.sender.ready().await.is_ok()
    {
        match p.sender.try_send_request(req).await {
            Ok(resp) => {
                *lock(&conn.pinned) = Some(p);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(Forward::Sent(root_cause(&e.into_error()))),
            },
        }
    }
    let io = match open(picked, routes, client).await {
        Ok(io) => io,
        Err(e) => return Err(Forward::Unsent(Box::new(req), e)),
    };
    let mut sender = match handshake::<ReqBody>(io, false).await {
        Ok(s) => s,
        Err(e) => return Err(Forward::Unsent(Box::new(req), e)),
    };
    match sender.try_send_request(req).await {
        Ok(resp) => {
            *lock(&conn.pinned) = Some(Pinned {
                target: picked.target(),
                upstream: match picked {
                    Picked::Local(up) => Some(up.clone()),
                    Picked::Peer(_) => None,
                },
                sender,
            });
            Ok(resp)
        }
        Err(mut e) => match e.take_message() {
            Some(unsent) => Err(Forward::Unsent(
                Box::new(unsent),
                root_cause(&e.into_error()),
            )),
            None => Err(Forward::Sent(root_cause(&e.into_error()))),
        },
    }
}

/// One client connection's upstream connection, and the entry point's pool of idle mesh
/// streams it hands back to when it moves to another instance or closes.
struct ClientConn {
    pinned: Mutex<Option<Pinned>>,
    pool: Option<Arc<HopPool>>,
}

impl ClientConn {
    fn release(&self, p: Pinned) {
        if let (Target::Peer(node), Some(pool)) = (p.target, &self.pool) {
            pool.give(node, p.sender);
        }
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.pinned).take() {
            self.release(p);
        }
    }
}

/// Idle HTTP/1.1 connections over mesh streams, per peer, shared by an entry point's client
/// connections: moving a client to a peer reuses one instead of opening a stream (a round trip).
#[derive(Default)]
struct HopPool {
    idle: Mutex<HashMap<NodeName, Vec<SendRequest<ReqBody>>>>,
}

/// Idle mesh streams kept per peer.
const MAX_IDLE_HOPS: usize = 64;

impl HopPool {
    fn take(&self, node: &NodeName) -> Option<SendRequest<ReqBody>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(node)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn give(&self, node: NodeName, sender: SendRequest<ReqBody>) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = lock(&self.idle);
        let list = idle.entry(node).or_default();
        if list.len() < MAX_IDLE_HOPS {
            list.push(sender);
        }
    }
}

async fn open(picked: &Picked, routes: &ServiceRoutes, client: SocketAddr) -> Result<Io, String> {
    match picked {
        Picked::Local(up) => connect_local(up.port).await,
        Picked::Peer(p) => connect_peer(routes, p, client).await,
    }
}

async fn handshake<B>(io: Io, upgrades: bool) -> Result<SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| root_cause(&e))?;
    tokio::spawn(async move {
        let result = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = result {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// What is needed to send a bodiless request again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// A proxied request's body: the client's, or none (a request sent again).
enum ReqBody {
    Incoming(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Incoming(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Incoming(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

async fn upgrade(
    mut req: Request<Incoming>,
    routes: &ServiceRoutes,
    picked: Picked,
    remote: SocketAddr,
    mode: Mode,
) -> Response<ProxyBody> {
    let target = picked.target();
    let mut slot = OnSlot::begin(&picked);
    let client_side = hyper::upgrade::on(&mut req);
    let failed = |what: String, outcome: Outcome| {
        slot.record(true);
        routes.record(&target, outcome);
        local(StatusCode::BAD_GATEWAY, format!("halley: {what}\n"))
    };
    let io = match open(&picked, routes, remote).await {
        Ok(io) => io,
        Err(e) => return failed(e, Outcome::ConnectFailed),
    };
    let mut sender = match handshake::<Incoming>(io, true).await {
        Ok(s) => s,
        Err(e) => {
            return failed(
                format!("upgrade handshake failed: {e}"),
                Outcome::ConnectFailed,
            );
        }
    };
    let (mut parts, body) = req.into_parts();
    match mode {
        Mode::Entry => rewrite_headers(&mut parts.headers, remote, true),
        Mode::Hop => strip_hop_by_hop(&mut parts.headers, true),
    }
    parts.uri = origin_form(&parts.uri).unwrap_or_else(|| Uri::from_static("/"));
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => return failed(format!("upgrade request failed: {e}"), Outcome::ServerError),
    };
    let error = resp.status().is_server_error();
    slot.record(error);
    routes.record(&target, Outcome::of_answer(error));
    resp.headers_mut().remove(UNSENT);
    let hold = Hold::new(slot.flight.take(), picked);
    let cut = slot.cut.take();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, guarded(body, hold, cut));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    // The tunnel outlives the HTTP connection: it counts as open on its own.
    let open = (mode == Mode::Entry).then(|| routes.connections.track());
    tokio::spawn(async move {
        let _hold = hold;
        let _open = open;
        let (client, server) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
        match cut {
            Some(cut) => tokio::select! {
                _ = copy => {}
                _ = cut.cancelled() => debug!("upgraded connection closed at drain_timeout"),
            },
            None => {
                let _ = copy.await;
            }
        }
    });
    resp.map(|_| empty())
}

fn no_instance(routes: &ServiceRoutes, mode: Mode) -> Response<ProxyBody> {
    match mode {
        Mode::Hop => unsent(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no release of service {} is serving on this node",
                routes.service
            ),
        ),
        Mode::Entry => local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "halley: no instance of service {} is serving: this node routes no release and no peer reports a healthy one\n",
                routes.service
            ),
        ),
    }
}

fn bad_gateway(routes: &ServiceRoutes, why: &str) -> Response<ProxyBody> {
    local(
        StatusCode::BAD_GATEWAY,
        format!(
            "halley: no instance of service {} took the request: {why}\n",
            routes.service
        ),
    )
}

/// A hop's answer for a request that reached no slot here.
fn unsent(status: StatusCode, why: String) -> Response<ProxyBody> {
    let mut resp = local(status, format!("halley: {why}\n"));
    resp.headers_mut()
        .insert(UNSENT, HeaderValue::from_static("1"));
    resp
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

/// A request's hold on this host's slot when it goes there: counted in flight, its drain
/// cut-off, and its outcome recorded in the slot's signals. Empty for a peer's instance.
struct OnSlot {
    started: Instant,
    upstream: Option<Arc<Upstream>>,
    flight: Option<Flight>,
    cut: Option<CancellationToken>,
}

impl OnSlot {
    fn begin(picked: &Picked) -> Self {
        let (upstream, flight, cut) = match picked {
            Picked::Local(up) => {
                let (flight, cut) = up.begin();
                (Some(up.clone()), Some(flight), Some(cut))
            }
            Picked::Peer(_) => (None, None, None),
        };
        Self {
            started: Instant::now(),
            upstream,
            flight,
            cut,
        }
    }

    fn record(&self, error: bool) {
        if let Some(up) = &self.upstream {
            up.record(error, self.started.elapsed());
        }
    }
}

/// What keeps a request counted in flight on its instance until its response ends.
struct Hold {
    _flight: Option<Flight>,
    _peer: Option<PeerPick>,
}

impl Hold {
    fn new(flight: Option<Flight>, picked: Picked) -> Self {
        Self {
            _flight: flight,
            _peer: match picked {
                Picked::Peer(p) => Some(p),
                Picked::Local(_) => None,
            },
        }
    }
}

fn guarded(body: Incoming, hold: Hold, cut: Option<CancellationToken>) -> ProxyBody {
    Guarded {
        inner: body,
        _hold: hold,
        cut: cut.map(|c| Box::pin(c.cancelled_owned())),
    }
    .boxed_unsync()
}

/// A response body that keeps its request in flight until it ends, and ends early with an error
/// (the client sees a cut response) when the slot's drain deadline passes.
struct Guarded {
    inner: Incoming,
    _hold: Hold,
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(cut) = this.cut.as_mut()
            && cut.as_mut().poll(cx).is_ready()
        {
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
