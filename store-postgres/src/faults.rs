//! Test-only switches (feature `testing`): lose an append's connection before its statement is
//! sent, or its reply after the statement committed, and run a hook before the store reads
//! back — so that the tests drive every branch of the resolution (`resolve.rs`) on a real
//! server.
//!
//! Invariant: exists only with the `testing` feature; a default build has none of it.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU32, Ordering};

/// The switches of one [`PgStore`](crate::PgStore) ([`PgStore::faults`](crate::PgStore::faults)).
#[derive(Default)]
pub struct Faults {
    /// The next this-many append statements (a resolution's retry included) are never sent:
    /// the connection is dropped and reported lost.
    pub lose_before_send: AtomicU32,
    /// The next this-many append statements that committed have their reply reported lost
    /// (the connection is dropped).
    pub lose_reply_after_commit: AtomicU32,
    /// Run once, after the next lost connection and before the store reads back (another
    /// writer's append, a server restart, ...).
    pub before_read_back: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("lose_before_send", &self.lose_before_send)
            .field("lose_reply_after_commit", &self.lose_reply_after_commit)
            .finish_non_exhaustive()
    }
}

impl Faults {
    pub(crate) fn take_lose_before(&self) -> bool {
        take(&self.lose_before_send)
    }

    pub(crate) fn take_lose_after(&self) -> bool {
        take(&self.lose_reply_after_commit)
    }

    pub(crate) fn run_before_read_back(&self) {
        let hook = self
            .before_read_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A connection failure the switches report.
pub(crate) fn simulated(what: &str) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("simulated: {what}"),
    ))
}
