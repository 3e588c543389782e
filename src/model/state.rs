//! `PaymentState`: where one key stands, as the fold of its events leaves it.
//!
//! Invariant: a state holds **at most one possibly-charged attempt**: [`Phase`] names it
//! (in flight, unknown, in review, succeeded, or the attempt a conflict is about), and a
//! contradiction about another attempt waits beside it in [`PaymentState::conflict`].

use serde::{Deserialize, Serialize};

use super::event::{EvidenceSource, Finding, ReviewReason, UnknownReason};
use super::intent::Fingerprint;
use super::key::{
    Amount, AttemptNumber, Currency, DeclineCode, IdempotencyKey, TransactionId, UnixMillis,
};
use super::operation::{Charge, OperationState, PrimaryKind};

/// What the ledger keeps of a key's intent: enough to recognise a reused key and to check the
/// amount of a reported charge.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct IntentSummary {
    /// The fingerprint of the recorded intent.
    pub fingerprint: Fingerprint,
    /// Its amount.
    pub amount: Amount,
    /// Its currency.
    pub currency: Currency,
    /// When it was recorded.
    pub recorded_at: UnixMillis,
}

/// Where a key stands.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Phase {
    /// No intent recorded.
    Vacant,
    /// No attempt is possibly charged; `next_attempt` may be started.
    Ready {
        /// The attempt the gate will start next.
        next_attempt: AttemptNumber,
    },
    /// An attempt started and no outcome is recorded yet.
    InFlight {
        /// The attempt.
        attempt: AttemptNumber,
        /// When it started.
        started_at: UnixMillis,
    },
    /// The attempt may or may not have charged; the reconciler must find out.
    Unknown {
        /// The attempt.
        attempt: AttemptNumber,
        /// When it started.
        started_at: UnixMillis,
        /// When it became unknown.
        since: UnixMillis,
        /// Why.
        reason: UnknownReason,
        /// Queries answered so far without a definitive answer.
        queries: u32,
        /// Consecutive "not found" answers.
        not_found_streak: u32,
        /// The provider last said it is processing the request.
        pending: bool,
        /// The longest monotonic wait recorded with a "not found" answer: what earlier processes
        /// measured, so a restart resumes the wait instead of starting it over. Only monotonic
        /// measurements add to it, so no wall-clock step can.
        waited_ms: u64,
    },
    /// A human must settle the attempt.
    InReview {
        /// The attempt.
        attempt: AttemptNumber,
        /// When it started.
        started_at: UnixMillis,
        /// When it was escalated.
        since: UnixMillis,
        /// Why.
        reason: ReviewReason,
    },
    /// The key charged, once. Final.
    Succeeded {
        /// The attempt that charged.
        attempt: AttemptNumber,
        /// The provider's id for the charge.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The provider declined. Final: a new payment needs a new key.
    Declined {
        /// The declined attempt.
        attempt: AttemptNumber,
        /// The provider's code.
        code: DeclineCode,
    },
    /// Every allowed attempt provably did not charge. Final.
    Exhausted {
        /// The last attempt made.
        attempt: AttemptNumber,
    },
    /// Evidence contradicts what the ledger held: a possible double charge, a charge for an
    /// attempt considered not charged, or a charge of the wrong amount. Final: needs a refund or
    /// a human, and is listed and counted until then.
    Conflict {
        /// The attempt the contradicting evidence is about.
        attempt: AttemptNumber,
        /// Where the evidence came from.
        source: EvidenceSource,
        /// What it says.
        finding: Finding,
        /// When the conflict was detected.
        since: UnixMillis,
    },
}

/// The kind of a [`Phase`], without its data: for listing keys by phase.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum PhaseKind {
    /// See [`Phase::Vacant`].
    Vacant = 0,
    /// See [`Phase::Ready`].
    Ready = 1,
    /// See [`Phase::InFlight`].
    InFlight = 2,
    /// See [`Phase::Unknown`].
    Unknown = 3,
    /// See [`Phase::InReview`].
    InReview = 4,
    /// See [`Phase::Succeeded`].
    Succeeded = 5,
    /// See [`Phase::Declined`].
    Declined = 6,
    /// See [`Phase::Exhausted`].
    Exhausted = 7,
    /// See [`Phase::Conflict`].
    Conflict = 8,
    /// A key with a capture, void or refund in flight.
    OperationInFlight = 9,
    /// A key with a capture, void or refund whose outcome is unknown.
    OperationUnknown = 10,
    /// A key with a capture, void or refund in manual review.
    OperationInReview = 11,
    /// A key with a capture, void or refund in conflict.
    OperationConflict = 12,
}

impl PhaseKind {
    /// Every kind, in order.
    pub const ALL: [PhaseKind; 13] = [
        PhaseKind::Vacant,
        PhaseKind::Ready,
        PhaseKind::InFlight,
        PhaseKind::Unknown,
        PhaseKind::InReview,
        PhaseKind::Succeeded,
        PhaseKind::Declined,
        PhaseKind::Exhausted,
        PhaseKind::Conflict,
        PhaseKind::OperationInFlight,
        PhaseKind::OperationUnknown,
        PhaseKind::OperationInReview,
        PhaseKind::OperationConflict,
    ];

    /// The kind's name: the one table of phase names, used by logs, errors, the CLI
    /// (`--state in-review`) and metrics.
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Vacant => "vacant",
            PhaseKind::Ready => "ready",
            PhaseKind::InFlight => "in-flight",
            PhaseKind::Unknown => "unknown",
            PhaseKind::InReview => "in-review",
            PhaseKind::Succeeded => "succeeded",
            PhaseKind::Declined => "declined",
            PhaseKind::Exhausted => "exhausted",
            PhaseKind::Conflict => "conflict",
            PhaseKind::OperationInFlight => "operation-in-flight",
            PhaseKind::OperationUnknown => "operation-unknown",
            PhaseKind::OperationInReview => "operation-in-review",
            PhaseKind::OperationConflict => "operation-conflict",
        }
    }

    /// The list a key with an operation in `phase` appears in, if any.
    pub fn of_operation(phase: &Phase) -> Option<PhaseKind> {
        match phase {
            Phase::InFlight { .. } => Some(PhaseKind::OperationInFlight),
            Phase::Unknown { .. } => Some(PhaseKind::OperationUnknown),
            Phase::InReview { .. } => Some(PhaseKind::OperationInReview),
            Phase::Conflict { .. } => Some(PhaseKind::OperationConflict),
            _ => None,
        }
    }
}

impl std::str::FromStr for PhaseKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PhaseKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}; one of: {}",
                    PhaseKind::ALL.map(PhaseKind::name).join(", ")
                )
            })
    }
}

impl Phase {
    /// The phase's kind.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Vacant => PhaseKind::Vacant,
            Phase::Ready { .. } => PhaseKind::Ready,
            Phase::InFlight { .. } => PhaseKind::InFlight,
            Phase::Unknown { .. } => PhaseKind::Unknown,
            Phase::InReview { .. } => PhaseKind::InReview,
            Phase::Succeeded { .. } => PhaseKind::Succeeded,
            Phase::Declined { .. } => PhaseKind::Declined,
            Phase::Exhausted { .. } => PhaseKind::Exhausted,
            Phase::Conflict { .. } => PhaseKind::Conflict,
        }
    }

    /// The phase's name: its kind's.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The attempt that may have charged: started and not proven uncharged. At most one exists
    /// by construction; `Conflict` reports the attempt its evidence is about.
    pub fn possibly_charged(&self) -> Option<AttemptNumber> {
        match self {
            Phase::InFlight { attempt, .. }
            | Phase::Unknown { attempt, .. }
            | Phase::InReview { attempt, .. }
            | Phase::Succeeded { attempt, .. }
            | Phase::Conflict { attempt, .. } => Some(*attempt),
            Phase::Vacant
            | Phase::Ready { .. }
            | Phase::Declined { .. }
            | Phase::Exhausted { .. } => None,
        }
    }

    /// Whether nothing but conflicting evidence can change this phase.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded { .. }
                | Phase::Declined { .. }
                | Phase::Exhausted { .. }
                | Phase::Conflict { .. }
        )
    }
}

/// The result of folding one key's events.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PaymentState {
    /// The key.
    pub key: IdempotencyKey,
    /// The recorded intent, once there is one.
    pub intent: Option<IntentSummary>,
    /// The highest attempt number started (0 before the first).
    pub attempts_started: u32,
    /// Where the key stands.
    pub phase: Phase,
    /// The first contradiction found while another attempt was still in doubt: the key is in
    /// conflict, yet the open attempt stays in its phase (and reconciled) until evidence or an
    /// operator settles it; then the phase becomes [`Phase::Conflict`].
    pub conflict: Option<Contradiction>,
    /// What the key's first operation was: a purchase or an authorisation.
    pub primary: PrimaryKind,
    /// Every charge provider evidence showed for a purchase: the one intended, and any
    /// duplicate a conflict surfaced (refundable, so the conflict can be settled).
    pub charges: Vec<Charge>,
    /// Captures, voids and refunds, by ordinal.
    pub operations: Vec<OperationState>,
}

/// Evidence that contradicted what the ledger held about an attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Contradiction {
    /// The attempt the evidence is about.
    pub attempt: AttemptNumber,
    /// Where it came from.
    pub source: EvidenceSource,
    /// What it says.
    pub finding: Finding,
    /// When it was recorded.
    pub since: UnixMillis,
}

impl Contradiction {
    pub(super) fn into_phase(self) -> Phase {
        Phase::Conflict {
            attempt: self.attempt,
            source: self.source,
            finding: self.finding,
            since: self.since,
        }
    }
}

impl PaymentState {
    /// The state of a key with no events.
    pub fn new(key: IdempotencyKey) -> Self {
        Self {
            key,
            intent: None,
            attempts_started: 0,
            phase: Phase::Vacant,
            conflict: None,
            primary: PrimaryKind::Purchase,
            charges: Vec::new(),
            operations: Vec::new(),
        }
    }

    /// The attempt still in doubt: in flight, unknown or in review.
    pub fn open_attempt(&self) -> Option<AttemptNumber> {
        match &self.phase {
            Phase::InFlight { attempt, .. }
            | Phase::Unknown { attempt, .. }
            | Phase::InReview { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    pub(super) fn amount_matches(&self, amount: Amount) -> bool {
        self.intent.as_ref().is_some_and(|i| i.amount == amount)
    }

    /// The phase after `attempt` provably did not charge.
    pub(super) fn after_not_charged(attempt: AttemptNumber) -> Phase {
        match attempt.next() {
            Some(next_attempt) => Phase::Ready { next_attempt },
            None => Phase::Exhausted { attempt },
        }
    }

    /// The phase after `attempt` charged: `Succeeded`, or `Conflict` for the wrong amount.
    pub(super) fn after_charged(
        &self,
        attempt: AttemptNumber,
        transaction_id: &TransactionId,
        amount: Amount,
        source: EvidenceSource,
        at: UnixMillis,
    ) -> Phase {
        if self.amount_matches(amount) {
            Phase::Succeeded {
                attempt,
                transaction_id: transaction_id.clone(),
                amount,
            }
        } else {
            Phase::Conflict {
                attempt,
                source,
                finding: Finding::Charged {
                    transaction_id: transaction_id.clone(),
                    amount,
                },
                since: at,
            }
        }
    }
}
