//! The seed scenarios and the store contract, written once against the `EventStore` seam and
//! run against every store: the embedded ledger (`tests/it/store.rs`) and PostgreSQL
//! (`store-postgres/tests/`); both include this file with `#[path]`.
//!
//! Each scenario takes a fresh, empty store and a clock it may advance.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use payledger::store::{Append, Appended, EventStore, StoreConfig, StoreLedger};
use payledger::*;

/// The clock every scenario's ledger runs on.
pub const T0: u64 = 1_800_000_000_000;

/// A key.
pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

/// An order of `amount` cents.
pub fn intent(amount: u64) -> Intent {
    Intent {
        amount: Amount::new(amount).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

/// A ledger config for scenarios: "not found" trusted after 10 s (2 s skew margin) and two
/// consistent answers, 4 queries before review, backoff 1–8 s, 10 s leases.
pub fn store_config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig {
        reconcile: ReconcileConfig::new(
            NotFoundPolicy::new(10_000, 2_000, 2).unwrap(),
            4,
            1_000,
            8_000,
            100,
        )
        .unwrap(),
        ticket_lease_ms: 10_000,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
    }
}

/// A provider that charges in memory, once per reference, with scriptable faults.
#[derive(Default)]
pub struct Charges {
    /// reference → (transaction, amount)
    pub made: Mutex<HashMap<String, (String, u64)>>,
    /// Calls to `charge`.
    pub calls: AtomicUsize,
    /// Reply `Timeout` after charging.
    pub lose_replies: Mutex<bool>,
    /// Sleep before replying.
    pub delay: Mutex<Duration>,
}

impl Provider for Charges {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let reference = request.provider_reference.as_str().to_string();
        let (txn, amount) = self
            .made
            .lock()
            .unwrap()
            .entry(reference)
            .or_insert_with(|| (format!("ch_{n}"), request.amount.minor()))
            .clone();
        std::thread::sleep(*self.delay.lock().unwrap());
        if *self.lose_replies.lock().unwrap() {
            return ChargeReply::Timeout;
        }
        ChargeReply::Charged {
            transaction_id: txn,
            amount_minor: amount,
        }
    }

    fn query(&self, reference: &ProviderReference) -> QueryReply {
        match self.made.lock().unwrap().get(reference.as_str()) {
            Some((txn, amount)) => QueryReply::Succeeded {
                transaction_id: txn.clone(),
                amount_minor: *amount,
            },
            None => QueryReply::NotFound,
        }
    }
}

fn events_of(key: &IdempotencyKey, kinds: Vec<EventKind>) -> Vec<Event> {
    kinds
        .into_iter()
        .map(|kind| Event {
            key: key.clone(),
            at: UnixMillis(T0),
            kind,
        })
        .collect()
}

fn append<S: EventStore>(
    store: &S,
    k: &IdempotencyKey,
    expected: u64,
    kinds: Vec<EventKind>,
) -> Appended {
    // What the writer saw: the key empty, or as it is now.
    let before = match expected {
        0 => PaymentState::new(k.clone()),
        _ => store.load(k).unwrap().unwrap().state,
    };
    let events = events_of(k, kinds);
    let after = events.iter().try_fold(before, |s, e| apply(&s, e)).unwrap();
    store
        .append(Append {
            key: k,
            expected_version: expected,
            events: &events,
            after: &after,
            next_query_at: None,
        })
        .unwrap()
}

fn intent_and_attempt(k: &IdempotencyKey, attempt: u32) -> Vec<EventKind> {
    let intent = intent(1_000);
    let attempt = AttemptNumber::new(attempt).unwrap();
    let mut kinds = Vec::new();
    if attempt == AttemptNumber::FIRST {
        kinds.push(EventKind::IntentRecorded {
            fingerprint: intent.fingerprint(),
            intent,
        });
    }
    kinds.push(EventKind::AttemptStarted {
        attempt,
        provider_reference: ProviderReference::derive(k, attempt),
    });
    kinds
}

/// The contract: a missing key loads as `None`; an append at the right version is `Done` and
/// loads back folded; an append at a stale version is `Raced` and writes nothing; `list` finds
/// the key in its phase.
pub fn contract<S: EventStore>(store: &S) {
    let k = key("contract");
    assert_eq!(store.load(&k).unwrap(), None);
    assert_eq!(
        append(store, &k, 0, intent_and_attempt(&k, 1)),
        Appended::Done { version: 2 }
    );
    let loaded = store.load(&k).unwrap().unwrap();
    assert_eq!(loaded.version, 2);
    assert!(matches!(loaded.state.phase, Phase::InFlight { .. }));
    // A writer that saw the key empty loses, and writes nothing.
    let stale = vec![EventKind::OutcomeReported {
        attempt: AttemptNumber::FIRST,
        outcome: Outcome::Unknown {
            reason: UnknownReason::Timeout,
        },
    }];
    let events = events_of(&k, stale);
    let after = events
        .iter()
        .try_fold(loaded.state.clone(), |s, e| apply(&s, e))
        .unwrap();
    let raced = store
        .append(Append {
            key: &k,
            expected_version: 0,
            events: &events,
            after: &after,
            next_query_at: None,
        })
        .unwrap();
    assert_eq!(raced, Appended::Raced);
    assert_eq!(store.load(&k).unwrap().unwrap(), loaded, "nothing written");
    let listed = store.list(PhaseKind::InFlight, None, 10).unwrap();
    assert_eq!(listed.iter().map(|s| &s.key).collect::<Vec<_>>(), vec![&k]);
}

/// Many writers at one version: exactly one wins.
pub fn one_of_many_racing_appends_wins<S: EventStore + 'static>(store: Arc<S>) {
    let k = key("racing");
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (store, barrier, k) = (Arc::clone(&store), Arc::clone(&barrier), k.clone());
            std::thread::spawn(move || {
                barrier.wait();
                append(&*store, &k, 0, intent_and_attempt(&k, 1))
            })
        })
        .collect();
    let won = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|a| matches!(a, Appended::Done { .. }))
        .count();
    assert_eq!(won, 1);
    assert_eq!(store.load(&k).unwrap().unwrap().version, 2);
}

/// A double click from many threads: one provider call, every caller answered coherently.
pub fn double_click_makes_one_provider_call<S: EventStore + 'static>(ledger: Arc<StoreLedger<S>>) {
    let provider = Arc::new(Charges::default());
    *provider.delay.lock().unwrap() = Duration::from_millis(20);
    let barrier = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (ledger, provider, barrier) = (
                Arc::clone(&ledger),
                Arc::clone(&provider),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                ledger
                    .charge_once(
                        &key("double-click"),
                        &intent(4_999),
                        &*provider,
                        Duration::from_secs(1),
                    )
                    .unwrap()
            })
        })
        .collect();
    let reports: Vec<ChargeReport> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        1,
        "exactly one provider call"
    );
    assert_eq!(reports.iter().filter(|r| r.called_provider).count(), 1);
    for report in reports.iter().filter(|r| !r.called_provider) {
        assert!(
            matches!(
                report.decision,
                Decision::InFlight { .. } | Decision::AlreadySucceeded { .. }
            ),
            "{report:?}"
        );
    }
}

/// The seed: a charge whose reply was lost is unknown, never retried, and the reconciler finds
/// it charged.
pub fn a_lost_reply_is_reconciled_never_retried<S: EventStore>(
    ledger: &StoreLedger<S>,
    clock: &ManualClock,
) {
    let provider = Charges::default();
    *provider.lose_replies.lock().unwrap() = true;
    let k = key("lost-reply");
    let report = ledger
        .charge_once(&k, &intent(2_500), &provider, Duration::from_secs(1))
        .unwrap();
    assert!(matches!(
        report.decision,
        Decision::AwaitingReconciliation { .. }
    ));
    // The customer clicks again: nothing is sent.
    let again = ledger
        .charge_once(&k, &intent(2_500), &provider, Duration::from_secs(1))
        .unwrap();
    assert!(!again.called_provider);
    clock.advance(2_000);
    let pass = ledger.reconcile_once(&provider).unwrap();
    assert_eq!(pass.resolved, 1, "{pass:?}");
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
}

/// A process that dies between the provider call and the outcome: its attempt stays in flight
/// for its lease, then any reconciler takes it over and settles it from the provider.
pub fn a_dead_process_attempt_is_taken_over_after_its_lease<S: EventStore>(
    ledger: &StoreLedger<S>,
    clock: &ManualClock,
) {
    let provider = Charges::default();
    let k = key("dead-process");
    let Decision::Attempt(ticket) = ledger.begin(&k, &intent(3_000)).unwrap() else {
        panic!("a new key")
    };
    let request = ChargeRequest::new(
        &intent(3_000),
        ticket.attempt(),
        ticket.provider_reference().clone(),
        Duration::from_secs(1),
    );
    let _ = provider.charge(&request);
    drop(ticket); // the process died here
    assert!(matches!(
        ledger.begin(&k, &intent(3_000)).unwrap(),
        Decision::InFlight { .. }
    ));
    assert_eq!(
        ledger.reconcile_once(&provider).unwrap().abandoned,
        0,
        "within its lease"
    );
    clock.advance(11_000);
    let pass = ledger.reconcile_once(&provider).unwrap();
    assert_eq!(pass.abandoned, 1, "{pass:?}");
    clock.advance(2_000);
    ledger.reconcile_once(&provider).unwrap();
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        1,
        "settled exactly once"
    );
}

/// A charge that never reached the provider: "not found" is trusted only after the visibility
/// delay, then a new attempt may be made.
pub fn not_found_is_trusted_only_after_the_wait<S: EventStore>(
    ledger: &StoreLedger<S>,
    clock: &ManualClock,
) {
    let provider = Charges::default();
    let k = key("never-sent");
    let Decision::Attempt(ticket) = ledger.begin(&k, &intent(800)).unwrap() else {
        panic!("a new key")
    };
    ledger
        .record(
            ticket,
            Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
        )
        .unwrap();
    clock.advance(1_500);
    ledger.reconcile_once(&provider).unwrap();
    assert!(matches!(
        ledger.state(&k).unwrap().unwrap().phase,
        Phase::Unknown { .. }
    ));
    for _ in 0..3 {
        clock.advance(8_000);
        ledger.reconcile_once(&provider).unwrap();
    }
    let state = ledger.state(&k).unwrap().unwrap();
    assert!(matches!(state.phase, Phase::Ready { .. }), "{state:?}");
    let retry = ledger
        .charge_once(&k, &intent(800), &provider, Duration::from_secs(1))
        .unwrap();
    assert!(retry.called_provider);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
}

/// A webhook of a lost charge, then its echo: the first settles the key, the echo agrees; a
/// settlement line showing another charge for the same attempt is a conflict.
pub fn evidence_settles_then_echoes_agree_then_contradictions_conflict<S: EventStore>(
    ledger: &StoreLedger<S>,
) {
    let provider = Charges::default();
    *provider.lose_replies.lock().unwrap() = true;
    let k = key("webhooks");
    ledger
        .charge_once(&k, &intent(1_500), &provider, Duration::from_secs(1))
        .unwrap();
    let reference = ProviderReference::derive(&k, AttemptNumber::FIRST);
    let (txn, _) = provider.made.lock().unwrap()[reference.as_str()].clone();
    let paid = Finding::Charged {
        transaction_id: TransactionId::new(txn).unwrap(),
        amount: Amount::new(1_500).unwrap(),
    };
    for _ in 0..2 {
        let state = ledger
            .record_evidence(&reference, EvidenceSource::Webhook, paid.clone())
            .unwrap()
            .unwrap();
        assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    }
    let other = Finding::Charged {
        transaction_id: TransactionId::new("ch_other").unwrap(),
        amount: Amount::new(1_500).unwrap(),
    };
    let state = ledger
        .record_evidence(&reference, EvidenceSource::Settlement, other)
        .unwrap()
        .unwrap();
    assert!(matches!(state.phase, Phase::Conflict { .. }), "{state:?}");
    let unknown = ProviderReference::derive(&key("never-seen"), AttemptNumber::FIRST);
    assert_eq!(
        ledger
            .record_evidence(&unknown, EvidenceSource::Webhook, paid)
            .unwrap(),
        None
    );
}

/// A batch full of live attempts (within their lease, first in key order) must not hide an
/// expired one: the scan of attempts in flight resumes where the last pass stopped.
pub fn every_attempt_in_flight_gets_its_turn<S: EventStore>(store: S, clock: &Arc<ManualClock>) {
    let mut config = store_config(clock);
    config.reconcile = ReconcileConfig::new(
        NotFoundPolicy::new(10_000, 2_000, 2).unwrap(),
        4,
        1_000,
        8_000,
        2,
    )
    .unwrap();
    let ledger = StoreLedger::new(store, config);
    // "c" dies in flight; later "a" and "b" start and are within their lease.
    let Decision::Attempt(dead) = ledger.begin(&key("c"), &intent(100)).unwrap() else {
        panic!("a new key")
    };
    drop(dead);
    clock.advance(11_000);
    let live: Vec<_> = ["a", "b"]
        .iter()
        .map(|k| ledger.begin(&key(k), &intent(100)).unwrap())
        .collect();
    let listed: Vec<String> = ledger
        .store()
        .list(PhaseKind::InFlight, None, 2)
        .unwrap()
        .iter()
        .map(|s| s.key.to_string())
        .collect();
    assert_eq!(listed, ["a", "b"], "the batch is full of live attempts");
    let provider = Charges::default();
    let first = ledger.reconcile_once(&provider).unwrap();
    let second = ledger.reconcile_once(&provider).unwrap();
    assert_eq!(
        first.abandoned + second.abandoned,
        1,
        "{first:?} {second:?}"
    );
    assert!(matches!(
        ledger.state(&key("c")).unwrap().unwrap().phase,
        Phase::Unknown { .. }
    ));
    drop(live);
}

/// A ticket whose lease expired while its provider call hung: the reconciler took the attempt
/// over, so the ticket's view of the key is stale; its late outcome is recorded as evidence on
/// the key as it is now, never over it.
pub fn a_late_outcome_after_a_take_over_is_evidence<S: EventStore>(
    ledger: &StoreLedger<S>,
    clock: &ManualClock,
) {
    let provider = Charges::default();
    let k = key("late-outcome");
    let Decision::Attempt(ticket) = ledger.begin(&k, &intent(900)).unwrap() else {
        panic!("a new key")
    };
    clock.advance(11_000);
    // The provider has not charged yet: the query says "not found" (too early to trust).
    assert_eq!(ledger.reconcile_once(&provider).unwrap().abandoned, 1);
    let taken = ledger.state(&k).unwrap().unwrap();
    assert!(matches!(taken.phase, Phase::Unknown { .. }), "{taken:?}");
    let state = ledger
        .record(
            ticket,
            Outcome::Succeeded {
                transaction_id: TransactionId::new("ch_late").unwrap(),
                amount: Amount::new(900).unwrap(),
            },
        )
        .unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    let stored = ledger.state(&k).unwrap().unwrap();
    assert_eq!(stored, state);
    assert!(
        stored.phase.name() == "succeeded",
        "the late reply settled the unknown attempt as evidence"
    );
}
