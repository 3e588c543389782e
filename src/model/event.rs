//! Events: the facts payledger records, in past tense. Data only.
//!
//! Invariant: an event, once appended, is never rewritten or deleted; a correction is a new
//! event. Every event names its key and carries its own time, so folding a key's events needs
//! nothing but the events.

use serde::{Deserialize, Serialize};

use super::input::{InputError, check_range};
use super::intent::{Fingerprint, Intent};
use super::key::{
    Amount, AttemptNumber, DeclineCode, IdempotencyKey, Note, Operator, ProviderReference,
    RequestId, TransactionId, UnixMillis,
};
use super::operation::{OperationKind, OperationStep};
use crate::limits::{
    CLOCK_SKEW_MARGIN_MS_MAX, NOT_FOUND_ANSWERS_MIN, QUERIES_MAX, VISIBILITY_DELAY_MS_MAX,
    VISIBILITY_DELAY_MS_MIN,
};

/// One fact about one idempotency key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The key the fact is about.
    pub key: IdempotencyKey,
    /// When the ledger recorded it, on the ledger's own wall clock. Informational: no decision
    /// of the fold that could allow a second charge depends on it.
    pub at: UnixMillis,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EventKind {
    /// The caller asked for a payment under this key.
    IntentRecorded {
        /// The request.
        intent: Intent,
        /// Its fingerprint, stored so that a reused key is recognised without re-hashing.
        fingerprint: Fingerprint,
    },
    /// An attempt was about to be sent to the provider. Durable *before* the provider call.
    AttemptStarted {
        /// Which attempt.
        attempt: AttemptNumber,
        /// The reference sent to the provider, derived from (key, attempt).
        provider_reference: ProviderReference,
    },
    /// The result of the provider call, as the caller saw it.
    OutcomeReported {
        /// Which attempt.
        attempt: AttemptNumber,
        /// What the caller learned.
        outcome: Outcome,
    },
    /// The reconciler asked the provider about an attempt.
    ProviderQueried {
        /// Which attempt.
        attempt: AttemptNumber,
        /// What the provider answered.
        answer: QueryAnswer,
    },
    /// Evidence about an attempt arrived from outside a call: a webhook or a settlement line.
    EvidenceReceived {
        /// Which attempt.
        attempt: AttemptNumber,
        /// Where it came from.
        source: EvidenceSource,
        /// What it says.
        finding: Finding,
    },
    /// The key was handed to a human: the reconciler could not settle it within its bounds.
    EscalatedToReview {
        /// Which attempt.
        attempt: AttemptNumber,
        /// Why.
        reason: ReviewReason,
    },
    /// An operator settled an unknown or in-review attempt.
    ResolvedByOperator {
        /// Which attempt.
        attempt: AttemptNumber,
        /// The operator's finding.
        resolution: Resolution,
        /// Who.
        operator: Operator,
        /// Why.
        note: Note,
    },
    /// Evidence contradicted what the ledger held, e.g. a success for an attempt considered
    /// not charged, or a second success. The key needs a refund or a human.
    ConflictDetected {
        /// Which attempt the evidence is about.
        attempt: AttemptNumber,
        /// Where it came from.
        source: EvidenceSource,
        /// What it says.
        finding: Finding,
    },
    /// The caller asked for an authorisation (a hold, captured or voided later) under this key:
    /// the key's first event, as `IntentRecorded` is for a purchase. Its attempts are the
    /// charge's (`AttemptStarted` ...); a success means authorised.
    AuthorizationRecorded {
        /// The request.
        intent: Intent,
        /// [`Intent::authorization_fingerprint`].
        fingerprint: Fingerprint,
        /// Several partial captures may be taken (else one).
        multiple_captures: bool,
    },
    /// A capture, void or refund was requested: it counts against its budget from now on.
    OperationRequested {
        /// Its ordinal within the key, from 1, without gaps.
        ordinal: u32,
        /// What it does.
        kind: OperationKind,
        /// The caller's id for it.
        request_id: RequestId,
        /// Its amount, in the key's currency.
        amount: Amount,
    },
    /// A step of a capture, void or refund: the facts of a charge attempt, about the
    /// operation's own attempts.
    OperationStepped {
        /// The operation.
        ordinal: u32,
        /// What happened.
        step: OperationStep,
    },
}

/// The result of one provider call as the caller classified it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// The provider charged.
    Succeeded {
        /// The provider's id for the charge.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The provider refused the charge.
    Declined {
        /// The provider's code.
        code: DeclineCode,
    },
    /// The request provably never reached the provider.
    NotSent {
        /// How that is known.
        reason: NotSentReason,
    },
    /// The request may or may not have been processed.
    Unknown {
        /// Why the outcome is unknown.
        reason: UnknownReason,
    },
}

/// How a caller knows a request never reached the provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum NotSentReason {
    /// The connection was refused before any byte was sent.
    ConnectionRefused,
    /// The deadline passed before the request was sent.
    DeadlineBeforeSend,
    /// The provider rejected the request as malformed before processing it (a 4xx that the
    /// provider documents as "not processed").
    RejectedBeforeProcessing,
}

/// Why an outcome is unknown.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum UnknownReason {
    /// No reply before the deadline.
    Timeout,
    /// The connection dropped after the request was sent.
    ConnectionLost,
    /// The provider answered with a server error.
    ProviderError {
        /// The HTTP-like status.
        status: u16,
    },
    /// The provider's reply could not be understood.
    UnparseableReply,
    /// The reply arrived but could not be written to the journal.
    LocalWriteFailed,
    /// The process that held the attempt ended without recording an outcome.
    ProcessEnded,
    /// The caller dropped its ticket without recording an outcome.
    TicketDropped,
    /// The ticket's lease expired before its outcome was recorded (a hung provider call); the
    /// reconciler took the attempt over.
    LeaseExpired,
}

/// The provider's answer to a status query.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// The provider has the charge and it succeeded.
    FoundSucceeded {
        /// The provider's id for the charge.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The provider has the request and declined it.
    FoundDeclined {
        /// The provider's code.
        code: DeclineCode,
    },
    /// The provider has the request and has not finished it.
    FoundPending,
    /// The provider has no record of the reference, as recorded by ledgers before the
    /// monotonic wait existed: trusted by the wall-clock time between the unknown outcome and
    /// this answer. Never written any more; kept so that old journals fold to the same states.
    NotFound {
        /// The reconciler's policy at the time, carried so that the fold stays pure.
        policy: NotFoundPolicy,
    },
    /// The query itself failed; nothing was learned.
    QueryFailed {
        /// Why.
        reason: UnknownReason,
    },
    /// The provider has no record of the reference. Trusted only as far as `policy` allows,
    /// counting `waited_ms`: how long the ledger had waited on its monotonic clock since the
    /// attempt became unknown (or since this process first saw it unknown), so that no step of
    /// the wall clock can shorten the provider's visibility delay.
    NotFoundAfterWait {
        /// The reconciler's policy at the time, carried so that the fold stays pure.
        policy: NotFoundPolicy,
        /// Monotonic milliseconds waited, measured by the ledger.
        waited_ms: u64,
    },
}

/// When "not found" may be trusted: only after the provider's visibility delay (plus a margin
/// for clock skew) has passed since the attempt became unknown, and after enough consistent
/// answers. Validated on construction and on decoding: the delay is at least
/// [`VISIBILITY_DELAY_MS_MIN`] and at least [`NOT_FOUND_ANSWERS_MIN`] answers are required.
///
/// ```
/// use payledger::NotFoundPolicy;
/// let policy = NotFoundPolicy::new(60_000, 5_000, 3)?;
/// assert_eq!(policy.wait_ms(), 65_000);
/// assert!(NotFoundPolicy::new(0, 5_000, 3).is_err(), "a zero delay trusts the first answer");
/// assert!(NotFoundPolicy::new(60_000, 5_000, 0).is_err());
/// # Ok::<(), payledger::InputError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "NotFoundPolicyFields")]
pub struct NotFoundPolicy {
    visibility_delay_ms: u64,
    clock_skew_margin_ms: u64,
    consistent_answers_min: u32,
}

/// The fields of a [`NotFoundPolicy`] as encoded, before validation.
#[derive(Deserialize)]
struct NotFoundPolicyFields {
    visibility_delay_ms: u64,
    clock_skew_margin_ms: u64,
    consistent_answers_min: u32,
}

impl TryFrom<NotFoundPolicyFields> for NotFoundPolicy {
    type Error = InputError;
    fn try_from(fields: NotFoundPolicyFields) -> Result<Self, InputError> {
        Self::new(
            fields.visibility_delay_ms,
            fields.clock_skew_margin_ms,
            fields.consistent_answers_min,
        )
    }
}

impl NotFoundPolicy {
    /// A policy: "not found" is trusted once `visibility_delay_ms + clock_skew_margin_ms` have
    /// passed and `consistent_answers_min` consecutive answers agree.
    ///
    /// # Errors
    /// [`InputError::Config`] for a delay outside [`VISIBILITY_DELAY_MS_MIN`] to
    /// [`VISIBILITY_DELAY_MS_MAX`], a margin above [`CLOCK_SKEW_MARGIN_MS_MAX`], or fewer than
    /// [`NOT_FOUND_ANSWERS_MIN`] (or more than [`QUERIES_MAX`]) answers.
    pub fn new(
        visibility_delay_ms: u64,
        clock_skew_margin_ms: u64,
        consistent_answers_min: u32,
    ) -> Result<Self, InputError> {
        check_range(
            "visibility_delay_ms",
            visibility_delay_ms,
            VISIBILITY_DELAY_MS_MIN,
            VISIBILITY_DELAY_MS_MAX,
        )?;
        check_range(
            "clock_skew_margin_ms",
            clock_skew_margin_ms,
            0,
            CLOCK_SKEW_MARGIN_MS_MAX,
        )?;
        check_range(
            "consistent_answers_min",
            u64::from(consistent_answers_min),
            u64::from(NOT_FOUND_ANSWERS_MIN),
            u64::from(QUERIES_MAX),
        )?;
        Ok(Self {
            visibility_delay_ms,
            clock_skew_margin_ms,
            consistent_answers_min,
        })
    }

    /// How long after a charge the provider may still not show it.
    pub fn visibility_delay_ms(&self) -> u64 {
        self.visibility_delay_ms
    }

    /// Extra wait for skew between our clock and the provider's.
    pub fn clock_skew_margin_ms(&self) -> u64 {
        self.clock_skew_margin_ms
    }

    /// Consecutive "not found" answers required, including the last one.
    pub fn consistent_answers_min(&self) -> u32 {
        self.consistent_answers_min
    }

    /// The default: a 60 s visibility delay, a 5 s margin, 3 consistent answers.
    pub const DEFAULT: NotFoundPolicy = NotFoundPolicy {
        visibility_delay_ms: 60_000,
        clock_skew_margin_ms: 5_000,
        consistent_answers_min: 3,
    };

    /// The whole wait before "not found" may be trusted: delay plus margin.
    pub fn wait_ms(&self) -> u64 {
        self.visibility_delay_ms
            .saturating_add(self.clock_skew_margin_ms)
    }
}

/// Where evidence came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EvidenceSource {
    /// A provider webhook.
    Webhook,
    /// A settlement or payout report line.
    Settlement,
    /// A status query answer.
    Query,
    /// The reply to the call itself, arriving after the attempt was settled otherwise.
    Reply,
}

/// What a piece of evidence says about an attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Finding {
    /// The attempt charged.
    Charged {
        /// The provider's id for the charge.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The attempt was declined.
    Declined {
        /// The provider's code.
        code: DeclineCode,
    },
}

/// Why a key went to manual review.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ReviewReason {
    /// The reconciler asked this many times without a definitive answer.
    QueriesExhausted {
        /// Queries made.
        queries: u32,
    },
    /// An operator or the service asked for it.
    Requested,
}

/// An operator's finding for an unknown or in-review attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Resolution {
    /// The attempt charged (seen in the provider's dashboard, say).
    Charged {
        /// The provider's id for the charge.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The attempt was declined.
    Declined {
        /// The provider's code.
        code: DeclineCode,
    },
    /// The attempt provably did not charge; a new attempt may be made.
    NotCharged,
}

impl EventKind {
    /// The attempt of the key's own charge (or authorisation) the event is about, if any;
    /// operations' attempts are their own ([`OperationStep::attempt`]).
    pub fn attempt(&self) -> Option<AttemptNumber> {
        match self {
            EventKind::IntentRecorded { .. }
            | EventKind::AuthorizationRecorded { .. }
            | EventKind::OperationRequested { .. }
            | EventKind::OperationStepped { .. } => None,
            EventKind::AttemptStarted { attempt, .. }
            | EventKind::OutcomeReported { attempt, .. }
            | EventKind::ProviderQueried { attempt, .. }
            | EventKind::EvidenceReceived { attempt, .. }
            | EventKind::EscalatedToReview { attempt, .. }
            | EventKind::ResolvedByOperator { attempt, .. }
            | EventKind::ConflictDetected { attempt, .. } => Some(*attempt),
        }
    }

    /// A short name for logs, errors and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::IntentRecorded { .. } => "intent recorded",
            EventKind::AttemptStarted { .. } => "attempt started",
            EventKind::OutcomeReported { .. } => "outcome reported",
            EventKind::ProviderQueried { .. } => "provider queried",
            EventKind::EvidenceReceived { .. } => "evidence received",
            EventKind::EscalatedToReview { .. } => "escalated to review",
            EventKind::ResolvedByOperator { .. } => "resolved by operator",
            EventKind::ConflictDetected { .. } => "conflict detected",
            EventKind::AuthorizationRecorded { .. } => "authorization recorded",
            EventKind::OperationRequested { .. } => "operation requested",
            EventKind::OperationStepped { step, .. } => match step {
                OperationStep::AttemptStarted { .. } => "operation attempt started",
                OperationStep::OutcomeReported { .. } => "operation outcome reported",
                OperationStep::ProviderQueried { .. } => "operation provider queried",
                OperationStep::EvidenceReceived { .. } => "operation evidence received",
                OperationStep::EscalatedToReview { .. } => "operation escalated to review",
                OperationStep::ResolvedByOperator { .. } => "operation resolved by operator",
                OperationStep::ConflictDetected { .. } => "operation conflict detected",
            },
        }
    }
}
