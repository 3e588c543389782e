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
//!     Decision::StartAttempt { attempt: AttemptNumber::FIRST, record_intent: true }
//! );
//! # Ok::<(), payledger::InputError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod index;
pub mod intent;
pub mod journal;
pub mod key;
pub mod ledger;
pub mod limits;
pub mod payment;
pub mod reconcile;
pub mod sim;
mod sync;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, InputError, Result};
pub use event::{
    Event, EventKind, EvidenceSource, Finding, NotFoundPolicy, NotSentReason, Outcome, QueryAnswer,
    Resolution, ReviewReason, UnknownReason,
};
pub use intent::{Fingerprint, Intent, Metadata};
pub use journal::storage::{CrashMode, FsStorage, SimDisk, Storage};
pub use journal::{Journal, JournalConfig, RecoveryReport, TornTail, VerifyReport};
pub use key::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, DeclineCode, Description,
    IdempotencyKey, Note, Operator, ProviderReference, Sequence, TransactionId, UnixMillis,
};
pub use ledger::{
    Begin, ChargeReport, EvidenceOutcome, Health, HistoryEntry, IndexRecovery, Ledger,
    LedgerConfig, OpenReport, Ticket,
};
pub use payment::{
    Decision, IntentSummary, PaymentState, Phase, PhaseKind, Rejection, RejectionReason, Verdict,
    apply,
};
pub use reconcile::{
    ChargeReply, ChargeRequest, Provider, QueryReply, ReconcileConfig, ReconcileReport, Reconciler,
};
