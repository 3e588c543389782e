//! Golden fixtures freeze the bytes of every event variant in every published format version:
//! each fixture must decode to its value, and encoding the value must give exactly the fixture.
//!
//! New fixtures (only for a new variant or format version) are written with
//! `PAYLEDGER_BLESS=1 cargo test --test it codec`; an existing fixture is never rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use payledger::journal::codec::{decode_event, encode_event};
use payledger::*;

use crate::variants::{variants_in, variants_of};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/v1")
}

fn event(kind: EventKind) -> Event {
    Event {
        key: IdempotencyKey::new("order-1842/pay").unwrap(),
        at: UnixMillis(1_763_900_000_123),
        kind,
    }
}

fn a1() -> AttemptNumber {
    AttemptNumber::FIRST
}

fn txn() -> TransactionId {
    TransactionId::new("ch_3PqX9").unwrap()
}

fn amount() -> Amount {
    Amount::new(4_999).unwrap()
}

/// One value per event variant and per variant of the enums inside them.
fn fixture_intent() -> Intent {
    Intent {
        amount: amount(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_shop_7").unwrap(),
        customer: CustomerRef::new("cus_311").unwrap(),
        description: Some(Description::new("Order 1842 – café").unwrap()),
        metadata: Metadata::new(BTreeMap::from([("cart".to_string(), "c-77".to_string())]))
            .unwrap(),
    }
}

pub fn every_variant() -> Vec<(&'static str, Event)> {
    let intent = fixture_intent();
    let code = DeclineCode::new("card_declined").unwrap();
    let policy = NotFoundPolicy::new(30_000, 5_000, 3).unwrap();
    let outcome = |outcome| {
        event(EventKind::OutcomeReported {
            attempt: a1(),
            outcome,
        })
    };
    let answer = |answer| {
        event(EventKind::ProviderQueried {
            attempt: a1(),
            answer,
        })
    };
    let resolved = |resolution| {
        event(EventKind::ResolvedByOperator {
            attempt: a1(),
            resolution,
            operator: Operator::new("ops@example.com").unwrap(),
            note: Note::new("seen in the provider dashboard").unwrap(),
        })
    };
    vec![
        (
            "intent_recorded",
            event(EventKind::IntentRecorded {
                fingerprint: intent.fingerprint(),
                intent,
            }),
        ),
        (
            "attempt_started",
            event(EventKind::AttemptStarted {
                attempt: a1(),
                provider_reference: ProviderReference::derive(
                    &IdempotencyKey::new("order-1842/pay").unwrap(),
                    a1(),
                ),
            }),
        ),
        (
            "outcome_succeeded",
            outcome(Outcome::Succeeded {
                transaction_id: txn(),
                amount: amount(),
            }),
        ),
        (
            "outcome_declined",
            outcome(Outcome::Declined { code: code.clone() }),
        ),
        (
            "outcome_not_sent",
            outcome(Outcome::NotSent {
                reason: NotSentReason::ConnectionRefused,
            }),
        ),
        (
            "outcome_unknown_timeout",
            outcome(Outcome::Unknown {
                reason: UnknownReason::Timeout,
            }),
        ),
        (
            "outcome_unknown_5xx",
            outcome(Outcome::Unknown {
                reason: UnknownReason::ProviderError { status: 503 },
            }),
        ),
        (
            "outcome_unknown_process_ended",
            outcome(Outcome::Unknown {
                reason: UnknownReason::ProcessEnded,
            }),
        ),
        (
            "queried_found_succeeded",
            answer(QueryAnswer::FoundSucceeded {
                transaction_id: txn(),
                amount: amount(),
            }),
        ),
        (
            "queried_found_declined",
            answer(QueryAnswer::FoundDeclined { code: code.clone() }),
        ),
        ("queried_found_pending", answer(QueryAnswer::FoundPending)),
        (
            "queried_not_found",
            answer(QueryAnswer::NotFound { policy }),
        ),
        (
            "queried_failed",
            answer(QueryAnswer::QueryFailed {
                reason: UnknownReason::ConnectionLost,
            }),
        ),
        (
            "evidence_received",
            event(EventKind::EvidenceReceived {
                attempt: a1(),
                source: EvidenceSource::Webhook,
                finding: Finding::Charged {
                    transaction_id: txn(),
                    amount: amount(),
                },
            }),
        ),
        (
            "escalated_to_review",
            event(EventKind::EscalatedToReview {
                attempt: a1(),
                reason: ReviewReason::QueriesExhausted { queries: 12 },
            }),
        ),
        (
            "resolved_charged",
            resolved(Resolution::Charged {
                transaction_id: txn(),
                amount: amount(),
            }),
        ),
        (
            "resolved_declined",
            resolved(Resolution::Declined { code: code.clone() }),
        ),
        ("resolved_not_charged", resolved(Resolution::NotCharged)),
        (
            "outcome_not_sent_deadline",
            outcome(Outcome::NotSent {
                reason: NotSentReason::DeadlineBeforeSend,
            }),
        ),
        (
            "outcome_not_sent_rejected",
            outcome(Outcome::NotSent {
                reason: NotSentReason::RejectedBeforeProcessing,
            }),
        ),
        (
            "outcome_unknown_unparseable",
            outcome(Outcome::Unknown {
                reason: UnknownReason::UnparseableReply,
            }),
        ),
        (
            "outcome_unknown_local_write_failed",
            outcome(Outcome::Unknown {
                reason: UnknownReason::LocalWriteFailed,
            }),
        ),
        (
            "outcome_unknown_ticket_dropped",
            outcome(Outcome::Unknown {
                reason: UnknownReason::TicketDropped,
            }),
        ),
        (
            "outcome_unknown_lease_expired",
            outcome(Outcome::Unknown {
                reason: UnknownReason::LeaseExpired,
            }),
        ),
        (
            "queried_not_found_after_wait",
            answer(QueryAnswer::NotFoundAfterWait {
                policy,
                waited_ms: 47_250,
            }),
        ),
        (
            "evidence_received_reply_declined",
            event(EventKind::EvidenceReceived {
                attempt: a1(),
                source: EvidenceSource::Reply,
                finding: Finding::Declined { code: code.clone() },
            }),
        ),
        (
            "evidence_received_query",
            event(EventKind::EvidenceReceived {
                attempt: a1(),
                source: EvidenceSource::Query,
                finding: Finding::Charged {
                    transaction_id: txn(),
                    amount: amount(),
                },
            }),
        ),
        (
            "escalated_requested",
            event(EventKind::EscalatedToReview {
                attempt: a1(),
                reason: ReviewReason::Requested,
            }),
        ),
        (
            "conflict_detected",
            event(EventKind::ConflictDetected {
                attempt: a1(),
                source: EvidenceSource::Settlement,
                finding: Finding::Charged {
                    transaction_id: TransactionId::new("ch_lost").unwrap(),
                    amount: amount(),
                },
            }),
        ),
        (
            "authorization_recorded",
            event(EventKind::AuthorizationRecorded {
                intent: fixture_intent(),
                fingerprint: fixture_intent().authorization_fingerprint(),
                multiple_captures: true,
            }),
        ),
        (
            "operation_requested_capture",
            operation_requested(1, OperationKind::Capture, "capture-1"),
        ),
        (
            "operation_requested_void",
            operation_requested(2, OperationKind::Void, "void-1"),
        ),
        (
            "operation_requested_refund",
            operation_requested(3, OperationKind::Refund, "refund-1"),
        ),
        (
            "operation_attempt_started",
            operation_step(OperationStep::AttemptStarted {
                attempt: a1(),
                provider_reference: ProviderReference::derive_operation(
                    &IdempotencyKey::new("order-1/pay").unwrap(),
                    OperationKind::Refund,
                    3,
                    a1(),
                ),
            }),
        ),
        (
            "operation_outcome_succeeded",
            operation_step(OperationStep::OutcomeReported {
                attempt: a1(),
                outcome: Outcome::Succeeded {
                    transaction_id: TransactionId::new("re_1").unwrap(),
                    amount: amount(),
                },
            }),
        ),
        (
            "operation_queried_not_found",
            operation_step(OperationStep::ProviderQueried {
                attempt: a1(),
                answer: QueryAnswer::NotFoundAfterWait {
                    policy: NotFoundPolicy::DEFAULT,
                    waited_ms: 70_000,
                },
            }),
        ),
        (
            "operation_evidence_received",
            operation_step(OperationStep::EvidenceReceived {
                attempt: a1(),
                source: EvidenceSource::Webhook,
                finding: Finding::Charged {
                    transaction_id: TransactionId::new("re_1").unwrap(),
                    amount: amount(),
                },
            }),
        ),
        (
            "operation_escalated",
            operation_step(OperationStep::EscalatedToReview {
                attempt: a1(),
                reason: ReviewReason::QueriesExhausted { queries: 10 },
            }),
        ),
        (
            "operation_resolved",
            operation_step(OperationStep::ResolvedByOperator {
                attempt: a1(),
                resolution: Resolution::NotCharged,
                operator: Operator::new("ops@example.com").unwrap(),
                note: Note::new("not in the provider's refund report").unwrap(),
            }),
        ),
        (
            "operation_conflict_detected",
            operation_step(OperationStep::ConflictDetected {
                attempt: a1(),
                source: EvidenceSource::Settlement,
                finding: Finding::Charged {
                    transaction_id: TransactionId::new("re_2").unwrap(),
                    amount: Amount::new(9_999).unwrap(),
                },
            }),
        ),
    ]
}

fn operation_requested(ordinal: u32, kind: OperationKind, request_id: &str) -> Event {
    event(EventKind::OperationRequested {
        ordinal,
        kind,
        request_id: RequestId::new(request_id).unwrap(),
        amount: amount(),
    })
}

fn operation_step(step: OperationStep) -> Event {
    event(EventKind::OperationStepped { ordinal: 3, step })
}

#[test]
fn golden_fixtures_decode_and_encode_exactly() {
    let bless = std::env::var_os("PAYLEDGER_BLESS").is_some();
    for (name, value) in every_variant() {
        let path = fixture_dir().join(format!("{name}.bin"));
        let encoded = encode_event(&value).unwrap();
        if !path.exists() && bless {
            std::fs::create_dir_all(fixture_dir()).unwrap();
            std::fs::write(&path, &encoded).unwrap();
        }
        let fixture = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        assert_eq!(
            decode_event(&fixture).unwrap(),
            value,
            "fixture {name} decodes to its value"
        );
        assert_eq!(
            encoded, fixture,
            "encoding {name} gives exactly the fixture bytes"
        );
    }
}

#[test]
fn every_fixture_on_disk_is_checked() {
    let names: Vec<String> = every_variant()
        .iter()
        .map(|(n, _)| format!("{n}.bin"))
        .collect();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            names.contains(&name),
            "fixture {name} has no value in every_variant()"
        );
    }
}

/// Every variant of every enum an event can hold is frozen by a fixture: adding a variant
/// without one fails here (the variant lists come from serde's derive, not from a hand-kept
/// list).
#[test]
fn every_variant_of_every_event_enum_has_a_fixture() {
    let enums = [
        variants_of::<EventKind>(),
        variants_of::<Outcome>(),
        variants_of::<NotSentReason>(),
        variants_of::<UnknownReason>(),
        variants_of::<QueryAnswer>(),
        variants_of::<EvidenceSource>(),
        variants_of::<Finding>(),
        variants_of::<ReviewReason>(),
        variants_of::<Resolution>(),
        variants_of::<OperationKind>(),
        variants_of::<OperationStep>(),
    ];
    let covered: BTreeSet<_> = every_variant()
        .iter()
        .flat_map(|(_, event)| variants_in(event))
        .collect();
    for (name, _) in &covered {
        assert!(
            enums.iter().any(|(e, _)| e == name),
            "the events hold enum {name}, which this test does not check: add it above"
        );
    }
    let missing: Vec<String> = enums
        .iter()
        .flat_map(|(name, variants)| variants.iter().map(move |v| (*name, *v)))
        .filter(|variant| !covered.contains(variant))
        .map(|(name, v)| format!("{name}::{v}"))
        .collect();
    assert!(
        missing.is_empty(),
        "variants without a golden fixture: {missing:?}"
    );
}

#[test]
fn bad_payloads_are_errors() {
    assert!(matches!(decode_event(&[]), Err(Error::Codec { .. })));
    assert!(
        matches!(decode_event(&[2, 0, 0]), Err(Error::Codec { .. })),
        "unknown version"
    );
    let good = encode_event(&every_variant()[1].1).unwrap();
    for cut in 1..good.len() {
        assert!(decode_event(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(decode_event(&trailing), Err(Error::Codec { .. })));
}

#[test]
fn decoding_validates_fields() {
    // An attempt-started event whose attempt number is out of range must not decode.
    let value = &every_variant()[1].1;
    let good = encode_event(value).unwrap();
    // Layout at the end: attempt (varint), reference length (varint), reference bytes.
    let reference_len = ProviderReference::derive(&value.key, a1()).as_str().len();
    let attempt_at = good.len() - reference_len - 2;
    assert_eq!(
        good[attempt_at + 1] as usize,
        reference_len,
        "reference length's byte"
    );
    let mut bad = good.clone();
    assert_eq!(bad[attempt_at], 1, "attempt number's byte");
    bad[attempt_at] = 0;
    assert!(matches!(decode_event(&bad), Err(Error::Codec { .. })));
}
