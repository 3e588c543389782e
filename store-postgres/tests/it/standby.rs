//! Replicated durability: a primary with a synchronous standby (`synchronous_commit = on`,
//! `synchronous_standby_names = 'standby1'`) loses power mid-load (`pg_ctl stop -m
//! immediate`); the standby is promoted, and every append the primary answered `Done` is on it
//! with its exact events, and it accepts new appends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use payledger::store::{Appended, EventStore};
use payledger::*;
use payledger_postgres::PgOptions;

use crate::scenarios::key;
use crate::support::{Cluster, wait_until};
use crate::{append_events, events, intent_and_attempt};

/// Keys that must be acknowledged before the primary is killed.
const KEYS: usize = 300;
/// Appending threads.
const THREADS: usize = 4;

/// What one key's appends were answered: the events of every append answered `Done`, in
/// order, and the version the last one answered.
#[derive(Default)]
struct Acked {
    events: Vec<Event>,
    version: u64,
}

/// The outcome of the key's first attempt: succeeded.
fn succeeded(k: &IdempotencyKey) -> Vec<Event> {
    let amount = crate::scenarios::intent(1_000).amount;
    let transaction_id = TransactionId::new(format!("ch_{k}")).unwrap();
    events(
        k,
        vec![EventKind::OutcomeReported {
            attempt: AttemptNumber::FIRST,
            outcome: Outcome::Succeeded {
                transaction_id,
                amount,
            },
        }],
    )
}

/// Every event of `key` in the database, in order, decoded with the library's codec.
fn stored_events(client: &mut payledger_postgres::postgres::Client, key: &str) -> Vec<Event> {
    client
        .query(
            "SELECT event FROM payledger_events WHERE key = $1 ORDER BY seq",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|row| journal::codec::decode_event(row.get(0)).unwrap())
        .collect()
}

#[test]
fn a_synchronous_standby_promoted_after_the_primary_dies_holds_every_done_append() {
    let Some(primary) = Cluster::start_configured(
        &[
            ("wal_level", "replica"),
            ("max_wal_senders", "4"),
            ("synchronous_standby_names", "'FIRST 1 (standby1)'"),
            ("synchronous_commit", "on"),
        ],
        &["local replication all trust"],
    ) else {
        return;
    };
    let standby = primary.standby("standby1", &[]);
    wait_until(
        "standby1 to be a synchronous standby",
        Duration::from_secs(60),
        || {
            primary
                .admin()
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication \
                 WHERE application_name = 'standby1' AND sync_state = 'sync'",
                    &[],
                )
                .unwrap()
                .is_some()
        },
    );

    let store = Arc::new(primary.store_with(PgOptions {
        // The appends in flight when the primary dies give up soon: they are not `Done`.
        resolve_timeout: Duration::from_millis(500),
        ..PgOptions::default()
    }));
    let acked: Arc<Vec<Mutex<Acked>>> =
        Arc::new((0..KEYS * 4).map(|_| Default::default()).collect());
    let (next, keys_done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (store, acked, next, keys_done, stop) = (
                Arc::clone(&store),
                Arc::clone(&acked),
                Arc::clone(&next),
                Arc::clone(&keys_done),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                // Each key: intent + attempt at version 0, then the outcome at version 2;
                // until stopped, or an append fails (the primary is gone).
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(slot) = acked.get(i) else { return };
                    let k = key(&format!("standby-{i:06}"));
                    for (expected, batch) in [
                        (0, events(&k, intent_and_attempt(&k, 1_000))),
                        (2, succeeded(&k)),
                    ] {
                        match append_events(&store, &k, expected, &batch, None) {
                            Ok(Appended::Done { version }) => {
                                let mut slot = slot.lock().unwrap();
                                slot.events.extend(batch);
                                slot.version = version;
                            }
                            Ok(Appended::Raced) => panic!("{k}: nobody else writes it"),
                            Err(_) => return,
                        }
                    }
                    keys_done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    wait_until("the keys to be appended", Duration::from_secs(120), || {
        keys_done.load(Ordering::SeqCst) >= KEYS
    });
    // Power lost while the threads are still appending.
    let killed = Instant::now();
    primary.stop_immediately();
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    standby.promote();
    eprintln!(
        "primary killed after {} keys; standby promoted {:?} after the kill",
        keys_done.load(Ordering::SeqCst),
        killed.elapsed()
    );

    let promoted = standby.store();
    let mut client = standby.admin();
    let (mut checked, mut ahead) = (0, 0);
    for (i, slot) in acked.iter().enumerate() {
        let acked = slot.lock().unwrap();
        if acked.version == 0 {
            continue;
        }
        let k = key(&format!("standby-{i:06}"));
        let stored = promoted
            .load(&k)
            .unwrap()
            .unwrap_or_else(|| panic!("{k} was answered Done, and is not on the standby"));
        let events = stored_events(&mut client, k.as_str());
        assert_eq!(stored.version, events.len() as u64, "{k}");
        // Every acknowledged event, exactly; an append whose answer the kill ate may be
        // there too (it committed on both), never anything else.
        assert!(
            stored.version >= acked.version,
            "{k}: acknowledged events lost"
        );
        assert_eq!(&events[..acked.events.len()], &acked.events[..], "{k}");
        if stored.version == acked.version {
            let folded = acked
                .events
                .iter()
                .try_fold(PaymentState::new(k.clone()), |s, e| apply(&s, e))
                .unwrap();
            assert_eq!(stored.state, folded, "{k}");
        } else {
            ahead += 1;
        }
        checked += 1;
    }
    assert!(checked >= KEYS, "{checked} keys acknowledged");
    eprintln!(
        "{checked} acknowledged keys on the promoted standby, {ahead} with an unanswered append too"
    );

    // The promoted server takes new appends (no synchronous standby of its own to wait for).
    let k = key("standby-after-promotion");
    assert_eq!(
        append_events(
            &promoted,
            &k,
            0,
            &events(&k, intent_and_attempt(&k, 1_000)),
            None
        )
        .unwrap(),
        Appended::Done { version: 2 }
    );
    assert_eq!(promoted.load(&k).unwrap().unwrap().version, 2);
}
