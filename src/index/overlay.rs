//! The overlay: what is durable in the journal but not applied to the index yet, per key.
//!
//! Invariants:
//! - a key's overlay entry is installed by the writer that made its events durable, while it
//!   still holds the key's lock, and is always that key's latest entry;
//! - an entry is retired only once the applied watermark covers its last event, so a reader
//!   that misses the overlay finds that event (or a later one) in the index;
//! - its size is bounded by the applier's backlog: one entry per key with unapplied events.

use std::collections::HashMap;

use crate::journal::RecordPosition;
use crate::model::{IdempotencyKey, ProviderReference, Sequence};

use super::{IndexEntry, KeyUpdate, StoredEvent};

/// One key's unapplied state.
#[derive(Debug)]
struct Pending {
    /// The key's latest entry.
    entry: IndexEntry,
    /// Its events not applied yet, in journal order.
    events: Vec<(Sequence, RecordPosition)>,
}

/// Entries and references written since the applied watermark.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    entries: HashMap<IdempotencyKey, Pending>,
    /// Provider references issued by unapplied events, with the sequence that issued them.
    references: HashMap<ProviderReference, (IdempotencyKey, Sequence)>,
}

impl Overlay {
    /// Installs `update` as its key's latest entry.
    pub fn install(&mut self, update: &KeyUpdate) {
        let last = update.after.last_sequence;
        for reference in &update.new_references {
            self.references
                .insert(reference.clone(), (update.key.clone(), last));
        }
        match self.entries.get_mut(&update.key) {
            Some(pending) => {
                pending.entry = update.after.clone();
                pending.events.extend_from_slice(&update.events);
            }
            None => {
                self.entries.insert(
                    update.key.clone(),
                    Pending {
                        entry: update.after.clone(),
                        events: update.events.clone(),
                    },
                );
            }
        }
    }

    /// The latest entry of `key`, if it has unapplied events.
    pub fn get(&self, key: &IdempotencyKey) -> Option<IndexEntry> {
        self.entries.get(key).map(|p| p.entry.clone())
    }

    /// The key an unapplied event issued `reference` for.
    pub fn key_for_reference(&self, reference: &ProviderReference) -> Option<IdempotencyKey> {
        self.references.get(reference).map(|(key, _)| key.clone())
    }

    /// The unapplied events of `key`.
    pub fn events(&self, key: &IdempotencyKey) -> Vec<StoredEvent> {
        self.entries.get(key).map_or_else(Vec::new, |p| {
            p.events
                .iter()
                .map(|(sequence, position)| StoredEvent {
                    sequence: *sequence,
                    position: *position,
                })
                .collect()
        })
    }

    /// Forgets what the index now holds: `applied` was just applied, up to watermark `upto`.
    pub fn retire(&mut self, applied: &[KeyUpdate], upto: Sequence) {
        for update in applied {
            let Some(pending) = self.entries.get_mut(&update.key) else {
                continue;
            };
            if pending.entry.last_sequence <= upto {
                self.entries.remove(&update.key);
            } else {
                pending.events.retain(|(sequence, _)| *sequence > upto);
            }
            for reference in &update.new_references {
                if self
                    .references
                    .get(reference)
                    .is_some_and(|(_, issued)| *issued <= upto)
                {
                    self.references.remove(reference);
                }
            }
        }
    }

    /// Keys with unapplied events.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PaymentState, Sequence};

    fn update(key: &str, last: u64, reference: Option<&str>) -> KeyUpdate {
        let key = IdempotencyKey::new(key).unwrap();
        KeyUpdate {
            after: IndexEntry {
                state: PaymentState::new(key.clone()),
                last_sequence: Sequence(last),
                next_query_at: None,
            },
            key,
            before: None,
            events: vec![(Sequence(last), RecordPosition::default())],
            new_references: reference
                .map(|r| ProviderReference::new(r).unwrap())
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn an_entry_is_retired_only_once_its_last_event_is_applied() {
        let mut overlay = Overlay::default();
        let first = update("k", 1, Some("ref-1"));
        let second = update("k", 2, None);
        overlay.install(&first);
        overlay.install(&second);
        let key = first.key.clone();
        let reference = ProviderReference::new("ref-1").unwrap();

        overlay.retire(std::slice::from_ref(&first), Sequence(1));
        assert_eq!(overlay.get(&key).unwrap().last_sequence, Sequence(2));
        assert_eq!(
            overlay.events(&key).len(),
            1,
            "the applied event is forgotten"
        );
        assert_eq!(overlay.key_for_reference(&reference), None);

        overlay.retire(std::slice::from_ref(&second), Sequence(2));
        assert_eq!(overlay.get(&key), None);
        assert_eq!(overlay.len(), 0);
    }

    #[test]
    fn a_reference_stays_until_the_event_that_issued_it_is_applied() {
        let mut overlay = Overlay::default();
        let first = update("k", 5, Some("ref-5"));
        overlay.install(&first);
        let reference = ProviderReference::new("ref-5").unwrap();
        overlay.retire(std::slice::from_ref(&first), Sequence(4));
        assert_eq!(
            overlay.key_for_reference(&reference),
            Some(first.key.clone())
        );
        overlay.retire(std::slice::from_ref(&first), Sequence(5));
        assert_eq!(overlay.key_for_reference(&reference), None);
    }
}
