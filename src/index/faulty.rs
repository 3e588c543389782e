//! Test-only faults of the index (feature `testing`): an index whose applies fail after a
//! number of batches, or wait while paused, so that tests can show fail-stop and back-pressure
//! of the applier on the real ledger.
//!
//! Invariant: exists only with the `testing` feature; a default build has no way to reach it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, UnixMillis};
use crate::sync::lock;

use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate};

#[derive(Debug, Default)]
struct State {
    /// Applies that succeed before every later one fails; `u64::MAX` means never fail.
    fail_after: AtomicU64,
    applied: AtomicU64,
    paused: Mutex<bool>,
    resumed: Condvar,
    /// Applies waiting while paused.
    waiting: AtomicU64,
    failing: AtomicBool,
    /// Reads of a key's entry that fail before reads succeed again.
    failing_gets: AtomicU64,
    /// A key whose next read panics.
    panicking_get: Mutex<Option<IdempotencyKey>>,
}

/// A handle on the faults of a ledger's index (feature `testing`): set it in
/// `LedgerConfig::index_faults`, then steer the applier from the test.
#[derive(Clone, Debug)]
pub struct IndexFaults(Arc<State>);

impl Default for IndexFaults {
    fn default() -> Self {
        let state = State::default();
        state.fail_after.store(u64::MAX, Ordering::SeqCst);
        Self(Arc::new(state))
    }
}

impl IndexFaults {
    /// Every apply after the next `applies` fails with an I/O error.
    pub fn fail_after(&self, applies: u64) {
        let done = self.0.applied.load(Ordering::SeqCst);
        self.0.fail_after.store(done + applies, Ordering::SeqCst);
    }

    /// The next `reads` reads of a key's entry from the index fail with an I/O error (a
    /// transient read error: the ledger goes on).
    pub fn fail_next_gets(&self, reads: u64) {
        self.0.failing_gets.store(reads, Ordering::SeqCst);
    }

    /// The next read of `key`'s entry panics (as a tracing subscriber or a metrics recorder
    /// of the application might, in the middle of a call).
    pub fn panic_on_next_get_of(&self, key: &IdempotencyKey) {
        *lock(&self.0.panicking_get) = Some(key.clone());
    }

    /// Applies wait until [`IndexFaults::resume`].
    pub fn pause(&self) {
        *lock(&self.0.paused) = true;
    }

    /// Lets waiting applies proceed.
    pub fn resume(&self) {
        *lock(&self.0.paused) = false;
        self.0.resumed.notify_all();
    }

    /// Batches applied so far.
    pub fn applied(&self) -> u64 {
        self.0.applied.load(Ordering::SeqCst)
    }

    /// Applies waiting, paused, right now.
    pub fn waiting(&self) -> u64 {
        self.0.waiting.load(Ordering::SeqCst)
    }
}

/// An index that obeys [`IndexFaults`].
#[derive(Debug)]
pub(crate) struct FaultyIndex {
    base: Box<dyn KeyIndex>,
    faults: IndexFaults,
}

impl FaultyIndex {
    pub fn new(base: Box<dyn KeyIndex>, faults: IndexFaults) -> Self {
        Self { base, faults }
    }
}

impl KeyIndex for FaultyIndex {
    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()> {
        let state = &self.faults.0;
        let mut paused = lock(&state.paused);
        if *paused {
            state.waiting.fetch_add(1, Ordering::SeqCst);
            while *paused {
                paused = state
                    .resumed
                    .wait(paused)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            state.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(paused);
        if state.failing.load(Ordering::SeqCst)
            || state.applied.load(Ordering::SeqCst) >= state.fail_after.load(Ordering::SeqCst)
        {
            state.failing.store(true, Ordering::SeqCst);
            return Err(Error::io(
                "writing the index",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        self.base.apply(updates, watermark)?;
        state.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        let panicking = {
            let mut panicking = lock(&self.faults.0.panicking_get);
            panicking
                .as_ref()
                .is_some_and(|k| k == key)
                .then(|| panicking.take())
        };
        assert!(panicking.is_none(), "a read of {key} panics (IndexFaults)");
        let failing =
            self.faults
                .0
                .failing_gets
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::io(
                "reading the index",
                std::io::Error::from(std::io::ErrorKind::Other),
            ));
        }
        self.base.get(key)
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        self.base.list(phase, after, limit)
    }

    fn count(&self, phase: PhaseKind) -> usize {
        self.base.count(phase)
    }

    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.base.due(now, limit)
    }

    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.base.key_for_reference(reference)
    }

    fn watermark(&self) -> Result<IndexWatermark> {
        self.base.watermark()
    }

    fn clear(&self) -> Result<()> {
        self.base.clear()
    }

    fn flush(&self) -> Result<()> {
        self.base.flush()
    }
}
