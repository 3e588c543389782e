//! The server restarted while a thread appends: appends fail with typed errors that say
//! whether anything may have been written, and every append answered `Done` is there after.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payledger::store::{Appended, EventStore};
use payledger::*;
use payledger_postgres::{PgError, PgOptions, PgStore, pg_error};

use crate::scenarios::key;
use crate::support::{Cluster, wait_until};
use crate::{append_events, events, intent_and_attempt};

/// What the appender saw: each new key's events and the append's answer.
type Outcomes = Mutex<Vec<(IdempotencyKey, Vec<Event>, payledger::Result<Appended>)>>;

struct Appender {
    outcomes: Arc<Outcomes>,
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// A thread appending intent + attempt to new keys, one after the other, until stopped.
fn appender(store: Arc<PgStore>) -> Appender {
    let outcomes = Arc::new(Outcomes::default());
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (outcomes, done, failed, stop) = (
            Arc::clone(&outcomes),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let k = key(&format!("restart-{i:06}"));
                let events = events(&k, intent_and_attempt(&k, 1_000));
                let outcome = append_events(&store, &k, 0, &events, None);
                match &outcome {
                    Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                    Err(_) => {
                        // While the server is down, connecting fails at once: do not spin.
                        std::thread::sleep(Duration::from_millis(20));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                outcomes.lock().unwrap().push((k, events, outcome));
            }
        })
    };
    Appender {
        outcomes,
        done,
        failed,
        stop,
        thread,
    }
}

#[test]
fn a_server_restart_mid_load_fails_appends_with_typed_errors_and_keeps_every_done() {
    let Some(pg) = Cluster::start() else { return };
    let store = Arc::new(pg.store_with(PgOptions {
        // Shorter than the outage below, so that appends in it answer with errors.
        resolve_timeout: Duration::from_millis(300),
        ..PgOptions::default()
    }));
    let appender = appender(Arc::clone(&store));
    let minute = Duration::from_secs(60);
    let done = |n: usize| appender.done.load(Ordering::SeqCst) >= n;

    wait_until("appends before the restart", minute, || done(50));
    // pg_ctl restart -m fast: sessions are ended mid-statement, the server comes back.
    pg.restart();
    let after_restart = appender.done.load(Ordering::SeqCst) + 50;
    wait_until("appends after the restart", minute, || done(after_restart));

    // And a restart with an outage the appender must see: stop, wait for failures, start.
    pg.stop();
    let failed = appender.failed.load(Ordering::SeqCst) + 3;
    wait_until("failed appends while the server is down", minute, || {
        appender.failed.load(Ordering::SeqCst) >= failed
    });
    pg.start_again();
    let after_start = appender.done.load(Ordering::SeqCst) + 50;
    wait_until("appends after the server is back", minute, || {
        done(after_start)
    });
    appender.stop.store(true, Ordering::SeqCst);
    appender.thread.join().unwrap();

    let outcomes = std::mem::take(&mut *appender.outcomes.lock().unwrap());
    let (mut done_count, mut nothing_written, mut unknown) = (0, 0, 0);
    for (k, events, outcome) in outcomes {
        let stored = store.load(&k).unwrap();
        match outcome {
            Ok(Appended::Done { version }) => {
                done_count += 1;
                assert_eq!(version, 2);
                let stored = stored.unwrap_or_else(|| panic!("{k} was answered Done"));
                let folded = events
                    .iter()
                    .try_fold(PaymentState::new(k.clone()), |s, e| apply(&s, e))
                    .unwrap();
                assert_eq!((stored.version, stored.state), (2, folded), "{k}");
            }
            Ok(Appended::Raced) => panic!("{k}: nobody else writes these keys"),
            Err(error) => match pg_error(&error) {
                // Said to have written nothing: nothing is there.
                Some(PgError::Connect(_) | PgError::Statement(_) | PgError::NotWritten { .. }) => {
                    nothing_written += 1;
                    assert_eq!(stored, None, "{k}: {error:?}");
                }
                // Either; never half.
                Some(PgError::OutcomeUnknown { .. }) => {
                    unknown += 1;
                    assert!(stored.is_none_or(|s| s.version == 2), "{k}");
                }
                _ => panic!("{k}: an untyped error: {error:?}"),
            },
        }
    }
    eprintln!(
        "done {done_count}, failed having written nothing {nothing_written}, outcome unknown {unknown}; {:?}",
        store.resolutions()
    );
    assert!(nothing_written + unknown >= 3);
}
