//! The CLI's backup commands (`backup list|create|restore`) and `rollback --restore-data`,
//! talking to the local node (which forwards to `--node` over the mesh).
//!
//! ## Guarantees
//! - A restore says which backup, taken when, replaces which node's data, and that every write
//!   since then will be lost; it goes on only after the user types the service's name, or with
//!   `--yes`. Without a terminal and without `--yes` it refuses.
//! - `rollback --restore-data` restores only the backup taken before the deploy of the release
//!   it rolls back from while another release served ([`restore_point`](crate::engine::restore_point)),
//!   and only after the code rollback completed.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use halley_proto::NodeName;
use halley_proto::disk::BackupManifest;
use halley_proto::hex;
use halley_proto::message::{AdminRequest, AdminResponse, StateReply, StateRequest};
use halley_proto::spec::ServiceName;
use ring::digest;

use crate::cli::deploy::{unexpected, utc};
use crate::daemon::admin;
use crate::error::{Error, Result};
use crate::store::datadir::DataDir;

const LONG: Duration = Duration::from_secs(3600);

async fn ask(
    data_dir: &DataDir,
    node: Option<NodeName>,
    request: StateRequest,
) -> Result<StateReply> {
    match admin::call_within(data_dir, AdminRequest::State { node, request }, LONG).await? {
        AdminResponse::State(reply) => Ok(reply),
        AdminResponse::Error(e) => Err(Error::Remote(e)),
        other => Err(unexpected("a state request", &other)),
    }
}

/// A service's backups on a node.
pub async fn list(
    data_dir: &DataDir,
    node: Option<NodeName>,
    service: &ServiceName,
) -> Result<Vec<BackupManifest>> {
    match ask(data_dir, node, StateRequest::List(service.clone())).await? {
        StateReply::Backups(list) => Ok(list),
        other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

/// One SHA-256 over a backup's file hashes, to tell backups apart at a glance.
pub fn digest_of(m: &BackupManifest) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for f in &m.files {
        ctx.update(f.name.as_bytes());
        ctx.update(&f.sha256);
    }
    hex::encode(&ctx.finish().as_ref()[..8])
}

/// The `backup list` table.
pub fn table(list: &[BackupManifest]) -> String {
    let mut out = format!(
        "{:<22} {:<20} {:<10} {:>12} {:>5} {:<16}  REASON\n",
        "ID", "TAKEN (UTC)", "RELEASE", "BYTES", "FILES", "SHA256"
    );
    for m in list {
        out.push_str(&format!(
            "{:<22} {:<20} {:<10} {:>12} {:>5} {:<16}  {}\n",
            m.id,
            utc(m.created_ms),
            m.release.as_ref().map_or("-", |v| v.as_str()),
            m.size(),
            m.files.len(),
            digest_of(m),
            m.reason
        ));
    }
    if list.is_empty() {
        out.push_str("(no backups)\n");
    }
    out
}

/// `backup create`: a backup now, verified, pruned to `keep_backups`.
pub async fn create(
    data_dir: &DataDir,
    node: Option<NodeName>,
    service: &ServiceName,
    out: &mut impl Write,
) -> Result<()> {
    let request = StateRequest::Snapshot {
        service: service.clone(),
        spec: None,
        for_release: None,
    };
    match ask(data_dir, node, request).await? {
        StateReply::Snapshot {
            backup: Some(m),
            note,
        } => {
            let _ = writeln!(
                out,
                "backup {} of {service}: {} bytes in {} files, sha256 {}; verified: {note}",
                m.id,
                m.size(),
                m.files.len(),
                digest_of(&m)
            );
            Ok(())
        }
        StateReply::Snapshot { backup: None, note } => Err(Error::Invalid(note)),
        other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

/// Asks the user to type the service's name, unless `yes`.
pub(crate) fn confirm(service: &ServiceName, warning: &str, yes: bool) -> Result<()> {
    eprintln!("{warning}");
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Invalid(
            "this would lose data and there is no terminal to confirm on; pass --yes to go on"
                .into(),
        ));
    }
    eprint!("Type the service name ({service}) to go on: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Invalid(format!("cannot read the confirmation: {e}")))?;
    if line.trim() != service.as_str() {
        return Err(Error::Invalid("not confirmed; nothing was changed".into()));
    }
    Ok(())
}

fn loss(node: &str, m: &BackupManifest) -> String {
    format!(
        "  node {node}: backup {} taken {} UTC (release {} serving); every write to its data since then will be lost",
        m.id,
        utc(m.created_ms),
        m.release.as_ref().map_or("-", |v| v.as_str())
    )
}

/// `backup restore`: checks, confirms, stops the service on the node, restores, restarts it.
pub async fn restore(
    data_dir: &DataDir,
    node: Option<NodeName>,
    service: &ServiceName,
    id: &str,
    yes: bool,
    out: &mut impl Write,
) -> Result<()> {
    let all = list(data_dir, node.clone(), service).await?;
    let Some(m) = all.iter().find(|m| m.id == id) else {
        return Err(Error::Invalid(format!(
            "service {service} has no backup {id} there; 'halley-node backup list {service}' shows them"
        )));
    };
    let where_ = node.as_ref().map_or("this node".into(), |n| n.to_string());
    let warning = format!(
        "Restoring replaces the data of service {service} and stops it on that node while it runs:\n{}",
        loss(&where_, m)
    );
    confirm(service, &warning, yes)?;
    restore_one(data_dir, node, service, id, out).await
}

async fn restore_one(
    data_dir: &DataDir,
    node: Option<NodeName>,
    service: &ServiceName,
    id: &str,
    out: &mut impl Write,
) -> Result<()> {
    let where_ = node.as_ref().map_or("this node".into(), |n| n.to_string());
    let request = StateRequest::Restore {
        service: service.clone(),
        id: id.to_owned(),
    };
    match ask(data_dir, node, request).await? {
        StateReply::Restored(m) => {
            let _ = writeln!(
                out,
                "{where_}: restored backup {} of {service} ({} bytes); the committed release serves again",
                m.id,
                m.size()
            );
            Ok(())
        }
        other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

/// `rollback SERVICE --restore-data`: the code rollback, then every node's snapshot taken before
/// the deploy being undone.
pub async fn rollback_with_data(
    data_dir: &DataDir,
    service: &ServiceName,
    to: Option<halley_proto::deploy::ReleaseVersion>,
    yes: bool,
    out: &mut impl Write,
) -> Result<()> {
    let statuses = crate::cli::deploy::services(data_dir).await?;
    let from = statuses
        .iter()
        .find(|s| &s.name == service)
        .and_then(|s| s.committed.clone())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "service {service} has no committed release on this node; run the rollback on a node that runs it"
            ))
        })?;
    let members = match admin::call(data_dir, AdminRequest::Status).await? {
        AdminResponse::Status(report) => report,
        other => return Err(unexpected("a status request", &other)),
    };
    let mut targets: Vec<(Option<NodeName>, String, BackupManifest)> = Vec::new();
    for row in &members.members {
        let node = (row.name != members.self_name).then(|| row.name.clone());
        let Ok(list) = list(data_dir, node.clone(), service).await else {
            continue;
        };
        if let Some(m) = crate::engine::restore_point::restore_point(&list, &from) {
            targets.push((node, row.name.to_string(), m.clone()));
        }
    }
    if targets.is_empty() {
        return Err(Error::Invalid(format!(
            "no node has a backup taken before the deploy of {from}; roll back without --restore-data, or restore a backup by hand ('halley-node backup list {service}')"
        )));
    }
    let lines: Vec<String> = targets.iter().map(|(_, name, m)| loss(name, m)).collect();
    let warning = format!(
        "Rolling back {service} from {from} and restoring the data it had before that deploy:\n{}",
        lines.join("\n")
    );
    confirm(service, &warning, yes)?;
    crate::cli::deploy::rollback(data_dir, service, to, out).await?;
    for (node, _, m) in targets {
        restore_one(data_dir, node, service, &m.id, out).await?;
    }
    Ok(())
}
