//! Metrics through the [`metrics`] facade: the library emits, the application chooses the
//! exporter (Prometheus, StatsD, nothing). Without an installed recorder every call here is a
//! no-op costing a relaxed atomic load.
//!
//! Invariant: every name and label emitted is one of the constants below and documented in
//! `docs/metrics.md`; label values come from fixed sets (never a key, an amount or a provider
//! reference), so the number of series is bounded.
//!
//! Counters are emitted where the thing happens: gate decisions in the gate, events once they
//! are durable (outcomes, queries, conflicts, escalations, resolutions), latencies and bytes
//! around the provider call and the journal's group commit. Gauges (keys by phase, oldest ages, index lag, journal bytes)
//! are set by [`Ledger::health`](crate::Ledger::health): call it when the exporter is scraped.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::model::PhaseKind;
use crate::model::QueryAnswer;
use crate::model::{Event, EventKind, OperationKind, OperationStep, Outcome, PaymentState};

/// Counter: gate decisions, by `track` and `decision` (`attempt`, `already-succeeded`, …:
/// [`Decision::name`](crate::Decision::name)).
pub const DECISIONS: &str = "payledger_decisions_total";
/// Counter: outcomes recorded for provider calls, by `track` and `outcome` (`succeeded`,
/// `declined`, `not_sent`, `unknown`).
pub const OUTCOMES: &str = "payledger_outcomes_total";
/// Counter: provider queries answered, by `track` and `answer` (`found_succeeded`,
/// `found_declined`, `pending`, `not_found`, `failed`).
pub const QUERIES: &str = "payledger_queries_total";
/// Counter: contradictions recorded (each a key or operation in conflict), by `track`.
pub const CONFLICTS: &str = "payledger_conflicts_total";
/// Counter: unknown attempts escalated to review, by `track`.
pub const ESCALATIONS: &str = "payledger_reconcile_escalations_total";
/// Counter: attempts settled by an operator, by `track`.
pub const OPERATOR_RESOLUTIONS: &str = "payledger_operator_resolutions_total";
/// Histogram (seconds): one provider charge call, as `charge_once` saw it.
pub const PROVIDER_CALL_SECONDS: &str = "payledger_provider_call_seconds";
/// Histogram (seconds): one journal data sync (`fdatasync`) covering a group commit.
pub const JOURNAL_SYNC_SECONDS: &str = "payledger_journal_sync_seconds";
/// Gauge: keys by `phase` (the `payledger list --state` names).
pub const KEYS: &str = "payledger_keys";
/// Gauge (seconds): age of the oldest unknown outcome of a key's own charge.
pub const OLDEST_UNKNOWN_SECONDS: &str = "payledger_oldest_unknown_seconds";
/// Gauge (seconds): age of the oldest provider call in flight.
pub const OLDEST_IN_FLIGHT_SECONDS: &str = "payledger_oldest_in_flight_seconds";
/// Gauge (seconds): age of the oldest key in manual review.
pub const OLDEST_REVIEW_SECONDS: &str = "payledger_oldest_review_seconds";
/// Gauge (seconds): age of the oldest unknown capture, void or refund, by `kind`.
pub const OLDEST_OPERATION_UNKNOWN_SECONDS: &str = "payledger_oldest_operation_unknown_seconds";
/// Gauge: durable commits the index has not applied yet.
pub const INDEX_LAG_COMMITS: &str = "payledger_index_lag_commits";
/// Counter: bytes written to the journal (records and frames), each covered by a sync.
pub const JOURNAL_BYTES: &str = "payledger_journal_bytes_total";
/// Gauge: 1 once the ledger stopped on a fatal error (reopen it), else 0.
pub const STOPPED: &str = "payledger_stopped";
/// Counter: async requests refused because the adapter's queue was full.
pub const ASYNC_OVERLOADED: &str = "payledger_async_overloaded_total";

/// A gate decision on `track`.
pub(crate) fn decision(track: &'static str, decision: &'static str) {
    counter!(DECISIONS, "track" => track, "decision" => decision).increment(1);
}

/// One provider charge call that took `elapsed`.
pub(crate) fn provider_call(elapsed: Duration) {
    histogram!(PROVIDER_CALL_SECONDS).record(elapsed.as_secs_f64());
}

/// One group commit of `bytes` whose sync took `elapsed`.
pub(crate) fn journal_commit(bytes: usize, elapsed: Duration) {
    histogram!(JOURNAL_SYNC_SECONDS).record(elapsed.as_secs_f64());
    counter!(JOURNAL_BYTES).increment(bytes as u64);
}

/// A request refused by the async adapter's full queue.
#[cfg(feature = "async")]
pub(crate) fn overloaded() {
    counter!(ASYNC_OVERLOADED).increment(1);
}

/// The name of the track `kind` belongs to in `state` (after the events were applied).
pub(crate) fn track_of(state: &PaymentState, kind: &EventKind) -> &'static str {
    match kind {
        EventKind::OperationRequested { kind, .. } => kind.name(),
        EventKind::OperationStepped { ordinal, .. } => state
            .operation(*ordinal)
            .map_or("operation", |op| op.kind.name()),
        _ => state.primary.name(),
    }
}

/// Counts what durable `events` say, once each, against the state they led to.
pub(crate) fn events_written(state: &PaymentState, events: &[Event]) {
    for event in events {
        let track = track_of(state, &event.kind);
        let (outcome, answer, conflict, escalated, resolved) = match &event.kind {
            EventKind::OutcomeReported { outcome, .. }
            | EventKind::OperationStepped {
                step: OperationStep::OutcomeReported { outcome, .. },
                ..
            } => (Some(outcome_name(outcome)), None, false, false, false),
            EventKind::ProviderQueried { answer, .. }
            | EventKind::OperationStepped {
                step: OperationStep::ProviderQueried { answer, .. },
                ..
            } => (None, Some(answer_name(answer)), false, false, false),
            EventKind::ConflictDetected { .. }
            | EventKind::OperationStepped {
                step: OperationStep::ConflictDetected { .. },
                ..
            } => (None, None, true, false, false),
            EventKind::EscalatedToReview { .. }
            | EventKind::OperationStepped {
                step: OperationStep::EscalatedToReview { .. },
                ..
            } => (None, None, false, true, false),
            EventKind::ResolvedByOperator { .. }
            | EventKind::OperationStepped {
                step: OperationStep::ResolvedByOperator { .. },
                ..
            } => (None, None, false, false, true),
            _ => (None, None, false, false, false),
        };
        if let Some(outcome) = outcome {
            counter!(OUTCOMES, "track" => track, "outcome" => outcome).increment(1);
        }
        if let Some(answer) = answer {
            counter!(QUERIES, "track" => track, "answer" => answer).increment(1);
        }
        if conflict {
            counter!(CONFLICTS, "track" => track).increment(1);
        }
        if escalated {
            counter!(ESCALATIONS, "track" => track).increment(1);
        }
        if resolved {
            counter!(OPERATOR_RESOLUTIONS, "track" => track).increment(1);
        }
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Declined { .. } => "declined",
        Outcome::NotSent { .. } => "not_sent",
        Outcome::Unknown { .. } => "unknown",
    }
}

fn answer_name(answer: &QueryAnswer) -> &'static str {
    match answer {
        QueryAnswer::FoundSucceeded { .. } => "found_succeeded",
        QueryAnswer::FoundDeclined { .. } => "found_declined",
        QueryAnswer::FoundPending => "pending",
        QueryAnswer::NotFound { .. } | QueryAnswer::NotFoundAfterWait { .. } => "not_found",
        QueryAnswer::QueryFailed { .. } => "failed",
    }
}

/// The gauges a health snapshot sets.
pub(crate) fn gauges(health: &crate::ledger::Health, keys: &[(PhaseKind, usize)]) {
    for (phase, count) in keys {
        gauge!(KEYS, "phase" => phase.name()).set(*count as f64);
    }
    let seconds = |ms: Option<u64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
    gauge!(OLDEST_UNKNOWN_SECONDS).set(seconds(health.unknown_age_ms_max));
    gauge!(OLDEST_IN_FLIGHT_SECONDS).set(seconds(health.in_flight_age_ms_max));
    gauge!(OLDEST_REVIEW_SECONDS).set(seconds(health.in_review_age_ms_max));
    for kind in OperationKind::ALL {
        let oldest = health
            .operations
            .iter()
            .find(|op| op.kind == kind)
            .and_then(|op| op.unknown_age_ms_max);
        gauge!(OLDEST_OPERATION_UNKNOWN_SECONDS, "kind" => kind.name()).set(seconds(oldest));
    }
    gauge!(INDEX_LAG_COMMITS).set(health.index_backlog as f64);
    gauge!(STOPPED).set(if health.fatal.is_some() { 1.0 } else { 0.0 });
}
