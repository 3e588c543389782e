//! The async adapter: the blocking API's answers as futures, on any executor (here the
//! `futures` crate's), with bounded queueing and calls that survive their futures.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;
use payledger::asynchronous::{AsyncConfig, AsyncLedger, AsyncProvider, AsyncReconciler};
use payledger::*;

use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(500);

/// The fake provider behind the async trait (its replies are immediate unless delayed).
struct AsyncFake(Arc<FakeProvider>);

impl AsyncProvider for AsyncFake {
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = ChargeReply> + Send {
        let reply = self.0.charge(request);
        async move { reply }
    }
    fn query(&self, reference: &ProviderReference) -> impl Future<Output = QueryReply> + Send {
        let reply = self.0.query(reference);
        async move { reply }
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>, config: AsyncConfig) -> AsyncLedger {
    let (ledger, _) = Ledger::open(dir, crate::support::config(clock)).unwrap();
    AsyncLedger::new(ledger, config).unwrap()
}

/// A ledger opened with `config` behind `workers` worker threads (and the default queue).
fn open_with(
    dir: impl AsRef<std::path::Path>,
    config: LedgerConfig,
    workers: usize,
) -> AsyncLedger {
    let (ledger, _) = Ledger::open(dir, config).unwrap();
    let config = AsyncConfig {
        workers,
        ..AsyncConfig::default()
    };
    AsyncLedger::new(ledger, config).unwrap()
}

/// Occupies the only worker of `ledger` until the returned sender is dropped or sent to.
fn hold_the_worker(ledger: &AsyncLedger) -> mpsc::Sender<()> {
    let (release, wait) = mpsc::channel::<()>();
    let (started, running) = mpsc::channel::<()>();
    drop(ledger.run(move |_| {
        let _ = started.send(());
        let _ = wait.recv();
        Ok(())
    }));
    running.recv().unwrap();
    release
}

/// `count` fresh keys named `prefix-n`, charged at once by `count` async tasks.
fn charge_fresh_keys(
    ledger: &AsyncLedger,
    prefix: &str,
    count: usize,
    provider: &AsyncFake,
) -> Vec<Result<ChargeReport>> {
    let keys: Vec<IdempotencyKey> = (0..count).map(|n| key(&format!("{prefix}-{n}"))).collect();
    let order = intent(1_000);
    block_on(join_all(
        keys.iter()
            .map(|k| ledger.charge_once(k, &order, provider, DEADLINE)),
    ))
}

#[test]
fn concurrent_async_callers_share_group_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path(), &clock(), AsyncConfig::default());
    let provider = AsyncFake(FakeProvider::new());
    let reports = charge_fresh_keys(&ledger, "async", 64, &provider);
    for report in reports {
        let report = report.unwrap();
        assert!(report.called_provider);
        assert!(matches!(report.decision, Decision::AlreadySucceeded { .. }));
    }
    let health = block_on(ledger.health()).unwrap();
    assert_eq!(
        health.journal.records,
        64 * 3,
        "intent, attempt and outcome per key"
    );
    assert!(
        health.journal.commits < health.journal.records,
        "calls from one async task met in group commits: {:?}",
        health.journal
    );
}

/// A burst of calls from async tasks is run as one batch by one worker: each call takes its
/// key's lock and queues its append, and one commit makes them all durable. With a single
/// worker, a design that runs one call at a time per worker makes one commit per call.
#[test]
fn one_worker_commits_a_burst_of_calls_together() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AsyncConfig {
        workers: 1,
        ..AsyncConfig::default()
    };
    let ledger = open(tmp.path(), &clock(), config);
    let fake = FakeProvider::new();
    let provider = AsyncFake(Arc::clone(&fake));
    let reports = charge_fresh_keys(&ledger, "burst", 64, &provider);
    for report in reports {
        let report = report.unwrap();
        assert!(matches!(report.decision, Decision::AlreadySucceeded { .. }));
    }
    assert_eq!(fake.charge_calls(), 64);
    let journal = block_on(ledger.health()).unwrap().journal;
    assert_eq!(journal.records, 64 * 3);
    assert!(
        journal.commits * 4 <= journal.records,
        "one worker made {} commits for {} records: calls were not batched",
        journal.commits,
        journal.records
    );
}

/// A worker holding staged appends must never wait for room in the index backlog: another
/// worker's commit can make one of them durable, and the applier then waits for it before it
/// makes room. With a backlog of one commit and two workers that wait would never end.
#[test]
fn batches_under_a_full_index_backlog_never_wait_for_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let config = LedgerConfig {
        index_backlog_max: 1,
        ..crate::support::config(&clock)
    };
    let ledger = open_with(tmp.path(), config, 2);
    let (done, finished) = mpsc::channel();
    let runner = ledger.clone();
    std::thread::spawn(move || {
        let provider = AsyncFake(FakeProvider::new());
        for round in 0..20 {
            let reports = charge_fresh_keys(&runner, &format!("backlog-{round}"), 32, &provider);
            assert!(reports.iter().all(Result::is_ok), "{reports:?}");
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("async charges under a backlog of one commit never finished");
    let records = block_on(ledger.health()).unwrap().journal.records;
    assert_eq!(records, 20 * 32 * 3);
}

/// A batch waits for room in the index backlog before its first append, as a blocking call
/// does (only its later appends may exceed the bound). Found in review: batches never waited,
/// so async load grew the backlog and the overlay without bound.
#[test]
fn a_batch_waits_for_index_room_before_its_first_append() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let config = LedgerConfig {
        index_backlog_max: 2,
        ..config
    };
    let ledger = open_with(tmp.path(), config, AsyncConfig::default().workers);
    faults.pause();
    let provider = AsyncFake(FakeProvider::new());
    // Two commits (begin and record): the backlog is full.
    let filled = charge_fresh_keys(&ledger, "fills-the-backlog", 1, &provider);
    assert!(filled.iter().all(Result::is_ok), "{filled:?}");
    let appended = ledger.ledger().journal().last_sequence();
    let begun = ledger.begin(&key("waits-for-room"), &intent(100));
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(block_on(begun));
    });
    let waited = finished.recv_timeout(Duration::from_millis(300)).is_err();
    let appended_meanwhile = ledger.ledger().journal().last_sequence() != appended;
    // The applier runs again before any assertion: a failing test must not hang at close.
    faults.resume();
    assert!(waited, "the begin waits for room");
    assert!(!appended_meanwhile, "and appends nothing meanwhile");
    let begun = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the begin goes on once the applier runs");
    assert!(matches!(begun, Ok(Begin::Attempt(_))), "{begun:?}");
}

/// A panic in the middle of a batch (here inside a read of the index; in a service, its
/// tracing subscriber or metrics recorder) loses that call's answer only: the calls staged
/// before it are still finished, so their appends reach the index and the applier never
/// waits for a sequence nobody hands it.
#[test]
fn a_panic_inside_a_batch_loses_only_its_own_call() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let ledger = open_with(tmp.path(), config, 1);
    let keys: Vec<IdempotencyKey> = (0..8).map(|n| key(&format!("panicky-{n}"))).collect();
    faults.panic_on_next_get_of(&keys[3]);
    // The worker is busy while the eight calls queue, so it takes them as one batch.
    let release = hold_the_worker(&ledger);
    let replies: Vec<_> = keys.iter().map(|k| ledger.begin(k, &intent(100))).collect();
    drop(release);
    let answers = block_on(join_all(replies));
    for (n, answer) in answers.iter().enumerate() {
        if n == 3 {
            assert!(matches!(answer, Err(Error::WorkerLost)), "{answer:?}");
        } else {
            assert!(
                matches!(answer, Ok(Begin::Attempt(_))),
                "key {n}: {answer:?}"
            );
        }
    }
    // Another write commits whatever the batch queued; every durable record reaches the index.
    let blocking = ledger.ledger().clone();
    let (done, indexed) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = blocking.begin(&key("after-the-panic"), &intent(100));
        let _ = done.send(blocking.wait_indexed());
    });
    indexed
        .recv_timeout(Duration::from_secs(30))
        .expect("the index never caught up with the journal")
        .unwrap();
}

/// Outcomes that meet a key a webhook settled first are not staged in a batch but run as the
/// blocking `record` after it: an agreeing reply is evidence, a contradicting one a conflict,
/// exactly as through the blocking API.
#[test]
fn async_outcomes_after_a_webhook_are_evidence_as_in_the_blocking_api() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AsyncConfig {
        workers: 1,
        ..AsyncConfig::default()
    };
    let ledger = open(tmp.path(), &clock(), config);
    let amount = Amount::new(1_500).unwrap();
    let mut tickets = Vec::new();
    for name in ["agrees", "contradicts"] {
        let k = key(&format!("webhook-first-{name}"));
        let Begin::Attempt(ticket) = block_on(ledger.begin(&k, &intent(1_500))).unwrap() else {
            panic!("a new key");
        };
        let webhook = Finding::Charged {
            transaction_id: TransactionId::new(format!("ch_{name}")).unwrap(),
            amount,
        };
        let settled = block_on(ledger.record_evidence(
            ticket.provider_reference(),
            EvidenceSource::Webhook,
            webhook,
        ))
        .unwrap();
        assert!(
            matches!(settled, EvidenceOutcome::Settled { .. }),
            "{settled:?}"
        );
        tickets.push((k, ticket));
    }
    let mut tickets = tickets.into_iter();
    let (agreeing_key, agreeing) = tickets.next().unwrap();
    let (contradicting_key, contradicting) = tickets.next().unwrap();
    let agrees = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_agrees").unwrap(),
        amount,
    };
    let declined = Outcome::Declined {
        code: DeclineCode::new("card_declined").unwrap(),
    };
    // Both queued while the only worker is busy, so it takes them as one batch.
    let release = hold_the_worker(&ledger);
    let agreed = ledger.record(agreeing, agrees);
    let contradicted = ledger.record(contradicting, declined);
    drop(release);
    let (agreed, contradicted) = block_on(futures::future::join(agreed, contradicted));
    assert!(matches!(agreed.unwrap().phase, Phase::Succeeded { .. }));
    let contradicted = contradicted.unwrap();
    assert_eq!(
        contradicted.decide(&intent(1_500).fingerprint()),
        Decision::InConflict {
            attempt: AttemptNumber::FIRST
        },
        "{contradicted:?}"
    );
    let reply_evidence = |k: &IdempotencyKey| {
        let history = block_on(ledger.history(k)).unwrap();
        assert!(
            !history
                .iter()
                .any(|entry| matches!(entry.event.kind, EventKind::OutcomeReported { .. })),
            "{history:?}"
        );
        history
    };
    let agreed = reply_evidence(&agreeing_key);
    assert!(agreed.iter().any(|entry| matches!(
        entry.event.kind,
        EventKind::EvidenceReceived {
            source: EvidenceSource::Reply,
            ..
        }
    )));
    let contradicted = reply_evidence(&contradicting_key);
    assert!(contradicted.iter().any(|entry| matches!(
        entry.event.kind,
        EventKind::ConflictDetected {
            source: EvidenceSource::Reply,
            ..
        }
    )));
}

/// A failed sync under a batch answers every call of it with the journal's error, never a
/// hang, and no provider call is made for an attempt whose start was not durable.
#[test]
fn a_failed_sync_under_a_batch_answers_every_call() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let disk = payledger::journal::simdisk::SimDisk::new(7);
    let config = LedgerConfig {
        storage: Arc::new(disk.clone()),
        index_dir: Some(tmp.path().to_path_buf()),
        ..crate::support::config(&clock)
    };
    let ledger = open_with("/ledger", config, AsyncConfig::default().workers);
    let fake = FakeProvider::new();
    let provider = AsyncFake(Arc::clone(&fake));
    disk.fail_next_syncs(1);
    let (done, finished) = mpsc::channel();
    let runner = ledger.clone();
    std::thread::spawn(move || {
        let _ = done.send(charge_fresh_keys(&runner, "failed-sync", 48, &provider));
    });
    let reports = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("every call of the failed batch is answered");
    for report in &reports {
        assert!(
            matches!(
                report,
                Err(Error::AppendFailed { .. } | Error::Poisoned { .. })
            ),
            "{report:?}"
        );
    }
    assert_eq!(fake.charge_calls(), 0, "no attempt start was durable");
}

#[test]
fn a_double_click_of_async_callers_makes_one_provider_call() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path(), &clock(), AsyncConfig::default());
    let fake = FakeProvider::new();
    let provider = AsyncFake(Arc::clone(&fake));
    let k = key("async-double-click");
    let order = intent(2_500);
    let reports = block_on(join_all(
        (0..16).map(|_| ledger.charge_once(&k, &order, &provider, DEADLINE)),
    ));
    assert_eq!(fake.charge_calls(), 1);
    let called = reports
        .into_iter()
        .filter(|r| r.as_ref().unwrap().called_provider)
        .count();
    assert_eq!(called, 1);
}

#[test]
fn a_full_queue_answers_overloaded_at_once_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AsyncConfig {
        workers: 1,
        queue: 1,
    };
    let ledger = open(tmp.path(), &clock(), config);
    let release = hold_the_worker(&ledger);
    let k = key("async-overloaded");
    let queued = ledger.state(&k);
    let refused = block_on(ledger.begin(&k, &intent(1_000)));
    assert!(
        matches!(refused, Err(Error::Overloaded { queue: 1 })),
        "{refused:?}"
    );
    drop(release);
    assert_eq!(block_on(queued).unwrap(), None);
    assert_eq!(block_on(ledger.state(&k)).unwrap(), None, "nothing written");
}

/// A provider's answer is never refused for overload: its attempt was admitted when `begin`
/// was, and refusing its outcome would turn a known charge into an unknown one.
#[test]
fn a_full_queue_still_takes_the_outcome_of_an_admitted_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AsyncConfig {
        workers: 1,
        queue: 1,
    };
    let ledger = open(tmp.path(), &clock(), config);
    let k = key("async-outcome-under-overload");
    let Begin::Attempt(ticket) = block_on(ledger.begin(&k, &intent(900))).unwrap() else {
        panic!("a new key");
    };
    let Begin::Attempt(operation_ticket) = block_on(ledger.begin_authorization(
        &key("async-hold-under-overload"),
        &intent(900),
        false,
    ))
    .unwrap() else {
        panic!("a new key");
    };
    let release = hold_the_worker(&ledger);
    let queued = ledger.state(&key("async-someone-else"));
    assert!(matches!(
        block_on(ledger.state(&k)),
        Err(Error::Overloaded { queue: 1 })
    ));
    let paid = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_overload").unwrap(),
        amount: Amount::new(900).unwrap(),
    };
    let recorded = ledger.record(ticket, paid);
    let authorised = Outcome::Succeeded {
        transaction_id: TransactionId::new("auth_overload").unwrap(),
        amount: Amount::new(900).unwrap(),
    };
    let held = ledger.record(operation_ticket, authorised);
    drop(release);
    let state = block_on(recorded).unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    let hold = block_on(held).unwrap();
    assert_eq!(hold.sums().authorized, 900);
    assert_eq!(block_on(queued).unwrap(), None);
}

#[test]
fn a_dropped_future_does_not_cancel_its_call() {
    let tmp = tempfile::tempdir().unwrap();
    let config = AsyncConfig {
        workers: 1,
        queue: 8,
    };
    let ledger = open(tmp.path(), &clock(), config);
    let k = key("async-dropped-record");
    let Begin::Attempt(ticket) = block_on(ledger.begin(&k, &intent(700))).unwrap() else {
        panic!("a new key");
    };
    let release = hold_the_worker(&ledger);
    let outcome = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_dropped").unwrap(),
        amount: Amount::new(700).unwrap(),
    };
    // The client went away before the record ran.
    drop(ledger.record(ticket, outcome));
    drop(release);
    // One worker runs the queue in order: the record ran before this query.
    let state = block_on(ledger.state(&k)).unwrap().unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
}

#[test]
fn a_dropped_begin_leaves_the_attempt_possibly_sent_never_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let config = AsyncConfig {
        workers: 1,
        queue: 8,
    };
    let ledger = open(tmp.path(), &clock, config);
    let k = key("async-dropped-begin");
    let release = hold_the_worker(&ledger);
    drop(ledger.begin(&k, &intent(900)));
    drop(release);
    // The attempt started and its ticket was dropped unused: the key is not free to charge.
    let again = block_on(ledger.begin(&k, &intent(900))).unwrap();
    assert!(
        matches!(
            again,
            Decision::InFlight { .. } | Decision::AwaitingReconciliation { .. }
        ),
        "{again:?}"
    );
    // The gate or the reconciler takes it over as unknown: possibly sent.
    let fake = FakeProvider::new();
    let reconciler = AsyncReconciler::new(ledger.clone(), AsyncFake(Arc::clone(&fake)));
    block_on(reconciler.run_once()).unwrap();
    let state = block_on(ledger.state(&k)).unwrap().unwrap();
    assert!(
        matches!(
            state.phase,
            Phase::Unknown {
                reason: UnknownReason::TicketDropped,
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(fake.charge_calls(), 0);
}

#[test]
fn the_async_reconciler_settles_a_timed_out_charge() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let ledger = open(tmp.path(), &clock, AsyncConfig::default());
    let fake = FakeProvider::new();
    // The provider charges but the reply is a timeout.
    *fake.reply_override.lock().unwrap() = Some(ChargeReply::Timeout);
    let provider = AsyncFake(Arc::clone(&fake));
    let k = key("async-timeout");
    let report = block_on(ledger.charge_once(&k, &intent(1_200), &provider, DEADLINE)).unwrap();
    assert!(matches!(
        report.decision,
        Decision::AwaitingReconciliation { .. }
    ));
    let reconciler = AsyncReconciler::new(ledger.clone(), provider);
    clock.advance(2_000);
    let report = block_on(reconciler.run_once()).unwrap();
    assert_eq!(report.resolved, 1, "{report:?}");
    let state = block_on(ledger.state(&k)).unwrap().unwrap();
    assert!(matches!(state.phase, Phase::Succeeded { .. }), "{state:?}");
    assert_eq!(fake.charge_calls(), 1);
}

#[test]
fn a_config_out_of_range_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(tmp.path(), crate::support::config(&clock())).unwrap();
    for config in [
        AsyncConfig {
            workers: 0,
            queue: 1,
        },
        AsyncConfig {
            workers: 1,
            queue: 0,
        },
    ] {
        let refused = AsyncLedger::new(ledger.clone(), config);
        assert!(matches!(refused, Err(Error::Input(_))), "{refused:?}");
    }
}
