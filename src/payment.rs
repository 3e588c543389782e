//! `PaymentState` and its pure fold: the events of one key decide whether a provider call may
//! be made.
//!
//! Invariant: the fold is pure (no I/O, no clock: the same events always give the same state),
//! and its state space holds **at most one possibly-charged attempt** per key. An attempt is
//! possibly charged from the moment it starts until provider evidence or an operator proves it
//! did not charge; while one exists, [`apply`] refuses every new attempt. Provider evidence that
//! contradicts the state (a second success, a success for an attempt considered not charged)
//! can only enter as an explicit [`Phase::Conflict`], never be absorbed silently.
//!
//! ```text
//!            IntentRecorded
//!   Vacant ─────────────────▶ Ready{n} ◀───────────────────────────────┐
//!                                │ AttemptStarted{n}                    │ NotSent / NotFound trusted /
//!                                ▼                                      │ operator: not charged
//!                            InFlight{n} ───────────────────────────────┤ (n < ATTEMPTS_MAX, else Exhausted)
//!          Outcome Unknown /     │ Outcome Succeeded/Declined, evidence │
//!          process ended         │                                      │
//!                 ┌──────────────┘                                      │
//!                 ▼          EscalatedToReview                          │
//!            Unknown{n} ───────────────────────▶ InReview{n} ───────────┤
//!                 │ query found / evidence /         │ evidence / operator
//!                 │ operator                         │
//!                 ▼                                  ▼
//!        Succeeded{n} | Declined{n}  (final; a decline is replayed, never retried)
//!
//!   any phase ── ConflictDetected ──▶ Conflict (final: needs a refund or a human)
//!   (about an earlier attempt while another is InFlight/Unknown/InReview: the contradiction
//!    waits in `PaymentState::conflict`, that attempt stays reconciled, and the key becomes
//!    Conflict once it settles)
//! ```
//!
//! The fold never turns `Unknown` into anything by time: only a provider answer, evidence or
//! an operator does. "Not found" answers make a retry possible only when the policy carried in
//! the event says the visibility delay has passed since the attempt became unknown (the request
//! may have left any time before that) and enough consecutive answers agree. The wait is carried
//! in the answer, measured by the ledger on its monotonic clock, so the fold needs no clock.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{
    Event, EventKind, EvidenceSource, Finding, NotFoundPolicy, Outcome, QueryAnswer, Resolution,
    ReviewReason, UnknownReason,
};
use crate::intent::Fingerprint;
use crate::key::{
    Amount, AttemptNumber, Currency, DeclineCode, IdempotencyKey, ProviderReference, TransactionId,
    UnixMillis,
};

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
}

impl PhaseKind {
    /// Every kind, in order.
    pub const ALL: [PhaseKind; 9] = [
        PhaseKind::Vacant,
        PhaseKind::Ready,
        PhaseKind::InFlight,
        PhaseKind::Unknown,
        PhaseKind::InReview,
        PhaseKind::Succeeded,
        PhaseKind::Declined,
        PhaseKind::Exhausted,
        PhaseKind::Conflict,
    ];

    /// The name used by the CLI: `unknown`, `review`, `conflict`, `succeeded`, ...
    pub fn cli_name(self) -> &'static str {
        match self {
            PhaseKind::Vacant => "vacant",
            PhaseKind::Ready => "ready",
            PhaseKind::InFlight => "in-flight",
            PhaseKind::Unknown => "unknown",
            PhaseKind::InReview => "review",
            PhaseKind::Succeeded => "succeeded",
            PhaseKind::Declined => "declined",
            PhaseKind::Exhausted => "exhausted",
            PhaseKind::Conflict => "conflict",
        }
    }
}

impl std::str::FromStr for PhaseKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PhaseKind::ALL
            .into_iter()
            .find(|k| k.cli_name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}; one of: {}",
                    PhaseKind::ALL.map(|k| k.cli_name()).join(", ")
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

    /// A short name for logs, errors and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Vacant => "vacant",
            Phase::Ready { .. } => "ready",
            Phase::InFlight { .. } => "in flight",
            Phase::Unknown { .. } => "unknown",
            Phase::InReview { .. } => "in review",
            Phase::Succeeded { .. } => "succeeded",
            Phase::Declined { .. } => "declined",
            Phase::Exhausted { .. } => "exhausted",
            Phase::Conflict { .. } => "conflict",
        }
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
    fn into_phase(self) -> Phase {
        Phase::Conflict {
            attempt: self.attempt,
            source: self.source,
            finding: self.finding,
            since: self.since,
        }
    }
}

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

/// What the gate answers a request with a given fingerprint. Every variant is a normal outcome
/// the caller must handle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Start attempt `attempt` now (recording the intent first if `record_intent`).
    StartAttempt {
        /// The attempt to start.
        attempt: AttemptNumber,
        /// The key has no intent yet.
        record_intent: bool,
    },
    /// The key charged: replay this result.
    AlreadySucceeded {
        /// The attempt that charged.
        attempt: AttemptNumber,
        /// The provider's id.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The key was declined: replay the decline.
    AlreadyDeclined {
        /// The declined attempt.
        attempt: AttemptNumber,
        /// The provider's code.
        code: DeclineCode,
    },
    /// Every allowed attempt failed without charging.
    AttemptsExhausted {
        /// The last attempt.
        attempt: AttemptNumber,
    },
    /// Another caller holds the attempt right now.
    InFlight {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// The outcome is unknown; the reconciler will settle it.
    AwaitingReconciliation {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// A human is settling the key.
    InReview {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// Evidence contradicts the ledger; a human must act.
    InConflict {
        /// The attempt the evidence is about.
        attempt: AttemptNumber,
    },
    /// The key was used for a different intent. Nothing may be appended.
    KeyReused {
        /// The fingerprint on record.
        recorded: Fingerprint,
        /// The fingerprint requested.
        requested: Fingerprint,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::StartAttempt { attempt, .. } => write!(f, "start attempt {attempt}"),
            Decision::AlreadySucceeded { transaction_id, .. } => {
                write!(f, "already succeeded ({transaction_id})")
            }
            Decision::AlreadyDeclined { code, .. } => write!(f, "already declined ({code})"),
            Decision::AttemptsExhausted { attempt } => {
                write!(f, "attempts exhausted after attempt {attempt}")
            }
            Decision::InFlight { attempt } => write!(f, "attempt {attempt} in flight"),
            Decision::AwaitingReconciliation { attempt } => {
                write!(f, "attempt {attempt} awaiting reconciliation")
            }
            Decision::InReview { attempt } => write!(f, "attempt {attempt} in review"),
            Decision::InConflict { attempt } => write!(f, "conflict on attempt {attempt}"),
            Decision::KeyReused { .. } => write!(f, "key reused with a different intent"),
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
        }
    }

    /// Folds `events` from the empty state.
    ///
    /// # Errors
    /// The first [`Rejection`].
    pub fn fold<'a>(
        key: IdempotencyKey,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Self, Rejection> {
        events
            .into_iter()
            .try_fold(Self::new(key), |state, event| apply(&state, event))
    }

    /// The gate's decision for a request whose intent has fingerprint `requested`.
    /// Pure: the ledger turns `StartAttempt` into a durable attempt and a ticket.
    pub fn decide(&self, requested: &Fingerprint) -> Decision {
        if let Some(intent) = &self.intent
            && intent.fingerprint != *requested
        {
            return Decision::KeyReused {
                recorded: intent.fingerprint,
                requested: *requested,
            };
        }
        if let Some(conflict) = &self.conflict {
            return Decision::InConflict {
                attempt: conflict.attempt,
            };
        }
        match &self.phase {
            Phase::Vacant => Decision::StartAttempt {
                attempt: AttemptNumber::FIRST,
                record_intent: true,
            },
            Phase::Ready { next_attempt } => Decision::StartAttempt {
                attempt: *next_attempt,
                record_intent: false,
            },
            Phase::InFlight { attempt, .. } => Decision::InFlight { attempt: *attempt },
            Phase::Unknown { attempt, .. } => {
                Decision::AwaitingReconciliation { attempt: *attempt }
            }
            Phase::InReview { attempt, .. } => Decision::InReview { attempt: *attempt },
            Phase::Succeeded {
                attempt,
                transaction_id,
                amount,
            } => Decision::AlreadySucceeded {
                attempt: *attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            },
            Phase::Declined { attempt, code } => Decision::AlreadyDeclined {
                attempt: *attempt,
                code: code.clone(),
            },
            Phase::Exhausted { attempt } => Decision::AttemptsExhausted { attempt: *attempt },
            Phase::Conflict { attempt, .. } => Decision::InConflict { attempt: *attempt },
        }
    }

    /// What evidence about `attempt` means for this state, without changing it.
    ///
    /// # Errors
    /// [`RejectionReason::UnknownAttempt`] for an attempt that never started.
    pub fn weigh(
        &self,
        attempt: AttemptNumber,
        finding: &Finding,
    ) -> Result<Verdict, RejectionReason> {
        if attempt.get() > self.attempts_started {
            return Err(RejectionReason::UnknownAttempt {
                attempt: attempt.get(),
            });
        }
        let current = self.phase.possibly_charged() == Some(attempt);
        let verdict = match (&self.phase, finding) {
            (Phase::Conflict { .. }, Finding::Charged { .. }) => Verdict::Contradicts,
            (Phase::Conflict { .. }, Finding::Declined { .. }) => Verdict::Agrees,
            (
                Phase::InFlight { .. } | Phase::Unknown { .. } | Phase::InReview { .. },
                Finding::Charged {
                    transaction_id,
                    amount,
                },
            ) if current => {
                if self.amount_matches(*amount) {
                    Verdict::Settles(Phase::Succeeded {
                        attempt,
                        transaction_id: transaction_id.clone(),
                        amount: *amount,
                    })
                } else {
                    Verdict::Contradicts
                }
            }
            (
                Phase::InFlight { .. } | Phase::Unknown { .. } | Phase::InReview { .. },
                Finding::Declined { code },
            ) if current => Verdict::Settles(Phase::Declined {
                attempt,
                code: code.clone(),
            }),
            (
                Phase::Succeeded {
                    transaction_id,
                    amount,
                    ..
                },
                Finding::Charged {
                    transaction_id: found_id,
                    amount: found_amount,
                },
            ) if current => {
                if transaction_id == found_id && amount == found_amount {
                    Verdict::Agrees
                } else {
                    Verdict::Contradicts
                }
            }
            (Phase::Succeeded { .. }, Finding::Declined { .. }) if current => Verdict::Contradicts,
            (Phase::Declined { .. }, Finding::Declined { .. }) if current => Verdict::Agrees,
            // Everything else is about an attempt the ledger holds as not charged: a charge
            // there is exactly the double charge this crate exists to surface.
            (_, Finding::Charged { .. }) => Verdict::Contradicts,
            (_, Finding::Declined { .. }) => Verdict::Agrees,
        };
        Ok(verdict)
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

    fn amount_matches(&self, amount: Amount) -> bool {
        self.intent.as_ref().is_some_and(|i| i.amount == amount)
    }

    /// The phase after `attempt` provably did not charge.
    fn after_not_charged(attempt: AttemptNumber) -> Phase {
        match attempt.next() {
            Some(next_attempt) => Phase::Ready { next_attempt },
            None => Phase::Exhausted { attempt },
        }
    }

    /// The phase after `attempt` charged: `Succeeded`, or `Conflict` for the wrong amount.
    fn after_charged(
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

/// What a piece of evidence means for a state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// It confirms what is held; nothing changes.
    Agrees,
    /// It settles the possibly-charged attempt into this phase.
    Settles(Phase),
    /// It contradicts what is held: record a `ConflictDetected` event.
    Contradicts,
}

/// Applies one event to a state: the next state, or the rejection naming the illegal
/// transition. Pure.
///
/// # Errors
/// A [`Rejection`] whenever the event would allow a state the ledger must not represent.
pub fn apply(state: &PaymentState, event: &Event) -> Result<PaymentState, Rejection> {
    let reject = |reason| Rejection {
        phase: state.phase.name(),
        event: event.kind.name(),
        reason,
    };
    if event.key != state.key {
        return Err(reject(RejectionReason::KeyMismatch));
    }
    let phase = match (&state.phase, &event.kind) {
        (
            Phase::Vacant,
            EventKind::IntentRecorded {
                intent,
                fingerprint,
            },
        ) => {
            if intent.fingerprint() != *fingerprint {
                return Err(reject(RejectionReason::FingerprintMismatch));
            }
            let mut next = state.clone();
            next.intent = Some(IntentSummary {
                fingerprint: *fingerprint,
                amount: intent.amount,
                currency: intent.currency,
                recorded_at: event.at,
            });
            next.phase = Phase::Ready {
                next_attempt: AttemptNumber::FIRST,
            };
            return Ok(next);
        }
        (Phase::Vacant, _) => return Err(reject(RejectionReason::NoIntent)),
        (_, EventKind::IntentRecorded { .. }) => {
            return Err(reject(RejectionReason::IntentAlreadyRecorded));
        }
        (
            _,
            EventKind::AttemptStarted {
                attempt,
                provider_reference,
            },
        ) => {
            let phase =
                start_attempt(state, *attempt, provider_reference, event.at).map_err(reject)?;
            let mut next = state.clone();
            next.attempts_started = attempt.get();
            next.phase = phase;
            return Ok(next);
        }
        (_, EventKind::OutcomeReported { attempt, outcome }) => {
            report_outcome(state, *attempt, outcome, event.at).map_err(reject)?
        }
        (_, EventKind::ProviderQueried { attempt, answer }) => {
            query_answered(state, *attempt, answer, event.at).map_err(reject)?
        }
        (
            _,
            EventKind::EvidenceReceived {
                attempt, finding, ..
            },
        ) => match state.weigh(*attempt, finding).map_err(reject)? {
            Verdict::Agrees => state.phase.clone(),
            Verdict::Settles(phase) => phase,
            Verdict::Contradicts => return Err(reject(RejectionReason::ConflictingEvidence)),
        },
        (
            _,
            EventKind::ConflictDetected {
                attempt,
                source,
                finding,
            },
        ) => match state.weigh(*attempt, finding).map_err(reject)? {
            Verdict::Contradicts => {
                let contradiction = Contradiction {
                    attempt: *attempt,
                    source: *source,
                    finding: finding.clone(),
                    since: event.at,
                };
                match state.open_attempt() {
                    // The first conflict stays the one reported; later ones are in the history.
                    _ if matches!(state.phase, Phase::Conflict { .. }) => state.phase.clone(),
                    // Another attempt may still have charged: it stays open (and reconciled);
                    // the conflict waits beside it.
                    Some(open) if open != *attempt => {
                        let mut next = state.clone();
                        next.conflict.get_or_insert(contradiction);
                        return Ok(next);
                    }
                    _ => contradiction.into_phase(),
                }
            }
            Verdict::Agrees | Verdict::Settles(_) => {
                return Err(reject(RejectionReason::NotAConflict));
            }
        },
        (_, EventKind::EscalatedToReview { attempt, reason }) => match &state.phase {
            Phase::Unknown {
                attempt: current,
                started_at,
                ..
            } if current == attempt => Phase::InReview {
                attempt: *attempt,
                started_at: *started_at,
                since: event.at,
                reason: *reason,
            },
            Phase::InReview { .. } => return Err(reject(RejectionReason::AlreadyInReview)),
            _ => {
                return Err(reject(RejectionReason::NotAwaitingReconciliation {
                    attempt: attempt.get(),
                }));
            }
        },
        (
            _,
            EventKind::ResolvedByOperator {
                attempt,
                resolution,
                ..
            },
        ) => resolve(state, *attempt, resolution).map_err(reject)?,
    };
    let mut next = state.clone();
    next.phase = phase;
    if next.open_attempt().is_none()
        && !matches!(next.phase, Phase::Conflict { .. })
        && let Some(conflict) = next.conflict.clone()
    {
        // The attempt that was still in doubt is settled: the key ends in the conflict.
        next.phase = conflict.into_phase();
    }
    Ok(next)
}

fn start_attempt(
    state: &PaymentState,
    attempt: AttemptNumber,
    provider_reference: &ProviderReference,
    at: UnixMillis,
) -> Result<Phase, RejectionReason> {
    match &state.phase {
        Phase::Ready { next_attempt } => {
            if attempt != *next_attempt {
                return Err(RejectionReason::AttemptOutOfOrder {
                    expected: next_attempt.get(),
                    got: attempt.get(),
                });
            }
            if *provider_reference != ProviderReference::derive(&state.key, attempt) {
                return Err(RejectionReason::ProviderReferenceMismatch);
            }
            Ok(Phase::InFlight {
                attempt,
                started_at: at,
            })
        }
        Phase::InFlight { attempt, .. }
        | Phase::Unknown { attempt, .. }
        | Phase::InReview { attempt, .. } => Err(RejectionReason::AttemptUnresolved {
            attempt: attempt.get(),
        }),
        Phase::Vacant
        | Phase::Succeeded { .. }
        | Phase::Declined { .. }
        | Phase::Exhausted { .. }
        | Phase::Conflict { .. } => Err(RejectionReason::Settled),
    }
}

fn report_outcome(
    state: &PaymentState,
    attempt: AttemptNumber,
    outcome: &Outcome,
    at: UnixMillis,
) -> Result<Phase, RejectionReason> {
    let Phase::InFlight {
        attempt: current,
        started_at,
    } = &state.phase
    else {
        return Err(RejectionReason::NotInFlight {
            attempt: attempt.get(),
        });
    };
    if *current != attempt {
        return Err(RejectionReason::NotInFlight {
            attempt: attempt.get(),
        });
    }
    Ok(match outcome {
        Outcome::Succeeded {
            transaction_id,
            amount,
        } => state.after_charged(attempt, transaction_id, *amount, EvidenceSource::Reply, at),
        Outcome::Declined { code } => Phase::Declined {
            attempt,
            code: code.clone(),
        },
        Outcome::NotSent { .. } => PaymentState::after_not_charged(attempt),
        Outcome::Unknown { reason } => Phase::Unknown {
            attempt,
            started_at: *started_at,
            since: at,
            reason: *reason,
            queries: 0,
            not_found_streak: 0,
            pending: false,
            waited_ms: 0,
        },
    })
}

fn query_answered(
    state: &PaymentState,
    attempt: AttemptNumber,
    answer: &QueryAnswer,
    at: UnixMillis,
) -> Result<Phase, RejectionReason> {
    awaiting_reconciliation(state, attempt)?;
    let definitive = match answer {
        QueryAnswer::FoundSucceeded {
            transaction_id,
            amount,
        } => Some(state.after_charged(attempt, transaction_id, *amount, EvidenceSource::Query, at)),
        QueryAnswer::FoundDeclined { code } => Some(Phase::Declined {
            attempt,
            code: code.clone(),
        }),
        QueryAnswer::FoundPending
        | QueryAnswer::NotFound { .. }
        | QueryAnswer::NotFoundAfterWait { .. }
        | QueryAnswer::QueryFailed { .. } => None,
    };
    if let Some(phase) = definitive {
        return Ok(phase);
    }
    // In review, only definitive answers change anything: a human owns the decision.
    let Phase::Unknown {
        started_at,
        since,
        reason,
        queries,
        not_found_streak,
        pending,
        waited_ms: waited_before,
        ..
    } = &state.phase
    else {
        return Ok(state.phase.clone());
    };
    let queries = queries.saturating_add(1);
    let mut waited = *waited_before;
    let (not_found_streak, pending) = match answer {
        QueryAnswer::FoundPending => (0, true),
        QueryAnswer::NotFound { policy } => {
            // Written by older ledgers: the wait is the wall-clock time between events.
            let streak = not_found_streak.saturating_add(1);
            if not_found_is_trusted(policy, streak, at.since(*since)) {
                return Ok(PaymentState::after_not_charged(attempt));
            }
            (streak, false)
        }
        QueryAnswer::NotFoundAfterWait { policy, waited_ms } => {
            let streak = not_found_streak.saturating_add(1);
            if not_found_is_trusted(policy, streak, *waited_ms) {
                return Ok(PaymentState::after_not_charged(attempt));
            }
            waited = waited.max(*waited_ms);
            (streak, false)
        }
        _ => (*not_found_streak, *pending),
    };
    Ok(Phase::Unknown {
        attempt,
        started_at: *started_at,
        since: *since,
        reason: *reason,
        queries,
        not_found_streak,
        pending,
        waited_ms: waited,
    })
}

/// "Not found" proves no charge only once the provider has had time to show the request and
/// enough consecutive answers agree.
///
/// The visibility delay runs from the moment the attempt became unknown, not from when it
/// started: the request may have been sent at any time between the two (a slow caller, a
/// process that stalled before dying), but never after the attempt became unknown. `waited_ms`
/// is measured by the ledger on its monotonic clock, so no wall-clock step shortens it.
fn not_found_is_trusted(policy: &NotFoundPolicy, streak: u32, waited_ms: u64) -> bool {
    streak >= policy.consistent_answers_min().max(1) && waited_ms >= policy.wait_ms()
}

/// Queries and resolutions are only for the attempt that is unknown or in review.
fn awaiting_reconciliation(
    state: &PaymentState,
    attempt: AttemptNumber,
) -> Result<(), RejectionReason> {
    match &state.phase {
        Phase::Unknown {
            attempt: current, ..
        }
        | Phase::InReview {
            attempt: current, ..
        } if *current == attempt => Ok(()),
        _ => Err(RejectionReason::NotAwaitingReconciliation {
            attempt: attempt.get(),
        }),
    }
}

fn resolve(
    state: &PaymentState,
    attempt: AttemptNumber,
    resolution: &Resolution,
) -> Result<Phase, RejectionReason> {
    awaiting_reconciliation(state, attempt)?;
    match resolution {
        Resolution::Charged {
            transaction_id,
            amount,
        } => {
            if !state.amount_matches(*amount) {
                return Err(RejectionReason::AmountMismatch {
                    expected: state.intent.as_ref().map_or(0, |i| i.amount.minor()),
                    got: amount.minor(),
                });
            }
            Ok(Phase::Succeeded {
                attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            })
        }
        Resolution::Declined { code } => Ok(Phase::Declined {
            attempt,
            code: code.clone(),
        }),
        Resolution::NotCharged => Ok(PaymentState::after_not_charged(attempt)),
    }
}

#[cfg(test)]
mod tests;
