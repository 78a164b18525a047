//! The keys each node publishes in gossip, and how their values are written and parsed.
//!
//! chitchat already carries the node's name (its node id), generation and gossip address in its
//! `ChitchatId`; these keys add the rest. Values are short text (chitchat values are strings) and
//! never carry secrets. Only the owning node writes its keys.

use crate::Error;

/// halley-node version string, e.g. `0.1.0`.
pub const KEY_VERSION: &str = "version";
/// The role in the node's certificate.
pub const KEY_ROLE: &str = "role";
/// `true` while the node asks not to be sent new work.
pub const KEY_DRAINING: &str = "draining";
/// When the daemon started, unix milliseconds.
pub const KEY_STARTED_MS: &str = "started_ms";
/// `true` on the node that holds the cluster CA key and so can sign joins.
pub const KEY_CA_HOLDER: &str = "ca_holder";
/// Present (value `true`) once the node has left gracefully.
pub const KEY_LEFT: &str = "left";
/// The nodes an admin removed from the cluster, comma-separated (counted only from admins).
pub const KEY_REMOVED: &str = "removed";

/// Formats a boolean flag value.
pub fn flag(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// Parses a boolean flag value (absent means false).
pub fn parse_flag(key: &str, value: Option<&str>) -> Result<bool, Error> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(bad(key, other)),
    }
}

/// Parses a unix-milliseconds value.
pub fn parse_millis(key: &str, value: &str) -> Result<u64, Error> {
    value.parse().map_err(|_| bad(key, value))
}

fn bad(key: &str, value: &str) -> Error {
    Error::BadGossipValue {
        key: key.to_owned(),
        value: value.chars().take(64).collect(),
    }
}

/// `rollout:NAME` holds the coordinator's newest rollout state of a service
/// (`halley_proto::rollout::RolloutState::to_gossip`).
pub const ROLLOUT_KEY_PREFIX: &str = "rollout:";
/// `hist:NAME` holds the last rollouts of a service this node coordinated, one
/// `HistoryEntry::to_line` a line.
pub const HISTORY_KEY_PREFIX: &str = "hist:";

/// Prefix of the per-service keys: `svc:NAME` holds a [`ServiceSummary`].
pub const SERVICE_KEY_PREFIX: &str = "svc:";

/// What a node publishes about one service it runs: enough for peers to route and for a rollout
/// coordinator to watch regression signals. Never carries env or secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    /// The version the active slot runs (`-` if none).
    pub version: String,
    /// The active slot (`-` if none).
    pub slot: String,
    /// The active slot's health.
    pub health: String,
    /// Crash restarts of the active slot.
    pub restarts: u32,
    /// Requests per second over the last window, times 1000.
    pub rate_milli: u64,
    /// 5xx per 10,000 requests over the last window.
    pub errors_bp: u64,
    /// p99 latency over the last window, microseconds.
    pub p99_us: u64,
}

impl ServiceSummary {
    /// `v=1.2;slot=blue;health=healthy;restarts=0;rate=12000;err=0;p99=850`.
    pub fn format(&self) -> String {
        format!(
            "v={};slot={};health={};restarts={};rate={};err={};p99={}",
            self.version,
            self.slot,
            self.health,
            self.restarts,
            self.rate_milli,
            self.errors_bp,
            self.p99_us
        )
    }

    /// Parses [`ServiceSummary::format`] text.
    pub fn parse(key: &str, value: &str) -> Result<Self, Error> {
        let mut out = ServiceSummary {
            version: String::new(),
            slot: String::new(),
            health: String::new(),
            restarts: 0,
            rate_milli: 0,
            errors_bp: 0,
            p99_us: 0,
        };
        for part in value.split(';') {
            let (k, v) = part.split_once('=').ok_or_else(|| bad(key, value))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad(key, value));
            match k {
                "v" => out.version = v.to_owned(),
                "slot" => out.slot = v.to_owned(),
                "health" => out.health = v.to_owned(),
                "restarts" => out.restarts = u32::try_from(num(v)?).unwrap_or(u32::MAX),
                "rate" => out.rate_milli = num(v)?,
                "err" => out.errors_bp = num(v)?,
                "p99" => out.p99_us = num(v)?,
                // Newer nodes may add fields; older ones skip them.
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_round_trips() {
        let s = ServiceSummary {
            version: "1.2".into(),
            slot: "blue".into(),
            health: "healthy".into(),
            restarts: 2,
            rate_milli: 12_000,
            errors_bp: 15,
            p99_us: 850,
        };
        assert_eq!(ServiceSummary::parse("svc:web", &s.format()), Ok(s));
        assert!(ServiceSummary::parse("svc:web", "garbage").is_err());
    }
}
