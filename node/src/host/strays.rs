//! Slot processes this node started but never recorded: a node that dies between spawning a
//! slot and saving its pid (or whose save failed) leaves one running, holding memory and a port,
//! that no record names. Each launch is written ahead as an intent, `services/NAME/SLOT.launch`
//! (a random launch id, fsynced before the spawn), and the slot process carries that id in its
//! environment (`HALLEY_LAUNCH`), so a restarted node can tell whether its newest launch of a
//! slot was recorded, and stop it if not.
//!
//! ## Guarantees
//! - Only process-group leaders carrying the slot's newest launch id are ever stopped, and only
//!   when the recorded process of that slot does not carry it (the launch was never recorded).
//!   Checks and hooks do not carry the id; a recorded slot's own children (its id) are left
//!   alone with it; other launches, nodes and services have other ids.
//! - A process whose environment cannot be read (another user's, without the rights) is left
//!   alone.
//!
//! Not guaranteed: a stray is stopped, not adopted (the slot engine restored from the record
//! does not know it started, so a fresh start is the consistent choice).

use halley_proto::deploy::Color;
use halley_proto::spec::ServiceName;
use tracing::warn;

use crate::host::process;
use crate::store::datadir::DataDir;

/// The environment variable that carries a slot process's launch id.
pub const LAUNCH_VAR: &str = "HALLEY_LAUNCH";

/// Where the intent of a slot's newest launch is written.
pub fn intent_name(service: &ServiceName, slot: Color) -> String {
    format!("services/{service}/{slot}.launch")
}

/// Writes the intent of a launch (before the spawn) and returns its id.
pub fn intend(data_dir: &DataDir, service: &ServiceName, slot: Color) -> crate::Result<String> {
    let id = halley_proto::hex::encode(&crate::random::bytes::<16>()?);
    data_dir.write_file(&intent_name(service, slot), id.as_bytes(), 0o600)?;
    Ok(id)
}

/// Stops the slot's newest launch if it was never recorded: `recorded` is the pid the service
/// record names for the slot (if it still runs).
pub fn stop_unrecorded(
    data_dir: &DataDir,
    service: &ServiceName,
    slot: Color,
    recorded: Option<u32>,
) {
    let Ok(bytes) = data_dir.read_file(&intent_name(service, slot)) else {
        return;
    };
    let id = String::from_utf8_lossy(&bytes).trim().to_owned();
    if id.is_empty() || recorded.is_some_and(|pid| launch_of(pid).as_deref() == Some(id.as_str())) {
        return;
    }
    for pid in leaders_with(&id) {
        let Some(ticks) = process::start_ticks(pid) else {
            continue;
        };
        warn!(%service, %slot, pid, "this node started a slot process but never recorded it (it stopped before saving it); stopping it");
        process::kill_group(pid, ticks);
    }
}

/// The launch id in a process's environment.
fn launch_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        kv.strip_prefix(LAUNCH_VAR.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Process-group leaders whose launch id is `id`.
fn leaders_with(id: &str) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| group_leader(*pid) && launch_of(*pid).as_deref() == Some(id))
        .collect()
}

/// Whether `pid` leads its own process group (slot processes are started so).
fn group_leader(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the parenthesised command: state, ppid, pgrp, ...
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|after| after.split_whitespace().nth(2))
        .and_then(|pgrp| pgrp.parse::<u32>().ok())
        == Some(pid)
}
