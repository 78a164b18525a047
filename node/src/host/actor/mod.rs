//! The driver of one service on this node: an actor task that owns the service's [`Slots`]
//! engine, its two slot processes, their health probes and restarts, the entry point's proxy, and
//! the service's record on disk. Deploy steps arrive as commands; probe results and process exits
//! arrive as events; a 50 ms tick applies deadlines. Decisions are the engine's, the
//! [`HealthTracker`]'s and the [`Supervisor`]'s; this file only carries them out.
//!
//! ## Guarantees
//! - Steps of one service run one at a time, in order. `check` and `drain` wait without blocking
//!   the actor: they are answered from the tick when their condition is met or their deadline
//!   passes.
//! - The record (`services/NAME/service.rec`) is saved after every change, before the step is
//!   answered, so a restarted node adopts exactly what was running.
//! - A slot process that exits is restarted with back-off; a crash loop makes it unhealthy.
//! - The entry point is bound when the service is first prepared (so a taken port fails the
//!   deploy before anything starts), and re-bound by a restarted node, retrying until it is free.

use std::sync::Arc;
use std::time::{Duration, Instant};

use halley_proto::deploy::{
    Color, Health, ReleaseVersion, ServiceStatus, Signals, SlotRole, SlotStatus, Step, StepReply,
};
use halley_proto::disk::{FenceRecord, ReleaseEntry, RollbackMarker, ServiceRecord, SlotRecord};
use halley_proto::message::{ErrorKind, ErrorReply};
use halley_proto::spec::{Protocol, ServiceName, ServiceSpec};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::mono_ms;
use crate::engine::fence;
use crate::engine::health::HealthTracker;
use crate::engine::slots::{Action, Policy, Reverted, Slots};
use crate::engine::supervise::{RestartPolicy, Supervisor};
use crate::error::error_reply;
use crate::host::handle::{
    Command, HostContext, StepResult, bind, fence_name, from_refused, protocol_name, record_name,
    rollback_name,
};
use crate::host::process::{self, Launch};
use crate::host::slot::{self, DrainInfo, Event, SlotRuntime, log_tail};
use crate::proxy;
use crate::proxy::routes::ServiceRoutes;
use crate::proxy::upstream::Upstream;

mod freeze;
mod recovery;
mod waiters;
pub use freeze::Frozen;
use waiters::{CheckWaiter, DrainWaiter};

const TICK: Duration = Duration::from_millis(50);

pub(crate) struct Host {
    ctx: Arc<HostContext>,
    record: ServiceRecord,
    /// The highest fencing token obeyed (kept in `fence.rec`, and its epoch in the record).
    fence: FenceRecord,
    engine: Slots,
    routes: Arc<ServiceRoutes>,
    listener: Option<JoinHandle<()>>,
    /// A second descriptor of the entry point's listening socket, once bound (for an upgrade).
    entry_fd: Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>,
    slots: [SlotRuntime; 2],
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    check: Option<CheckWaiter>,
    drain: Option<DrainWaiter>,
    clock: Instant,
    pub(crate) status_tx: Option<watch::Sender<ServiceStatus>>,
    last_signals_ms: u64,
    /// How long the last route switch took (a flip's own cost, without saving the record).
    route_switch_ns: u64,
    /// When a coordinator last reached this service (monotonic ms; see `orphan_timeout`).
    pub(crate) contact: Arc<std::sync::atomic::AtomicU64>,
    /// The release a rollback started here, until it is committed or reverted.
    rolling_back_to: Option<ReleaseVersion>,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

fn policy_of(spec: &ServiceSpec) -> Policy {
    Policy {
        drain_ms: spec.stop.drain_timeout.0,
        keep_warm_ms: spec.keep_warm.0,
        stop_start: spec.strategy == halley_proto::spec::Strategy::StopStart,
    }
}

impl Host {
    pub(crate) fn new(ctx: Arc<HostContext>, record: ServiceRecord) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let engine = Slots::new(policy_of(&record.spec));
        let routes = ctx.cluster.table(
            &record.name,
            ctx.drains.flag(),
            record.spec.routing,
            record.spec.protocol,
            &record.spec.hosts,
        );
        let saved: FenceRecord = ctx
            .data_dir
            .read_record_or_default(&fence_name(&record.name))
            .unwrap_or_else(|e| {
                warn!(service = %record.name, error = %e, "cannot read the fencing token; going by the record's epoch");
                FenceRecord::default()
            });
        // A rollback's uncommitted deploy survives a restart as such (see the orphan rule).
        let marker = ctx.data_dir.file(&rollback_name(&record.name));
        let rolling_back_to = match marker.exists() {
            false => None,
            true => match ctx
                .data_dir
                .read_record::<RollbackMarker>(&rollback_name(&record.name))
            {
                Ok(m) => Some(m.version),
                Err(e) => {
                    warn!(service = %record.name, error = %e, "cannot read the rollback marker; an orphaned deploy will be reverted");
                    None
                }
            },
        };
        let fence = saved.max(FenceRecord {
            epoch: record.epoch,
            coordinator: None,
        });
        Self {
            ctx,
            record,
            fence,
            engine,
            routes,
            listener: None,
            entry_fd: Arc::default(),
            slots: Default::default(),
            events_tx,
            events_rx,
            check: None,
            drain: None,
            clock: Instant::now(),
            status_tx: None,
            last_signals_ms: 0,
            route_switch_ns: 0,
            // A (re)started host gives its coordinator a whole orphan_timeout to get in touch.
            contact: Arc::new(std::sync::atomic::AtomicU64::new(mono_ms())),
            rolling_back_to,
        }
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn name(&self) -> &ServiceName {
        &self.record.name
    }

    /// Takes over slot processes from the record (a node restart), restarting an active slot
    /// whose process is gone.
    pub(crate) fn adopt_slots(&mut self) {
        let now = self.now();
        // Before anything watches or starts a slot: a launch the node never recorded is stopped.
        for color in Color::BOTH {
            let rec = &self.record.slots[color.index()];
            let recorded = rec
                .pid
                .filter(|pid| process::same_process(*pid, rec.start_ticks));
            crate::host::strays::stop_unrecorded(
                &self.ctx.data_dir,
                &self.record.name,
                color,
                recorded,
            );
        }
        let mut versions: [Option<ReleaseVersion>; 2] = [None, None];
        let mut restart = Vec::new();
        for color in Color::BOTH {
            let rec = self.record.slots[color.index()].clone();
            let (Some(version), Some(spec)) = (rec.version.clone(), rec.spec.clone()) else {
                continue;
            };
            let alive = rec.pid.and_then(|pid| process::adopt(pid, rec.start_ticks));
            let is_active = self.record.active == Some(color);
            if alive.is_none() && !is_active {
                continue;
            }
            versions[color.index()] = Some(version.clone());
            let rt = &mut self.slots[color.index()];
            let meters = self.ctx.meters.slot(&self.record.name, color);
            let service_dir = self.ctx.releases.service_dir(&self.record.name);
            crate::host::logs::adopt_legacy(&service_dir, &version, color);
            rt.upstream = Some(Upstream::new(color, version.clone(), rec.port, meters));
            rt.supervisor = Supervisor::new(RestartPolicy::default());
            match alive {
                Some(p) => {
                    info!(service = %self.record.name, slot = %color, pid = p.pid, %version, "adopted running slot process");
                    rt.tracker = Some(HealthTracker::adopted(&spec.health, now));
                    rt.spec = Some(spec);
                    rt.pid = Some((p.pid, p.start_ticks));
                    rt.since_ms = now;
                    self.watch(color, p);
                }
                None => {
                    warn!(service = %self.record.name, slot = %color, %version, "active slot process is gone; restarting it");
                    rt.spec = Some(spec);
                    restart.push(color);
                }
            }
        }
        let policy = self
            .record
            .active
            .and_then(|c| self.slots[c.index()].spec.as_ref())
            .map(policy_of)
            .unwrap_or_else(|| policy_of(&self.record.spec));
        self.engine = Slots::restore(
            policy,
            self.record.active,
            versions,
            self.record.committed.clone(),
            self.record.previous.clone(),
        );
        if let Some(active) = self.engine.active() {
            self.routes
                .router
                .set(self.slots[active.index()].upstream.clone());
        }
        for color in restart {
            if let Err(e) = self.launch(color) {
                error!(service = %self.record.name, slot = %color, error = %e, "cannot restart adopted slot");
            }
        }
    }

    pub(crate) fn start_listener(&mut self, listener: Option<TcpListener>) {
        let addr = self.record.spec.listen.resolve(self.ctx.service_address);
        let routes = self.routes.clone();
        let protocol = self.record.spec.protocol;
        let name = self.record.name.to_string();
        let entry_fd = self.entry_fd.clone();
        let handed = self.ctx.take_inherited(addr);
        self.listener = Some(tokio::spawn(async move {
            let listener = match listener.or(handed) {
                Some(l) => l,
                None => {
                    let mut warned = false;
                    loop {
                        match bind(addr).await {
                            Ok(l) => break l,
                            Err(e) => {
                                if !warned {
                                    error!(service = %name, %addr, error = %e, "cannot bind the entry point; retrying every 500ms");
                                    warned = true;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                }
            };
            if let (Ok(fd), Ok(mut slot)) = (
                std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned(),
                entry_fd.lock(),
            ) {
                *slot = Some(fd);
            }
            info!(service = %name, %addr, "entry point listening");
            match protocol {
                Protocol::Http => proxy::http::serve(listener, routes).await,
                Protocol::Tcp => proxy::tcp::serve(listener, routes).await,
            }
        }));
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Freeze { reply }) => {
                        let _ = reply.send(self.freeze());
                        return;
                    }
                    Some(Command::Step { step: Step::Remove { .. }, fence, reply }) => {
                        match self.fence(fence) {
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                            Ok(()) => {
                                let _ = reply.send(Ok(self.remove()));
                                return;
                            }
                        }
                    }
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.event(event),
                _ = tick.tick() => self.tick(),
            }
            self.publish();
        }
    }

    /// The service leaves this node: routes away, both slots stopped (by their own tasks, which
    /// outlive this actor), nothing decided after it. The caller deletes what is on disk.
    fn remove(&mut self) -> StepReply {
        let stopped: Vec<(u32, u64)> = self.slots.iter().filter_map(|rt| rt.pid).collect();
        warn!(service = %self.record.name, "removing the service: stopping every slot");
        let _ = self.mark_rollback(None);
        let actions = self.engine.stop_all();
        self.apply(actions);
        self.publish();
        StepReply::Removed {
            stopped,
            purged: false,
        }
    }

    fn publish(&mut self) {
        self.routes.set_routing(self.record.spec.routing);
        self.routes.set_hosts(&self.record.spec.hosts);
        let local_ok = self
            .engine
            .active()
            .is_some_and(|c| self.engine.slot(c).health != Health::Unhealthy);
        self.routes.set_local_ok(local_ok);
        let status = self.status();
        if let Some(tx) = &self.status_tx {
            tx.send_if_modified(|old| {
                if *old == status {
                    false
                } else {
                    *old = status;
                    true
                }
            });
        }
    }

    fn command(&mut self, command: Command) {
        if !matches!(command, Command::Quiesce { .. }) {
            self.contact
                .fetch_max(mono_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        match command {
            Command::Register {
                entry,
                fence,
                unpacked,
                reply,
            } => {
                let result = self
                    .fence(fence)
                    .and_then(|()| self.register(*entry, unpacked));
                let _ = reply.send(result);
            }
            // Taken by `run`, which ends the actor with it.
            Command::Freeze { .. } => {}
            Command::Admit { fence, reply } => {
                let _ = reply.send(self.fence(Some(fence)));
            }
            Command::Quiesce { reply } => {
                let stopping: Vec<(u32, u64)> = self.slots.iter().filter_map(|rt| rt.pid).collect();
                warn!(service = %self.record.name, "stopping every slot for a data restore");
                let actions = self.engine.stop_all();
                self.apply(actions);
                let _ = reply.send(stopping);
            }
            Command::Step { step, fence, reply } => {
                if let Err(e) = self.fence(fence) {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.step(step, reply);
            }
        }
    }

    /// Admits a step by its fencing token ([`fence::admit`]); a higher token is saved before
    /// the step is carried out.
    fn fence(&mut self, token: Option<FenceRecord>) -> Result<(), ErrorReply> {
        let Some(token) = token else {
            return Ok(());
        };
        let raised = match fence::admit(&self.fence, &token, self.record.name.as_str()) {
            fence::Admit::Same => {
                self.ctx.drains.stepped(&self.record.name, &token);
                return Ok(());
            }
            fence::Admit::Stale(why) => return Err(error_reply(ErrorKind::StaleEpoch, why)),
            fence::Admit::TooFar(why) => return Err(error_reply(ErrorKind::BadRequest, why)),
            fence::Admit::Raise(raised) => raised,
        };
        self.ctx
            .data_dir
            .write_record(&fence_name(&self.record.name), &raised)
            .map_err(|e| {
                error_reply(
                    ErrorKind::Internal,
                    format!("cannot save the fencing token: {e}"),
                )
            })?;
        let grew = raised.epoch > self.record.epoch;
        self.record.epoch = self.record.epoch.max(raised.epoch);
        self.fence = raised;
        if grew {
            self.save()?;
        }
        self.ctx.drains.stepped(&self.record.name, &token);
        Ok(())
    }

    fn register(&mut self, entry: ReleaseEntry, unpacked: bool) -> StepResult {
        let sha256 = halley_proto::hex::encode(&entry.sha256);
        // The service goes by its committed release's spec until the new one is committed (a
        // failed deploy leaves nothing of its spec behind); a first deploy has no other.
        if self.engine.committed().is_none() {
            self.record.spec = entry.spec.clone();
        }
        self.record.releases.retain(|r| r.version != entry.version);
        info!(service = %self.record.name, version = %entry.version, sha256 = %sha256, unpacked, "release prepared");
        self.record.releases.push(entry);
        self.save()?;
        Ok(StepReply::Prepared { sha256, unpacked })
    }

    fn step(&mut self, step: Step, reply: oneshot::Sender<StepResult>) {
        let now = self.now();
        let result = match step {
            Step::Prepare { .. } => Err(error_reply(
                ErrorKind::Internal,
                "prepare is handled before the actor",
            )),
            Step::Remove { .. } => Err(error_reply(
                ErrorKind::Internal,
                "remove is handled by the actor's loop",
            )),
            Step::StartNext { version, rollback } => {
                let started = self.start_next(&version);
                match started {
                    Ok(reply) => self
                        .mark_rollback(rollback.then_some(version))
                        .map(|()| reply),
                    Err(e) => {
                        let _ = self.mark_rollback(None);
                        Err(e)
                    }
                }
            }
            Step::Check => return self.begin_check(reply, false),
            Step::Flip => {
                let from = self.engine.active();
                match self.engine.flip(now) {
                    Ok(actions) => {
                        let to = self.engine.active().unwrap_or(Color::Blue);
                        self.apply(actions);
                        let took_ns = self.route_switch_ns;
                        info!(service = %self.record.name, from = ?from, %to, took_ns, "flipped");
                        Ok(StepReply::Flipped { from, to, took_ns })
                    }
                    Err(r) => Err(from_refused(r)),
                }
            }
            Step::Drain => {
                let draining = Color::BOTH
                    .into_iter()
                    .find(|c| self.engine.slot(*c).role == SlotRole::Draining);
                match draining {
                    Some(slot) => {
                        if let Some(old) = self.drain.replace(DrainWaiter { reply, slot }) {
                            let _ = old.reply.send(Err(error_reply(
                                ErrorKind::Conflict,
                                "another drain request replaced this one",
                            )));
                        }
                        return;
                    }
                    None => Ok(StepReply::Drained {
                        slot: None,
                        completed: 0,
                        cut: 0,
                        took_ms: 0,
                    }),
                }
            }
            Step::Commit { version } if self.serving().as_ref() != Some(&version) => {
                Err(error_reply(
                    ErrorKind::Conflict,
                    format!(
                        "commit of {version} refused: service {} serves {} here (it reverted by itself after orphan_timeout, or was changed by hand); deploy {version} again",
                        self.record.name,
                        self.serving().map_or("nothing".into(), |v| v.to_string())
                    ),
                ))
            }
            Step::Commit { .. } => match self.engine.commit(now) {
                Ok((version, previous, actions)) => {
                    self.apply(actions);
                    let pruned = self.committed();
                    // Only once the commit is saved: a crash before leaves the marker with the
                    // uncommitted rollback it belongs to.
                    let _ = self.mark_rollback(None);
                    info!(service = %self.record.name, %version, previous = ?previous.as_ref().map(|p| p.to_string()), "committed");
                    Ok(StepReply::Committed {
                        version,
                        previous,
                        pruned,
                    })
                }
                Err(r) => Err(from_refused(r)),
            },
            Step::Revert => {
                let _ = self.mark_rollback(None);
                let (outcome, actions) = self.engine.revert(now);
                self.apply(actions);
                match outcome {
                    Reverted::Done => Ok(StepReply::Reverted {
                        serving: self.serving(),
                    }),
                    Reverted::StartCommitted(version) => {
                        warn!(service = %self.record.name, %version, "reverting: the committed release no longer runs; starting it again");
                        match self.start_next(&version) {
                            Ok(_) => return self.begin_check(reply, true),
                            Err(e) => Err(error_reply(
                                e.kind,
                                format!(
                                    "revert could not start the committed release {version}: {}",
                                    e.message
                                ),
                            )),
                        }
                    }
                }
            }
        };
        let _ = reply.send(result);
    }

    fn serving(&self) -> Option<ReleaseVersion> {
        self.engine
            .active()
            .and_then(|c| self.engine.slot(c).version.clone())
    }

    fn start_next(&mut self, version: &ReleaseVersion) -> StepResult {
        let Some(entry) = self
            .record
            .releases
            .iter()
            .find(|r| &r.version == version)
            .cloned()
        else {
            return Err(error_reply(
                ErrorKind::NotFound,
                format!(
                    "release {version} of service {} is not on this node; prepare it first (deploy does)",
                    self.record.name
                ),
            ));
        };
        self.engine.set_policy(policy_of(&entry.spec));
        let now = self.now();
        let (slot, reused, actions) = self.engine.start_next(version, now).map_err(from_refused)?;
        if !reused {
            // Spawned now, or (stop-start) once the old slot has drained.
            self.slots[slot.index()].spec = Some(entry.spec.clone());
        }
        for action in actions {
            if let Action::Spawn { slot, .. } = action {
                if let Err(e) = self.fresh_slot(slot) {
                    let (_, undo) = self.engine.revert(self.now());
                    self.apply(undo);
                    return Err(error_reply(ErrorKind::CheckFailed, e.to_string()));
                }
            } else {
                self.apply(vec![action]);
            }
        }
        let port = self.slots[slot.index()]
            .upstream
            .as_ref()
            .map_or(0, |u| u.port);
        Ok(StepReply::Started { slot, port, reused })
    }

    /// Starts a new process for a slot on a new port, with a fresh upstream and supervision.
    fn fresh_slot(&mut self, slot: Color) -> crate::Result<()> {
        let port = process::free_port()?;
        let version = self
            .engine
            .slot(slot)
            .version
            .clone()
            .ok_or_else(|| crate::Error::Process("no release for the slot".into()))?;
        let meters = self.ctx.meters.slot(&self.record.name, slot);
        let rt = &mut self.slots[slot.index()];
        rt.upstream = Some(Upstream::new(slot, version, port, meters));
        rt.supervisor = Supervisor::new(RestartPolicy::default());
        rt.history.clear();
        rt.signals = Signals::default();
        rt.last_exit = None;
        self.launch(slot)
    }

    /// Starts (or restarts) the slot's process with its spec, version and port.
    fn launch(&mut self, slot: Color) -> crate::Result<()> {
        let now = self.now();
        let launch = self
            .launch_of(slot)
            .ok_or_else(|| crate::Error::Process(format!("slot {slot} has no release to start")))?;
        // The intent first: a node that dies before the record below is saved finds this launch
        // by its id when it starts again.
        let launch_id = crate::host::strays::intend(&self.ctx.data_dir, &launch.service, slot)?;
        let p = process::spawn(&launch, &launch_id)?;
        let pid_file = self
            .ctx
            .releases
            .service_dir(&launch.service)
            .join(format!("{slot}.pid"));
        let _ = std::fs::write(pid_file, p.pid.to_string());
        let rt = &mut self.slots[slot.index()];
        rt.pid = Some((p.pid, p.start_ticks));
        rt.since_ms = now;
        rt.restart_at = None;
        match rt.tracker.as_mut() {
            Some(t) if rt.supervisor.restarts() > 0 => t.restarted(now),
            _ => rt.tracker = Some(HealthTracker::new(&launch.spec.health, now)),
        }
        self.watch(slot, p);
        self.engine.set_health(slot, Health::Starting);
        self.save().map_err(crate::Error::Remote)?;
        Ok(())
    }

    /// How the slot's process is started (and its `exec` checks run): release, port, paths, spec.
    fn launch_of(&self, slot: Color) -> Option<Launch> {
        let rt = &self.slots[slot.index()];
        let (spec, upstream) = (rt.spec.clone()?, rt.upstream.clone()?);
        let name = self.record.name.clone();
        let service_dir = self.ctx.releases.service_dir(&name);
        Some(Launch {
            release_dir: self.ctx.releases.release_dir(&name, &upstream.version),
            data_dir: service_dir.join("data"),
            log: crate::host::logs::path(&service_dir, &upstream.version, slot),
            node_root: self.ctx.data_dir.root().to_path_buf(),
            node: self.ctx.node.clone(),
            service: name,
            version: upstream.version.clone(),
            slot,
            port: upstream.port,
            spec,
        })
    }

    /// Spawns the probe loop and the exit watcher of a slot's current process.
    fn watch(&mut self, slot: Color, p: process::Process) {
        let rt = &mut self.slots[slot.index()];
        if let Some(old) = rt.tasks.take() {
            old.cancel();
        }
        rt.run_id += 1;
        let run_id = rt.run_id;
        let token = CancellationToken::new();
        rt.tasks = Some(token.clone());
        let Some(launch) = self.launch_of(slot) else {
            return;
        };
        slot::watch(slot, run_id, p, launch, token, self.events_tx.clone());
    }

    fn event(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Probe {
                slot,
                run_id,
                outcome,
            } => {
                // What a probe printed can end up in a check's verdict, which leaves the host.
                let output = match outcome.output.is_empty() {
                    true => String::new(),
                    false => slot::redact_window(&outcome.output, &self.env_values()),
                };
                let rt = &mut self.slots[slot.index()];
                if rt.run_id != run_id {
                    return;
                }
                let Some(tracker) = rt.tracker.as_mut() else {
                    return;
                };
                let before = tracker.health();
                let health = tracker.observe(outcome.passed, &output, now);
                if health != before {
                    info!(service = %self.record.name, %slot, health = health.as_str(), "slot health changed");
                    debug!(service = %self.record.name, %slot, %output, "the probe's output");
                }
                self.engine.set_health(slot, health);
            }
            Event::Exited { slot, run_id, how } => {
                let rt = &mut self.slots[slot.index()];
                if rt.run_id != run_id {
                    return;
                }
                let service_dir = self.ctx.releases.service_dir(&self.record.name);
                let log = rt.upstream.as_ref().map_or_else(
                    || service_dir.join("logs"),
                    |up| crate::host::logs::path(&service_dir, &up.version, slot),
                );
                let rt = &mut self.slots[slot.index()];
                rt.pid = None;
                let ran = now.saturating_sub(rt.since_ms);
                let restart = rt.supervisor.exited(now, ran);
                rt.restart_at = Some(now + restart.delay_ms);
                let secrets = self.env_values();
                let rt = &mut self.slots[slot.index()];
                rt.last_exit = Some(format!(
                    "the process {how}; last output: {}",
                    log_tail(&log, &secrets)
                ));
                if let Some(t) = rt.tracker.as_mut() {
                    t.set_crash_loop(restart.crash_loop);
                    self.engine.set_health(slot, t.health());
                }
                warn!(service = %self.record.name, %slot, %how, restart_in_ms = restart.delay_ms, crash_loop = restart.crash_loop, "slot process exited");
            }
        }
    }

    /// Every `env` value of the service's specs (committed and prepared), to redact from what
    /// leaves this host.
    fn env_values(&self) -> Vec<String> {
        slot::env_secrets(&self.record)
    }

    fn tick(&mut self) {
        let now = self.now();
        let actions = self.engine.tick(now);
        self.apply(actions);
        for color in Color::BOTH {
            // Restarts that are due.
            let rt = &self.slots[color.index()];
            if rt.restart_at.is_some_and(|t| t <= now)
                && self.engine.slot(color).running()
                && let Err(e) = self.launch(color)
            {
                error!(service = %self.record.name, slot = %color, error = %e, "restart failed");
                let rt = &mut self.slots[color.index()];
                let restart = rt.supervisor.exited(now, 0);
                rt.restart_at = Some(now + restart.delay_ms);
                rt.last_exit = Some(e.to_string());
            }
            // A crash loop ends once the process stays up.
            let rt = &mut self.slots[color.index()];
            if rt.pid.is_some()
                && rt.supervisor.recovered(rt.since_ms, now)
                && let Some(t) = rt.tracker.as_mut()
                && t.crash_loop()
            {
                t.set_crash_loop(false);
                let h = t.health();
                self.engine.set_health(color, h);
            }
            // Drains whose work is done.
            if self.engine.slot(color).role == SlotRole::Draining {
                let idle = self.slots[color.index()]
                    .upstream
                    .as_ref()
                    .is_none_or(|u| u.inflight() == 0);
                if idle {
                    let actions = self.engine.drained(color, now);
                    self.apply(actions);
                }
            }
        }
        self.answer_drain(now);
        self.answer_check(now);
        self.revert_orphan(now);
        if now >= self.last_signals_ms + 1000 {
            self.last_signals_ms = now;
            for rt in &mut self.slots {
                rt.update_signals();
            }
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let now = self.now();
        for action in actions {
            match action {
                Action::Spawn { slot, .. } => {
                    if let Err(e) = self.fresh_slot(slot) {
                        error!(service = %self.record.name, %slot, error = %e, "cannot start slot");
                    }
                }
                Action::Stop { slot } => self.stop_slot(slot),
                Action::Route { slot } => {
                    let upstream = self.slots[slot.index()].upstream.clone();
                    let started = Instant::now();
                    self.routes.router.set(upstream);
                    self.route_switch_ns = started.elapsed().as_nanos() as u64;
                }
                Action::Unroute => {
                    self.routes.router.set(None);
                }
                Action::Drain { slot } => {
                    let rt = &mut self.slots[slot.index()];
                    rt.drain = Some(DrainInfo {
                        started_ms: now,
                        finished_at_start: rt.upstream.as_ref().map_or(0, |u| u.finished()),
                        completed: None,
                        cut: 0,
                    });
                }
                Action::Cut { slot } => {
                    let rt = &mut self.slots[slot.index()];
                    if let Some(up) = &rt.upstream {
                        let left = up.inflight();
                        if let Some(d) = rt.drain.as_mut() {
                            d.cut += left;
                            d.completed = Some(up.finished().saturating_sub(d.finished_at_start));
                        }
                        warn!(service = %self.record.name, %slot, cut = left, "drain_timeout reached; cutting what is still in flight");
                        up.cut();
                    }
                }
                Action::Save => {
                    if let Err(e) = self.save() {
                        error!(service = %self.record.name, error = %e.message, "cannot save the service record");
                    }
                }
            }
        }
    }

    fn stop_slot(&mut self, slot: Color) {
        let name = self.record.name.clone();
        let rt = &mut self.slots[slot.index()];
        if let Some(t) = rt.tasks.take() {
            t.cancel();
        }
        rt.run_id += 1;
        rt.restart_at = None;
        rt.tracker = None;
        let spec = rt.spec.clone();
        if let Some((pid, ticks)) = rt.pid.take() {
            let (signal, kill_after) = spec
                .as_ref()
                .map(|s| (s.stop.signal, s.stop.kill_after.as_duration()))
                .unwrap_or_default();
            info!(service = %name, %slot, pid, "stopping slot process");
            tokio::spawn(process::stop(pid, ticks, signal, kill_after));
        }
        let _ = std::fs::remove_file(
            self.ctx
                .releases
                .service_dir(&name)
                .join(format!("{slot}.pid")),
        );
    }

    /// Removes releases beyond `keep_releases`, oldest first, never one a slot runs or the
    /// committed or previous one.
    /// A release was committed: the service goes by its spec from now on (routing, pruning,
    /// the orphan rule), and old releases are pruned. Returns the pruned versions.
    fn committed(&mut self) -> Vec<ReleaseVersion> {
        let spec = self.engine.committed().and_then(|v| {
            self.record
                .releases
                .iter()
                .find(|r| &r.version == v)
                .map(|r| r.spec.clone())
        });
        if let Some(spec) = spec {
            self.record.spec = spec;
        }
        let pruned = self.prune();
        let _ = self.save();
        pruned
    }

    fn prune(&mut self) -> Vec<ReleaseVersion> {
        let keep = self.record.spec.keep_releases.max(2) as usize;
        let mut protected: Vec<ReleaseVersion> = Vec::new();
        protected.extend(self.engine.committed().cloned());
        protected.extend(self.engine.previous().cloned());
        for c in Color::BOTH {
            protected.extend(self.engine.slot(c).version.clone());
        }
        let mut pruned = Vec::new();
        while self.record.releases.len() > keep {
            let Some(i) = self
                .record
                .releases
                .iter()
                .position(|r| !protected.contains(&r.version))
            else {
                break;
            };
            let entry = self.record.releases.remove(i);
            if let Err(e) = self
                .ctx
                .releases
                .remove_release(&self.record.name, &entry.version)
            {
                warn!(service = %self.record.name, version = %entry.version, error = %e, "cannot remove old release");
            }
            let service_dir = self.ctx.releases.service_dir(&self.record.name);
            crate::host::logs::remove_release(&service_dir, &entry.version);
            pruned.push(entry.version);
        }
        if !pruned.is_empty() {
            let _ = self.save();
            crate::store::sweep::sweep_and_log(&self.ctx.data_dir, crate::store::sweep::GRACE);
        }
        pruned
    }

    fn save(&mut self) -> Result<(), ErrorReply> {
        self.record.active = self.engine.active();
        self.record.committed = self.engine.committed().cloned();
        self.record.previous = self.engine.previous().cloned();
        for c in Color::BOTH {
            let rt = &self.slots[c.index()];
            let state = self.engine.slot(c);
            self.record.slots[c.index()] = SlotRecord {
                version: state.version.clone().filter(|_| state.running()),
                port: rt.upstream.as_ref().map_or(0, |u| u.port),
                pid: rt.pid.map(|(p, _)| p),
                start_ticks: rt.pid.map_or(0, |(_, t)| t),
                spec: rt.spec.clone().filter(|_| state.running()),
            };
        }
        self.ctx
            .data_dir
            .write_record(&record_name(&self.record.name), &self.record)
            .map_err(|e| {
                error_reply(
                    ErrorKind::Internal,
                    format!("cannot save the service record: {e}"),
                )
            })
    }

    pub(crate) fn status(&self) -> ServiceStatus {
        let slots = Color::BOTH
            .into_iter()
            .map(|c| {
                let state = self.engine.slot(c);
                let rt = &self.slots[c.index()];
                SlotStatus {
                    color: c,
                    role: state.role,
                    version: state.version.clone(),
                    port: rt.upstream.as_ref().map_or(0, |u| u.port),
                    pid: rt.pid.map(|(p, _)| p),
                    health: if state.running() {
                        state.health
                    } else {
                        Health::Stopped
                    },
                    restarts: rt.supervisor.restarts(),
                    crash_loop: rt.tracker.as_ref().is_some_and(|t| t.crash_loop()),
                    signals: rt.signals,
                }
            })
            .collect();
        ServiceStatus {
            name: self.name().clone(),
            listen: self
                .record
                .spec
                .listen
                .resolve(self.ctx.service_address)
                .to_string(),
            protocol: protocol_name(self.record.spec.protocol),
            committed: self.engine.committed().cloned(),
            previous: self.engine.previous().cloned(),
            slots,
            releases: self
                .record
                .releases
                .iter()
                .map(|r| r.version.clone())
                .collect(),
            epoch: self.record.epoch,
            routing: self.routes.status(),
        }
    }
}
