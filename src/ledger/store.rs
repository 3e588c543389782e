//! The embedded ledger as an [`EventStore`]: the journal orders and persists, the index
//! answers loads and lists.
//!
//! Invariant: an append checks the key's version under the key's lock and goes through the
//! single write path (`write.rs`), so it is durable (covered by `fdatasync`) before `Done`, and
//! a stale version writes nothing. The next query time is the ledger's own (its
//! `ReconcileConfig`), not the writer's.
//!
//! Use one API per ledger directory: the seam bypasses the gate's in-process tickets, so an
//! attempt started through the seam looks, to [`Ledger`]'s own reconciler, like an attempt
//! whose ticket was dropped.

use crate::error::Result;
use crate::index::IndexEntry;
use crate::model::{IdempotencyKey, PaymentState, PhaseKind, ProviderReference, UnixMillis};
use crate::store::{Append, Appended, EventStore, StoredKey};

use super::Ledger;

impl EventStore for Ledger {
    fn load(&self, key: &IdempotencyKey) -> Result<Option<StoredKey>> {
        Ok(self.inner.index.get(key)?.map(|entry| StoredKey {
            version: entry.events.len() as u64,
            state: IndexEntry::state_of(entry),
        }))
    }

    fn append(&self, append: Append<'_>) -> Result<Appended> {
        self.writable()?;
        let _guard = self.lock_key(append.key);
        let entry = self.inner.index.get(append.key)?;
        let version = entry.as_deref().map_or(0, |e| e.events.len() as u64);
        if version != append.expected_version {
            return Ok(Appended::Raced);
        }
        let after = self.write_events(append.key, entry.as_deref(), append.events.to_vec())?;
        Ok(Appended::Done {
            version: after.events.len() as u64,
        })
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        Ledger::list(self, phase, after, limit)
    }

    fn key_of(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.inner.index.key_for_reference(reference)
    }

    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.wait_indexed()?;
        self.inner.index.due(now, limit)
    }
}
