//! The mesh: one QUIC endpoint per node that both listens and dials, carrying gossip and RPCs.
//!
//! ## Guarantees
//! - Every connection is mutually authenticated against the cluster CA, except a client with no
//!   certificate, which may open exactly one bidirectional stream carrying a join request (at most
//!   [`Limit::Join`] bytes) and is then closed. Every request is checked against its
//!   [`Access`](halley_proto::role::Access) rule using the role in the caller's certificate.
//! - A request or stream meant for a named node goes only over a connection whose certificate
//!   names that node: an address that now belongs to another member (or to a stolen key's
//!   holder) is not sent what was meant for the node the caller had in mind. A peer must be a
//!   member (admin or worker) to be dialled at all.
//! - Before a peer's certificate is checked, its connection has the pre-authentication transport
//!   limits (see [`tls`]); at most [`MAX_UNAUTHENTICATED`] connections without a certificate are
//!   served at once, and handshakes pass [`HandshakeGate`] (per-source rate, a cap on those under
//!   way, QUIC Retry under load), so what a stranger costs a node is bounded.
//! - Sending gossip never blocks the caller: frames go to a bounded per-peer queue served by its own
//!   task (dialling, if needed, with a timeout); when the queue is full the frame is dropped, which
//!   gossip tolerates.
//! - A connection accepted from a peer is reused to send to it, so a peer's source address is its
//!   gossip address and replies need no new handshake.
//! - A certificate whose name was removed from the cluster ([`Mesh::revoke`]) is refused right
//!   after the handshake, before any stream is read, whether it dials or is dialled; revoking
//!   closes the connections it has open.
//! - Refused handshakes and bad frames are logged at most once a minute per peer IP.
//!
//! ## Non-goals
//! No ordering between gossip frames (each goes on its own uni stream) and no retransmission above
//! QUIC's: gossip repairs itself on the next round.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use halley_proto::message::{ErrorKind, ErrorReply, MeshStats};
use halley_proto::role::Access;
use halley_proto::{Limit, Message, NodeName, Role};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::engine::handshakes::{Admit, HandshakeGate, Limits};
use crate::error::{Error, Result};
use crate::mesh::framing::{read_message, write_message};
use crate::mesh::pki::PeerIdentity;
use crate::mesh::tls::{self, Credentials};

/// How long a dial may take before the frames waiting for it are dropped.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// The close code for a removed node's connection.
const REMOVED_CODE: u32 = 5;
/// How long an incoming handshake may take before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may take to deliver one frame on a stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 64;
/// Inbound gossip frames queued before new ones are dropped.
const INBOUND_QUEUE: usize = 1024;
/// How often a given peer IP may cause a warning.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Connections without a certificate (joining nodes) served at once; more are closed at once.
pub const MAX_UNAUTHENTICATED: usize = 32;

/// Answers requests that arrive on bidirectional streams.
#[async_trait::async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request (already checked against its access rule) and returns the reply.
    async fn handle(
        &self,
        caller: Option<PeerIdentity>,
        remote: SocketAddr,
        request: Message,
    ) -> Message;

    /// Takes over a stream that opened a mesh hop ([`Message::ProxyOpen`], access already
    /// checked): it answers on `send` and then carries the proxied bytes.
    async fn proxy(
        &self,
        open: halley_proto::message::ProxyOpen,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    );
}

/// A gossip payload received from a peer, with who its certificate says sent it.
pub type InboundGossip = (SocketAddr, PeerIdentity, Vec<u8>);

/// The node's QUIC endpoint and its connections.
pub struct Mesh {
    endpoint: quinn::Endpoint,
    /// This node's certificate, as both directions present it.
    identity: Arc<tls::Identity>,
    client: quinn::ClientConfig,
    /// Live connections by peer address, each with the node its certificate names.
    conns: Mutex<HashMap<SocketAddr, (quinn::Connection, NodeName)>>,
    /// The role each peer's certificate showed, newest connection last.
    roles: Mutex<HashMap<NodeName, Role>>,
    /// Names removed from the cluster: their certificates are refused both ways.
    revoked: std::sync::RwLock<std::collections::BTreeSet<NodeName>>,
    /// The admin whose connection was closed as "removed": this node itself was removed.
    removed_by: Mutex<Option<NodeName>>,
    senders: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    gossip_in: mpsc::Sender<InboundGossip>,
    handler: Arc<dyn RequestHandler>,
    warned: Mutex<HashMap<IpAddr, Instant>>,
    closed_tx_bytes: AtomicU64,
    closed_rx_bytes: AtomicU64,
    /// Streams this node opened (requests, proxied connections, gossip) and accepted.
    streams_opened: AtomicU64,
    streams_accepted: AtomicU64,
    gate: Mutex<HandshakeGate<IpAddr>>,
    /// Handshakes under way (accepted by the gate, not yet finished).
    handshaking: Arc<AtomicUsize>,
    /// Connections without a certificate being served.
    unauthenticated: Arc<AtomicUsize>,
    born: Instant,
}

impl Mesh {
    /// Binds the endpoint and starts accepting. Returns the mesh and the stream of inbound gossip.
    pub fn start(
        listen: SocketAddr,
        creds: &Credentials,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<(Arc<Self>, mpsc::Receiver<InboundGossip>)> {
        Self::start_on(Self::bind(listen)?, creds, handler)
    }

    /// Binds the mesh's UDP socket.
    pub fn bind(listen: SocketAddr) -> Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind(listen).map_err(|e| {
            Error::Net(format!(
                "cannot listen on {listen}/udp: {e}; is another halley-node using that port? Pick another with --listen"
            ))
        })
    }

    /// Starts the mesh on a bound UDP socket (this daemon's own, or one an upgrade handed over).
    pub fn start_on(
        socket: std::net::UdpSocket,
        creds: &Credentials,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<(Arc<Self>, mpsc::Receiver<InboundGossip>)> {
        let identity = tls::Identity::new(creds)?;
        let server = tls::server_config(creds, &identity)?;
        let client = tls::mesh_client_config(creds, &identity)?;
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::Net(format!("cannot set up the mesh's socket: {e}")))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| Error::Net(format!("cannot start the mesh endpoint: {e}")))?;
        let (gossip_in, gossip_rx) = mpsc::channel(INBOUND_QUEUE);
        let mesh = Arc::new(Self {
            endpoint,
            identity,
            client,
            conns: Mutex::default(),
            roles: Mutex::default(),
            revoked: std::sync::RwLock::default(),
            removed_by: Mutex::default(),
            senders: Mutex::default(),
            gossip_in,
            handler,
            warned: Mutex::default(),
            closed_tx_bytes: AtomicU64::new(0),
            closed_rx_bytes: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            streams_accepted: AtomicU64::new(0),
            gate: Mutex::new(HandshakeGate::new(Limits::default())),
            handshaking: Arc::default(),
            unauthenticated: Arc::default(),
            born: Instant::now(),
        });
        tokio::spawn(accept_loop(Arc::downgrade(&mesh), mesh.endpoint.clone()));
        Ok((mesh, gossip_rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::Net(format!("endpoint has no address: {e}")))
    }

    /// Queues a gossip frame for `to`; never waits.
    pub fn send_gossip(self: &Arc<Self>, to: SocketAddr, frame: Vec<u8>) {
        let sender = {
            let Ok(mut senders) = self.senders.lock() else {
                return;
            };
            senders
                .entry(to)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(PEER_QUEUE);
                    tokio::spawn(peer_sender(Arc::downgrade(self), to, rx));
                    tx
                })
                .clone()
        };
        if sender.try_send(frame).is_err() {
            debug!(peer = %to, "gossip queue full; frame dropped");
        }
    }

    /// Sends one request to the node at `to` on a new bidirectional stream and waits up to
    /// `timeout` for its reply. An [`Message::ErrorReply`] comes back as [`Error::Remote`].
    pub async fn request(
        self: &Arc<Self>,
        to: SocketAddr,
        expect: &NodeName,
        request: &Message,
        timeout: Duration,
    ) -> Result<Message> {
        let exchange = async {
            let (mut send, mut recv) = self.send_on_new_stream(to, expect, request).await?;
            let _ = send.finish();
            read_message(&mut recv, Limit::Rpc).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(Error::Net(format!(
                "{to} did not answer a {} request within {}s",
                request.kind(),
                timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err(Error::Net(format!(
                "{to} closed the stream without a reply"
            ))),
            Ok(Ok(Some(Message::ErrorReply(reply)))) => Err(Error::Remote(reply)),
            Ok(Ok(Some(reply))) => Ok(reply),
        }
    }

    /// Opens a bidirectional stream to the node at `to` with `request` (a
    /// [`Message::ProxyOpen`]) and waits up to `timeout` for [`Message::ProxyAccept`]; the stream
    /// then carries raw bytes. An error means nothing beyond the request reached the peer.
    pub async fn open_stream(
        self: &Arc<Self>,
        to: SocketAddr,
        expect: &NodeName,
        request: &Message,
        timeout: Duration,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let exchange = async {
            let (send, mut recv) = self.send_on_new_stream(to, expect, request).await?;
            match read_message(&mut recv, Limit::Rpc).await? {
                Some(Message::ProxyAccept) => Ok((send, recv)),
                Some(Message::ErrorReply(reply)) => Err(Error::Remote(reply)),
                Some(other) => Err(Error::Net(format!(
                    "{to} answered a stream opening with {}",
                    other.kind()
                ))),
                None => Err(Error::Net(format!("{to} closed the stream at once"))),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Net(format!("{to} did not accept a stream within {timeout:?}")))?
    }

    /// Opens a bidirectional stream to `to` (dialling if needed), which must be node `expect`,
    /// and writes `request` on it.
    async fn send_on_new_stream(
        self: &Arc<Self>,
        to: SocketAddr,
        expect: &NodeName,
        request: &Message,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut conn, mut name) = self.connection(to).await?;
        if &name != expect {
            // A cached connection may be an old holder's of the address: dial afresh once.
            self.forget(to, &conn);
            (conn, name) = self.connection(to).await?;
        }
        if &name != expect {
            return Err(Error::Net(format!(
                "{to} is node {name}, not {expect} (its address changed hands?); nothing was sent to it"
            )));
        }
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Net(format!("cannot open a stream to {to}: {e}")))?;
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        write_message(&mut send, request, Limit::Rpc).await?;
        Ok((send, recv))
    }

    /// Byte counters over all connections, live and closed.
    pub fn stats(&self) -> MeshStats {
        let (mut tx, mut rx, mut connections) = (0, 0, 0);
        if let Ok(conns) = self.conns.lock() {
            for (conn, _) in conns.values() {
                let stats = conn.stats();
                tx += stats.udp_tx.bytes;
                rx += stats.udp_rx.bytes;
                connections += 1;
            }
        }
        MeshStats {
            udp_tx_bytes: tx + self.closed_tx_bytes.load(Ordering::Relaxed),
            udp_rx_bytes: rx + self.closed_rx_bytes.load(Ordering::Relaxed),
            connections,
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            streams_accepted: self.streams_accepted.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and waits briefly for the peers to be told.
    pub async fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"node stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Closes the mesh and moves the endpoint off its UDP socket (onto a throwaway one), so
    /// that this process reads no more of its packets: an upgrade hands the socket over while
    /// parts of this process still hold the mesh.
    pub async fn close_and_let_go(&self) -> Result<()> {
        // No wait for peers to acknowledge: the new daemon's mesh answers them within moments,
        // and gossip silence longer than the failure detector's window would mark this node dead.
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"node upgrading");
        let throwaway = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::Net(format!("cannot open a UDP socket: {e}")))?;
        self.endpoint
            .rebind(throwaway)
            .map_err(|e| Error::Net(format!("cannot move the mesh off its socket: {e}")))
    }

    /// A connection to `to` and the node its certificate names, reusing a live one or dialling.
    async fn connection(self: &Arc<Self>, to: SocketAddr) -> Result<(quinn::Connection, NodeName)> {
        if let Some((conn, name)) = self.conns.lock().ok().and_then(|c| c.get(&to).cloned())
            && conn.close_reason().is_none()
        {
            return Ok((conn, name));
        }
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), to, &to.ip().to_string())
            .map_err(|e| Error::Net(format!("cannot dial {to}: {e}")))?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Net(format!("dialling {to} timed out")))?
            .map_err(|e| Error::Net(format!("handshake with {to} failed: {e}")))?;
        let identity = peer_identity(&conn)
            .ok_or_else(|| Error::Net(format!("{to} presented no usable certificate")))??;
        if self.is_revoked(&identity.name) {
            conn.close(
                quinn::VarInt::from_u32(REMOVED_CODE),
                b"this node was removed from the cluster",
            );
            return Err(Error::Net(format!(
                "{to} is {}, which was removed from the cluster",
                identity.name
            )));
        }
        if !identity.role.is_member() {
            conn.close(quinn::VarInt::from_u32(2), b"peer is not a member");
            return Err(Error::Net(format!(
                "{to} is not a cluster member (role {})",
                identity.role
            )));
        }
        tls::grant_member_limits(&conn);
        let name = identity.name.clone();
        self.certified(&identity);
        self.register(to, conn.clone(), name.clone());
        tokio::spawn(serve_connection(
            Arc::downgrade(self),
            conn.clone(),
            Some(identity),
        ));
        Ok((conn, name))
    }

    /// Refuses the certificates of `names` from now on (added to those refused already: a name
    /// is never taken back), in both directions, forgets the roles they showed, and closes the
    /// connections open to them.
    pub fn revoke(&self, names: &std::collections::BTreeSet<NodeName>) {
        match self.revoked.write() {
            Ok(mut g) => g.extend(names.iter().cloned()),
            Err(p) => p.into_inner().extend(names.iter().cloned()),
        }
        if let Ok(mut roles) = self.roles.lock() {
            roles.retain(|name, _| !names.contains(name));
        }
        if let Ok(conns) = self.conns.lock() {
            for (conn, name) in conns.values() {
                if names.contains(name) {
                    conn.close(
                        quinn::VarInt::from_u32(REMOVED_CODE),
                        b"this node was removed from the cluster",
                    );
                }
            }
        }
    }

    /// The names removed from the cluster.
    pub fn revoked_names(&self) -> std::collections::BTreeSet<NodeName> {
        match self.revoked.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether `name` was removed from the cluster.
    pub fn is_revoked(&self, name: &NodeName) -> bool {
        match self.revoked.read() {
            Ok(g) => g.contains(name),
            Err(p) => p.into_inner().contains(name),
        }
    }

    /// Presents `creds` (a renewed certificate) from the next handshake on, in both directions.
    pub fn install(&self, creds: &Credentials) -> Result<()> {
        self.identity.replace(creds)
    }

    /// The role `name`'s certificate showed on a connection, if this node has seen one.
    pub fn certified_role(&self, name: &NodeName) -> Option<Role> {
        self.roles.lock().ok()?.get(name).copied()
    }

    /// The admin that closed a connection saying this node was removed, if one did. Only an
    /// admin's word counts (an admin may remove nodes); a worker's close says nothing.
    pub fn told_removed(&self) -> Option<NodeName> {
        self.removed_by.lock().ok()?.clone()
    }

    /// Notes who closed `conn` as "removed", when its certificate said admin.
    fn closed_as_removed(&self, conn: &quinn::Connection, identity: Option<&PeerIdentity>) {
        let Some(identity) = identity.filter(|i| i.role == Role::Admin) else {
            return;
        };
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason()
            && close.error_code == quinn::VarInt::from_u32(REMOVED_CODE)
            && let Ok(mut by) = self.removed_by.lock()
        {
            by.get_or_insert_with(|| identity.name.clone());
        }
    }

    fn certified(&self, identity: &PeerIdentity) {
        if let Ok(mut roles) = self.roles.lock() {
            roles.insert(identity.name.clone(), identity.role);
        }
    }

    fn register(&self, addr: SocketAddr, conn: quinn::Connection, name: NodeName) {
        if let Ok(mut conns) = self.conns.lock()
            && let Some((old, _)) = conns.insert(addr, (conn, name))
        {
            self.account_closed(&old);
        }
    }

    fn forget(&self, addr: SocketAddr, conn: &quinn::Connection) {
        if let Ok(mut conns) = self.conns.lock()
            && conns.get(&addr).map(|(c, _)| c.stable_id()) == Some(conn.stable_id())
        {
            conns.remove(&addr);
            self.account_closed(conn);
        }
    }

    fn account_closed(&self, conn: &quinn::Connection) {
        let stats = conn.stats();
        self.closed_tx_bytes
            .fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
        self.closed_rx_bytes
            .fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
    }

    /// The gate's verdict on an incoming connection.
    fn admit(&self, incoming: &quinn::Incoming) -> Admit {
        let in_flight = self.handshaking.load(Ordering::Acquire);
        let now = self.born.elapsed().as_millis() as u64;
        self.gate.lock().map_or(Admit::Refuse, |mut gate| {
            gate.admit(
                &incoming.remote_address().ip(),
                incoming.remote_address_validated(),
                in_flight,
                now,
            )
        })
    }

    /// Whether a warning about `ip` may be logged now (at most once per [`LOG_EVERY`]).
    pub(crate) fn may_warn(&self, ip: IpAddr) -> bool {
        let Ok(mut warned) = self.warned.lock() else {
            return false;
        };
        let now = Instant::now();
        if warned.len() > 4096 {
            warned.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        match warned.get(&ip) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                warned.insert(ip, now);
                true
            }
        }
    }
}

fn peer_identity(conn: &quinn::Connection) -> Option<Result<PeerIdentity>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let first = certs.first()?;
    Some(PeerIdentity::from_cert(first))
}

async fn accept_loop(mesh: Weak<Mesh>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(m) = mesh.upgrade() else { return };
        let remote = incoming.remote_address();
        match m.admit(&incoming) {
            Admit::Accept => {}
            Admit::Retry => {
                if incoming.retry().is_err() {
                    debug!(peer = %remote, "a Retry was refused (the address was validated already)");
                }
                continue;
            }
            Admit::Refuse => {
                if m.may_warn(remote.ip()) {
                    warn!(peer = %remote, "refused a connection: too many handshakes from this address or in all; further refusals from this IP are not logged for a minute");
                }
                incoming.refuse();
                continue;
            }
        }
        let handshake = Counted::new(&m.handshaking);
        drop(m);
        let mesh = mesh.clone();
        tokio::spawn(async move {
            // A handshake that does not finish in time gives its place back: a client that
            // never completes one must not hold the gate's count of handshakes under way.
            let connected = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(connected) => connected,
                Err(_) => {
                    debug!(peer = %remote, "handshake timed out; dropped");
                    return;
                }
            };
            drop(handshake);
            match connected {
                Ok(conn) => accept_connection(mesh, conn).await,
                Err(e) => match handshake_refusal(&e) {
                    Some(what) => {
                        if let Some(m) = mesh.upgrade()
                            && m.may_warn(remote.ip())
                        {
                            warn!(peer = %remote, error = %e, "refused a connection ({what}); further refusals from this IP are not logged for a minute");
                        }
                    }
                    // A member that restarted, gave up or dialled twice: not a refusal.
                    None => debug!(peer = %remote, error = %e, "a handshake did not finish"),
                },
            }
        });
    }
}

/// What a failed handshake says about the certificates, when it was TLS that failed: a peer
/// that went away mid-handshake (it restarted, or dropped a duplicate dial) is no refusal.
fn handshake_refusal(error: &quinn::ConnectionError) -> Option<&'static str> {
    let is_tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) if is_tls(e.code) => {
            Some("handshake failed: no valid cluster certificate, or another protocol")
        }
        quinn::ConnectionError::ConnectionClosed(close) if is_tls(close.error_code) => {
            Some("the peer refused this node's certificate during the handshake")
        }
        quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::VersionMismatch => {
            Some("handshake failed: not a QUIC peer of this version")
        }
        _ => None,
    }
}

/// One unit of a counter of things under way, given back when dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_connection(mesh: Weak<Mesh>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    match peer_identity(&conn) {
        None => serve_join_only(mesh, conn).await,
        Some(Ok(identity)) => {
            let Some(m) = mesh.upgrade() else { return };
            if m.is_revoked(&identity.name) {
                if m.may_warn(remote.ip()) {
                    warn!(peer = %remote, name = %identity.name, "refused a removed node's connection");
                }
                conn.close(
                    quinn::VarInt::from_u32(REMOVED_CODE),
                    b"this node was removed from the cluster",
                );
                return;
            }
            debug!(peer = %remote, name = %identity.name, role = %identity.role, "peer connected");
            tls::grant_member_limits(&conn);
            m.certified(&identity);
            m.register(remote, conn.clone(), identity.name.clone());
            drop(m);
            serve_connection(mesh, conn, Some(identity)).await;
        }
        Some(Err(e)) => {
            if let Some(m) = mesh.upgrade()
                && m.may_warn(remote.ip())
            {
                warn!(peer = %remote, error = %e, "closing connection: certificate from the cluster CA but without a usable identity");
            }
            conn.close(quinn::VarInt::from_u32(2), b"no usable identity");
        }
    }
}

/// A client without a certificate: one request, which must be allowed to anyone (a join), of at
/// most [`Limit::Join`] bytes; at most [`MAX_UNAUTHENTICATED`] such clients at once.
async fn serve_join_only(mesh: Weak<Mesh>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let Some(m) = mesh.upgrade() else { return };
    let _serving = Counted::new(&m.unauthenticated);
    if m.unauthenticated.load(Ordering::Acquire) > MAX_UNAUTHENTICATED {
        if m.may_warn(remote.ip()) {
            warn!(peer = %remote, "closing a connection without a certificate: {MAX_UNAUTHENTICATED} are being served already");
        }
        conn.close(
            quinn::VarInt::from_u32(4),
            b"too many joining clients; try again in a few seconds",
        );
        return;
    }
    let Ok(Ok((send, recv))) = tokio::time::timeout(STREAM_TIMEOUT, conn.accept_bi()).await else {
        conn.close(quinn::VarInt::from_u32(3), b"expected a join request");
        return;
    };
    m.streams_accepted.fetch_add(1, Ordering::Relaxed);
    drop(m);
    serve_request(mesh, None, remote, send, recv).await;
    // Give the reply time to reach the client before closing.
    let _ = tokio::time::timeout(STREAM_TIMEOUT, conn.closed()).await;
    conn.close(quinn::VarInt::from_u32(0), b"join served");
}

/// An authenticated peer: gossip on uni streams, requests on bi streams, until it closes.
async fn serve_connection(
    mesh: Weak<Mesh>,
    conn: quinn::Connection,
    identity: Option<PeerIdentity>,
) {
    let remote = conn.remote_address();
    let accepted = |m: &Weak<Mesh>| {
        if let Some(m) = m.upgrade() {
            m.streams_accepted.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    accepted(&mesh);
                    tokio::spawn(receive_gossip(mesh.clone(), identity.clone(), remote, recv));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    accepted(&mesh);
                    tokio::spawn(serve_request(mesh.clone(), identity.clone(), remote, send, recv));
                }
                Err(_) => break,
            },
        }
    }
    if let Some(m) = mesh.upgrade() {
        m.forget(remote, &conn);
        m.closed_as_removed(&conn, identity.as_ref());
    }
}

async fn receive_gossip(
    mesh: Weak<Mesh>,
    identity: Option<PeerIdentity>,
    remote: SocketAddr,
    mut recv: quinn::RecvStream,
) {
    let read = tokio::time::timeout(STREAM_TIMEOUT, read_message(&mut recv, Limit::Gossip)).await;
    let Some(mesh) = mesh.upgrade() else { return };
    let role = identity.as_ref().map(|i| i.role);
    match read {
        Ok(Ok(Some(message))) if !message.access().allows(role) => {
            if mesh.may_warn(remote.ip()) {
                warn!(peer = %remote, kind = message.kind(), role = ?role, "message refused: caller's role does not allow it");
            }
        }
        Ok(Ok(Some(Message::Gossip(packet)))) => {
            // The access rule admits gossip only from a certified member.
            let Some(sender) = identity else { return };
            if mesh.gossip_in.try_send((remote, sender, packet.0)).is_err() {
                debug!(peer = %remote, "inbound gossip queue full; frame dropped");
            }
        }
        Ok(Ok(None)) => {}
        Ok(Ok(Some(other))) => {
            if mesh.may_warn(remote.ip()) {
                warn!(peer = %remote, kind = other.kind(), "unexpected message on a gossip stream; ignored");
            }
        }
        Ok(Err(e)) => {
            if mesh.may_warn(remote.ip()) {
                warn!(peer = %remote, error = %e, "bad gossip frame; ignored");
            }
        }
        Err(_) => debug!(peer = %remote, "gossip stream timed out"),
    }
}

async fn serve_request(
    mesh: Weak<Mesh>,
    identity: Option<PeerIdentity>,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // A caller without a certificate may send only a join request: it gets the join's limit.
    let limit = match identity {
        Some(_) => Limit::Rpc,
        None => Limit::Join,
    };
    let read = tokio::time::timeout(STREAM_TIMEOUT, read_message(&mut recv, limit)).await;
    let Some(mesh) = mesh.upgrade() else { return };
    let reply = match read {
        Ok(Ok(Some(request))) => {
            let role = identity.as_ref().map(|i| i.role);
            let access = request.access();
            if !access.allows(role) {
                if mesh.may_warn(remote.ip()) {
                    warn!(peer = %remote, kind = request.kind(), role = ?role, "request refused: caller's role does not allow it");
                }
                Message::ErrorReply(refusal(&request, access, identity.as_ref()))
            } else if let Message::ProxyOpen(open) = request {
                mesh.handler.proxy(open, send, recv).await;
                return;
            } else {
                mesh.handler.handle(identity, remote, request).await
            }
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            if mesh.may_warn(remote.ip()) {
                warn!(peer = %remote, error = %e, "bad request frame");
            }
            Message::ErrorReply(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("bad request: {e}"),
            })
        }
        Err(_) => return,
    };
    if write_message(&mut send, &reply, Limit::Rpc).await.is_ok() {
        let _ = send.finish();
    }
}

/// What a caller whose role does not allow `request` is told: what it needs and what it is.
fn refusal(request: &Message, access: Access, caller: Option<&PeerIdentity>) -> ErrorReply {
    let what = match request {
        Message::Peer(peer) => format!("peer request {}", peer.kind()),
        other => other.kind().to_owned(),
    };
    let who = caller.map_or_else(
        || "a caller without a certificate".to_owned(),
        |c| format!("node {} is a {}", c.name, c.role),
    );
    ErrorReply {
        kind: ErrorKind::Unauthorised,
        message: format!("{what} refused: it needs {}, and {who}", access.needs()),
    }
}

async fn peer_sender(mesh: Weak<Mesh>, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        let Some(mesh) = mesh.upgrade() else { return };
        let conn = match mesh.connection(to).await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Drop what queued up while dialling: it is stale gossip by now.
                while rx.try_recv().is_ok() {}
                if mesh.may_warn(to.ip()) {
                    info!(peer = %to, error = %e, "cannot reach peer; will retry on the next gossip round");
                }
                continue;
            }
        };
        match send_uni(&conn, &frame).await {
            Ok(()) => {
                mesh.streams_opened.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(peer = %to, error = %e, "gossip send failed; dropping connection");
                mesh.forget(to, &conn);
            }
        }
    }
}

async fn send_uni(conn: &quinn::Connection, frame: &[u8]) -> Result<()> {
    let send = async {
        let mut stream = conn
            .open_uni()
            .await
            .map_err(|e| Error::Net(e.to_string()))?;
        stream
            .write_all(frame)
            .await
            .map_err(|e| Error::Net(e.to_string()))?;
        stream.finish().map_err(|e| Error::Net(e.to_string()))
    };
    tokio::time::timeout(STREAM_TIMEOUT, send)
        .await
        .map_err(|_| Error::Net("stream timed out".into()))?
}
