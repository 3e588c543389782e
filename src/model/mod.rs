//! The payment model: validated values, events, the state of one key, the pure fold over its
//! events, the gate's decision and the reconciliation policy. No I/O and no clock.
//!
//! Invariant: everything here is a pure function of its inputs, and every value satisfies its
//! bounds, whether it came from a caller, a provider or the disk. The layers above (journal,
//! index, store, ledger) move these values; only this module decides what they mean.
//!
//! Files: `input.rs` (the refusal type and shared checks), `key.rs` (validated newtypes),
//! `intent.rs` (+ fingerprint), `event.rs` (facts), `state.rs` (`PaymentState`, `Phase`),
//! `fold.rs` (`apply`), `evidence.rs` (weighing evidence), `decide.rs` (the gate's decision),
//! `rejection.rs` (why the fold refuses), `policy.rs` (`ReconcileConfig`), `operation.rs`
//! (captures, voids and refunds, and the sums that bound them).

mod decide;
mod event;
mod evidence;
mod fold;
mod input;
mod intent;
mod key;
mod operation;
mod policy;
mod rejection;
mod state;
#[cfg(test)]
pub(crate) mod tests;

pub use decide::{AttemptPlan, Decision};
pub use event::{
    Event, EventKind, EvidenceSource, Finding, NotFoundPolicy, NotSentReason, Outcome, QueryAnswer,
    Resolution, ReviewReason, UnknownReason,
};
pub use evidence::Verdict;
pub use fold::apply;
pub use input::InputError;
pub(crate) use input::check_range;
pub use intent::{Fingerprint, Intent, Metadata};
pub use key::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, DeclineCode, Description,
    IdempotencyKey, Note, Operator, ProviderReference, RequestId, Sequence, TransactionId,
    UnixMillis,
};
pub use operation::{
    Charge, OperationKind, OperationPlan, OperationState, OperationStep, PrimaryKind, Sums,
};
pub use policy::ReconcileConfig;
pub use rejection::{Rejection, RejectionReason};
pub use state::{Contradiction, IntentSummary, PaymentState, Phase, PhaseKind};
