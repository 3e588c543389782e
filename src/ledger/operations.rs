//! Captures, voids and refunds through the ledger: the gate for operations, their outcomes,
//! evidence and resolutions, and what the reconciler needs of them.
//!
//! Invariants (the charge's, for every operation):
//! - an operation's ticket exists only after its `AttemptStarted` step is durable, so before
//!   any provider call; a request that would break a bound (over-capture, over-refund, a void
//!   after a possible capture) or that reuses a request id with another kind or amount is
//!   refused with a typed rejection before anything is written;
//! - an outcome that arrives after the operation was settled otherwise is evidence, and a
//!   contradiction becomes an explicit conflict of the operation;
//! - an operation in flight that nobody will report (dropped ticket, expired lease, a process
//!   that ended) becomes unknown, never retryable; unknown leaves only through a provider
//!   answer, evidence or an operator.

use std::sync::Arc;

use crate::clock::MonotonicMillis;
use crate::error::{Error, Result};
use crate::index::IndexEntry;
use crate::limits::LIST_LIMIT_MAX;
use crate::model::{Amount, AttemptNumber, IdempotencyKey, Note, Operator, ProviderReference};
use crate::model::{Decision, EventKind, EvidenceSource, Finding, OperationKind, OperationStep};
use crate::model::{Outcome, PaymentState, Phase, PhaseKind, Rejection, RequestId, Resolution};
use crate::model::{ReviewReason, UnknownReason, Verdict};
use crate::provider::QueryReply;
use crate::sync::lock;

use super::replies::EvidenceOutcome;
use super::{Ledger, OperationTicket, Track};

/// What [`Ledger::begin_operation`] answers: an operation ticket, or what the caller must relay
/// (the operation already executed, declined, in flight, awaiting reconciliation...).
pub type OperationBegin = Decision<OperationTicket>;

impl Ledger {
    /// The gate for a capture, void or refund of `key`: `request_id` (the caller's id for the
    /// operation, e.g. its refund id) names one operation forever. A new request id starts a
    /// new operation, if it breaks no bound; a known one replays that operation's answer, or
    /// starts its next attempt once the previous one is proven not executed. On
    /// [`Decision::Attempt`] the operation's attempt is durable and the caller may call the
    /// provider once, with the ticket's reference as the provider's idempotency key.
    ///
    /// ```
    /// use payledger::*;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
    /// let key = IdempotencyKey::new("order-9/pay")?;
    /// let intent = Intent {
    ///     amount: Amount::new(5_000)?,
    ///     currency: Currency::new("EUR")?,
    ///     account: AccountId::new("acct_1")?,
    ///     customer: CustomerRef::new("cus_1")?,
    ///     description: None,
    ///     metadata: Metadata::default(),
    /// };
    /// let Begin::Attempt(ticket) = ledger.begin(&key, &intent)? else { unreachable!() };
    /// ledger.record(ticket, Outcome::Succeeded { transaction_id: TransactionId::new("ch_1")?, amount: intent.amount })?;
    ///
    /// // Refund 2,000 under the merchant's refund id; the refund's reply times out.
    /// let refund_id = RequestId::new("refund-77")?;
    /// let Decision::Attempt(refund) =
    ///     ledger.begin_operation(&key, OperationKind::Refund, &refund_id, Amount::new(2_000)?)?
    /// else { unreachable!() };
    /// ledger.record_operation(refund, Outcome::Unknown { reason: UnknownReason::Timeout })?;
    /// // A retry with the same refund id does not refund twice: it waits for the reconciler.
    /// assert!(matches!(
    ///     ledger.begin_operation(&key, OperationKind::Refund, &refund_id, Amount::new(2_000)?)?,
    ///     Decision::AwaitingReconciliation { .. }
    /// ));
    /// // More than what is left is refused before anything is sent: 2,000 is in doubt.
    /// let refused = ledger.begin_operation(&key, OperationKind::Refund, &RequestId::new("refund-78")?, Amount::new(3_001)?);
    /// assert!(matches!(refused, Err(Error::Rejected(r)) if matches!(r.reason, RejectionReason::OverRefund { available: 3_000, .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Rejected`] with [`RejectionReason::OverCapture`], `OverRefund`,
    /// `OperationNotAllowed`, `RequestIdReused` or `NoIntent`; [`Error::ReadOnly`],
    /// [`Error::IndexFailed`], journal errors.
    ///
    /// [`RejectionReason::OverCapture`]: crate::RejectionReason::OverCapture
    pub fn begin_operation(
        &self,
        key: &IdempotencyKey,
        kind: OperationKind,
        request_id: &RequestId,
        amount: Amount,
    ) -> Result<OperationBegin> {
        let begun = self.admit_operation(key, kind, request_id, amount)?;
        crate::telemetry::decision(kind.name(), begun.name());
        Ok(begun)
    }

    fn admit_operation(
        &self,
        key: &IdempotencyKey,
        kind: OperationKind,
        request_id: &RequestId,
        amount: Amount,
    ) -> Result<OperationBegin> {
        self.writable()?;
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let state = entry
            .as_ref()
            .map_or_else(|| PaymentState::new(key.clone()), |e| e.state.clone());
        let decision = state
            .decide_operation(kind, request_id, amount)
            .map_err(|reason| {
                Error::Rejected(Rejection {
                    phase: state.phase.name(),
                    event: "operation requested",
                    reason,
                })
            })?;
        let plan = match decision.into_attempt() {
            Ok(plan) => plan,
            Err(Decision::InFlight { attempt }) => {
                let ordinal = state
                    .operation_by_request(request_id)
                    .map_or(0, |op| op.ordinal);
                if self.operation_live(key, ordinal) {
                    return Ok(Decision::InFlight { attempt });
                }
                // Nobody will report this attempt's outcome.
                let step = OperationStep::OutcomeReported {
                    attempt,
                    outcome: Outcome::Unknown {
                        reason: UnknownReason::TicketDropped,
                    },
                };
                let event = self.event(key, EventKind::OperationStepped { ordinal, step });
                self.write_events(key, entry.as_deref(), vec![event])?;
                return Ok(Decision::AwaitingReconciliation { attempt });
            }
            Err(other) => return Ok(other.widen()),
        };
        let provider_reference =
            ProviderReference::derive_operation(key, kind, plan.ordinal, plan.attempt);
        let mut events = Vec::with_capacity(2);
        if plan.record_request {
            events.push(self.event(
                key,
                EventKind::OperationRequested {
                    ordinal: plan.ordinal,
                    kind,
                    request_id: request_id.clone(),
                    amount,
                },
            ));
        }
        events.push(self.event(
            key,
            EventKind::OperationStepped {
                ordinal: plan.ordinal,
                step: OperationStep::AttemptStarted {
                    attempt: plan.attempt,
                    provider_reference: provider_reference.clone(),
                },
            },
        ));
        self.write_events(key, entry.as_deref(), events)?;
        lock(&self.inner.operations_live).insert(
            (key.clone(), plan.ordinal),
            (plan.attempt, self.monotonic_now()),
        );
        tracing::debug!(key = %key, %kind, ordinal = plan.ordinal, attempt = plan.attempt.get(), "operation attempt started");
        Ok(Decision::Attempt(OperationTicket {
            key: key.clone(),
            ordinal: plan.ordinal,
            kind,
            amount,
            attempt: plan.attempt,
            provider_reference,
            ledger: Arc::downgrade(&self.inner),
            lease_ms: self.inner.config.ticket_lease_ms,
            recorded: false,
        }))
    }

    /// Records the outcome of an operation ticket's provider call (`Succeeded` carries the
    /// provider's id of the capture, void or refund). If the operation was settled meanwhile,
    /// the outcome is recorded as evidence, and a contradiction becomes a conflict.
    ///
    /// A partial capture of a hold, after which a void is no longer possible:
    ///
    /// ```
    /// use payledger::*;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
    /// let key = IdempotencyKey::new("order-8/hold")?;
    /// let intent = Intent {
    ///     amount: Amount::new(10_000)?,
    ///     currency: Currency::new("EUR")?,
    ///     account: AccountId::new("acct_1")?,
    ///     customer: CustomerRef::new("cus_1")?,
    ///     description: None,
    ///     metadata: Metadata::default(),
    /// };
    /// let Begin::Attempt(hold) = ledger.begin_authorization(&key, &intent, true)? else { unreachable!() };
    /// ledger.record(hold, Outcome::Succeeded { transaction_id: TransactionId::new("auth_1")?, amount: intent.amount })?;
    ///
    /// // Capture 6,000 of the 10,000 held (the shipped part of the order).
    /// let capture_id = RequestId::new("capture-1")?;
    /// let Decision::Attempt(capture) =
    ///     ledger.begin_operation(&key, OperationKind::Capture, &capture_id, Amount::new(6_000)?)?
    /// else { unreachable!() };
    /// let state = ledger.record_operation(
    ///     capture,
    ///     Outcome::Succeeded { transaction_id: TransactionId::new("ca_1")?, amount: Amount::new(6_000)? },
    /// )?;
    /// assert_eq!(state.sums().captured, 6_000);
    /// // A void would release money that was captured: refused before anything is sent.
    /// let void = ledger.begin_operation(&key, OperationKind::Void, &RequestId::new("void-1")?, Amount::new(10_000)?);
    /// assert!(matches!(void, Err(Error::Rejected(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::StaleTicket`] for a ticket of another ledger; journal or index errors (the
    /// operation then stays in flight, and the reconciler takes it over as unknown).
    pub fn record_operation(
        &self,
        mut ticket: OperationTicket,
        outcome: Outcome,
    ) -> Result<PaymentState> {
        if !std::ptr::eq(ticket.ledger.as_ptr(), Arc::as_ptr(&self.inner)) {
            return Err(Error::StaleTicket {
                key: ticket.key.to_string(),
                attempt: ticket.attempt.get(),
            });
        }
        ticket.recorded = true;
        let (key, ordinal, attempt) = (ticket.key.clone(), ticket.ordinal, ticket.attempt);
        let _guard = self.lock_key(&key);
        self.inner.release_operation(&key, ordinal, attempt);
        let result = self.record_operation_locked(&key, ordinal, attempt, outcome);
        match &result {
            // Refused by the fold: nothing was to be written.
            Ok(_) | Err(Error::Rejected(_)) => {}
            Err(e) => {
                tracing::error!(key = %key, ordinal, attempt = attempt.get(), error = %e, "operation outcome could not be recorded; operation treated as unknown");
                // The latest attempt's failure is the one shown: a late ticket of an earlier
                // attempt never hides it.
                let now = self.now();
                let mut unwritten = lock(&self.inner.operations_unwritten);
                let marked = unwritten.entry((key, ordinal)).or_insert((attempt, now));
                if marked.0 < attempt {
                    *marked = (attempt, now);
                }
            }
        }
        result
    }

    /// [`Ledger::record_operation`] under the key's lock.
    fn record_operation_locked(
        &self,
        key: &IdempotencyKey,
        ordinal: u32,
        attempt: AttemptNumber,
        outcome: Outcome,
    ) -> Result<PaymentState> {
        let entry = self.inner.index.get(key)?;
        let state = entry
            .as_ref()
            .map_or_else(|| PaymentState::new(key.clone()), |e| e.state.clone());
        let in_flight = state.operation(ordinal).is_some_and(
            |op| matches!(op.phase, Phase::InFlight { attempt: a, .. } if a == attempt),
        );
        if in_flight {
            let step = OperationStep::OutcomeReported { attempt, outcome };
            let event = self.event(key, EventKind::OperationStepped { ordinal, step });
            return Ok(IndexEntry::state_of(self.write_events(
                key,
                entry.as_deref(),
                vec![event],
            )?));
        }
        let finding = match outcome {
            Outcome::Succeeded {
                transaction_id,
                amount,
            } => Finding::Charged {
                transaction_id,
                amount,
            },
            Outcome::Declined { code } => Finding::Declined { code },
            Outcome::NotSent { .. } | Outcome::Unknown { .. } => return Ok(state),
        };
        let at = (ordinal, attempt);
        self.record_operation_finding(
            key,
            entry.as_deref(),
            &state,
            at,
            EvidenceSource::Reply,
            finding,
        )
        .map(|(state, _)| state)
    }

    /// Evidence about attempt `at.1` of operation `at.0`: agrees, settles it, or contradicts
    /// (a conflict of the operation).
    fn record_operation_finding(
        &self,
        key: &IdempotencyKey,
        entry: Option<&IndexEntry>,
        state: &PaymentState,
        (ordinal, attempt): (u32, AttemptNumber),
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<(PaymentState, EvidenceOutcome)> {
        let verdict = state
            .weigh_operation(ordinal, attempt, &finding)
            .map_err(|reason| Rejection {
                phase: state.phase.name(),
                event: "operation evidence received",
                reason,
            })?;
        let (step, outcome) = match verdict {
            Verdict::Contradicts => {
                tracing::error!(key = %key, ordinal, attempt = attempt.get(), ?source, ?finding, "conflicting evidence about an operation");
                (
                    OperationStep::ConflictDetected {
                        attempt,
                        source,
                        finding,
                    },
                    EvidenceOutcome::Conflict,
                )
            }
            Verdict::Agrees => (
                OperationStep::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Confirmed,
            ),
            Verdict::Settles(_) => (
                OperationStep::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Settled(Phase::Vacant),
            ),
        };
        let event = self.event(key, EventKind::OperationStepped { ordinal, step });
        let after = self.write_events(key, entry, vec![event])?;
        let outcome = match outcome {
            EvidenceOutcome::Settled(_) => EvidenceOutcome::Settled(
                after
                    .state
                    .operation(ordinal)
                    .map_or(Phase::Vacant, |op| op.phase.clone()),
            ),
            other => other,
        };
        Ok((IndexEntry::state_of(after), outcome))
    }

    /// Evidence sent with an operation's reference (called by `record_evidence` with the key's
    /// lock held); `None` if the reference is not one of the key's operations.
    pub(super) fn operation_evidence(
        &self,
        key: &IdempotencyKey,
        entry: Option<&IndexEntry>,
        state: &PaymentState,
        reference: &ProviderReference,
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<Option<EvidenceOutcome>> {
        let Some(at) = state.operation_for_reference(reference) else {
            return Ok(None);
        };
        self.record_operation_finding(key, entry, state, at, source, finding)
            .map(|(_, outcome)| Some(outcome))
    }

    /// An operator settles an unknown or in-review attempt of an operation (`Charged` meaning
    /// executed, for the operation's amount).
    ///
    /// A void whose reply was lost, settled by an operator who found it in the provider's
    /// dashboard:
    ///
    /// ```
    /// use payledger::*;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
    /// let key = IdempotencyKey::new("order-6/hold")?;
    /// let intent = Intent {
    ///     amount: Amount::new(4_000)?,
    ///     currency: Currency::new("EUR")?,
    ///     account: AccountId::new("acct_1")?,
    ///     customer: CustomerRef::new("cus_1")?,
    ///     description: None,
    ///     metadata: Metadata::default(),
    /// };
    /// let Begin::Attempt(hold) = ledger.begin_authorization(&key, &intent, false)? else { unreachable!() };
    /// ledger.record(hold, Outcome::Succeeded { transaction_id: TransactionId::new("auth_6")?, amount: intent.amount })?;
    /// let Decision::Attempt(void) =
    ///     ledger.begin_operation(&key, OperationKind::Void, &RequestId::new("void-6")?, intent.amount)?
    /// else { unreachable!() };
    /// let (ordinal, attempt) = (void.ordinal(), void.attempt());
    /// ledger.record_operation(void, Outcome::Unknown { reason: UnknownReason::Timeout })?;
    ///
    /// let state = ledger.resolve_operation(
    ///     &key,
    ///     ordinal,
    ///     attempt,
    ///     Resolution::Charged { transaction_id: TransactionId::new("vo_6")?, amount: intent.amount },
    ///     Operator::new("ops-alice")?,
    ///     Note::new("void vo_6 seen in the provider dashboard")?,
    /// )?;
    /// assert!(matches!(state.operation(ordinal).map(|o| &o.phase), Some(Phase::Succeeded { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Rejected`] if that attempt is not awaiting reconciliation or the amount is not
    /// the operation's; journal or index errors.
    pub fn resolve_operation(
        &self,
        key: &IdempotencyKey,
        ordinal: u32,
        attempt: AttemptNumber,
        resolution: Resolution,
        operator: Operator,
        note: Note,
    ) -> Result<PaymentState> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let step = OperationStep::ResolvedByOperator {
            attempt,
            resolution,
            operator,
            note,
        };
        let event = self.event(key, EventKind::OperationStepped { ordinal, step });
        let after = self.write_events(key, entry.as_deref(), vec![event])?;
        tracing::info!(key = %key, ordinal, "operation resolved by operator");
        Ok(IndexEntry::state_of(after))
    }

    /// Whether a live ticket holds operation `ordinal` of `key`.
    fn operation_live(&self, key: &IdempotencyKey, ordinal: u32) -> bool {
        lock(&self.inner.operations_live).contains_key(&(key.clone(), ordinal))
    }

    /// Appends the answer to a query about `attempt` of operation `ordinal` if it still awaits
    /// it; returns its new phase, or `None` if it moved on meanwhile.
    pub(crate) fn record_operation_query(
        &self,
        key: &IdempotencyKey,
        ordinal: u32,
        attempt: AttemptNumber,
        reply: QueryReply,
        asked_at: MonotonicMillis,
    ) -> Result<Option<Phase>> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let Some(Phase::Unknown {
            attempt: current,
            waited_ms: before_ms,
            ..
        }) = entry
            .as_ref()
            .and_then(|e| e.state.operation(ordinal))
            .map(|op| &op.phase)
        else {
            return Ok(None);
        };
        if *current != attempt {
            return Ok(None);
        }
        // Waited until the query was sent: what earlier processes recorded plus this process's
        // monotonic wait; nothing while the attempt cannot be tracked.
        let waited_ms = self
            .unknown_wait(key, Track::Operation(ordinal), attempt, *before_ms)
            .map_or(0, |wait| wait.before_ms + asked_at.since(wait.since));
        let answer = reply.classify(self.inner.config.reconcile.not_found(), waited_ms);
        let step = OperationStep::ProviderQueried { attempt, answer };
        let event = self.event(key, EventKind::OperationStepped { ordinal, step });
        let after = self.write_events(key, entry.as_deref(), vec![event])?;
        let phase = after
            .state
            .operation(ordinal)
            .map_or(Phase::Vacant, |op| op.phase.clone());
        Ok(Some(phase))
    }

    /// Escalates an unknown operation to review; `false` if it moved on meanwhile.
    pub(crate) fn escalate_operation(
        &self,
        key: &IdempotencyKey,
        ordinal: u32,
        attempt: AttemptNumber,
        queries: u32,
    ) -> Result<bool> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let unknown = entry
            .as_ref()
            .and_then(|e| e.state.operation(ordinal))
            .is_some_and(
                |op| matches!(op.phase, Phase::Unknown { attempt: a, .. } if a == attempt),
            );
        if !unknown {
            return Ok(false);
        }
        let step = OperationStep::EscalatedToReview {
            attempt,
            reason: ReviewReason::QueriesExhausted { queries },
        };
        let event = self.event(key, EventKind::OperationStepped { ordinal, step });
        self.write_events(key, entry.as_deref(), vec![event])?;
        tracing::warn!(key = %key, ordinal, attempt = attempt.get(), queries, "operation escalated to manual review");
        Ok(true)
    }

    /// Takes over operations in flight that nobody will report: no live ticket (dropped, or a
    /// previous process's: `orphans`) or an expired lease. They become unknown; returns how many.
    /// The reconciler's scan resumes where the previous one stopped, so every key gets its turn
    /// (at open, `orphans`, every listed key's operations become unknown, so it starts over).
    pub(crate) fn take_over_operations(&self, limit: usize, orphans: bool) -> Result<usize> {
        self.wait_indexed()?;
        let limit = limit.min(LIST_LIMIT_MAX);
        let cursor = match orphans {
            true => None,
            false => lock(&self.inner.operations_cursor).clone(),
        };
        let keys = self
            .inner
            .index
            .list(PhaseKind::OperationInFlight, cursor.as_ref(), limit)?;
        if !orphans {
            *lock(&self.inner.operations_cursor) = if keys.len() < limit {
                None
            } else {
                keys.last().cloned()
            };
        }
        let lease_ms = self.inner.config.ticket_lease_ms;
        let mut count = 0;
        for key in keys {
            let _guard = self.lock_key(&key);
            let entry = self.inner.index.get(&key)?;
            let Some(state) = entry.as_deref().map(|e| &e.state) else {
                continue;
            };
            let mut events = Vec::new();
            for op in &state.operations {
                let Phase::InFlight { attempt, .. } = op.phase else {
                    continue;
                };
                // A live ticket of another attempt does not hold this one.
                let live = lock(&self.inner.operations_live)
                    .get(&(key.clone(), op.ordinal))
                    .copied()
                    .filter(|(live_attempt, _)| *live_attempt == attempt);
                let reason = match live {
                    None if orphans => UnknownReason::ProcessEnded,
                    None => UnknownReason::TicketDropped,
                    Some((_, issued)) if self.monotonic_now().since(issued) > lease_ms => {
                        self.inner.release_operation(&key, op.ordinal, attempt);
                        UnknownReason::LeaseExpired
                    }
                    Some(_) => continue,
                };
                let step = OperationStep::OutcomeReported {
                    attempt,
                    outcome: Outcome::Unknown { reason },
                };
                events.push(self.event(
                    &key,
                    EventKind::OperationStepped {
                        ordinal: op.ordinal,
                        step,
                    },
                ));
            }
            if !events.is_empty() {
                count += events.len();
                self.write_events(&key, entry.as_deref(), events)?;
            }
        }
        Ok(count)
    }
}
