//! One host's side of a rollout, as the coordinator drives it: drain, ship the artifact,
//! prepare, start, check, flip, drain the old slot, undrain; revert; commit; and sampling its
//! signals for the regression watch. A host's actions run one after another on its own worker
//! (see `rollout::driver`), so nothing here overlaps on one host.
//!
//! ## Guarantees
//! - The artifact goes in 1 MiB pieces from what the host already holds, and a dropped
//!   connection resumes from there (up to 5 times in a row).
//! - A host that refuses a step for a stale epoch is reported as fenced, never retried.
//! - A deploy that fails leaves the host undrained; the host itself already stopped what it
//!   started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halley_proto::NodeName;
use halley_proto::deploy::{
    ArtifactSource, ReleaseVersion, ServiceStatus, SlotRole, Step, StepReply, StepRequest,
};
use halley_proto::disk::RolloutJournal;
use halley_proto::message::{ErrorKind, PeerReply, PeerRequest};
use halley_proto::rollout::RolloutState;
use halley_proto::spec::{ServiceName, ServiceSpec};
use tracing::warn;

use crate::engine::regression::Sample;
use crate::engine::release_pin::{self, Offerer};
use crate::engine::rollout::{Action, Event};
use crate::error::Error;
use crate::rollout::context::Coordinator;
use crate::rollout::context::{LONG, SHORT};
use crate::rollout::rollback::{resolve, roll_back_host};
use crate::store::releases::CHUNK;

/// What a host worker needs.
pub(crate) struct HostCtx {
    pub(crate) node: Arc<Coordinator>,
    pub(crate) host: NodeName,
    pub(crate) journal: RolloutJournal,
    pub(crate) baselines: Arc<Mutex<HashMap<NodeName, Sample>>>,
}

/// Why a host's deploy did not end serving the new release.
enum Failure {
    Fenced(String),
    Failed(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Remote(reply) if reply.kind == ErrorKind::StaleEpoch => {
                Failure::Fenced(reply.message)
            }
            other => Failure::Failed(other.to_string()),
        }
    }
}

impl HostCtx {
    fn request(&self, step: Step) -> StepRequest {
        StepRequest {
            on_behalf_of: None,
            service: self.journal.state.service.clone(),
            epoch: self.journal.state.epoch,
            step,
        }
    }

    /// This rollout's drain hold on the host: it lives through `drain_wait` and, after that,
    /// `orphan_timeout` past this rollout's last step or watch of the service there.
    fn hold_drain(&self) -> PeerRequest {
        let r = &self.journal.spec.rollout;
        PeerRequest::HoldDrain {
            service: self.journal.state.service.clone(),
            epoch: self.journal.state.epoch,
            ttl_ms: r.orphan_timeout.0.saturating_add(r.drain_wait.0),
        }
    }

    fn release_drain(&self) -> PeerRequest {
        PeerRequest::ReleaseDrain {
            service: self.journal.state.service.clone(),
            epoch: self.journal.state.epoch,
        }
    }

    async fn step(&self, step: Step, timeout: Duration) -> Result<StepReply, Failure> {
        Ok(self
            .node
            .cluster
            .step_on(&self.host, self.request(step), timeout)
            .await?)
    }

    pub(crate) async fn run(&self, action: Action) -> Event {
        let host = self.host.clone();
        match action {
            Action::Drain(_) => match self
                .node
                .cluster
                .peer(&host, self.hold_drain(), SHORT)
                .await
            {
                Ok(_) => Event::Drained(host),
                Err(Error::Remote(r)) if r.kind == ErrorKind::StaleEpoch => {
                    Event::Fenced(host, r.message)
                }
                Err(e) => {
                    warn!(%host, error = %e, "host unreachable on its turn");
                    Event::Unreachable(host)
                }
            },
            Action::Deploy(_) => match self.deploy().await {
                Ok(note) => Event::Deployed(host, Ok(note)),
                Err(Failure::Fenced(why)) => Event::Fenced(host, why),
                Err(Failure::Failed(why)) => {
                    // The host reverted what it started; it must not stay drained.
                    let _ = self
                        .node
                        .cluster
                        .peer(&host, self.release_drain(), SHORT)
                        .await;
                    Event::Deployed(host, Err(why))
                }
            },
            Action::Revert(_) => {
                let result = self.revert().await;
                match result {
                    Err(Failure::Fenced(why)) => Event::Fenced(host, why),
                    Err(Failure::Failed(why)) => Event::Reverted(host, Err(why)),
                    Ok(note) => Event::Reverted(host, Ok(note)),
                }
            }
            Action::Commit(_) => {
                let version = self.journal.state.version.clone();
                let step = self.request(Step::Commit { version });
                match self.node.cluster.step_on(&host, step, LONG).await {
                    Ok(StepReply::Committed { version, .. }) => {
                        Event::Committed(host, Ok(format!("committed {version}")))
                    }
                    Ok(_) => Event::Committed(host, Ok(String::new())),
                    // It serves another release: committing again will not change that.
                    Err(Error::Remote(r)) if r.kind == ErrorKind::Conflict => {
                        Event::CommitRefused(host, r.message)
                    }
                    Err(e) => match Failure::from(e) {
                        Failure::Fenced(why) => Event::Fenced(host, why),
                        Failure::Failed(why) => Event::Committed(host, Err(why)),
                    },
                }
            }
            Action::Resolve(_) => {
                let service = &self.journal.state.service;
                Event::Resolved(host.clone(), resolve(&self.node, &host, service).await)
            }
            Action::RollBack(_, target) => {
                let j = &self.journal;
                let done = roll_back_host(
                    &self.node,
                    &host,
                    &j.state.service,
                    &target,
                    j.state.epoch,
                    &j.spec,
                )
                .await;
                match done {
                    Ok(note) => Event::Reverted(host, Ok(note)),
                    Err(r) if r.kind == ErrorKind::StaleEpoch => Event::Fenced(host, r.message),
                    Err(r) => Event::Reverted(host, Err(r.message)),
                }
            }
            Action::Journal | Action::Say(_) => Event::Tick,
        }
    }

    async fn revert(&self) -> Result<String, Failure> {
        let started = Instant::now();
        let reply = match self
            .node
            .cluster
            .step_on(&self.host, self.request(Step::Revert), LONG)
            .await
        {
            // The service was never created there (its first prepare failed): nothing to undo.
            Err(Error::Remote(r)) if r.kind == ErrorKind::NotFound => {
                StepReply::Reverted { serving: None }
            }
            other => other?,
        };
        self.node
            .cluster
            .peer(&self.host, self.release_drain(), SHORT)
            .await?;
        let took = started.elapsed().as_millis();
        Ok(match reply {
            StepReply::Reverted { serving } => format!(
                "serving {} (reverted in {took} ms)",
                serving.map_or("nothing".into(), |v| v.to_string())
            ),
            _ => format!("reverted in {took} ms"),
        })
    }

    /// Sends the release, starts it, checks it, flips, drains the old slot, undrains the host.
    /// Ships the artifact and prepares the release on the host (nothing starts or moves).
    async fn prepare(&self) -> Result<(), Failure> {
        let j = &self.journal;
        self.send_artifact().await?;
        self.step(
            Step::Prepare {
                spec: Box::new(j.spec.clone()),
                version: j.state.version.clone(),
                artifact: ArtifactSource::Stored {
                    sha256: j.sha256,
                    file_name: j.file_name.clone(),
                },
            },
            LONG,
        )
        .await?;
        Ok(())
    }

    /// [`HostCtx::prepare`] for the state flow (a migration runs from the prepared release).
    pub(crate) async fn prepare_release(&self) -> Result<(), String> {
        self.prepare().await.map_err(|f| match f {
            Failure::Fenced(why) | Failure::Failed(why) => why,
        })
    }

    async fn deploy(&self) -> Result<String, Failure> {
        let j = &self.journal;
        let service = &j.state.service;
        if let Ok(before) = sample(&self.node, &self.host, service, None).await
            && let Ok(mut b) = self.baselines.lock()
        {
            b.insert(self.host.clone(), before);
        }
        let started = Instant::now();
        self.prepare().await?;
        let mut notes = Vec::new();
        // A slot still draining an earlier release (a revert a moment ago, say) must finish first.
        let drain = j.spec.stop.drain_timeout.as_duration() + SHORT * 3;
        self.step(Step::Drain, drain).await?;
        let reply = self
            .step(
                Step::StartNext {
                    version: j.state.version.clone(),
                    rollback: false,
                },
                SHORT * 6,
            )
            .await?;
        if let StepReply::Started { slot, port, reused } = reply {
            notes.push(format!(
                "started {slot} on 127.0.0.1:{port}{}",
                if reused { " (warm, reused)" } else { "" }
            ));
        }
        let deadline = j.spec.rollout.health_deadline.as_duration();
        match tokio::time::timeout(deadline, self.step(Step::Check, deadline + SHORT)).await {
            Err(_) => {
                return Err(Failure::Failed(format!(
                    "not healthy within health_deadline ({})",
                    j.spec.rollout.health_deadline
                )));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(StepReply::Healthy { waited_ms, .. })) => {
                notes.push(format!("healthy in {waited_ms} ms"));
            }
            Ok(Ok(_)) => {}
        }
        if let StepReply::Flipped { from, to, took_ns } = self.step(Step::Flip, SHORT).await? {
            notes.push(format!(
                "flipped {} -> {to} in {:.1} us",
                from.map_or("nothing".into(), |f| f.to_string()),
                took_ns as f64 / 1000.0
            ));
        }
        if let StepReply::Drained {
            slot: Some(slot),
            completed,
            cut,
            ..
        } = self.step(Step::Drain, drain).await?
        {
            notes.push(format!(
                "drained {slot}: {completed} finished, {cut} cut at drain_timeout"
            ));
        }
        self.node
            .cluster
            .peer(&self.host, self.release_drain(), SHORT)
            .await?;
        notes.push(format!("{} ms", started.elapsed().as_millis()));
        Ok(notes.join("; "))
    }

    /// Streams the artifact to the host in 1 MiB pieces, resuming from what it holds.
    async fn send_artifact(&self) -> Result<(), Failure> {
        if &self.host == self.node.cluster.name() {
            return Ok(());
        }
        push_artifact(&self.node, &self.host, self.journal.sha256)
            .await
            .map_err(|e| match e {
                e @ Error::Remote(_) => e.into(),
                other => Failure::Failed(other.to_string()),
            })
    }
}

/// Streams artifact `sha256` from this node's store to `host` in 1 MiB pieces, resuming from
/// what it holds.
pub(crate) async fn push_artifact(
    node: &Coordinator,
    host: &NodeName,
    sha256: [u8; 32],
) -> Result<(), Error> {
    let releases = node.services.releases().clone();
    let mut failures = 0;
    let mut held = match node
        .cluster
        .peer(host, PeerRequest::ArtifactStatus { sha256 }, SHORT)
        .await?
    {
        PeerReply::Artifact { complete: true, .. } => return Ok(()),
        PeerReply::Artifact { received, .. } => received,
        _ => 0,
    };
    loop {
        let r = releases.clone();
        let (total, data) = tokio::task::spawn_blocking(move || r.read_chunk(&sha256, held, CHUNK))
            .await
            .map_err(|e| Error::Net(format!("storage task failed: {e}")))??;
        let request = PeerRequest::PutArtifact {
            sha256,
            total,
            offset: held,
            data,
        };
        match node.cluster.peer(host, request, SHORT * 3).await {
            Ok(PeerReply::Artifact { complete: true, .. }) => return Ok(()),
            Ok(PeerReply::Artifact { received, .. }) => {
                held = received;
                failures = 0;
            }
            Ok(_) => {
                return Err(Error::Protocol(
                    "unexpected answer to an artifact piece".into(),
                ));
            }
            Err(e @ Error::Remote(_)) => return Err(e),
            Err(e) => {
                // A dropped connection: ask what arrived and go on from there.
                failures += 1;
                if failures > 5 {
                    return Err(Error::Net(format!("sending the artifact failed: {e}")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(PeerReply::Artifact { received, complete }) = node
                    .cluster
                    .peer(host, PeerRequest::ArtifactStatus { sha256 }, SHORT)
                    .await
                {
                    if complete {
                        return Ok(());
                    }
                    held = received;
                }
            }
        }
    }
}

/// Why a host gave no sample.
pub(crate) enum Miss {
    /// It did not answer.
    Unreachable,
    /// It answered, but serves another release than the one asked for (or none).
    Serves(Option<ReleaseVersion>),
}

/// The active slot's signals of a service on a host; when `version` is given, only if the
/// active slot runs it.
pub(crate) async fn sample(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
    version: Option<&ReleaseVersion>,
) -> Result<Sample, Miss> {
    let reply = node
        .cluster
        .peer(
            host,
            PeerRequest::Watch(service.clone()),
            Duration::from_secs(3),
        )
        .await
        .map_err(|_| Miss::Unreachable)?;
    let PeerReply::Services(list) = reply else {
        return Err(Miss::Unreachable);
    };
    let status: Option<&ServiceStatus> = list.iter().find(|s| &s.name == service);
    let active = status.and_then(|s| s.slots.iter().find(|s| s.role == SlotRole::Active));
    let serving = active.and_then(|a| a.version.clone());
    let Some(active) = active.filter(|_| version.is_none_or(|v| serving.as_ref() == Some(v)))
    else {
        return Err(Miss::Serves(serving));
    };
    Ok(Sample {
        signals: active.signals,
        health: Some(active.health),
        crash_loop: active.crash_loop,
    })
}

/// Copies an artifact from `host` into this node's store (resuming a partial copy).
pub(crate) async fn fetch_artifact(
    node: &Coordinator,
    host: &NodeName,
    sha256: &[u8; 32],
) -> Result<(), Error> {
    let releases = node.services.releases().clone();
    loop {
        let (held, complete) = releases.artifact_received(sha256);
        if complete {
            return Ok(());
        }
        let reply = node
            .cluster
            .peer(
                host,
                PeerRequest::GetArtifact {
                    sha256: *sha256,
                    offset: held,
                },
                SHORT,
            )
            .await?;
        let PeerReply::Chunk { total, data } = reply else {
            return Err(Error::Protocol("unexpected answer to GetArtifact".into()));
        };
        if data.is_empty() {
            return Err(Error::Artifact(format!(
                "{host} sent an empty piece at {held} of {total}"
            )));
        }
        let releases = releases.clone();
        let sha = *sha256;
        tokio::task::spawn_blocking(move || releases.put_chunk(&sha, total, held, &data))
            .await
            .map_err(|e| Error::Net(format!("storage task failed: {e}")))??;
    }
}

/// The spec and artifact of `state`'s release from the first of `hosts` that has it and whose
/// offer [`release_pin::may_take`] accepts (this node's own name is served from its store); the
/// artifact is copied into this node's store.
pub(crate) async fn fetch_release(
    node: &Coordinator,
    state: &RolloutState,
    hosts: &[NodeName],
) -> Option<(ServiceSpec, [u8; 32], String, NodeName)> {
    for host in hosts {
        let request = PeerRequest::GetRelease {
            service: state.service.clone(),
            version: state.version.clone(),
        };
        let Ok(PeerReply::Release {
            spec,
            sha256,
            file_name,
        }) = node.cluster.peer(host, request, SHORT).await
        else {
            continue;
        };
        let from = if host == node.cluster.name() {
            Offerer::Itself
        } else {
            Offerer::Peer(node.cluster.mesh().and_then(|m| m.certified_role(host)))
        };
        if !release_pin::may_take(state, (&spec, &sha256, &file_name), from) {
            warn!(
                service = %state.service,
                version = %state.version,
                %host,
                "ignored the release a host offered: it does not match the rollout's release pin (or the rollout has none and the host is not an admin)"
            );
            continue;
        }
        if fetch_artifact(node, host, &sha256).await.is_ok() {
            return Some((*spec, sha256, file_name, host.clone()));
        }
    }
    None
}

/// The steps that put a prepared `version` live on a host and commit it: start-next (reusing
/// a warm slot), check, flip, drain the old slot, commit; each with its timeout by `spec`.
pub(crate) fn switch_to(
    version: &ReleaseVersion,
    rollback: bool,
    spec: &ServiceSpec,
) -> Vec<(Step, Duration)> {
    vec![
        (
            Step::StartNext {
                version: version.clone(),
                rollback,
            },
            SHORT * 6,
        ),
        (
            Step::Check,
            spec.rollout.health_deadline.as_duration() + SHORT,
        ),
        (Step::Flip, SHORT),
        (
            Step::Drain,
            spec.stop.drain_timeout.as_duration() + SHORT * 3,
        ),
        (
            Step::Commit {
                version: version.clone(),
            },
            LONG,
        ),
    ]
}

/// Runs `steps` on `host` in order, each with its timeout. On the first failure the host is
/// reverted (best effort: it already stopped what a failed step started) and the error returned.
/// Each reply comes with the time since the walk began. `on_behalf_of` names the coordinator
/// whose finished rollout this node's own convergence carries out (see
/// [`StepRequest::on_behalf_of`]).
pub(crate) async fn walk(
    node: &Coordinator,
    host: &NodeName,
    service: &ServiceName,
    (epoch, on_behalf_of): (u64, Option<&NodeName>),
    steps: Vec<(Step, Duration)>,
) -> Result<Vec<(StepReply, Duration)>, Error> {
    let request = |step: Step| StepRequest {
        on_behalf_of: on_behalf_of.cloned(),
        service: service.clone(),
        epoch,
        step,
    };
    let started = Instant::now();
    let mut replies = Vec::with_capacity(steps.len());
    for (step, timeout) in steps {
        match node.cluster.step_on(host, request(step), timeout).await {
            Ok(reply) => replies.push((reply, started.elapsed())),
            Err(e) => {
                let _ = node
                    .cluster
                    .step_on(host, request(Step::Revert), LONG)
                    .await;
                return Err(e);
            }
        }
    }
    Ok(replies)
}
