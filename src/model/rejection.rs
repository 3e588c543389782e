//! Why the fold refuses an event.
//!
//! Invariant: every refusal names the phase, the event and the reason, so an operator reading
//! an error knows which rule held.

/// Why the fold refused an event.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectionReason {
    /// The event names another key.
    #[error("the event is for another key")]
    KeyMismatch,
    /// Nothing may happen to a key before its intent is recorded.
    #[error("no intent is recorded for the key")]
    NoIntent,
    /// One key carries one intent forever.
    #[error("an intent is already recorded for the key")]
    IntentAlreadyRecorded,
    /// The stored fingerprint does not match the intent it claims to hash.
    #[error("the fingerprint does not match the intent")]
    FingerprintMismatch,
    /// Attempts are numbered without gaps.
    #[error("attempt {got} started, expected attempt {expected}")]
    AttemptOutOfOrder {
        /// The attempt the state allows.
        expected: u32,
        /// The attempt in the event.
        got: u32,
    },
    /// The provider reference must be the one derived from (key, attempt).
    #[error("the provider reference is not the one derived from key and attempt")]
    ProviderReferenceMismatch,
    /// A new attempt while another may have charged: the double charge payledger exists to
    /// prevent.
    #[error("attempt {attempt} may have charged and is not resolved")]
    AttemptUnresolved {
        /// The possibly-charged attempt.
        attempt: u32,
    },
    /// The key is settled for good.
    #[error("the key is settled")]
    Settled,
    /// The event names an attempt that never started.
    #[error("attempt {attempt} never started")]
    UnknownAttempt {
        /// The attempt in the event.
        attempt: u32,
    },
    /// An outcome is only reported for the attempt in flight.
    #[error("attempt {attempt} is not in flight")]
    NotInFlight {
        /// The attempt in the event.
        attempt: u32,
    },
    /// Queries, escalations and resolutions are for the attempt awaiting reconciliation.
    #[error("attempt {attempt} is not awaiting reconciliation")]
    NotAwaitingReconciliation {
        /// The attempt in the event.
        attempt: u32,
    },
    /// Escalating twice adds nothing.
    #[error("the key is already in review")]
    AlreadyInReview,
    /// The evidence contradicts the state: record it as a `ConflictDetected` event instead.
    #[error("the evidence contradicts the recorded state")]
    ConflictingEvidence,
    /// `ConflictDetected` is only for evidence that contradicts the state.
    #[error("the evidence does not contradict the recorded state")]
    NotAConflict,
    /// Captures (executed or in doubt) may not exceed the authorised amount.
    #[error("a capture of {requested} exceeds the {available} still capturable")]
    OverCapture {
        /// Authorised minus every capture not proven unexecuted.
        available: u64,
        /// The capture's amount.
        requested: u64,
    },
    /// Refunds (executed or in doubt) may not exceed what was captured.
    #[error("a refund of {requested} exceeds the {available} still refundable")]
    OverRefund {
        /// Captured minus every refund not proven unexecuted.
        available: u64,
        /// The refund's amount.
        requested: u64,
    },
    /// The operation is not possible in the key's state.
    #[error("a {kind} is not allowed: {why}")]
    OperationNotAllowed {
        /// The operation's kind.
        kind: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A request id names one operation forever: the same id with another kind or amount.
    #[error("the request id names operation {ordinal}, with another kind or amount")]
    RequestIdReused {
        /// The operation it names.
        ordinal: u32,
    },
    /// Operations are numbered without gaps.
    #[error("operation {got} requested, expected operation {expected}")]
    OperationOutOfOrder {
        /// The ordinal the state allows.
        expected: u32,
        /// The ordinal in the event.
        got: u32,
    },
    /// The event names an operation that was never requested.
    #[error("operation {ordinal} was never requested")]
    UnknownOperation {
        /// The ordinal in the event.
        ordinal: u32,
    },
    /// The event is about an operation, but names a charge's event (or the reverse).
    #[error("the event does not apply to an operation")]
    NotAnOperationEvent,
    /// An operator resolution must charge the intent's amount.
    #[error("resolution amount {got} differs from the intent amount {expected}")]
    AmountMismatch {
        /// The intent's amount.
        expected: u64,
        /// The resolution's amount.
        got: u64,
    },
}

/// The fold refused an event: it names the phase, the event and why.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{event} refused while {phase}: {reason}")]
pub struct Rejection {
    /// The phase the key was in.
    pub phase: &'static str,
    /// The event refused.
    pub event: &'static str,
    /// Why.
    pub reason: RejectionReason,
}
