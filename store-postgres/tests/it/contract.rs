//! The store contract on PostgreSQL, the derived tables (lists, schedule, references), the
//! schema's versioning, rows that contradict the invariants, and the seed scenarios through
//! `StoreLedger`.

use std::sync::Arc;

use payledger::store::{Appended, EventStore, StoreLedger};
use payledger::*;
use payledger_postgres::{PgError, PgStore, SCHEMA_VERSION, pg_error};

use crate::scenarios::{self, T0, key, store_config};
use crate::support::Cluster;
use crate::{append_events, events, intent_and_attempt};

#[test]
fn the_store_keeps_the_contract() {
    let Some(pg) = Cluster::start() else { return };
    scenarios::contract(&pg.store());
}

#[test]
fn one_of_16_threads_appending_at_one_version_wins() {
    let Some(pg) = Cluster::start() else { return };
    let store = Arc::new(pg.store());
    scenarios::one_of_many_racing_appends_wins(Arc::clone(&store));
    let mut admin = pg.admin();
    assert_eq!(crate::attempts_in_database(&mut admin, "racing"), 1);
}

#[test]
fn lists_schedule_and_references_follow_each_append() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let (a, b, c) = (key("list-a"), key("list-b"), key("list-c"));
    for k in [&a, &b, &c] {
        let appended = append_events(&store, k, 0, &events(k, intent_and_attempt(k, 700)), None);
        assert_eq!(appended.unwrap(), Appended::Done { version: 2 });
    }
    // b's reply is lost: unknown, to be queried at T0 + 5 s.
    let lost = events(
        &b,
        vec![EventKind::OutcomeReported {
            attempt: AttemptNumber::FIRST,
            outcome: Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
        }],
    );
    let query_at = Some(UnixMillis(T0 + 5_000));
    assert_eq!(
        append_events(&store, &b, 2, &lost, query_at).unwrap(),
        Appended::Done { version: 3 }
    );

    let keys = |states: Vec<PaymentState>| {
        states
            .into_iter()
            .map(|s| s.key.to_string())
            .collect::<Vec<_>>()
    };
    let names =
        |keys: Vec<IdempotencyKey>| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list(PhaseKind::InFlight, None, 10).unwrap()),
        ["list-a", "list-c"]
    );
    assert_eq!(
        keys(store.list(PhaseKind::InFlight, None, 1).unwrap()),
        ["list-a"]
    );
    assert_eq!(
        keys(store.list(PhaseKind::InFlight, Some(&a), 1).unwrap()),
        ["list-c"]
    );
    assert_eq!(
        keys(store.list(PhaseKind::InFlight, Some(&c), 10).unwrap()),
        [""; 0]
    );
    assert_eq!(
        keys(store.list(PhaseKind::Unknown, None, 10).unwrap()),
        ["list-b"]
    );
    assert_eq!(store.due(UnixMillis(T0 + 4_999), 10).unwrap(), []);
    assert_eq!(
        names(store.due(UnixMillis(T0 + 5_000), 10).unwrap()),
        ["list-b"]
    );
    // A listed state is the fold of the stored events.
    assert_eq!(
        store.list(PhaseKind::Unknown, None, 10).unwrap()[0],
        store.load(&b).unwrap().unwrap().state
    );

    // Webhook evidence settles b: it leaves the unknown list and the schedule.
    let settled = events(
        &b,
        vec![EventKind::EvidenceReceived {
            attempt: AttemptNumber::FIRST,
            source: EvidenceSource::Webhook,
            finding: Finding::Charged {
                transaction_id: TransactionId::new("ch_b").unwrap(),
                amount: Amount::new(700).unwrap(),
            },
        }],
    );
    assert_eq!(
        append_events(&store, &b, 3, &settled, None).unwrap(),
        Appended::Done { version: 4 }
    );
    assert_eq!(
        keys(store.list(PhaseKind::Unknown, None, 10).unwrap()),
        [""; 0]
    );
    assert_eq!(
        keys(store.list(PhaseKind::Succeeded, None, 10).unwrap()),
        ["list-b"]
    );
    assert_eq!(store.due(UnixMillis(u64::MAX), 10).unwrap(), []);

    // References map back to their keys; one never issued maps to nothing.
    let reference = ProviderReference::derive(&c, AttemptNumber::FIRST);
    assert_eq!(store.key_of(&reference).unwrap(), Some(c.clone()));
    let never = ProviderReference::derive(&key("never-issued"), AttemptNumber::FIRST);
    assert_eq!(store.key_of(&never).unwrap(), None);
}

#[test]
fn a_stale_append_writes_nothing_anywhere() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let k = key("stale");
    let first = events(&k, intent_and_attempt(&k, 500));
    assert_eq!(
        append_events(&store, &k, 0, &first, None).unwrap(),
        Appended::Done { version: 2 }
    );
    // Another writer's view of the key as new, with a next query time and an attempt.
    let other = events(&k, intent_and_attempt(&k, 900));
    assert_eq!(
        append_events(&store, &k, 0, &other, Some(UnixMillis(T0))).unwrap(),
        Appended::Raced
    );
    let mut admin = pg.admin();
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM payledger_events),
                    (SELECT count(*) FROM payledger_keys WHERE next_query_at IS NOT NULL),
                    (SELECT count(*) FROM payledger_key_phases),
                    (SELECT count(*) FROM payledger_references)",
            &[],
        )
        .unwrap();
    let counts: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert_eq!(counts, [2, 0, 1, 1], "events, scheduled, lists, references");
}

/// A database created by version 1 of the schema (with foreign keys from the derived tables)
/// is upgraded in place: what it held still loads, and the constraints are gone.
#[test]
fn a_version_1_database_is_upgraded_in_place() {
    let Some(pg) = Cluster::start() else { return };
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "CREATE TABLE payledger_schema_version (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            INSERT INTO payledger_schema_version (version) VALUES (1);",
        )
        .unwrap();
    admin
        .batch_execute(include_str!("../../migrations/0001_events.sql"))
        .unwrap();
    let foreign_keys = |admin: &mut payledger_postgres::postgres::Client| -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_constraint
                 WHERE contype = 'f' AND conrelid::regclass::text LIKE 'payledger_%'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(foreign_keys(&mut admin), 3);

    let store = PgStore::connect(&pg.params()).unwrap();
    assert_eq!(store.schema_version().unwrap(), Some(1));
    let k = key("from-v1");
    let written = events(&k, intent_and_attempt(&k, 700));
    assert_eq!(
        append_events(&store, &k, 0, &written, None).unwrap(),
        Appended::Done { version: 2 }
    );
    assert_eq!(store.migrate().unwrap(), 1, "found version 1");
    assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));
    assert_eq!(foreign_keys(&mut admin), 0);
    let loaded = store.load(&k).unwrap().expect("kept");
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.state.phase.name(), "in-flight");
}

#[test]
fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
    let Some(pg) = Cluster::start() else { return };
    let store = PgStore::connect(&pg.params()).unwrap();
    assert_eq!(store.schema_version().unwrap(), None);
    // Two processes' migrations at once: one applies, the other finds it applied.
    std::thread::scope(|s| {
        let migrations: Vec<_> = (0..2)
            .map(|_| s.spawn(|| store.migrate().unwrap()))
            .collect();
        let mut found: Vec<i32> = migrations.into_iter().map(|m| m.join().unwrap()).collect();
        found.sort();
        assert_eq!(found, [0, SCHEMA_VERSION]);
    });
    assert_eq!(store.migrate().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));

    pg.admin()
        .execute(
            "INSERT INTO payledger_schema_version (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .unwrap();
    let too_new = |error: payledger::Error| match pg_error(&error) {
        Some(PgError::SchemaTooNew { found, known }) => (*found, *known),
        _ => panic!("{error:?}"),
    };
    let expected = (SCHEMA_VERSION + 1, SCHEMA_VERSION);
    assert_eq!(too_new(store.migrate().unwrap_err()), expected);
    assert_eq!(
        too_new(PgStore::connect(&pg.params()).unwrap_err()),
        expected
    );
}

#[test]
fn a_server_without_fsync_is_refused() {
    let Some(pg) = Cluster::start_with(&[("fsync", "off")]) else {
        return;
    };
    let error = PgStore::connect(&pg.params()).unwrap_err();
    assert!(
        matches!(
            pg_error(&error),
            Some(PgError::NotDurable { setting: "fsync", value }) if value == "off"
        ),
        "{error:?}"
    );
}

#[test]
fn rows_that_contradict_the_invariants_are_errors_never_skipped() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let (gap, garbled) = (key("gap"), key("garbled"));
    for k in [&gap, &garbled] {
        append_events(&store, k, 0, &events(k, intent_and_attempt(k, 300)), None).unwrap();
    }
    let mut admin = pg.admin();
    admin
        .batch_execute(
            "DELETE FROM payledger_events WHERE key = 'gap' AND seq = 1;
             UPDATE payledger_events SET event = '\\x01ff' WHERE key = 'garbled' AND seq = 2;",
        )
        .unwrap();
    let error = store.load(&gap).unwrap_err();
    assert!(
        matches!(pg_error(&error), Some(PgError::Inconsistent { key, .. }) if key == "gap"),
        "{error:?}"
    );
    assert!(error.to_string().contains("payledger_events"), "{error}");
    let error = store.load(&garbled).unwrap_err();
    assert!(
        matches!(
            pg_error(&error),
            Some(PgError::Event { key, seq: 2, cause: payledger::Error::Codec(_) }) if key == "garbled"
        ),
        "{error:?}"
    );
    // A list that meets them fails too.
    assert!(store.list(PhaseKind::InFlight, None, 10).is_err());
}

#[test]
fn a_malformed_append_is_refused_before_anything_is_sent() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let (k, other) = (key("malformed"), key("other"));
    let cases: [(&str, Vec<Event>); 2] = [
        ("no events", Vec::new()),
        (
            "another key's event",
            events(&other, intent_and_attempt(&other, 1)),
        ),
    ];
    for (what, events) in cases {
        let error = store
            .append(payledger::store::Append {
                key: &k,
                expected_version: 0,
                events: &events,
                after: &PaymentState::new(k.clone()),
                next_query_at: None,
            })
            .unwrap_err();
        assert!(
            matches!(pg_error(&error), Some(PgError::InvalidAppend { .. })),
            "{what}: {error:?}"
        );
    }
    assert_eq!(store.load(&k).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// The seed scenarios, through StoreLedger.

fn with_ledger(scenario: impl FnOnce(&StoreLedger<PgStore>, &ManualClock)) {
    let Some(pg) = Cluster::start() else { return };
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(pg.store(), store_config(&clock));
    scenario(&ledger, &clock);
}

#[test]
fn a_double_click_makes_one_provider_call_on_postgres() {
    let Some(pg) = Cluster::start() else { return };
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(pg.store(), store_config(&clock));
    scenarios::double_click_makes_one_provider_call(Arc::new(ledger));
}

#[test]
fn a_lost_reply_is_reconciled_never_retried_on_postgres() {
    with_ledger(scenarios::a_lost_reply_is_reconciled_never_retried);
}

#[test]
fn a_dead_process_attempt_is_taken_over_on_postgres() {
    with_ledger(scenarios::a_dead_process_attempt_is_taken_over_after_its_lease);
}

#[test]
fn not_found_is_trusted_only_after_the_wait_on_postgres() {
    with_ledger(scenarios::not_found_is_trusted_only_after_the_wait);
}

#[test]
fn evidence_settles_agrees_and_conflicts_on_postgres() {
    with_ledger(|ledger, _| {
        scenarios::evidence_settles_then_echoes_agree_then_contradictions_conflict(ledger)
    });
}

#[test]
fn every_attempt_in_flight_gets_its_turn_on_postgres() {
    let Some(pg) = Cluster::start() else { return };
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    scenarios::every_attempt_in_flight_gets_its_turn(pg.store(), &clock);
}

#[test]
fn chaos_through_the_seam_holds_on_postgres() {
    use payledger::sim::store_chaos::{StoreChaosConfig, run};
    let Some(pg) = Cluster::start() else { return };
    let config = StoreChaosConfig {
        seed: 7,
        ops: 1_500,
        keys: 60,
    };
    let report = run(pg.store(), config).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.double_charges, 0);
    // The same seed on the embedded ledger tells the same story.
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) =
        payledger::Ledger::open(tmp.path(), payledger::LedgerConfig::default()).unwrap();
    assert_eq!(run(ledger, config).unwrap().to_string(), report.to_string());
}

#[test]
fn a_late_outcome_after_a_take_over_is_evidence_on_postgres() {
    with_ledger(scenarios::a_late_outcome_after_a_take_over_is_evidence);
}
