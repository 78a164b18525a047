//! Roles carried in node certificates, and which role each message needs.
//!
//! A certificate from the cluster CA proves who the caller is (authentication); the role in it says
//! what the caller may do (authorisation). Every request is checked against [`Access`] for its code,
//! so that a certificate issued for one purpose cannot call everything (the lesson of Nomad's
//! CVE-2021-37218).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a certificate holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A full cluster member: gossips, serves and calls node RPCs.
    Node,
    /// A read-only peer: may read state but not gossip or change anything. Reserved for operator
    /// tools that watch a cluster from outside; no command issues one yet.
    Observer,
}

impl Role {
    /// The text form written into certificates (`OU=halley-role:<text>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Observer => "observer",
        }
    }

    /// Parses the certificate text form.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "node" => Ok(Role::Node),
            "observer" => Ok(Role::Observer),
            other => Err(Error::Malformed(format!("unknown role {other:?}"))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may send a given message on a mesh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who completed the TLS handshake, even without a client certificate. Only the join
    /// request, whose token secret is its credential.
    Anyone,
    /// Only a caller whose certificate carries this role.
    Role(Role),
    /// Never valid as a request on a mesh connection (replies, and admin messages that belong on
    /// the local unix socket only).
    Never,
}

impl Access {
    /// Whether a caller with `role` (`None`: no client certificate) passes.
    pub fn allows(self, role: Option<Role>) -> bool {
        match self {
            Access::Anyone => true,
            Access::Role(needed) => role == Some(needed),
            Access::Never => false,
        }
    }
}
