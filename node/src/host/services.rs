//! The services of this node: one [`ServiceHandle`] per service, created by the first `prepare`
//! step that names it and found again on disk when the node restarts.
//!
//! ## Guarantees
//! - At most one host per service name; concurrent first deploys of a service create it once.
//! - A record that cannot be read is logged with its path and skipped; the other services start.
//! - A service whose first prepare fails is not kept: its entry point closes, its record and
//!   routing table go, and the next deploy is a first deploy again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use halley_proto::NodeName;
use halley_proto::deploy::{ServiceStatus, Step, StepReply, StepRequest};
use halley_proto::disk::{FenceRecord, ServiceRecord};
use halley_proto::gossip::{SERVICE_KEY_PREFIX, ServiceSummary};
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::spec::ServiceName;
use tracing::{error, info};

use crate::host::handle::{HostContext, ServiceHandle, fence_name, record_name};
use crate::host::removal;

/// This node's services.
pub struct Services {
    ctx: Arc<HostContext>,
    hosts: tokio::sync::Mutex<BTreeMap<ServiceName, Arc<ServiceHandle>>>,
    /// Held while a run-once command (migrate, contract) checks, runs and records itself.
    ledgers: tokio::sync::Mutex<()>,
    /// Set by [`Services::freeze`]: no step or state work is taken from then on.
    frozen: std::sync::atomic::AtomicBool,
    /// State requests (snapshots, restores, migrations, backups) and removals being answered.
    state_ops: Arc<std::sync::atomic::AtomicUsize>,
    /// Services being removed: their steps are refused until the removal is done.
    removing: std::sync::Mutex<BTreeSet<ServiceName>>,
}

/// A service being removed, let go when dropped.
struct Removing<'a>(&'a Services, ServiceName);

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        self.0.lock_removing().remove(&self.1);
    }
}

fn being_removed(service: &ServiceName) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Unavailable,
        message: format!(
            "service {service} is being removed from this node; try again once 'halley-node service remove' is done"
        ),
    }
}

/// One state request being answered, counted while it lives.
pub struct StateOp(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StateOp {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn handing_over() -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Unavailable,
        message:
            "this node's daemon is handing over to a new one (upgrade); try again in a few seconds"
                .into(),
    }
}

impl Services {
    /// Adopts every service recorded in the data dir.
    pub fn load(ctx: HostContext) -> Self {
        let ctx = Arc::new(ctx);
        let mut hosts = BTreeMap::new();
        let dir = ctx.data_dir.file("services");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            let Ok(name) = ServiceName::parse(&name) else {
                continue;
            };
            let file = record_name(&name);
            if !ctx.data_dir.file(&file).exists() {
                continue;
            }
            match ctx.data_dir.read_record::<ServiceRecord>(&file) {
                Ok(record) => {
                    info!(service = %name, "adopting service");
                    hosts.insert(name, Arc::new(ServiceHandle::adopt(ctx.clone(), record)));
                }
                Err(e) => {
                    error!(service = %name, error = %e, "cannot read the service record; the service is not started")
                }
            }
        }
        Self {
            ctx,
            hosts: tokio::sync::Mutex::new(hosts),
            ledgers: tokio::sync::Mutex::new(()),
            frozen: std::sync::atomic::AtomicBool::new(false),
            state_ops: Arc::default(),
            removing: std::sync::Mutex::default(),
        }
    }

    /// Runs a deploy step sent by node `by` (the caller's certificate name, or this node's own
    /// for a local command): its fencing token is (the request's epoch, `by`).
    pub async fn step(&self, request: StepRequest, by: NodeName) -> Result<StepReply, ErrorReply> {
        if let Step::Remove { purge } = request.step {
            let token = FenceRecord {
                epoch: request.epoch,
                coordinator: Some(by),
            };
            return self.remove(&request.service, token, purge).await;
        }
        if let Step::Prepare { spec, .. } = &request.step
            && !spec.hosts.includes(&self.ctx.node)
        {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!(
                    "node {} is not in `hosts` of service {}; add it, or deploy from a node that is",
                    self.ctx.node, request.service
                ),
            });
        }
        // A removed service's token outlives it; a failed first prepare must not take it away.
        let fenced_before = self
            .ctx
            .data_dir
            .file(&fence_name(&request.service))
            .exists();
        let (handle, created) = {
            let mut hosts = self.hosts.lock().await;
            if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
                return Err(handing_over());
            }
            if self.lock_removing().contains(&request.service) {
                return Err(being_removed(&request.service));
            }
            match (hosts.get(&request.service), &request.step) {
                (Some(h), _) => (h.clone(), false),
                (None, Step::Prepare { spec, .. }) => {
                    let h = Arc::new(
                        ServiceHandle::create(
                            self.ctx.clone(),
                            request.service.clone(),
                            (**spec).clone(),
                        )
                        .await?,
                    );
                    hosts.insert(request.service.clone(), h.clone());
                    (h, true)
                }
                (None, step) => {
                    return Err(ErrorReply {
                        kind: ErrorKind::NotFound,
                        message: format!(
                            "service {} is not deployed on node {}; '{}' needs a deploy first",
                            request.service,
                            self.ctx.node,
                            step.name()
                        ),
                    });
                }
            }
        };
        let fence = FenceRecord {
            epoch: request.epoch,
            coordinator: Some(by),
        };
        let result = handle.step(Some(fence), request.step).await;
        if created && result.is_err() {
            self.forget_unprepared(&request.service, handle, fenced_before)
                .await;
        }
        result
    }

    /// Removes a service from this node (see [`crate::host::removal`]): its host stops both
    /// slots and ends, then its entry point, routes, meters and files go. Steps of the service
    /// are refused meanwhile, and an upgrade waits. A service that is not here has its token
    /// admitted and kept all the same (and its data purged, with `purge`).
    async fn remove(
        &self,
        service: &ServiceName,
        token: FenceRecord,
        purge: bool,
    ) -> Result<StepReply, ErrorReply> {
        let _op = self.state_op()?;
        let handle = {
            let hosts = self.hosts.lock().await;
            if !self.lock_removing().insert(service.clone()) {
                return Err(being_removed(service));
            }
            hosts.get(service).cloned()
        };
        let _removing = Removing(self, service.clone());
        let dir = self.ctx.releases.service_dir(service);
        let mut stopped = Vec::new();
        let mut kill_after = std::time::Duration::ZERO;
        if let Some(handle) = handle {
            kill_after = removal::kill_after(&self.ctx.data_dir, service);
            if let StepReply::Removed { stopped: s, .. } =
                handle.step(Some(token), Step::Remove { purge }).await?
            {
                stopped = s;
            }
            let mut hosts = self.hosts.lock().await;
            if hosts.get(service).is_some_and(|h| Arc::ptr_eq(h, &handle)) {
                hosts.remove(service);
            }
        } else {
            removal::admit_absent(&self.ctx.data_dir, service, &token)?;
            if !purge {
                return Ok(StepReply::Removed {
                    stopped,
                    purged: false,
                });
            }
        }
        self.ctx.cluster.remove(service);
        self.ctx.meters.remove(service);
        let left = removal::wait_gone(&stopped, kill_after + removal::EXIT_GRACE).await;
        if !left.is_empty() {
            error!(service = %service, pids = ?left, "processes of a removed service did not exit after SIGKILL");
        }
        let (data_dir, name) = (self.ctx.data_dir.clone(), service.clone());
        let failed =
            tokio::task::spawn_blocking(move || removal::delete(&data_dir, &dir, &name, purge))
                .await
                .map_err(|e| {
                    crate::error::error_reply(
                        ErrorKind::Internal,
                        format!("removal task failed: {e}"),
                    )
                })?;
        if let Some(why) = failed {
            return Err(crate::error::error_reply(
                ErrorKind::Internal,
                format!(
                    "service {service} is stopped on node {}, but some of its files could not be deleted: {why}; fix that and run 'halley-node service remove {service}' again",
                    self.ctx.node
                ),
            ));
        }
        info!(service = %service, purge, stopped = stopped.len(), "service removed from this node");
        Ok(StepReply::Removed {
            stopped,
            purged: purge,
        })
    }

    fn lock_removing(&self) -> std::sync::MutexGuard<'_, BTreeSet<ServiceName>> {
        self.removing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Undoes the creation of a service whose first prepare failed, so no ghost stays behind (an
    /// entry point holding the port, a record adopted at the next start). A service that got a
    /// release meanwhile (a concurrent prepare) is kept.
    async fn forget_unprepared(
        &self,
        service: &ServiceName,
        handle: Arc<ServiceHandle>,
        fenced_before: bool,
    ) {
        let mut hosts = self.hosts.lock().await;
        let same = hosts.get(service).is_some_and(|h| Arc::ptr_eq(h, &handle));
        if !same || !handle.status().releases.is_empty() {
            return;
        }
        hosts.remove(service);
        drop(handle);
        self.ctx.cluster.remove(service);
        // The fence may have saved the record already; its directory goes too if that empties it.
        let record = self.ctx.data_dir.file(&record_name(service));
        if !fenced_before {
            let _ = std::fs::remove_file(self.ctx.data_dir.file(&fence_name(service)));
        }
        let _ = std::fs::remove_file(&record);
        if let Some(dir) = record.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        info!(service = %service, "the first prepare failed; the service is not kept");
    }

    /// Freezes every service for an upgrade (see [`crate::host::actor::Frozen`]): no host
    /// decides or writes from now on; their entry points serve on. Entry points not bound yet
    /// (their address still taken) are not handed over: the new daemon binds them itself.
    pub async fn freeze(&self) -> Vec<crate::host::actor::Frozen> {
        let hosts = {
            let mut hosts = self.hosts.lock().await;
            self.frozen
                .store(true, std::sync::atomic::Ordering::Release);
            std::mem::take(&mut *hosts)
        };
        let mut frozen = Vec::new();
        for (name, handle) in hosts {
            match handle.freeze().await {
                Ok(f) => frozen.push(f),
                Err(e) => {
                    error!(service = %name, error = %e.message, "cannot freeze the service's host")
                }
            }
        }
        frozen
    }

    /// Counts a state request while the guard lives; refused once the services are frozen.
    pub fn state_op(&self) -> Result<StateOp, ErrorReply> {
        self.state_ops
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let op = StateOp(self.state_ops.clone());
        if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
            return Err(handing_over());
        }
        Ok(op)
    }

    /// State requests being answered now.
    pub fn state_ops(&self) -> usize {
        self.state_ops.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Handed-over entry points no service took (its record could not be read): closed here,
    /// so the address is not held by nobody.
    pub fn drop_unclaimed(&self) {
        let left = self
            .ctx
            .inherited
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        for addr in left.keys() {
            info!(%addr, "a handed-over entry point belongs to no service here; closed");
        }
    }

    /// The highest epoch this node obeyed for `service`, whether it runs here or was removed
    /// (0: none; a token that cannot be read counts as none: the host refuses by it anyway).
    pub fn held_epoch(&self, service: &ServiceName) -> u64 {
        self.ctx
            .data_dir
            .read_record_or_default::<FenceRecord>(&fence_name(service))
            .map_or(0, |f| f.epoch)
    }

    /// A service's host, if the service runs here.
    pub async fn handle(&self, service: &ServiceName) -> Option<Arc<ServiceHandle>> {
        self.hosts.lock().await.get(service).cloned()
    }

    /// This node's drain and who holds it.
    pub fn drains(&self) -> &crate::host::drains::NodeDrain {
        &self.ctx.drains
    }

    /// Every service's routing table.
    pub fn cluster(&self) -> &crate::proxy::routes::Cluster {
        &self.ctx.cluster
    }

    /// Every slot's cumulative request meters.
    pub fn meters(&self) -> &crate::proxy::meters::Meters {
        &self.ctx.meters
    }

    /// A coordinator watching `service`: its status, and contact for its `orphan_timeout`.
    pub async fn watch(&self, service: &ServiceName) -> Option<ServiceStatus> {
        let handle = self.handle(service).await?;
        handle.touch();
        Some(handle.status())
    }

    /// Waits for, then holds, this node's run-once ledgers: a command that checks a ledger, runs
    /// and records itself under this guard runs at most once however many ask at the same time.
    pub async fn ledgers(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ledgers.lock().await
    }

    /// This node's name.
    pub fn node(&self) -> &halley_proto::NodeName {
        &self.ctx.node
    }

    /// The data dir.
    pub fn data_dir(&self) -> &crate::store::datadir::DataDir {
        &self.ctx.data_dir
    }

    /// The artifact store and releases.
    pub fn releases(&self) -> &crate::store::releases::Releases {
        &self.ctx.releases
    }

    /// A release prepared on this node.
    pub async fn release(
        &self,
        service: &ServiceName,
        version: &halley_proto::deploy::ReleaseVersion,
    ) -> Option<halley_proto::disk::ReleaseEntry> {
        let handle = self.hosts.lock().await.get(service).cloned()?;
        handle.release(version)
    }

    /// Every service's status.
    pub async fn statuses(&self) -> Vec<ServiceStatus> {
        self.hosts
            .lock()
            .await
            .values()
            .map(|h| h.status())
            .collect()
    }

    /// The gossip key-values that describe the services (`svc:NAME`).
    pub async fn gossip(&self) -> Vec<(String, String)> {
        self.statuses()
            .await
            .iter()
            .map(|s| {
                (
                    format!("{SERVICE_KEY_PREFIX}{}", s.name),
                    summary(s).format(),
                )
            })
            .collect()
    }
}

/// What a node publishes about a service: its active slot's release, health and signals.
pub fn summary(status: &ServiceStatus) -> ServiceSummary {
    let active = status
        .slots
        .iter()
        .find(|s| s.role == halley_proto::deploy::SlotRole::Active);
    match active {
        Some(slot) => {
            let sig = slot.signals;
            ServiceSummary {
                version: slot.version.as_ref().map_or("-".into(), |v| v.to_string()),
                slot: slot.color.to_string(),
                health: slot.health.as_str().into(),
                restarts: slot.restarts,
                rate_milli: sig.requests * 1_000_000 / sig.window_ms.max(1),
                errors_bp: sig.errors * 10_000 / sig.requests.max(1),
                p99_us: sig.p99_us,
            }
        }
        None => ServiceSummary {
            version: "-".into(),
            slot: "-".into(),
            health: "stopped".into(),
            restarts: 0,
            rate_milli: 0,
            errors_bp: 0,
            p99_us: 0,
        },
    }
}
