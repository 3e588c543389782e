//! The fjall index engine (`IndexEngine::Fjall`, the default): the store contract and the
//! seed scenarios on it, and one ledger's answers from either engine across reopens, rebuilds
//! and switches of engine.

use std::path::Path;
use std::sync::Arc;

use payledger::store::StoreLedger;
use payledger::*;

use crate::store::scenarios::*;

fn config(engine: IndexEngine, clock: &Arc<ManualClock>) -> LedgerConfig {
    LedgerConfig {
        index_engine: engine,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        reconcile: store_config(clock).reconcile,
        ..LedgerConfig::default()
    }
}

fn on_fjall(dir: &Path, clock: &Arc<ManualClock>) -> Ledger {
    Ledger::open(dir, config(IndexEngine::Fjall, clock))
        .unwrap()
        .0
}

fn with_ledger(scenario: impl FnOnce(&StoreLedger<Ledger>, &ManualClock)) {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(on_fjall(tmp.path(), &clock), store_config(&clock));
    scenario(&ledger, &clock);
}

#[test]
fn a_ledger_on_the_fjall_index_keeps_the_store_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    contract(&on_fjall(tmp.path(), &clock));
}

#[test]
fn one_of_many_racing_appends_wins_on_the_fjall_index() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    one_of_many_racing_appends_wins(Arc::new(on_fjall(tmp.path(), &clock)));
}

#[test]
fn a_double_click_makes_one_provider_call_on_the_fjall_index() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let ledger = StoreLedger::new(on_fjall(tmp.path(), &clock), store_config(&clock));
    double_click_makes_one_provider_call(Arc::new(ledger));
}

#[test]
fn the_seed_scenarios_hold_on_the_fjall_index() {
    with_ledger(a_lost_reply_is_reconciled_never_retried);
    with_ledger(a_dead_process_attempt_is_taken_over_after_its_lease);
    with_ledger(not_found_is_trusted_only_after_the_wait);
    with_ledger(a_late_outcome_after_a_take_over_is_evidence);
    with_ledger(|ledger, _| {
        evidence_settles_then_echoes_agree_then_contradictions_conflict(ledger)
    });
}

/// Everything the index answers for: every phase list (paged through in small pages), the
/// counts, and each key's state and history.
#[derive(Debug, PartialEq)]
struct Answers {
    lists: Vec<(PhaseKind, Vec<PaymentState>)>,
    counts: Vec<(PhaseKind, usize)>,
    keys: Vec<(Option<PaymentState>, Vec<HistoryEntry>)>,
}

fn answers(ledger: &Ledger, keys: &[IdempotencyKey]) -> Answers {
    ledger.wait_indexed().unwrap();
    let lists = PhaseKind::ALL
        .iter()
        .map(|&phase| {
            let mut all = Vec::new();
            loop {
                let page = ledger
                    .list(phase, all.last().map(|s: &PaymentState| &s.key), 7)
                    .unwrap();
                if page.is_empty() {
                    break;
                }
                all.extend(page);
            }
            (phase, all)
        })
        .collect();
    Answers {
        lists,
        counts: ledger.counts(),
        keys: keys
            .iter()
            .map(|k| (ledger.state(k).unwrap(), ledger.history(k).unwrap()))
            .collect(),
    }
}

fn amount(cents: u64) -> Amount {
    Amount::new(cents).unwrap()
}

/// Charges `keys` into every phase the index lists: succeeded, declined, unknown, in flight
/// (tickets returned, still live), taken over after a dropped ticket, with refunds (settled,
/// declined, in flight) on some succeeded keys. The same calls on the same clock give the same
/// states on any ledger.
fn workload(ledger: &Ledger, keys: &[IdempotencyKey]) -> (Vec<Ticket>, Vec<OperationTicket>) {
    let mut live = Vec::new();
    let mut live_operations = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let Decision::Attempt(ticket) = ledger.begin(key, &intent(1_000)).unwrap() else {
            panic!("a fresh key");
        };
        let outcome = match i % 6 {
            0 | 1 => Outcome::Succeeded {
                transaction_id: TransactionId::new(format!("ch_{i}")).unwrap(),
                amount: amount(1_000),
            },
            2 => Outcome::Declined {
                code: DeclineCode::new("card_declined").unwrap(),
            },
            3 => Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
            4 => {
                live.push(ticket);
                continue;
            }
            _ => {
                drop(ticket);
                // The dropped ticket's attempt becomes unknown at the next request.
                let again = ledger.begin(key, &intent(1_000)).unwrap();
                assert!(
                    matches!(again, Decision::AwaitingReconciliation { .. }),
                    "{again:?}"
                );
                continue;
            }
        };
        ledger.record(ticket, outcome).unwrap();
        if i % 6 == 1 {
            let request = RequestId::new(format!("refund-{i}")).unwrap();
            let Decision::Attempt(refund) = ledger
                .begin_operation(key, OperationKind::Refund, &request, amount(300))
                .unwrap()
            else {
                panic!("a refund of a succeeded charge");
            };
            match i % 4 {
                1 => {
                    ledger
                        .record_operation(
                            refund,
                            Outcome::Succeeded {
                                transaction_id: TransactionId::new(format!("re_{i}")).unwrap(),
                                amount: amount(300),
                            },
                        )
                        .unwrap();
                }
                _ => live_operations.push(refund),
            }
        }
    }
    (live, live_operations)
}

#[test]
fn either_engine_answers_the_same_across_reopens_rebuilds_and_switches() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let keys: Vec<_> = (0..120).map(|i| key(&format!("order-{i:03}"))).collect();
    let (on_sled, on_fjall) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &Path, engine| Ledger::open(dir, config(engine, &clock)).unwrap();

    let (sled_ledger, _) = open(on_sled.path(), IndexEngine::Sled);
    let (fjall_ledger, _) = open(on_fjall.path(), IndexEngine::Fjall);
    let held_sled = workload(&sled_ledger, &keys);
    let held_fjall = workload(&fjall_ledger, &keys);
    let expected = answers(&sled_ledger, &keys);
    for phase in [
        PhaseKind::Succeeded,
        PhaseKind::Declined,
        PhaseKind::Unknown,
        PhaseKind::InFlight,
        PhaseKind::OperationInFlight,
    ] {
        let listed = expected.lists.iter().find(|(p, _)| *p == phase);
        assert!(
            listed.is_some_and(|(_, states)| !states.is_empty()),
            "the workload lists keys as {phase:?}"
        );
    }
    assert_eq!(answers(&fjall_ledger, &keys), expected);

    // Reopened on the same engine: caught up from its watermark, nothing rebuilt. The tickets
    // held by the closed process become unknown on reopen, on both alike.
    drop((held_fjall, fjall_ledger));
    drop((held_sled, sled_ledger));
    let (fjall_ledger, report) = open(on_fjall.path(), IndexEngine::Fjall);
    assert!(
        matches!(report.index, IndexRecovery::CaughtUp { .. }),
        "{report:?}"
    );
    let (sled_ledger, _) = open(on_sled.path(), IndexEngine::Sled);
    let expected = answers(&sled_ledger, &keys);
    assert_eq!(answers(&fjall_ledger, &keys), expected);
    drop((fjall_ledger, sled_ledger));

    // The sled ledger switched to fjall: its fjall index is missing and built from the journal.
    let (switched, report) = open(on_sled.path(), IndexEngine::Fjall);
    assert!(
        matches!(&report.index, IndexRecovery::Rebuilt { reason, .. } if reason == "index missing"),
        "{report:?}"
    );
    assert_eq!(answers(&switched, &keys), expected);
    drop(switched);

    // An explicit rebuild on fjall, then a reopen that only catches up.
    let (rebuilt, report) =
        Ledger::rebuild_index(on_fjall.path(), config(IndexEngine::Fjall, &clock)).unwrap();
    assert!(
        matches!(report.index, IndexRecovery::Rebuilt { .. }),
        "{report:?}"
    );
    assert_eq!(answers(&rebuilt, &keys), expected);
    drop(rebuilt);
    let (reopened, report) = open(on_fjall.path(), IndexEngine::Fjall);
    assert!(
        matches!(report.index, IndexRecovery::CaughtUp { .. }),
        "{report:?}"
    );
    assert_eq!(answers(&reopened, &keys), expected);
}

#[test]
fn a_fjall_index_of_another_ledger_is_rebuilt_not_trusted() {
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let index = tempfile::tempdir().unwrap();
    let with_index = |engine| LedgerConfig {
        index_dir: Some(index.path().to_path_buf()),
        ..config(engine, &clock)
    };
    let (ledger, _) = Ledger::open(first.path(), with_index(IndexEngine::Fjall)).unwrap();
    let paid = key("paid-on-the-first");
    let Decision::Attempt(ticket) = ledger.begin(&paid, &intent(500)).unwrap() else {
        panic!("a fresh key");
    };
    let succeeded = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_1").unwrap(),
        amount: amount(500),
    };
    ledger.record(ticket, succeeded.clone()).unwrap();
    ledger.wait_indexed().unwrap();
    drop(ledger);

    // The second ledger writes more events than the first under an index of its own, so that
    // the shared index's watermark is within its journal and only the chain hash tells them
    // apart.
    let (ledger, _) = Ledger::open(second.path(), config(IndexEngine::Fjall, &clock)).unwrap();
    for name in ["second-1", "second-2"] {
        let Decision::Attempt(ticket) = ledger.begin(&key(name), &intent(500)).unwrap() else {
            panic!("a fresh key");
        };
        ledger.record(ticket, succeeded.clone()).unwrap();
    }
    drop(ledger);
    let (ledger, report) = Ledger::open(second.path(), with_index(IndexEngine::Fjall)).unwrap();
    assert!(
        matches!(&report.index, IndexRecovery::Rebuilt { reason, .. } if reason.contains("another ledger")),
        "{report:?}"
    );
    assert_eq!(ledger.state(&paid).unwrap(), None);
    let listed: Vec<_> = ledger
        .list(PhaseKind::Succeeded, None, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![key("second-1"), key("second-2")]);
}

/// Every regular file under `dir` but fjall's lock file.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files.extend(files_under(&path));
        } else if entry.file_name() != "lock" {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A damaged fjall index (bytes overwritten in any of its files: tables, journal, manifests) is
/// found at open or at the first read that touches the damage: rebuilt from the journal, or a
/// typed error naming the index; never served as a wrong state, never a panic.
#[test]
fn a_damaged_fjall_index_is_rebuilt_or_named_never_served_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
    let keys: Vec<_> = (0..60).map(|i| key(&format!("dmg-{i:02}"))).collect();
    let before = {
        let (ledger, _) = Ledger::open(tmp.path(), config(IndexEngine::Fjall, &clock)).unwrap();
        let _held = workload(&ledger, &keys);
        ledger.wait_indexed().unwrap();
        keys.iter()
            .map(|k| ledger.state(k).unwrap())
            .collect::<Vec<_>>()
    };
    // The states after a reopen (held tickets of the closed process become unknown).
    let before = {
        let (ledger, _) = Ledger::open(tmp.path(), config(IndexEngine::Fjall, &clock)).unwrap();
        let reopened: Vec<_> = keys.iter().map(|k| ledger.state(k).unwrap()).collect();
        assert_eq!(reopened.len(), before.len());
        reopened
    };
    let index = tmp.path().join("index");
    let pristine = tempfile::tempdir().unwrap();
    crate::promise::copy_dir(&index, pristine.path());
    // Each open may flush, compact or drop fjall's files: every case starts from the copy.
    let files = files_under(&pristine.path().join("fjall"));
    assert!(files.len() >= 3, "fjall keeps several files: {files:?}");
    let (mut rebuilt, mut named, mut unharmed) = (0, 0, 0);
    for copied in &files {
        let original = std::fs::read(copied).unwrap();
        let file = index.join(copied.strip_prefix(pristine.path()).unwrap());
        if original.is_empty() {
            continue;
        }
        let step = (original.len() / 12).max(1);
        for at in (0..original.len()).step_by(step) {
            std::fs::remove_dir_all(&index).unwrap();
            crate::promise::copy_dir(pristine.path(), &index);
            let mut bytes = original.clone();
            for b in &mut bytes[at..(at + 16).min(original.len())] {
                *b ^= 0x5a;
            }
            std::fs::write(&file, bytes).unwrap();
            let here = format!("{} byte {at}", file.display());
            let (ledger, report) =
                match Ledger::open(tmp.path(), config(IndexEngine::Fjall, &clock)) {
                    Ok(opened) => opened,
                    Err(Error::Index {
                        index: named_index, ..
                    }) => {
                        assert_eq!(named_index, index, "{here}");
                        named += 1;
                        continue;
                    }
                    Err(other) => panic!("{here}: not an index error: {other:?}"),
                };
            let mut all_served = true;
            for (k, expected) in keys.iter().zip(&before) {
                match ledger.state(k) {
                    Ok(state) => assert_eq!(&state, expected, "{here}: {k} served wrong"),
                    Err(Error::Index {
                        index: named_index, ..
                    }) => {
                        assert_eq!(named_index, index, "{here}");
                        all_served = false;
                    }
                    Err(other) => panic!("{here}: {k}: not an index error: {other:?}"),
                }
            }
            match (report.index, all_served) {
                (IndexRecovery::Rebuilt { .. }, true) => rebuilt += 1,
                (_, true) => unharmed += 1,
                (_, false) => named += 1,
            }
        }
    }
    eprintln!("damaged fjall index: rebuilt {rebuilt}, named {named}, unharmed {unharmed}");
    assert!(rebuilt + named > 0, "some damage was noticed");

    // A value whose bytes changed inside fjall (its own checks pass): the entry's checksum
    // names the index at the first read, and no charge is decided from it. (Key 6 is a plain
    // success: nothing reads it during the open.)
    std::fs::remove_dir_all(&index).unwrap();
    crate::promise::copy_dir(pristine.path(), &index);
    {
        let db = fjall::Database::builder(index.join("fjall"))
            .open()
            .unwrap();
        let tree = db
            .keyspace("index", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let state_key = [b"s".as_slice(), keys[6].as_str().as_bytes()].concat();
        let mut value = tree.get(&state_key).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        tree.insert(state_key, value).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let (ledger, _) = Ledger::open(tmp.path(), config(IndexEngine::Fjall, &clock)).unwrap();
    match ledger.state(&keys[6]) {
        Err(Error::Index {
            index: named_index,
            kind: IndexError::Damaged { .. },
        }) => assert_eq!(named_index, index),
        other => panic!("expected the damaged entry to be named, got {other:?}"),
    }
    assert!(
        matches!(
            ledger.begin(&keys[6], &intent(1_000)),
            Err(Error::Index { .. })
        ),
        "no charge is decided from a damaged entry"
    );
    assert_eq!(
        ledger.state(&keys[8]).unwrap(),
        before[8],
        "the rest is served"
    );
}
