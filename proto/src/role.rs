//! Roles carried in node certificates, and which role each message needs.
//!
//! A certificate from the cluster CA proves who the caller is (authentication); the role in it says
//! what the caller may do (authorisation). Every request is checked against [`Access`] for its code,
//! so that a certificate issued for one purpose cannot call everything (the lesson of Nomad's
//! CVE-2021-37218). What a request may touch (which service, which epoch, which file) is checked
//! again by the handler that serves it; the role is only the first gate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a certificate holder is.
///
/// The variants' order is their on-disk encoding: `Admin` is first because data dirs from before
/// roles recorded every node as the one full-member role, which is what an admin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A member that may coordinate rollouts, order peers (drain, state work), issue tokens and
    /// certificates, and hold the CA key.
    Admin,
    /// A read-only peer: may read state but not gossip or change anything. Reserved for operator
    /// tools that watch a cluster from outside; no command issues one yet.
    Observer,
    /// A member that runs services and entry points, gossips and answers an admin's steps, and
    /// orders nobody.
    Worker,
}

impl Role {
    /// The text form written into certificates (`OU=halley-role:<text>`) and typed by operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Observer => "observer",
            Role::Worker => "worker",
        }
    }

    /// Parses the text form. `node`, the one role of certificates issued before roles existed,
    /// reads as `admin`: those nodes could do everything an admin can.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "admin" | "node" => Ok(Role::Admin),
            "worker" => Ok(Role::Worker),
            "observer" => Ok(Role::Observer),
            other => Err(Error::Malformed(format!(
                "unknown role {other:?}; the roles are admin and worker"
            ))),
        }
    }

    /// Whether a holder of this role is a cluster member (gossips, runs services).
    pub fn is_member(self) -> bool {
        matches!(self, Role::Admin | Role::Worker)
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
    /// Any cluster member: an admin or a worker.
    Member,
    /// Only an admin.
    Admin,
    /// Never valid as a request on a mesh connection (replies, and admin messages that belong on
    /// the local unix socket only).
    Never,
}

impl Access {
    /// Whether a caller with `role` (`None`: no client certificate) passes.
    pub fn allows(self, role: Option<Role>) -> bool {
        match self {
            Access::Anyone => true,
            Access::Member => role.is_some_and(Role::is_member),
            Access::Admin => role == Some(Role::Admin),
            Access::Never => false,
        }
    }

    /// What a refused caller lacks, for the error it is sent.
    pub fn needs(self) -> &'static str {
        match self {
            Access::Anyone => "nothing",
            Access::Member => "a member certificate (admin or worker)",
            Access::Admin => "the admin role",
            Access::Never => "nothing: it is never a request on the mesh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_back_and_legacy_node_certificates_are_admins() {
        for role in [Role::Admin, Role::Worker, Role::Observer] {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert_eq!(Role::parse("node").unwrap(), Role::Admin);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn access_rules() {
        let (admin, worker, observer) =
            (Some(Role::Admin), Some(Role::Worker), Some(Role::Observer));
        assert!(Access::Admin.allows(admin));
        assert!(!Access::Admin.allows(worker));
        assert!(Access::Member.allows(worker) && Access::Member.allows(admin));
        assert!(!Access::Member.allows(observer) && !Access::Member.allows(None));
        assert!(Access::Anyone.allows(None));
        assert!(!Access::Never.allows(admin));
    }
}
