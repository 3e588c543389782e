//! The index: what must be found fast without replaying history: a key's state, keys by phase,
//! the reconcile schedule, the key of a provider reference, the positions of a key's events.
//!
//! Invariant: the index is derived data. Everything in it is a function of the journal up to
//! its watermark; it is written after the journal sync, never synced per operation, and can be
//! deleted at any time (the ledger rebuilds it from the journal).
//!
//! Implementations of [`KeyIndex`]: the persistent index in the layout of `layout.rs`, kept by
//! `fjall.rs` (the default engine, the only file that names fjall) or `sled.rs` (feature
//! `sled`, the only file that names sled), and `memory.rs` (an in-memory index built by
//! replaying the journal, for read-only opens, which must not write a byte, and neither engine
//! can open without writing). The ledger sees
//! either through [`LiveIndex`] (`live.rs`): durable commits are applied to it by one applier
//! thread, off the commit path, and an overlay (`overlay.rs`) answers for what is durable but
//! not applied yet.

#[cfg(feature = "testing")]
mod faulty;
mod fjall;
mod layout;
mod live;
mod memory;
mod overlay;
mod priority;
#[cfg(feature = "sled")]
mod sled;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::RecordPosition;
use crate::journal::format::ChainHash;
use crate::model::{
    IdempotencyKey, PaymentState, PhaseKind, ProviderReference, Sequence, UnixMillis,
};

#[cfg(feature = "sled")]
pub(crate) use self::sled::SledIndex;
#[cfg(feature = "testing")]
pub(crate) use faulty::FaultyIndex;
#[cfg(feature = "testing")]
pub use faulty::IndexFaults;
pub(crate) use fjall::FjallIndex;
pub(crate) use live::{LiveIndex, Room};
pub(crate) use memory::MemIndex;

/// An index error naming the index directory.
fn index_error(path: &std::path::Path, kind: crate::error::IndexError) -> crate::error::Error {
    crate::error::Error::Index {
        index: path.to_path_buf(),
        kind,
    }
}

/// The position an index reflects: the journal sequence up to which every record is applied,
/// and the chain hash of that record (zeros for an empty journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexWatermark {
    pub sequence: Sequence,
    pub chain_hash: ChainHash,
}

/// What the index holds per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The key's state after its last event.
    pub state: PaymentState,
    /// Journal sequence of that event.
    pub last_sequence: Sequence,
    /// When the reconciler should next query the provider (unknown keys only), on the wall
    /// clock: a step of it only moves queries earlier or later, never decides anything.
    pub next_query_at: Option<UnixMillis>,
    /// Where the key's events are in the journal, in journal order: its history is read from
    /// there, never copied into the index.
    pub events: Vec<StoredEvent>,
}

impl IndexEntry {
    /// The state inside a shared entry: moved out of the last reference, cloned otherwise.
    pub(crate) fn state_of(entry: Arc<Self>) -> PaymentState {
        Arc::try_unwrap(entry).map_or_else(|shared| shared.state.clone(), |entry| entry.state)
    }
}

/// One event of a key's history, as stored: where to read it in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Its sequence.
    pub sequence: Sequence,
    /// Where its record is.
    pub position: RecordPosition,
}

/// Where a key was listed before an update: what the update must remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// The phase lists it was in (see `listed_as`: at most its phase, `Conflict` beside it, and
    /// the four operation lists).
    pub phases: [Option<PhaseKind>; 6],
    /// Its place in the reconcile schedule.
    pub next_query_at: Option<UnixMillis>,
}

impl Listing {
    /// Where `entry` is listed.
    pub fn of(entry: &IndexEntry) -> Self {
        let mut phases = [None; 6];
        for (slot, kind) in phases.iter_mut().zip(listed_as(&entry.state)) {
            *slot = Some(kind);
        }
        Self {
            phases,
            next_query_at: entry.next_query_at,
        }
    }

    /// The phase lists.
    pub fn phases(&self) -> impl Iterator<Item = PhaseKind> + '_ {
        self.phases.iter().flatten().copied()
    }
}

/// What one commit changes for one key. Updates are applied in journal order; several go into
/// one atomic batch with the watermark they reach.
#[derive(Clone, Debug)]
pub(crate) struct KeyUpdate {
    pub key: IdempotencyKey,
    /// Where the key was listed before (nothing for a new key).
    pub before: Option<Listing>,
    /// Its entry after the commit (with the commit's events), shared with the overlay, which
    /// shows it until it is applied.
    pub after: Arc<IndexEntry>,
    /// The provider references `AttemptStarted` events among them issued.
    pub new_references: Vec<ProviderReference>,
}

impl KeyUpdate {
    /// Folds a later update of the same key into this one: the listing before stays this
    /// one's, the entry after becomes the later one's (which holds every event), references
    /// accumulate. The index ends as if both were applied in order, with fewer writes.
    pub fn absorb(&mut self, later: KeyUpdate) {
        debug_assert_eq!(self.key, later.key);
        debug_assert!(later.after.last_sequence > self.after.last_sequence);
        self.after = later.after;
        self.new_references.extend(later.new_references);
    }
}

/// Merges the updates of each key (given in journal order) into one per key, in the order each
/// key first appears.
pub(crate) fn merged(updates: Vec<KeyUpdate>) -> Vec<KeyUpdate> {
    let mut slot: std::collections::HashMap<IdempotencyKey, usize> =
        std::collections::HashMap::with_capacity(updates.len());
    let mut out: Vec<KeyUpdate> = Vec::with_capacity(updates.len());
    for update in updates {
        match slot.get(&update.key) {
            Some(&i) => out[i].absorb(update),
            None => {
                slot.insert(update.key.clone(), out.len());
                out.push(update);
            }
        }
    }
    out
}

/// The lists a key appears in ([`PaymentState::listed_as`]).
fn listed_as(state: &PaymentState) -> impl Iterator<Item = PhaseKind> {
    state.listed_as().into_iter()
}

/// What the ledger needs of an index. Every method reads or writes derived data only.
pub(crate) trait KeyIndex: Send + Sync + fmt::Debug {
    /// The entry of `key`.
    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>>;
    /// Applies `updates` (in journal order, at most one per key: [`merged`]) and sets the
    /// watermark to `watermark`, all in one atomic batch.
    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()>;
    /// Keys in `phase`, ordered by key, strictly after `after`, at most `limit`.
    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>>;
    /// How many keys are in `phase`.
    fn count(&self, phase: PhaseKind) -> usize;
    /// Unknown keys whose query time is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>>;
    /// The key a provider reference was issued for.
    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>>;
    /// The journal position the index reflects.
    fn watermark(&self) -> Result<IndexWatermark>;
    /// Empties the index (before a rebuild).
    fn clear(&self) -> Result<()>;
    /// Writes buffers to disk, where there is a disk.
    fn flush(&self) -> Result<()>;
}

#[cfg(all(test, not(shuttle)))]
pub(crate) mod tests {
    use super::*;

    /// An update of `key` whose last event is `last`, issuing `reference` if one is given.
    pub(crate) fn update(key: &str, last: u64, reference: Option<&str>) -> KeyUpdate {
        let key = IdempotencyKey::new(key).unwrap();
        KeyUpdate {
            after: Arc::new(IndexEntry {
                state: PaymentState::new(key.clone()),
                last_sequence: Sequence(last),
                next_query_at: None,
                events: Vec::new(),
            }),
            key,
            before: None,
            new_references: reference
                .map(|r| ProviderReference::new(r).unwrap())
                .into_iter()
                .collect(),
        }
    }
}
