//! # payledger
//!
//! An embedded, event-sourced payment ledger. A payment service records every payment intent
//! and every provider outcome here *before* acting, and asks the ledger whether a charge may be
//! sent. The promise: **for one idempotency key, at most one charge can ever be in flight or
//! succeeded at the provider, and the ledger can represent no other state.**
//!
//! The pure core is [`PaymentState`] and its fold [`apply`]: the events of one key decide what
//! the gate answers ([`Decision`]). Start with `ARCHITECTURE.md` for the map.
//!
//! ```
//! use payledger::*;
//!
//! let key = IdempotencyKey::new("order-7/pay")?;
//! let intent = Intent {
//!     amount: Amount::new(2_500)?,
//!     currency: Currency::new("EUR")?,
//!     account: AccountId::new("acct_42")?,
//!     customer: CustomerRef::new("cus_9")?,
//!     description: None,
//!     metadata: Metadata::default(),
//! };
//! let state = PaymentState::new(key.clone());
//! assert_eq!(
//!     state.decide(&intent.fingerprint()),
//!     Decision::Attempt(AttemptPlan { attempt: AttemptNumber::FIRST, record_intent: true })
//! );
//! # Ok::<(), payledger::InputError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "async")]
pub mod asynchronous;
pub mod clock;
pub mod error;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod index;
pub mod journal;
pub mod ledger;
pub mod limits;
mod model;
pub mod provider;
pub mod reconcile;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
mod sync;
pub mod telemetry;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use clock::{Clock, ManualClock, MonotonicMillis, SystemClock};
pub use error::{CodecError, Corruption, Error, FatalCause, IndexError, Result, TooLarge};
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use index::IndexFaults;
#[cfg(feature = "sim")]
pub use journal::simdisk::{CrashMode, PowerLossCounts, SimDisk};
pub use journal::storage::{FsStorage, Storage};
pub use journal::{
    Appended, Journal, JournalConfig, JournalRecord, RecordPosition, RecoveryReport, TornTail,
    VerifyReport,
};

pub use ledger::{
    Alert, AlertThresholds, Begin, ChargeReport, EvidenceOutcome, Health, HistoryEntry,
    IndexEngine, IndexRecovery, Ledger, LedgerConfig, OpenReport, OperationBegin, OperationHealth,
    OperationTicket, Ticket,
};
pub use model::{
    AccountId, Amount, AttemptNumber, AttemptPlan, Charge, Contradiction, Currency, CustomerRef,
    Decision, DeclineCode, Description, Event, EventKind, EvidenceSource, Finding, Fingerprint,
    IdempotencyKey, InputError, Intent, IntentSummary, Metadata, NotFoundPolicy, NotSentReason,
    Note, OperationKind, OperationPlan, OperationState, OperationStep, Operator, Outcome,
    PaymentState, Phase, PhaseKind, PrimaryKind, ProviderReference, QueryAnswer, ReconcileConfig,
    Rejection, RejectionReason, RequestId, Resolution, ReviewReason, Sequence, Sums, TransactionId,
    UnixMillis, UnknownReason, Verdict, apply,
};
pub use provider::{ChargeReply, ChargeRequest, Provider, QueryReply};
pub use reconcile::{ReconcileReport, Reconciler};
