//! The caller's operations: `begin` (the gate), `record`, `charge_once`, `record_evidence` and
//! `resolve`.
//!
//! Invariants:
//! - `begin` hands out a ticket only after its `AttemptStarted` is durable;
//! - an outcome that arrives after the key was settled otherwise (a webhook first, a lease that
//!   expired) is recorded as evidence, and a contradiction becomes an explicit conflict;
//! - an outcome that cannot be written leaves the key unknown in this process, never retryable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gate::{Request, StartedAttempt};
use crate::index::IndexEntry;
use crate::model::Intent;
use crate::model::{AttemptNumber, IdempotencyKey, Note, Operator, ProviderReference};
use crate::model::{Decision, PaymentState, Phase, PrimaryKind, Rejection, Verdict};
use crate::model::{
    EventKind, EvidenceSource, Finding, Outcome, Resolution, UnknownReason, check_range,
};
use crate::provider::{ChargeReply, ChargeRequest, Provider};

use super::replies::{Begin, ChargeReport, EvidenceOutcome};
use super::{Ledger, Ticket, elapsed_us};

impl Ledger {
    /// The gate: what to do with a request for `key` carrying `intent`. On
    /// [`Begin::Attempt`], the intent (for a new key) and the attempt are durable and the
    /// caller may call the provider once with the ticket's reference.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::IndexFailed`], journal errors. A reused key or a key
    /// awaiting reconciliation is not an error but a [`Begin`] variant.
    pub fn begin(&self, key: &IdempotencyKey, intent: &Intent) -> Result<Begin> {
        self.begin_primary(key, intent, PrimaryKind::Purchase)
    }

    /// The gate for an authorisation: as [`Ledger::begin`], but the key's intent is recorded as
    /// a hold (`AuthorizationRecorded`), to be captured ([`Ledger::begin_operation`] with
    /// [`OperationKind::Capture`](crate::OperationKind::Capture)) or voided later; a success
    /// recorded for its ticket means authorised. The same key may never be used for a
    /// purchase ([`Begin::KeyReused`]).
    ///
    /// ```
    /// use payledger::*;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
    /// let key = IdempotencyKey::new("order-7/hold")?;
    /// let intent = Intent {
    ///     amount: Amount::new(10_000)?,
    ///     currency: Currency::new("EUR")?,
    ///     account: AccountId::new("acct_1")?,
    ///     customer: CustomerRef::new("cus_1")?,
    ///     description: None,
    ///     metadata: Metadata::default(),
    /// };
    /// let Begin::Attempt(ticket) = ledger.begin_authorization(&key, &intent, true)? else {
    ///     unreachable!("a new key")
    /// };
    /// // Authorise with the provider under ticket.provider_reference(), then:
    /// let authorised = Outcome::Succeeded { transaction_id: TransactionId::new("auth_1")?, amount: intent.amount };
    /// ledger.record(ticket, authorised)?;
    /// assert_eq!(ledger.state(&key)?.map(|s| s.sums().authorized), Some(10_000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Ledger::begin`].
    pub fn begin_authorization(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        multiple_captures: bool,
    ) -> Result<Begin> {
        self.begin_primary(
            key,
            intent,
            PrimaryKind::Authorization { multiple_captures },
        )
    }

    fn begin_primary(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        primary: PrimaryKind,
    ) -> Result<Begin> {
        let span = begin_span(key);
        let _enter = span.enter();
        let started = Instant::now();
        self.writable()?;
        let request = Request { intent, primary };
        let decision = self
            .inner
            .gate
            .admit(self, key, &request, self.now(), || self.monotonic_now())?;
        Ok(self.begun(key, primary, decision, started, &span))
    }

    /// The answer to a `begin`, its ticket made, logged and counted.
    pub(super) fn begun(
        &self,
        key: &IdempotencyKey,
        primary: PrimaryKind,
        decision: Decision<StartedAttempt>,
        started: Instant,
        span: &tracing::Span,
    ) -> Begin {
        let begin = decision.map_attempt(|started| {
            span.record("attempt", started.attempt.get());
            span.record("provider_reference", started.provider_reference.as_str());
            Ticket {
                key: key.clone(),
                attempt: started.attempt,
                provider_reference: started.provider_reference,
                ledger: Arc::downgrade(&self.inner),
                lease_ms: self.inner.config.ticket_lease_ms,
                recorded: false,
            }
        });
        tracing::debug!(
            decision = begin.name(),
            duration_us = elapsed_us(started),
            "begin"
        );
        crate::telemetry::decision(primary.name(), begin.name());
        begin
    }

    /// Records the outcome of a ticket's provider call. If evidence settled the key meanwhile
    /// (a webhook arrived first), the outcome is recorded as evidence instead, and a
    /// contradiction becomes a conflict.
    ///
    /// # Errors
    /// Journal or index errors: the key is then treated as unknown in this process (never as
    /// retryable) and the error is returned. [`Error::StaleTicket`] for a ticket of another
    /// ledger.
    pub fn record(&self, mut ticket: Ticket, outcome: Outcome) -> Result<PaymentState> {
        let span = record_span(&ticket);
        let _enter = span.enter();
        let started = Instant::now();
        self.check_ticket(&ticket)?;
        ticket.recorded = true;
        let key = ticket.key.clone();
        let attempt = ticket.attempt;
        let _guard = self.lock_key(&key);
        self.inner.gate.release(&key, attempt);
        let result = self.record_locked(&key, attempt, outcome);
        self.recorded(&key, result, started)
    }

    /// [`Error::StaleTicket`] unless `ticket` was handed out by this ledger.
    pub(super) fn check_ticket(&self, ticket: &Ticket) -> Result<()> {
        if std::ptr::eq(ticket.ledger.as_ptr(), Arc::as_ptr(&self.inner)) {
            Ok(())
        } else {
            Err(Error::StaleTicket {
                key: ticket.key.to_string(),
                attempt: ticket.attempt.get(),
            })
        }
    }

    /// The answer to a `record`, logged; an outcome that could not be written leaves the key
    /// unknown in this process. The caller holds the key's lock.
    pub(super) fn recorded(
        &self,
        key: &IdempotencyKey,
        result: Result<PaymentState>,
        started: Instant,
    ) -> Result<PaymentState> {
        match &result {
            Ok(state) => tracing::debug!(
                phase = state.phase.name(),
                duration_us = elapsed_us(started),
                "outcome recorded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "outcome could not be recorded; key treated as unknown");
                self.inner.gate.mark_unwritten(key, self.now());
            }
        }
        result
    }

    fn record_locked(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        outcome: Outcome,
    ) -> Result<PaymentState> {
        let entry = self.inner.index.get(key)?;
        let state = entry
            .as_ref()
            .map_or_else(|| PaymentState::new(key.clone()), |e| e.state.clone());
        if matches!(state.phase, Phase::InFlight { attempt: a, .. } if a == attempt) {
            let event = self.event(key, EventKind::OutcomeReported { attempt, outcome });
            return Ok(IndexEntry::state_of(self.write_events(
                key,
                entry.as_deref(),
                vec![event],
            )?));
        }
        // Settled meanwhile: what the reply says is evidence.
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
        self.record_finding(
            key,
            entry.as_deref(),
            &state,
            attempt,
            EvidenceSource::Reply,
            finding,
        )
        .map(|(state, _)| state)
    }

    fn record_finding(
        &self,
        key: &IdempotencyKey,
        entry: Option<&IndexEntry>,
        state: &PaymentState,
        attempt: AttemptNumber,
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<(PaymentState, EvidenceOutcome)> {
        let verdict = state.weigh(attempt, &finding).map_err(|reason| Rejection {
            phase: state.phase.name(),
            event: "evidence received",
            reason,
        })?;
        let (kind, outcome) = match verdict {
            Verdict::Contradicts => {
                tracing::error!(key = %key, attempt = attempt.get(), ?source, ?finding, "conflicting evidence: possible double charge");
                (
                    EventKind::ConflictDetected {
                        attempt,
                        source,
                        finding,
                    },
                    EvidenceOutcome::Conflict,
                )
            }
            Verdict::Agrees => (
                EventKind::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Confirmed,
            ),
            Verdict::Settles(_) => (
                EventKind::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Settled(Phase::Vacant),
            ),
        };
        let after = self.write_events(key, entry, vec![self.event(key, kind)])?;
        // Evidence that settles the key also ends this process's "outcome could not be
        // written" wait on it, as a query's answer or an operator's resolution does.
        if !matches!(
            after.state.phase,
            Phase::Unknown { .. } | Phase::InFlight { .. }
        ) {
            self.inner.gate.clear_unwritten(key);
        }
        let outcome = match outcome {
            // Report where the key really stands: a settled attempt beside a recorded
            // contradiction ends the key in conflict.
            EvidenceOutcome::Settled(_) => EvidenceOutcome::Settled(after.state.phase.clone()),
            other => other,
        };
        Ok((IndexEntry::state_of(after), outcome))
    }

    /// begin → charge → record, with the provider call bounded by `deadline`: a reply after
    /// the deadline is recorded as a timeout (unknown), whatever it said. The provider must give
    /// up by the deadline; if it hangs instead, the ticket's lease expires and the reconciler
    /// takes the attempt over (the late reply is then recorded as evidence).
    ///
    /// # Errors
    /// [`Error::Input`] if `deadline` is not shorter than the ticket lease; otherwise as
    /// [`Ledger::begin`] and [`Ledger::record`].
    pub fn charge_once(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        provider: &dyn Provider,
        deadline: Duration,
    ) -> Result<ChargeReport> {
        self.check_deadline(deadline)?;
        let fingerprint = intent.fingerprint();
        let ticket = match self.begin(key, intent)?.into_attempt() {
            Ok(ticket) => ticket,
            Err(other) => return Ok(ChargeReport::not_called(other)),
        };
        let outcome = call_provider(
            provider,
            intent,
            ticket.attempt,
            ticket.provider_reference.clone(),
            deadline,
        );
        let state = self.record(ticket, outcome.clone())?;
        Ok(ChargeReport {
            called_provider: true,
            outcome: Some(outcome),
            decision: state.decide(&fingerprint),
        })
    }

    /// Refuses a provider deadline that is not shorter than the ticket lease.
    pub(crate) fn check_deadline(&self, deadline: Duration) -> Result<()> {
        check_deadline(deadline, self.inner.config.ticket_lease_ms)
    }

    /// Records a webhook or settlement line about the attempt sent with `reference`: one of the
    /// key's charge attempts, or an attempt of one of its captures, voids or refunds (`Charged`
    /// then means executed).
    ///
    /// # Errors
    /// Journal or index errors; [`Error::Rejected`] for evidence about an attempt that never
    /// started.
    pub fn record_evidence(
        &self,
        reference: &ProviderReference,
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<EvidenceOutcome> {
        let span = tracing::info_span!("evidence", provider_reference = %reference, ?source);
        let _enter = span.enter();
        self.writable()?;
        let (Some(key), Some(attempt)) = (
            self.inner.index.key_for_reference(reference)?,
            reference.attempt(),
        ) else {
            tracing::warn!("evidence for a reference this ledger never issued");
            return Ok(EvidenceOutcome::UnknownReference);
        };
        let _guard = self.lock_key(&key);
        let entry = self.inner.index.get(&key)?;
        let Some(state) = entry.as_deref().map(|e| e.state.clone()) else {
            return Ok(EvidenceOutcome::UnknownReference);
        };
        if let Some(outcome) = self.operation_evidence(
            &key,
            entry.as_deref(),
            &state,
            reference,
            source,
            finding.clone(),
        )? {
            return Ok(outcome);
        }
        let (_, outcome) =
            self.record_finding(&key, entry.as_deref(), &state, attempt, source, finding)?;
        Ok(outcome)
    }

    /// An operator settles an unknown or in-review attempt.
    ///
    /// # Errors
    /// [`Error::Rejected`] if the key is not awaiting reconciliation on that attempt or the
    /// resolution's amount differs from the intent's; journal or index errors.
    pub fn resolve(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        resolution: Resolution,
        operator: Operator,
        note: Note,
    ) -> Result<PaymentState> {
        let span = tracing::info_span!("resolve", key = %key, attempt = attempt.get(), operator = %operator);
        let _enter = span.enter();
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let event = self.event(
            key,
            EventKind::ResolvedByOperator {
                attempt,
                resolution,
                operator,
                note,
            },
        );
        let after = self.write_events(key, entry.as_deref(), vec![event])?;
        self.inner.gate.clear_unwritten(key);
        tracing::info!(phase = after.state.phase.name(), "resolved by operator");
        Ok(IndexEntry::state_of(after))
    }
}

/// The span of one `begin`; the attempt fields are filled in once one is started.
pub(super) fn begin_span(key: &IdempotencyKey) -> tracing::Span {
    tracing::debug_span!("begin", key = %key, attempt = tracing::field::Empty, provider_reference = tracing::field::Empty)
}

/// The span of one `record`.
pub(super) fn record_span(ticket: &Ticket) -> tracing::Span {
    tracing::debug_span!("record", key = %ticket.key, attempt = ticket.attempt.get(), provider_reference = %ticket.provider_reference)
}

/// Refuses a provider deadline that is not shorter than a ticket lease of `lease_ms` (every
/// deadline, for a lease of 0 or 1 ms).
pub(crate) fn check_deadline(deadline: Duration, lease_ms: u64) -> Result<()> {
    let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    check_range("deadline_ms", deadline_ms, 1, lease_ms.saturating_sub(1))?;
    Ok(())
}

/// One provider charge call for `attempt`, bounded by `deadline`, as an outcome to record;
/// its latency goes to the metrics.
pub(crate) fn call_provider(
    provider: &dyn Provider,
    intent: &Intent,
    attempt: AttemptNumber,
    reference: ProviderReference,
    deadline: Duration,
) -> Outcome {
    let request = ChargeRequest::new(intent, attempt, reference, deadline);
    let started = Instant::now();
    let reply = provider.charge(&request);
    let elapsed = started.elapsed();
    crate::telemetry::provider_call(elapsed);
    outcome_within(reply, elapsed, deadline)
}

/// What a provider's `reply` means once the call took `elapsed`: a reply after the deadline is
/// a timeout (unknown), whatever it said.
pub(crate) fn outcome_within(reply: ChargeReply, elapsed: Duration, deadline: Duration) -> Outcome {
    if elapsed > deadline {
        Outcome::Unknown {
            reason: UnknownReason::Timeout,
        }
    } else {
        reply.classify()
    }
}
