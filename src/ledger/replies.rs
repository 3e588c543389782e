//! The answers the ledger gives: to `open`, to `begin`, to `charge_once`, to evidence, and the
//! figures of `health`.
//!
//! Invariant: every outcome of normal operation is a value the caller must match (a reused key,
//! a key in flight or awaiting reconciliation), never an error.

use crate::error::FatalCause;
use crate::journal::{JournalStats, RecoveryReport};
use crate::model::Sequence;
use crate::model::{Decision, Phase};
use crate::model::{Event, OperationKind, Outcome};

use super::Ticket;

/// How the index was brought up to date on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRecovery {
    /// The index was caught up by replaying these journal sequences (possibly none).
    CaughtUp {
        /// First sequence replayed.
        from: Sequence,
        /// Last sequence replayed.
        to: Sequence,
    },
    /// A read-only open: the journal was replayed into an in-memory index (the persistent
    /// index cannot be opened without writing to it).
    InMemory {
        /// Events replayed.
        events: u64,
    },
    /// The index was missing, unreadable or inconsistent and was rebuilt from the journal.
    Rebuilt {
        /// Why.
        reason: String,
        /// Events replayed.
        events: u64,
    },
}

/// What opening a ledger found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The journal's recovery.
    pub journal: RecoveryReport,
    /// The index's recovery.
    pub index: IndexRecovery,
    /// Attempts a previous process started without recording an outcome, now unknown.
    pub orphaned_attempts: usize,
}

/// The gate's answer to `begin`: a [`Decision`] whose attempt comes with its [`Ticket`]. Every
/// variant is a normal outcome the caller must handle; on `Attempt` the attempt is already
/// durable and the ticket must be recorded.
pub type Begin = Decision<Ticket>;

/// What `charge_once` did.
#[derive(Debug)]
pub struct ChargeReport {
    /// Whether the provider was called.
    pub called_provider: bool,
    /// The outcome recorded for the call, if one was made.
    pub outcome: Option<Outcome>,
    /// Where the key stands now.
    pub decision: Decision,
}

impl ChargeReport {
    /// The report of a call that was not made: the key's decision said otherwise.
    pub(crate) fn not_called(decision: Decision<std::convert::Infallible>) -> Self {
        Self {
            called_provider: false,
            outcome: None,
            decision: decision.widen(),
        }
    }
}

/// What `record_evidence` did with a webhook or settlement line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvidenceOutcome {
    /// No key in this ledger issued the reference.
    UnknownReference,
    /// Recorded; it confirmed what was held.
    Confirmed,
    /// Recorded; it settled the key into this phase.
    Settled(Phase),
    /// It contradicted the ledger; a `ConflictDetected` event was recorded and the key needs a
    /// refund or a human.
    Conflict,
}

/// One event of a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its journal sequence.
    pub sequence: Sequence,
    /// The event.
    pub event: Event,
}

/// Figures to alert on.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Keys whose outcome is unknown.
    pub unknown: usize,
    /// Age of the oldest unknown outcome, in milliseconds.
    pub unknown_age_ms_max: Option<u64>,
    /// Keys with an attempt in flight.
    pub in_flight: usize,
    /// Age of the oldest attempt in flight, in milliseconds (a hung provider call shows here
    /// until its lease expires).
    pub in_flight_age_ms_max: Option<u64>,
    /// Keys in manual review (the dead-letter).
    pub in_review: usize,
    /// Age of the oldest key in review, in milliseconds.
    pub in_review_age_ms_max: Option<u64>,
    /// Keys in conflict (possible double charge, needs a refund).
    pub conflict: usize,
    /// Last journal sequence.
    pub last_sequence: Sequence,
    /// The index's watermark: the last journal sequence it reflects. `last_sequence` minus this
    /// is how far the index lags the journal.
    pub index_watermark: Sequence,
    /// Durable commits waiting for the index applier (bounded by
    /// [`crate::limits::INDEX_BACKLOG_MAX`] plus the concurrent writers).
    pub index_backlog: usize,
    /// Journal sync figures since open.
    pub journal: JournalStats,
    /// The failure that stopped the ledger (the journal's first failed write or sync, or the
    /// index's first failed update), if one did: every call fails until it is reopened.
    pub fatal: Option<FatalCause>,
    /// Captures, voids and refunds in doubt, by kind (only kinds with any).
    pub operations: Vec<OperationHealth>,
}

/// Captures, voids or refunds of one kind that are in doubt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperationHealth {
    /// The kind.
    pub kind: OperationKind,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Operations in manual review.
    pub in_review: usize,
    /// Operations in conflict (evidence contradicted them, or broke a bound).
    pub conflict: usize,
    /// Age of the oldest unknown one, in milliseconds.
    pub unknown_age_ms_max: Option<u64>,
}
