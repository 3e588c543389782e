//! Fold cases as given/when/then, one for every (phase, event kind) pair, plus the rules that
//! need more than one step.

use super::event::{NotSentReason, QueryAnswer};
use super::intent::{Intent, Metadata};
use super::key::{AccountId, CustomerRef, Note, Operator};
use super::*;
use crate::limits::ATTEMPTS_MAX;
use crate::model::AttemptPlan;

const T0: u64 = 1_000_000;

fn key() -> IdempotencyKey {
    IdempotencyKey::new("order-1").unwrap()
}

/// An intent of 1,000 EUR cents (shared with the crate's other unit tests).
pub(crate) fn intent() -> Intent {
    Intent {
        amount: Amount::new(1_000).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

fn at(ms: u64, kind: EventKind) -> Event {
    Event {
        key: key(),
        at: UnixMillis(T0 + ms),
        kind,
    }
}

fn n(attempt: u32) -> AttemptNumber {
    AttemptNumber::new(attempt).unwrap()
}

fn txn(id: &str) -> TransactionId {
    TransactionId::new(id).unwrap()
}

fn amount() -> Amount {
    Amount::new(1_000).unwrap()
}

fn recorded() -> Event {
    let intent = intent();
    let fingerprint = intent.fingerprint();
    at(
        0,
        EventKind::IntentRecorded {
            intent,
            fingerprint,
        },
    )
}

fn started(attempt: u32) -> Event {
    at(
        10,
        EventKind::AttemptStarted {
            attempt: n(attempt),
            provider_reference: ProviderReference::derive(&key(), n(attempt)),
        },
    )
}

fn outcome(attempt: u32, outcome: Outcome) -> Event {
    at(
        20,
        EventKind::OutcomeReported {
            attempt: n(attempt),
            outcome,
        },
    )
}

fn succeeded_outcome(id: &str) -> Outcome {
    Outcome::Succeeded {
        transaction_id: txn(id),
        amount: amount(),
    }
}

fn timeout() -> Outcome {
    Outcome::Unknown {
        reason: UnknownReason::Timeout,
    }
}

fn queried(ms: u64, attempt: u32, answer: QueryAnswer) -> Event {
    at(
        ms,
        EventKind::ProviderQueried {
            attempt: n(attempt),
            answer,
        },
    )
}

fn charged(id: &str) -> Finding {
    Finding::Charged {
        transaction_id: txn(id),
        amount: amount(),
    }
}

fn evidence(attempt: u32, finding: Finding) -> Event {
    at(
        30,
        EventKind::EvidenceReceived {
            attempt: n(attempt),
            source: EvidenceSource::Webhook,
            finding,
        },
    )
}

fn conflict(attempt: u32, finding: Finding) -> Event {
    at(
        40,
        EventKind::ConflictDetected {
            attempt: n(attempt),
            source: EvidenceSource::Webhook,
            finding,
        },
    )
}

fn escalated(attempt: u32) -> Event {
    at(
        50,
        EventKind::EscalatedToReview {
            attempt: n(attempt),
            reason: ReviewReason::QueriesExhausted { queries: 5 },
        },
    )
}

fn resolved(attempt: u32, resolution: Resolution) -> Event {
    at(
        60,
        EventKind::ResolvedByOperator {
            attempt: n(attempt),
            resolution,
            operator: Operator::new("ops@example.com").unwrap(),
            note: Note::new("checked the dashboard").unwrap(),
        },
    )
}

fn not_found(policy_delay_ms: u64, answers: u32) -> QueryAnswer {
    QueryAnswer::NotFound {
        policy: NotFoundPolicy::new(policy_delay_ms, 0, answers).unwrap(),
    }
}

/// The events that bring a key into each phase.
fn given(phase: &str) -> Vec<Event> {
    let mut events = match phase {
        "vacant" => vec![],
        "ready" => vec![recorded()],
        _ => vec![recorded(), started(1)],
    };
    match phase {
        "unknown" => events.push(outcome(1, timeout())),
        "in-review" => events.extend([outcome(1, timeout()), escalated(1)]),
        "succeeded" => events.push(outcome(1, succeeded_outcome("tx_1"))),
        "declined" => events.push(outcome(1, declined_outcome())),
        "conflict" => events.extend([
            outcome(1, succeeded_outcome("tx_1")),
            conflict(1, charged("tx_2")),
        ]),
        "exhausted" => {
            events = vec![recorded()];
            for attempt in 1..=ATTEMPTS_MAX {
                events.push(started(attempt));
                events.push(outcome(
                    attempt,
                    Outcome::NotSent {
                        reason: NotSentReason::ConnectionRefused,
                    },
                ));
            }
        }
        _ => {}
    }
    let state = PaymentState::fold(key(), &events).unwrap();
    assert_eq!(state.phase.name(), phase, "given({phase}) reaches {phase}");
    events
}

fn declined_outcome() -> Outcome {
    Outcome::Declined {
        code: DeclineCode::new("card_declined").unwrap(),
    }
}

/// Given `events`, when `event` is applied, then the phase is `expected` (or the rejection).
#[track_caller]
fn check(given: Vec<Event>, when: Event, expected: Result<Phase, RejectionReason>) {
    let state = PaymentState::fold(key(), &given).expect("given events fold");
    let result = apply(&state, &when)
        .map(|next| next.phase)
        .map_err(|r| r.reason);
    assert_eq!(
        result,
        expected,
        "when {} in {}",
        when.kind.name(),
        state.phase.name()
    );
}

/// The phase `given(name)` reaches.
fn phase_of(name: &str) -> Phase {
    PaymentState::fold(key(), &given(name)).unwrap().phase
}

use RejectionReason as R;

fn ready(next: u32) -> Phase {
    Phase::Ready {
        next_attempt: n(next),
    }
}

fn succeeded_phase(id: &str) -> Phase {
    Phase::Succeeded {
        attempt: n(1),
        transaction_id: txn(id),
        amount: amount(),
    }
}

fn conflict_phase(id: &str) -> Phase {
    Phase::Conflict {
        attempt: n(1),
        source: EvidenceSource::Webhook,
        finding: charged(id),
        since: UnixMillis(T0 + 40),
    }
}

fn found(id: &str) -> QueryAnswer {
    QueryAnswer::FoundSucceeded {
        transaction_id: txn(id),
        amount: amount(),
    }
}

#[test]
fn vacant_accepts_only_an_intent() {
    check(given("vacant"), recorded(), Ok(ready(1)));
    for when in [
        started(1),
        outcome(1, timeout()),
        queried(70, 1, found("tx_1")),
        evidence(1, charged("tx_1")),
        escalated(1),
        resolved(1, Resolution::NotCharged),
        conflict(1, charged("tx_2")),
    ] {
        check(given("vacant"), when, Err(R::NoIntent));
    }
}

#[test]
fn ready_starts_the_next_attempt_and_nothing_else() {
    let g = || given("ready");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(
        g(),
        started(1),
        Ok(Phase::InFlight {
            attempt: n(1),
            started_at: UnixMillis(T0 + 10),
        }),
    );
    check(
        g(),
        outcome(1, timeout()),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Err(R::UnknownAttempt { attempt: 1 }),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        conflict(1, charged("tx_2")),
        Err(R::UnknownAttempt { attempt: 1 }),
    );
}

#[test]
fn in_flight_refuses_a_second_attempt_and_takes_the_outcome() {
    let g = || given("in-flight");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::AttemptUnresolved { attempt: 1 }));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(g(), conflict(1, charged("tx_2")), Err(R::NotAConflict));
}

#[test]
fn unknown_is_left_only_through_evidence_or_an_operator() {
    let g = || given("unknown");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::AttemptUnresolved { attempt: 1 }));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        escalated(1),
        Ok(Phase::InReview {
            attempt: n(1),
            started_at: UnixMillis(T0 + 10),
            since: UnixMillis(T0 + 50),
            reason: ReviewReason::QueriesExhausted { queries: 5 },
        }),
    );
    check(g(), resolved(1, Resolution::NotCharged), Ok(ready(2)));
    check(g(), conflict(1, charged("tx_2")), Err(R::NotAConflict));
}

#[test]
fn in_review_waits_for_evidence_or_an_operator() {
    let g = || given("in-review");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::AttemptUnresolved { attempt: 1 }));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(g(), escalated(1), Err(R::AlreadyInReview));
    check(g(), resolved(1, Resolution::NotCharged), Ok(ready(2)));
    check(g(), conflict(1, charged("tx_2")), Err(R::NotAConflict));
}

#[test]
fn succeeded_is_final_and_a_second_success_is_a_conflict() {
    let g = || given("succeeded");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::Settled));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Ok(succeeded_phase("tx_1")),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        conflict(1, charged("tx_2")),
        Ok(conflict_phase("tx_2")),
    );
}

#[test]
fn declined_is_final_and_a_later_charge_is_a_conflict() {
    let g = || given("declined");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::Settled));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Err(R::ConflictingEvidence),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        conflict(1, charged("tx_2")),
        Ok(conflict_phase("tx_2")),
    );
}

#[test]
fn exhausted_is_final_and_a_later_charge_is_a_conflict() {
    let g = || given("exhausted");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::Settled));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        evidence(1, charged("tx_1")),
        Err(R::ConflictingEvidence),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        conflict(1, charged("tx_2")),
        Ok(conflict_phase("tx_2")),
    );
}

#[test]
fn conflict_is_final_and_keeps_the_first_evidence() {
    let g = || given("conflict");
    check(g(), recorded(), Err(R::IntentAlreadyRecorded));
    check(g(), started(2), Err(R::Settled));
    check(
        g(),
        outcome(1, succeeded_outcome("tx_1")),
        Err(R::NotInFlight { attempt: 1 }),
    );
    check(
        g(),
        queried(70, 1, found("tx_1")),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    // An echo of a charge the key holds agrees; any other charge is a new contradiction.
    check(
        g(),
        evidence(1, charged("tx_1")),
        Ok(conflict_phase("tx_2")),
    );
    check(
        g(),
        evidence(1, charged("tx_2")),
        Ok(conflict_phase("tx_2")),
    );
    check(
        g(),
        evidence(1, charged("tx_3")),
        Err(R::ConflictingEvidence),
    );
    check(
        g(),
        escalated(1),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        resolved(1, Resolution::NotCharged),
        Err(R::NotAwaitingReconciliation { attempt: 1 }),
    );
    check(
        g(),
        conflict(1, charged("tx_3")),
        Ok(conflict_phase("tx_2")),
    );
}

#[test]
fn not_found_is_trusted_only_after_the_delay_and_enough_answers() {
    let mut events = given("unknown");
    // Started at T0+10, unknown since T0+20. Policy: 1000 ms delay, 2 consistent answers.
    events.push(queried(500, 1, not_found(1_000, 2)));
    events.push(queried(900, 1, not_found(1_000, 2)));
    let state = PaymentState::fold(key(), &events).unwrap();
    assert!(
        matches!(
            state.phase,
            Phase::Unknown {
                not_found_streak: 2,
                queries: 2,
                ..
            }
        ),
        "two answers before the delay passed keep the key unknown: {:?}",
        state.phase
    );
    // The delay runs from when the attempt became unknown (T0+20), not from when it started:
    // the request may have been sent just before the timeout.
    let early = apply(&state, &queried(1_015, 1, not_found(1_000, 2))).unwrap();
    assert_eq!(early.phase.name(), "unknown");
    check(
        events.clone(),
        queried(1_020, 1, not_found(1_000, 2)),
        Ok(ready(2)),
    );

    // A pending answer in between breaks the streak.
    let mut broken = given("unknown");
    broken.push(queried(1_100, 1, not_found(1_000, 2)));
    broken.push(queried(1_200, 1, QueryAnswer::FoundPending));
    let pending = PaymentState::fold(key(), &broken).unwrap();
    assert!(matches!(
        pending.phase,
        Phase::Unknown {
            not_found_streak: 0,
            pending: true,
            ..
        }
    ));
    broken.push(queried(1_300, 1, not_found(1_000, 2)));
    let still = PaymentState::fold(key(), &broken).unwrap();
    assert_eq!(still.phase.name(), "unknown");
    check(broken, queried(1_400, 1, not_found(1_000, 2)), Ok(ready(2)));
}

#[test]
fn clock_skew_margin_extends_the_wait() {
    let answer = QueryAnswer::NotFound {
        policy: NotFoundPolicy::new(1_000, 500, 1).unwrap(),
    };
    let state = PaymentState::fold(key(), &given("unknown")).unwrap();
    let early = apply(&state, &queried(1_400, 1, answer.clone())).unwrap();
    assert_eq!(early.phase.name(), "unknown");
    check(given("unknown"), queried(1_520, 1, answer), Ok(ready(2)));
}

#[test]
fn failed_queries_count_but_never_settle() {
    let mut events = given("unknown");
    for i in 0..50 {
        events.push(queried(
            100_000 + i,
            1,
            QueryAnswer::QueryFailed {
                reason: UnknownReason::Timeout,
            },
        ));
    }
    let state = PaymentState::fold(key(), &events).unwrap();
    assert!(matches!(state.phase, Phase::Unknown { queries: 50, .. }));
}

#[test]
fn in_review_ignores_not_found() {
    check(
        given("in-review"),
        queried(1_000_000, 1, not_found(1_000, 1)),
        Ok(phase_of("in-review")),
    );
}

#[test]
fn a_charge_for_an_attempt_considered_not_charged_is_a_conflict() {
    let mut events = given("unknown");
    events.push(queried(5_000, 1, not_found(1_000, 1)));
    let ready = events.clone();
    check(
        ready,
        conflict(1, charged("tx_lost")),
        Ok(Phase::Conflict {
            attempt: n(1),
            source: EvidenceSource::Webhook,
            finding: charged("tx_lost"),
            since: UnixMillis(T0 + 40),
        }),
    );
    events.push(started(2));
    check(
        events.clone(),
        evidence(1, charged("tx_lost")),
        Err(R::ConflictingEvidence),
    );
}

/// Issue 8.7: a conflict about attempt 1 must not hide attempt 2, which may have charged too.
#[test]
fn a_conflict_beside_an_open_attempt_keeps_it_open_until_it_settles() {
    let mut events = given("unknown");
    events.push(queried(5_000, 1, not_found(1_000, 1)));
    events.push(started(2));
    events.push(outcome(
        2,
        Outcome::Unknown {
            reason: UnknownReason::Timeout,
        },
    ));
    let open = PaymentState::fold(key(), &events).unwrap();
    let state = apply(&open, &conflict(1, charged("tx_lost"))).unwrap();
    assert!(
        matches!(state.phase, Phase::Unknown { attempt, .. } if attempt == n(2)),
        "attempt 2 stays unknown (and reconciled): {:?}",
        state.phase
    );
    let contradiction = Contradiction {
        attempt: n(1),
        source: EvidenceSource::Webhook,
        finding: charged("tx_lost"),
        since: UnixMillis(T0 + 40),
    };
    assert_eq!(state.conflict, Some(contradiction.clone()));
    assert_eq!(
        state.decide(&intent().fingerprint()),
        Decision::InConflict { attempt: n(1) },
        "the gate sends nobody to the provider"
    );
    assert_eq!(state.phase.possibly_charged(), Some(n(2)));
    // Attempt 2 settles (either way): the key ends in the conflict.
    for answer in [
        QueryAnswer::FoundSucceeded {
            transaction_id: txn("tx_2"),
            amount: intent().amount,
        },
        not_found(1_000, 1),
    ] {
        let settled = apply(&state, &queried(9_000, 2, answer)).unwrap();
        assert_eq!(
            settled.phase,
            Phase::Conflict {
                attempt: n(1),
                source: EvidenceSource::Webhook,
                finding: charged("tx_lost"),
                since: UnixMillis(T0 + 40),
            }
        );
    }
}

#[test]
fn a_charge_of_the_wrong_amount_is_a_conflict() {
    let wrong = Outcome::Succeeded {
        transaction_id: txn("tx_1"),
        amount: Amount::new(999).unwrap(),
    };
    let state = PaymentState::fold(key(), &given("in-flight")).unwrap();
    let next = apply(&state, &outcome(1, wrong)).unwrap();
    assert_eq!(next.phase.name(), "conflict");
    // The customer was charged all the same: the charge is the key's, for a refund to return.
    assert_eq!(
        next.charges,
        vec![Charge {
            attempt: n(1),
            transaction_id: txn("tx_1"),
            amount: Amount::new(999).unwrap(),
        }]
    );
    assert_eq!(
        state.weigh(
            n(1),
            &Finding::Charged {
                transaction_id: txn("tx_1"),
                amount: Amount::new(999).unwrap()
            }
        ),
        Ok(Verdict::Contradicts)
    );
}

#[test]
fn a_decline_reported_for_a_success_is_a_conflict() {
    let state = PaymentState::fold(key(), &given("succeeded")).unwrap();
    let declined = Finding::Declined {
        code: DeclineCode::new("do_not_honor").unwrap(),
    };
    assert_eq!(state.weigh(n(1), &declined), Ok(Verdict::Contradicts));
}

#[test]
fn operator_must_charge_the_intent_amount() {
    let wrong = Resolution::Charged {
        transaction_id: txn("tx_1"),
        amount: Amount::new(5).unwrap(),
    };
    check(
        given("in-review"),
        resolved(1, wrong),
        Err(R::AmountMismatch {
            expected: 1_000,
            got: 5,
        }),
    );
    let right = Resolution::Charged {
        transaction_id: txn("tx_1"),
        amount: amount(),
    };
    check(
        given("in-review"),
        resolved(1, right),
        Ok(succeeded_phase("tx_1")),
    );
}

#[test]
fn attempts_are_numbered_without_gaps_with_derived_references() {
    check(
        given("ready"),
        started(2),
        Err(R::AttemptOutOfOrder {
            expected: 1,
            got: 2,
        }),
    );
    let forged = at(
        10,
        EventKind::AttemptStarted {
            attempt: n(1),
            provider_reference: ProviderReference::new("pl_forged_1").unwrap(),
        },
    );
    check(given("ready"), forged, Err(R::ProviderReferenceMismatch));
}

#[test]
fn not_sent_allows_the_next_attempt_until_the_bound() {
    let mut events = given("in-flight");
    events.push(outcome(
        1,
        Outcome::NotSent {
            reason: NotSentReason::DeadlineBeforeSend,
        },
    ));
    check(
        events.clone(),
        started(2),
        Ok(Phase::InFlight {
            attempt: n(2),
            started_at: UnixMillis(T0 + 10),
        }),
    );
    assert_eq!(
        phase_of("exhausted"),
        Phase::Exhausted {
            attempt: n(ATTEMPTS_MAX)
        }
    );
}

#[test]
fn events_for_another_key_or_a_forged_fingerprint_are_refused() {
    let mut other = started(1);
    other.key = IdempotencyKey::new("order-2").unwrap();
    check(given("ready"), other, Err(R::KeyMismatch));
    let forged = at(
        0,
        EventKind::IntentRecorded {
            intent: intent(),
            fingerprint: super::intent::Fingerprint([7; 32]),
        },
    );
    check(vec![], forged, Err(R::FingerprintMismatch));
}

#[test]
fn rejection_names_the_transition() {
    let state = PaymentState::fold(key(), &given("in-flight")).unwrap();
    let err = apply(&state, &started(2)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "attempt started refused while in-flight: attempt 1 may have charged and is not resolved"
    );
}

#[test]
fn decisions_cover_every_phase() {
    let fp = intent().fingerprint();
    let decide = |phase: &str| {
        PaymentState::fold(key(), &given(phase))
            .unwrap()
            .decide(&fp)
    };
    assert_eq!(
        decide("vacant"),
        Decision::Attempt(AttemptPlan {
            attempt: n(1),
            record_intent: true
        })
    );
    assert_eq!(
        decide("ready"),
        Decision::Attempt(AttemptPlan {
            attempt: n(1),
            record_intent: false
        })
    );
    assert_eq!(decide("in-flight"), Decision::InFlight { attempt: n(1) });
    assert_eq!(
        decide("unknown"),
        Decision::AwaitingReconciliation { attempt: n(1) }
    );
    assert_eq!(decide("in-review"), Decision::InReview { attempt: n(1) });
    assert_eq!(
        decide("succeeded"),
        Decision::AlreadySucceeded {
            attempt: n(1),
            transaction_id: txn("tx_1"),
            amount: amount()
        }
    );
    assert_eq!(
        decide("declined"),
        Decision::AlreadyDeclined {
            attempt: n(1),
            code: DeclineCode::new("card_declined").unwrap()
        }
    );
    assert_eq!(
        decide("exhausted"),
        Decision::AttemptsExhausted {
            attempt: n(ATTEMPTS_MAX)
        }
    );
    assert_eq!(decide("conflict"), Decision::InConflict { attempt: n(1) });

    let mut other = intent();
    other.amount = Amount::new(2_000).unwrap();
    let state = PaymentState::fold(key(), &given("succeeded")).unwrap();
    assert_eq!(
        state.decide(&other.fingerprint()),
        Decision::KeyReused {
            recorded: fp,
            requested: other.fingerprint()
        }
    );
}

/// The names are metric labels and log fields (docs/metrics.md lists them) and the texts are
/// what an operator reads: both are part of the interface, one per decision.
#[test]
fn decisions_name_and_describe_themselves() {
    let fp = intent().fingerprint();
    let seen = |phase: &str| {
        let decision = PaymentState::fold(key(), &given(phase))
            .unwrap()
            .decide(&fp);
        (decision.name(), decision.to_string())
    };
    let expected = [
        ("vacant", "attempt", "call the provider"),
        ("in-flight", "in-flight", "attempt 1 in flight"),
        (
            "unknown",
            "awaiting-reconciliation",
            "attempt 1 awaiting reconciliation",
        ),
        ("in-review", "in-review", "attempt 1 in review"),
        ("succeeded", "already-succeeded", "already succeeded (tx_1)"),
        (
            "declined",
            "already-declined",
            "already declined (card_declined)",
        ),
        (
            "exhausted",
            "attempts-exhausted",
            "attempts exhausted after attempt 16",
        ),
        ("conflict", "in-conflict", "conflict on attempt 1"),
    ];
    for (phase, name, text) in expected {
        assert_eq!(seen(phase), (name, text.to_string()), "decision in {phase}");
    }
    let mut other = intent();
    other.amount = Amount::new(2_000).unwrap();
    let reused = PaymentState::fold(key(), &given("succeeded"))
        .unwrap()
        .decide(&other.fingerprint());
    assert_eq!(reused.name(), "key-reused");
    assert_eq!(reused.to_string(), "key reused with a different intent");
}

/// `weigh`, every phase against every finding, about the attempt in doubt and about an earlier
/// attempt the key holds as not charged (attempt 1 not sent, attempt 2 current).
#[test]
fn evidence_is_weighed_against_the_attempt_it_names() {
    let declined_finding = || Finding::Declined {
        code: DeclineCode::new("card_declined").unwrap(),
    };
    let wrong_amount = || Finding::Charged {
        transaction_id: txn("tx_c"),
        amount: Amount::new(999).unwrap(),
    };
    // The events that bring a key into `phase` with `current` as its last attempt.
    let state = |phase: &str, current: u32| {
        let mut events = vec![recorded()];
        for attempt in 1..current {
            events.push(started(attempt));
            events.push(outcome(
                attempt,
                Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
            ));
        }
        events.push(started(current));
        match phase {
            "in-flight" => {}
            "unknown" => events.push(outcome(current, timeout())),
            "in-review" => events.extend([outcome(current, timeout()), escalated(current)]),
            "succeeded" => events.push(outcome(current, succeeded_outcome("tx_held"))),
            "declined" => events.push(outcome(current, declined_outcome())),
            _ => unreachable!("{phase}"),
        }
        let state = PaymentState::fold(key(), &events).unwrap();
        assert_eq!(state.phase.name(), phase);
        state
    };
    for current in [1, 2] {
        let cur = n(current);
        for phase in ["in-flight", "unknown", "in-review"] {
            let s = state(phase, current);
            assert_eq!(
                s.weigh(cur, &charged("tx_c")),
                Ok(Verdict::Settles(Phase::Succeeded {
                    attempt: cur,
                    transaction_id: txn("tx_c"),
                    amount: amount(),
                })),
                "{phase}: a charge of the attempt in doubt settles it"
            );
            assert_eq!(
                s.weigh(cur, &wrong_amount()),
                Ok(Verdict::Contradicts),
                "{phase}: the wrong amount"
            );
            assert_eq!(
                s.weigh(cur, &declined_finding()),
                Ok(Verdict::Settles(Phase::Declined {
                    attempt: cur,
                    code: DeclineCode::new("card_declined").unwrap(),
                })),
                "{phase}: a decline of the attempt in doubt settles it"
            );
        }
        let succeeded = state("succeeded", current);
        let held = Finding::Charged {
            transaction_id: txn("tx_held"),
            amount: amount(),
        };
        assert_eq!(succeeded.weigh(cur, &held), Ok(Verdict::Agrees), "an echo");
        assert_eq!(
            succeeded.weigh(cur, &charged("tx_other")),
            Ok(Verdict::Contradicts),
            "another transaction for the succeeded attempt"
        );
        assert_eq!(
            succeeded.weigh(cur, &wrong_amount()),
            Ok(Verdict::Contradicts)
        );
        let held_id_wrong_amount = Finding::Charged {
            transaction_id: txn("tx_held"),
            amount: Amount::new(999).unwrap(),
        };
        assert_eq!(
            succeeded.weigh(cur, &held_id_wrong_amount),
            Ok(Verdict::Contradicts),
            "the held transaction with another amount"
        );
        assert_eq!(
            succeeded.weigh(cur, &declined_finding()),
            Ok(Verdict::Contradicts),
            "a decline of the succeeded attempt"
        );
        let declined = state("declined", current);
        assert_eq!(
            declined.weigh(cur, &charged("tx_c")),
            Ok(Verdict::Contradicts)
        );
        assert_eq!(
            declined.weigh(cur, &declined_finding()),
            Ok(Verdict::Agrees)
        );
    }
    // Attempt 1 was not sent: a charge for it is the double charge, a decline tells nothing.
    for phase in ["in-flight", "unknown", "in-review", "succeeded", "declined"] {
        let s = state(phase, 2);
        assert_eq!(
            s.weigh(n(1), &charged("tx_c")),
            Ok(Verdict::Contradicts),
            "{phase}: a charge for attempt 1"
        );
        assert_eq!(
            s.weigh(n(1), &declined_finding()),
            Ok(Verdict::Agrees),
            "{phase}: a decline for attempt 1"
        );
    }
    // Even the transaction attempt 2 succeeded with, reported for attempt 1, is not an echo.
    let held_for_attempt_1 = Finding::Charged {
        transaction_id: txn("tx_held"),
        amount: amount(),
    };
    assert_eq!(
        state("succeeded", 2).weigh(n(1), &held_for_attempt_1),
        Ok(Verdict::Contradicts)
    );
    assert_eq!(
        state("in-flight", 1).weigh(n(2), &declined_finding()),
        Err(RejectionReason::UnknownAttempt { attempt: 2 })
    );
}

/// A "not found" the ledger stamped with its own monotonic wait is trusted on that wait, never
/// on the wall-clock gap between events, and the wait it records only grows.
#[test]
fn a_not_found_is_trusted_on_the_wait_the_ledger_measured() {
    let after = |waited_ms| QueryAnswer::NotFoundAfterWait {
        policy: NotFoundPolicy::new(1_000, 0, 2).unwrap(),
        waited_ms,
    };
    let mut events = given("unknown");
    // The wall clock says hours passed; the ledger measured 400 ms.
    events.push(queried(9_000_000, 1, after(400)));
    events.push(queried(9_000_100, 1, after(999)));
    let state = PaymentState::fold(key(), &events).unwrap();
    assert!(
        matches!(
            state.phase,
            Phase::Unknown {
                queries: 2,
                not_found_streak: 2,
                waited_ms: 999,
                ..
            }
        ),
        "two answers, but 999 ms measured: {:?}",
        state.phase
    );
    let lower = apply(&state, &queried(9_000_200, 1, after(10))).unwrap();
    assert!(
        matches!(
            lower.phase,
            Phase::Unknown {
                not_found_streak: 3,
                waited_ms: 999,
                ..
            }
        ),
        "a shorter measurement does not lower the wait: {:?}",
        lower.phase
    );
    check(events, queried(9_000_300, 1, after(1_000)), Ok(ready(2)));
}

/// A contradiction about the attempt still open (a charge of another amount) takes the phase:
/// there is no other attempt for the conflict to wait beside.
#[test]
fn a_contradiction_about_the_open_attempt_is_the_conflict() {
    let wrong = Finding::Charged {
        transaction_id: txn("tx_w"),
        amount: Amount::new(999).unwrap(),
    };
    for phase in ["in-flight", "unknown", "in-review"] {
        check(
            given(phase),
            conflict(1, wrong.clone()),
            Ok(Phase::Conflict {
                attempt: n(1),
                source: EvidenceSource::Webhook,
                finding: wrong.clone(),
                since: UnixMillis(T0 + 40),
            }),
        );
    }
}

#[test]
fn phase_kinds_parse_from_their_names_and_finality_is_per_phase() {
    for kind in PhaseKind::ALL {
        assert_eq!(kind.name().parse::<PhaseKind>(), Ok(kind));
    }
    let unknown = "settled".parse::<PhaseKind>().unwrap_err();
    assert!(unknown.starts_with("unknown state \"settled\"; one of: vacant, ready,"));
    for (phase, is_final) in [
        ("vacant", false),
        ("ready", false),
        ("in-flight", false),
        ("unknown", false),
        ("in-review", false),
        ("succeeded", true),
        ("declined", true),
        ("exhausted", true),
        ("conflict", true),
    ] {
        let state = PaymentState::fold(key(), &given(phase)).unwrap();
        assert_eq!(state.phase.is_final(), is_final, "{phase}");
    }
}
