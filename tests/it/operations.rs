//! Issue 10: captures, voids and refunds under the charge's discipline. The fold's rules for
//! every (operation phase, step) pair, the sum bounds under random sequences with a reference
//! model kept by the test, and the ledger's operations end to end.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use payledger::*;

use crate::support::*;

const T: u64 = T0;

fn ev(k: &IdempotencyKey, at: u64, kind: EventKind) -> Event {
    Event {
        key: k.clone(),
        at: UnixMillis(at),
        kind,
    }
}

fn a(n: u32) -> AttemptNumber {
    AttemptNumber::new(n).unwrap()
}

fn txn(id: &str) -> TransactionId {
    TransactionId::new(id).unwrap()
}

fn amt(minor: u64) -> Amount {
    Amount::new(minor).unwrap()
}

/// A purchase of 1,000 that charged.
fn charged(k: &IdempotencyKey) -> PaymentState {
    let intent = intent(1_000);
    let events = [
        ev(
            k,
            T,
            EventKind::IntentRecorded {
                fingerprint: intent.fingerprint(),
                intent,
            },
        ),
        ev(
            k,
            T + 1,
            EventKind::AttemptStarted {
                attempt: a(1),
                provider_reference: ProviderReference::derive(k, a(1)),
            },
        ),
        ev(
            k,
            T + 2,
            EventKind::OutcomeReported {
                attempt: a(1),
                outcome: Outcome::Succeeded {
                    transaction_id: txn("ch_1"),
                    amount: amt(1_000),
                },
            },
        ),
    ];
    PaymentState::fold(k.clone(), &events).unwrap()
}

fn step(k: &IdempotencyKey, ordinal: u32, step: OperationStep) -> Event {
    ev(k, T + 100, EventKind::OperationStepped { ordinal, step })
}

fn refund_requested(k: &IdempotencyKey, ordinal: u32, id: &str, minor: u64) -> Event {
    ev(
        k,
        T + 50,
        EventKind::OperationRequested {
            ordinal,
            kind: OperationKind::Refund,
            request_id: RequestId::new(id).unwrap(),
            amount: amt(minor),
        },
    )
}

fn started(k: &IdempotencyKey, attempt: u32) -> OperationStep {
    OperationStep::AttemptStarted {
        attempt: a(attempt),
        provider_reference: ProviderReference::derive_operation(
            k,
            OperationKind::Refund,
            1,
            a(attempt),
        ),
    }
}

fn outcome(o: Outcome) -> OperationStep {
    OperationStep::OutcomeReported {
        attempt: a(1),
        outcome: o,
    }
}

fn unknown() -> Outcome {
    Outcome::Unknown {
        reason: UnknownReason::Timeout,
    }
}

fn refunded(minor: u64) -> Outcome {
    Outcome::Succeeded {
        transaction_id: txn("re_1"),
        amount: amt(minor),
    }
}

/// The key with refund 1 (400) brought to the named phase.
fn with_refund_in(k: &IdempotencyKey, phase: &str) -> PaymentState {
    let base = apply(&charged(k), &refund_requested(k, 1, "refund-1", 400)).unwrap();
    let steps: Vec<OperationStep> = match phase {
        "ready" => vec![],
        "in-flight" => vec![started(k, 1)],
        "unknown" => vec![started(k, 1), outcome(unknown())],
        "in-review" => vec![
            started(k, 1),
            outcome(unknown()),
            OperationStep::EscalatedToReview {
                attempt: a(1),
                reason: ReviewReason::Requested,
            },
        ],
        "succeeded" => vec![started(k, 1), outcome(refunded(400))],
        "declined" => vec![
            started(k, 1),
            outcome(Outcome::Declined {
                code: DeclineCode::new("refund_declined").unwrap(),
            }),
        ],
        "conflict" => vec![started(k, 1), outcome(refunded(999))],
        other => panic!("no phase {other}"),
    };
    steps.into_iter().fold(base, |state, s| {
        apply(&state, &step(k, 1, s)).unwrap_or_else(|e| panic!("building {phase}: {e}"))
    })
}

/// The step under test, by name.
fn when(k: &IdempotencyKey, name: &str) -> OperationStep {
    let policy = NotFoundPolicy::new(1_000, 0, 1).unwrap();
    match name {
        "start-1" => started(k, 1),
        "start-2" => started(k, 2),
        "outcome-succeeded" => outcome(refunded(400)),
        "outcome-declined" => outcome(Outcome::Declined {
            code: DeclineCode::new("refund_declined").unwrap(),
        }),
        "outcome-not-sent" => outcome(Outcome::NotSent {
            reason: NotSentReason::ConnectionRefused,
        }),
        "outcome-unknown" => outcome(unknown()),
        "query-found" => OperationStep::ProviderQueried {
            attempt: a(1),
            answer: QueryAnswer::FoundSucceeded {
                transaction_id: txn("re_1"),
                amount: amt(400),
            },
        },
        "query-not-found-trusted" => OperationStep::ProviderQueried {
            attempt: a(1),
            answer: QueryAnswer::NotFoundAfterWait {
                policy,
                waited_ms: 5_000,
            },
        },
        "query-pending" => OperationStep::ProviderQueried {
            attempt: a(1),
            answer: QueryAnswer::FoundPending,
        },
        "evidence-executed" => OperationStep::EvidenceReceived {
            attempt: a(1),
            source: EvidenceSource::Webhook,
            finding: Finding::Charged {
                transaction_id: txn("re_1"),
                amount: amt(400),
            },
        },
        "escalate" => OperationStep::EscalatedToReview {
            attempt: a(1),
            reason: ReviewReason::Requested,
        },
        "resolve-not-executed" => OperationStep::ResolvedByOperator {
            attempt: a(1),
            resolution: Resolution::NotCharged,
            operator: Operator::new("ops").unwrap(),
            note: Note::new("checked").unwrap(),
        },
        "conflict-executed-twice" => OperationStep::ConflictDetected {
            attempt: a(1),
            source: EvidenceSource::Settlement,
            finding: Finding::Charged {
                transaction_id: txn("re_other"),
                amount: amt(400),
            },
        },
        other => panic!("no step {other}"),
    }
}

/// Given an operation in a phase, when a step arrives, then the operation's phase (or `refused`).
/// The same rules as a charge's: a new attempt only from ready; unknown leaves only through an
/// answer, evidence or an operator; a success of the wrong amount is a conflict.
#[test]
fn every_operation_phase_and_step_behaves_as_a_charge_does() {
    let k = key("given-when-then");
    let steps = [
        "start-1",
        "start-2",
        "outcome-succeeded",
        "outcome-declined",
        "outcome-not-sent",
        "outcome-unknown",
        "query-found",
        "query-not-found-trusted",
        "query-pending",
        "evidence-executed",
        "escalate",
        "resolve-not-executed",
        "conflict-executed-twice",
    ];
    #[rustfmt::skip]
    let table: [(&str, [&str; 13]); 7] = [
        // given       start-1      start-2    out-ok       out-decl    out-notsent out-unknown q-found     q-nf        q-pending   ev-exec     escalate    resolve-nc  conflict
        ("ready",     ["in-flight", "refused", "refused",   "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused"]),
        ("in-flight", ["refused",   "refused", "succeeded", "declined", "ready",    "unknown",  "refused",  "refused",  "refused",  "succeeded","refused",  "refused",  "refused"]),
        ("unknown",   ["refused",   "refused", "refused",   "refused",  "refused",  "refused",  "succeeded","ready",    "unknown",  "succeeded","in-review","ready",    "refused"]),
        ("in-review", ["refused",   "refused", "refused",   "refused",  "refused",  "refused",  "succeeded","in-review","in-review","succeeded","refused",  "ready",    "refused"]),
        ("succeeded", ["refused",   "refused", "refused",   "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "succeeded","refused",  "refused",  "conflict"]),
        ("declined",  ["refused",   "refused", "refused",   "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "conflict"]),
        ("conflict",  ["refused",   "refused", "refused",   "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "refused",  "conflict"]),
    ];
    let mut failures = Vec::new();
    for (given, expected) in table {
        let state = with_refund_in(&k, given);
        for (name, then) in steps.iter().zip(expected) {
            let got = match apply(&state, &step(&k, 1, when(&k, name))) {
                Ok(next) => next.operations[0].phase.name().to_string(),
                Err(_) => "refused".to_string(),
            };
            if got != then {
                failures.push(format!(
                    "given {given}, when {name}: expected {then}, got {got}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A key with a refund is listed under its own phase and under the refund's list while the
/// refund needs attention (in flight, unknown, in review, in conflict): what the operator tools
/// and the stores' `list` show.
#[test]
fn a_key_is_listed_under_its_operation_phase_while_the_operation_needs_attention() {
    let k = key("listed-with-a-refund");
    for (phase, lists) in [
        ("ready", vec![PhaseKind::Succeeded]),
        (
            "in-flight",
            vec![PhaseKind::Succeeded, PhaseKind::OperationInFlight],
        ),
        (
            "unknown",
            vec![PhaseKind::Succeeded, PhaseKind::OperationUnknown],
        ),
        (
            "in-review",
            vec![PhaseKind::Succeeded, PhaseKind::OperationInReview],
        ),
        ("succeeded", vec![PhaseKind::Succeeded]),
        ("declined", vec![PhaseKind::Succeeded]),
        (
            "conflict",
            vec![PhaseKind::Succeeded, PhaseKind::OperationConflict],
        ),
    ] {
        assert_eq!(
            with_refund_in(&k, phase).listed_as(),
            lists,
            "refund {phase}"
        );
    }
}

#[test]
fn bounds_are_refused_by_the_fold_before_anything_is_sent() {
    let k = key("bounds");
    let state = charged(&k);
    let over = apply(&state, &refund_requested(&k, 1, "r1", 1_001)).unwrap_err();
    assert!(
        matches!(
            over.reason,
            RejectionReason::OverRefund {
                available: 1_000,
                requested: 1_001
            }
        ),
        "{over}"
    );
    let state = apply(&state, &refund_requested(&k, 1, "r1", 600)).unwrap();
    // 600 is in doubt (requested, not yet proven unexecuted): only 400 is left.
    let over = apply(&state, &refund_requested(&k, 2, "r2", 401)).unwrap_err();
    assert!(matches!(
        over.reason,
        RejectionReason::OverRefund { available: 400, .. }
    ));
    let reused = apply(&state, &refund_requested(&k, 2, "r1", 100)).unwrap_err();
    assert!(matches!(
        reused.reason,
        RejectionReason::RequestIdReused { ordinal: 1 }
    ));
    let gap = apply(&state, &refund_requested(&k, 3, "r3", 100)).unwrap_err();
    assert!(matches!(
        gap.reason,
        RejectionReason::OperationOutOfOrder {
            expected: 2,
            got: 3
        }
    ));
    // A capture or void of a purchase is not a thing.
    let capture = ev(
        &k,
        T + 60,
        EventKind::OperationRequested {
            ordinal: 2,
            kind: OperationKind::Capture,
            request_id: RequestId::new("c1").unwrap(),
            amount: amt(100),
        },
    );
    assert!(matches!(
        apply(&state, &capture).unwrap_err().reason,
        RejectionReason::OperationNotAllowed { .. }
    ));
    // A declined refund gives its budget back.
    let state = apply(&state, &step(&k, 1, started(&k, 1))).unwrap();
    let state = apply(
        &state,
        &step(
            &k,
            1,
            outcome(Outcome::Declined {
                code: DeclineCode::new("no").unwrap(),
            }),
        ),
    )
    .unwrap();
    assert!(apply(&state, &refund_requested(&k, 2, "r2", 1_000)).is_ok());
}

/// An authorisation: captures up to the authorised amount, a void only before any capture.
#[test]
fn captures_and_voids_respect_the_authorisation() {
    let k = key("auth");
    let intent = intent(1_000);
    let mut state = PaymentState::new(k.clone());
    let op = |ordinal, kind, id: &str, minor| {
        ev(
            &k,
            T + 10 + u64::from(ordinal),
            EventKind::OperationRequested {
                ordinal,
                kind,
                request_id: RequestId::new(id).unwrap(),
                amount: amt(minor),
            },
        )
    };
    for event in [
        ev(
            &k,
            T,
            EventKind::AuthorizationRecorded {
                fingerprint: intent.authorization_fingerprint(),
                intent: intent.clone(),
                multiple_captures: true,
            },
        ),
        ev(
            &k,
            T + 1,
            EventKind::AttemptStarted {
                attempt: a(1),
                provider_reference: ProviderReference::derive(&k, a(1)),
            },
        ),
    ] {
        state = apply(&state, &event).unwrap();
    }
    // Nothing is authorised yet.
    assert!(apply(&state, &op(1, OperationKind::Capture, "c1", 100)).is_err());
    state = apply(
        &state,
        &ev(
            &k,
            T + 2,
            EventKind::OutcomeReported {
                attempt: a(1),
                outcome: Outcome::Succeeded {
                    transaction_id: txn("auth_1"),
                    amount: amt(1_000),
                },
            },
        ),
    )
    .unwrap();
    assert_eq!(state.sums().authorized, 1_000);
    // A refund needs a capture first.
    assert!(matches!(
        apply(&state, &op(1, OperationKind::Refund, "r1", 1))
            .unwrap_err()
            .reason,
        RejectionReason::OverRefund { available: 0, .. }
    ));
    state = apply(&state, &op(1, OperationKind::Capture, "c1", 700)).unwrap();
    assert!(matches!(
        apply(&state, &op(2, OperationKind::Capture, "c2", 301))
            .unwrap_err()
            .reason,
        RejectionReason::OverCapture { available: 300, .. }
    ));
    // A capture may have happened: no void.
    assert!(matches!(
        apply(&state, &op(2, OperationKind::Void, "v1", 1_000))
            .unwrap_err()
            .reason,
        RejectionReason::OperationNotAllowed { .. }
    ));
    state = apply(&state, &op(2, OperationKind::Capture, "c2", 300)).unwrap();
    assert_eq!(state.sums().captures_counted, 1_000);
}

// ---------------------------------------------------------------------------------------------
// Random sequences, against a reference model kept by the test.

/// What a random step does.
#[derive(Clone, Debug)]
enum Act {
    Request { kind: u8, id: u8, minor: u64 },
    Start { op: u8 },
    Outcome { op: u8, which: u8, minor: u64 },
    Query { op: u8, which: u8 },
    Evidence { op: u8, minor: u64 },
    Resolve { op: u8, executed: bool },
}

fn arb_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        (0u8..3, 0u8..4, 1u64..1_200).prop_map(|(kind, id, minor)| Act::Request {
            kind,
            id,
            minor
        }),
        (0u8..4).prop_map(|op| Act::Start { op }),
        (0u8..4, 0u8..4, 1u64..1_200).prop_map(|(op, which, minor)| Act::Outcome {
            op,
            which,
            minor
        }),
        (0u8..4, 0u8..3).prop_map(|(op, which)| Act::Query { op, which }),
        (0u8..4, 1u64..1_200).prop_map(|(op, minor)| Act::Evidence { op, minor }),
        (0u8..4, any::<bool>()).prop_map(|(op, executed)| Act::Resolve { op, executed }),
    ]
}

/// The event a random step proposes, given the state (some proposals are illegal: the fold
/// must refuse those).
fn propose(k: &IdempotencyKey, state: &PaymentState, act: &Act, at: u64) -> Event {
    let kinds = [
        OperationKind::Capture,
        OperationKind::Void,
        OperationKind::Refund,
    ];
    let op_of = |op: u8| {
        state
            .operations
            .get(usize::from(op) % state.operations.len().max(1))
            .map_or((1, OperationKind::Refund, 1), |o| {
                (o.ordinal, o.kind, o.attempts_started)
            })
    };
    let policy = NotFoundPolicy::new(1_000, 0, 1).unwrap();
    let kind = match act {
        Act::Request { kind, id, minor } => EventKind::OperationRequested {
            ordinal: state.operations.len() as u32 + 1,
            kind: kinds[usize::from(*kind) % 3],
            request_id: RequestId::new(format!("req-{id}")).unwrap(),
            amount: amt(*minor),
        },
        Act::Start { op } => {
            let (ordinal, kind, started) = op_of(*op);
            let attempt = a((started + 1).min(16));
            EventKind::OperationStepped {
                ordinal,
                step: OperationStep::AttemptStarted {
                    attempt,
                    provider_reference: ProviderReference::derive_operation(
                        k, kind, ordinal, attempt,
                    ),
                },
            }
        }
        Act::Outcome { op, which, minor } => {
            let (ordinal, _, started) = op_of(*op);
            let outcome = match which {
                0 => Outcome::Succeeded {
                    transaction_id: txn(&format!("x_{at}")),
                    amount: amt(*minor),
                },
                1 => Outcome::Declined {
                    code: DeclineCode::new("no").unwrap(),
                },
                2 => Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
                _ => unknown(),
            };
            EventKind::OperationStepped {
                ordinal,
                step: OperationStep::OutcomeReported {
                    attempt: a(started.max(1)),
                    outcome,
                },
            }
        }
        Act::Query { op, which } => {
            let (ordinal, _, started) = op_of(*op);
            let answer = match which {
                0 => QueryAnswer::NotFoundAfterWait {
                    policy,
                    waited_ms: 2_000,
                },
                1 => QueryAnswer::FoundPending,
                _ => QueryAnswer::FoundSucceeded {
                    transaction_id: txn(&format!("q_{at}")),
                    amount: state.operation(ordinal).map_or(amt(1), |o| o.amount),
                },
            };
            EventKind::OperationStepped {
                ordinal,
                step: OperationStep::ProviderQueried {
                    attempt: a(started.max(1)),
                    answer,
                },
            }
        }
        Act::Evidence { op, minor } => {
            let (ordinal, _, started) = op_of(*op);
            EventKind::OperationStepped {
                ordinal,
                step: OperationStep::EvidenceReceived {
                    attempt: a(started.max(1)),
                    source: EvidenceSource::Webhook,
                    finding: Finding::Charged {
                        transaction_id: txn(&format!("w_{at}")),
                        amount: amt(*minor),
                    },
                },
            }
        }
        Act::Resolve { op, executed } => {
            let (ordinal, _, started) = op_of(*op);
            let resolution = if *executed {
                Resolution::Charged {
                    transaction_id: txn(&format!("o_{at}")),
                    amount: state.operation(ordinal).map_or(amt(1), |o| o.amount),
                }
            } else {
                Resolution::NotCharged
            };
            EventKind::OperationStepped {
                ordinal,
                step: OperationStep::ResolvedByOperator {
                    attempt: a(started.max(1)),
                    resolution,
                    operator: Operator::new("ops").unwrap(),
                    note: Note::new("n").unwrap(),
                },
            }
        }
    };
    ev(k, at, kind)
}

/// The test's own books: each operation's attempts started and phase after the previous step.
#[derive(Default)]
struct Books {
    seen: BTreeMap<u32, (u32, Phase)>,
}

impl Books {
    /// Checks the state against the bounds and the books.
    fn check(&mut self, state: &PaymentState) -> Result<(), TestCaseError> {
        let sums = state.sums();
        prop_assert!(sums.refunds_counted <= sums.captured, "{sums:?}");
        prop_assert!(sums.refunded <= sums.captured, "{sums:?}");
        if let PrimaryKind::Authorization { .. } = state.primary {
            prop_assert!(sums.captures_counted <= sums.authorized, "{sums:?}");
        }
        for op in &state.operations {
            if let Some((started, before)) = self.seen.get(&op.ordinal) {
                // A new attempt only once the previous one was proven not executed: the
                // operation can never be executed twice.
                if op.attempts_started > *started {
                    prop_assert!(
                        matches!(before, Phase::Ready { .. }),
                        "attempt {} started while {:?}",
                        op.attempts_started,
                        before
                    );
                }
                // Executed stays executed (or becomes a conflict).
                if matches!(before, Phase::Succeeded { .. }) {
                    let still =
                        matches!(op.phase, Phase::Succeeded { .. } | Phase::Conflict { .. });
                    prop_assert!(still, "an executed operation became {:?}", op.phase);
                }
            }
            self.seen
                .insert(op.ordinal, (op.attempts_started, op.phase.clone()));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operation_sequences_never_break_a_bound(
        acts in prop::collection::vec(arb_act(), 1..80),
        authorization in any::<bool>(),
    ) {
        let k = key("prop");
        let mut state = if authorization {
            let intent = intent(1_000);
            let events = [
                ev(&k, T, EventKind::AuthorizationRecorded {
                    fingerprint: intent.authorization_fingerprint(),
                    intent: intent.clone(),
                    multiple_captures: true,
                }),
                ev(&k, T + 1, EventKind::AttemptStarted {
                    attempt: a(1),
                    provider_reference: ProviderReference::derive(&k, a(1)),
                }),
                ev(&k, T + 2, EventKind::OutcomeReported {
                    attempt: a(1),
                    outcome: Outcome::Succeeded { transaction_id: txn("auth"), amount: amt(1_000) },
                }),
            ];
            PaymentState::fold(k.clone(), &events).unwrap()
        } else {
            charged(&k)
        };
        let mut books = Books::default();
        let mut events = Vec::new();
        for (i, act) in acts.iter().enumerate() {
            let event = propose(&k, &state, act, T + 10 + i as u64);
            if let Ok(next) = apply(&state, &event) {
                // Executed refunds only ever grow.
                prop_assert!(next.sums().refunded >= state.sums().refunded);
                state = next;
                events.push(event);
            }
            books.check(&state)?;
        }
        let _ = events;
    }
}

// ---------------------------------------------------------------------------------------------
// Through the ledger.

fn pay(ledger: &Ledger, name: &str, minor: u64) -> IdempotencyKey {
    let k = key(name);
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(minor)).unwrap() else {
        panic!("new key");
    };
    ledger
        .record(
            ticket,
            Outcome::Succeeded {
                transaction_id: txn(&format!("ch_{name}")),
                amount: amt(minor),
            },
        )
        .unwrap();
    k
}

#[test]
fn a_refund_that_timed_out_is_reconciled_and_never_sent_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "refund-timeout", 1_000);
    let id = RequestId::new("refund-1").unwrap();
    let Decision::Attempt(ticket) = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    let reference = ticket.provider_reference().clone();
    // The provider refunded, but the reply was lost.
    ledger.record_operation(ticket, unknown()).unwrap();
    // The merchant retries with the same refund id: nothing is sent.
    assert!(matches!(
        ledger
            .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
            .unwrap(),
        Decision::AwaitingReconciliation { .. }
    ));
    // A retry with a new id cannot refund again either: 1,000 is in doubt.
    let again = ledger.begin_operation(
        &k,
        OperationKind::Refund,
        &RequestId::new("refund-2").unwrap(),
        amt(1),
    );
    assert!(matches!(again, Err(Error::Rejected(_))), "{again:?}");
    // The reconciler asks the provider about the refund's reference and settles it.
    let provider = FakeProvider::new();
    provider
        .charges
        .lock()
        .unwrap()
        .insert(reference.as_str().to_string(), ("re_1".to_string(), 1_000));
    clock.advance(60_000);
    let reconciler = Reconciler::new(ledger.clone(), std::sync::Arc::clone(&provider));
    let report = reconciler.run_once().unwrap();
    assert_eq!(report.resolved, 1, "{report:?}");
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(matches!(state.operations[0].phase, Phase::Succeeded { .. }));
    assert_eq!(state.sums().refunded, 1_000);
    assert!(matches!(
        ledger
            .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
            .unwrap(),
        Decision::AlreadySucceeded { .. }
    ));
    // A duplicate webhook of the same refund is confirmed, not booked again.
    let outcome = ledger
        .record_evidence(
            &reference,
            EvidenceSource::Webhook,
            Finding::Charged {
                transaction_id: txn("re_1"),
                amount: amt(1_000),
            },
        )
        .unwrap();
    assert_eq!(outcome, EvidenceOutcome::Confirmed);
    assert_eq!(ledger.state(&k).unwrap().unwrap().sums().refunded, 1_000);
}

#[test]
fn a_conflict_from_a_lost_charge_is_settled_by_refunding_the_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "double", 1_000);
    // A settlement line shows another charge for the key (an attempt the ledger never made is
    // not possible; here the provider reports a second charge for attempt 1).
    let outcome = ledger
        .record_evidence(
            &ProviderReference::derive(&k, AttemptNumber::FIRST),
            EvidenceSource::Settlement,
            Finding::Charged {
                transaction_id: txn("ch_dup"),
                amount: amt(1_000),
            },
        )
        .unwrap();
    assert_eq!(outcome, EvidenceOutcome::Conflict);
    ledger.wait_indexed().unwrap();
    assert_eq!(ledger.health().unwrap().conflict, 1);
    let state = ledger.state(&k).unwrap().unwrap();
    assert_eq!(state.sums().captured, 2_000, "both charges are refundable");
    assert!(!state.conflict_resolved());
    let Decision::Attempt(ticket) = ledger
        .begin_operation(
            &k,
            OperationKind::Refund,
            &RequestId::new("dup-refund").unwrap(),
            amt(1_000),
        )
        .unwrap()
    else {
        panic!("a refund of the duplicate");
    };
    let state = ledger
        .record_operation(
            ticket,
            Outcome::Succeeded {
                transaction_id: txn("re_dup"),
                amount: amt(1_000),
            },
        )
        .unwrap();
    assert!(state.conflict_resolved(), "{state:?}");
    assert!(
        matches!(state.phase, Phase::Conflict { .. }),
        "the history stays"
    );
    ledger.wait_indexed().unwrap();
    assert_eq!(
        ledger.health().unwrap().conflict,
        0,
        "no longer counted as a conflict"
    );
    let listed = ledger.list(PhaseKind::Succeeded, None, 10).unwrap();
    assert!(listed.iter().any(|s| s.key == k));
}

#[test]
fn an_operation_whose_ticket_is_dropped_or_whose_process_ended_becomes_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "dropped", 1_000);
    let id = RequestId::new("r-dropped").unwrap();
    let Decision::Attempt(ticket) = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(300))
        .unwrap()
    else {
        panic!();
    };
    drop(ticket);
    assert!(matches!(
        ledger
            .begin_operation(&k, OperationKind::Refund, &id, amt(300))
            .unwrap(),
        Decision::AwaitingReconciliation { .. }
    ));
    // Another refund in flight when the process ends.
    let Decision::Attempt(ticket) = ledger
        .begin_operation(
            &k,
            OperationKind::Refund,
            &RequestId::new("r-crash").unwrap(),
            amt(300),
        )
        .unwrap()
    else {
        panic!();
    };
    std::mem::forget(ticket);
    drop(ledger);
    let (ledger, report) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    assert_eq!(report.orphaned_attempts, 1);
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(
        state
            .operations
            .iter()
            .all(|op| matches!(op.phase, Phase::Unknown { .. }))
    );
    ledger.wait_indexed().unwrap();
    let listed = ledger.list(PhaseKind::OperationUnknown, None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    let _ = Duration::ZERO;
}

/// As a charge's: an operation's outcome that could not be written is unknown to `state` and
/// `health` at once, not shown in flight (found in review: `state` said `InFlight` and `health`
/// counted nothing, while `begin_operation` already treated the refund as unknown).
#[test]
fn an_operation_outcome_that_cannot_be_written_is_shown_unknown_as_a_charges_is() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(9);
    let clock = clock();
    let config = LedgerConfig {
        storage: std::sync::Arc::new(disk.clone()),
        index_dir: Some(tmp.path().to_path_buf()),
        ..config(&clock)
    };
    let (ledger, _) = Ledger::open("/ledger", config).unwrap();
    let k = pay(&ledger, "refund-disk-full", 1_000);
    let id = RequestId::new("r-disk-full").unwrap();
    let Decision::Attempt(ticket) = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(400))
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    clock.advance(1_000);
    disk.fail_next_writes(1);
    let written = ledger.record_operation(ticket, refunded(400));
    assert!(
        matches!(written, Err(Error::AppendFailed { .. })),
        "the caller gets the error: {written:?}"
    );
    // The journal is poisoned: a retry is refused, never sent.
    let retry = ledger.begin_operation(&k, OperationKind::Refund, &id, amt(400));
    assert!(matches!(retry, Err(Error::Poisoned { .. })), "{retry:?}");
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(
        matches!(
            state.operations[0].phase,
            Phase::Unknown {
                reason: UnknownReason::LocalWriteFailed,
                ..
            }
        ),
        "{:?}",
        state.operations[0].phase
    );
    clock.advance(5_000);
    let health = ledger.health().unwrap();
    let refunds = health
        .operations
        .iter()
        .find(|h| h.kind == OperationKind::Refund);
    assert!(
        refunds.is_some_and(|h| h.unknown == 1 && h.unknown_age_ms_max == Some(5_000)),
        "{health:?}"
    );
}

/// Runs reconcile passes, `step_ms` apart, until the refund `ordinal` leaves `Unknown` or
/// `passes` are done; returns its phase.
fn reconcile_refund(
    ledger: &Ledger,
    clock: &ManualClock,
    k: &IdempotencyKey,
    ordinal: u32,
    passes: usize,
    step_ms: u64,
) -> Phase {
    let provider = FakeProvider::new();
    let reconciler = Reconciler::new(ledger.clone(), std::sync::Arc::clone(&provider));
    let phase = || {
        let state = ledger.state(k).unwrap().unwrap();
        state.operation(ordinal).unwrap().phase.clone()
    };
    for _ in 0..passes {
        reconciler.run_once().unwrap();
        if !matches!(phase(), Phase::Unknown { .. }) {
            break;
        }
        clock.advance(step_ms);
    }
    assert_eq!(provider.charge_calls(), 0, "a reconciler never sends");
    phase()
}

#[test]
fn an_unknown_refund_has_waited_since_it_became_unknown_not_since_its_first_query() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "refund-never-sent", 1_000);
    let id = RequestId::new("refund-lost").unwrap();
    let Decision::Attempt(ticket) = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    // The request never reached the provider, but the caller cannot know that.
    ledger.record_operation(ticket, unknown()).unwrap();
    // Past the visibility delay and skew margin (65 s) before the first query: three
    // consistent "not found" answers then prove it was never made.
    clock.advance(70_000);
    let phase = reconcile_refund(&ledger, &clock, &k, 1, 6, 5_000);
    assert!(matches!(phase, Phase::Ready { .. }), "{phase:?}");
}

#[test]
fn an_unknown_refund_keeps_the_wait_recorded_before_a_reopen_and_counts_from_the_open() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "refund-reopened", 1_000);
    let id = RequestId::new("refund-reopened").unwrap();
    let Decision::Attempt(ticket) = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    ledger.record_operation(ticket, unknown()).unwrap();
    // One "not found" answer 40 s in, recorded with its wait; then the process ends.
    clock.advance(40_000);
    assert!(matches!(
        reconcile_refund(&ledger, &clock, &k, 1, 1, 0),
        Phase::Unknown { .. }
    ));
    drop(ledger);
    // The next process counts its own uptime on top of the 40 s: 30 s later the wait is past
    // 65 s without a query having to start the clock again.
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    clock.advance(30_000);
    let phase = reconcile_refund(&ledger, &clock, &k, 1, 6, 5_000);
    assert!(matches!(phase, Phase::Ready { .. }), "{phase:?}");
}

/// Attempt 1 seemed never sent, attempt 2 is in flight when a settlement line shows that
/// attempt 1 charged after all (`ch_lost`); then attempt 2 succeeds too (`ch_2`).
fn succeeded_beside_a_conflict(k: &IdempotencyKey) -> PaymentState {
    let k = k.clone();
    let intent = intent(1_000);
    let events = [
        ev(
            &k,
            T,
            EventKind::IntentRecorded {
                fingerprint: intent.fingerprint(),
                intent,
            },
        ),
        ev(
            &k,
            T + 1,
            EventKind::AttemptStarted {
                attempt: a(1),
                provider_reference: ProviderReference::derive(&k, a(1)),
            },
        ),
        ev(
            &k,
            T + 2,
            EventKind::OutcomeReported {
                attempt: a(1),
                outcome: Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
            },
        ),
        ev(
            &k,
            T + 3,
            EventKind::AttemptStarted {
                attempt: a(2),
                provider_reference: ProviderReference::derive(&k, a(2)),
            },
        ),
        ev(
            &k,
            T + 4,
            EventKind::ConflictDetected {
                attempt: a(1),
                source: EvidenceSource::Settlement,
                finding: Finding::Charged {
                    transaction_id: txn("ch_lost"),
                    amount: amt(1_000),
                },
            },
        ),
        ev(
            &k,
            T + 5,
            EventKind::OutcomeReported {
                attempt: a(2),
                outcome: Outcome::Succeeded {
                    transaction_id: txn("ch_2"),
                    amount: amt(1_000),
                },
            },
        ),
    ];
    PaymentState::fold(k.clone(), &events).unwrap()
}

#[test]
fn a_charge_that_succeeds_beside_a_conflict_is_counted_as_captured() {
    // Both charges are the customer's money: both are refundable.
    let k = key("beside");
    let state = succeeded_beside_a_conflict(&k);
    assert!(matches!(state.phase, Phase::Conflict { .. }), "{state:?}");
    assert_eq!(state.sums().captured, 2_000, "{:?}", state.charges);
    let refund = apply(&state, &refund_requested(&k, 1, "dup", 1_000));
    assert!(refund.is_ok(), "{refund:?}");
}

#[test]
fn an_echo_of_a_known_charge_agrees_with_a_key_in_conflict() {
    let k = key("echo");
    let state = succeeded_beside_a_conflict(&k);
    // The webhook of attempt 2's success, and a second settlement line of the lost charge:
    // both known, neither a new contradiction.
    for (n, id) in [(2, "ch_2"), (1, "ch_lost")] {
        let finding = Finding::Charged {
            transaction_id: txn(id),
            amount: amt(1_000),
        };
        assert_eq!(state.weigh(a(n), &finding), Ok(Verdict::Agrees), "{id}");
    }
    // Another charge of a known attempt is still a contradiction.
    let other = Finding::Charged {
        transaction_id: txn("ch_3"),
        amount: amt(1_000),
    };
    assert_eq!(state.weigh(a(2), &other), Ok(Verdict::Contradicts));
}

#[test]
fn every_charge_a_conflict_shows_is_counted_as_captured() {
    // Two attempts the provider charged and then lost; the settlement shows both, one after
    // the other. The second conflict finds the key already in conflict: its charge is the
    // customer's money all the same.
    let k = key("two-lost");
    let intent = intent(1_000);
    let mut events = vec![ev(
        &k,
        T,
        EventKind::IntentRecorded {
            fingerprint: intent.fingerprint(),
            intent,
        },
    )];
    for n in 1..=2 {
        events.push(ev(
            &k,
            T + 1,
            EventKind::AttemptStarted {
                attempt: a(n),
                provider_reference: ProviderReference::derive(&k, a(n)),
            },
        ));
        events.push(ev(
            &k,
            T + 2,
            EventKind::OutcomeReported {
                attempt: a(n),
                outcome: Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
            },
        ));
    }
    for (n, id) in [(1, "ch_a"), (2, "ch_b")] {
        events.push(ev(
            &k,
            T + 3,
            EventKind::ConflictDetected {
                attempt: a(n),
                source: EvidenceSource::Settlement,
                finding: Finding::Charged {
                    transaction_id: txn(id),
                    amount: amt(1_000),
                },
            },
        ));
    }
    let state = PaymentState::fold(k.clone(), &events).unwrap();
    assert!(matches!(state.phase, Phase::Conflict { .. }), "{state:?}");
    assert_eq!(state.sums().captured, 2_000, "{:?}", state.charges);
}

/// Found in review: the ticket of a refund attempt whose lease expired (its call hung, the
/// reconciler took it over, the refund proved never made and was retried) must not release the
/// ticket of the retry when its late answer finally arrives: a retry of the request then sees
/// the second attempt in flight, not "dropped", and its own outcome is recorded as such.
/// A refund of 1,000 on `k` whose attempt 1 hangs past its lease, is taken over and proved
/// never made ("not found" answers), then retried: the tickets of attempts 1 and 2.
fn refund_retried_after_a_hung_call(
    ledger: &Ledger,
    clock: &std::sync::Arc<ManualClock>,
    k: &IdempotencyKey,
    id: &RequestId,
) -> (OperationTicket, OperationTicket) {
    let Decision::Attempt(first) = ledger
        .begin_operation(k, OperationKind::Refund, id, amt(1_000))
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    clock.advance(first.lease_ms() + 1_000);
    let provider = FakeProvider::new();
    Reconciler::new(ledger.clone(), std::sync::Arc::clone(&provider))
        .run_once()
        .unwrap();
    clock.advance(70_000);
    let phase = reconcile_refund(ledger, clock, k, 1, 10, 5_000);
    assert!(matches!(phase, Phase::Ready { .. }), "{phase:?}");
    let Decision::Attempt(second) = ledger
        .begin_operation(k, OperationKind::Refund, id, amt(1_000))
        .unwrap()
    else {
        panic!("a retry of a refund proved never made");
    };
    assert_eq!(second.attempt(), a(2));
    (first, second)
}

#[test]
fn a_late_refund_ticket_never_releases_the_ticket_of_its_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = pay(&ledger, "refund-late", 1_000);
    let id = RequestId::new("refund-late-1").unwrap();
    let (first, second) = refund_retried_after_a_hung_call(&ledger, &clock, &k, &id);
    // The hung call of attempt 1 returns at last.
    ledger
        .record_operation(
            first,
            Outcome::NotSent {
                reason: NotSentReason::ConnectionRefused,
            },
        )
        .unwrap();
    // Attempt 2's call is still running: a retry of the request waits for it.
    let again = ledger
        .begin_operation(&k, OperationKind::Refund, &id, amt(1_000))
        .unwrap();
    assert!(
        matches!(again, Decision::InFlight { attempt } if attempt == a(2)),
        "{again:?}"
    );
    let state = ledger
        .record_operation(
            second,
            Outcome::Succeeded {
                transaction_id: txn("re_late"),
                amount: amt(1_000),
            },
        )
        .unwrap();
    assert!(
        matches!(state.operation(1).unwrap().phase, Phase::Succeeded { .. }),
        "{state:?}"
    );
}

/// Found in review: when a late ticket of attempt 1 and then attempt 2 both fail to record
/// (index reads that fail, the journal still writable), attempt 2 is the one shown unknown;
/// the marker of attempt 1 was kept and attempt 2 shown in flight.
#[test]
fn the_latest_attempt_whose_outcome_could_not_be_written_is_the_one_shown_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let (ledger, _) = Ledger::open(tmp.path(), config).unwrap();
    let k = pay(&ledger, "refund-unwritten-twice", 1_000);
    let id = RequestId::new("refund-unwritten-1").unwrap();
    let (first, second) = refund_retried_after_a_hung_call(&ledger, &clock, &k, &id);
    // Each `record_operation` reads the key from the index (the overlay is applied): it fails.
    ledger.wait_indexed().unwrap();
    faults.fail_next_gets(1);
    let late = ledger.record_operation(
        first,
        Outcome::NotSent {
            reason: NotSentReason::ConnectionRefused,
        },
    );
    assert!(late.is_err(), "{late:?}");
    faults.fail_next_gets(1);
    let lost = ledger.record_operation(second, refunded(1_000));
    assert!(lost.is_err(), "{lost:?}");
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(
        matches!(
            state.operation(1).unwrap().phase,
            Phase::Unknown {
                attempt,
                reason: UnknownReason::LocalWriteFailed,
                ..
            } if attempt == a(2)
        ),
        "{state:?}"
    );
}

/// Found in review: the reconciler's scan of operations in flight must resume where it
/// stopped. With more keys holding live operation tickets than one pass takes, a dropped
/// ticket on a key that sorts after them was never taken over.
#[test]
fn a_dropped_refund_ticket_behind_a_full_batch_of_live_ones_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let batch = reconcile_config().batch_max();
    let mut live = Vec::new();
    for i in 0..=batch {
        let k = pay(&ledger, &format!("a-live-{i:04}"), 1_000);
        let Decision::Attempt(ticket) = ledger
            .begin_operation(
                &k,
                OperationKind::Refund,
                &RequestId::new(format!("r-{i}")).unwrap(),
                amt(100),
            )
            .unwrap()
        else {
            panic!("a refund attempt");
        };
        live.push(ticket);
    }
    let dropped = pay(&ledger, "z-dropped", 1_000);
    let Decision::Attempt(ticket) = ledger
        .begin_operation(
            &dropped,
            OperationKind::Refund,
            &RequestId::new("r-dropped").unwrap(),
            amt(100),
        )
        .unwrap()
    else {
        panic!("a refund attempt");
    };
    drop(ticket);
    let reconciler = Reconciler::new(ledger.clone(), FakeProvider::new());
    for _ in 0..3 {
        reconciler.run_once().unwrap();
    }
    let state = ledger.state(&dropped).unwrap().unwrap();
    assert!(
        matches!(
            state.operation(1).unwrap().phase,
            Phase::Unknown {
                reason: UnknownReason::TicketDropped,
                ..
            }
        ),
        "{:?}",
        state.operation(1).unwrap().phase
    );
    // The live tickets were left alone.
    let first = ledger.state(&key("a-live-0000")).unwrap().unwrap();
    assert!(matches!(
        first.operation(1).unwrap().phase,
        Phase::InFlight { .. }
    ));
    drop(live);
}
