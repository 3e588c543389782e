//! Property tests of the fold: long event sequences, arbitrary and legal by construction,
//! checked against bookkeeping that does not use the fold's own logic.

use payledger::*;
use proptest::prelude::*;

fn key() -> IdempotencyKey {
    IdempotencyKey::new("prop-key").unwrap()
}

fn intent(amount: u64) -> Intent {
    Intent {
        amount: Amount::new(amount).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct").unwrap(),
        customer: CustomerRef::new("cus").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

fn n(a: u32) -> AttemptNumber {
    AttemptNumber::new(a).unwrap()
}

fn txn(i: u8) -> TransactionId {
    TransactionId::new(format!("tx_{i}")).unwrap()
}

fn policy(delay: u64, answers: u32) -> NotFoundPolicy {
    NotFoundPolicy::new(delay, 0, answers).unwrap()
}

fn finding(charged: bool, tx: u8, amount: u64) -> Finding {
    if charged {
        Finding::Charged {
            transaction_id: txn(tx),
            amount: Amount::new(amount).unwrap(),
        }
    } else {
        Finding::Declined {
            code: DeclineCode::new("declined").unwrap(),
        }
    }
}

/// An arbitrary event kind about attempts 1..=4, amounts from a small set so that matches and
/// mismatches are both common.
fn arb_kind() -> impl Strategy<Value = EventKind> {
    let attempt = 1u32..=4;
    let amount = prop_oneof![Just(100u64), Just(100u64), Just(7u64)];
    prop_oneof![
        amount.clone().prop_map(|a| {
            let intent = intent(a);
            EventKind::IntentRecorded {
                fingerprint: intent.fingerprint(),
                intent,
            }
        }),
        attempt.clone().prop_map(|a| EventKind::AttemptStarted {
            attempt: n(a),
            provider_reference: ProviderReference::derive(&key(), n(a)),
        }),
        (attempt.clone(), 0u8..4, 0u8..3, amount.clone()).prop_map(|(a, which, tx, amt)| {
            let outcome = match which {
                0 => Outcome::Succeeded {
                    transaction_id: txn(tx),
                    amount: Amount::new(amt).unwrap(),
                },
                1 => Outcome::Declined {
                    code: DeclineCode::new("d").unwrap(),
                },
                2 => Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
                _ => Outcome::Unknown {
                    reason: UnknownReason::Timeout,
                },
            };
            EventKind::OutcomeReported {
                attempt: n(a),
                outcome,
            }
        }),
        (
            attempt.clone(),
            0u8..6,
            0u8..3,
            amount.clone(),
            1_000u64..3_000,
            1u32..3
        )
            .prop_map(|(a, which, tx, amt, delay, answers)| {
                let answer = match which {
                    0 => QueryAnswer::FoundSucceeded {
                        transaction_id: txn(tx),
                        amount: Amount::new(amt).unwrap(),
                    },
                    1 => QueryAnswer::FoundDeclined {
                        code: DeclineCode::new("d").unwrap(),
                    },
                    2 => QueryAnswer::FoundPending,
                    3 => QueryAnswer::NotFound {
                        policy: policy(delay, answers),
                    },
                    4 => QueryAnswer::NotFoundAfterWait {
                        policy: policy(delay, answers),
                        waited_ms: delay * u64::from(tx),
                    },
                    _ => QueryAnswer::QueryFailed {
                        reason: UnknownReason::ConnectionLost,
                    },
                };
                EventKind::ProviderQueried {
                    attempt: n(a),
                    answer,
                }
            }),
        (attempt.clone(), any::<bool>(), 0u8..3, amount.clone()).prop_map(|(a, c, tx, amt)| {
            EventKind::EvidenceReceived {
                attempt: n(a),
                source: EvidenceSource::Webhook,
                finding: finding(c, tx, amt),
            }
        }),
        (attempt.clone(), any::<bool>(), 0u8..3, amount.clone()).prop_map(|(a, c, tx, amt)| {
            EventKind::ConflictDetected {
                attempt: n(a),
                source: EvidenceSource::Settlement,
                finding: finding(c, tx, amt),
            }
        }),
        attempt.clone().prop_map(|a| EventKind::EscalatedToReview {
            attempt: n(a),
            reason: ReviewReason::QueriesExhausted { queries: 3 },
        }),
        (attempt, 0u8..3, 0u8..3, amount).prop_map(|(a, which, tx, amt)| {
            let resolution = match which {
                0 => Resolution::Charged {
                    transaction_id: txn(tx),
                    amount: Amount::new(amt).unwrap(),
                },
                1 => Resolution::Declined {
                    code: DeclineCode::new("d").unwrap(),
                },
                _ => Resolution::NotCharged,
            };
            EventKind::ResolvedByOperator {
                attempt: n(a),
                resolution,
                operator: Operator::new("ops").unwrap(),
                note: Note::new("").unwrap(),
            }
        }),
    ]
}

/// A legal-by-construction step: an event chosen to fit the phase the key is in.
fn legal_kind(state: &PaymentState, choice: u8, tx: u8) -> EventKind {
    let amount = state.intent.as_ref().map_or(100, |i| i.amount.minor());
    let charged = |attempt| EventKind::EvidenceReceived {
        attempt,
        source: EvidenceSource::Webhook,
        finding: finding(true, tx, amount),
    };
    match &state.phase {
        Phase::Vacant => {
            let intent = intent(100);
            EventKind::IntentRecorded {
                fingerprint: intent.fingerprint(),
                intent,
            }
        }
        Phase::Ready { next_attempt } => match choice % 4 {
            0 if state.attempts_started > 0 => charged(n(state.attempts_started)),
            _ => EventKind::AttemptStarted {
                attempt: *next_attempt,
                provider_reference: ProviderReference::derive(&state.key, *next_attempt),
            },
        },
        Phase::InFlight { attempt, .. } => {
            let outcome = match choice % 5 {
                0 => Outcome::Succeeded {
                    transaction_id: txn(tx),
                    amount: Amount::new(amount).unwrap(),
                },
                1 => Outcome::Declined {
                    code: DeclineCode::new("d").unwrap(),
                },
                2 => Outcome::NotSent {
                    reason: NotSentReason::DeadlineBeforeSend,
                },
                _ => Outcome::Unknown {
                    reason: UnknownReason::Timeout,
                },
            };
            EventKind::OutcomeReported {
                attempt: *attempt,
                outcome,
            }
        }
        Phase::Unknown { attempt, .. } | Phase::InReview { attempt, .. } => match choice % 7 {
            0 => EventKind::ProviderQueried {
                attempt: *attempt,
                answer: QueryAnswer::FoundSucceeded {
                    transaction_id: txn(tx),
                    amount: Amount::new(amount).unwrap(),
                },
            },
            1 => EventKind::EscalatedToReview {
                attempt: *attempt,
                reason: ReviewReason::Requested,
            },
            2 => EventKind::ResolvedByOperator {
                attempt: *attempt,
                resolution: Resolution::NotCharged,
                operator: Operator::new("ops").unwrap(),
                note: Note::new("").unwrap(),
            },
            3 => EventKind::ProviderQueried {
                attempt: *attempt,
                answer: QueryAnswer::FoundPending,
            },
            _ => EventKind::ProviderQueried {
                attempt: *attempt,
                answer: QueryAnswer::NotFoundAfterWait {
                    policy: policy(1_000, 2),
                    waited_ms: 2_000,
                },
            },
        },
        _ => EventKind::ConflictDetected {
            attempt: n(state.attempts_started.max(1)),
            source: EvidenceSource::Settlement,
            finding: finding(true, tx.wrapping_add(100), amount),
        },
    }
}

/// Folds `events`, skipping what the fold refuses, and checks every invariant against the
/// books of `payledger::fuzzing::check_fold` (shared with the `fold` fuzz target): attempts
/// numbered without gaps, a new attempt only after its predecessor could be proven uncharged
/// and while none is possibly charged, settled keys stay settled, refolding gives the same
/// state.
fn run(events: &[Event]) {
    payledger::fuzzing::check_fold(events);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_sequences_never_allow_a_second_charge(
        kinds in prop::collection::vec((arb_kind(), 0u64..500), 1..200)
    ) {
        let mut t = 0;
        let events: Vec<Event> = kinds
            .into_iter()
            .map(|(kind, dt)| {
                t += dt;
                Event { key: key(), at: UnixMillis(t), kind }
            })
            .collect();
        run(&events);
    }

    #[test]
    fn legal_sequences_never_allow_a_second_charge(
        steps in prop::collection::vec((any::<u8>(), 0u8..4, 0u64..100), 1..300)
    ) {
        let mut state = PaymentState::new(key());
        let mut events = Vec::new();
        let mut t = 0;
        for (choice, tx, dt) in steps {
            t += dt;
            let event = Event { key: key(), at: UnixMillis(t), kind: legal_kind(&state, choice, tx) };
            if let Ok(next) = apply(&state, &event) {
                state = next;
            }
            events.push(event);
        }
        run(&events);
    }
}
