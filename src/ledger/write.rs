//! The single write path: every event passes the fold, is appended durably, then handed to the
//! index applier.
//!
//! Invariants:
//! - the caller holds the key's lock; the fold accepts every event before any byte is written;
//! - the events reach the index overlay only after the journal sync covering them, and before
//!   the key's lock is released (`index/live.rs` keeps the rest: journal order, the watermark,
//!   fail-stop);
//! - an attempt that becomes unknown starts its monotonic wait here, in this process.

use crate::error::Result;
use crate::index::{IndexEntry, KeyUpdate, Listing, StoredEvent};
use crate::journal::codec::encode_event;
use crate::limits::UNKNOWN_WAITS_MAX;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference, Sequence, UnixMillis};
use crate::model::{Event, EventKind};
use crate::model::{PaymentState, Phase, apply};

use super::{Ledger, UnknownWait};
use crate::sync::lock;

impl Ledger {
    /// Checks `events` against the fold, appends them atomically, then hands them to the
    /// index applier (the overlay shows them at once). The caller holds the key's lock.
    pub(super) fn write_events(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
    ) -> Result<IndexEntry> {
        self.writable()?;
        // Room in the index backlog is taken before appending: a writer waiting for it holds no
        // sequence the applier needs.
        self.inner.index.reserve()?;
        let mut state = before.map_or_else(|| PaymentState::new(key.clone()), |b| b.state.clone());
        for event in &events {
            state = apply(&state, event)?;
        }
        let payloads = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>>>()?;
        let last_at = events.last().map_or(UnixMillis(0), |e| e.at);
        let next_query_at = self
            .inner
            .config
            .reconcile
            .next_query_at(key, &state.phase, last_at);
        let new_references: Vec<ProviderReference> =
            events.iter().filter_map(started_reference).collect();
        let appended = self.inner.journal.append_chained(payloads)?;
        // Nothing between the append and the submit may fail: the applier needs every sequence.
        let (first, last) = (*appended.sequences.start(), *appended.sequences.end());
        let mut stored = before.map_or_else(Vec::new, |b| b.events.clone());
        stored.extend(
            (first.0..=last.0)
                .map(Sequence)
                .zip(appended.positions.iter().copied())
                .map(|(sequence, position)| StoredEvent { sequence, position }),
        );
        let after = IndexEntry {
            state,
            last_sequence: last,
            next_query_at,
            events: stored,
        };
        let update = KeyUpdate {
            key: key.clone(),
            before: before.map(Listing::of),
            after: after.clone(),
            new_references,
        };
        self.inner
            .index
            .submit(update, first, last, appended.chain_head);
        debug_assert_eq!(last.0 - first.0 + 1, events.len() as u64);
        debug_assert_eq!(appended.positions.len(), events.len());
        self.watch_unknown(key, &after.state.phase);
        Ok(after)
    }

    /// Starts (or ends) the monotonic wait of `key`'s unknown attempt: from the moment it
    /// became unknown in this process, on top of what earlier processes recorded.
    fn watch_unknown(&self, key: &IdempotencyKey, phase: &Phase) {
        match phase {
            Phase::Unknown {
                attempt, waited_ms, ..
            } => {
                self.unknown_wait(key, *attempt, *waited_ms);
            }
            _ => {
                lock(&self.inner.unknown_since).remove(key);
            }
        }
    }

    /// The wait of `key`'s unknown `attempt`, starting to watch it now (on top of `before_ms`
    /// recorded by earlier processes) if this process was not watching it yet. `None` when too
    /// many waits are tracked: the attempt is then never trusted "not found" until there is
    /// room, which is safe.
    pub(super) fn unknown_wait(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        before_ms: u64,
    ) -> Option<UnknownWait> {
        let mut waits = lock(&self.inner.unknown_since);
        if let Some(wait) = waits.get(key)
            && wait.attempt == attempt
        {
            return Some(*wait);
        }
        if waits.len() >= UNKNOWN_WAITS_MAX && !waits.contains_key(key) {
            return None;
        }
        let wait = UnknownWait {
            attempt,
            before_ms,
            since: self.monotonic_now(),
        };
        waits.insert(key.clone(), wait);
        Some(wait)
    }

    /// The last journal sequence the index reflects.
    ///
    /// # Errors
    /// Index errors.
    pub fn index_watermark(&self) -> Result<Sequence> {
        Ok(self.inner.index.watermark().sequence)
    }

    /// Waits until the index reflects every event durable now. Nothing needs this for
    /// correctness (the gate reads the overlay); it is for tests, simulations and tools that
    /// read the index's lists (`list`, `counts`, the reconciler's schedule) and want them
    /// current.
    ///
    /// # Errors
    /// [`crate::Error::IndexFailed`] if applying fails first.
    pub fn wait_indexed(&self) -> Result<()> {
        self.inner
            .index
            .wait_applied(self.inner.journal.last_sequence())
    }
}

/// The provider reference an `AttemptStarted` event issues.
pub(super) fn started_reference(event: &Event) -> Option<ProviderReference> {
    match &event.kind {
        EventKind::AttemptStarted {
            provider_reference, ..
        } => Some(provider_reference.clone()),
        _ => None,
    }
}
