//! Who holds a node drained. The node is draining while an operator asked for it (`drain`) or
//! while any rollout holds it for one of its services; each holder releases only its own hold.
//!
//! ## Guarantees
//! - A rollout's hold belongs to one service and one fencing token: a release by a lower token
//!   (a coordinator that lost the service) leaves a newer rollout's hold alone, and ending one
//!   service's hold never ends another service's or the operator's.
//! - A hold expires `ttl` after its last renewal (a step of its service the host obeyed with the
//!   hold's token), so a coordinator that dies between draining a host and undraining it does not
//!   leave the host drained for good. A step obeyed with a higher token ends the hold: its owner
//!   has lost the service.
//! - The host finishing an orphaned deploy ends only holds of epochs it has obeyed, never the
//!   hold of a newer coordinator that has drained the host but not stepped it yet.
//! - Times are the caller's monotonic milliseconds; nothing here reads a clock.
//!
//! Not guaranteed: the operator's drain is not persisted; it ends when the node restarts.

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

    /// Ends the hold of `service` if `token` is not below it (false: a newer rollout holds it).
    pub fn release(&mut self, service: &ServiceName, token: &FenceRecord) -> bool {
        match self.holds.get(service) {
            Some(held) if *token < held.token => false,
            Some(_) => {
                self.holds.remove(service);
                true
            }
            None => true,
        }
    }

    /// The host finished an orphaned deploy of `service` by itself, having obeyed up to
    /// `epoch`: holds of those epochs end; a newer coordinator's hold stays.
    pub fn release_orphan(&mut self, service: &ServiceName, epoch: u64) {
        if self
            .holds
            .get(service)
            .is_some_and(|h| h.token.epoch <= epoch)
        {
            self.holds.remove(service);
        }
    }

    /// The host obeyed a step of `service` with `token` at `now`: a hold with that token lives
    /// on; a lower one ends (its coordinator has lost the service).
    pub fn stepped(&mut self, service: &ServiceName, token: &FenceRecord, now: u64) {
        match self.holds.get_mut(service) {
            Some(h) if h.token == *token => h.renewed_ms = h.renewed_ms.max(now),
            Some(h) if h.token < *token => {
                self.holds.remove(service);
            }
            _ => {}
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
    //! `hold SERVICE EPOCH NODE AT TTL`, `release SERVICE EPOCH NODE`, `orphan SERVICE EPOCH`
    //! (the host finished an orphaned deploy, having obeyed up to EPOCH), `step SERVICE EPOCH
    //! NODE AT` (the host obeyed a step), `at MS` (expires, then prints who holds the node).
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
            ["release", s, e, n] => {
                if !d.release(&svc(s), &token(e, n)) {
                    out.push_str("> refused: a newer rollout holds it\n");
                }
            }
            ["orphan", s, e] => d.release_orphan(&svc(s), e.parse().unwrap()),
            ["step", s, e, n, at] => d.stepped(&svc(s), &token(e, n), at.parse().unwrap()),
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
