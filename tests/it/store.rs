//! The event-store seam on the embedded ledger: the store contract and the seed scenarios of
//! `tests/scenarios/store.rs` (the same functions run against PostgreSQL in
//! `store-postgres/tests/`).

use std::sync::Arc;

use payledger::store::{StoreConfig, StoreLedger};
use payledger::*;

#[path = "../scenarios/store.rs"]
pub(crate) mod scenarios;

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

#[test]
fn a_late_outcome_after_a_take_over_is_evidence_through_the_seam() {
    with_ledger(a_late_outcome_after_a_take_over_is_evidence);
}

#[test]
fn evidence_through_the_seam_settles_agrees_and_conflicts() {
    with_ledger(|ledger, _| {
        evidence_settles_then_echoes_agree_then_contradictions_conflict(ledger)
    });
}

// ---------------------------------------------------------------------------------------------
// Sharding: the same scenarios over three embedded ledgers behind a router.

use payledger::store::{EventStore, ShardMap, Sharded, logical_shard};

fn sharded(dirs: &[tempfile::TempDir], clock: &Arc<ManualClock>) -> Sharded<Ledger> {
    let stores = dirs.iter().map(|d| embedded(d.path(), clock)).collect();
    Sharded::new(ShardMap::spread(64, 3).unwrap(), stores).unwrap()
}

fn dirs() -> Vec<tempfile::TempDir> {
    (0..3).map(|_| tempfile::tempdir().unwrap()).collect()
}

#[test]
fn the_shard_of_a_key_is_the_specified_hash_forever() {
    // Pinned: a change of hash or context would move every existing key.
    let shards: Vec<u32> = ["order-1", "order-2", "checkout-77", "-108'q"]
        .iter()
        .map(|k| logical_shard(&IdempotencyKey::new(*k).unwrap(), 1_024))
        .collect();
    assert_eq!(shards, PINNED_SHARDS);
    // The first 8 bytes of blake3("payledger shard v1" ‖ key), little-endian, mod the count.
    let digest = blake3::hash(b"payledger shard v1order-1");
    let first = u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap());
    assert_eq!(u64::from(shards[0]), first % 1_024);
}

/// Computed independently (Python `blake3`: first 8 bytes of the digest, little-endian, mod 1024).
const PINNED_SHARDS: [u32; 4] = [12, 758, 613, 298];

#[test]
fn a_shard_map_is_a_power_of_two_of_logical_shards_and_moves_by_version() {
    for bad in [0usize, 3, 100] {
        assert!(matches!(
            ShardMap::new(1, vec![0; bad]),
            Err(Error::Input(_))
        ));
    }
    let map = ShardMap::spread(8, 2).unwrap();
    let moved = map.moved(3, 0).unwrap();
    assert_eq!((map.version(), moved.version()), (1, 2));
    assert!(map.moved(8, 0).is_err());
    let too_few_stores = Sharded::new(
        ShardMap::spread(8, 4).unwrap(),
        vec![embedded(
            tempfile::tempdir().unwrap().path(),
            &Arc::new(ManualClock::new(UnixMillis(T0))),
        )],
    );
    assert!(matches!(too_few_stores, Err(Error::Input(_))));
}

#[test]
fn a_sharded_store_keeps_the_contract_and_each_key_in_one_shard() {
    let dirs = dirs();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let store = sharded(&dirs, &clock);
    contract(&store);
    let ledger = StoreLedger::new(store, store_config(&clock));
    let provider = Charges::default();
    let keys: Vec<IdempotencyKey> = (0..60).map(|n| key(&format!("sharded-{n:02}"))).collect();
    for k in &keys {
        ledger
            .charge_once(
                k,
                &intent(100),
                &provider,
                std::time::Duration::from_secs(1),
            )
            .unwrap();
    }
    let store = ledger.store();
    let mut per_store = [0usize; 3];
    for k in &keys {
        let holders: Vec<usize> = (0..3)
            .filter(|&s| store.stores()[s].load(k).unwrap().is_some())
            .collect();
        assert_eq!(
            holders,
            vec![store.map().store_of(k)],
            "{k} lives in one shard"
        );
        per_store[holders[0]] += 1;
    }
    assert!(per_store.iter().all(|&n| n > 5), "spread: {per_store:?}");
    // Lists scatter and gather in key order, with the limit.
    let listed = store.list(PhaseKind::Succeeded, None, 25).unwrap();
    let expected: Vec<&IdempotencyKey> = keys.iter().take(25).collect();
    assert_eq!(listed.iter().map(|s| &s.key).collect::<Vec<_>>(), expected);
    let rest = store
        .list(PhaseKind::Succeeded, listed.last().map(|s| &s.key), 100)
        .unwrap();
    assert_eq!(rest.len(), 35);
}

#[test]
fn the_seed_scenarios_hold_on_a_sharded_store() {
    for scenario in [
        a_lost_reply_is_reconciled_never_retried::<Sharded<Ledger>>,
        a_dead_process_attempt_is_taken_over_after_its_lease,
        not_found_is_trusted_only_after_the_wait,
        evidence_on_a_sharded_store,
    ] {
        let dirs = dirs();
        let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
        let ledger = StoreLedger::new(sharded(&dirs, &clock), store_config(&clock));
        scenario(&ledger, &clock);
    }
    let dirs = dirs();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(sharded(&dirs, &clock), store_config(&clock));
    double_click_makes_one_provider_call(Arc::new(ledger));
}

fn evidence_on_a_sharded_store(ledger: &StoreLedger<Sharded<Ledger>>, _: &ManualClock) {
    evidence_settles_then_echoes_agree_then_contradictions_conflict(ledger);
}

#[test]
fn every_attempt_in_flight_gets_its_turn_past_the_first_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    every_attempt_in_flight_gets_its_turn(embedded(tmp.path(), &clock), &clock);
}

#[test]
fn chaos_over_the_seam_holds_on_the_embedded_and_the_sharded_store() {
    use payledger::sim::store_chaos::{StoreChaosConfig, run};
    for seed in 0..4 {
        let config = StoreChaosConfig {
            seed,
            ops: 1_500,
            keys: 60,
        };
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
        let report = run(embedded(tmp.path(), &clock), config).unwrap();
        assert!(report.ok(), "embedded, seed {seed}:\n{report}");
        assert!(report.steps["double clicks"] > 0 && report.steps["process crashes"] > 0);
        let dirs = dirs();
        let sharded_report = run(sharded(&dirs, &clock), config).unwrap();
        assert!(
            sharded_report.ok(),
            "sharded, seed {seed}:\n{sharded_report}"
        );
        assert_eq!(
            report.to_string(),
            sharded_report.to_string(),
            "the same seed, the same story, whatever the store"
        );
    }
}

/// Counts the calls a `StoreLedger` makes (each is a round trip on a database store).
struct Counting<S> {
    inner: S,
    loads: std::sync::atomic::AtomicU32,
    appends: std::sync::atomic::AtomicU32,
}

impl<S: payledger::store::EventStore> payledger::store::EventStore for Counting<S> {
    fn load(&self, key: &IdempotencyKey) -> Result<Option<payledger::store::StoredKey>> {
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.load(key)
    }
    fn append(&self, append: payledger::store::Append<'_>) -> Result<payledger::store::Appended> {
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.append(append)
    }
    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        self.inner.list(phase, after, limit)
    }
    fn key_of(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.inner.key_of(reference)
    }
    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.inner.due(now, limit)
    }
}

/// A new key's charge is two appends and no load (one round trip each on a database); a
/// retry of a key with events loses its first append (writing nothing), loads, and answers
/// from what is there.
#[test]
fn a_new_key_is_begun_without_a_load_and_a_retry_loads() {
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let store = Counting {
        inner: embedded(tmp.path(), &clock),
        loads: 0.into(),
        appends: 0.into(),
    };
    let ledger = StoreLedger::new(store, store_config(&clock));
    let calls = |ledger: &StoreLedger<Counting<Ledger>>| {
        let store = ledger.store();
        (store.loads.swap(0, Relaxed), store.appends.swap(0, Relaxed))
    };
    let k = key("new-then-retried");
    let ticket = match ledger.begin(&k, &intent(700)).unwrap() {
        Decision::Attempt(ticket) => ticket,
        other => panic!("{other:?}"),
    };
    assert_eq!(calls(&ledger), (0, 1), "begin of a new key: one append");
    let outcome = Outcome::Succeeded {
        transaction_id: TransactionId::new("tx_1").unwrap(),
        amount: Amount::new(700).unwrap(),
    };
    ledger.record(ticket, outcome).unwrap();
    assert_eq!(calls(&ledger), (0, 1), "record after begin: one append");

    let retried = ledger.begin(&k, &intent(700)).unwrap();
    assert!(
        matches!(retried, Decision::AlreadySucceeded { .. }),
        "{retried:?}"
    );
    assert_eq!(
        calls(&ledger),
        (1, 1),
        "a retry: a lost append, then a load"
    );
    let state = ledger.state(&k).unwrap().unwrap();
    assert_eq!(state.attempts_started, 1, "the lost append wrote nothing");
    assert_eq!(
        ledger.store().inner.history(&k).unwrap().len(),
        3,
        "intent, attempt, outcome"
    );
}

/// Found in review: `StoreConfig::ticket_lease_ms` is public and unchecked; a lease of 0 made
/// `charge_once` subtract past zero (a panic in a debug build, any deadline accepted in a
/// release build). It is a typed input error, and nothing is sent.
#[test]
fn a_zero_ticket_lease_is_an_input_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let config = StoreConfig {
        ticket_lease_ms: 0,
        ..store_config(&clock)
    };
    let ledger = StoreLedger::new(embedded(tmp.path(), &clock), config);
    let provider = Charges::default();
    let result = ledger.charge_once(
        &key("zero-lease"),
        &intent(100),
        &provider,
        std::time::Duration::from_millis(100),
    );
    assert!(matches!(result, Err(Error::Input(_))), "{result:?}");
    assert_eq!(ledger.state(&key("zero-lease")).unwrap(), None);
}

/// Appends `kinds` to `k` through the event-store seam of `ledger` (folded first, as a writer
/// of the seam does), bypassing this process's tickets.
fn append_through_seam(ledger: &Ledger, k: &IdempotencyKey, kinds: Vec<EventKind>) {
    use payledger::store::{Append, EventStore};
    let stored = ledger.load(k).unwrap().unwrap();
    let events: Vec<Event> = kinds
        .into_iter()
        .map(|kind| Event {
            key: k.clone(),
            at: UnixMillis(T0),
            kind,
        })
        .collect();
    let mut after = stored.state.clone();
    for e in &events {
        after = apply(&after, e).unwrap();
    }
    ledger
        .append(Append {
            key: k,
            expected_version: stored.version,
            events: &events,
            after: &after,
            next_query_at: None,
        })
        .unwrap();
}

/// Found in review: "one API per ledger" was only documented. A live ticket of the `Ledger` API
/// whose attempt was moved on through the event-store seam (its outcome and a second attempt
/// appended there) made the reconciler's take-over assert and panic. Now the second attempt,
/// which no live ticket holds, is taken over as dropped, and nothing panics.
#[test]
fn a_ticket_overtaken_through_the_seam_is_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = embedded(tmp.path(), &clock);
    let k = key("two-apis");
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(100)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    append_through_seam(
        &ledger,
        &k,
        vec![
            EventKind::OutcomeReported {
                attempt: AttemptNumber::FIRST,
                outcome: Outcome::NotSent {
                    reason: NotSentReason::ConnectionRefused,
                },
            },
            EventKind::AttemptStarted {
                attempt: AttemptNumber::new(2).unwrap(),
                provider_reference: ProviderReference::derive(&k, AttemptNumber::new(2).unwrap()),
            },
        ],
    );
    let reconciler = Reconciler::new(ledger.clone(), Charges::default());
    reconciler.run_once().unwrap();
    assert!(matches!(
        ledger.state(&k).unwrap().unwrap().phase,
        Phase::Unknown {
            reason: UnknownReason::TicketDropped,
            ..
        }
    ));
    drop(ticket);
}

/// The same through `begin`: the seam settled attempt 1 as never sent while its ticket is still
/// live here; a new attempt replaces that ticket instead of asserting, and the old ticket's
/// late answer never releases the new one.
#[test]
fn a_begin_after_the_seam_settled_a_live_ticket_is_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = embedded(tmp.path(), &clock);
    let k = key("two-apis-begin");
    let Begin::Attempt(first) = ledger.begin(&k, &intent(100)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    append_through_seam(
        &ledger,
        &k,
        vec![EventKind::OutcomeReported {
            attempt: AttemptNumber::FIRST,
            outcome: Outcome::NotSent {
                reason: NotSentReason::ConnectionRefused,
            },
        }],
    );
    let Begin::Attempt(second) = ledger.begin(&k, &intent(100)).unwrap() else {
        panic!("a retry of an attempt never sent");
    };
    assert_eq!(second.attempt(), AttemptNumber::new(2).unwrap());
    drop(first);
    assert!(matches!(
        ledger.begin(&k, &intent(100)).unwrap(),
        Begin::InFlight { .. }
    ));
    drop(second);
}
