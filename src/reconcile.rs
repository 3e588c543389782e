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

use crate::clock::MonotonicMillis;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::model::Phase;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference};
use crate::provider::{Provider, QueryReply};

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
        let (queries, mut report) = plan(&self.ledger)?;
        for query in queries {
            let asked_at = self.ledger.monotonic_now();
            let reply = self.provider.query(&query.reference);
            settle(&self.ledger, &query, reply, asked_at, &mut report)?;
        }
        finish(&report, started);
        Ok(report)
    }
}

/// One query a reconciler pass must make: an unknown attempt whose query time has come.
#[derive(Clone, Debug)]
pub(crate) struct DueQuery {
    key: IdempotencyKey,
    track: Track,
    attempt: AttemptNumber,
    /// The reference the attempt was sent with: what the provider is asked about.
    pub(crate) reference: ProviderReference,
}

/// The first half of a pass: takes over abandoned attempts, escalates unknown attempts whose
/// queries are spent, and lists the queries to make (with the report so far).
pub(crate) fn plan(ledger: &Ledger) -> Result<(Vec<DueQuery>, ReconcileReport)> {
    let config = ledger.reconcile_config();
    let batch = config.batch_max();
    let mut report = ReconcileReport {
        abandoned: ledger.take_over_in_flight(batch)?
            + ledger.take_over_operations(batch, false)?,
        ..ReconcileReport::default()
    };
    let mut due = Vec::new();
    for key in ledger.due_keys(batch)? {
        let Some(state) = ledger.state(&key)? else {
            continue;
        };
        let mut tracks = Vec::new();
        if let Phase::Unknown {
            attempt, queries, ..
        } = state.phase
        {
            let reference = ProviderReference::derive(&key, attempt);
            tracks.push((Track::Charge, attempt, queries, reference));
        }
        for op in &state.operations {
            if let Phase::Unknown {
                attempt, queries, ..
            } = op.phase
            {
                let reference =
                    ProviderReference::derive_operation(&key, op.kind, op.ordinal, attempt);
                tracks.push((Track::Operation(op.ordinal), attempt, queries, reference));
            }
        }
        for (track, attempt, queries, reference) in tracks {
            report.examined += 1;
            let query = DueQuery {
                key: key.clone(),
                track,
                attempt,
                reference,
            };
            if queries >= config.queries_max() {
                escalate(ledger, &query, queries, &mut report)?;
            } else {
                due.push(query);
            }
        }
    }
    Ok((due, report))
}

/// The second half, for one query: appends the provider's `reply` (asked at `asked_at`), then
/// reschedules the attempt or escalates it once its queries are spent.
pub(crate) fn settle(
    ledger: &Ledger,
    query: &DueQuery,
    reply: QueryReply,
    asked_at: MonotonicMillis,
    report: &mut ReconcileReport,
) -> Result<()> {
    let (key, attempt) = (&query.key, query.attempt);
    tracing::debug!(key = %key, attempt = attempt.get(), provider_reference = %query.reference, ?reply, "provider queried");
    let phase = match query.track {
        Track::Charge => ledger.record_query(key, attempt, reply, asked_at)?,
        Track::Operation(ordinal) => {
            ledger.record_operation_query(key, ordinal, attempt, reply, asked_at)?
        }
    };
    match phase {
        Some(Phase::Unknown { queries, .. }) => {
            if queries >= ledger.reconcile_config().queries_max() {
                escalate(ledger, query, queries, report)?;
            } else {
                report.rescheduled += 1;
            }
        }
        Some(_) => report.resolved += 1,
        None => {}
    }
    Ok(())
}

/// Logs a finished pass.
pub(crate) fn finish(report: &ReconcileReport, started: std::time::Instant) {
    tracing::info!(
        examined = report.examined,
        resolved = report.resolved,
        rescheduled = report.rescheduled,
        escalated = report.escalated,
        abandoned = report.abandoned,
        duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "reconcile pass"
    );
}

fn escalate(
    ledger: &Ledger,
    query: &DueQuery,
    queries: u32,
    report: &mut ReconcileReport,
) -> Result<()> {
    let escalated = match query.track {
        Track::Charge => ledger.escalate(&query.key, query.attempt, queries)?,
        Track::Operation(ordinal) => {
            ledger.escalate_operation(&query.key, ordinal, query.attempt, queries)?
        }
    };
    if escalated {
        report.escalated += 1;
    }
    Ok(())
}

/// Which attempts of a key a query is about.
#[derive(Clone, Copy, Debug)]
enum Track {
    /// The key's own charge (or authorisation).
    Charge,
    /// One of its captures, voids or refunds.
    Operation(u32),
}
