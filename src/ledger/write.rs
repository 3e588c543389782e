//! The single write path: every event passes the fold, is appended durably, then handed to the
//! index applier.
//!
//! Invariants:
//! - the caller holds the key's lock; the fold accepts every event before any byte is written;
//! - the events reach the index overlay only after the journal sync covering them, and before
//!   the key's lock is released (`index/live.rs` keeps the rest: journal order, the watermark,
//!   fail-stop);
//! - an attempt that becomes unknown starts its monotonic wait here, in this process.

use crate::error::{Error, Result};
use crate::index::{IndexEntry, KeyUpdate, Listing, Room, StoredEvent};
use crate::journal::codec::encode_event;
use crate::limits::UNKNOWN_WAITS_MAX;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference, Sequence, UnixMillis};
use crate::model::{Event, EventKind, OperationStep};
use crate::model::{PaymentState, Phase, apply};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Ledger, Track, UnknownWait};
use crate::sync::lock;

/// Events checked and queued for appending, not yet durable: what [`Ledger::finish_events`]
/// needs to finish the write.
#[derive(Debug)]
pub(crate) struct StagedWrite {
    /// The journal's id of the append.
    append: u64,
    key: IdempotencyKey,
    /// The key's listing before the write (what the index removes).
    before: Option<Listing>,
    /// The positions of the key's events before the write.
    stored: Vec<StoredEvent>,
    state: PaymentState,
    next_query_at: Option<UnixMillis>,
    new_references: Vec<ProviderReference>,
    events: Vec<Event>,
}

/// The positions of the key's events before the write, with room for the `new` ones.
fn stored_with_room(before: Option<&IndexEntry>, new: usize) -> Vec<StoredEvent> {
    let earlier = before.map_or(&[][..], |b| &b.events);
    let mut stored = Vec::with_capacity(earlier.len() + new);
    stored.extend_from_slice(earlier);
    stored
}

/// How often a wait for the index looks at whether the journal stopped.
const STOPPED_JOURNAL_CHECK: Duration = Duration::from_millis(100);

impl Ledger {
    /// Checks `events` against the fold, appends them atomically, then hands them to the
    /// index applier (the overlay shows them at once). The caller holds the key's lock.
    pub(super) fn write_events(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
    ) -> Result<Arc<IndexEntry>> {
        let staged = self.stage_events(key, before, events, Room::Wait)?;
        self.finish_events(staged)
    }

    /// The first half of [`Ledger::write_events`]: checks `events` against the fold and queues
    /// their append without waiting for it. The caller holds the key's lock until
    /// [`Ledger::finish_events`] has returned, and calls it before anything else can fail: the
    /// applier needs every sequence.
    pub(super) fn stage_events(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
        room: Room,
    ) -> Result<StagedWrite> {
        self.writable()?;
        // Room in the index backlog is taken before appending: a writer waiting for it holds no
        // sequence the applier needs (a batch holding some does not wait: `room`).
        self.inner.index.reserve(room)?;
        // The fold reads the state before and makes the next one: no copy of the state before.
        let fresh;
        let start = match before {
            Some(before) => &before.state,
            None => {
                fresh = PaymentState::new(key.clone());
                &fresh
            }
        };
        let mut folded = None;
        for event in &events {
            folded = Some(apply(folded.as_ref().unwrap_or(start), event)?);
        }
        let state = folded.unwrap_or_else(|| start.clone());
        let payloads = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>>>()?;
        let last_at = events.last().map_or(UnixMillis(0), |e| e.at);
        let next_query_at = self
            .inner
            .config
            .reconcile
            .next_query_at_state(&state, last_at);
        let new_references: Vec<ProviderReference> =
            events.iter().filter_map(started_reference).collect();
        let append = self.inner.journal.submit(payloads)?;
        Ok(StagedWrite {
            append,
            key: key.clone(),
            before: before.map(Listing::of),
            stored: stored_with_room(before, events.len()),
            state,
            next_query_at,
            new_references,
            events,
        })
    }

    /// The second half of [`Ledger::write_events`]: waits until the append is durable, then
    /// hands it to the index applier. The key's lock is still held.
    pub(super) fn finish_events(&self, staged: StagedWrite) -> Result<Arc<IndexEntry>> {
        let StagedWrite {
            append,
            key,
            before,
            mut stored,
            state,
            next_query_at,
            new_references,
            events,
        } = staged;
        let appended = self.inner.journal.wait_appended(append)?;
        // Nothing between the append and the submit may fail: the applier needs every sequence.
        let (first, last) = (*appended.sequences.start(), *appended.sequences.end());
        stored.extend(
            (first.0..=last.0)
                .map(Sequence)
                .zip(appended.positions.iter().copied())
                .map(|(sequence, position)| StoredEvent { sequence, position }),
        );
        let after = Arc::new(IndexEntry {
            state,
            last_sequence: last,
            next_query_at,
            events: stored,
        });
        let update = KeyUpdate {
            key,
            before,
            after: Arc::clone(&after),
            new_references,
        };
        self.inner
            .index
            .submit(update, first, last, appended.chain_head);
        debug_assert_eq!(last.0 - first.0 + 1, events.len() as u64);
        debug_assert_eq!(appended.positions.len(), events.len());
        self.watch_unknown(&after.state);
        crate::telemetry::events_written(&after.state, &events);
        Ok(after)
    }

    /// Starts (or ends) the monotonic waits of `state`'s unknown attempts, its primary's and its
    /// operations': from the moment each became unknown in this process, on top of what earlier
    /// processes recorded.
    pub(super) fn watch_unknown(&self, state: &PaymentState) {
        self.watch_track(&state.key, Track::Primary, &state.phase);
        for operation in &state.operations {
            self.watch_track(
                &state.key,
                Track::Operation(operation.ordinal),
                &operation.phase,
            );
        }
    }

    fn watch_track(&self, key: &IdempotencyKey, track: Track, phase: &Phase) {
        match phase {
            Phase::Unknown {
                attempt, waited_ms, ..
            } => {
                self.unknown_wait(key, track, *attempt, *waited_ms);
            }
            _ => {
                // Nothing to end while this process watches no wait (a wait is only started by
                // a write or a read of the same key's unknown attempt, which holds its lock, or
                // while the ledger opens, before any write).
                if self.inner.unknown_watched.load(Ordering::Acquire) == 0 {
                    return;
                }
                let mut waits = lock(&self.inner.unknown_since);
                waits.remove(&(key.clone(), track));
                self.inner
                    .unknown_watched
                    .store(waits.len(), Ordering::Release);
            }
        }
    }

    /// The wait of `key`'s unknown `attempt` on `track`, starting to watch it now (on top of
    /// `before_ms` recorded by earlier processes) if this process was not watching it yet. `None`
    /// when too many waits are tracked: the attempt is then never trusted "not found" until
    /// there is room, which is safe.
    pub(super) fn unknown_wait(
        &self,
        key: &IdempotencyKey,
        track: Track,
        attempt: AttemptNumber,
        before_ms: u64,
    ) -> Option<UnknownWait> {
        let mut waits = lock(&self.inner.unknown_since);
        let id = (key.clone(), track);
        if let Some(wait) = waits.get(&id)
            && wait.attempt == attempt
        {
            return Some(*wait);
        }
        if waits.len() >= UNKNOWN_WAITS_MAX && !waits.contains_key(&id) {
            return None;
        }
        let wait = UnknownWait {
            attempt,
            before_ms,
            since: self.monotonic_now(),
        };
        waits.insert(id, wait);
        self.inner
            .unknown_watched
            .store(waits.len(), Ordering::Release);
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
    /// [`crate::Error::IndexFailed`] if applying fails first; [`crate::Error::Poisoned`] if the
    /// journal stopped and the index does not reach its end: a commit that failed after part
    /// of it was synced (a roll-over that failed mid-batch) leaves durable records whose writers
    /// were told they failed, and nobody hands those to the index.
    pub fn wait_indexed(&self) -> Result<()> {
        let target = self.inner.journal.last_sequence();
        loop {
            if self
                .inner
                .index
                .wait_applied_for(target, STOPPED_JOURNAL_CHECK)
            {
                return Ok(());
            }
            if let Some(cause) = self.inner.index.failure() {
                return Err(Error::IndexFailed { cause });
            }
            if let Some(cause) = self.inner.journal.stopped() {
                // Commits handed over before the stop are applied within this wait; what the
                // index still lacks after it was written by a commit whose writers were told
                // it failed, and nobody will hand it over.
                if self
                    .inner
                    .index
                    .wait_applied_for(target, STOPPED_JOURNAL_CHECK)
                {
                    return Ok(());
                }
                return Err(Error::Poisoned { cause });
            }
        }
    }
}

/// The provider reference an attempt's start issues (of the key's charge or of an operation).
pub(super) fn started_reference(event: &Event) -> Option<ProviderReference> {
    match &event.kind {
        EventKind::AttemptStarted {
            provider_reference, ..
        }
        | EventKind::OperationStepped {
            step:
                OperationStep::AttemptStarted {
                    provider_reference, ..
                },
            ..
        } => Some(provider_reference.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::{Begin, Ledger, LedgerConfig};
    use crate::model::tests::intent;
    use crate::model::{
        AttemptNumber, IdempotencyKey, Note, Operator, Outcome, Phase, Resolution, TransactionId,
        UnknownReason,
    };
    use crate::sync::lock;
    use std::sync::atomic::Ordering;

    /// The count a write reads to skip the waits' lock follows the waits: one while an attempt
    /// is unknown, none once it is settled (a count left at zero with a wait in the map would
    /// leave that wait behind for good).
    #[test]
    fn a_settled_attempt_ends_its_wait_and_the_count_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
        let watched = |ledger: &Ledger| {
            let count = ledger.inner.unknown_watched.load(Ordering::Acquire);
            assert_eq!(count, lock(&ledger.inner.unknown_since).len());
            count
        };
        let key = IdempotencyKey::new("order-1").unwrap();
        let Begin::Attempt(ticket) = ledger.begin(&key, &intent()).unwrap() else {
            panic!("a fresh key gets an attempt")
        };
        assert_eq!(watched(&ledger), 0);
        let unknown = Outcome::Unknown {
            reason: UnknownReason::Timeout,
        };
        let state = ledger.record(ticket, unknown).unwrap();
        assert!(matches!(state.phase, Phase::Unknown { .. }));
        assert_eq!(watched(&ledger), 1);
        let resolution = Resolution::Charged {
            transaction_id: TransactionId::new("ch_1").unwrap(),
            amount: intent().amount,
        };
        let state = ledger
            .resolve(
                &key,
                AttemptNumber::FIRST,
                resolution,
                Operator::new("ops").unwrap(),
                Note::new("seen in the dashboard").unwrap(),
            )
            .unwrap();
        assert!(matches!(state.phase, Phase::Succeeded { .. }));
        assert_eq!(watched(&ledger), 0);
    }
}
