//! An index held in memory, built by replaying the journal: what a read-only open uses, because
//! it must not write a byte anywhere, and neither fjall nor sled can open a database without
//! writing to it.
//!
//! Invariant: it answers exactly what the persistent index would for the same journal; it keeps
//! positions of events, never copies of their payloads, so its memory is bounded by the number
//! of keys and events, not by the journal's bytes.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use crate::error::Result;
use crate::journal::format::GENESIS_HASH;
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, Sequence, UnixMillis};
use crate::sync::lock;

use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate, listed_as};

#[derive(Debug, Default)]
struct Tables {
    states: HashMap<IdempotencyKey, IndexEntry>,
    /// (phase, key text): ordered like the persistent index, so that ranges serve pagination.
    phases: BTreeSet<(PhaseKind, String)>,
    schedule: BTreeSet<(UnixMillis, String)>,
    references: HashMap<ProviderReference, IdempotencyKey>,
    watermark: Option<IndexWatermark>,
}

impl Tables {
    fn apply(&mut self, update: &KeyUpdate) {
        let key = &update.key;
        if let Some(before) = &update.before {
            for kind in before.phases() {
                self.phases.remove(&(kind, key.as_str().to_string()));
            }
            if let Some(at) = before.next_query_at {
                self.schedule.remove(&(at, key.as_str().to_string()));
            }
        }
        for kind in listed_as(&update.after.state) {
            self.phases.insert((kind, key.as_str().to_string()));
        }
        if let Some(at) = update.after.next_query_at {
            self.schedule.insert((at, key.as_str().to_string()));
        }
        for reference in &update.new_references {
            self.references.insert(reference.clone(), key.clone());
        }
        self.states
            .insert(key.clone(), IndexEntry::clone(&update.after));
    }
}

/// A key stored as text here was a valid key when it was put.
fn key_of(text: &str) -> Result<IdempotencyKey> {
    Ok(IdempotencyKey::new(text)?)
}

/// The in-memory index.
#[derive(Debug, Default)]
pub(crate) struct MemIndex {
    tables: Mutex<Tables>,
}

impl KeyIndex for MemIndex {
    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        Ok(lock(&self.tables).states.get(key).cloned())
    }

    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()> {
        let mut tables = lock(&self.tables);
        for update in updates {
            tables.apply(update);
        }
        tables.watermark = Some(watermark);
        Ok(())
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        let tables = lock(&self.tables);
        let start = (
            phase,
            after.map_or(String::new(), |a| a.as_str().to_string()),
        );
        let bound = match after {
            Some(_) => Bound::Excluded(start),
            None => Bound::Included(start),
        };
        tables
            .phases
            .range((bound, Bound::Unbounded))
            .take_while(|(kind, _)| *kind == phase)
            .take(limit)
            .map(|(_, key)| key_of(key))
            .collect()
    }

    fn count(&self, phase: PhaseKind) -> usize {
        lock(&self.tables)
            .phases
            .range((phase, String::new())..)
            .take_while(|(kind, _)| *kind == phase)
            .count()
    }

    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        lock(&self.tables)
            .schedule
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, key)| key_of(key))
            .collect()
    }

    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        Ok(lock(&self.tables).references.get(reference).cloned())
    }

    fn watermark(&self) -> Result<IndexWatermark> {
        Ok(lock(&self.tables).watermark.unwrap_or(IndexWatermark {
            sequence: Sequence(0),
            chain_hash: GENESIS_HASH,
        }))
    }

    fn clear(&self) -> Result<()> {
        *lock(&self.tables) = Tables::default();
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
