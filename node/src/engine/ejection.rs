//! Passive health of one instance as one entry point sees it: what its own requests to the
//! instance did, independent of gossip (which lags by a gossip round or more, and cannot see a
//! path that fails only from here).
//!
//! Pure: outcomes and `now` (monotonic milliseconds) in, ejection deadlines out.
//!
//! ## Rules
//! - A failed connect (a refused or timed-out connection, a mesh stream that could not be
//!   opened, a reset before the request was written) ejects the instance at once.
//! - [`BURST`] 5xx answers in a row eject it too; any other answer clears the count.
//! - An ejection lasts the back-off: [`FIRST_BACKOFF_MS`], doubled each time the instance is
//!   ejected again without a good answer in between, up to [`MAX_BACKOFF_MS`]. A good answer
//!   resets the back-off.
//! - When the ejection ends, the next request is the probe: a good answer readmits the instance,
//!   another failure ejects it for the doubled back-off.
//!
//! ## Non-goals
//! Choosing among instances ([`crate::engine::routing`] does, and falls back to ejected instances when no
//! other is left, so ejection never turns a working service off).

/// 5xx answers in a row that eject an instance.
pub const BURST: u32 = 5;
/// The first ejection's length.
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// The longest ejection.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// What one request to an instance did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500 (or a finished TCP connection).
    Good,
    /// A 5xx answer (the proxy's own 502/504 included).
    ServerError,
    /// Nothing reached the instance: refused, unreachable, reset before write.
    ConnectFailed,
}

impl Outcome {
    /// The outcome of an answer: a 5xx or not.
    pub fn of_answer(server_error: bool) -> Self {
        if server_error {
            Outcome::ServerError
        } else {
            Outcome::Good
        }
    }
}

/// One instance's passive health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    errors_in_row: u32,
    ejected_until: Option<u64>,
    backoff_ms: u64,
}

impl Default for Passive {
    fn default() -> Self {
        Self {
            errors_in_row: 0,
            ejected_until: None,
            backoff_ms: FIRST_BACKOFF_MS,
        }
    }
}

impl Passive {
    /// Whether the instance is out of rotation at `now`.
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// The end of the current ejection, if any.
    pub fn ejected_until(&self) -> Option<u64> {
        self.ejected_until
    }

    /// Records an outcome. Returns the new ejection deadline when this outcome ejected it.
    pub fn record(&mut self, outcome: Outcome, now: u64) -> Option<u64> {
        match outcome {
            Outcome::Good => {
                self.errors_in_row = 0;
                self.backoff_ms = FIRST_BACKOFF_MS;
                self.ejected_until = None;
                None
            }
            Outcome::ServerError => {
                self.errors_in_row += 1;
                (self.errors_in_row >= BURST).then(|| self.eject(now))
            }
            Outcome::ConnectFailed => Some(self.eject(now)),
        }
    }

    fn eject(&mut self, now: u64) -> u64 {
        // Requests already in flight when it was ejected may fail too; they do not lengthen it.
        if self.ejected(now) {
            return self.ejected_until.unwrap_or(now);
        }
        let until = now + self.backoff_ms;
        self.ejected_until = Some(until);
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
        self.errors_in_row = 0;
        until
    }
}
