//! The rollout coordinator: the async driver around the pure [`Rollout`] engine. It runs inside
//! the daemon of the node where `deploy` (or `deploy --resume`, or `rollback`) was run, so a
//! closed terminal does not stop a rollout; only the node's death does, and then another node
//! resumes it from the journal.
//!
//! ## Guarantees
//! - The state is journaled (`rollouts/NAME.rec`: temp, fsync, rename) and published in gossip
//!   (`rollout:NAME`) before each action the engine asks for.
//! - Actions on one host run one after another, in order (a worker task per host), so a revert
//!   never overtakes the drain or deploy it undoes.
//! - One rollout per service: a new one is refused while another is unfinished, naming its
//!   coordinator, version and progress. Each rollout takes an epoch above every epoch gossip and
//!   the hosts have seen, and hosts refuse steps of older epochs.
//! - A regression is judged by [`regression::judge`] from each updated host's own signals, polled
//!   every 500 ms over the mesh, against what its old release showed just before the flip.
//!
//! ## Non-goals
//! There is no consensus: two `deploy`s started within a gossip round of each other on different
//! nodes can both start; the epochs then make the hosts follow only the newer one, and the older
//! one stops as `fenced`. Baselines live in the coordinator's memory: a resumed rollout judges
//! updated hosts by the absolute thresholds only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::deploy::ReleaseVersion;
use halley_proto::disk::{HistoryBook, RolloutJournal};
use halley_proto::gossip::{HISTORY_KEY_PREFIX, ROLLOUT_KEY_PREFIX};
use halley_proto::message::{ErrorKind, ErrorReply, MemberState, PeerReply, PeerRequest};
use halley_proto::rollout::{
    HistoryEntry, HostProgress, HostStep, Phase, RolloutKind, RolloutRequest, RolloutState,
};
use halley_proto::spec::{RolloutPolicy, ServiceName, ServiceSpec};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::node::{NodeService, internal, wall_ms};
use crate::engine::regression::{self, Sample};
use crate::engine::rollout::{Action, Event, Policy, Rollout};
use crate::rollout::host_steps::{HostCtx, fetch_release, sample};
use crate::rollout::status as rollout_status;

const TICK: Duration = Duration::from_millis(100);
const WATCH: Duration = Duration::from_millis(500);
pub(crate) const SHORT: Duration = Duration::from_secs(10);
pub(crate) const LONG: Duration = Duration::from_secs(600);

pub(crate) type Reply<T> = Result<T, ErrorReply>;

fn conflict(message: String) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Conflict,
        message,
    }
}

fn journal_name(service: &ServiceName) -> String {
    format!("rollouts/{service}.rec")
}

fn history_name(service: &ServiceName) -> String {
    format!("history/{service}.rec")
}

/// Starts a rollout (or a resume, or a cluster rollback) with this node as coordinator.
/// Returns the rollout id once it is journaled; the rollout goes on in the background.
pub async fn start(node: &NodeService, request: RolloutRequest) -> Reply<(String, Vec<String>)> {
    let me = node
        .arc()
        .ok_or_else(|| internal("the node is still starting"))?;
    let service = request.service.clone();
    match request.kind {
        RolloutKind::Deploy {
            spec,
            version,
            artifact,
            sha256,
        } => {
            refuse_if_busy(node, &service, false).await?;
            let artifact = PathBuf::from(artifact);
            let releases = node.services.releases().clone();
            let path = artifact.clone();
            let sha = tokio::task::spawn_blocking(move || releases.store_local(&path, sha256))
                .await
                .map_err(|e| internal(&format!("storage task failed: {e}")))?
                .map_err(|e| ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                })?;
            let file_name = artifact
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hosts = plan(node, &spec);
            if hosts.is_empty() {
                return Err(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: format!(
                        "no node of this cluster is in `hosts` of service {service}; check `hosts` in halley.toml and 'halley-node status'"
                    ),
                });
            }
            let epoch = next_epoch(node, &service, &hosts).await;
            let state = new_state(node, &service, &version, epoch, &hosts, &spec.rollout);
            let id = state.id.clone();
            let journal = RolloutJournal {
                state,
                spec: *spec,
                sha256: sha,
                file_name,
            };
            // Snapshots and the migration come first: a failure there changes no host.
            let notes = crate::rollout::state_flow::before_deploy(&me, &journal, &hosts).await?;
            let policy = engine_policy(&journal.spec.rollout, request.skip_unreachable);
            let mut engine = Rollout::new(journal.state.clone(), policy);
            let now = wall_ms();
            let actions = engine.start(now);
            Driver::spawn(me, journal, engine, actions).await;
            Ok((id, notes))
        }
        RolloutKind::Resume { force } => {
            resume(node, me, &service, force, request.skip_unreachable)
                .await
                .map(|id| (id, Vec::new()))
        }
        RolloutKind::Rollback { to } => {
            refuse_if_busy(node, &service, false).await?;
            crate::rollout::cluster_rollback::rollback(node, me, &service, to)
                .await
                .map(|id| (id, Vec::new()))
        }
    }
}

/// Refuses while another rollout of the service is unfinished.
pub(crate) async fn refuse_if_busy(
    node: &NodeService,
    service: &ServiceName,
    force: bool,
) -> Reply<()> {
    let Some(mut current) = rollout_status::newest(node, service).await else {
        return Ok(());
    };
    if !current.phase.finished() && &current.coordinator != node.name() {
        // Gossip may lag a rollout that just ended: ask its coordinator.
        if let Ok(PeerReply::Rollout(Some(fresh))) = node
            .peer(
                &current.coordinator,
                PeerRequest::Rollout(service.clone()),
                Duration::from_secs(3),
            )
            .await
            && fresh.id == current.id
            && (fresh.epoch, fresh.seq) >= (current.epoch, current.seq)
        {
            current = fresh;
        }
    }
    if current.phase.finished() || force {
        return Ok(());
    }
    let alive = rollout_status::is_driven(node, &current).await;
    let what = format!(
        "service {service} has an unfinished rollout {} by node {}: version {}, {}, {}",
        current.id,
        current.coordinator,
        current.version,
        current.phase,
        current.progress()
    );
    Err(conflict(if current.phase == Phase::Paused {
        format!(
            "{what} ({}); continue it with 'halley-node deploy --resume {service}'",
            current.reason
        )
    } else if alive {
        format!("{what}; wait for it ('halley-node rollout status {service}')")
    } else {
        format!(
            "{what}, and node {} no longer drives it (dead or restarted); take it over with 'halley-node deploy --resume {service}'",
            current.coordinator
        )
    }))
}

/// The hosts of a service in rollout order (see [`crate::engine::rollout::plan`]). Members that left
/// are not included; dead ones are (their turn pauses or skips).
fn plan(node: &NodeService, spec: &ServiceSpec) -> Vec<NodeName> {
    let members: Vec<NodeName> = node
        .members()
        .into_iter()
        .filter(|m| m.state != MemberState::Left)
        .map(|m| m.name)
        .collect();
    crate::engine::rollout::plan(&spec.hosts, &spec.rollout.order, &members)
}

/// An epoch above every one gossip and the reachable hosts have seen for the service.
pub(crate) async fn next_epoch(
    node: &NodeService,
    service: &ServiceName,
    hosts: &[NodeName],
) -> u64 {
    let mut max = rollout_status::newest(node, service)
        .await
        .map_or(0, |s| s.epoch);
    for host in hosts {
        if let Ok(PeerReply::Services(list)) = node
            .peer(host, PeerRequest::Services, Duration::from_secs(3))
            .await
            && let Some(s) = list.iter().find(|s| &s.name == service)
        {
            max = max.max(s.epoch);
        }
    }
    max + 1
}

pub(crate) fn new_state(
    node: &NodeService,
    service: &ServiceName,
    version: &ReleaseVersion,
    epoch: u64,
    hosts: &[NodeName],
    policy: &RolloutPolicy,
) -> RolloutState {
    let now = wall_ms();
    let suffix = crate::random::bytes::<3>()
        .map(|b| halley_proto::hex::encode(&b))
        .unwrap_or_default();
    RolloutState {
        id: format!("{service}-{now}-{suffix}"),
        service: service.clone(),
        version: version.clone(),
        epoch,
        seq: 0,
        coordinator: node.name().clone(),
        hosts: hosts
            .iter()
            .map(|h| HostProgress {
                node: h.clone(),
                step: HostStep::Pending,
                since_ms: now,
                until_ms: None,
                attempts: 0,
                note: String::new(),
            })
            .collect(),
        batch: policy.batch.max(1),
        phase: Phase::Running,
        reason: String::new(),
        started_ms: now,
        ended_ms: None,
    }
}

fn engine_policy(policy: &RolloutPolicy, skip_unreachable: bool) -> Policy {
    Policy {
        batch: policy.batch.max(1) as usize,
        drain_wait_ms: policy.drain_wait.0,
        bake_ms: policy.bake.0,
        pause_ms: policy.pause.0,
        max_failed_hosts: policy.max_failed_hosts.max(1) as usize,
        auto_rollback: policy.auto_rollback,
        skip_unreachable,
        retry_ms: 1000,
    }
}

/// Takes the newest unfinished rollout of a service over.
async fn resume(
    node: &NodeService,
    me: Arc<NodeService>,
    service: &ServiceName,
    force: bool,
    skip_unreachable: bool,
) -> Reply<String> {
    let newest = rollout_status::newest(node, service).await;
    let Some(mut state) = newest.filter(|s| !s.phase.finished()) else {
        return Err(ErrorReply {
            kind: ErrorKind::NotFound,
            message: format!("service {service} has no unfinished rollout to resume"),
        });
    };
    if state.phase != Phase::Paused && rollout_status::is_driven(node, &state).await {
        if &state.coordinator == node.name() {
            return Err(conflict(format!(
                "this node is already coordinating rollout {} of {service}",
                state.id
            )));
        }
        if !force {
            return Err(conflict(format!(
                "node {} is alive and coordinating rollout {} of {service}; use --force to take it over",
                state.coordinator, state.id
            )));
        }
    }
    let (spec, sha256, file_name) = release_source(node, &state).await?;
    let hosts: Vec<NodeName> = state.hosts.iter().map(|h| h.node.clone()).collect();
    state.epoch = next_epoch(node, service, &hosts).await.max(state.epoch + 1);
    state.coordinator = node.name().clone();
    let id = state.id.clone();
    let policy = engine_policy(&spec.rollout, skip_unreachable);
    let journal = RolloutJournal {
        state: state.clone(),
        spec,
        sha256,
        file_name,
    };
    let mut engine = Rollout::new(state, policy);
    let actions = engine.resume(wall_ms());
    Driver::spawn(me, journal, engine, actions).await;
    Ok(id)
}

/// The spec and artifact of the release a rollout rolls out: from this node's journal, else
/// from a host that prepared it (the artifact is copied into this node's store).
async fn release_source(
    node: &NodeService,
    state: &RolloutState,
) -> Reply<(ServiceSpec, [u8; 32], String)> {
    if let Ok(journal) = node
        .data_dir
        .read_record::<RolloutJournal>(&journal_name(&state.service))
        && journal.state.id == state.id
        && node
            .services
            .releases()
            .artifact_received(&journal.sha256)
            .1
    {
        return Ok((journal.spec, journal.sha256, journal.file_name));
    }
    let mut sources: Vec<NodeName> = vec![node.name().clone()];
    sources.extend(
        state
            .hosts
            .iter()
            .filter(|h| h.step.touched())
            .map(|h| h.node.clone()),
    );
    if let Some((spec, sha256, file_name, from)) =
        fetch_release(node, &state.service, &state.version, &sources).await
    {
        info!(service = %state.service, %from, "took the release to resume from a host");
        return Ok((spec, sha256, file_name));
    }
    Err(ErrorReply {
        kind: ErrorKind::NotFound,
        message: format!(
            "no reachable node has release {} of {} to continue with; start a host that has it, or deploy again",
            state.version, state.service
        ),
    })
}

/// The coordinator's driver of one rollout.
struct Driver {
    node: Arc<NodeService>,
    journal: RolloutJournal,
    engine: Rollout,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    workers: HashMap<NodeName, mpsc::UnboundedSender<Action>>,
    baselines: Arc<Mutex<HashMap<NodeName, Sample>>>,
    watching: Arc<std::sync::atomic::AtomicBool>,
}

impl Driver {
    /// Journals the first actions (so the caller sees the rollout at once), then drives it in
    /// the background.
    async fn spawn(
        node: Arc<NodeService>,
        journal: RolloutJournal,
        engine: Rollout,
        first: Vec<Action>,
    ) {
        let service = journal.state.service.clone();
        if let Ok(mut set) = node.active_drivers.lock() {
            set.insert(service.clone());
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            node,
            journal,
            engine,
            events_tx,
            events_rx,
            workers: HashMap::new(),
            baselines: Arc::default(),
            watching: Arc::default(),
        };
        driver.apply(first).await;
        tokio::spawn(async move {
            driver.run().await;
            if let Ok(mut set) = driver.node.active_drivers.lock() {
                set.remove(&service);
            }
        });
    }

    async fn run(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        let mut watch = tokio::time::interval(WATCH);
        loop {
            let phase = self.engine.state().phase;
            if phase.finished() || phase == Phase::Paused {
                self.finish().await;
                return;
            }
            let actions = tokio::select! {
                Some(event) = self.events_rx.recv() => self.engine.step(event, wall_ms()),
                _ = tick.tick() => self.engine.step(Event::Tick, wall_ms()),
                _ = watch.tick() => { self.watch(); Vec::new() }
            };
            self.apply(actions).await;
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Journal => self.write_journal().await,
                Action::Say(text) => {
                    info!(service = %self.journal.state.service, rollout = %self.journal.state.id, "{text}");
                }
                host_action => {
                    let host = match &host_action {
                        Action::Drain(h)
                        | Action::Deploy(h)
                        | Action::Revert(h)
                        | Action::Commit(h) => h.clone(),
                        _ => continue,
                    };
                    let worker = self.worker(&host);
                    let _ = worker.send(host_action);
                }
            }
        }
    }

    async fn write_journal(&mut self) {
        let mut state = self.engine.state().clone();
        state.seq = self.journal.state.seq + 1;
        self.engine.set_seq(state.seq);
        self.journal.state = state.clone();
        let service = state.service.clone();
        let dir = self.node.data_dir.file("rollouts");
        let _ = std::fs::create_dir_all(&dir);
        if let Err(e) = self
            .node
            .data_dir
            .write_record(&journal_name(&service), &self.journal)
        {
            // Without a journal a dead coordinator's rollout can still be resumed from gossip.
            warn!(service = %service, error = %e, "cannot write the rollout journal");
        }
        if let Ok(mut map) = self.node.rollouts.lock() {
            map.insert(service.clone(), state.clone());
        }
        self.node
            .publish(format!("{ROLLOUT_KEY_PREFIX}{service}"), state.to_gossip())
            .await;
    }

    /// The worker that runs `host`'s actions one after another.
    fn worker(&mut self, host: &NodeName) -> mpsc::UnboundedSender<Action> {
        if let Some(w) = self.workers.get(host) {
            return w.clone();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Action>();
        let ctx = HostCtx {
            node: self.node.clone(),
            host: host.clone(),
            journal: self.journal.clone(),
            baselines: self.baselines.clone(),
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(action) = rx.recv().await {
                let event = ctx.run(action).await;
                if events.send(event).is_err() {
                    return;
                }
            }
        });
        self.workers.insert(host.clone(), tx.clone());
        tx
    }

    /// Samples every host that serves the new release and reports verdicts.
    fn watch(&self) {
        use std::sync::atomic::Ordering;
        let watched: Vec<NodeName> = self
            .engine
            .state()
            .hosts
            .iter()
            .filter(|h| matches!(h.step, HostStep::Baking | HostStep::Updated))
            .map(|h| h.node.clone())
            .collect();
        if watched.is_empty() || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (node, events, baselines, watching) = (
            self.node.clone(),
            self.events_tx.clone(),
            self.baselines.clone(),
            self.watching.clone(),
        );
        let service = self.journal.state.service.clone();
        let version = self.journal.state.version.clone();
        let policy = self.journal.spec.rollout.clone();
        tokio::spawn(async move {
            for host in watched {
                let Some(now) = sample(&node, &host, &service, Some(&version)).await else {
                    continue;
                };
                let base = baselines
                    .lock()
                    .ok()
                    .and_then(|b| b.get(&host).copied())
                    .unwrap_or_default();
                let verdict = regression::judge(&base, &now, &policy);
                let _ = events.send(Event::Verdict(host, verdict));
            }
            watching.store(false, Ordering::Release);
        });
    }

    /// Writes history when the rollout ended.
    async fn finish(&mut self) {
        let state = self.engine.state().clone();
        info!(service = %state.service, rollout = %state.id, phase = %state.phase, reason = %state.reason, "rollout stopped");
        if !state.phase.finished() {
            return;
        }
        let mut entry = HistoryEntry::of(&state, wall_ms());
        if state.phase == Phase::Completed {
            let hosts: Vec<NodeName> = state.hosts.iter().map(|h| h.node.clone()).collect();
            if let Some(line) =
                crate::rollout::state_flow::after_commit(&self.node, &self.journal, &hosts).await
            {
                entry.reason = if entry.reason.is_empty() {
                    line
                } else {
                    format!("{}; {line}", entry.reason)
                };
            }
        }
        record_history(&self.node, &state.service, entry).await;
    }
}

/// Appends a history entry to this node's book and publishes its newest lines.
pub(crate) async fn record_history(node: &NodeService, service: &ServiceName, entry: HistoryEntry) {
    let name = history_name(service);
    let _ = std::fs::create_dir_all(node.data_dir.file("history"));
    let mut book: HistoryBook = node
        .data_dir
        .read_record_or_default(&name)
        .unwrap_or_default();
    book.entries.retain(|e| e.id != entry.id);
    book.entries.push(entry);
    let excess = book.entries.len().saturating_sub(50);
    book.entries.drain(..excess);
    if let Err(e) = node.data_dir.write_record(&name, &book) {
        warn!(service = %service, error = %e, "cannot write rollout history");
    }
    let lines: Vec<String> = book
        .entries
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(HistoryEntry::to_line)
        .collect();
    node.publish(format!("{HISTORY_KEY_PREFIX}{service}"), lines.join("\n"))
        .await;
}
