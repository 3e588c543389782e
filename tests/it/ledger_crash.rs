//! The process dies between "attempt started" and the provider call, and between the provider
//! call and recording its outcome (real child process, SIGKILL). After reopen the key is
//! unknown, and the reconciler settles it with exactly one charge at the provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use payledger::*;

use crate::crash::{ack_lines, child_mode, spawn_child};
use crate::support::{intent, key, reconcile_config};

/// A provider whose charges are files, so that they outlive the process that made them.
struct FileProvider(PathBuf);

impl FileProvider {
    fn charges(&self) -> usize {
        std::fs::read_dir(&self.0).map(|d| d.count()).unwrap_or(0)
    }
}

impl Provider for FileProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        std::fs::create_dir_all(&self.0).unwrap();
        let txn = format!(
            "ch_{}",
            request.provider_reference.as_str().len() + self.charges()
        );
        let path = self.0.join(request.provider_reference.as_str());
        std::fs::write(&path, format!("{txn} {}", request.amount.minor())).unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        ChargeReply::Charged {
            transaction_id: txn,
            amount_minor: request.amount.minor(),
        }
    }

    fn query(&self, reference: &ProviderReference) -> QueryReply {
        match std::fs::read_to_string(self.0.join(reference.as_str())) {
            Ok(text) => {
                let (txn, amount) = text.split_once(' ').unwrap();
                QueryReply::Succeeded {
                    transaction_id: txn.into(),
                    amount_minor: amount.parse().unwrap(),
                }
            }
            Err(_) => QueryReply::NotFound,
        }
    }
}

fn ledger_config(clock: Arc<dyn Clock>) -> LedgerConfig {
    LedgerConfig {
        segment_len: 1 << 20,
        reconcile: reconcile_config(),
        clock,
        ..LedgerConfig::default()
    }
}

#[test]
fn ledger_crash_child_entry() {
    let Some((mode, dir)) = child_mode() else {
        return;
    };
    let dir = Path::new(&dir);
    let provider = FileProvider(dir.join("provider"));
    let (ledger, _) =
        Ledger::open(dir.join("ledger"), ledger_config(Arc::new(SystemClock))).unwrap();
    let Begin::Attempt(ticket) = ledger.begin(&key("order-crash"), &intent(2_500)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    if mode == "ledger-after-call" {
        let request = ChargeRequest::new(
            &intent(2_500),
            ticket.attempt(),
            ticket.provider_reference().clone(),
            Duration::from_secs(1),
        );
        provider.charge(&request);
    }
    println!("ack {mode}");
    std::thread::sleep(Duration::from_secs(60));
    drop(ticket);
}

fn crash_and_reconcile(mode: &str) -> (Ledger, FileProvider, Arc<ManualClock>) {
    let tmp = tempfile::tempdir().unwrap().keep();
    let mut child = spawn_child("ledger_crash::ledger_crash_child_entry", mode, &tmp);
    let acks = ack_lines(&mut child);
    assert_eq!(acks.recv_timeout(Duration::from_secs(30)).unwrap(), mode);
    child.kill().unwrap();
    child.wait().unwrap();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let (ledger, report) = Ledger::open(
        tmp.join("ledger"),
        ledger_config(Arc::clone(&clock) as Arc<dyn Clock>),
    )
    .unwrap();
    assert_eq!(report.orphaned_attempts, 1);
    let state = ledger.state(&key("order-crash")).unwrap().unwrap();
    assert!(
        matches!(
            state.phase,
            Phase::Unknown {
                reason: UnknownReason::ProcessEnded,
                ..
            }
        ),
        "{mode}: {:?}",
        state.phase
    );
    assert!(matches!(
        ledger.begin(&key("order-crash"), &intent(2_500)).unwrap(),
        Begin::AwaitingReconciliation { .. }
    ));
    let provider = FileProvider(tmp.join("provider"));
    (ledger, provider, clock)
}

#[test]
fn killed_after_attempt_started_before_the_call() {
    if child_mode().is_some() {
        return;
    }
    let (ledger, provider, clock) = crash_and_reconcile("ledger-before-call");
    let reconciler = Reconciler::new(ledger.clone(), FileProvider(provider.0.clone()));
    for _ in 0..100 {
        clock.advance(5_000);
        reconciler.run_once().unwrap();
    }
    let k = key("order-crash");
    assert!(
        matches!(
            ledger.state(&k).unwrap().unwrap().phase,
            Phase::Ready { .. }
        ),
        "never charged: a retry is allowed"
    );
    let report = ledger
        .charge_once(&k, &intent(2_500), &provider, Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(report.decision, Decision::AlreadySucceeded { attempt, .. } if attempt.get() == 2)
    );
    assert_eq!(provider.charges(), 1, "exactly one charge");
    std::fs::remove_dir_all(provider.0.parent().unwrap()).unwrap();
}

#[test]
fn killed_after_the_call_before_the_outcome() {
    if child_mode().is_some() {
        return;
    }
    let (ledger, provider, clock) = crash_and_reconcile("ledger-after-call");
    assert_eq!(provider.charges(), 1);
    let reconciler = Reconciler::new(ledger.clone(), FileProvider(provider.0.clone()));
    clock.advance(5_000);
    let report = reconciler.run_once().unwrap();
    assert_eq!(report.resolved, 1);
    let k = key("order-crash");
    assert!(matches!(
        ledger.state(&k).unwrap().unwrap().phase,
        Phase::Succeeded { .. }
    ));
    let replay = ledger
        .charge_once(&k, &intent(2_500), &provider, Duration::from_secs(5))
        .unwrap();
    assert!(!replay.called_provider);
    assert!(
        matches!(replay.decision, Decision::AlreadySucceeded { attempt, .. } if attempt.get() == 1)
    );
    assert_eq!(provider.charges(), 1, "no second charge");
    std::fs::remove_dir_all(provider.0.parent().unwrap()).unwrap();
}

/// The child's load: charges one new key after another (the provider in-process, instant), and
/// prints `ack N` once charge N is recorded; it is killed somewhere in the middle.
#[test]
fn index_crash_child_entry() {
    let Some((mode, dir)) = child_mode() else {
        return;
    };
    if mode != "index-load" {
        return;
    }
    let dir = Path::new(&dir);
    let provider = crate::support::FakeProvider::new();
    let (ledger, _) =
        Ledger::open(dir.join("ledger"), ledger_config(Arc::new(SystemClock))).unwrap();
    let run = std::process::id();
    for n in 0.. {
        let k = key(&format!("load-{run}-{n:06}"));
        let report = ledger
            .charge_once(
                &k,
                &intent(100 + n % 50),
                &*provider,
                Duration::from_secs(5),
            )
            .unwrap();
        if matches!(report.decision, Decision::AlreadySucceeded { .. }) {
            println!("ack {k}");
        }
    }
}

/// Issue 9: the index is crashed too. A child whose index is on the real file system is
/// SIGKILLed in the middle of a load (sled's buffers never flushed by a clean drop); after
/// reopening, every key's state is exactly what replaying the journal gives, and every
/// acknowledged charge is there.
#[test]
fn the_index_survives_sigkill_mid_load_and_matches_a_replay_of_the_journal() {
    if child_mode().is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = spawn_child(
            "ledger_crash::index_crash_child_entry",
            "index-load",
            tmp.path(),
        );
        let acks = ack_lines(&mut child);
        let mut acked = Vec::new();
        while acked.len() < 150 + round * 50 {
            acked.push(acks.recv_timeout(Duration::from_secs(30)).unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        acked.extend(acks.try_iter());
        let (ledger, _) = Ledger::open(
            tmp.path().join("ledger"),
            ledger_config(Arc::new(SystemClock)),
        )
        .unwrap();
        let mut replayed: std::collections::BTreeMap<IdempotencyKey, PaymentState> =
            std::collections::BTreeMap::new();
        for record in ledger.journal().read_from(Sequence(1)) {
            let event = payledger::journal::codec::decode_event(&record.unwrap().payload).unwrap();
            let state = replayed
                .remove(&event.key)
                .unwrap_or_else(|| PaymentState::new(event.key.clone()));
            replayed.insert(event.key.clone(), apply(&state, &event).unwrap());
        }
        for (k, state) in &replayed {
            let live = ledger.state(k).unwrap().unwrap();
            match (&state.phase, &live.phase) {
                // A charge the child was making when it died is unknown after the reopen.
                (Phase::InFlight { .. }, Phase::Unknown { .. }) => {}
                _ => assert_eq!(&live, state, "round {round}: {k}"),
            }
        }
        for k in &acked {
            assert!(
                matches!(
                    ledger.state(&key(k)).unwrap().map(|s| s.phase),
                    Some(Phase::Succeeded { .. })
                ),
                "round {round}: acknowledged charge {k} is there"
            );
        }
    }
}
