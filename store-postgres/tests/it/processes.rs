//! Two OS processes double-clicking the same 200 keys against one database: each loads each
//! key, folds, decides with the model and tries to append intent + attempt. Exactly one
//! attempt per key may start between them.
//!
//! The test binary re-executes itself (as the root crate's `tests/it/crash.rs` does): with
//! `PAYLEDGER_PG_CHILD` set, `double_click_child` is the child's workload and prints one line
//! per attempt it started; without it, that function returns at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payledger::store::{Append, Appended, EventStore};
use payledger::*;
use payledger_postgres::PgStore;

use crate::scenarios::{intent, key};
use crate::support::Cluster;

const CHILD_ENV: &str = "PAYLEDGER_PG_CHILD";
const KEYS: usize = 200;
const AMOUNT: u64 = 4_999;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The child's workload: `PAYLEDGER_PG_CHILD` is `START_MS;CONNECTION`.
#[test]
fn double_click_child() {
    let Ok(value) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (start_ms, params) = value.split_once(';').unwrap();
    let store = PgStore::connect(params).unwrap();
    let intent = intent(AMOUNT);
    let fingerprint = intent.fingerprint();
    // Both processes begin together, so that their clicks meet.
    let start_ms: u64 = start_ms.parse().unwrap();
    std::thread::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms())));
    let mut out = std::io::stdout().lock();
    let mut races = 0;
    for i in 0..KEYS {
        let k = key(&format!("double-click-{i:03}"));
        loop {
            let (state, version) = match store.load(&k).unwrap() {
                Some(stored) => (stored.state, stored.version),
                None => (PaymentState::new(k.clone()), 0),
            };
            let Ok(plan) = state.decide(&fingerprint).into_attempt() else {
                break; // the other process's attempt: in flight
            };
            let mut kinds = Vec::new();
            if plan.record_intent {
                kinds.push(EventKind::IntentRecorded {
                    intent: intent.clone(),
                    fingerprint,
                });
            }
            kinds.push(EventKind::AttemptStarted {
                attempt: plan.attempt,
                provider_reference: ProviderReference::derive(&k, plan.attempt),
            });
            let events = crate::events(&k, kinds);
            let after = events.iter().try_fold(state, |s, e| apply(&s, e)).unwrap();
            let appended = store
                .append(Append {
                    key: &k,
                    expected_version: version,
                    events: &events,
                    after: &after,
                    next_query_at: None,
                })
                .unwrap();
            match appended {
                Appended::Done { .. } => {
                    writeln!(out, "started {k}").unwrap();
                    break;
                }
                Appended::Raced => races += 1,
            }
        }
    }
    writeln!(out, "races {races}").unwrap();
    out.flush().unwrap();
}

#[test]
fn two_processes_double_clicking_200_keys_start_one_attempt_per_key() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(pg) = Cluster::start() else { return };
    drop(pg.store()); // migrated
    let start_ms = now_ms() + 1_500;
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "processes::double_click_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{start_ms};{}", pg.params()))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut started: BTreeMap<String, usize> = BTreeMap::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "child failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        for line in stdout.lines() {
            // The harness prints "test name ... " without a newline: a line may start with it.
            if let Some(at) = line.find("started ") {
                *started.entry(line[at + 8..].to_string()).or_default() += 1;
            }
            if let Some(at) = line.find("races ") {
                eprintln!("a child lost {} races", &line[at + 6..]);
            }
        }
    }
    assert_eq!(started.len(), KEYS, "every key started by one process");
    assert!(started.values().all(|&n| n == 1), "{started:?}");

    let store = pg.store();
    let mut admin = pg.admin();
    for i in 0..KEYS {
        let name = format!("double-click-{i:03}");
        assert_eq!(crate::attempts_in_database(&mut admin, &name), 1, "{name}");
        let stored = store.load(&key(&name)).unwrap().unwrap();
        assert_eq!(stored.version, 2);
        assert!(
            matches!(stored.state.phase, Phase::InFlight { attempt, .. } if attempt == AttemptNumber::FIRST),
            "{stored:?}"
        );
    }
}
