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

#[test]
fn concurrent_async_callers_share_group_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path(), &clock(), AsyncConfig::default());
    let provider = AsyncFake(FakeProvider::new());
    let keys: Vec<IdempotencyKey> = (0..64).map(|n| key(&format!("async-{n}"))).collect();
    let order = intent(1_000);
    let reports = block_on(join_all(
        keys.iter()
            .map(|k| ledger.charge_once(k, &order, &provider, DEADLINE)),
    ));
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
