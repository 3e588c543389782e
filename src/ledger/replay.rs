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
//!   not applied twice;
//! - a key's entry is taken from the batch being built, else from the batch being applied,
//!   else from the index, which then holds every earlier batch: one thread folds batch N + 1
//!   while another applies batch N, and neither ever sees a key's state older than its last
//!   event before the one being folded.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use crate::error::{Error, Result};
use crate::index::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate, Listing, StoredEvent};
use crate::journal::codec::decode_event;
use crate::journal::{Journal, JournalRecord};
use crate::model::{Event, IdempotencyKey, PaymentState, ReconcileConfig, Sequence, apply};

use super::write::started_reference;

/// Events applied per batch. Measured with sled on a rebuild of 3 million events (`cargo bench
/// --bench scale`, 2 cores): 128 → 115k events/s, 512 → 132k, 1,024 → 112k, 16,384 → 90k.
/// Small batches keep what the folder builds and the engine copies within the CPU caches and
/// below the allocator's trim threshold; much smaller ones pay the engine's cost per batch.
const REPLAY_BATCH_EVENTS: usize = 512;

/// The largest filter of keys seen a replay into an empty index keeps: 2^27 bits, 16 MiB
/// (smaller journals get 8 to 16 bits per record: 8 per record rounded up to a power of two).
/// With two probes per key it answers "maybe seen" for a key never seen about 0.3% of the time
/// at 3.4 million keys of three events (10.2 million records, the full size), 16% at 34
/// million: each such answer costs one index read, never a wrong entry.
const SEEN_BITS_MAX: u64 = 1 << 27;
/// The smallest: 2^16 bits, 8 KiB.
const SEEN_BITS_MIN: u64 = 1 << 16;

/// What a replay did.
pub(super) struct Replayed {
    /// First sequence read.
    pub from: Sequence,
    /// Events applied.
    pub events: u64,
}

/// Whether the index a replay starts from is known to be empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// Freshly created or cleared: no key has an entry.
    Empty,
    /// It may hold entries: every key is looked up.
    Existing,
}

/// One batch: an update per key touched (merged in journal order), the watermark it reaches.
#[derive(Default)]
struct Batch {
    updates: Vec<KeyUpdate>,
    slot: HashMap<IdempotencyKey, usize>,
    events: usize,
    watermark: Option<IndexWatermark>,
}

impl Batch {
    /// The key's latest entry in this batch.
    fn entry(&self, key: &IdempotencyKey) -> Option<&IndexEntry> {
        self.slot.get(key).map(|&i| &*self.updates[i].after)
    }
}

/// The keys a replay into an empty index has handed to the applier, as a filter of two bits
/// per key (a Bloom filter with two probes): no false "certainly new", some false "maybe
/// seen". `None` when the index was not empty: then every key is read from it.
struct Seen {
    bits: Option<Vec<u64>>,
    /// Bit count − 1 (a power of two − 1).
    mask: u64,
    hasher: RandomState,
}

impl Seen {
    /// A filter sized for `records` journal records (8 bits per record rounded up to a power of
    /// two, within bounds).
    fn new(start: Start, records: u64) -> Self {
        let bits = records
            .saturating_mul(8)
            .clamp(SEEN_BITS_MIN, SEEN_BITS_MAX)
            .next_power_of_two();
        let words = usize::try_from(bits / 64).unwrap_or(1 << 21);
        Self {
            bits: (start == Start::Empty).then(|| vec![0; words]),
            mask: bits - 1,
            hasher: RandomState::new(),
        }
    }

    /// The two bits of `key`: from the low and the high half of one 64-bit hash.
    fn probes(&self, key: &IdempotencyKey) -> [u64; 2] {
        let hash = self.hasher.hash_one(key);
        [hash & self.mask, (hash >> 32) & self.mask]
    }

    /// Whether `key` certainly has no entry in the index (nor in a batch on its way there).
    fn certainly_new(&self, key: &IdempotencyKey) -> bool {
        let Some(bits) = &self.bits else {
            return false;
        };
        self.probes(key)
            .iter()
            .any(|&bit| bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0)
    }

    fn insert(&mut self, key: &IdempotencyKey) {
        let probes = self.probes(key);
        if let Some(bits) = &mut self.bits {
            for bit in probes {
                bits[(bit / 64) as usize] |= 1 << (bit % 64);
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
    start: Start,
) -> Result<Replayed> {
    catch_up_in_batches(journal, index, reconcile, start, REPLAY_BATCH_EVENTS)
}

/// [`catch_up`] with batches of `batch_events` events.
fn catch_up_in_batches(
    journal: &Journal,
    index: &dyn KeyIndex,
    reconcile: &ReconcileConfig,
    start: Start,
    batch_events: usize,
) -> Result<Replayed> {
    let from = index.watermark()?.sequence.next();
    let records = journal.last_sequence().0.saturating_sub(from.0 - 1);
    // A rendezvous: the folder hands batch N + 1 over only once the applier is done with N.
    let (to_applier, batches) = std::sync::mpsc::sync_channel::<Arc<Batch>>(0);
    // The index is written from this thread (the one that opened it: its allocations stay in
    // this thread's heap); the journal is read and folded on another.
    let (folded, applied) = std::thread::scope(|scope| {
        let folding = std::thread::Builder::new()
            .name("payledger-replay".to_string())
            .spawn_scoped(scope, move || {
                Folder {
                    index,
                    reconcile,
                    seen: Seen::new(start, records),
                    batch: Batch::default(),
                    applying: None,
                    applied: 0,
                }
                .fold(journal, from, batch_events, &to_applier)
                // Dropping `to_applier` here lets the applier finish the batch it has, then stop.
            });
        let folder = match folding {
            Ok(folder) => folder,
            Err(e) => {
                return (
                    Err(Error::io("starting the index replay thread", e)),
                    Ok(()),
                );
            }
        };
        let applied = apply_batches(index, &batches);
        // The folder stops at its next hand-over once `batches` is gone.
        drop(batches);
        // A panic while folding goes on as it would have on one thread.
        let folded = folder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (folded, applied)
    });
    // The applier's error comes first: it explains a fold that stopped because the applier
    // was gone.
    applied?;
    let events = folded?;
    index.flush()?;
    Ok(Replayed { from, events })
}

/// Applies the batches it is handed, in order, until the channel closes or one fails.
fn apply_batches(index: &dyn KeyIndex, batches: &Receiver<Arc<Batch>>) -> Result<()> {
    while let Ok(batch) = batches.recv() {
        if let Some(watermark) = batch.watermark {
            index.apply(&batch.updates, watermark)?;
        }
    }
    Ok(())
}

/// The folding side of a replay.
struct Folder<'a> {
    index: &'a dyn KeyIndex,
    reconcile: &'a ReconcileConfig,
    seen: Seen,
    /// The batch being built.
    batch: Batch,
    /// The batch handed to the applier last: applied or being applied.
    applying: Option<Arc<Batch>>,
    applied: u64,
}

impl Folder<'_> {
    /// Folds every record from `from` into batches handed to `applier`; answers the events
    /// folded.
    fn fold(
        mut self,
        journal: &Journal,
        from: Sequence,
        batch_events: usize,
        applier: &SyncSender<Arc<Batch>>,
    ) -> Result<u64> {
        let mut last = None;
        for record in journal.read_from(from) {
            let record = record?;
            last = Some(record.sequence);
            self.add(record)?;
            if self.batch.events >= batch_events {
                self.hand_over(applier)?;
            }
        }
        // The journal's reader yields every durable record or an error.
        debug_assert_eq!(
            last.unwrap_or(journal.last_sequence()),
            journal.last_sequence()
        );
        self.hand_over(applier)?;
        Ok(self.applied)
    }

    /// Hands the batch being built to the applier (waiting for it to finish the previous one).
    fn hand_over(&mut self, applier: &SyncSender<Arc<Batch>>) -> Result<()> {
        let batch = Arc::new(std::mem::take(&mut self.batch));
        if batch.watermark.is_none() {
            return Ok(());
        }
        for update in &batch.updates {
            self.seen.insert(&update.key);
        }
        // The channel closes early only when the applier failed or panicked: its error or its
        // panic is what the replay reports, never this placeholder.
        applier
            .send(Arc::clone(&batch))
            .map_err(|_| Error::WorkerLost)?;
        self.applying = Some(batch);
        Ok(())
    }

    /// The key's entry as of the events folded so far, outside the batch being built.
    fn earlier_entry(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        if let Some(entry) = self.applying.as_ref().and_then(|b| b.entry(key)) {
            return Ok(Some(entry.clone()));
        }
        if self.seen.certainly_new(key) {
            return Ok(None);
        }
        self.index.get(key)
    }

    /// Folds one record into the batch.
    fn add(&mut self, record: JournalRecord) -> Result<()> {
        let sequence = record.sequence;
        let inconsistent = |cause: Error| Error::Inconsistent {
            sequence,
            cause: Box::new(cause),
        };
        let event = decode_event(&record.payload).map_err(inconsistent)?;
        let watermark = IndexWatermark {
            sequence,
            chain_hash: record.hash,
        };
        let stored = StoredEvent {
            sequence,
            position: record.position,
        };
        if let Some(&i) = self.batch.slot.get(&event.key) {
            let update = &mut self.batch.updates[i];
            let state = apply(&update.after.state, &event).map_err(|r| inconsistent(r.into()))?;
            update.new_references.extend(started_reference(&event));
            let after = Arc::make_mut(&mut update.after);
            after.next_query_at = self.reconcile.next_query_at_state(&state, event.at);
            after.state = state;
            after.last_sequence = sequence;
            after.events.push(stored);
        } else {
            let before = self.earlier_entry(&event.key)?;
            if before.as_ref().is_some_and(|b| b.last_sequence >= sequence) {
                self.batch.watermark = Some(watermark);
                return Ok(());
            }
            let update = self
                .first_update(before, &event, stored)
                .map_err(inconsistent)?;
            self.batch
                .slot
                .insert(event.key.clone(), self.batch.updates.len());
            self.batch.updates.push(update);
        }
        self.batch.watermark = Some(watermark);
        self.batch.events += 1;
        self.applied += 1;
        Ok(())
    }

    /// The update of a key's first event in this batch, on top of its `before` entry.
    fn first_update(
        &self,
        before: Option<IndexEntry>,
        event: &Event,
        stored: StoredEvent,
    ) -> Result<KeyUpdate> {
        let listing = before.as_ref().map(Listing::of);
        let (state, mut events) = match before {
            Some(b) => (apply(&b.state, event)?, b.events),
            None => (
                apply(&PaymentState::new(event.key.clone()), event)?,
                Vec::new(),
            ),
        };
        events.push(stored);
        Ok(KeyUpdate {
            key: event.key.clone(),
            before: listing,
            after: Arc::new(IndexEntry {
                next_query_at: self.reconcile.next_query_at_state(&state, event.at),
                state,
                last_sequence: stored.sequence,
                events,
            }),
            new_references: started_reference(event).into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemIndex;
    use crate::ledger::{Begin, Ledger, LedgerConfig};
    use crate::model::tests::intent;
    use crate::model::{
        Amount, EvidenceSource, Finding, OperationKind, Outcome, PhaseKind, RequestId,
        TransactionId, UnixMillis, UnknownReason,
    };

    fn succeeded(id: &str, amount: u64) -> Outcome {
        Outcome::Succeeded {
            transaction_id: TransactionId::new(id).unwrap(),
            amount: Amount::new(amount).unwrap(),
        }
    }

    /// A journal whose keys' events are spread far apart: every key begun, then every outcome
    /// (some unknown), then evidence for the unknown ones, then refunds.
    fn spread_ledger(dir: &std::path::Path) -> (Ledger, Vec<IdempotencyKey>, Vec<Issued>) {
        let (ledger, _) = Ledger::open(dir, LedgerConfig::default()).unwrap();
        let keys: Vec<_> = (0..24)
            .map(|n| IdempotencyKey::new(format!("replay-{n:02}")).unwrap())
            .collect();
        let tickets: Vec<_> = keys
            .iter()
            .map(|k| match ledger.begin(k, &intent()).unwrap() {
                Begin::Attempt(ticket) => ticket,
                other => panic!("a new key: {other:?}"),
            })
            .collect();
        let mut references = Vec::new();
        for (n, ticket) in tickets.into_iter().enumerate() {
            references.push((ticket.provider_reference().clone(), keys[n].clone()));
            let outcome = match n % 3 {
                0 => Outcome::Unknown {
                    reason: UnknownReason::Timeout,
                },
                _ => succeeded(&format!("ch_{n}"), 1_000),
            };
            ledger.record(ticket, outcome).unwrap();
        }
        for (n, (reference, _)) in references.iter().enumerate().filter(|(n, _)| n % 6 == 0) {
            let finding = Finding::Charged {
                transaction_id: TransactionId::new(format!("ch_{n}")).unwrap(),
                amount: Amount::new(1_000).unwrap(),
            };
            ledger
                .record_evidence(reference, EvidenceSource::Webhook, finding)
                .unwrap();
        }
        for (n, key) in keys.iter().enumerate().filter(|(n, _)| n % 3 == 1) {
            let request = RequestId::new(format!("refund-{n}")).unwrap();
            let amount = Amount::new(400).unwrap();
            if let crate::model::Decision::Attempt(ticket) = ledger
                .begin_operation(key, OperationKind::Refund, &request, amount)
                .unwrap()
            {
                references.push((ticket.provider_reference().clone(), key.clone()));
                ledger
                    .record_operation(ticket, succeeded(&format!("re_{n}"), 400))
                    .unwrap();
            }
        }
        ledger.wait_indexed().unwrap();
        (ledger, keys, references)
    }

    /// A provider reference the ledger issued, and its key.
    type Issued = (crate::model::ProviderReference, IdempotencyKey);

    /// Whatever the batch size, and whether or not the index is known to be empty, a replay
    /// builds the index the ledger built while writing: keys whose events straddle batches
    /// (and the batch being applied while the next is folded) included.
    #[test]
    fn a_replay_in_any_batch_size_builds_the_index_the_writes_built() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, keys, references) = spread_ledger(dir.path());
        assert!(references.len() > keys.len());
        let inner = &ledger.inner;
        let events = inner.journal.last_sequence().0;
        assert!(events > 70, "{events}");
        for batch_events in [1, 2, 3, 7, 50, 100_000] {
            for start in [Start::Empty, Start::Existing] {
                let replayed = MemIndex::default();
                let done = catch_up_in_batches(
                    &inner.journal,
                    &replayed,
                    &inner.config.reconcile,
                    start,
                    batch_events,
                )
                .unwrap();
                let case = format!("batches of {batch_events}, {start:?}");
                assert_eq!(done.events, events, "{case}");
                assert_eq!(
                    replayed.watermark().unwrap(),
                    inner.index.watermark(),
                    "{case}"
                );
                for key in &keys {
                    let written = inner.index.get(key).unwrap().map(Arc::unwrap_or_clone);
                    assert!(written.is_some());
                    assert_eq!(replayed.get(key).unwrap(), written, "{case}: {key}");
                }
                for (reference, key) in &references {
                    assert_eq!(
                        replayed.key_for_reference(reference).unwrap().as_ref(),
                        Some(key),
                        "{case}: {reference}"
                    );
                }
                for phase in PhaseKind::ALL {
                    assert_eq!(
                        replayed.list(phase, None, 1_000).unwrap(),
                        inner.index.list(phase, None, 1_000).unwrap(),
                        "{case}: {phase:?}"
                    );
                }
                let later = UnixMillis(u64::MAX / 2);
                assert_eq!(
                    replayed.due(later, 1_000).unwrap(),
                    inner.index.due(later, 1_000).unwrap(),
                    "{case}"
                );
            }
        }
    }

    /// A replay resumes from an index that holds a prefix of the journal: the events its
    /// entries already reflect are not applied twice.
    #[test]
    fn a_replay_resumes_from_a_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, keys, _) = spread_ledger(dir.path());
        let inner = &ledger.inner;
        let replayed = MemIndex::default();
        // The first 30 records, as a crash mid-replay would leave them.
        let mut prefix = Folder {
            index: &replayed,
            reconcile: &inner.config.reconcile,
            seen: Seen::new(Start::Empty, 30),
            batch: Batch::default(),
            applying: None,
            applied: 0,
        };
        for record in inner.journal.read_from(Sequence(1)).take(30) {
            prefix.add(record.unwrap()).unwrap();
        }
        let batch = prefix.batch;
        replayed
            .apply(&batch.updates, batch.watermark.unwrap())
            .unwrap();
        let done = catch_up_in_batches(
            &inner.journal,
            &replayed,
            &inner.config.reconcile,
            Start::Existing,
            5,
        )
        .unwrap();
        assert_eq!(done.from, Sequence(31));
        for key in &keys {
            assert_eq!(
                replayed.get(key).unwrap(),
                inner.index.get(key).unwrap().map(Arc::unwrap_or_clone),
                "{key}"
            );
        }
    }
}
