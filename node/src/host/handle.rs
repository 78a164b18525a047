//! The public face of a service on this node: [`ServiceHandle`] creates a service's host (binding
//! its entry point first) or adopts one from disk, and sends it deploy steps. `prepare`'s slow
//! part (storing and unpacking the artifact) runs here, off the host's actor, so the actor keeps
//! answering probes and drains meanwhile.
//!
//! ## Guarantees
//! - A taken entry point address fails the first deploy of a service before anything starts.
//! - A prepare that changes `listen` or `protocol` is refused with what is allowed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use halley_proto::NodeName;
use halley_proto::deploy::{ArtifactSource, ReleaseVersion, ServiceStatus, Step, StepReply};
use halley_proto::disk::{FenceRecord, ReleaseEntry, ServiceRecord, SlotRecord};
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::spec::{Protocol, ServiceName, ServiceSpec};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::{mono_ms, wall_ms};
use crate::engine::slots::Refused;
use crate::error::error_reply;
use crate::host::actor::Host;
use crate::store::datadir::DataDir;
use crate::store::releases::Releases;

/// What every service host of a node shares.
#[derive(Debug)]
pub struct HostContext {
    /// This node's name.
    pub node: NodeName,
    /// The data dir.
    pub data_dir: DataDir,
    /// The artifact store and releases.
    pub releases: Releases,
    /// The address a `listen = ":PORT"` binds on.
    pub service_address: std::net::IpAddr,
    /// This node's drain and who holds it: `GET /.halley/ready` on every HTTP entry point
    /// answers 503 while it is held, so an external balancer stops sending.
    pub drains: Arc<crate::host::drains::NodeDrain>,
    /// Every service's routing table, and the mesh that reaches peers' instances.
    pub cluster: Arc<crate::proxy::routes::Cluster>,
    /// Every slot's cumulative request meters (the metrics endpoint reads them).
    pub meters: Arc<crate::proxy::meters::Meters>,
    /// Entry point sockets an upgrade handed over, by address, until a service takes its own.
    pub inherited: std::sync::Mutex<std::collections::BTreeMap<SocketAddr, std::net::TcpListener>>,
}

impl HostContext {
    /// The handed-over listening socket of `addr`, if there is one.
    pub(crate) fn take_inherited(&self, addr: SocketAddr) -> Option<TcpListener> {
        let std = self.inherited.lock().ok()?.remove(&addr)?;
        std.set_nonblocking(true).ok()?;
        TcpListener::from_std(std).ok()
    }
}

pub(crate) type StepResult = Result<StepReply, ErrorReply>;

pub(crate) enum Command {
    /// `fence: None` is the host's own work (a restore waking the committed release), which no
    /// coordinator's token orders.
    Step {
        step: Step,
        fence: Option<FenceRecord>,
        reply: oneshot::Sender<StepResult>,
    },
    Register {
        entry: Box<ReleaseEntry>,
        fence: Option<FenceRecord>,
        unpacked: bool,
        reply: oneshot::Sender<StepResult>,
    },
    /// Stop every slot (before a data restore); answers with the processes being stopped.
    Quiesce {
        reply: oneshot::Sender<Vec<(u32, u64)>>,
    },
    /// Stop deciding and give up the entry point (an upgrade); the actor ends.
    Freeze {
        reply: oneshot::Sender<crate::host::actor::Frozen>,
    },
    /// Admit a token (saving it when higher) before a step's slow part: a prepare's store and
    /// unpack, so that a lower token (a removal it outranks) is refused while it runs.
    Admit {
        fence: FenceRecord,
        reply: oneshot::Sender<Result<(), ErrorReply>>,
    },
}

/// A running service host.
pub struct ServiceHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<ServiceStatus>,
    ctx: Arc<HostContext>,
    name: ServiceName,
    task: JoinHandle<()>,
    /// When a coordinator last reached the service (monotonic ms, shared with its host).
    contact: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for ServiceHandle {
    // Ending the actor drops its entry point's listener too.
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn from_refused(r: Refused) -> ErrorReply {
    error_reply(r.kind, r.message)
}

/// The record file of a service, relative to the data dir.
pub fn record_name(name: &ServiceName) -> String {
    format!("services/{name}/service.rec")
}

/// The fencing token file of a service, relative to the data dir.
pub fn fence_name(name: &ServiceName) -> String {
    format!("services/{name}/fence.rec")
}

/// Where a service's [`RollbackMarker`](halley_proto::disk::RollbackMarker) is kept.
pub fn rollback_name(name: &ServiceName) -> String {
    format!("services/{name}/rollback.rec")
}

impl ServiceHandle {
    /// Starts the host of a service seen for the first time: binds its entry point now, so that a
    /// taken address fails the deploy before anything runs.
    pub async fn create(
        ctx: Arc<HostContext>,
        name: ServiceName,
        spec: ServiceSpec,
    ) -> Result<Self, ErrorReply> {
        let addr = spec.listen.resolve(ctx.service_address);
        let handed = ctx.take_inherited(addr);
        let listener = match handed {
            Some(l) => Ok(l),
            None => bind(addr).await,
        };
        let listener = listener.map_err(|e| {
            error_reply(
                ErrorKind::Conflict,
                format!(
                    "cannot listen on {addr} for service {name}: {e}. Another program holds that address; choose another `listen` in halley.toml or stop that program"
                ),
            )
        })?;
        let record = ServiceRecord {
            name: name.clone(),
            spec,
            committed: None,
            previous: None,
            active: None,
            slots: [SlotRecord::default(), SlotRecord::default()],
            releases: Vec::new(),
            epoch: 0,
        };
        let dir = ctx.releases.service_dir(&name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            error_reply(
                ErrorKind::Internal,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        Ok(Self::start(ctx, record, Some(listener)))
    }

    /// Starts the host of a service found on disk after a node restart: adopts its processes.
    pub fn adopt(ctx: Arc<HostContext>, record: ServiceRecord) -> Self {
        Self::start(ctx, record, None)
    }

    fn start(ctx: Arc<HostContext>, record: ServiceRecord, listener: Option<TcpListener>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let name = record.name.clone();
        let mut host = Host::new(ctx.clone(), record);
        host.adopt_slots();
        host.start_listener(listener);
        let (status_tx, status) = watch::channel(host.status());
        host.status_tx = Some(status_tx);
        let contact = host.contact.clone();
        let task = tokio::spawn(host.run(rx));
        Self {
            tx,
            status,
            ctx,
            name,
            task,
            contact,
        }
    }

    /// Notes a coordinator's contact for this service (see `orphan_timeout`).
    pub fn touch(&self) {
        self.contact
            .fetch_max(mono_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A prepared release (from the saved record).
    pub fn release(&self, version: &ReleaseVersion) -> Option<ReleaseEntry> {
        let record: ServiceRecord = self
            .ctx
            .data_dir
            .read_record(&record_name(&self.name))
            .ok()?;
        record.releases.into_iter().find(|r| &r.version == version)
    }

    /// The service's current status; the routing counters are read live (the host publishes
    /// the rest on its own events and ticks).
    pub fn status(&self) -> ServiceStatus {
        let mut status = self.status.borrow().clone();
        if let Some(routes) = self.ctx.cluster.get(&self.name) {
            status.routing = routes.status();
        }
        status
    }

    /// Runs one deploy step, fenced by `fence` (see [`FenceRecord`]).
    pub async fn step(&self, fence: Option<FenceRecord>, step: Step) -> StepResult {
        if let Step::Prepare {
            spec,
            version,
            artifact,
        } = step
        {
            return self.prepare(fence, *spec, version, artifact).await;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Step { step, fence, reply }).await?;
        rx.await
            .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))?
    }

    /// Stops the host's decisions for an upgrade; its entry point serves on (see [`Frozen`]).
    ///
    /// [`Frozen`]: crate::host::actor::Frozen
    pub async fn freeze(&self) -> Result<crate::host::actor::Frozen, ErrorReply> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Freeze { reply }).await?;
        rx.await
            .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))
    }

    /// Takes every route away and stops every slot, so nothing writes the service's data.
    /// Returns the processes being stopped (pid, start ticks); they may still be exiting.
    pub async fn quiesce(&self) -> Result<Vec<(u32, u64)>, ErrorReply> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Quiesce { reply }).await?;
        rx.await
            .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))
    }

    async fn send(&self, command: Command) -> Result<(), ErrorReply> {
        self.tx
            .send(command)
            .await
            .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))
    }

    /// Stores and unpacks outside the actor (it can take a while), then registers the release.
    async fn prepare(
        &self,
        fence: Option<FenceRecord>,
        spec: ServiceSpec,
        version: ReleaseVersion,
        artifact: ArtifactSource,
    ) -> StepResult {
        if let Some(token) = fence.clone() {
            let (reply, rx) = oneshot::channel();
            self.send(Command::Admit {
                fence: token,
                reply,
            })
            .await?;
            rx.await
                .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))??;
        }
        let current = self.status();
        let listen = spec.listen.resolve(self.ctx.service_address).to_string();
        let protocol = protocol_name(spec.protocol);
        if current.listen != listen || current.protocol != protocol {
            return Err(error_reply(
                ErrorKind::Conflict,
                format!(
                    "service {} listens on {} ({}) on this node; this spec says {listen} ({protocol}). Changing a service's entry point in a deploy is not supported: keep `listen` and `protocol`, or deploy under a new service name",
                    self.name, current.listen, current.protocol
                ),
            ));
        }
        let releases = self.ctx.releases.clone();
        let name = self.name.clone();
        let v = version.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let (sha, file_name) = match artifact {
                ArtifactSource::LocalPath { path, sha256 } => {
                    let path = PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(crate::Error::Invalid(format!(
                            "artifact path {} must be absolute",
                            path.display()
                        )));
                    }
                    let file_name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (releases.store_local(&path, sha256)?, file_name)
                }
                ArtifactSource::Stored { sha256, file_name } => (sha256, file_name),
            };
            let (_, unpacked) = releases.unpack(&name, &v, &sha, &file_name)?;
            Ok((sha, unpacked, file_name))
        })
        .await
        .map_err(|e| error_reply(ErrorKind::Internal, format!("unpack task failed: {e}")))?;
        let (sha256, unpacked, file_name) =
            stored.map_err(|e| error_reply(ErrorKind::BadRequest, e.to_string()))?;
        let entry = Box::new(ReleaseEntry {
            version,
            sha256,
            file_name,
            created_ms: wall_ms(),
            spec,
        });
        let (reply, rx) = oneshot::channel();
        self.send(Command::Register {
            entry,
            fence,
            unpacked,
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| error_reply(ErrorKind::Internal, "the service host stopped"))?
    }
}

pub(crate) fn protocol_name(p: Protocol) -> String {
    match p {
        Protocol::Http => "http".into(),
        Protocol::Tcp => "tcp".into(),
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted node must get its entry point back at once, despite TIME_WAIT connections.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
