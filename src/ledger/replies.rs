//! The answers the ledger gives: to `open`, to `begin`, to `charge_once`, to evidence, and the
//! figures of `health`.
//!
//! Invariant: every outcome of normal operation is a value the caller must match (a reused key,
//! a key in flight or awaiting reconciliation), never an error.

use crate::event::{Event, Outcome};
use crate::intent::Fingerprint;
use crate::journal::{JournalStats, RecoveryReport};
use crate::key::{Amount, AttemptNumber, DeclineCode, Sequence, TransactionId};
use crate::payment::{Decision, Phase};

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

/// The gate's answer to `begin`. Every variant is a normal outcome the caller must handle.
#[derive(Debug)]
#[must_use = "an attempt ticket must be recorded; other answers must be relayed to the client"]
pub enum Begin {
    /// Call the provider now with this ticket's reference; the attempt is already durable.
    Attempt(Ticket),
    /// The key charged: reply with the stored result.
    AlreadySucceeded {
        /// The attempt that charged.
        attempt: AttemptNumber,
        /// The provider's id.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The key was declined: reply with the stored decline.
    AlreadyDeclined {
        /// The declined attempt.
        attempt: AttemptNumber,
        /// The provider's code.
        code: DeclineCode,
    },
    /// Every allowed attempt provably failed without charging.
    AttemptsExhausted {
        /// The last attempt.
        attempt: AttemptNumber,
    },
    /// Another request for this key holds the attempt right now.
    InFlight {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// The outcome is unknown; the reconciler will settle it. Do not charge.
    AwaitingReconciliation {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// A human is settling the key.
    InReview {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// Evidence contradicts the ledger (a possible double charge); a human must act.
    InConflict {
        /// The attempt the evidence is about.
        attempt: AttemptNumber,
    },
    /// The key was used for a different intent; nothing was appended.
    KeyReused {
        /// The fingerprint on record.
        recorded: Fingerprint,
        /// The fingerprint requested.
        requested: Fingerprint,
    },
}

impl Begin {
    /// The decision this answer stands for, for relaying or logging (an attempt shows as
    /// `StartAttempt`; its ticket stays with the caller).
    pub fn decision(&self) -> Decision {
        match self {
            Begin::Attempt(ticket) => Decision::StartAttempt {
                attempt: ticket.attempt,
                record_intent: false,
            },
            Begin::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Decision::AlreadySucceeded {
                attempt: *attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            },
            Begin::AlreadyDeclined { attempt, code } => Decision::AlreadyDeclined {
                attempt: *attempt,
                code: code.clone(),
            },
            Begin::AttemptsExhausted { attempt } => {
                Decision::AttemptsExhausted { attempt: *attempt }
            }
            Begin::InFlight { attempt } => Decision::InFlight { attempt: *attempt },
            Begin::AwaitingReconciliation { attempt } => {
                Decision::AwaitingReconciliation { attempt: *attempt }
            }
            Begin::InReview { attempt } => Decision::InReview { attempt: *attempt },
            Begin::InConflict { attempt } => Decision::InConflict { attempt: *attempt },
            Begin::KeyReused {
                recorded,
                requested,
            } => Decision::KeyReused {
                recorded: *recorded,
                requested: *requested,
            },
        }
    }

    pub(crate) fn from_decision(decision: Decision) -> Self {
        match decision {
            Decision::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Begin::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            },
            Decision::AlreadyDeclined { attempt, code } => Begin::AlreadyDeclined { attempt, code },
            Decision::AttemptsExhausted { attempt } => Begin::AttemptsExhausted { attempt },
            Decision::InFlight { attempt } => Begin::InFlight { attempt },
            Decision::AwaitingReconciliation { attempt }
            | Decision::StartAttempt { attempt, .. } => Begin::AwaitingReconciliation { attempt },
            Decision::InReview { attempt } => Begin::InReview { attempt },
            Decision::InConflict { attempt } => Begin::InConflict { attempt },
            Decision::KeyReused {
                recorded,
                requested,
            } => Begin::KeyReused {
                recorded,
                requested,
            },
        }
    }
}

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Keys whose outcome is unknown.
    pub unknown: usize,
    /// Age of the oldest unknown outcome, in milliseconds.
    pub oldest_unknown_ms: Option<u64>,
    /// Keys with an attempt in flight.
    pub in_flight: usize,
    /// Age of the oldest attempt in flight, in milliseconds (a hung provider call shows here
    /// until its lease expires).
    pub oldest_in_flight_ms: Option<u64>,
    /// Keys in manual review (the dead-letter).
    pub in_review: usize,
    /// Keys in conflict (possible double charge, needs a refund).
    pub conflict: usize,
    /// Last journal sequence.
    pub last_sequence: Sequence,
    /// Journal sync figures since open.
    pub journal: JournalStats,
}

/// A short name of a `begin` answer, for logs.
pub(crate) fn begin_name(begin: &Begin) -> &'static str {
    match begin {
        Begin::Attempt(_) => "attempt",
        Begin::AlreadySucceeded { .. } => "already succeeded",
        Begin::AlreadyDeclined { .. } => "already declined",
        Begin::AttemptsExhausted { .. } => "attempts exhausted",
        Begin::InFlight { .. } => "in flight",
        Begin::AwaitingReconciliation { .. } => "awaiting reconciliation",
        Begin::InReview { .. } => "in review",
        Begin::InConflict { .. } => "in conflict",
        Begin::KeyReused { .. } => "key reused",
    }
}
