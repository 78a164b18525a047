//! Which incoming QUIC connections the mesh lets start a handshake: a TLS handshake costs a
//! signature and a connection's state before the peer has proven anything, so strangers must not
//! be able to make a node do many of them.
//!
//! Pure: the source (any key; the mesh uses the peer's IP), whether QUIC has validated the
//! source address, how many handshakes are under way, and `now` (monotonic milliseconds) in; a
//! verdict out.
//!
//! ## Rules
//! - At [`Limits::max_in_flight`] handshakes under way, every new one is refused.
//! - From [`Limits::retry_above`] under way, a source whose address QUIC has not validated is
//!   sent a Retry first (a stateless round trip that proves the address is real, so a spoofed
//!   flood costs the node one packet each).
//! - Each source has a bucket of [`Limits::burst`] handshakes, refilled at
//!   [`Limits::per_second`]; a source with an empty bucket is sent a Retry if unvalidated (it
//!   may be spoofed) and refused once validated.
//! - At most [`Limits::max_sources`] buckets are kept; full ones are forgotten first, and an
//!   unknown source is sent a Retry while the table is full of sources still paying back.
//!
//! ## Non-goals
//! Which requests an admitted connection may send (the mesh's access rules decide), and how
//! many connections without a certificate may be open at once (the mesh caps that).

use std::collections::BTreeMap;

/// The verdict on one incoming connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go on with the handshake.
    Accept,
    /// Ask the client to prove its address first.
    Retry,
    /// Refuse the connection.
    Refuse,
}

/// The gate's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes under way at which every new one is refused.
    pub max_in_flight: usize,
    /// Handshakes under way from which unvalidated sources are sent a Retry.
    pub retry_above: usize,
    /// Handshakes a source may start at once after a quiet period.
    pub burst: u32,
    /// Handshakes a source regains per second.
    pub per_second: u32,
    /// Sources tracked at most.
    pub max_sources: usize,
}

impl Default for Limits {
    /// Generous for members (a whole cluster may sit behind one address, as on one test
    /// machine or behind NAT), tight for a flood.
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            retry_above: 16,
            burst: 64,
            per_second: 16,
            max_sources: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths of a handshake, as of `at`.
    milli: u64,
    at: u64,
}

/// The handshake gate.
#[derive(Debug, Clone)]
pub struct HandshakeGate<K> {
    limits: Limits,
    buckets: BTreeMap<K, Bucket>,
}

impl<K: Ord + Clone> HandshakeGate<K> {
    /// A gate with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: BTreeMap::new(),
        }
    }

    /// Decides on a connection from `source`; an accepted one takes a token from its bucket.
    pub fn admit(&mut self, source: &K, validated: bool, in_flight: usize, now: u64) -> Admit {
        if in_flight >= self.limits.max_in_flight {
            return Admit::Refuse;
        }
        if in_flight >= self.limits.retry_above && !validated {
            return Admit::Retry;
        }
        let full = u64::from(self.limits.burst) * 1000;
        if !self.buckets.contains_key(source) && !self.make_room(now) {
            return if validated {
                Admit::Refuse
            } else {
                Admit::Retry
            };
        }
        let per_second = u64::from(self.limits.per_second);
        let bucket = self.buckets.entry(source.clone()).or_insert(Bucket {
            milli: full,
            at: now,
        });
        let refill = now.saturating_sub(bucket.at).saturating_mul(per_second);
        bucket.milli = bucket.milli.saturating_add(refill).min(full);
        bucket.at = bucket.at.max(now);
        if bucket.milli < 1000 {
            return if validated {
                Admit::Refuse
            } else {
                Admit::Retry
            };
        }
        bucket.milli -= 1000;
        Admit::Accept
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Makes room for one more bucket by forgetting those refilled by `now`; false if every
    /// tracked source is still paying back.
    fn make_room(&mut self, now: u64) -> bool {
        if self.buckets.len() < self.limits.max_sources {
            return true;
        }
        let full = u64::from(self.limits.burst) * 1000;
        let per_second = u64::from(self.limits.per_second);
        self.buckets.retain(|_, b| {
            let refill = now.saturating_sub(b.at).saturating_mul(per_second);
            b.milli.saturating_add(refill) < full
        });
        self.buckets.len() < self.limits.max_sources
    }
}

#[cfg(test)]
mod tests {
    //! Scenario scripts in `node/tests/scenarios/handshakes/*.txt`. Commands: `limits IN_FLIGHT
    //! RETRY_ABOVE BURST PER_SECOND SOURCES` (a new gate), `at MS SOURCE valid|unvalid IN_FLIGHT
    //! [COUNT]` (COUNT connections, default 1, and their verdicts), `sources`.
    use super::*;

    fn run(script: &str) -> String {
        let mut gate = HandshakeGate::<String>::new(Limits::default());
        crate::scenario::replay(script, |words, out| match words {
            ["limits", f, r, b, p, s] => {
                gate = HandshakeGate::new(Limits {
                    max_in_flight: f.parse().unwrap(),
                    retry_above: r.parse().unwrap(),
                    burst: b.parse().unwrap(),
                    per_second: p.parse().unwrap(),
                    max_sources: s.parse().unwrap(),
                })
            }
            ["at", at, source, valid, in_flight, count @ ..] => {
                let count: usize = count.first().map_or(1, |c| c.parse().unwrap());
                let verdicts: Vec<String> = (0..count)
                    .map(|_| {
                        let verdict = gate.admit(
                            &source.to_string(),
                            *valid == "valid",
                            in_flight.parse().unwrap(),
                            at.parse().unwrap(),
                        );
                        format!("{verdict:?}").to_lowercase()
                    })
                    .collect();
                out.push_str(&format!("> {}\n", compress(&verdicts)));
            }
            ["sources"] => out.push_str(&format!("> {}\n", gate.sources())),
            other => panic!("unknown command {other:?}"),
        })
    }

    /// `accept accept refuse` as `accept x2, refuse`.
    fn compress(verdicts: &[String]) -> String {
        let mut runs: Vec<(String, usize)> = Vec::new();
        for v in verdicts {
            match runs.last_mut() {
                Some((last, n)) if last == v => *n += 1,
                _ => runs.push((v.clone(), 1)),
            }
        }
        runs.iter()
            .map(|(v, n)| match n {
                1 => v.clone(),
                n => format!("{v} x{n}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn scenarios() {
        crate::scenario::run_folder("handshakes", 1, run);
    }
}
