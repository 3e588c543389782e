//! The single write path: every event passes the fold, is appended durably, then indexed.
//!
//! Invariants:
//! - the caller holds the key's lock; the fold accepts every event before any byte is written;
//! - the index is updated only after the journal sync covering the events, and the index
//!   watermark only ever covers a contiguous prefix of the journal, with that prefix's chain
//!   hash;
//! - a failed index update stops the ledger until reopened (a stale index could allow a second
//!   attempt);
//! - an attempt that becomes unknown starts its monotonic wait here, in this process.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::error::{Error, FatalCause, Result};
use crate::index::{IndexEntry, IndexUpdate, IndexWatermark};
use crate::journal::RecordPosition;
use crate::journal::codec::encode_event;
use crate::journal::format::{ChainHash, GENESIS_HASH};
use crate::limits::UNKNOWN_WAITS_MAX;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference, Sequence, UnixMillis};
use crate::model::{Event, EventKind};
use crate::model::{PaymentState, Phase, apply};

use super::{Ledger, UnknownWait};
use crate::sync::lock;

/// Tracks the highest journal sequence up to which every record is in the index: appends
/// finish indexing out of order, the watermark advances only over a contiguous prefix.
#[derive(Debug)]
pub(super) struct Watermark {
    contiguous: IndexWatermark,
    /// Indexed appends beyond the prefix: first sequence → (last sequence, its chain hash).
    done: BTreeMap<Sequence, (Sequence, ChainHash)>,
}

impl Default for Watermark {
    fn default() -> Self {
        Self::at(IndexWatermark {
            sequence: Sequence(0),
            chain_hash: GENESIS_HASH,
        })
    }
}

impl Watermark {
    /// A tracker whose prefix ends at `watermark`.
    pub fn at(watermark: IndexWatermark) -> Self {
        Self {
            contiguous: watermark,
            done: BTreeMap::new(),
        }
    }

    /// Records that `sequences` (whose last record has chain hash `head`) are indexed; returns
    /// the new watermark.
    fn complete(&mut self, sequences: RangeInclusive<Sequence>, head: ChainHash) -> IndexWatermark {
        assert!(
            *sequences.start() > self.contiguous.sequence,
            "an append is indexed once"
        );
        self.done
            .insert(*sequences.start(), (*sequences.end(), head));
        while let Some((last, hash)) = self.done.remove(&self.contiguous.sequence.next()) {
            self.contiguous = IndexWatermark {
                sequence: last,
                chain_hash: hash,
            };
        }
        self.contiguous
    }
}

impl Ledger {
    /// Checks `events` against the fold, appends them atomically, then updates the index.
    /// The caller holds the key's lock.
    pub(super) fn write_events(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
    ) -> Result<IndexEntry> {
        self.writable()?;
        let mut state = before.map_or_else(|| PaymentState::new(key.clone()), |b| b.state.clone());
        for event in &events {
            state = apply(&state, event)?;
        }
        let payloads = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>>>()?;
        let appended = self.inner.journal.append_chained(payloads)?;
        let (first, last) = (*appended.sequences.start(), *appended.sequences.end());
        assert_eq!(
            last.0 - first.0 + 1,
            events.len() as u64,
            "one sequence per event"
        );
        assert_eq!(
            appended.positions.len(),
            events.len(),
            "one position per event"
        );
        let last_at = events.last().map_or(UnixMillis(0), |e| e.at);
        let after = IndexEntry {
            next_query_at: self
                .inner
                .config
                .reconcile
                .next_query_at(key, &state.phase, last_at),
            state,
            last_sequence: last,
        };
        self.watch_unknown(key, &after.state.phase);
        let stored: Vec<(Sequence, RecordPosition)> = (first.0..=last.0)
            .map(Sequence)
            .zip(appended.positions.iter().copied())
            .collect();
        let reference = events.iter().find_map(started_reference);
        let indexed = {
            // The watermark lock is held across the batch, so that batches carry watermarks in
            // the order they advance.
            let mut watermark = lock(&self.inner.watermark);
            let next = watermark.complete(first..=last, appended.chain_head);
            self.inner.index.put(&IndexUpdate {
                key,
                before,
                after: &after,
                events: &stored,
                new_reference: reference.as_ref(),
                watermark: Some(next),
            })
        };
        if let Err(e) = indexed {
            tracing::error!(error = %e, key = %key, "index update failed after a durable append; ledger stopped until reopened");
            let cause = FatalCause::new(
                format!("updating the index after journal sequence {last}"),
                index_io_error(e),
            );
            let cause = self.inner.index_failed.get_or_init(|| cause).clone();
            return Err(Error::IndexFailed { cause });
        }
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
        Ok(self.inner.index.watermark()?.sequence)
    }
}

/// The I/O error inside an index failure, or the failure itself as one.
fn index_io_error(error: Error) -> std::io::Error {
    match error {
        Error::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
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
