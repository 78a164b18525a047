//! `deploy --dry-run`: the checks a deploy makes before it changes anything (the artifact, the
//! `hosts` names), then its plan: batches, each host's current release, the state steps, and a
//! note when another rollout of the service looks unfinished (the one-rollout lock).
//!
//! ## Guarantees
//! - Nothing is changed on any node; a check that fails exits non-zero with what to fix.
//!
//! ## Non-goals
//! The hosts' own checks (a taken port, an artifact that does not unpack): only a deploy runs
//! those.

use halley_proto::NodeName;
use halley_proto::gossip::ServiceSummary;
use halley_proto::message::{AdminRequest, AdminResponse, MemberState};
use halley_proto::spec::{ServiceName, ServiceSpec};

use crate::cli::deploy::DeployOptions;
use crate::daemon::admin;
use crate::error::{Error, Result};
use crate::store::datadir::DataDir;
use crate::store::releases::copy_hashing;

/// The plan a deploy would follow, from the membership and each host's gossiped release, after
/// the checks the deploy would make first.
pub async fn dry_run(data_dir: &DataDir, opts: &DeployOptions) -> Result<String> {
    check_artifact(opts)?;
    let AdminResponse::Status(report) = admin::call(data_dir, AdminRequest::Status).await? else {
        return Err(Error::Protocol(
            "the node answered status with something else".into(),
        ));
    };
    let members: Vec<NodeName> = report
        .members
        .iter()
        .filter(|m| m.state != MemberState::Left)
        .map(|m| m.name.clone())
        .collect();
    let known: Vec<NodeName> = report.members.iter().map(|m| m.name.clone()).collect();
    let unknown = crate::engine::rollout::unknown_hosts(&opts.spec.hosts, &known);
    if !unknown.is_empty() {
        return Err(Error::Invalid(
            crate::engine::rollout::unknown_hosts_refusal(&opts.service, &unknown),
        ));
    }
    let lock = lock_note(data_dir, &opts.service).await?;
    let hosts = crate::engine::rollout::plan(&opts.spec.hosts, &opts.spec.rollout.order, &members);
    let batch = opts.spec.rollout.batch.max(1) as usize;
    let mut text = format!(
        "plan: {} {} on {} host(s), batches of {batch}, drain_wait {}, bake {}, pause {} (nothing was changed)\n",
        opts.service,
        opts.version,
        hosts.len(),
        opts.spec.rollout.drain_wait,
        opts.spec.rollout.bake,
        opts.spec.rollout.pause
    );
    for (i, chunk) in hosts.chunks(batch).enumerate() {
        for host in chunk {
            let member = report.members.iter().find(|m| &m.name == host);
            let current = member
                .and_then(|m| m.services.iter().find(|(n, _)| n == opts.service.as_str()))
                .and_then(|(n, v)| ServiceSummary::parse(n, v).ok())
                .map_or("not deployed".to_owned(), |s| s.version);
            let state = member.map_or("unknown", |m| m.state.as_str());
            text.push_str(&format!(
                "  batch {:<3} {:<12} {:<10} {} -> {}\n",
                i + 1,
                host.as_str(),
                state,
                current,
                opts.version
            ));
        }
    }
    text.push_str(&state_steps(&opts.spec, &hosts));
    text.push_str(&lock);
    Ok(text)
}

/// The artifact must be there and readable, and match `--sha256` when given.
fn check_artifact(opts: &DeployOptions) -> Result<()> {
    let path = &opts.artifact;
    let mut file = std::fs::File::open(path).map_err(|e| {
        Error::Invalid(format!(
            "the artifact {} cannot be read ({e}); nothing was changed. Check --artifact",
            path.display()
        ))
    })?;
    let Some(expected) = opts.sha256 else {
        return Ok(());
    };
    let got = copy_hashing(&mut file, &mut std::io::sink())
        .map_err(Error::io("cannot read", path.as_path()))?;
    if got != expected {
        return Err(Error::Invalid(format!(
            "the artifact {} has SHA-256 {}, not the {} given with --sha256; nothing was changed",
            path.display(),
            halley_proto::hex::encode(&got),
            halley_proto::hex::encode(&expected)
        )));
    }
    Ok(())
}

/// A line when another rollout of the service looks unfinished. It is a note, not a refusal:
/// gossip may lag a rollout that just ended, and the deploy itself asks the coordinator.
async fn lock_note(data_dir: &DataDir, service: &ServiceName) -> Result<String> {
    let list = crate::cli::deploy::status(data_dir, Some(service)).await?;
    Ok(match list.into_iter().find(|s| !s.phase.finished()) {
        Some(s) => format!(
            "  lock: rollout {} by node {} (version {}, {}, {}) looks unfinished here; a deploy now is refused if it still is\n",
            s.id,
            s.coordinator,
            s.version,
            s.phase,
            s.progress()
        ),
        None => String::new(),
    })
}

/// The state steps a deploy would run before (and after) its rollout.
fn state_steps(spec: &ServiceSpec, hosts: &[NodeName]) -> String {
    let Some(state) = &spec.state else {
        return String::new();
    };
    let on: Vec<&NodeName> = hosts.iter().filter(|h| state.on.includes(h)).collect();
    let mut text = String::new();
    if on.is_empty() {
        text.push_str(
            "  state: no host of this plan is in [state] on; the deploy would be refused\n",
        );
        return text;
    }
    if state.has_snapshot() {
        for host in &on {
            text.push_str(&format!(
                "  state: snapshot and verify on {host} (hosts that never ran the service skip it)\n"
            ));
        }
    }
    if state.migrate.is_some() {
        text.push_str(&format!(
            "  state: migrate on {} before any host changes (once per release)\n",
            on[0]
        ));
    }
    if state.contract.is_some() {
        text.push_str(&format!(
            "  state: contract on {} after every host committed\n",
            on[0]
        ));
    }
    text
}
