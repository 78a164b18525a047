//! Who holds a node drained. The node is draining while an operator asked for it (`drain`) or
//! while any rollout holds it for one of its services; each holder releases only its own hold.
//!
//! ## Guarantees
//! - A rollout's hold belongs to one service and one fencing token: a release by a lower token
//!   (a coordinator that lost the service) leaves a newer rollout's hold alone, and ending one
//!   service's hold never ends another service's or the operator's.
//! - A hold expires `ttl` after its last renewal (a step or watch of its service), so a
//!   coordinator that dies between draining a host and undraining it does not leave the host
//!   drained for good.
//! - Times are the caller's monotonic milliseconds; nothing here reads a clock.
//!
//! Not guaranteed: the operator's mark is not persisted here (the node keeps it in gossip).

use std::collections::BTreeMap;

use halley_proto::disk::FenceRecord;
use halley_proto::spec::ServiceName;

/// One rollout's hold on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    token: FenceRecord,
    renewed_ms: u64,
    ttl_ms: u64,
}

/// The holders of a node's drain.
#[derive(Debug, Clone, Default)]
pub struct Drains {
    manual: bool,
    holds: BTreeMap<ServiceName, Hold>,
}

impl Drains {
    /// The operator's `drain` (true) or `undrain` (false). `undrain` ends the operator's mark
    /// only: a rollout holding the node keeps it drained until its own release.
    pub fn set_manual(&mut self, on: bool) {
        self.manual = on;
    }

    /// A rollout for `service` with `token` holds the node from `now` for `ttl_ms` past each
    /// renewal. A lower token than the one holding is refused (false).
    pub fn hold(
        &mut self,
        service: &ServiceName,
        token: FenceRecord,
        now: u64,
        ttl_ms: u64,
    ) -> bool {
        if let Some(held) = self.holds.get(service)
            && token < held.token
        {
            return false;
        }
        self.holds.insert(
            service.clone(),
            Hold {
                token,
                renewed_ms: now,
                ttl_ms,
            },
        );
        true
    }

    /// Ends the hold of `service` if `token` is not below it; `None` ends it whoever holds it
    /// (the host finishing an orphaned deploy of that service by itself).
    pub fn release(&mut self, service: &ServiceName, token: Option<&FenceRecord>) -> bool {
        match (self.holds.get(service), token) {
            (Some(held), Some(t)) if *t < held.token => false,
            (Some(_), _) => {
                self.holds.remove(service);
                true
            }
            (None, _) => true,
        }
    }

    /// A coordinator reached `service` at `now`: its hold lives on.
    pub fn renew(&mut self, service: &ServiceName, now: u64) {
        if let Some(h) = self.holds.get_mut(service) {
            h.renewed_ms = h.renewed_ms.max(now);
        }
    }

    /// Drops the holds whose time ran out at `now`; returns their services.
    pub fn expire(&mut self, now: u64) -> Vec<ServiceName> {
        let gone: Vec<ServiceName> = self
            .holds
            .iter()
            .filter(|(_, h)| now >= h.renewed_ms.saturating_add(h.ttl_ms))
            .map(|(s, _)| s.clone())
            .collect();
        for s in &gone {
            self.holds.remove(s);
        }
        gone
    }

    /// Whether the node is drained (call [`Drains::expire`] first).
    pub fn draining(&self) -> bool {
        self.manual || !self.holds.is_empty()
    }

    /// Who holds the node, for logs and `status`: `operator` and `SERVICE (epoch E of NODE)`.
    pub fn holders(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .manual
            .then(|| "operator".to_owned())
            .into_iter()
            .collect();
        out.extend(self.holds.iter().map(|(s, h)| match &h.token.coordinator {
            Some(c) => format!("{s} (epoch {} of {c})", h.token.epoch),
            None => format!("{s} (epoch {})", h.token.epoch),
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/drain/*.txt`. Commands: `manual on|off`,
    //! `hold SERVICE EPOCH NODE AT TTL`, `release SERVICE [EPOCH NODE]` (no token: the host's own
    //! orphan decision), `renew SERVICE AT`, `at MS` (expires, then prints who holds the node).
    use halley_proto::NodeName;

    use super::*;

    fn token(epoch: &str, node: &str) -> FenceRecord {
        FenceRecord {
            epoch: epoch.parse().unwrap(),
            coordinator: Some(NodeName::parse(node).unwrap()),
        }
    }

    fn run(script: &str) -> String {
        let mut d = Drains::default();
        let svc = |s: &str| ServiceName::parse(s).unwrap();
        crate::scenario::replay(script, |words, out| match words {
            ["manual", on] => d.set_manual(*on == "on"),
            ["hold", s, e, n, at, ttl] => {
                if !d.hold(
                    &svc(s),
                    token(e, n),
                    at.parse().unwrap(),
                    ttl.parse().unwrap(),
                ) {
                    out.push_str("> refused: a newer rollout holds it\n");
                }
            }
            ["release", s, rest @ ..] => {
                let t = (rest.len() == 2).then(|| token(rest[0], rest[1]));
                if !d.release(&svc(s), t.as_ref()) {
                    out.push_str("> refused: a newer rollout holds it\n");
                }
            }
            ["renew", s, at] => d.renew(&svc(s), at.parse().unwrap()),
            ["at", ms] => {
                for s in d.expire(ms.parse().unwrap()) {
                    out.push_str(&format!("> expired: {s}\n"));
                }
                out.push_str(&match d.draining() {
                    true => format!("> draining: {}\n", d.holders().join(", ")),
                    false => "> serving\n".to_owned(),
                });
            }
            other => panic!("unknown command {other:?}"),
        })
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("drain", 1, run);
    }
}
