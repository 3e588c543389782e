//! The overlay: what is durable in the journal but not applied to the index yet, per key.
//!
//! Invariants:
//! - a key's overlay entry is installed by the writer that made its events durable, while it
//!   still holds the key's lock, and is always that key's latest entry;
//! - an entry is retired only once the applied watermark covers its last event, so a reader
//!   that misses the overlay finds that event (or a later one) in the index;
//! - its size is bounded by the applier's backlog: one entry per key with unapplied events.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{IdempotencyKey, ProviderReference, Sequence};

use super::{IndexEntry, KeyUpdate};

/// Entries and references written since the applied watermark.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Each key's latest entry, shared with the update the applier holds.
    entries: HashMap<IdempotencyKey, Arc<IndexEntry>>,
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
        self.entries
            .insert(update.key.clone(), Arc::clone(&update.after));
    }

    /// The latest entry of `key`, if it has unapplied events.
    pub fn get(&self, key: &IdempotencyKey) -> Option<Arc<IndexEntry>> {
        self.entries.get(key).cloned()
    }

    /// The key an unapplied event issued `reference` for.
    pub fn key_for_reference(&self, reference: &ProviderReference) -> Option<IdempotencyKey> {
        self.references.get(reference).map(|(key, _)| key.clone())
    }

    /// Forgets what the index now holds: `applied` was just applied, up to watermark `upto`.
    pub fn retire(&mut self, applied: &[KeyUpdate], upto: Sequence) {
        for update in applied {
            if self
                .entries
                .get(&update.key)
                .is_some_and(|entry| entry.last_sequence <= upto)
            {
                self.entries.remove(&update.key);
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
    #[cfg(all(test, not(shuttle)))]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;
    use crate::index::tests::update;
    use crate::model::Sequence;

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
