//! The event-store seam on the embedded ledger: the store contract and the seed scenarios of
//! `tests/scenarios/store.rs` (the same functions run against PostgreSQL in
//! `store-postgres/tests/`).

use std::sync::Arc;

use payledger::store::StoreLedger;
use payledger::*;

#[path = "../scenarios/store.rs"]
mod scenarios;

use scenarios::*;

fn embedded(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Ledger {
    let config = LedgerConfig {
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        reconcile: store_config(clock).reconcile,
        ..LedgerConfig::default()
    };
    Ledger::open(dir, config).unwrap().0
}

fn with_ledger(scenario: impl FnOnce(&StoreLedger<Ledger>, &ManualClock)) {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(embedded(tmp.path(), &clock), store_config(&clock));
    scenario(&ledger, &clock);
}

#[test]
fn the_embedded_ledger_keeps_the_store_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    contract(&embedded(tmp.path(), &clock));
}

#[test]
fn one_of_many_racing_appends_wins_on_the_embedded_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    one_of_many_racing_appends_wins(Arc::new(embedded(tmp.path(), &clock)));
}

#[test]
fn a_double_click_makes_one_provider_call_through_the_seam() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(embedded(tmp.path(), &clock), store_config(&clock));
    double_click_makes_one_provider_call(Arc::new(ledger));
}

#[test]
fn a_lost_reply_is_reconciled_through_the_seam() {
    with_ledger(a_lost_reply_is_reconciled_never_retried);
}

#[test]
fn a_dead_process_attempt_is_taken_over_through_the_seam() {
    with_ledger(a_dead_process_attempt_is_taken_over_after_its_lease);
}

#[test]
fn not_found_is_trusted_only_after_the_wait_through_the_seam() {
    with_ledger(not_found_is_trusted_only_after_the_wait);
}
