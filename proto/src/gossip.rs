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
