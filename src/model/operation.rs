//! Money after the charge: captures, voids and refunds of a key, each under the charge's own
//! discipline, and the sums that bound them.
//!
//! Invariants:
//! - every operation has an ordinal within its key and its own attempts, each with a provider
//!   reference derived from (key, kind, ordinal, attempt), and it moves through the same phases
//!   as a charge (the fold runs the charge's own rules on it): unknown leaves only through
//!   provider evidence or an operator, never by time;
//! - a caller's request id names exactly one operation of its key forever;
//! - the sums hold at every step, pessimistic about doubt: an operation counts against its budget
//!   from the moment it is requested until it is proven not executed (declined, not sent, or
//!   "not found" trusted), so
//!   `captures (succeeded or in doubt) ≤ authorised`,
//!   `refunds (succeeded or in doubt) ≤ captured (succeeded)`, and
//!   a void only while no capture may have happened; nothing that would break a bound is ever
//!   requested, and evidence that breaks one is an explicit conflict of that operation.

use serde::{Deserialize, Serialize};

use super::event::{
    Event, EventKind, EvidenceSource, Finding, Outcome, QueryAnswer, Resolution, ReviewReason,
};
use super::key::{Amount, AttemptNumber, IdempotencyKey, Note, Operator, ProviderReference};
use super::key::{RequestId, TransactionId, UnixMillis};
use super::rejection::RejectionReason;
use super::state::{Contradiction, IntentSummary, PaymentState, Phase};
use crate::limits::OPERATIONS_MAX;

/// What an operation does to the money a key holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum OperationKind {
    /// Takes (part of) an authorised amount.
    Capture,
    /// Releases an authorisation nothing was captured from.
    Void,
    /// Gives (part of) a captured amount back.
    Refund,
}

impl OperationKind {
    /// Every kind.
    pub const ALL: [OperationKind; 3] = [
        OperationKind::Capture,
        OperationKind::Void,
        OperationKind::Refund,
    ];

    /// The kind's name, for logs, errors and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Capture => "capture",
            OperationKind::Void => "void",
            OperationKind::Refund => "refund",
        }
    }

    /// A byte that tells the kinds apart in derivations.
    pub(super) fn tag(self) -> u8 {
        match self {
            OperationKind::Capture => 1,
            OperationKind::Void => 2,
            OperationKind::Refund => 3,
        }
    }

    /// The letter of the kind in provider references.
    pub(super) fn letter(self) -> char {
        match self {
            OperationKind::Capture => 'c',
            OperationKind::Void => 'v',
            OperationKind::Refund => 'r',
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the key's first operation was: a purchase (charge and capture at once, the one-step
/// charge) or an authorisation (a hold, captured or voided later).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum PrimaryKind {
    /// A one-step charge.
    #[default]
    Purchase,
    /// A hold.
    Authorization {
        /// Several partial captures may be taken from it (else one capture at most).
        multiple_captures: bool,
    },
}

impl PrimaryKind {
    /// The kind's name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            PrimaryKind::Purchase => "purchase",
            PrimaryKind::Authorization { .. } => "authorization",
        }
    }
}

/// One step of an operation: the same facts as a charge attempt's, about the operation's own
/// attempts.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum OperationStep {
    /// An attempt was about to be sent. Durable before the provider call.
    AttemptStarted {
        /// Which attempt.
        attempt: AttemptNumber,
        /// The reference sent to the provider, derived from (key, kind, ordinal, attempt).
        provider_reference: ProviderReference,
    },
    /// The result of the provider call, as the caller saw it (a success carries the provider's
    /// id of the capture, void or refund and its amount).
    OutcomeReported {
        /// Which attempt.
        attempt: AttemptNumber,
        /// What the caller learned.
        outcome: Outcome,
    },
    /// The reconciler asked the provider.
    ProviderQueried {
        /// Which attempt.
        attempt: AttemptNumber,
        /// What the provider answered.
        answer: QueryAnswer,
    },
    /// A webhook or a settlement line about an attempt.
    EvidenceReceived {
        /// Which attempt.
        attempt: AttemptNumber,
        /// Where it came from.
        source: EvidenceSource,
        /// What it says (`Charged` means executed).
        finding: Finding,
    },
    /// Handed to a human.
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
        /// The finding (`Charged` means executed).
        resolution: Resolution,
        /// Who.
        operator: Operator,
        /// Why.
        note: Note,
    },
    /// Evidence contradicted the operation's state, or broke a bound.
    ConflictDetected {
        /// Which attempt.
        attempt: AttemptNumber,
        /// Where it came from.
        source: EvidenceSource,
        /// What it says.
        finding: Finding,
    },
}

impl OperationStep {
    /// The charge event with the same meaning, which the fold applies to the operation.
    fn as_attempt_event(&self) -> EventKind {
        match self.clone() {
            OperationStep::AttemptStarted {
                attempt,
                provider_reference,
            } => EventKind::AttemptStarted {
                attempt,
                provider_reference,
            },
            OperationStep::OutcomeReported { attempt, outcome } => {
                EventKind::OutcomeReported { attempt, outcome }
            }
            OperationStep::ProviderQueried { attempt, answer } => {
                EventKind::ProviderQueried { attempt, answer }
            }
            OperationStep::EvidenceReceived {
                attempt,
                source,
                finding,
            } => EventKind::EvidenceReceived {
                attempt,
                source,
                finding,
            },
            OperationStep::EscalatedToReview { attempt, reason } => {
                EventKind::EscalatedToReview { attempt, reason }
            }
            OperationStep::ResolvedByOperator {
                attempt,
                resolution,
                operator,
                note,
            } => EventKind::ResolvedByOperator {
                attempt,
                resolution,
                operator,
                note,
            },
            OperationStep::ConflictDetected {
                attempt,
                source,
                finding,
            } => EventKind::ConflictDetected {
                attempt,
                source,
                finding,
            },
        }
    }

    /// The attempt the step is about.
    pub fn attempt(&self) -> AttemptNumber {
        match self {
            OperationStep::AttemptStarted { attempt, .. }
            | OperationStep::OutcomeReported { attempt, .. }
            | OperationStep::ProviderQueried { attempt, .. }
            | OperationStep::EvidenceReceived { attempt, .. }
            | OperationStep::EscalatedToReview { attempt, .. }
            | OperationStep::ResolvedByOperator { attempt, .. }
            | OperationStep::ConflictDetected { attempt, .. } => *attempt,
        }
    }
}

/// Where one capture, void or refund stands.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OperationState {
    /// Its ordinal within the key, from 1.
    pub ordinal: u32,
    /// What it does.
    pub kind: OperationKind,
    /// The caller's id for it.
    pub request_id: RequestId,
    /// Its amount, in the key's currency (a void's is the authorised amount).
    pub amount: Amount,
    /// When it was requested.
    pub requested_at: UnixMillis,
    /// The highest attempt started (0 before the first).
    pub attempts_started: u32,
    /// Where it stands: the phases of a charge (`Succeeded` means executed).
    pub phase: Phase,
    /// A contradiction about an earlier attempt while a later one is still in doubt.
    pub conflict: Option<Contradiction>,
}

impl OperationState {
    /// Whether it counts against its budget: requested and not proven unexecuted.
    pub fn counts(&self) -> bool {
        !matches!(self.phase, Phase::Declined { .. } | Phase::Exhausted { .. })
    }

    /// Whether the provider executed it.
    pub fn executed(&self) -> bool {
        matches!(self.phase, Phase::Succeeded { .. })
    }

    /// The attempt still in doubt, if any.
    pub fn open_attempt(&self) -> Option<AttemptNumber> {
        match &self.phase {
            Phase::InFlight { attempt, .. }
            | Phase::Unknown { attempt, .. }
            | Phase::InReview { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// The operation seen as a charge of its own, so the fold can apply a charge's rules to
    /// it: its amount plays the intent's.
    fn as_track(&self, key: &IdempotencyKey, of: &IntentSummary) -> PaymentState {
        PaymentState {
            key: key.clone(),
            intent: Some(IntentSummary {
                amount: self.amount,
                ..of.clone()
            }),
            attempts_started: self.attempts_started,
            phase: self.phase.clone(),
            conflict: self.conflict.clone(),
            ..PaymentState::new(key.clone())
        }
    }
}

/// A charge the provider made for the key, as evidence showed it: the purchase, and any
/// duplicate a conflict surfaced.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Charge {
    /// The attempt that charged.
    pub attempt: AttemptNumber,
    /// The provider's id.
    pub transaction_id: TransactionId,
    /// The amount.
    pub amount: Amount,
}

/// The money of a key, summed from its state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sums {
    /// The authorised amount (an authorisation that succeeded), in minor units.
    pub authorized: u64,
    /// Captured and proven: the purchase's charges, or the executed captures.
    pub captured: u64,
    /// Captures requested and not proven unexecuted (executed ones included).
    pub captures_counted: u64,
    /// Refunds executed.
    pub refunded: u64,
    /// Refunds requested and not proven unexecuted (executed ones included).
    pub refunds_counted: u64,
    /// A void requested and not proven unexecuted.
    pub void_counted: bool,
}

/// The plan for an operation's next attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OperationPlan {
    /// The operation's ordinal (a new one when `record_request`).
    pub ordinal: u32,
    /// The attempt to start.
    pub attempt: AttemptNumber,
    /// The operation is new: its request must be recorded with the attempt.
    pub record_request: bool,
}

impl PaymentState {
    /// The money of this key: what was authorised, captured and refunded, and what counts
    /// against each budget.
    pub fn sums(&self) -> Sums {
        let mut sums = Sums::default();
        match self.primary {
            PrimaryKind::Purchase => {
                sums.captured = self.charges.iter().map(|c| c.amount.minor()).sum();
            }
            PrimaryKind::Authorization { .. } => {
                if let Phase::Succeeded { amount, .. } = &self.phase {
                    sums.authorized = amount.minor();
                }
            }
        }
        for op in &self.operations {
            let amount = op.amount.minor();
            match op.kind {
                OperationKind::Capture => {
                    if op.executed() {
                        sums.captured += amount;
                    }
                    if op.counts() {
                        sums.captures_counted += amount;
                    }
                }
                OperationKind::Refund => {
                    if op.executed() {
                        sums.refunded += amount;
                    }
                    if op.counts() {
                        sums.refunds_counted += amount;
                    }
                }
                OperationKind::Void => sums.void_counted |= op.counts(),
            }
        }
        sums
    }

    /// The operation a request id names.
    pub fn operation_by_request(&self, request_id: &RequestId) -> Option<&OperationState> {
        self.operations.iter().find(|o| &o.request_id == request_id)
    }

    /// The operation with `ordinal`.
    pub fn operation(&self, ordinal: u32) -> Option<&OperationState> {
        self.operations.iter().find(|o| o.ordinal == ordinal)
    }

    /// Whether a conflict of this purchase is settled inside the ledger: the charges beyond
    /// the intended amount (a duplicate) have been refunded.
    pub fn conflict_resolved(&self) -> bool {
        if !matches!(self.phase, Phase::Conflict { .. }) || self.primary != PrimaryKind::Purchase {
            return false;
        }
        let Some(intended) = self.intent.as_ref().map(|i| i.amount.minor()) else {
            return false;
        };
        let sums = self.sums();
        sums.captured > intended
            && sums.refunded >= sums.captured - intended
            && self.operations.iter().all(|o| o.open_attempt().is_none())
    }

    /// The lists the key appears in: its phase (a conflict settled by refunding the duplicate
    /// is listed as succeeded), `Conflict` too while a contradiction waits beside an attempt
    /// still in doubt (which stays listed, and scheduled, under its own phase), and one list per
    /// phase of an operation in flight, unknown, in review or in conflict. At most six.
    pub fn listed_as(&self) -> Vec<super::state::PhaseKind> {
        use super::state::PhaseKind;
        let mut kinds = Vec::with_capacity(2);
        let phase = match self.phase.kind() {
            PhaseKind::Conflict if self.conflict_resolved() => PhaseKind::Succeeded,
            kind => kind,
        };
        kinds.push(phase);
        if self.conflict.is_some() && phase != PhaseKind::Conflict {
            kinds.push(PhaseKind::Conflict);
        }
        for op in &self.operations {
            if let Some(kind) = PhaseKind::of_operation(&op.phase)
                && !kinds.contains(&kind)
            {
                kinds.push(kind);
            }
        }
        kinds
    }

    /// Why a new operation of `kind` for `amount` would break a bound, if it would.
    ///
    /// # Errors
    /// The [`RejectionReason`] the fold would give.
    pub fn check_new_operation(
        &self,
        kind: OperationKind,
        amount: Amount,
    ) -> Result<(), RejectionReason> {
        let not_allowed = |why: &'static str| {
            Err(RejectionReason::OperationNotAllowed {
                kind: kind.name(),
                why,
            })
        };
        if self.operations.len() >= OPERATIONS_MAX as usize {
            return not_allowed("the key has the most operations it may carry");
        }
        let sums = self.sums();
        let amount = amount.minor();
        match (kind, self.primary) {
            (OperationKind::Capture | OperationKind::Void, PrimaryKind::Purchase) => {
                not_allowed("a purchase is captured when it charges; refund it instead")
            }
            (OperationKind::Capture, PrimaryKind::Authorization { multiple_captures }) => {
                if sums.authorized == 0 {
                    return not_allowed("nothing is authorised");
                }
                if sums.void_counted {
                    return not_allowed("the authorisation is voided, or a void is in doubt");
                }
                if !multiple_captures && sums.captures_counted > 0 {
                    return not_allowed("the authorisation allows one capture");
                }
                if sums.captures_counted + amount > sums.authorized {
                    return Err(RejectionReason::OverCapture {
                        available: sums.authorized.saturating_sub(sums.captures_counted),
                        requested: amount,
                    });
                }
                Ok(())
            }
            (OperationKind::Void, PrimaryKind::Authorization { .. }) => {
                if sums.authorized == 0 {
                    return not_allowed("nothing is authorised");
                }
                if sums.captures_counted > 0 {
                    return not_allowed("a capture may have happened");
                }
                if sums.void_counted {
                    return not_allowed("a void is already requested");
                }
                if amount != sums.authorized {
                    return not_allowed("a void releases the whole authorised amount");
                }
                Ok(())
            }
            (OperationKind::Refund, _) => {
                if sums.refunds_counted + amount > sums.captured {
                    return Err(RejectionReason::OverRefund {
                        available: sums.captured.saturating_sub(sums.refunds_counted),
                        requested: amount,
                    });
                }
                Ok(())
            }
        }
    }

    /// The gate's decision for an operation request: replay the operation the request id
    /// names, start its next attempt, start a new operation, or refuse.
    ///
    /// # Errors
    /// [`RejectionReason::RequestIdReused`] for a known request id with another kind or
    /// amount; the bound a new operation would break.
    pub fn decide_operation(
        &self,
        kind: OperationKind,
        request_id: &RequestId,
        amount: Amount,
    ) -> Result<super::decide::Decision<OperationPlan>, RejectionReason> {
        use super::decide::Decision;
        if self.intent.is_none() {
            return Err(RejectionReason::NoIntent);
        }
        let Some(op) = self.operation_by_request(request_id) else {
            self.check_new_operation(kind, amount)?;
            return Ok(Decision::Attempt(OperationPlan {
                ordinal: self.operations.len() as u32 + 1,
                attempt: AttemptNumber::FIRST,
                record_request: true,
            }));
        };
        if op.kind != kind || op.amount != amount {
            return Err(RejectionReason::RequestIdReused {
                ordinal: op.ordinal,
            });
        }
        Ok(super::decide::decide_phase(&op.phase, |attempt| {
            OperationPlan {
                ordinal: op.ordinal,
                attempt,
                record_request: false,
            }
        }))
    }
}

impl PaymentState {
    /// What evidence about `attempt` of operation `ordinal` means, as [`PaymentState::weigh`]
    /// for the key's own attempts (`Charged` meaning executed, for the operation's amount).
    ///
    /// # Errors
    /// [`RejectionReason::UnknownOperation`], or the attempt never started.
    pub fn weigh_operation(
        &self,
        ordinal: u32,
        attempt: AttemptNumber,
        finding: &Finding,
    ) -> Result<super::evidence::Verdict, RejectionReason> {
        let (Some(op), Some(intent)) = (self.operation(ordinal), self.intent.as_ref()) else {
            return Err(RejectionReason::UnknownOperation { ordinal });
        };
        op.as_track(&self.key, intent).weigh(attempt, finding)
    }

    /// The operation whose attempt was sent with `reference`, and that attempt.
    pub fn operation_for_reference(
        &self,
        reference: &ProviderReference,
    ) -> Option<(u32, AttemptNumber)> {
        let attempt = reference.attempt()?;
        self.operations
            .iter()
            .find(|op| {
                attempt.get() <= op.attempts_started
                    && ProviderReference::derive_operation(&self.key, op.kind, op.ordinal, attempt)
                        == *reference
            })
            .map(|op| (op.ordinal, attempt))
    }
}

/// Records a new operation: its ordinal is the next one, its request id is new, and it breaks
/// no bound.
pub(super) fn request_operation(
    state: &PaymentState,
    ordinal: u32,
    kind: OperationKind,
    request_id: &RequestId,
    amount: Amount,
    at: UnixMillis,
) -> Result<PaymentState, RejectionReason> {
    let expected = state.operations.len() as u32 + 1;
    if ordinal != expected {
        return Err(RejectionReason::OperationOutOfOrder {
            expected,
            got: ordinal,
        });
    }
    if let Some(op) = state.operation_by_request(request_id) {
        return Err(RejectionReason::RequestIdReused {
            ordinal: op.ordinal,
        });
    }
    state.check_new_operation(kind, amount)?;
    let mut next = state.clone();
    next.operations.push(OperationState {
        ordinal,
        kind,
        request_id: request_id.clone(),
        amount,
        requested_at: at,
        attempts_started: 0,
        phase: Phase::Ready {
            next_attempt: AttemptNumber::FIRST,
        },
        conflict: None,
    });
    Ok(next)
}

/// Applies one step to operation `ordinal`: the charge's own rules, run on the operation, with
/// its provider reference derived from (key, kind, ordinal, attempt). A success whose amount is
/// not the operation's is a conflict of the operation, as for a charge.
pub(super) fn step_operation(
    state: &PaymentState,
    ordinal: u32,
    step: &OperationStep,
    at: UnixMillis,
) -> Result<PaymentState, RejectionReason> {
    let Some(index) = state.operations.iter().position(|o| o.ordinal == ordinal) else {
        return Err(RejectionReason::UnknownOperation { ordinal });
    };
    let Some(intent) = state.intent.as_ref() else {
        return Err(RejectionReason::NoIntent);
    };
    let op = &state.operations[index];
    if let OperationStep::AttemptStarted {
        attempt,
        provider_reference,
    } = step
        && *provider_reference
            != ProviderReference::derive_operation(&state.key, op.kind, ordinal, *attempt)
    {
        return Err(RejectionReason::ProviderReferenceMismatch);
    }
    let track = op.as_track(&state.key, intent);
    let event = Event {
        key: state.key.clone(),
        at,
        kind: step.as_attempt_event(),
    };
    let after = super::fold::next_track(&track, &event, false)?;
    let mut next = state.clone();
    let updated = &mut next.operations[index];
    updated.attempts_started = after.attempts_started;
    updated.phase = after.phase;
    updated.conflict = after.conflict;
    Ok(next)
}
