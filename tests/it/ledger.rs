//! The production failures from `shared/seeds/`, each as a test through the public API.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use payledger::*;

use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(200);

fn phase(ledger: &Ledger, k: &IdempotencyKey) -> Phase {
    ledger.state(k).unwrap().unwrap().phase
}

/// Runs the reconciler until nothing is due, advancing the clock by `step_ms` between passes.
fn reconcile_for(
    ledger: &Ledger,
    provider: &Arc<FakeProvider>,
    clock: &ManualClock,
    passes: usize,
    step_ms: u64,
) -> ReconcileReport {
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(provider));
    let mut total = ReconcileReport::default();
    for _ in 0..passes {
        clock.advance(step_ms);
        let r = reconciler.run_once().unwrap();
        total.examined += r.examined;
        total.resolved += r.resolved;
        total.rescheduled += r.rescheduled;
        total.escalated += r.escalated;
    }
    total
}

#[test]
fn double_click_many_threads_one_provider_call() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.reply_delay.lock().unwrap() = Duration::from_millis(20);
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (ledger, provider, barrier) =
                (ledger.clone(), Arc::clone(&provider), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                ledger
                    .charge_once(&key("checkout-77"), &intent(4_999), &*provider, DEADLINE)
                    .unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(provider.charge_calls(), 1, "exactly one provider call");
    assert_eq!(reports.iter().filter(|r| r.called_provider).count(), 1);
    for report in reports.iter().filter(|r| !r.called_provider) {
        assert!(
            matches!(
                report.decision,
                Decision::InFlight { .. } | Decision::AlreadySucceeded { .. }
            ),
            "others see in flight or the stored success: {:?}",
            report.decision
        );
    }
    assert!(matches!(
        phase(&ledger, &key("checkout-77")),
        Phase::Succeeded { .. }
    ));
}

#[test]
fn reply_after_deadline_is_unknown_then_reconciled_without_a_second_call() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.reply_delay.lock().unwrap() = Duration::from_millis(60);
    let k = key("order-late");
    let report = ledger
        .charge_once(&k, &intent(1_000), &*provider, Duration::from_millis(20))
        .unwrap();
    assert_eq!(
        report.outcome,
        Some(Outcome::Unknown {
            reason: UnknownReason::Timeout
        }),
        "late success is unknown"
    );
    assert!(matches!(
        report.decision,
        Decision::AwaitingReconciliation { .. }
    ));
    // The client retries: refused, nothing sent.
    let retry = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(!retry.called_provider);
    assert!(matches!(
        retry.decision,
        Decision::AwaitingReconciliation { .. }
    ));
    let r = reconcile_for(&ledger, &provider, &clock, 3, 2_000);
    assert_eq!(r.resolved, 1);
    assert!(matches!(phase(&ledger, &k), Phase::Succeeded { .. }));
    let replay = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(matches!(replay.decision, Decision::AlreadySucceeded { .. }));
    assert_eq!(provider.charge_calls(), 1, "no second charge");
}

#[test]
fn unreachable_provider_backs_off_and_escalates_to_review_without_retrying() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.reply_override.lock().unwrap() = Some(ChargeReply::ConnectionLost);
    *provider.queries_fail.lock().unwrap() = true;
    let k = key("order-dark");
    let report = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(matches!(
        report.decision,
        Decision::AwaitingReconciliation { .. }
    ));
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(&provider));
    // Backoff: queries happen at growing intervals; a pass before the next query time asks nothing.
    let mut query_times = Vec::new();
    for _ in 0..2_000 {
        clock.advance(250);
        let before = provider
            .query_calls
            .load(std::sync::atomic::Ordering::SeqCst);
        reconciler.run_once().unwrap();
        if provider
            .query_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            > before
        {
            query_times.push(clock.now().0);
        }
        if matches!(phase(&ledger, &k), Phase::InReview { .. }) {
            break;
        }
    }
    assert!(
        matches!(phase(&ledger, &k), Phase::InReview { .. }),
        "escalated to review"
    );
    assert_eq!(query_times.len(), 6, "queries_max queries");
    let gaps: Vec<u64> = query_times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "intervals grow: {gaps:?}"
    );
    assert!(
        gaps.last().unwrap() > &(4 * gaps[0]),
        "exponential: {gaps:?}"
    );
    let retry = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(!retry.called_provider);
    assert!(matches!(retry.decision, Decision::InReview { .. }));
    assert_eq!(
        ledger.health().unwrap().in_review,
        1,
        "visible as a dead-letter"
    );
    assert_eq!(ledger.list(PhaseKind::InReview, None, 10).unwrap().len(), 1);
    assert_eq!(provider.charge_calls(), 1, "nothing retried");
    // An operator settles it.
    let state = ledger
        .resolve(
            &k,
            AttemptNumber::FIRST,
            Resolution::Charged {
                transaction_id: TransactionId::new("ch_1").unwrap(),
                amount: Amount::new(1_000).unwrap(),
            },
            Operator::new("ops").unwrap(),
            Note::new("seen in dashboard").unwrap(),
        )
        .unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }));
}

#[test]
fn lost_charge_allows_retry_only_after_visibility_delay_and_then_becomes_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.lose_next.lock().unwrap() = true;
    *provider.reply_override.lock().unwrap() = Some(ChargeReply::Timeout);
    let k = key("order-lost");
    ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    *provider.reply_override.lock().unwrap() = None;
    // Queries within the visibility delay (65 s with margin) never allow a retry.
    reconcile_for(&ledger, &provider, &clock, 20, 1_000);
    assert!(
        matches!(phase(&ledger, &k), Phase::Unknown { .. }),
        "{:?}",
        phase(&ledger, &k)
    );
    let early = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(!early.called_provider, "no retry before the delay");
    // After the delay, three consistent "not found" answers make attempt 2 possible.
    reconcile_for(&ledger, &provider, &clock, 200, 1_000);
    assert!(
        matches!(phase(&ledger, &k), Phase::Ready { .. }),
        "{:?}",
        phase(&ledger, &k)
    );
    let retry = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(retry.called_provider);
    assert!(
        matches!(retry.decision, Decision::AlreadySucceeded { attempt, .. } if attempt.get() == 2)
    );
    // The lost charge shows up in a settlement file: a conflict needing a refund.
    let (reference, txn, amount) = provider.lost.lock().unwrap()[0].clone();
    let outcome = ledger
        .record_evidence(
            &ProviderReference::new(reference).unwrap(),
            EvidenceSource::Settlement,
            Finding::Charged {
                transaction_id: TransactionId::new(txn).unwrap(),
                amount: Amount::new(amount).unwrap(),
            },
        )
        .unwrap();
    assert_eq!(outcome, EvidenceOutcome::Conflict);
    assert!(matches!(phase(&ledger, &k), Phase::Conflict { .. }));
    assert_eq!(ledger.health().unwrap().conflict, 1);
    let history = ledger.history(&k).unwrap();
    assert!(matches!(
        history.last().unwrap().event.kind,
        EventKind::ConflictDetected { .. }
    ));
}

#[test]
fn same_key_different_amount_is_key_reuse_and_appends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    let k = key("order-reuse");
    ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    let before = ledger.journal().last_sequence();
    match ledger.begin(&k, &intent(2_000)).unwrap() {
        Begin::KeyReused {
            recorded,
            requested,
        } => {
            assert_eq!(recorded, intent(1_000).fingerprint());
            assert_eq!(requested, intent(2_000).fingerprint());
        }
        other => panic!("expected key reuse, got {other:?}"),
    }
    assert_eq!(ledger.journal().last_sequence(), before, "nothing appended");
    assert_eq!(provider.charge_calls(), 1);
}

#[test]
fn unexpected_reply_shape_is_unknown_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.reply_override.lock().unwrap() = Some(ChargeReply::Malformed {
        detail: "<html>502 Bad Gateway</html>".into(),
    });
    let k = key("order-shape");
    let report = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert_eq!(
        report.outcome,
        Some(Outcome::Unknown {
            reason: UnknownReason::UnparseableReply
        })
    );
    let history = ledger.history(&k).unwrap();
    assert!(matches!(
        history.last().unwrap().event.kind,
        EventKind::OutcomeReported {
            outcome: Outcome::Unknown {
                reason: UnknownReason::UnparseableReply
            },
            ..
        }
    ));
    // A success with an id no provider would send is unparseable too.
    let bad_id = ChargeReply::Charged {
        transaction_id: "id with spaces".into(),
        amount_minor: 1_000,
    };
    assert_eq!(
        bad_id.classify(),
        Outcome::Unknown {
            reason: UnknownReason::UnparseableReply
        }
    );
    reconcile_for(&ledger, &provider, &clock, 3, 2_000);
    assert!(matches!(phase(&ledger, &k), Phase::Succeeded { .. }));
}

#[test]
fn a_dropped_ticket_leaves_the_key_unknown_never_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = key("order-drop");
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(500)).unwrap() else {
        panic!("attempt")
    };
    assert!(matches!(
        ledger.begin(&k, &intent(500)).unwrap(),
        Begin::InFlight { .. }
    ));
    drop(ticket);
    assert!(matches!(
        ledger.begin(&k, &intent(500)).unwrap(),
        Begin::AwaitingReconciliation { .. }
    ));
    assert!(matches!(
        phase(&ledger, &k),
        Phase::Unknown {
            reason: UnknownReason::TicketDropped,
            ..
        }
    ));
}

#[test]
fn webhook_before_reply_is_not_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = key("order-webhook");
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(700)).unwrap() else {
        panic!("attempt")
    };
    let charged = Finding::Charged {
        transaction_id: TransactionId::new("ch_9").unwrap(),
        amount: Amount::new(700).unwrap(),
    };
    let outcome = ledger
        .record_evidence(
            ticket.provider_reference(),
            EvidenceSource::Webhook,
            charged,
        )
        .unwrap();
    assert!(matches!(
        outcome,
        EvidenceOutcome::Settled(Phase::Succeeded { .. })
    ));
    let state = ledger
        .record(
            ticket,
            Outcome::Succeeded {
                transaction_id: TransactionId::new("ch_9").unwrap(),
                amount: Amount::new(700).unwrap(),
            },
        )
        .unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }));
    assert!(matches!(
        ledger.history(&k).unwrap().last().unwrap().event.kind,
        EventKind::EvidenceReceived {
            source: EvidenceSource::Reply,
            ..
        }
    ));
}

#[test]
fn deleting_the_index_rebuilds_it_with_the_same_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = FakeProvider::new();
    let keys: Vec<_> = (0..30).map(|i| key(&format!("order-{i:02}"))).collect();
    let before: Vec<_> = {
        let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
        for (i, k) in keys.iter().enumerate() {
            *provider.reply_override.lock().unwrap() = (i % 3 == 0).then_some(ChargeReply::Timeout);
            ledger
                .charge_once(k, &intent(100 + i as u64), &*provider, DEADLINE)
                .unwrap();
        }
        keys.iter()
            .map(|k| (ledger.state(k).unwrap(), ledger.history(k).unwrap()))
            .collect()
    };
    std::fs::remove_dir_all(tmp.path().join("index")).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    assert!(
        matches!(report.index, IndexRecovery::Rebuilt { events, .. } if events > 60),
        "{:?}",
        report.index
    );
    let after: Vec<_> = keys
        .iter()
        .map(|k| (ledger.state(k).unwrap(), ledger.history(k).unwrap()))
        .collect();
    assert_eq!(before, after);
    assert_eq!(ledger.health().unwrap().unknown, 10);
    assert_eq!(
        ledger.list(PhaseKind::Unknown, None, 100).unwrap().len(),
        10
    );
}

#[test]
fn list_paginates_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    for i in 0..25 {
        ledger
            .charge_once(
                &key(&format!("k{i:02}")),
                &intent(100),
                &*provider,
                DEADLINE,
            )
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<IdempotencyKey> = None;
    loop {
        let page = ledger
            .list(PhaseKind::Succeeded, cursor.as_ref(), 10)
            .unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|s| s.key.clone());
        seen.extend(page.into_iter().map(|s| s.key.to_string()));
    }
    let expected: Vec<_> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_second_ledger_on_the_same_directory_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (_ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    assert!(matches!(
        Ledger::open(tmp.path(), config(&clock)),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn read_only_ledgers_refuse_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    drop(Ledger::open(tmp.path(), config(&clock)).unwrap());
    let (ledger, _) = Ledger::open(
        tmp.path(),
        LedgerConfig {
            read_only: true,
            ..config(&clock)
        },
    )
    .unwrap();
    assert!(matches!(
        ledger.begin(&key("k"), &intent(1)),
        Err(Error::ReadOnly)
    ));
}

/// A ticket's lease runs from when `begin` hands it out, after the durable write: a slow sync
/// never eats into the provider call's time (found in review: the lease ran from before the
/// append, so a sync slower than the lease let the reconciler take a ticket over the moment
/// it was handed out).
#[test]
fn a_tickets_lease_runs_from_when_it_is_handed_out_not_from_before_a_slow_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let lease_ms = LedgerConfig::default().ticket_lease_ms;
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (moving, armed) = (Arc::clone(&clock), Arc::clone(&slow));
    let storage = OnSync {
        disk: SimDisk::new(5),
        on_sync: Arc::new(move || {
            if armed.load(std::sync::atomic::Ordering::SeqCst) {
                moving.advance(lease_ms + 1_000);
            }
        }),
    };
    let config = LedgerConfig {
        storage: Arc::new(storage),
        index_dir: Some(tmp.path().to_path_buf()),
        ..config(&clock)
    };
    let (ledger, _) = Ledger::open("/ledger", config).unwrap();
    let k = key("slow-sync");
    slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(500)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    // The provider call starts now, with its whole lease ahead of it.
    let provider: Arc<FakeProvider> = FakeProvider::new();
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(&provider));
    reconciler.run_once().unwrap();
    assert!(
        matches!(phase(&ledger, &k), Phase::InFlight { .. }),
        "{:?}",
        phase(&ledger, &k)
    );
    let paid = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_slow").unwrap(),
        amount: Amount::new(500).unwrap(),
    };
    ledger.record(ticket, paid).unwrap();
    assert!(matches!(phase(&ledger, &k), Phase::Succeeded { .. }));
}

#[test]
fn an_outcome_that_cannot_be_written_leaves_the_key_unknown_not_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(9);
    let clock = clock();
    let config = LedgerConfig {
        storage: Arc::new(disk.clone()),
        index_dir: Some(tmp.path().to_path_buf()),
        ..config(&clock)
    };
    let (ledger, _) = Ledger::open("/ledger", config).unwrap();
    let k = key("order-disk-full");
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(900)).unwrap() else {
        panic!("attempt")
    };
    disk.fail_next_writes(1);
    let charged = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_1").unwrap(),
        amount: Amount::new(900).unwrap(),
    };
    assert!(
        matches!(
            ledger.record(ticket, charged),
            Err(Error::AppendFailed { .. })
        ),
        "the caller gets the error"
    );
    // The journal is poisoned, but the gate answers from memory: never a new attempt.
    assert!(matches!(
        ledger.begin(&k, &intent(900)).unwrap(),
        Begin::AwaitingReconciliation { .. }
    ));
    // What the queries report agrees with the gate: unknown, not in flight.
    assert!(
        matches!(
            phase(&ledger, &k),
            Phase::Unknown {
                reason: UnknownReason::LocalWriteFailed,
                ..
            }
        ),
        "{:?}",
        phase(&ledger, &k)
    );
    let health = ledger.health().unwrap();
    assert_eq!((health.unknown, health.in_flight), (1, 0), "{health:?}");
    assert!(health.unknown_age_ms_max.is_some());
    assert!(matches!(
        ledger.begin(&key("other"), &intent(900)),
        Err(Error::Poisoned { .. })
    ));
}
