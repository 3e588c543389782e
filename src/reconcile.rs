//! The reconciler: resolves unknown outcomes by asking the provider.
//!
//! Invariants:
//! - the reconciler appends only through [`Ledger`]'s narrow reconciliation interface, so every
//!   answer passes the fold and is stamped by the ledger's clock;
//! - an unknown key is never dropped: it is queried with bounded, jittered exponential backoff
//!   and, after `queries_max` answers that settle nothing, escalated to review (the
//!   dead-letter), where it stays listed and counted until evidence or an operator settles it;
//! - an attempt whose ticket was dropped or whose lease expired is taken over (made unknown)
//!   and then queried like any other.

use crate::error::Result;
use crate::ledger::Ledger;
use crate::model::Phase;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference};
use crate::provider::Provider;

/// What one reconciler pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Attempts taken over (dropped tickets, expired leases) and marked unknown.
    pub abandoned: usize,
    /// Unknown attempts examined (of charges and of captures, voids and refunds).
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
/// let report = reconciler.run_once()?;
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

    /// One pass: takes over attempts whose ticket was dropped or whose lease expired (they
    /// become unknown), then queries a bounded batch of unknown keys whose query time has come,
    /// appends each answer, reschedules or escalates. Every event is stamped by the ledger's
    /// clock; the caller supplies no time.
    ///
    /// # Errors
    /// Journal or index failures; a key whose state changed meanwhile is skipped, not an error.
    pub fn run_once(&self) -> Result<ReconcileReport> {
        let span = tracing::info_span!("reconcile");
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let config = self.ledger.reconcile_config();
        let batch = config.batch_max();
        let mut report = ReconcileReport {
            abandoned: self.ledger.take_over_in_flight(batch)?
                + self.ledger.take_over_operations(batch, false)?,
            ..ReconcileReport::default()
        };
        for key in self.ledger.due_keys(batch)? {
            let Some(state) = self.ledger.state(&key)? else {
                continue;
            };
            if let Phase::Unknown {
                attempt, queries, ..
            } = state.phase
            {
                report.examined += 1;
                let reference = ProviderReference::derive(&key, attempt);
                let track = Track::Charge;
                self.reconcile_one(&key, track, attempt, queries, &reference, &mut report)?;
            }
            for op in &state.operations {
                let Phase::Unknown {
                    attempt, queries, ..
                } = op.phase
                else {
                    continue;
                };
                report.examined += 1;
                let reference =
                    ProviderReference::derive_operation(&key, op.kind, op.ordinal, attempt);
                let track = Track::Operation(op.ordinal);
                self.reconcile_one(&key, track, attempt, queries, &reference, &mut report)?;
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

    /// Queries one unknown attempt (of the key's charge or of an operation), or escalates it
    /// once its queries are spent.
    fn reconcile_one(
        &self,
        key: &IdempotencyKey,
        track: Track,
        attempt: AttemptNumber,
        queries: u32,
        reference: &ProviderReference,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let queries_max = self.ledger.reconcile_config().queries_max();
        let escalate = |queries| match track {
            Track::Charge => self.ledger.escalate(key, attempt, queries),
            Track::Operation(ordinal) => self
                .ledger
                .escalate_operation(key, ordinal, attempt, queries),
        };
        if queries >= queries_max {
            if escalate(queries)? {
                report.escalated += 1;
            }
            return Ok(());
        }
        let asked_at = self.ledger.monotonic_now();
        let reply = self.provider.query(reference);
        tracing::debug!(key = %key, attempt = attempt.get(), provider_reference = %reference, ?reply, "provider queried");
        let phase = match track {
            Track::Charge => self.ledger.record_query(key, attempt, reply, asked_at)?,
            Track::Operation(ordinal) => self
                .ledger
                .record_operation_query(key, ordinal, attempt, reply, asked_at)?,
        };
        match phase {
            Some(Phase::Unknown { queries, .. }) => {
                if queries >= queries_max {
                    if escalate(queries)? {
                        report.escalated += 1;
                    }
                } else {
                    report.rescheduled += 1;
                }
            }
            Some(_) => report.resolved += 1,
            None => {}
        }
        Ok(())
    }
}

/// Which attempts of a key a query is about.
#[derive(Clone, Copy, Debug)]
enum Track {
    /// The key's own charge (or authorisation).
    Charge,
    /// One of its captures, voids or refunds.
    Operation(u32),
}
