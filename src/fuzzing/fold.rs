//! The `fold` target: a structured sequence of events for one key, through the fold, checked
//! against books the target keeps itself.
//!
//! Invariants checked after every accepted event: attempts are numbered without gaps; an
//! attempt starts only after an event that can prove its predecessor uncharged was accepted,
//! and only while no attempt is possibly charged; a settled key stays settled; a key with a
//! recorded contradiction sends nobody to the provider; folding the accepted events again gives
//! the same state.

use arbitrary::{Arbitrary, Unstructured};

use crate::model::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, Decision, DeclineCode, Event,
    EventKind, EvidenceSource, Finding, IdempotencyKey, Intent, Metadata, NotFoundPolicy,
    NotSentReason, Note, Operator, Outcome, PaymentState, Phase, ProviderReference, QueryAnswer,
    Resolution, ReviewReason, TransactionId, UnixMillis, UnknownReason, apply,
};

/// One step of a fold input, chosen by the fuzzer.
#[derive(Arbitrary, Debug, Clone)]
pub enum FoldStep {
    /// Records the intent (of one of two amounts).
    Intent(bool),
    /// Starts an attempt.
    Start(u8),
    /// Reports an outcome.
    Outcome(u8, OutcomeChoice),
    /// Records a query answer.
    Query(u8, AnswerChoice),
    /// Records evidence (or, if `conflict`, a contradiction).
    Evidence {
        /// Which attempt.
        attempt: u8,
        /// Charged (else declined).
        charged: bool,
        /// As a `ConflictDetected` event.
        conflict: bool,
        /// Which transaction id.
        tx: u8,
        /// The intent's amount (else another).
        amount_ok: bool,
    },
    /// Escalates to review.
    Escalate(u8),
    /// An operator resolves.
    Resolve(u8, ResolutionChoice),
    /// Time passes.
    Wait(u16),
}

/// An outcome the fuzzer chooses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum OutcomeChoice {
    /// Succeeded.
    Charged(bool),
    /// Declined.
    Declined,
    /// Not sent.
    NotSent,
    /// Unknown.
    Unknown,
}

/// A query answer the fuzzer chooses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AnswerChoice {
    /// Found succeeded.
    Charged(bool),
    /// Found declined.
    Declined,
    /// Pending.
    Pending,
    /// Not found (the wait, in seconds).
    NotFound(u8),
    /// Not found, as older ledgers wrote it.
    OldNotFound,
    /// The query failed.
    Failed,
}

/// A resolution the fuzzer chooses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ResolutionChoice {
    /// Charged.
    Charged(bool),
    /// Declined.
    Declined,
    /// Not charged.
    NotCharged,
}

fn key() -> IdempotencyKey {
    IdempotencyKey::new("fuzz-key").unwrap_or_else(|_| unreachable!("a valid literal"))
}

fn intent(large: bool) -> Option<Intent> {
    Some(Intent {
        amount: Amount::new(if large { 9_999 } else { 100 }).ok()?,
        currency: Currency::new("EUR").ok()?,
        account: AccountId::new("acct").ok()?,
        customer: CustomerRef::new("cus").ok()?,
        description: None,
        metadata: Metadata::default(),
    })
}

fn attempt(n: u8) -> Option<AttemptNumber> {
    AttemptNumber::new(u32::from(n % 18)).ok()
}

/// The steps `bytes` decode to.
pub fn fold_steps(bytes: &[u8]) -> Vec<FoldStep> {
    let mut u = Unstructured::new(bytes);
    let mut steps = Vec::new();
    while !u.is_empty() {
        match u.arbitrary::<FoldStep>() {
            Ok(step) => steps.push(step),
            Err(_) => break,
        }
    }
    steps
}

/// The events `steps` stand for (steps that make no valid event are skipped).
fn events(steps: &[FoldStep]) -> Vec<Event> {
    let mut at = 1_000_000u64;
    let mut events = Vec::new();
    let amount = |ok: bool| Amount::new(if ok { 100 } else { 101 });
    let txn = |tx: u8| TransactionId::new(format!("tx_{}", tx % 3));
    for step in steps {
        at += 10;
        let kind = match *step {
            FoldStep::Wait(ms) => {
                at += u64::from(ms);
                continue;
            }
            FoldStep::Intent(large) => {
                let Some(intent) = intent(large) else {
                    continue;
                };
                EventKind::IntentRecorded {
                    fingerprint: intent.fingerprint(),
                    intent,
                }
            }
            FoldStep::Start(n) => {
                let Some(a) = attempt(n) else { continue };
                EventKind::AttemptStarted {
                    attempt: a,
                    provider_reference: ProviderReference::derive(&key(), a),
                }
            }
            FoldStep::Outcome(n, choice) => {
                let Some(a) = attempt(n) else { continue };
                let outcome = match choice {
                    OutcomeChoice::Charged(ok) => {
                        let (Ok(transaction_id), Ok(amount)) = (txn(0), amount(ok)) else {
                            continue;
                        };
                        Outcome::Succeeded {
                            transaction_id,
                            amount,
                        }
                    }
                    OutcomeChoice::Declined => match DeclineCode::new("declined") {
                        Ok(code) => Outcome::Declined { code },
                        Err(_) => continue,
                    },
                    OutcomeChoice::NotSent => Outcome::NotSent {
                        reason: NotSentReason::ConnectionRefused,
                    },
                    OutcomeChoice::Unknown => Outcome::Unknown {
                        reason: UnknownReason::Timeout,
                    },
                };
                EventKind::OutcomeReported {
                    attempt: a,
                    outcome,
                }
            }
            FoldStep::Query(n, choice) => {
                let Some(a) = attempt(n) else { continue };
                let Ok(policy) = NotFoundPolicy::new(1_000, 0, 2) else {
                    continue;
                };
                let answer = match choice {
                    AnswerChoice::Charged(ok) => {
                        let (Ok(transaction_id), Ok(amount)) = (txn(1), amount(ok)) else {
                            continue;
                        };
                        QueryAnswer::FoundSucceeded {
                            transaction_id,
                            amount,
                        }
                    }
                    AnswerChoice::Declined => match DeclineCode::new("declined") {
                        Ok(code) => QueryAnswer::FoundDeclined { code },
                        Err(_) => continue,
                    },
                    AnswerChoice::Pending => QueryAnswer::FoundPending,
                    AnswerChoice::NotFound(seconds) => QueryAnswer::NotFoundAfterWait {
                        policy,
                        waited_ms: u64::from(seconds) * 100,
                    },
                    AnswerChoice::OldNotFound => QueryAnswer::NotFound { policy },
                    AnswerChoice::Failed => QueryAnswer::QueryFailed {
                        reason: UnknownReason::ConnectionLost,
                    },
                };
                EventKind::ProviderQueried { attempt: a, answer }
            }
            FoldStep::Evidence {
                attempt: n,
                charged,
                conflict,
                tx,
                amount_ok,
            } => {
                let Some(a) = attempt(n) else { continue };
                let finding = if charged {
                    let (Ok(transaction_id), Ok(amount)) = (txn(tx), amount(amount_ok)) else {
                        continue;
                    };
                    Finding::Charged {
                        transaction_id,
                        amount,
                    }
                } else {
                    match DeclineCode::new("declined") {
                        Ok(code) => Finding::Declined { code },
                        Err(_) => continue,
                    }
                };
                let source = EvidenceSource::Webhook;
                if conflict {
                    EventKind::ConflictDetected {
                        attempt: a,
                        source,
                        finding,
                    }
                } else {
                    EventKind::EvidenceReceived {
                        attempt: a,
                        source,
                        finding,
                    }
                }
            }
            FoldStep::Escalate(n) => {
                let Some(a) = attempt(n) else { continue };
                EventKind::EscalatedToReview {
                    attempt: a,
                    reason: ReviewReason::Requested,
                }
            }
            FoldStep::Resolve(n, choice) => {
                let (Some(a), Ok(operator), Ok(note)) =
                    (attempt(n), Operator::new("ops"), Note::new("fuzz"))
                else {
                    continue;
                };
                let resolution = match choice {
                    ResolutionChoice::Charged(ok) => {
                        let (Ok(transaction_id), Ok(amount)) = (txn(2), amount(ok)) else {
                            continue;
                        };
                        Resolution::Charged {
                            transaction_id,
                            amount,
                        }
                    }
                    ResolutionChoice::Declined => match DeclineCode::new("declined") {
                        Ok(code) => Resolution::Declined { code },
                        Err(_) => continue,
                    },
                    ResolutionChoice::NotCharged => Resolution::NotCharged,
                };
                EventKind::ResolvedByOperator {
                    attempt: a,
                    resolution,
                    operator,
                    note,
                }
            }
        };
        events.push(Event {
            key: key(),
            at: UnixMillis(at),
            kind,
        });
    }
    events
}

/// Decodes `bytes` into fold steps and checks the fold over them.
pub fn fold(bytes: &[u8]) {
    check_fold(&events(&fold_steps(bytes)));
}

/// What the checker knows from the accepted events alone.
#[derive(Default)]
struct Books {
    started: u32,
    /// Attempts for which an event that can prove "no charge" was accepted.
    maybe_uncharged: Vec<u32>,
    settled: bool,
}

impl Books {
    /// Checks the invariants against an accepted event, then records it.
    fn accept(&mut self, before: &PaymentState, event: &Event, after: &PaymentState) {
        if let EventKind::AttemptStarted { attempt, .. } = &event.kind {
            let a = attempt.get();
            assert!(
                !self.settled,
                "an attempt was accepted after the key settled"
            );
            assert_eq!(a, self.started + 1, "attempts are numbered without gaps");
            if a > 1 {
                assert!(
                    self.maybe_uncharged.contains(&(a - 1)),
                    "attempt {a} started although nothing showed attempt {} uncharged",
                    a - 1
                );
            }
            assert_eq!(
                before.phase.possibly_charged(),
                None,
                "second possibly-charged attempt"
            );
            self.started = a;
        }
        let proves_uncharged = matches!(
            &event.kind,
            EventKind::OutcomeReported {
                outcome: Outcome::NotSent { .. },
                ..
            } | EventKind::ResolvedByOperator {
                resolution: Resolution::NotCharged,
                ..
            } | EventKind::ProviderQueried {
                answer: QueryAnswer::NotFound { .. } | QueryAnswer::NotFoundAfterWait { .. },
                ..
            }
        );
        if proves_uncharged && let Some(a) = event.kind.attempt() {
            self.maybe_uncharged.push(a.get());
        }
        if matches!(
            after.phase,
            Phase::Succeeded { .. } | Phase::Declined { .. } | Phase::Conflict { .. }
        ) {
            self.settled = true;
        }
        if self.settled {
            assert!(
                after.phase.is_final(),
                "a settled key became {:?}",
                after.phase
            );
        }
        if let Some(intent) = &after.intent
            && after.conflict.is_some()
        {
            assert!(
                matches!(
                    after.decide(&intent.fingerprint),
                    Decision::InConflict { .. }
                ),
                "a key in conflict sends a request to the provider"
            );
        }
        assert_eq!(after.attempts_started, self.started);
    }
}

/// Folds `events` (skipping those the fold refuses) and checks every invariant; panics on a
/// violation.
pub fn check_fold(events: &[Event]) {
    let Some(key) = events.first().map(|e| e.key.clone()) else {
        return;
    };
    let mut state = PaymentState::new(key.clone());
    let mut books = Books::default();
    let mut accepted = Vec::new();
    for event in events {
        if let Ok(next) = apply(&state, event) {
            books.accept(&state, event, &next);
            accepted.push(event.clone());
            state = next;
        }
    }
    let again = PaymentState::fold(key, &accepted);
    assert_eq!(
        again.as_ref(),
        Ok(&state),
        "folding the same events twice gives the same state"
    );
}
