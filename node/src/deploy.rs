//! `halley-node deploy` and `halley-node rollback` on the local node: the operator's walk through
//! the node's deploy steps over the admin socket, with a line of progress per step.
//!
//! ## Guarantees
//! - Nothing gets traffic before its check passed: the walk is prepare → start-next → check →
//!   flip → drain → commit, and the node refuses a flip to a slot that is not healthy.
//! - Any failure after start-next is followed by a revert, so the service is left serving its
//!   committed release; the error says which step failed and why (for a failed check, the last
//!   check's output).
//! - A rollback is the same walk to the previous committed release; when its slot is still warm,
//!   start-next reuses it and the rollback is a flip.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use halley_proto::deploy::{
    ArtifactSource, ReleaseVersion, ServiceStatus, SlotRole, Step, StepReply, StepRequest,
};
use halley_proto::message::{AdminRequest, AdminResponse};
use halley_proto::spec::{ServiceName, ServiceSpec};

use crate::admin;
use crate::datadir::DataDir;
use crate::error::{Error, Result};

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
}

/// Runs one step on the local node.
pub async fn step(data_dir: &DataDir, service: &ServiceName, step: Step) -> Result<StepReply> {
    let request = AdminRequest::Step(StepRequest {
        service: service.clone(),
        epoch: 0,
        step,
    });
    match admin::call_within(data_dir, request, STEP_TIMEOUT).await? {
        AdminResponse::Step(reply) => Ok(reply),
        other => Err(Error::Protocol(format!(
            "the node answered a deploy step with {other:?}"
        ))),
    }
}

/// The services of the local node.
pub async fn services(data_dir: &DataDir) -> Result<Vec<ServiceStatus>> {
    match admin::call(data_dir, AdminRequest::Services).await? {
        AdminResponse::Services(list) => Ok(list),
        other => Err(Error::Protocol(format!(
            "the node answered a services request with {other:?}"
        ))),
    }
}

/// Deploys a release to the local node.
pub async fn deploy(data_dir: &DataDir, opts: &DeployOptions, out: &mut impl Write) -> Result<()> {
    let artifact = std::fs::canonicalize(&opts.artifact)
        .map_err(Error::io("cannot find artifact", &opts.artifact))?;
    let _ = writeln!(out, "deploy {} {}", opts.service, opts.version);
    let t = Instant::now();
    let prepared = step(
        data_dir,
        &opts.service,
        Step::Prepare {
            spec: Box::new(opts.spec.clone()),
            version: opts.version.clone(),
            artifact: ArtifactSource::LocalPath {
                path: artifact.display().to_string(),
                sha256: opts.sha256,
            },
        },
    )
    .await?;
    report(out, "prepare", &prepared, t);
    walk(data_dir, &opts.service, &opts.version, out).await
}

/// Rolls the local node's service back to its previous committed release.
pub async fn rollback(
    data_dir: &DataDir,
    service: &ServiceName,
    out: &mut impl Write,
) -> Result<()> {
    let list = services(data_dir).await?;
    let status = list.iter().find(|s| &s.name == service).ok_or_else(|| {
        Error::Invalid(format!(
            "service {service} is not deployed on this node; 'halley-node services' lists what is"
        ))
    })?;
    let previous = status.previous.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "service {service} has no previous release on this node to roll back to (committed: {})",
            status
                .committed
                .as_ref()
                .map_or("none".into(), |v| v.to_string())
        ))
    })?;
    let warm = status.slots.iter().any(|s| {
        s.version.as_ref() == Some(&previous)
            && matches!(s.role, SlotRole::Warm | SlotRole::Draining)
    });
    let _ = writeln!(
        out,
        "rollback {service} to {previous} ({})",
        if warm {
            "its slot is warm: a flip"
        } else {
            "cold: start, check, flip"
        }
    );
    walk(data_dir, service, &previous, out).await
}

/// start-next → check → flip → drain → commit, reverting on failure.
async fn walk(
    data_dir: &DataDir,
    service: &ServiceName,
    version: &ReleaseVersion,
    out: &mut impl Write,
) -> Result<()> {
    let t = Instant::now();
    let started = step(
        data_dir,
        service,
        Step::StartNext {
            version: version.clone(),
        },
    )
    .await?;
    report(out, "start", &started, t);
    let mut rest = async || -> Result<()> {
        for (name, s) in [
            ("check", Step::Check),
            ("flip", Step::Flip),
            ("drain", Step::Drain),
            ("commit", Step::Commit),
        ] {
            let t = Instant::now();
            let reply = step(data_dir, service, s)
                .await
                .map_err(|e| Error::Invalid(format!("{name} failed: {e}")))?;
            report(out, name, &reply, t);
        }
        Ok(())
    };
    let result = rest().await;
    if let Err(e) = result {
        let _ = writeln!(out, "  {e}");
        let t = Instant::now();
        match step(data_dir, service, Step::Revert).await {
            Ok(reply) => report(out, "revert", &reply, t),
            Err(revert) => {
                return Err(Error::Invalid(format!(
                    "{e}; the revert failed too: {revert}"
                )));
            }
        }
        return Err(e);
    }
    Ok(())
}

fn report(out: &mut impl Write, name: &str, reply: &StepReply, since: Instant) {
    let took = since.elapsed();
    let text = match reply {
        StepReply::Prepared { sha256, unpacked } => format!(
            "sha256 {}… {}",
            &sha256[..sha256.len().min(12)],
            if *unpacked {
                "unpacked"
            } else {
                "already unpacked"
            }
        ),
        StepReply::Started { slot, port, reused } => format!(
            "{slot} on 127.0.0.1:{port}{}",
            if *reused { " (warm, reused)" } else { "" }
        ),
        StepReply::Healthy { slot, .. } => format!("{slot} is healthy"),
        StepReply::Flipped { from, to, took_ns } => format!(
            "{} → {to} (route switched in {} µs)",
            from.map_or("nothing".to_owned(), |f| f.to_string()),
            *took_ns as f64 / 1000.0
        ),
        StepReply::Drained {
            slot,
            completed,
            cut,
            ..
        } => match slot {
            Some(slot) => format!("{slot}: {completed} finished, {cut} cut at drain_timeout"),
            None => "nothing to drain".into(),
        },
        StepReply::Committed {
            version,
            previous,
            pruned,
        } => format!(
            "{version} (previous {}){}",
            previous.as_ref().map_or("none".into(), |p| p.to_string()),
            if pruned.is_empty() {
                String::new()
            } else {
                format!(
                    "; pruned {}",
                    pruned
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        StepReply::Reverted { serving } => format!(
            "serving {}",
            serving.as_ref().map_or("nothing".into(), |v| v.to_string())
        ),
    };
    let _ = writeln!(out, "  {name:<8} {text}  [{} ms]", took.as_millis());
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
    }
    out
}
