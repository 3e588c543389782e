//! [`StoreLedger`]: the charge's discipline over any [`EventStore`] — several processes sharing
//! one store (PostgreSQL) keep the embedded ledger's promise.
//!
//! Invariants:
//! - every decision is the model's (`PaymentState::decide`, `apply`, `weigh`) on a state the
//!   key had (loaded from the store, written by this process, or — for `begin` — the empty state
//!   of a new key); every write is a compare-and-append at the version that state had, so a
//!   process that decided on a stale state writes nothing, loads again and decides again: two
//!   processes double-clicking one key start one attempt between them;
//! - a ticket is valid only in its lease: an attempt in flight longer than `ticket_lease_ms` is
//!   taken over by any process's reconciler as unknown (its process may have died between the
//!   provider call and the outcome); a late outcome is then recorded as evidence;
//! - time across processes is the wall clock: an unknown attempt's "not found" wait is measured
//!   from when it became unknown, and the policy's skew margin covers the clocks' difference.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Append, Appended, EventStore};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::ledger::{ChargeReport, call_provider, check_deadline};
use crate::model::{
    AttemptNumber, Decision, Event, EventKind, EvidenceSource, Finding, IdempotencyKey, Intent,
    Outcome, PaymentState, Phase, PhaseKind, ProviderReference, ReconcileConfig, Rejection,
    ReviewReason, UnixMillis, UnknownReason, Verdict, apply,
};
use crate::provider::Provider;
use crate::reconcile::ReconcileReport;
use crate::sync::lock;

/// How many times a write is decided again after losing a race before the store is called
/// contended.
const RACES_MAX: u32 = 16;

/// How a [`StoreLedger`] paces its tickets and its reconciler.
#[derive(Clone)]
pub struct StoreConfig {
    /// Backoff, "not found" policy, queries before review, batch size.
    pub reconcile: ReconcileConfig,
    /// How long a ticket is valid: after it, any process's reconciler takes the attempt over
    /// as unknown. Default 60 s.
    pub ticket_lease_ms: u64,
    /// The wall clock every event is stamped with.
    pub clock: Arc<dyn Clock>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            reconcile: ReconcileConfig::default(),
            ticket_lease_ms: 60_000,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("reconcile", &self.reconcile)
            .field("ticket_lease_ms", &self.ticket_lease_ms)
            .finish_non_exhaustive()
    }
}

/// The right to make one provider call for one attempt, for the ticket's lease. Its
/// `AttemptStarted` is durable in the store. Dropping it unrecorded leaves the attempt in
/// flight until its lease expires; then it is unknown, never retryable at once.
#[derive(Debug)]
#[must_use = "record the outcome of the provider call with StoreLedger::record"]
pub struct StoreTicket {
    key: IdempotencyKey,
    attempt: AttemptNumber,
    provider_reference: ProviderReference,
    /// The key's state and version right after the attempt started: `record` appends at that
    /// version without loading first (one round trip fewer), and loads only if it raced.
    seen: Option<(PaymentState, u64)>,
}

impl StoreTicket {
    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
    /// The attempt.
    pub fn attempt(&self) -> AttemptNumber {
        self.attempt
    }
    /// The reference to send to the provider as its idempotency key.
    pub fn provider_reference(&self) -> &ProviderReference {
        &self.provider_reference
    }
}

/// The gate, the outcomes and the reconciler over an [`EventStore`].
#[derive(Debug)]
pub struct StoreLedger<S> {
    store: S,
    config: StoreConfig,
    /// Where the next pass's scan of attempts in flight resumes, so every key gets its turn.
    in_flight_cursor: Mutex<Option<IdempotencyKey>>,
}

impl<S: EventStore> StoreLedger<S> {
    /// A ledger over `store`.
    pub fn new(store: S, config: StoreConfig) -> Self {
        Self {
            store,
            config,
            in_flight_cursor: Mutex::new(None),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key's state.
    ///
    /// # Errors
    /// The store's errors.
    pub fn state(&self, key: &IdempotencyKey) -> Result<Option<PaymentState>> {
        Ok(self.store.load(key)?.map(|stored| stored.state))
    }

    /// The gate: as [`Ledger::begin`](crate::Ledger::begin), across processes.
    ///
    /// Most keys a service begins are new, so `begin` first decides as if the key had no
    /// events and appends at version 0 without loading: one round trip for a new key. A key
    /// that has events makes that append lose (it writes nothing), and `begin` loads and
    /// decides on what is there, as after any lost race: one round trip more for a retry.
    ///
    /// # Errors
    /// The store's errors; [`Error::Contended`] if other writers kept winning.
    pub fn begin(&self, key: &IdempotencyKey, intent: &Intent) -> Result<Decision<StoreTicket>> {
        let fingerprint = intent.fingerprint();
        let mut ticket = None;
        let mut answer = None;
        let new_key = (PaymentState::new(key.clone()), 0);
        let written = self.write_seen(key, Some(new_key), |state| {
            ticket = None;
            let plan = match state.decide(&fingerprint).into_attempt() {
                Ok(plan) => plan,
                Err(other) => {
                    answer = Some(other);
                    return Ok(Vec::new());
                }
            };
            let reference = ProviderReference::derive(key, plan.attempt);
            let mut kinds = Vec::new();
            if plan.record_intent {
                kinds.push(EventKind::IntentRecorded {
                    intent: intent.clone(),
                    fingerprint,
                });
            }
            kinds.push(EventKind::AttemptStarted {
                attempt: plan.attempt,
                provider_reference: reference.clone(),
            });
            ticket = Some(StoreTicket {
                key: key.clone(),
                attempt: plan.attempt,
                provider_reference: reference,
                seen: None,
            });
            Ok(kinds)
        })?;
        if let Some(ticket) = &mut ticket {
            ticket.seen = Some(written);
        }
        match (ticket, answer) {
            (Some(ticket), _) => Ok(Decision::Attempt(ticket)),
            (None, Some(answer)) => Ok(answer.widen()),
            (None, None) => Err(Error::Contended {
                key: key.to_string(),
                races: RACES_MAX,
            }),
        }
    }

    /// Records the outcome of a ticket's provider call; if the attempt was settled or taken
    /// over meanwhile, what the reply says is evidence (a contradiction, a conflict).
    ///
    /// # Errors
    /// The store's errors; [`Error::Rejected`] for a ticket whose attempt never started.
    pub fn record(&self, mut ticket: StoreTicket, outcome: Outcome) -> Result<PaymentState> {
        let attempt = ticket.attempt;
        let seen = ticket.seen.take();
        self.write_seen(&ticket.key, seen, |state| {
            if matches!(state.phase, Phase::InFlight { attempt: a, .. } if a == attempt) {
                return Ok(vec![EventKind::OutcomeReported {
                    attempt,
                    outcome: outcome.clone(),
                }]);
            }
            let finding = match &outcome {
                Outcome::Succeeded {
                    transaction_id,
                    amount,
                } => Finding::Charged {
                    transaction_id: transaction_id.clone(),
                    amount: *amount,
                },
                Outcome::Declined { code } => Finding::Declined { code: code.clone() },
                Outcome::NotSent { .. } | Outcome::Unknown { .. } => return Ok(Vec::new()),
            };
            Ok(vec![evidence_event(
                state,
                attempt,
                EvidenceSource::Reply,
                finding,
            )?])
        })
        .map(|(state, _)| state)
    }

    /// Records a webhook or settlement line about the charge attempt sent with `reference`:
    /// evidence that agrees or settles the attempt, or a conflict. `None` if no key of the
    /// store started an attempt with `reference`.
    ///
    /// # Errors
    /// The store's errors; [`Error::Rejected`] for evidence about an attempt that never started.
    pub fn record_evidence(
        &self,
        reference: &ProviderReference,
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<Option<PaymentState>> {
        let (Some(key), Some(attempt)) = (self.store.key_of(reference)?, reference.attempt())
        else {
            return Ok(None);
        };
        if ProviderReference::derive(&key, attempt) != *reference {
            // An operation's reference: captures, voids and refunds are not on this ledger yet.
            return Ok(None);
        }
        self.write(&key, |state| {
            Ok(vec![evidence_event(
                state,
                attempt,
                source,
                finding.clone(),
            )?])
        })
        .map(Some)
    }

    /// begin → charge → record, as [`Ledger::charge_once`](crate::Ledger::charge_once).
    ///
    /// # Errors
    /// [`Error::Input`] if `deadline` is not shorter than the ticket lease; otherwise as
    /// [`StoreLedger::begin`] and [`StoreLedger::record`].
    pub fn charge_once(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        provider: &dyn Provider,
        deadline: Duration,
    ) -> Result<ChargeReport> {
        check_deadline(deadline, self.config.ticket_lease_ms)?;
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

    /// One reconciler pass: takes over attempts in flight past their lease (their process may
    /// be gone), then queries the unknown keys whose time has come, appends each answer, and
    /// escalates to review once the queries are spent. Any process may run it; a key another
    /// process settled meanwhile is skipped (its compare-and-append loses).
    ///
    /// # Errors
    /// The store's errors.
    pub fn reconcile_once(&self, provider: &dyn Provider) -> Result<ReconcileReport> {
        let batch = self.config.reconcile.batch_max();
        let now = self.config.clock.now();
        let mut report = ReconcileReport::default();
        let cursor = lock(&self.in_flight_cursor).clone();
        let in_flight = self
            .store
            .list(PhaseKind::InFlight, cursor.as_ref(), batch)?;
        *lock(&self.in_flight_cursor) = if in_flight.len() < batch {
            None
        } else {
            in_flight.last().map(|s| s.key.clone())
        };
        for state in in_flight {
            let Phase::InFlight {
                attempt,
                started_at,
                ..
            } = state.phase
            else {
                continue;
            };
            if now.since(started_at) <= self.config.ticket_lease_ms {
                continue;
            }
            let taken = self.write(&state.key, |current| {
                Ok(match current.phase {
                    Phase::InFlight { attempt: a, .. } if a == attempt => {
                        vec![EventKind::OutcomeReported {
                            attempt,
                            outcome: Outcome::Unknown {
                                reason: UnknownReason::LeaseExpired,
                            },
                        }]
                    }
                    _ => Vec::new(),
                })
            })?;
            if matches!(taken.phase, Phase::Unknown { attempt: a, .. } if a == attempt) {
                report.abandoned += 1;
            }
        }
        let queries_max = self.config.reconcile.queries_max();
        for key in self.store.due(now, batch)? {
            let Some(state) = self.state(&key)? else {
                continue;
            };
            let Phase::Unknown {
                attempt,
                queries,
                since,
                ..
            } = state.phase
            else {
                continue;
            };
            report.examined += 1;
            let kind = if queries >= queries_max {
                EventKind::EscalatedToReview {
                    attempt,
                    reason: ReviewReason::QueriesExhausted { queries },
                }
            } else {
                let asked_at = self.config.clock.now();
                let reply = provider.query(&ProviderReference::derive(&key, attempt));
                let waited_ms = asked_at.since(since);
                EventKind::ProviderQueried {
                    attempt,
                    answer: reply.classify(self.config.reconcile.not_found(), waited_ms),
                }
            };
            let after = self.write(&key, |current| {
                Ok(match current.phase {
                    Phase::Unknown {
                        attempt: a,
                        queries: q,
                        ..
                    } if a == attempt && q == queries => vec![kind.clone()],
                    _ => Vec::new(),
                })
            })?;
            match after.phase {
                Phase::Unknown { attempt: a, .. } if a == attempt => report.rescheduled += 1,
                Phase::InReview { attempt: a, .. } if a == attempt => report.escalated += 1,
                _ => report.resolved += 1,
            }
        }
        Ok(report)
    }

    /// Load, decide, compare-and-append, until the append wins: `decide` gives the events to
    /// append to the state it is shown (none: nothing to write). Returns the state after.
    fn write(
        &self,
        key: &IdempotencyKey,
        decide: impl FnMut(&PaymentState) -> Result<Vec<EventKind>>,
    ) -> Result<PaymentState> {
        self.write_seen(key, None, decide).map(|(state, _)| state)
    }

    /// As [`StoreLedger::write`], deciding first on `seen` (a state and version this process
    /// wrote itself) instead of loading; a stale `seen` loses its compare-and-append and the
    /// next try loads. Returns the state after and its version.
    fn write_seen(
        &self,
        key: &IdempotencyKey,
        mut seen: Option<(PaymentState, u64)>,
        mut decide: impl FnMut(&PaymentState) -> Result<Vec<EventKind>>,
    ) -> Result<(PaymentState, u64)> {
        for _ in 0..RACES_MAX {
            let (state, version) = match seen.take() {
                Some(seen) => seen,
                None => match self.store.load(key)? {
                    Some(stored) => (stored.state, stored.version),
                    None => (PaymentState::new(key.clone()), 0),
                },
            };
            let kinds = decide(&state)?;
            if kinds.is_empty() {
                return Ok((state, version));
            }
            let at = self.config.clock.now();
            let events: Vec<Event> = kinds
                .into_iter()
                .map(|kind| Event {
                    key: key.clone(),
                    at,
                    kind,
                })
                .collect();
            let mut after = state;
            for event in &events {
                after = apply(&after, event)?;
            }
            let last_at = events.last().map_or(UnixMillis(0), |e| e.at);
            let append = Append {
                key,
                expected_version: version,
                events: &events,
                after: &after,
                next_query_at: self.config.reconcile.next_query_at_state(&after, last_at),
            };
            match self.store.append(append)? {
                Appended::Done { version } => return Ok((after, version)),
                Appended::Raced => continue,
            }
        }
        Err(Error::Contended {
            key: key.to_string(),
            races: RACES_MAX,
        })
    }
}

/// The event recording `finding` about `attempt`: evidence that agrees or settles, or a
/// conflict that contradicts.
fn evidence_event(
    state: &PaymentState,
    attempt: AttemptNumber,
    source: EvidenceSource,
    finding: Finding,
) -> Result<EventKind> {
    let verdict = state.weigh(attempt, &finding).map_err(|reason| Rejection {
        phase: state.phase.name(),
        event: "evidence received",
        reason,
    })?;
    Ok(match verdict {
        Verdict::Contradicts => EventKind::ConflictDetected {
            attempt,
            source,
            finding,
        },
        Verdict::Agrees | Verdict::Settles(_) => EventKind::EvidenceReceived {
            attempt,
            source,
            finding,
        },
    })
}
