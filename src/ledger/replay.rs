//! Replay: bringing an index up to the journal, from the index's watermark to the journal's end,
//! at open (catch-up after a crash, a full rebuild, or the in-memory index of a read-only open).
//!
//! Invariants:
//! - every event passes the fold again, so a journal the fold refuses is an error naming the
//!   sequence ([`Error::Inconsistent`]), never skipped;
//! - events are applied in journal order, in atomic batches that carry the watermark they
//!   reach: a crash during a replay leaves the index at some earlier watermark, and the next
//!   open continues from there;
//! - the events already reflected by an entry (an index whose watermark lagged its entries) are
//!   not applied twice.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::index::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate, Listing, StoredEvent};
use crate::journal::Journal;
use crate::journal::codec::decode_event;
use crate::model::{IdempotencyKey, PaymentState, ReconcileConfig, Sequence, apply};

use super::write::started_reference;

/// Events applied per batch: large enough that a rebuild costs a few sled batches per second of
/// journal, small enough that a batch stays a few MiB.
const REPLAY_BATCH_EVENTS: usize = 16_384;

/// What a replay did.
pub(super) struct Replayed {
    /// First sequence read.
    pub from: Sequence,
    /// Events applied.
    pub events: u64,
}

/// One batch being built: an update per key touched (merged in journal order), and the latest
/// entry of every key touched, which the index does not hold yet.
#[derive(Default)]
struct Batch {
    updates: Vec<KeyUpdate>,
    slot: HashMap<IdempotencyKey, usize>,
    events: usize,
}

impl Batch {
    /// The key's latest entry: this batch's, else the index's.
    fn entry(&self, index: &dyn KeyIndex, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        match self.slot.get(key) {
            Some(&i) => Ok(Some(self.updates[i].after.clone())),
            None => index.get(key),
        }
    }

    /// Adds one event's change: merged into the key's update if the batch has one.
    fn add(&mut self, update: KeyUpdate) {
        self.events += 1;
        match self.slot.get(&update.key) {
            Some(&i) => self.updates[i].absorb(update),
            None => {
                self.slot.insert(update.key.clone(), self.updates.len());
                self.updates.push(update);
            }
        }
    }
}

/// Applies every journal record after `index`'s watermark to it.
///
/// # Errors
/// [`Error::Inconsistent`] for an event the fold refuses or that cannot be decoded; journal and
/// index errors.
pub(super) fn catch_up(
    journal: &Journal,
    index: &dyn KeyIndex,
    reconcile: &ReconcileConfig,
) -> Result<Replayed> {
    let mut watermark = index.watermark()?;
    let from = watermark.sequence.next();
    let mut applied = 0;
    let mut batch = Batch::default();
    for record in journal.read_from(from) {
        let record = record?;
        let inconsistent = |cause: Error| Error::Inconsistent {
            sequence: record.sequence,
            cause: Box::new(cause),
        };
        let event = decode_event(&record.payload).map_err(inconsistent)?;
        watermark = IndexWatermark {
            sequence: record.sequence,
            chain_hash: record.hash,
        };
        let before = batch.entry(index, &event.key)?;
        if before
            .as_ref()
            .is_some_and(|b| b.last_sequence >= record.sequence)
        {
            continue;
        }
        let state = before
            .as_ref()
            .map_or_else(|| PaymentState::new(event.key.clone()), |b| b.state.clone());
        let state = apply(&state, &event).map_err(|r| inconsistent(r.into()))?;
        let before_listing = before.as_ref().map(Listing::of);
        let mut events = before.map_or_else(Vec::new, |b| b.events);
        events.push(StoredEvent {
            sequence: record.sequence,
            position: record.position,
        });
        let after = IndexEntry {
            next_query_at: reconcile.next_query_at_state(&state, event.at),
            state,
            last_sequence: record.sequence,
            events,
        };
        batch.add(KeyUpdate {
            before: before_listing,
            after,
            new_references: started_reference(&event).into_iter().collect(),
            key: event.key,
        });
        applied += 1;
        if batch.events >= REPLAY_BATCH_EVENTS {
            index.apply(&std::mem::take(&mut batch).updates, watermark)?;
        }
    }
    // The journal's reader yields every durable record or an error.
    debug_assert_eq!(watermark.sequence, journal.last_sequence());
    index.apply(&batch.updates, watermark)?;
    index.flush()?;
    Ok(Replayed {
        from,
        events: applied,
    })
}
