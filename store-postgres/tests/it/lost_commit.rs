//! Appends whose connection is lost before their answer: the store resolves each by reading
//! back, never by guessing.
//!
//! The first test loses a real COMMIT's reply: the server waits, after its local commit, for a
//! synchronous standby that does not exist, and a second connection ends the session there
//! (`pg_terminate_backend`): the server closes the connection without a reply, exactly as when
//! the network fails after COMMIT. The others use the `testing` feature's switches to reach
//! every branch: the reply lost after commit, the statement lost before it was sent (retried
//! once), lost twice (nothing written), beaten meanwhile by another writer — even one writing
//! identical bytes — and the server down until the deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use payledger::store::{Appended, EventStore};
use payledger::*;
use payledger_postgres::{PgError, PgOptions, PgStore, Resolutions, pg_error};

use crate::scenarios::key;
use crate::support::{Cluster, wait_until};
use crate::{append_events, attempts_in_database, events, intent_and_attempt};

#[test]
fn a_real_commit_whose_reply_is_lost_is_found_by_reading_back() {
    let Some(pg) = Cluster::start() else { return };
    drop(pg.store()); // migrated, before commits start waiting
    let mut admin = pg.admin();
    admin
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'payledger_nobody'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    pg.wait_for_setting("synchronous_standby_names", "payledger_nobody");
    // Connected after the reload: its commits wait for the standby.
    let store = Arc::new(PgStore::connect_with(pg.config(), PgOptions::default()).unwrap());
    let k = key("lost-commit");
    let appending = {
        let (store, k) = (Arc::clone(&store), k.clone());
        std::thread::spawn(move || {
            let events = events(&k, intent_and_attempt(&k, 1_200));
            append_events(&store, &k, 0, &events, None)
        })
    };
    // The append has committed locally and waits for the standby: end its session.
    let mut waiting = Vec::new();
    wait_until(
        "the commit to wait for the standby",
        Duration::from_secs(30),
        || {
            waiting = admin
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .unwrap();
            !waiting.is_empty() || appending.is_finished()
        },
    );
    assert_eq!(waiting.len(), 1, "one commit waiting");
    let pid: i32 = waiting[0].get(0);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();

    let appended = appending.join().unwrap().unwrap();
    assert_eq!(appended, Appended::Done { version: 2 });
    assert_eq!(
        store.resolutions(),
        Resolutions {
            lost: 1,
            found_written: 1,
            ..Resolutions::default()
        }
    );
    let stored = store.load(&k).unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert!(matches!(stored.state.phase, Phase::InFlight { .. }));
    assert_eq!(attempts_in_database(&mut admin, "lost-commit"), 1);
}

#[test]
fn a_reply_lost_after_commit_is_done_and_written_once() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let k = key("reply-lost");
    store
        .faults()
        .lose_reply_after_commit
        .store(1, Ordering::SeqCst);
    let events = events(&k, intent_and_attempt(&k, 800));
    assert_eq!(
        append_events(&store, &k, 0, &events, None).unwrap(),
        Appended::Done { version: 2 }
    );
    assert_eq!(
        store.resolutions(),
        Resolutions {
            lost: 1,
            found_written: 1,
            ..Resolutions::default()
        }
    );
    assert_eq!(store.load(&k).unwrap().unwrap().version, 2);
    assert_eq!(attempts_in_database(&mut pg.admin(), "reply-lost"), 1);
    // The append was not repeated: the same append again is a stale one.
    assert_eq!(
        append_events(&store, &k, 0, &events, None).unwrap(),
        Appended::Raced
    );
}

#[test]
fn a_statement_lost_before_it_was_sent_is_retried_once() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let k = key("never-sent");
    store.faults().lose_before_send.store(1, Ordering::SeqCst);
    let events = events(&k, intent_and_attempt(&k, 800));
    assert_eq!(
        append_events(&store, &k, 0, &events, None).unwrap(),
        Appended::Done { version: 2 }
    );
    assert_eq!(
        store.resolutions(),
        Resolutions {
            lost: 1,
            retried: 1,
            ..Resolutions::default()
        }
    );
    assert_eq!(attempts_in_database(&mut pg.admin(), "never-sent"), 1);
}

#[test]
fn an_append_and_its_retry_both_lost_say_nothing_was_written() {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let k = key("lost-twice");
    store.faults().lose_before_send.store(2, Ordering::SeqCst);
    let events = events(&k, intent_and_attempt(&k, 800));
    let error = append_events(&store, &k, 0, &events, None).unwrap_err();
    assert!(
        matches!(pg_error(&error), Some(PgError::NotWritten { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("lost-twice"), "{error}");
    assert_eq!(
        store.resolutions(),
        Resolutions {
            lost: 1,
            retried: 1,
            not_written: 1,
            ..Resolutions::default()
        }
    );
    assert_eq!(store.load(&k).unwrap(), None, "nothing was written");
    // The same append may be made again.
    assert_eq!(
        append_events(&store, &k, 0, &events, None).unwrap(),
        Appended::Done { version: 2 }
    );
}

/// Loses the append's statement before it is sent, and lets `other` append first.
fn beaten_by(other_amount: u64, same_events: bool) {
    let Some(pg) = Cluster::start() else { return };
    let store = pg.store();
    let other = Arc::new(pg.store());
    let k = key("beaten");
    let mine = events(&k, intent_and_attempt(&k, 800));
    let theirs = if same_events {
        mine.clone()
    } else {
        events(&k, intent_and_attempt(&k, other_amount))
    };
    store.faults().lose_before_send.store(1, Ordering::SeqCst);
    {
        let (other, k, theirs) = (Arc::clone(&other), k.clone(), theirs.clone());
        *store.faults().before_read_back.lock().unwrap() = Some(Box::new(move || {
            let appended = append_events(&other, &k, 0, &theirs, None).unwrap();
            assert_eq!(appended, Appended::Done { version: 2 });
        }));
    }
    assert_eq!(
        append_events(&store, &k, 0, &mine, None).unwrap(),
        Appended::Raced
    );
    assert_eq!(
        store.resolutions(),
        Resolutions {
            lost: 1,
            found_raced: 1,
            ..Resolutions::default()
        }
    );
    let stored = store.load(&k).unwrap().unwrap();
    assert_eq!(stored.version, 2);
    let expected = theirs
        .iter()
        .try_fold(PaymentState::new(k.clone()), |s, e| apply(&s, e));
    assert_eq!(stored.state, expected.unwrap());
}

#[test]
fn a_lost_append_beaten_by_another_writer_is_raced() {
    beaten_by(900, false);
}

#[test]
fn identical_events_from_another_writer_are_not_taken_for_ours() {
    // Same bytes at the same sequence: only the append token tells the writers apart.
    beaten_by(800, true);
}

#[test]
fn the_outcome_is_unknown_while_the_server_stays_down() {
    let Some(pg) = Cluster::start() else { return };
    let pg = Arc::new(pg);
    let store = pg.store_with(PgOptions {
        resolve_timeout: Duration::from_millis(500),
        ..PgOptions::default()
    });
    let k = key("server-down");
    store.faults().lose_before_send.store(1, Ordering::SeqCst);
    {
        let pg = Arc::clone(&pg);
        *store.faults().before_read_back.lock().unwrap() = Some(Box::new(move || pg.stop()));
    }
    let events = events(&k, intent_and_attempt(&k, 800));
    let error = append_events(&store, &k, 0, &events, None).unwrap_err();
    assert!(
        matches!(pg_error(&error), Some(PgError::OutcomeUnknown { .. })),
        "{error:?}"
    );
    assert_eq!(store.resolutions().unknown, 1);
    pg.start_again();
    // This statement was never sent: the key is as the writer saw it.
    assert_eq!(store.load(&k).unwrap(), None);
}
