//! The event-store seam: what a store must do so that the ledger's decisions hold on it.
//!
//! The fold and the gate decide (`model`); a store orders and persists one key's events;
//! [`StoreLedger`] runs the charge's discipline over any store. The
//! embedded journal + index is one implementation ([`Ledger`](crate::Ledger) implements
//! [`EventStore`]); the seam exists for a store that several processes share (PostgreSQL,
//! `store-postgres/`).
//!
//! Invariants a store must keep (`tests/scenarios/store.rs` checks them on each implementation):
//! - **compare-and-append per key**: [`EventStore::append`] writes a key's events only if the
//!   key still has `expected_version` events, atomically, all or none; otherwise it answers
//!   [`Appended::Raced`] and writes nothing. Two writers that both saw version *n* cannot both
//!   append: this is what keeps a second attempt from being started by another process;
//! - **durable before `Done`**: an append answered [`Appended::Done`] survives a crash of the
//!   process and of the store's host (as far as the store's own durability goes: `fdatasync`
//!   for the journal, the WAL flush, and a synchronous standby if configured, for PostgreSQL);
//!   an append whose answer was lost is resolved by reading back, never by guessing;
//! - **the fold on load**: [`EventStore::load`] returns the state the key's events fold to, and
//!   its version (the number of its events);
//! - **references are found**: every provider reference an appended `AttemptStarted` (or an
//!   operation's attempt) carries maps back to its key ([`EventStore::key_of`]) once the append
//!   is `Done`.

mod ledger;
mod shard;

pub use ledger::{StoreConfig, StoreLedger, StoreTicket};
pub use shard::{LOGICAL_SHARDS_MAX, ShardMap, Sharded, logical_shard};

use crate::error::Result;
use crate::model::{Event, IdempotencyKey, PaymentState, PhaseKind, ProviderReference, UnixMillis};

/// A key as a store holds it: the state its events fold to and how many events it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The folded state.
    pub state: PaymentState,
    /// The number of the key's events: what the next append must expect.
    pub version: u64,
}

/// One compare-and-append: `events` after the key's first `expected_version` events.
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    /// The key.
    pub key: &'a IdempotencyKey,
    /// How many events the writer saw (0 for a new key).
    pub expected_version: u64,
    /// The events to append, in order (at least one).
    pub events: &'a [Event],
    /// The state they fold to (the writer folded them): for the store's lists.
    pub after: &'a PaymentState,
    /// When the reconciler should next look at the key, if it waits for an answer.
    pub next_query_at: Option<UnixMillis>,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Durable; the key now has `version` events.
    Done {
        /// The key's new version.
        version: u64,
    },
    /// Someone else appended to the key first: nothing was written. Load it again and decide
    /// again.
    Raced,
}

/// A store of payment keys' events. See the module docs for the invariants it must keep.
pub trait EventStore: Send + Sync {
    /// The key's state and version, or `None` for a key with no events.
    ///
    /// # Errors
    /// The store's errors; events it cannot decode or fold are errors, never skipped.
    fn load(&self, key: &IdempotencyKey) -> Result<Option<StoredKey>>;

    /// Appends `append.events` if the key still has `append.expected_version` events.
    ///
    /// # Errors
    /// The store's errors; an error means the append may or may not have happened only if the
    /// store says so (`Error::Io` of a connection lost after COMMIT is resolved by the store
    /// before it answers).
    fn append(&self, append: Append<'_>) -> Result<Appended>;

    /// Up to `limit` keys in `phase`, after `after` in key order.
    ///
    /// # Errors
    /// The store's errors.
    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>>;

    /// The key whose attempt was sent with `reference` (a webhook or a settlement line names
    /// only the reference), or `None` if no key of this store started it.
    ///
    /// # Errors
    /// The store's errors.
    fn key_of(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>>;

    /// Up to `limit` keys whose next query time is at or before `now`.
    ///
    /// # Errors
    /// The store's errors.
    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>>;
}
