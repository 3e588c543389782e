//! The provider seam and the reconciler that resolves unknown outcomes.
//!
//! Invariants:
//! - only a reply that proves the request never reached the provider is "not sent"; timeouts,
//!   dropped connections, server errors and replies of an unexpected shape are unknown;
//! - the reconciler appends only through [`Ledger`], so every answer passes the fold;
//! - an unknown key is never dropped: it is queried with bounded, jittered exponential backoff
//!   and, after `queries_max` answers that settle nothing, escalated to review (the
//!   dead-letter), where it stays listed and counted until evidence or an operator settles it.

use std::time::Duration;

use crate::error::Result;
use crate::event::{NotFoundPolicy, NotSentReason, Outcome, QueryAnswer, UnknownReason};
use crate::intent::Intent;
use crate::key::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, DeclineCode, Description,
    IdempotencyKey, ProviderReference, TransactionId, UnixMillis,
};
use crate::ledger::Ledger;
use crate::limits::QUERIES_MAX;
use crate::payment::Phase;

/// What is sent to the provider for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The reference for this attempt; send it as the provider's idempotency key.
    pub provider_reference: ProviderReference,
    /// The attempt number.
    pub attempt: AttemptNumber,
    /// Amount in minor units.
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
    /// Merchant or account.
    pub account: AccountId,
    /// Paying customer.
    pub customer: CustomerRef,
    /// Statement description.
    pub description: Option<Description>,
    /// How long the caller will wait for the reply; a reply after it counts as a timeout.
    pub deadline: Duration,
}

impl ChargeRequest {
    /// The request for `attempt` of `intent`.
    pub fn new(
        intent: &Intent,
        attempt: AttemptNumber,
        provider_reference: ProviderReference,
        deadline: Duration,
    ) -> Self {
        Self {
            provider_reference,
            attempt,
            amount: intent.amount,
            currency: intent.currency,
            account: intent.account.clone(),
            customer: intent.customer.clone(),
            description: intent.description.clone(),
            deadline,
        }
    }
}

/// A provider's reply to a charge, as raw as the integration received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeReply {
    /// The provider says it charged.
    Charged {
        /// Its transaction id, unvalidated.
        transaction_id: String,
        /// The amount it says it charged.
        amount_minor: u64,
    },
    /// The provider says it declined.
    Declined {
        /// Its code, unvalidated.
        code: String,
    },
    /// The request provably never reached the provider.
    NotSent(NotSentReason),
    /// No reply within the deadline.
    Timeout,
    /// The connection dropped after the request was sent.
    ConnectionLost,
    /// A server error.
    ServerError {
        /// Its status.
        status: u16,
    },
    /// A reply the integration could not parse.
    Malformed {
        /// What was received, for the logs.
        detail: String,
    },
}

impl ChargeReply {
    /// The model's outcome for this reply. Anything that does not prove what happened is
    /// unknown; a success with an invalid id or amount is unknown too (the reconciler will ask).
    pub fn classify(self) -> Outcome {
        let unparseable = Outcome::Unknown {
            reason: UnknownReason::UnparseableReply,
        };
        match self {
            ChargeReply::Charged {
                transaction_id,
                amount_minor,
            } => match (
                TransactionId::new(transaction_id),
                Amount::new(amount_minor),
            ) {
                (Ok(transaction_id), Ok(amount)) => Outcome::Succeeded {
                    transaction_id,
                    amount,
                },
                _ => unparseable,
            },
            ChargeReply::Declined { code } => match DeclineCode::new(code) {
                Ok(code) => Outcome::Declined { code },
                Err(_) => unparseable,
            },
            ChargeReply::NotSent(reason) => Outcome::NotSent { reason },
            ChargeReply::Timeout => Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
            ChargeReply::ConnectionLost => Outcome::Unknown {
                reason: UnknownReason::ConnectionLost,
            },
            ChargeReply::ServerError { status } => Outcome::Unknown {
                reason: UnknownReason::ProviderError { status },
            },
            ChargeReply::Malformed { detail } => {
                tracing::warn!(%detail, "provider reply could not be parsed; outcome unknown");
                unparseable
            }
        }
    }
}

/// A provider's reply to a status query, raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryReply {
    /// The charge exists and succeeded.
    Succeeded {
        /// Its transaction id, unvalidated.
        transaction_id: String,
        /// Its amount.
        amount_minor: u64,
    },
    /// The request exists and was declined.
    Declined {
        /// Its code, unvalidated.
        code: String,
    },
    /// The request exists and is still processing.
    Pending,
    /// The provider has no record of the reference.
    NotFound,
    /// The query failed.
    Failed(UnknownReason),
    /// A reply that could not be parsed.
    Malformed {
        /// What was received.
        detail: String,
    },
}

impl QueryReply {
    /// The model's answer, carrying `policy` for "not found".
    pub fn classify(self, policy: NotFoundPolicy) -> QueryAnswer {
        let failed = QueryAnswer::QueryFailed {
            reason: UnknownReason::UnparseableReply,
        };
        match self {
            QueryReply::Succeeded {
                transaction_id,
                amount_minor,
            } => match (
                TransactionId::new(transaction_id),
                Amount::new(amount_minor),
            ) {
                (Ok(transaction_id), Ok(amount)) => QueryAnswer::FoundSucceeded {
                    transaction_id,
                    amount,
                },
                _ => failed,
            },
            QueryReply::Declined { code } => match DeclineCode::new(code) {
                Ok(code) => QueryAnswer::FoundDeclined { code },
                Err(_) => failed,
            },
            QueryReply::Pending => QueryAnswer::FoundPending,
            QueryReply::NotFound => QueryAnswer::NotFound { policy },
            QueryReply::Failed(reason) => QueryAnswer::QueryFailed { reason },
            QueryReply::Malformed { detail } => {
                tracing::warn!(%detail, "provider query reply could not be parsed");
                failed
            }
        }
    }
}

/// A payment provider. Implementations must send `provider_reference` as the provider's own
/// idempotency key where the provider supports one.
pub trait Provider: Send + Sync {
    /// Sends one charge.
    fn charge(&self, request: &ChargeRequest) -> ChargeReply;
    /// Asks what happened to the request sent with `reference`.
    fn query(&self, reference: &ProviderReference) -> QueryReply;
}

/// A shared provider is a provider, so one client can serve `charge_once` and the reconciler.
impl<P: Provider + ?Sized> Provider for std::sync::Arc<P> {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        (**self).charge(request)
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        (**self).query(reference)
    }
}

/// How the reconciler behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// When "not found" may be trusted.
    pub not_found: NotFoundPolicy,
    /// Queries without a definitive answer before escalation to review (at most
    /// [`QUERIES_MAX`]).
    pub queries_max: u32,
    /// Wait before the first query after an attempt became unknown.
    pub backoff_initial_ms: u64,
    /// Longest wait between queries.
    pub backoff_max_ms: u64,
    /// Keys examined per `run_once` (at most [`crate::limits::RECONCILE_BATCH_MAX`]).
    pub batch_max: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            not_found: NotFoundPolicy {
                visibility_delay_ms: 60_000,
                clock_skew_margin_ms: 5_000,
                consistent_answers_min: 3,
            },
            queries_max: 12,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            batch_max: 100,
        }
    }
}

impl ReconcileConfig {
    pub(crate) fn queries_max(&self) -> u32 {
        self.queries_max.clamp(1, QUERIES_MAX)
    }

    /// When an unknown key should next be queried, given its last event's time: exponential
    /// backoff from `backoff_initial_ms`, capped at `backoff_max_ms`, plus up to 25 % jitter
    /// derived from the key (deterministic, so the index can be rebuilt to the same schedule).
    pub fn next_query_at(
        &self,
        key: &IdempotencyKey,
        phase: &Phase,
        last_event_at: UnixMillis,
    ) -> Option<UnixMillis> {
        let Phase::Unknown { queries, .. } = phase else {
            return None;
        };
        let base = self
            .backoff_initial_ms
            .max(1)
            .saturating_mul(1u64 << (*queries).min(32))
            .min(self.backoff_max_ms.max(1));
        let mut hasher = blake3::Hasher::new();
        hasher.update(key.as_str().as_bytes());
        hasher.update(&queries.to_le_bytes());
        let mut word = [0u8; 8];
        word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        let jitter = u64::from_le_bytes(word) % (base / 4 + 1);
        Some(last_event_at.plus_ms(base + jitter))
    }
}

/// What one reconciler pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Abandoned attempts (dropped tickets) marked unknown.
    pub abandoned: usize,
    /// Unknown keys examined.
    pub examined: usize,
    /// Keys settled (succeeded, declined, or proven not charged).
    pub resolved: usize,
    /// Keys queried without a definitive answer, rescheduled.
    pub rescheduled: usize,
    /// Keys escalated to review.
    pub escalated: usize,
}

/// Resolves unknown outcomes by asking the provider.
///
/// ```
/// use payledger::*;
/// use std::sync::Arc;
///
/// struct AlwaysPending;
/// impl Provider for AlwaysPending {
///     fn charge(&self, _: &ChargeRequest) -> ChargeReply { ChargeReply::Timeout }
///     fn query(&self, _: &ProviderReference) -> QueryReply { QueryReply::Pending }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
/// let reconciler = Reconciler::new(ledger.clone(), AlwaysPending);
/// let report = reconciler.run_once(UnixMillis(u64::MAX / 2))?;
/// assert_eq!(report.examined, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reconciler<P> {
    ledger: Ledger,
    provider: P,
}

impl<P: Provider> Reconciler<P> {
    /// A reconciler for `ledger` asking `provider`.
    pub fn new(ledger: Ledger, provider: P) -> Self {
        Self { ledger, provider }
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// One pass: marks abandoned attempts unknown, then queries a bounded batch of unknown keys
    /// whose query time has come, appends each answer, reschedules or escalates.
    ///
    /// # Errors
    /// Journal or index failures; a key whose state changed meanwhile is skipped, not an error.
    pub fn run_once(&self, now: UnixMillis) -> Result<ReconcileReport> {
        let span = tracing::info_span!("reconcile", now = now.0);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let config = *self.ledger.reconcile_config();
        let mut report = ReconcileReport {
            abandoned: self.ledger.settle_abandoned(now)?,
            ..ReconcileReport::default()
        };
        let batch = config
            .batch_max
            .clamp(1, crate::limits::RECONCILE_BATCH_MAX);
        for key in self.ledger.due_keys(now, batch)? {
            let Some(state) = self.ledger.state(&key)? else {
                continue;
            };
            let Phase::Unknown {
                attempt, queries, ..
            } = state.phase
            else {
                continue;
            };
            report.examined += 1;
            if queries >= config.queries_max() {
                if self.ledger.escalate(&key, attempt, queries, now)? {
                    report.escalated += 1;
                }
                continue;
            }
            let reference = ProviderReference::derive(&key, attempt);
            let answer = self.provider.query(&reference).classify(config.not_found);
            tracing::debug!(key = %key, attempt = attempt.get(), provider_reference = %reference, ?answer, "provider queried");
            match self.ledger.record_query(&key, attempt, answer, now)? {
                Some(Phase::Unknown { queries, .. }) => {
                    if queries >= config.queries_max() {
                        if self.ledger.escalate(&key, attempt, queries, now)? {
                            report.escalated += 1;
                        }
                    } else {
                        report.rescheduled += 1;
                    }
                }
                Some(_) => report.resolved += 1,
                None => {}
            }
        }
        tracing::info!(
            examined = report.examined,
            resolved = report.resolved,
            rescheduled = report.rescheduled,
            escalated = report.escalated,
            abandoned = report.abandoned,
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "reconcile pass"
        );
        Ok(report)
    }
}
