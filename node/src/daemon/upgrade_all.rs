//! `halley-node upgrade --all`: a new binary rolled across the cluster one node at a time, the
//! way a release is: an admin node ships it over the mesh to each live member in turn (as an
//! artifact, checked by SHA-256), asks it to `upgrade` to it, and waits until that member runs
//! it before going on; the coordinating node upgrades itself last.
//!
//! ## Guarantees
//! - A member runs only a binary it holds whole (its SHA-256 checked again as it is copied out
//!   of the artifact store) and that its own check accepts: its architecture, its wire
//!   protocol ([`crate::daemon::upgrade::Build`]). A member of another architecture refuses,
//!   and the roll stops there.
//! - The roll stops at the first member that refuses, fails to take over (it serves on with
//!   its old binary) or does not come back within [`COME_BACK`]; the answer names who runs
//!   what.
//! - A member keeps at most two shipped binaries (`DATA_DIR/binaries/`): the one it runs and
//!   the new one.
//!
//! ## Non-goals
//! Members that are not alive (dead, left, draining) are skipped and named in the answer:
//! upgrade each when it is back. No bake between members: each takes over without a gap or
//! does not take over at all, and its services are not restarted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halley_proto::handover::Handover;
use halley_proto::message::{ErrorReply, MemberState, PeerReply, PeerRequest};
use halley_proto::{NodeName, Role};
use tokio::net::UnixStream;

use crate::daemon::node::Node;
use crate::daemon::upgrade::{self, answer};
use crate::error::{Error, bad_request, internal};

/// How long a member may take from the upgrade asked to running the new binary.
const COME_BACK: Duration = Duration::from_secs(150);
/// The folder of shipped binaries in a data dir.
const BINARIES: &str = "binaries";

/// Rolls `binary` across the cluster, answering on `cli` as each member is done and at the end.
pub async fn coordinate(node: &Node, binary: Option<String>, cli: UnixStream) {
    let mut cli = Some(cli);
    match peers_first(node, binary, &mut cli).await {
        Ok((binary, version, done)) => {
            let note = if done.is_empty() {
                "no other live member".to_owned()
            } else {
                format!("{} run {version}", names(&done))
            };
            progress(&mut cli, format!("{note}; now this node")).await;
            if let Err(mut back) = upgrade::ask_checked(&node.upgrades, binary, version, cli) {
                let message = format!("{note}; this node: {}", upgrade::BUSY);
                answer(&mut back.cli, &Handover::Failed { message }).await;
            }
        }
        Err(message) => answer(&mut cli, &Handover::Failed { message }).await,
    }
}

/// Upgrades every other live member in name order; returns the checked binary, its version and
/// the members done.
async fn peers_first(
    node: &Node,
    binary: Option<String>,
    cli: &mut Option<UnixStream>,
) -> Result<(PathBuf, String, Vec<NodeName>), String> {
    if node.record.role != Role::Admin {
        return Err(
            "a worker does not upgrade other nodes: run 'upgrade --all' on an admin node, or 'upgrade' here for this one".into(),
        );
    }
    let binary = upgrade::resolve(binary, upgrade::own_binary()).map_err(|e| e.to_string())?;
    let build = upgrade::check_binary(&binary)
        .await
        .map_err(|e| e.to_string())?;
    let releases = node.services.releases().clone();
    let path = binary.clone();
    let sha256 = tokio::task::spawn_blocking(move || releases.store_local(&path, None))
        .await
        .map_err(|e| format!("storage task failed: {e}"))?
        .map_err(|e| format!("cannot store {}: {e}", binary.display()))?;
    let me = node.cluster.name().clone();
    let mut members = node.cluster.members();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut done = Vec::new();
    for row in members.into_iter().filter(|r| r.name != me) {
        if !matches!(row.state, MemberState::Alive) {
            let line = format!(
                "{}: {}, not upgraded; run 'halley-node upgrade' there once it is back",
                row.name,
                row.state.as_str()
            );
            progress(cli, line).await;
            continue;
        }
        progress(cli, format!("{}: sending the binary", row.name)).await;
        upgrade_one(node, &row.name, sha256).await.map_err(|why| {
            let so_far = if done.is_empty() {
                "no member was upgraded".to_owned()
            } else {
                format!("{} run {} already", names(&done), build.version)
            };
            format!(
                "{}: {why}. Stopped there: {so_far}; the others run their old binary",
                row.name
            )
        })?;
        progress(cli, format!("{}: runs {} now", row.name, build.version)).await;
        done.push(row.name);
    }
    Ok((binary, build.version, done))
}

/// Ships the binary to `host`, asks it to upgrade, and waits until it runs it.
async fn upgrade_one(node: &Node, host: &NodeName, sha256: [u8; 32]) -> Result<(), String> {
    // A member that runs it already (a roll started again after a failure) is left alone: its
    // answer could not tell its takeover's end from its start.
    if let Ok(PeerReply::Binary { sha256: runs, .. }) = node
        .cluster
        .peer(host, PeerRequest::Binary, Duration::from_secs(3))
        .await
        && runs == sha256
    {
        return Ok(());
    }
    crate::rollout::host_steps::push_artifact(&node.coordinator, host, sha256)
        .await
        .map_err(|e| format!("cannot send the binary: {e}"))?;
    node.cluster
        .peer(
            host,
            PeerRequest::Upgrade { sha256 },
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("refused the upgrade: {e}"))?;
    let until = Instant::now() + COME_BACK;
    loop {
        // Unanswered while its mesh changes hands: asked again.
        let reply = node
            .cluster
            .peer(host, PeerRequest::Binary, Duration::from_secs(3))
            .await;
        match reply {
            Ok(PeerReply::Binary { sha256: runs, .. }) if runs == sha256 => return Ok(()),
            Ok(PeerReply::Binary {
                last_failure: Some(why),
                ..
            }) => return Err(format!("did not take over: {why}")),
            _ => {}
        }
        if Instant::now() >= until {
            return Err(format!(
                "does not run the new binary {}s after it was asked to; see its log",
                COME_BACK.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A member's side: copies the shipped binary out of the artifact store, checks it and queues
/// the upgrade to it.
pub async fn receive(node: &Node, sha256: [u8; 32]) -> Result<PeerReply, ErrorReply> {
    let releases = node.services.releases().clone();
    if !releases.artifact_received(&sha256).1 {
        return Err(bad_request(
            "this node does not hold that binary whole; send it first",
        ));
    }
    let dir = node.services.data_dir().file(BINARIES);
    let name = format!("halley-node-{}", halley_proto::hex::encode(&sha256[..8]));
    let target = dir.join(&name);
    let from = releases.artifact_path(&sha256);
    let to = target.clone();
    tokio::task::spawn_blocking(move || install(&from, &to, sha256))
        .await
        .map_err(|e| internal(&format!("storage task failed: {e}")))?
        .map_err(|e| bad_request(&e.to_string()))?;
    let build = upgrade::check_binary(&target)
        .await
        .map_err(|e| bad_request(&e.to_string()))?;
    upgrade::ask_checked(&node.upgrades, target, build.version, None).map_err(|_| {
        crate::error::error_reply(halley_proto::message::ErrorKind::Conflict, upgrade::BUSY)
    })?;
    Ok(PeerReply::Done)
}

/// What this daemon runs, for a coordinator waiting on it.
pub async fn binary(node: &Node) -> Result<PeerReply, ErrorReply> {
    let sha256 = node
        .upgrades
        .own_sha()
        .await
        .map_err(|e| internal(&e.to_string()))?;
    Ok(PeerReply::Binary {
        sha256,
        version: crate::VERSION.to_owned(),
        last_failure: node.upgrades.last_failure(),
    })
}

/// Copies the artifact to `to` (0755), checking its SHA-256 on the way, and removes older
/// shipped binaries but the one running.
fn install(from: &Path, to: &Path, sha256: [u8; 32]) -> crate::error::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    let part = to.with_extension("part");
    let mut source = std::fs::File::open(from).map_err(Error::io("cannot read", from))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(&part)
        .map_err(Error::io("cannot write", &part))?;
    let got = crate::store::releases::copy_hashing(&mut source, &mut out)
        .map_err(Error::io("cannot copy to", &part))?;
    out.sync_all().map_err(Error::io("cannot write", &part))?;
    if got != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Artifact(format!(
            "the binary changed in the store (SHA-256 {} instead of {}); send it again",
            halley_proto::hex::encode(&got),
            halley_proto::hex::encode(&sha256)
        )));
    }
    std::fs::rename(&part, to).map_err(Error::io("cannot rename to", to))?;
    let running = upgrade::own_binary();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path != to && path != running {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

fn names(list: &[NodeName]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn progress(cli: &mut Option<UnixStream>, line: String) {
    answer(cli, &Handover::Progress { line }).await;
}
