//! The CLI side of deploys: `deploy`, `deploy --resume`, `rollback`, `rollout status`,
//! `history` and `services`. The local node coordinates (see `rollout::driver`); the CLI asks it
//! over the admin socket, then follows the rollout's published state and prints one line per
//! host change, so the output reads the same on a terminal and in a log.
//!
//! ## Guarantees
//! - The exit status says how the rollout ended: success only when it completed; a rollback, a
//!   pause or a fenced stop is an error whose message says why and what each host did.
//! - Closing the CLI does not stop a rollout: it runs in the node.
//! - `--dry-run` reads the membership and prints the plan; it changes nothing.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use halley_proto::deploy::{ReleaseVersion, ServiceStatus, SlotRole, Step, StepReply, StepRequest};
use halley_proto::message::{AdminRequest, AdminResponse};
use halley_proto::rollout::{HistoryEntry, Mode, Phase, RolloutKind, RolloutRequest, RolloutState};
use halley_proto::spec::{ServiceName, ServiceSpec};

use crate::cli::progress::Progress;
use crate::daemon::admin;
use crate::error::{Error, Result};
use crate::store::datadir::DataDir;

/// Steps that wait (check, drain) are bounded on the node by `start_period` and
/// `drain_timeout`; this only guards against a node that stopped answering.
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `deploy` needs.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The service.
    pub service: ServiceName,
    /// Its spec, env files merged.
    pub spec: ServiceSpec,
    /// The release's version.
    pub version: ReleaseVersion,
    /// The artifact on this host.
    pub artifact: PathBuf,
    /// Its expected SHA-256, if known.
    pub sha256: Option<[u8; 32]>,
    /// Skip hosts unreachable on their turn.
    pub skip_unreachable: bool,
}

/// Runs one deploy step on the local node (benchmarks and scripts drive a node with these). The
/// token is (`epoch`, this node): the epoch must be above the newest the node has seen for the
/// service (`ServiceStatus::epoch`), or equal to it when this node was that epoch's coordinator
/// (`StepRequest::on_behalf_of` names another through the admin socket).
pub async fn step(
    data_dir: &DataDir,
    service: &ServiceName,
    epoch: u64,
    step: Step,
) -> Result<StepReply> {
    let request = AdminRequest::Step(StepRequest {
        on_behalf_of: None,
        service: service.clone(),
        epoch,
        step,
    });
    match admin::call_within(data_dir, request, STEP_TIMEOUT).await? {
        AdminResponse::Step(reply) => Ok(reply),
        other => Err(unexpected("a deploy step", &other)),
    }
}

pub(crate) fn unexpected(what: &str, answer: &AdminResponse) -> Error {
    Error::Protocol(format!("the node answered {what} with {answer:?}"))
}

/// The services of the local node.
pub async fn services(data_dir: &DataDir) -> Result<Vec<ServiceStatus>> {
    match admin::call(data_dir, AdminRequest::Services).await? {
        AdminResponse::Services(list) => Ok(list),
        other => Err(unexpected("a services request", &other)),
    }
}

/// Rolls a release out across the service's hosts, coordinated by the local node.
pub async fn deploy(data_dir: &DataDir, opts: &DeployOptions, out: &mut impl Write) -> Result<()> {
    let artifact = std::fs::canonicalize(&opts.artifact)
        .map_err(Error::io("cannot find artifact", &opts.artifact))?;
    if artifact.is_dir() {
        return Err(crate::store::releases::not_a_file(&opts.artifact));
    }
    let request = RolloutRequest {
        service: opts.service.clone(),
        kind: RolloutKind::Deploy {
            spec: Box::new(opts.spec.clone()),
            version: opts.version.clone(),
            artifact: artifact.display().to_string(),
            sha256: opts.sha256,
        },
        skip_unreachable: opts.skip_unreachable,
    };
    run(data_dir, request, out).await
}

/// Continues the newest unfinished rollout of a service from its journal.
pub async fn resume(
    data_dir: &DataDir,
    service: &ServiceName,
    force: bool,
    skip_unreachable: bool,
    out: &mut impl Write,
) -> Result<()> {
    let request = RolloutRequest {
        service: service.clone(),
        kind: RolloutKind::Resume { force },
        skip_unreachable,
    };
    run(data_dir, request, out).await
}

/// Puts every host of a service back on its previous release (or `to`), all at once.
pub async fn rollback(
    data_dir: &DataDir,
    service: &ServiceName,
    to: Option<ReleaseVersion>,
    out: &mut impl Write,
) -> Result<()> {
    let request = RolloutRequest {
        service: service.clone(),
        kind: RolloutKind::Rollback { to },
        skip_unreachable: false,
    };
    run(data_dir, request, out).await
}

/// Removes a service from every host (`service remove`); its data too with `purge`.
pub async fn remove(
    data_dir: &DataDir,
    service: &ServiceName,
    purge: bool,
    out: &mut impl Write,
) -> Result<()> {
    let request = RolloutRequest {
        service: service.clone(),
        kind: RolloutKind::Remove { purge },
        skip_unreachable: false,
    };
    run(data_dir, request, out).await
}

/// Stops a service's unfinished rollout and rolls back the hosts it touched (`rollout abort`).
pub async fn abort(data_dir: &DataDir, service: &ServiceName, out: &mut impl Write) -> Result<()> {
    let request = RolloutRequest {
        service: service.clone(),
        kind: RolloutKind::Abort,
        skip_unreachable: false,
    };
    run(data_dir, request, out).await
}

async fn run(data_dir: &DataDir, request: RolloutRequest, out: &mut impl Write) -> Result<()> {
    let service = request.service.clone();
    // `rollout abort` succeeds when the rollout it stopped is rolled back; anything else only
    // when its rollout completed (or, for `rollback`, when every host went back).
    let aborting = matches!(request.kind, RolloutKind::Abort);
    // Snapshots and a migration run before the rollout starts, and may take a while.
    let asked = admin::call_within(
        data_dir,
        AdminRequest::Rollout(request),
        Duration::from_secs(3600),
    )
    .await?;
    let id = match asked {
        AdminResponse::RolloutStarted { id, notes } => {
            for note in notes {
                let _ = writeln!(out, "state: {note}");
            }
            id
        }
        other => return Err(unexpected("a rollout request", &other)),
    };
    follow(data_dir, &service, &id, aborting, out).await
}

/// Shows a rollout's progress until it ends; errors unless it completed (or, with `aborting`,
/// was rolled back by the abort).
pub async fn follow(
    data_dir: &DataDir,
    service: &ServiceName,
    id: &str,
    aborting: bool,
    out: &mut impl Write,
) -> Result<()> {
    use std::io::IsTerminal;
    let live = std::io::stdout().is_terminal() && std::env::var_os("HALLEY_PLAIN").is_none();
    let mut progress = Progress::new(out, live);
    let result = watch(data_dir, service, id, aborting, &mut progress).await;
    progress.finish();
    result
}

async fn watch<W: Write>(
    data_dir: &DataDir,
    service: &ServiceName,
    id: &str,
    aborting: bool,
    progress: &mut Progress<'_, W>,
) -> Result<()> {
    let started = Instant::now();
    let mut last_phase = None;
    let mut orphan = Orphaned::default();
    loop {
        let state = status(data_dir, Some(service))
            .await?
            .into_iter()
            .find(|s| s.id == id);
        if let Some(state) = state {
            orphan.check(data_dir, &state).await?;
            if last_phase.is_none() {
                progress.say(&title(&state));
            }
            for h in &state.hosts {
                progress.host(h);
            }
            if last_phase != Some(state.phase) && state.phase != Phase::Running {
                progress.say(state.phase.as_str());
                last_phase = Some(state.phase);
            }
            last_phase.get_or_insert(state.phase);
            let secs = started.elapsed().as_secs_f64();
            match state.phase {
                Phase::Completed => {
                    progress.say(&format!("completed in {secs:.1} s: {}", state.progress()));
                    if state.mode == Mode::Remove && !state.reason.is_empty() {
                        progress.say(&state.reason);
                    }
                    return Ok(());
                }
                Phase::RolledBack if state.mode == Mode::Rollback => {
                    progress.say(&format!(
                        "rolled back in {secs:.1} s: {}; {}",
                        state.progress(),
                        state.reason
                    ));
                    return Ok(());
                }
                Phase::RolledBack if aborting && state.reason.starts_with("aborted") => {
                    progress.say(&format!("rolled back in {secs:.1} s"));
                    return Ok(());
                }
                Phase::RolledBack | Phase::Paused | Phase::Fenced => {
                    return Err(Error::Invalid(format!(
                        "rollout {} {}: {}",
                        state.id, state.phase, state.reason
                    )));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first line about a followed rollout.
fn title(state: &RolloutState) -> String {
    let what = match state.mode {
        Mode::Remove => {
            return format!(
                "removal of {} from {} host(s) ({}), coordinated by {} (epoch {})",
                state.service,
                state.hosts.len(),
                if state.purges() {
                    "data and backups deleted"
                } else {
                    "data kept"
                },
                state.coordinator,
                state.epoch
            );
        }
        Mode::Rollback => "rollback of",
        Mode::Deploy => "rollout of",
    };
    format!(
        "{what} {} {} on {} host(s), coordinated by {} (epoch {})",
        state.service,
        state.version,
        state.hosts.len(),
        state.coordinator,
        state.epoch
    )
}

/// Notices a followed rollout that nobody drives any more (its coordinator died, or this node's
/// daemon restarted under it), so the CLI says what to do instead of waiting for ever. A rollout
/// whose state has not moved for [`Orphaned::QUIET`] is asked about every
/// [`Orphaned::RECHECK`]; answers of "not driven" for [`Orphaned::UNDRIVEN`] in a row end the
/// wait (longer than the failure detector takes to call a paused node dead and back).
#[derive(Default)]
struct Orphaned {
    seen: Option<(u64, u64)>,
    moved: Option<Instant>,
    undriven_since: Option<Instant>,
    asked: Option<Instant>,
}

impl Orphaned {
    const QUIET: Duration = Duration::from_secs(5);
    const RECHECK: Duration = Duration::from_secs(2);
    const UNDRIVEN: Duration = Duration::from_secs(10);

    async fn check(&mut self, data_dir: &DataDir, state: &RolloutState) -> Result<()> {
        let now = Instant::now();
        if self.seen != Some((state.epoch, state.seq)) {
            *self = Orphaned {
                seen: Some((state.epoch, state.seq)),
                moved: Some(now),
                ..Orphaned::default()
            };
        }
        let quiet = self.moved.is_some_and(|t| now - t >= Self::QUIET);
        let due = self.asked.is_none_or(|t| now - t >= Self::RECHECK);
        if state.phase.finished() || !quiet || !due {
            return Ok(());
        }
        self.asked = Some(now);
        let driven = match admin::call(data_dir, AdminRequest::RolloutDriven(state.service.clone()))
            .await?
        {
            AdminResponse::Driven { id, driven } => driven || id.as_deref() != Some(&state.id),
            other => return Err(unexpected("a rollout driven request", &other)),
        };
        if driven {
            self.undriven_since = None;
            return Ok(());
        }
        match self.undriven_since {
            None => {
                self.undriven_since = Some(now);
                Ok(())
            }
            Some(since) if now - since < Self::UNDRIVEN => Ok(()),
            Some(_) => Err(Error::Invalid(format!(
                "rollout {} of {} is unfinished ({}, {}) and no node drives it any more: its coordinator {} stopped. Take it over from any admin node with 'halley-node deploy --resume {}'",
                state.id,
                state.service,
                state.phase,
                state.progress(),
                state.coordinator,
                state.service
            ))),
        }
    }
}

/// Rollouts as the local node knows them.
pub async fn status(
    data_dir: &DataDir,
    service: Option<&ServiceName>,
) -> Result<Vec<RolloutState>> {
    match admin::call(data_dir, AdminRequest::RolloutStatus(service.cloned())).await? {
        AdminResponse::Rollouts(list) => Ok(list),
        other => Err(unexpected("a rollout status request", &other)),
    }
}

/// A service's rollout history.
pub async fn history(data_dir: &DataDir, service: &ServiceName) -> Result<Vec<HistoryEntry>> {
    match admin::call(data_dir, AdminRequest::History(service.clone())).await? {
        AdminResponse::History(list) => Ok(list),
        other => Err(unexpected("a history request", &other)),
    }
}

/// The `rollout status` table.
pub fn rollout_table(list: &[RolloutState]) -> String {
    if list.is_empty() {
        return "no rollouts known to this node\n".into();
    }
    let mut out = String::new();
    for s in list {
        out.push_str(&format!(
            "{} {} {}: {} ({}), coordinator {}, epoch {}{}\n",
            s.service,
            s.version,
            s.id,
            s.phase,
            s.progress(),
            s.coordinator,
            s.epoch,
            if s.reason.is_empty() {
                String::new()
            } else {
                format!("\n  why: {}", s.reason)
            }
        ));
        for h in &s.hosts {
            out.push_str(&format!(
                "  {:<12} {:<10} {}\n",
                h.node.as_str(),
                h.step.as_str(),
                h.note
            ));
        }
    }
    out
}

/// A unix-ms time as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| ms.to_string())
}

/// The `history` table.
pub fn history_table(list: &[HistoryEntry]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<12} {:<12} {:>8}  WHY\n",
        "STARTED (UTC)", "VERSION", "COORDINATOR", "OUTCOME", "SECONDS"
    );
    for e in list {
        let started = utc(e.started_ms);
        out.push_str(&format!(
            "{:<24} {:<10} {:<12} {:<12} {:>8.1}  {}\n",
            started,
            e.version.as_str(),
            e.coordinator.as_str(),
            e.outcome.as_str(),
            e.ended_ms.saturating_sub(e.started_ms) as f64 / 1000.0,
            e.reason
        ));
    }
    out
}

/// The `services` table.
pub fn table(list: &[ServiceStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<22} {:<6} {:<10} {:<6} {:<9} {:<10} {:<8} {:>8} {:>6} {:>7} {:>6} {:>9}\n",
        "SERVICE",
        "LISTEN",
        "SLOT",
        "VERSION",
        "PORT",
        "ROLE",
        "HEALTH",
        "PID",
        "RESTARTS",
        "REQ/S",
        "5XX%",
        "P99MS",
        "COMMITTED"
    );
    for s in list {
        for slot in &s.slots {
            if slot.role == SlotRole::Idle && slot.version.is_none() {
                continue;
            }
            let sig = slot.signals;
            let rate = sig.requests as f64 * 1000.0 / sig.window_ms.max(1) as f64;
            let errors = sig.errors as f64 * 100.0 / sig.requests.max(1) as f64;
            out.push_str(&format!(
                "{:<12} {:<22} {:<6} {:<10} {:<6} {:<9} {:<10} {:<8} {:>8} {:>6.1} {:>7.2} {:>6.1} {:>9}\n",
                s.name.as_str(),
                s.listen,
                slot.color.as_str(),
                slot.version.as_ref().map_or("-", |v| v.as_str()),
                slot.port,
                slot.role.as_str(),
                if slot.crash_loop { "crashloop" } else { slot.health.as_str() },
                slot.pid.map_or("-".into(), |p| p.to_string()),
                slot.restarts,
                rate,
                errors,
                sig.p99_us as f64 / 1000.0,
                s.committed.as_ref().map_or("-", |v| v.as_str()),
            ));
        }
        let shown = |v: &Option<ReleaseVersion>| v.as_ref().map_or("-", |v| v.as_str()).to_owned();
        let on_disk: Vec<&str> = s.releases.iter().map(|v| v.as_str()).collect();
        out.push_str(&format!(
            "{:<12} releases: committed {}, previous {}, on disk {}\n",
            "",
            shown(&s.committed),
            shown(&s.previous),
            if on_disk.is_empty() {
                "none".to_owned()
            } else {
                on_disk.join(", ")
            }
        ));
        let r = &s.routing;
        out.push_str(&format!(
            "{:<12} routing {}; peers serving: {}; forwarded {}, retried {}, ejected {}\n",
            "",
            r.policy,
            if r.peers.is_empty() {
                "none".to_owned()
            } else {
                r.peers.join(", ")
            },
            r.forwarded,
            r.retries,
            r.ejections
        ));
    }
    out
}
