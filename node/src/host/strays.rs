//! Slot processes this node started but never recorded: a node that dies between spawning a
//! slot and saving its pid (or whose save failed) leaves one running, holding memory and a port,
//! that no record names. Every slot process carries its owner in its environment
//! (`HALLEY_NODE_ROOT`, `HALLEY_SERVICE`, `HALLEY_SLOT`), so a restarted node finds them.
//!
//! ## Guarantees
//! - Only process-group leaders whose environment names this node's data dir and the service
//!   are ever matched: a service's own children (same environment, same group) are reached
//!   through their leader's group, and other nodes' processes on the machine are never touched.
//! - A process whose environment cannot be read (another user's, without the rights) is left
//!   alone.
//!
//! Not guaranteed: a stray is stopped, not adopted (the slot engine restored from the record
//! does not know it started, so a fresh start is the consistent choice).

use std::path::Path;

use halley_proto::deploy::Color;
use halley_proto::spec::ServiceName;

use crate::host::process;

/// A slot process found by its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stray {
    /// Its pid (also its process group).
    pub pid: u32,
    /// Its start time, for signalling it safely.
    pub start_ticks: u64,
    /// The slot it was started in.
    pub slot: Color,
}

/// The slot processes of `service` that the node on `root` started, recorded or not.
pub fn find(root: &Path, service: &ServiceName) -> Vec<Stray> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let root = root.display().to_string();
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| group_leader(*pid))
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let var = |name: &str| {
                env.split(|b| *b == 0).find_map(|kv| {
                    kv.strip_prefix(name.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                })
            };
            if var("HALLEY_NODE_ROOT")? != root.as_bytes()
                || var("HALLEY_SERVICE")? != service.as_str().as_bytes()
            {
                return None;
            }
            let slot = match var("HALLEY_SLOT")? {
                b"blue" => Color::Blue,
                b"green" => Color::Green,
                _ => return None,
            };
            Some(Stray {
                pid,
                start_ticks: process::start_ticks(pid)?,
                slot,
            })
        })
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
