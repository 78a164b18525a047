//! The rollout coordinator: the async driver around the pure [`Rollout`] engine. It runs inside
//! the daemon of the node where `deploy` (or `deploy --resume`, or `rollback`) was run, so a
//! closed terminal does not stop a rollout; only the node's death does, and then another node
//! resumes it from the journal.
//!
//! ## Guarantees
//! - The state is journaled (`rollouts/NAME.rec`: temp, fsync, rename) and published in gossip
//!   (`rollout:NAME`) before each action the engine asks for. When the journal cannot be
//!   written, nothing after it moves forward: a running rollout pauses (resumable), a revert or
//!   commit under way goes on.
//! - Actions on one host run one after another, in order (a worker task per host), so a revert
//!   never overtakes the drain or deploy it undoes.
//! - The driver wakes on the engine's events, on its `poll_timeout` (never more often than every
//!   100 ms) and every 500 ms to sample baking hosts; it does not poll the engine otherwise.
//! - The lock and the epoch were taken before the driver starts ([`crate::rollout::lock`]).
//! - A regression is judged by [`regression::judge`] from each updated host's own signals, polled
//!   every 500 ms over the mesh, against what its old release showed just before the flip.
//! - An updated host that no longer serves the new release (it reverted by itself after
//!   `orphan_timeout`, or was changed by hand) fails the rollout, so it never ends `completed`
//!   over a host that runs another release.
//!
//! ## Non-goals
//! There is no consensus: two `deploy`s started within a gossip round of each other on different
//! nodes can both start; the hosts then follow only the higher fencing token (epoch, then
//! coordinator name), and the other one stops as `fenced`. Baselines live in the coordinator's memory: a resumed rollout judges
//! updated hosts by the absolute thresholds only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::disk::RolloutJournal;
use halley_proto::rollout::{HistoryEntry, HostStep, Phase};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock::{Steady, wall_ms};
use crate::engine::regression::{self, Sample};
use crate::engine::rollout::{Action, Event, Rollout};
use crate::rollout::context::Coordinator;
use crate::rollout::host_steps::{HostCtx, Miss, sample};
use crate::store::journal;

/// The shortest wait between ticks, for a deadline that is already due.
const MIN_TICK: Duration = Duration::from_millis(100);
/// How often updated hosts' signals are sampled while they bake.
const WATCH: Duration = Duration::from_millis(500);

/// The coordinator's driver of one rollout.
pub(crate) struct Driver {
    node: Arc<Coordinator>,
    journal: RolloutJournal,
    engine: Rollout,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    workers: HashMap<NodeName, mpsc::UnboundedSender<Action>>,
    /// The workers' tasks, cut short when another coordinator takes the rollout over.
    worker_tasks: Vec<tokio::task::AbortHandle>,
    baselines: Arc<Mutex<HashMap<NodeName, Sample>>>,
    watching: Arc<std::sync::atomic::AtomicBool>,
    /// The engine's `now`: deadlines on monotonic time, journaled as dates.
    clock: Steady,
}

impl Driver {
    /// Journals the first actions (so the caller sees the rollout at once), then drives it in
    /// the background.
    pub(crate) async fn spawn(
        node: Arc<Coordinator>,
        journal: RolloutJournal,
        engine: Rollout,
        first: Vec<Action>,
    ) {
        let service = journal.state.service.clone();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        if let Ok(mut map) = node.active.lock() {
            map.insert(service.clone(), events_tx.clone());
        }
        let mut driver = Driver {
            node,
            journal,
            engine,
            events_tx,
            events_rx,
            workers: HashMap::new(),
            worker_tasks: Vec::new(),
            baselines: Arc::default(),
            watching: Arc::default(),
            clock: Steady::new(),
        };
        driver.apply(first).await;
        tokio::spawn(async move {
            driver.run().await;
            if let Ok(mut map) = driver.node.active.lock() {
                map.remove(&service);
            }
        });
    }

    async fn run(&mut self) {
        let mut watch = tokio::time::interval(WATCH);
        loop {
            let phase = self.engine.state().phase;
            if phase.finished() || phase == Phase::Paused {
                self.finish().await;
                return;
            }
            // The engine says when it needs a tick. A deadline already past waits MIN_TICK, so
            // a deadline the engine does not act on yet cannot make this loop spin.
            let wait = self.engine.poll_timeout().map(|at| {
                Duration::from_millis(at.saturating_sub(self.clock.now_ms()) + 1).max(MIN_TICK)
            });
            let timer = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let actions = tokio::select! {
                Some(event) = self.events_rx.recv() => self.engine.step(event, self.clock.now_ms()),
                _ = timer => self.engine.step(Event::Tick, self.clock.now_ms()),
                _ = watch.tick() => {
                    self.watch();
                    match self.taken_over().await {
                        Some(event) => {
                            // Steps under way stop too: the new coordinator owns the hosts.
                            for task in self.worker_tasks.drain(..) {
                                task.abort();
                            }
                            self.workers.clear();
                            self.engine.step(event, self.clock.now_ms())
                        }
                        None => Vec::new(),
                    }
                }
            };
            self.apply(actions).await;
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Journal => {
                    let Err(why) = self.write_journal().await else {
                        continue;
                    };
                    // Nothing that follows a journal write that failed may move forward.
                    self.node.keep_unsaved(&self.journal);
                    let moving = self.engine.state().phase == Phase::Running;
                    for said in self
                        .engine
                        .step(Event::JournalFailed(why), self.clock.now_ms())
                    {
                        if let Action::Say(text) = said {
                            warn!(service = %self.journal.state.service, rollout = %self.journal.state.id, "{text}");
                        }
                    }
                    self.publish_only().await;
                    if moving {
                        return;
                    }
                }
                Action::Say(text) => {
                    info!(service = %self.journal.state.service, rollout = %self.journal.state.id, "{text}");
                }
                host_action => {
                    let host = match &host_action {
                        Action::Drain(h)
                        | Action::Deploy(h)
                        | Action::Revert(h)
                        | Action::Commit(h)
                        | Action::Resolve(h)
                        | Action::RollBack(h, _) => h.clone(),
                        _ => continue,
                    };
                    let worker = self.worker(&host);
                    let _ = worker.send(host_action);
                }
            }
        }
    }

    /// Journals the engine's state and publishes it; the state is published even when the
    /// journal cannot be written (another node can resume from gossip).
    async fn write_journal(&mut self) -> Result<(), String> {
        let state = self.next_seq();
        let written = journal::write_journal(&self.node.data_dir, &self.journal);
        self.node.publish(&state).await;
        written.map_err(|e| {
            warn!(service = %state.service, error = %e, "cannot write the rollout journal");
            e.to_string()
        })
    }

    /// Publishes the engine's state without journaling it (after a journal write failed).
    async fn publish_only(&mut self) {
        let state = self.next_seq();
        self.node.publish(&state).await;
    }

    fn next_seq(&mut self) -> halley_proto::rollout::RolloutState {
        let mut state = self.engine.state().clone();
        state.seq = self.journal.state.seq + 1;
        self.engine.set_seq(state.seq);
        self.journal.state = state.clone();
        state
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
        let task = tokio::spawn(async move {
            while let Some(action) = rx.recv().await {
                let event = ctx.run(action).await;
                if events.send(event).is_err() {
                    return;
                }
            }
        });
        self.worker_tasks.push(task.abort_handle());
        self.workers.insert(host.clone(), tx.clone());
        tx
    }

    /// A newer token for this service in gossip (another node resumed or aborted this rollout
    /// with `--force`, or started a new one after this one was fenced): this driver must stop.
    async fn taken_over(&self) -> Option<Event> {
        let own = &self.journal.state;
        let newest = crate::rollout::status::newest(&self.node, &own.service).await?;
        let mine = (own.epoch, self.node.cluster.name());
        (newest.coordinator != *mine.1 && (newest.epoch, &newest.coordinator) > mine).then(|| {
            Event::TakenOver {
                by: newest.coordinator.clone(),
                epoch: newest.epoch,
            }
        })
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
                let now = match sample(&node, &host, &service, Some(&version)).await {
                    Ok(now) => now,
                    Err(Miss::Unreachable) => continue,
                    // It reverted by itself (orphan_timeout) or was changed by hand: the rollout
                    // must not go on as if it served the new release.
                    Err(Miss::Serves(other)) => {
                        let why = format!(
                            "it serves {}, not {version} (it reverted by itself after orphan_timeout, or was changed by hand)",
                            other.map_or("nothing".into(), |v| v.to_string())
                        );
                        let _ = events.send(Event::Verdict(host, Some(why)));
                        continue;
                    }
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
        crate::rollout::history::record(&self.node, &state.service, entry).await;
        // A coordinator that hosts nothing prunes no release, so its store is swept here.
        let data_dir = self.node.data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::store::sweep::sweep_and_log(&data_dir, crate::store::sweep::GRACE)
        })
        .await;
    }
}
