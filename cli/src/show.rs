//! How the CLI shows times, phases and events: the same words in `inspect`, `list` and `tail`.
//!
//! Invariant: every line shows the key (or is under one), the attempt and the time, so that a
//! line alone can be acted on at 3 AM.

use std::time::{Duration, UNIX_EPOCH};

use payledger::{Event, EventKind, OperationStep, Phase, UnixMillis};

/// An RFC 3339 time with milliseconds.
pub fn time(at: UnixMillis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at.0)).to_string()
}

/// A duration for people: `3h 4m 12s`.
pub fn age(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A phase with what matters about it.
pub fn describe(phase: &Phase) -> String {
    match phase {
        Phase::Unknown {
            attempt,
            since,
            reason,
            queries,
            ..
        } => format!(
            "unknown (attempt {attempt}, since {}, {reason:?}, {queries} queries)",
            time(*since)
        ),
        Phase::InReview {
            attempt,
            since,
            reason,
            ..
        } => format!(
            "in-review (attempt {attempt}, since {}, {reason:?})",
            time(*since)
        ),
        Phase::InFlight {
            attempt,
            started_at,
        } => format!("in-flight (attempt {attempt}, since {})", time(*started_at)),
        Phase::Succeeded {
            attempt,
            transaction_id,
            amount,
        } => format!("succeeded (attempt {attempt}, {transaction_id}, {amount})"),
        Phase::Declined { attempt, code } => format!("declined (attempt {attempt}, {code})"),
        Phase::Conflict {
            attempt,
            source,
            finding,
            ..
        } => format!(
            "CONFLICT (attempt {attempt}, {source:?}: {finding:?}) - needs a refund or a human"
        ),
        other => other.name().to_string(),
    }
}

/// What an event says, past its name and attempt.
pub fn detail(event: &Event) -> String {
    match &event.kind {
        EventKind::AttemptStarted {
            provider_reference, ..
        } => provider_reference.to_string(),
        EventKind::OutcomeReported { outcome, .. } => format!("{outcome:?}"),
        EventKind::ProviderQueried { answer, .. } => format!("{answer:?}"),
        EventKind::EvidenceReceived {
            source, finding, ..
        }
        | EventKind::ConflictDetected {
            source, finding, ..
        } => format!("{source:?}: {finding:?}"),
        EventKind::EscalatedToReview { reason, .. } => format!("{reason:?}"),
        EventKind::ResolvedByOperator {
            resolution,
            operator,
            note,
            ..
        } => format!("{resolution:?} by {operator}: {note}"),
        EventKind::IntentRecorded { intent, .. } => format!(
            "{} {} for {}",
            intent.amount, intent.currency, intent.customer
        ),
        EventKind::AuthorizationRecorded {
            intent,
            multiple_captures,
            ..
        } => format!(
            "hold of {} {} for {}{}",
            intent.amount,
            intent.currency,
            intent.customer,
            if *multiple_captures {
                ", several captures"
            } else {
                ""
            }
        ),
        EventKind::OperationRequested {
            ordinal,
            kind,
            request_id,
            amount,
        } => format!("{kind} #{ordinal} of {amount} (request {request_id})"),
        EventKind::OperationStepped { ordinal, step } => {
            let what = match step {
                OperationStep::AttemptStarted {
                    provider_reference, ..
                } => provider_reference.to_string(),
                OperationStep::OutcomeReported { outcome, .. } => format!("{outcome:?}"),
                OperationStep::ProviderQueried { answer, .. } => format!("{answer:?}"),
                OperationStep::EvidenceReceived {
                    source, finding, ..
                }
                | OperationStep::ConflictDetected {
                    source, finding, ..
                } => format!("{source:?}: {finding:?}"),
                OperationStep::EscalatedToReview { reason, .. } => format!("{reason:?}"),
                OperationStep::ResolvedByOperator {
                    resolution,
                    operator,
                    note,
                    ..
                } => format!("{resolution:?} by {operator}: {note}"),
            };
            format!("operation #{ordinal} attempt {}: {what}", step.attempt())
        }
    }
}

/// The attempt an event is about, or `-`.
pub fn attempt(event: &Event) -> String {
    event
        .kind
        .attempt()
        .map_or("-".to_string(), |a| a.to_string())
}
