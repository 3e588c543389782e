//! Issue 15: the index applied off the commit path. Through the public API on a real ledger: the
//! gate sees every durable event while the applier is held back, the backlog is bounded with
//! back-pressure, an apply failure stops the ledger with its cause, and a reopen catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use payledger::*;

use crate::support::*;

fn succeed(ledger: &Ledger, name: &str) {
    let Begin::Attempt(ticket) = ledger.begin(&key(name), &intent(100)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    let outcome = Outcome::Succeeded {
        transaction_id: TransactionId::new(format!("ch_{name}")).unwrap(),
        amount: Amount::new(100).unwrap(),
    };
    ledger.record(ticket, outcome).unwrap();
}

#[test]
fn the_gate_decides_on_durable_events_the_index_has_not_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let (ledger, _) = Ledger::open(tmp.path(), config).unwrap();
    faults.pause();
    succeed(&ledger, "paid");
    assert_eq!(
        ledger.index_watermark().unwrap(),
        Sequence(0),
        "nothing applied yet"
    );
    assert_eq!(
        ledger.health().unwrap().index_backlog,
        2,
        "both commits wait"
    );
    // A retry sees the success from the overlay: nothing is sent twice.
    assert!(matches!(
        ledger.begin(&key("paid"), &intent(100)).unwrap(),
        Begin::AlreadySucceeded { .. }
    ));
    assert!(matches!(
        ledger.state(&key("paid")).unwrap().unwrap().phase,
        Phase::Succeeded { .. }
    ));
    assert_eq!(ledger.history(&key("paid")).unwrap().len(), 3);
    faults.resume();
    ledger.wait_indexed().unwrap();
    assert_eq!(
        ledger.index_watermark().unwrap(),
        ledger.journal().last_sequence()
    );
    assert_eq!(ledger.health().unwrap().index_backlog, 0);
}

#[test]
fn a_full_backlog_holds_writers_back_until_the_applier_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let config = LedgerConfig {
        index_backlog_max: 2,
        ..config
    };
    let (ledger, _) = Ledger::open(tmp.path(), config).unwrap();
    faults.pause();
    succeed(&ledger, "one"); // two commits: the backlog is full
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ledger, done) = (ledger.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let begun = ledger.begin(&key("two"), &intent(100));
            done.store(true, Ordering::SeqCst);
            begun
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst), "the writer waits for room");
    assert_eq!(
        ledger.journal().last_sequence(),
        Sequence(3),
        "and has appended nothing"
    );
    faults.resume();
    let begun = writer.join().unwrap().unwrap();
    assert!(matches!(begun, Begin::Attempt(_)));
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn an_apply_failure_stops_the_ledger_with_its_cause_and_a_reopen_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (faulty, faults) = faulty_index_config(&clock);
    let (ledger, _) = Ledger::open(tmp.path(), faulty).unwrap();
    succeed(&ledger, "before");
    ledger.wait_indexed().unwrap();
    faults.fail_after(0);
    succeed(&ledger, "durable"); // durable; its apply fails
    let failed = ledger.wait_indexed().unwrap_err();
    assert!(matches!(failed, Error::IndexFailed { .. }), "{failed:?}");
    let cause = std::error::Error::source(&failed).expect("the cause is the source");
    assert!(cause.to_string().contains("updating the index"), "{cause}");
    // Reads still see every durable event; writes are refused with the cause.
    assert!(matches!(
        ledger.state(&key("durable")).unwrap().unwrap().phase,
        Phase::Succeeded { .. }
    ));
    let refused = ledger.begin(&key("after"), &intent(100)).unwrap_err();
    assert!(matches!(refused, Error::IndexFailed { .. }), "{refused:?}");
    let health = ledger.health().unwrap();
    assert!(health.fatal.is_some(), "health names the failure");
    assert!(health.index_watermark < health.last_sequence);
    let last = ledger.journal().last_sequence();
    drop(ledger);

    let (ledger, report) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    assert!(
        matches!(report.index, IndexRecovery::CaughtUp { from, to } if from.0 > 1 && to == last),
        "{:?}",
        report.index
    );
    assert_eq!(ledger.index_watermark().unwrap(), last);
    assert!(matches!(
        ledger.begin(&key("durable"), &intent(100)).unwrap(),
        Begin::AlreadySucceeded { .. }
    ));
    succeed(&ledger, "after");
}
