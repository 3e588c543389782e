//! The pure fold: the events of one key decide whether a provider call may be made.
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

use super::event::{
    Event, EventKind, EvidenceSource, Finding, NotFoundPolicy, Outcome, QueryAnswer, Resolution,
    ReviewReason,
};
use super::evidence::Verdict;
use super::intent::{Fingerprint, Intent};
use super::key::{AttemptNumber, IdempotencyKey, ProviderReference, UnixMillis};
use super::operation::{Charge, PrimaryKind, request_operation, step_operation};
use super::rejection::{Rejection, RejectionReason};
use super::state::{Contradiction, IntentSummary, PaymentState, Phase};

impl PaymentState {
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
    let next = match &event.kind {
        EventKind::AuthorizationRecorded {
            intent,
            fingerprint,
            multiple_captures,
        } => record_authorization(state, intent, fingerprint, *multiple_captures, event.at),
        EventKind::OperationRequested {
            ordinal,
            kind,
            request_id,
            amount,
        } => request_operation(state, *ordinal, *kind, request_id, *amount, event.at),
        EventKind::OperationStepped { ordinal, step } => {
            step_operation(state, *ordinal, step, event.at)
        }
        // Charges are recorded before a contradiction beside the attempt takes the phase: an
        // attempt that succeeds beside a conflict is money the customer paid too.
        _ => next_state(state, event, true)
            .map(|next| with_charges(next, &event.kind))
            .map(settle_beside_conflict),
    };
    next.map_err(reject)
}

/// The state after a charge event: the charge's rules (for the key's own attempts when
/// `primary`, else for an operation seen as a charge, whose provider reference the caller has
/// checked), and a contradiction beside an open attempt settled once that attempt is.
pub(super) fn next_track(
    state: &PaymentState,
    event: &Event,
    primary: bool,
) -> Result<PaymentState, RejectionReason> {
    next_state(state, event, primary).map(settle_beside_conflict)
}

/// Records every charge the state now shows for a purchase (its success, the charge a conflict
/// is about, including a conflict found while the key was already in conflict), once: what the
/// key's refunds may give back.
fn with_charges(mut next: PaymentState, kind: &EventKind) -> PaymentState {
    if next.primary != PrimaryKind::Purchase {
        return next;
    }
    let mut found: Vec<Charge> = Vec::new();
    if let Phase::Succeeded {
        attempt,
        transaction_id,
        amount,
    } = &next.phase
    {
        found.push(Charge {
            attempt: *attempt,
            transaction_id: transaction_id.clone(),
            amount: *amount,
        });
    }
    let contradictions = [
        match &next.phase {
            Phase::Conflict {
                attempt, finding, ..
            } => Some((*attempt, finding)),
            _ => None,
        },
        next.conflict.as_ref().map(|c| (c.attempt, &c.finding)),
        match kind {
            EventKind::ConflictDetected {
                attempt, finding, ..
            } => Some((*attempt, finding)),
            _ => None,
        },
    ];
    for (attempt, finding) in contradictions.into_iter().flatten() {
        if let Finding::Charged {
            transaction_id,
            amount,
        } = finding
        {
            found.push(Charge {
                attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            });
        }
    }
    for charge in found {
        let known = next
            .charges
            .iter()
            .any(|c| c.attempt == charge.attempt && c.transaction_id == charge.transaction_id);
        if !known {
            next.charges.push(charge);
        }
    }
    next
}

/// The state after `event`, one rule per event kind.
fn next_state(
    state: &PaymentState,
    event: &Event,
    primary: bool,
) -> Result<PaymentState, RejectionReason> {
    let at = event.at;
    let with_phase = |phase: Phase| {
        let mut next = state.clone();
        next.phase = phase;
        next
    };
    match (&state.phase, &event.kind) {
        (
            Phase::Vacant,
            EventKind::IntentRecorded {
                intent,
                fingerprint,
            },
        ) => record_intent(state, intent, fingerprint, at),
        (Phase::Vacant, _) => Err(RejectionReason::NoIntent),
        (_, EventKind::IntentRecorded { .. }) => Err(RejectionReason::IntentAlreadyRecorded),
        (
            _,
            EventKind::AuthorizationRecorded { .. }
            | EventKind::OperationRequested { .. }
            | EventKind::OperationStepped { .. },
        ) => Err(RejectionReason::NotAnOperationEvent),
        (
            _,
            EventKind::AttemptStarted {
                attempt,
                provider_reference,
            },
        ) => {
            if primary && *provider_reference != ProviderReference::derive(&state.key, *attempt) {
                return Err(RejectionReason::ProviderReferenceMismatch);
            }
            let phase = start_attempt(state, *attempt, at)?;
            let mut next = with_phase(phase);
            next.attempts_started = attempt.get();
            Ok(next)
        }
        (_, EventKind::OutcomeReported { attempt, outcome }) => {
            report_outcome(state, *attempt, outcome, at).map(with_phase)
        }
        (_, EventKind::ProviderQueried { attempt, answer }) => {
            query_answered(state, *attempt, answer, at).map(with_phase)
        }
        (
            _,
            EventKind::EvidenceReceived {
                attempt, finding, ..
            },
        ) => match state.weigh(*attempt, finding)? {
            Verdict::Agrees => Ok(state.clone()),
            Verdict::Settles(phase) => Ok(with_phase(phase)),
            Verdict::Contradicts => Err(RejectionReason::ConflictingEvidence),
        },
        (
            _,
            EventKind::ConflictDetected {
                attempt,
                source,
                finding,
            },
        ) => {
            let contradiction = Contradiction {
                attempt: *attempt,
                source: *source,
                finding: finding.clone(),
                since: at,
            };
            conflict_detected(state, contradiction)
        }
        (_, EventKind::EscalatedToReview { attempt, reason }) => {
            escalated(state, *attempt, *reason, at).map(with_phase)
        }
        (
            _,
            EventKind::ResolvedByOperator {
                attempt,
                resolution,
                ..
            },
        ) => resolve(state, *attempt, resolution).map(with_phase),
    }
}

/// Once the attempt that was still in doubt beside a contradiction is settled, the key ends in
/// the conflict.
fn settle_beside_conflict(mut next: PaymentState) -> PaymentState {
    if next.open_attempt().is_none()
        && !matches!(next.phase, Phase::Conflict { .. })
        && let Some(conflict) = next.conflict.clone()
    {
        next.phase = conflict.into_phase();
    }
    next
}

fn record_intent(
    state: &PaymentState,
    intent: &Intent,
    fingerprint: &Fingerprint,
    at: UnixMillis,
) -> Result<PaymentState, RejectionReason> {
    if intent.fingerprint() != *fingerprint {
        return Err(RejectionReason::FingerprintMismatch);
    }
    let mut next = state.clone();
    next.intent = Some(IntentSummary {
        fingerprint: *fingerprint,
        amount: intent.amount,
        currency: intent.currency,
        recorded_at: at,
    });
    next.phase = Phase::Ready {
        next_attempt: AttemptNumber::FIRST,
    };
    Ok(next)
}

fn record_authorization(
    state: &PaymentState,
    intent: &Intent,
    fingerprint: &Fingerprint,
    multiple_captures: bool,
    at: UnixMillis,
) -> Result<PaymentState, RejectionReason> {
    if !matches!(state.phase, Phase::Vacant) {
        return Err(RejectionReason::IntentAlreadyRecorded);
    }
    if intent.authorization_fingerprint() != *fingerprint {
        return Err(RejectionReason::FingerprintMismatch);
    }
    let mut next = state.clone();
    next.intent = Some(IntentSummary {
        fingerprint: *fingerprint,
        amount: intent.amount,
        currency: intent.currency,
        recorded_at: at,
    });
    next.primary = PrimaryKind::Authorization { multiple_captures };
    next.phase = Phase::Ready {
        next_attempt: AttemptNumber::FIRST,
    };
    Ok(next)
}

fn conflict_detected(
    state: &PaymentState,
    contradiction: Contradiction,
) -> Result<PaymentState, RejectionReason> {
    match state.weigh(contradiction.attempt, &contradiction.finding)? {
        Verdict::Agrees | Verdict::Settles(_) => Err(RejectionReason::NotAConflict),
        // The first conflict stays the one reported; later ones are in the history.
        Verdict::Contradicts if matches!(state.phase, Phase::Conflict { .. }) => Ok(state.clone()),
        Verdict::Contradicts => {
            let mut next = state.clone();
            match state.open_attempt() {
                // Another attempt may still have charged: it stays open (and reconciled); the
                // conflict waits beside it.
                Some(open) if open != contradiction.attempt => {
                    next.conflict.get_or_insert(contradiction);
                }
                _ => next.phase = contradiction.into_phase(),
            }
            Ok(next)
        }
    }
}

fn escalated(
    state: &PaymentState,
    attempt: AttemptNumber,
    reason: ReviewReason,
    at: UnixMillis,
) -> Result<Phase, RejectionReason> {
    match &state.phase {
        Phase::Unknown {
            attempt: current,
            started_at,
            ..
        } if *current == attempt => Ok(Phase::InReview {
            attempt,
            started_at: *started_at,
            since: at,
            reason,
        }),
        Phase::InReview { .. } => Err(RejectionReason::AlreadyInReview),
        _ => Err(RejectionReason::NotAwaitingReconciliation {
            attempt: attempt.get(),
        }),
    }
}

fn start_attempt(
    state: &PaymentState,
    attempt: AttemptNumber,
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
