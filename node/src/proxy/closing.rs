//! An entry point's open client connections, and the signal that this process is handing its
//! entry points over to another (`upgrade`) and must finish what it has.
//!
//! ## Guarantees
//! - Once [`Connections::close`] is called, every HTTP answer carries `Connection: close`, so a
//!   keep-alive client opens its next connection (to whichever process accepts it now) instead
//!   of finding its connection closed under a request it just sent.
//! - [`Connections::drained`] returns when no connection is left, or at its deadline.
//!
//! ## Non-goals
//! Nothing here stops a connection: one still open at the deadline ends with the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The open client connections of one entry point.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    /// Read by every answer: a load, not the watch's lock.
    closing_now: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            closing_now: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// Counts a connection while the returned guard lives.
    pub fn track(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether this process is finishing its connections.
    pub fn closing(&self) -> bool {
        self.closing_now.load(Ordering::Acquire)
    }

    /// Resolves once [`close`](Self::close) was called (at once if it was already).
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// From now on answers end their connection.
    pub fn close(&self) {
        self.closing_now.store(true, Ordering::Release);
        self.closing.send_replace(true);
    }

    /// Waits until no connection is open or `deadline` has passed; returns how many are left.
    pub async fn drained(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let open = self.open();
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_the_last_connection_and_closed_sees_an_earlier_close() {
        let c = Arc::new(Connections::default());
        let open = c.track();
        assert_eq!(c.open(), 1);
        c.close();
        c.closed().await;
        assert!(c.closing());
        assert_eq!(c.drained(Duration::from_millis(50)).await, 1);
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.drained(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(open);
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
