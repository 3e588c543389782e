//! `Ledger`: the gate, the single writer of events, joining the fold, the journal and the index.
//!
//! Invariants:
//! - every event passes the fold before it is appended, and the index is updated only after the
//!   journal sync; requests for one key are serialised by a per-key lock, so two simultaneous
//!   `begin` calls for a key yield exactly one attempt;
//! - an attempt's `AttemptStarted` event is durable before its ticket exists, so before any
//!   provider call;
//! - an attempt with no outcome never looks retryable: a dropped ticket, a process that ended, a
//!   ticket whose lease expired, or an outcome that could not be written all leave the key
//!   unknown for the reconciler;
//! - every event is stamped by the ledger's own clock; waits that protect money are measured on
//!   its monotonic clock, in this process;
//! - the index is applied off the commit path, but a writer installs its key's new state in the
//!   index overlay before releasing the key's lock, so the gate always decides on every durable
//!   event of the key;
//! - an index failure stops the ledger (the index could be stale, and a stale state could allow
//!   a second attempt); reopening catches the index up from the journal.
//!
//! Files: `config.rs` (how it is opened), `open.rs` (recovery of journal and index),
//! `replay.rs` (bringing an index up to the journal), `write.rs` (the single write path),
//! `batch.rs` (feature `async`: calls staged together, one commit), `api.rs` (begin, record, charge_once, evidence,
//! resolve), `reconciliation.rs` (the narrow interface the reconciler uses), `query.rs`
//! (state, history, lists, health), `ticket.rs`, `replies.rs` (the answer types).
//!
//! ```
//! use payledger::*;
//!
//! let dir = tempfile::tempdir()?;
//! let (ledger, _report) = Ledger::open(dir.path(), LedgerConfig::default())?;
//! let key = IdempotencyKey::new("order-9/pay")?;
//! let intent = Intent {
//!     amount: Amount::new(1_250)?,
//!     currency: Currency::new("EUR")?,
//!     account: AccountId::new("acct_1")?,
//!     customer: CustomerRef::new("cus_1")?,
//!     description: None,
//!     metadata: Metadata::default(),
//! };
//! match ledger.begin(&key, &intent)? {
//!     Begin::Attempt(ticket) => {
//!         // Send ticket.provider_reference() to the provider as its idempotency key, then:
//!         let outcome = Outcome::Succeeded {
//!             transaction_id: TransactionId::new("ch_1")?,
//!             amount: intent.amount,
//!         };
//!         ledger.record(ticket, outcome)?;
//!     }
//!     other => panic!("a new key starts an attempt, got {other:?}"),
//! }
//! // The client retries: the stored result is replayed, nothing is sent.
//! assert!(matches!(ledger.begin(&key, &intent)?, Begin::AlreadySucceeded { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alerts;
mod api;
#[cfg(feature = "async")]
mod batch;
mod config;
mod open;
mod operations;
mod query;
mod reconciliation;
mod replay;
mod replies;
mod store;
mod ticket;
mod write;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::clock::MonotonicMillis;
use crate::error::{Error, Result};
use crate::gate::KeyGate;
use crate::index::LiveIndex;
use crate::journal::Journal;
use crate::model::{AttemptNumber, IdempotencyKey, UnixMillis};
use crate::model::{Event, EventKind};

pub use alerts::{Alert, AlertThresholds};
#[cfg(feature = "async")]
pub(crate) use api::outcome_within;
pub(crate) use api::{call_provider, check_deadline};
#[cfg(feature = "async")]
pub(crate) use batch::{Answer, Call};
pub use config::{IndexEngine, LedgerConfig};
pub use operations::OperationBegin;
pub use replies::{
    Begin, ChargeReport, EvidenceOutcome, Health, HistoryEntry, IndexRecovery, OpenReport,
    OperationHealth,
};
pub use ticket::{OperationTicket, Ticket};

#[derive(Debug)]
struct Inner {
    journal: Journal,
    index: LiveIndex,
    config: LedgerConfig,
    gate: KeyGate,
    /// Since when this process has waited for each unknown attempt (of a key's primary or of
    /// one of its operations), on the monotonic clock.
    unknown_since: Mutex<HashMap<(IdempotencyKey, Track), UnknownWait>>,
    /// How many waits `unknown_since` holds, stored under its lock: while it is zero (this
    /// process watches no unknown attempt at all), a write does not take that lock. One
    /// long-lived unknown attempt, or one waiting for review, turns the shortcut off for every
    /// write until it is settled.
    unknown_watched: AtomicUsize,
    /// Where the reconciler's scan of in-flight keys resumes, so every key gets its turn.
    in_flight_cursor: Mutex<Option<IdempotencyKey>>,
    /// Where the reconciler's scan of keys with an operation in flight resumes.
    operations_cursor: Mutex<Option<IdempotencyKey>>,
    /// Live tickets of operations: (key, ordinal) → the attempt and when its ticket was issued.
    operations_live: Mutex<HashMap<(IdempotencyKey, u32), (AttemptNumber, MonotonicMillis)>>,
    /// Operations whose outcome could not be written: (key, ordinal) → the attempt and since
    /// when. `state` and `health` show such an attempt unknown while the index still has it in
    /// flight, as the gate's `unwritten` does for a key's primary.
    operations_unwritten: Mutex<HashMap<(IdempotencyKey, u32), (AttemptNumber, UnixMillis)>>,
}

impl Inner {
    /// A ledger's state over an opened journal and index, nothing in flight yet.
    fn new(journal: Journal, index: LiveIndex, config: LedgerConfig) -> Self {
        Self {
            journal,
            index,
            config,
            gate: KeyGate::new(),
            unknown_since: Mutex::new(HashMap::new()),
            unknown_watched: AtomicUsize::new(0),
            in_flight_cursor: Mutex::new(None),
            operations_cursor: Mutex::new(None),
            operations_live: Mutex::new(HashMap::new()),
            operations_unwritten: Mutex::new(HashMap::new()),
        }
    }

    /// The ticket of operation `ordinal` of `key` for `attempt` is gone (recorded, dropped or
    /// taken over). A ticket of another attempt stays live: a late ticket never releases its
    /// successor's.
    fn release_operation(&self, key: &IdempotencyKey, ordinal: u32, attempt: AttemptNumber) {
        let mut live = crate::sync::lock(&self.operations_live);
        let id = (key.clone(), ordinal);
        if live.get(&id).is_some_and(|(a, _)| *a == attempt) {
            live.remove(&id);
        }
    }
}

/// Which of a key's tracks an attempt belongs to: its primary (the charge or authorisation) or
/// the operation with an ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Track {
    Primary,
    Operation(u32),
}

/// How long the ledger has waited for one unknown attempt: what earlier processes recorded,
/// plus the monotonic time since this process started watching it.
#[derive(Clone, Copy, Debug)]
struct UnknownWait {
    attempt: AttemptNumber,
    /// The wait recorded before this process started watching.
    before_ms: u64,
    /// When this process started watching, on its monotonic clock.
    since: MonotonicMillis,
}

/// An open ledger. Clones share it; it is `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Inner>,
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Ledger {
    /// The ledger's wall clock: every event is stamped with it.
    fn now(&self) -> UnixMillis {
        self.inner.config.clock.now()
    }

    /// The ledger's monotonic clock: every wait that protects money is measured on it.
    pub(crate) fn monotonic_now(&self) -> MonotonicMillis {
        self.inner.config.clock.monotonic()
    }

    /// An event about `key`, stamped now.
    fn event(&self, key: &IdempotencyKey, kind: EventKind) -> Event {
        Event {
            key: key.clone(),
            at: self.now(),
            kind,
        }
    }

    fn lock_key(&self, key: &IdempotencyKey) -> crate::sync::MutexGuard<'_, ()> {
        self.inner.gate.lock(key)
    }

    fn writable(&self) -> Result<()> {
        if self.inner.config.read_only {
            return Err(Error::ReadOnly);
        }
        if let Some(cause) = self.inner.index.failure() {
            return Err(Error::IndexFailed { cause });
        }
        Ok(())
    }
}
