//! Issue 8: the holes a hostile production found in the promise, one regression test each.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use payledger::*;

use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(200);

fn phase(ledger: &Ledger, k: &IdempotencyKey) -> Phase {
    ledger.state(k).unwrap().unwrap().phase
}

/// 8.1: a forward step of the wall clock must not shorten the provider's visibility delay.
#[test]
fn a_wall_clock_step_does_not_make_not_found_trusted_early() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    *provider.lose_next.lock().unwrap() = true;
    *provider.reply_override.lock().unwrap() = Some(ChargeReply::Timeout);
    let k = key("order-clock-step");
    ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    *provider.reply_override.lock().unwrap() = None;
    // NTP or a VM resume steps the wall clock 10 minutes forward.
    clock.set(UnixMillis(clock.now().0 + 10 * 60_000));
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(&provider));
    let mut not_found_answers = 0;
    for _ in 0..200 {
        clock.advance(100);
        let before = provider.query_calls.load(Ordering::SeqCst);
        reconciler.run_once().unwrap();
        not_found_answers += provider.query_calls.load(Ordering::SeqCst) - before;
        if not_found_answers >= 3 {
            break;
        }
    }
    assert!(not_found_answers >= 3, "the provider was asked three times");
    assert!(
        matches!(phase(&ledger, &k), Phase::Unknown { .. }),
        "still unknown: {:?}",
        phase(&ledger, &k)
    );
    let early = ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(!early.called_provider, "no second attempt within the delay");
    assert_eq!(provider.charge_calls(), 1);
}

/// 8.2: an index watermark ahead of the journal's end proves acknowledged records were lost.
#[test]
fn a_damaged_acknowledged_last_record_is_an_error_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = FakeProvider::new();
    let last = {
        let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
        for i in 0..5 {
            ledger
                .charge_once(
                    &key(&format!("ack-{i}")),
                    &intent(100),
                    &*provider,
                    DEADLINE,
                )
                .unwrap();
        }
        ledger.journal().last_sequence()
    };
    // Bit rot in the last acknowledged record.
    let segment = tmp.path().join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 3] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    match Ledger::open(tmp.path(), config(&clock)) {
        Err(Error::IndexAhead {
            watermark,
            journal_last,
            ..
        }) => {
            assert_eq!(watermark, last);
            assert_eq!(journal_last, Sequence(last.0 - 1));
        }
        other => panic!("expected the index to prove the loss, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the damaged record is left for an operator, not cut"
    );
}

/// 8.2: an index copied from another ledger is detected by its chain hash, not served.
#[test]
fn an_index_from_another_ledger_is_detected_and_rebuilt() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = FakeProvider::new();
    for (dir, amount) in [(a.path(), 100), (b.path(), 200)] {
        let (ledger, _) = Ledger::open(dir, config(&clock)).unwrap();
        for i in 0..4 {
            *provider.reply_override.lock().unwrap() =
                (amount == 200).then_some(ChargeReply::Timeout);
            ledger
                .charge_once(
                    &key(&format!("k{i}")),
                    &intent(amount),
                    &*provider,
                    DEADLINE,
                )
                .unwrap();
        }
    }
    std::fs::remove_dir_all(a.path().join("index")).unwrap();
    copy_dir(&b.path().join("index"), &a.path().join("index"));
    let (ledger, report) = Ledger::open(a.path(), config(&clock)).unwrap();
    assert!(
        matches!(report.index, IndexRecovery::Rebuilt { .. }),
        "{:?}",
        report.index
    );
    for i in 0..4 {
        assert!(
            matches!(phase(&ledger, &key(&format!("k{i}"))), Phase::Succeeded { amount, .. } if amount.minor() == 100)
        );
    }
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A provider whose charge blocks until the test lets it answer.
struct HungProvider {
    inner: Arc<FakeProvider>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Provider for HungProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let reply = self.inner.charge(request);
        let _ = self.release.lock().unwrap().recv();
        reply
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        self.inner.query(reference)
    }
}

/// 8.3: a provider call that never returns must not pin the key in flight forever.
#[test]
fn a_hung_provider_call_becomes_unknown_when_its_lease_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let (release, receiver) = mpsc::channel();
    let fake = FakeProvider::new();
    let hung = Arc::new(HungProvider {
        inner: Arc::clone(&fake),
        release: Mutex::new(receiver),
    });
    let k = key("order-hung");
    let caller = {
        let (ledger, hung, k) = (ledger.clone(), Arc::clone(&hung), k.clone());
        std::thread::spawn(move || {
            ledger
                .charge_once(&k, &intent(1_000), &*hung, DEADLINE)
                .unwrap()
        })
    };
    // The caller is inside the provider call (or failed before it: then stop, not hang).
    while fake.charge_calls() == 0 && !caller.is_finished() {
        std::thread::yield_now();
    }
    assert_eq!(fake.charge_calls(), 1, "the caller reached the provider");
    assert!(matches!(phase(&ledger, &k), Phase::InFlight { .. }));
    // Within its lease the live ticket is left alone: its caller may still record the reply.
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(&fake));
    reconciler.run_once().unwrap();
    assert!(
        matches!(phase(&ledger, &k), Phase::InFlight { .. }),
        "a live ticket within its lease is not taken over: {:?}",
        phase(&ledger, &k)
    );
    // Long after any lease, the reconciler takes the attempt over.
    clock.advance(3_600_000);
    reconciler.run_once().unwrap();
    assert!(
        matches!(phase(&ledger, &k), Phase::Unknown { .. }),
        "{:?}",
        phase(&ledger, &k)
    );
    // The provider finally answers: the late success is evidence, not a second charge.
    release.send(()).unwrap();
    let report = caller.join().unwrap();
    assert!(report.called_provider);
    assert!(matches!(phase(&ledger, &k), Phase::Succeeded { .. }));
    assert_eq!(fake.charge_calls(), 1);
}

struct PanickingProvider;

impl Provider for PanickingProvider {
    fn charge(&self, _: &ChargeRequest) -> ChargeReply {
        panic!("provider client bug")
    }
    fn query(&self, _: &ProviderReference) -> QueryReply {
        QueryReply::Pending
    }
}

/// 8.3: a provider that panics leaves the key for the reconciler, never retryable.
#[test]
fn a_panicking_provider_leaves_the_key_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let k = key("order-panic");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ledger.charge_once(&k, &intent(1_000), &PanickingProvider, DEADLINE)
    }));
    assert!(result.is_err(), "the panic reaches the caller");
    assert!(matches!(
        ledger.begin(&k, &intent(1_000)).unwrap(),
        Begin::AwaitingReconciliation { .. }
    ));
    assert!(matches!(phase(&ledger, &k), Phase::Unknown { .. }));
}

/// 8.4: an `index_dir` that is the ledger directory (or holds it) is refused, and nothing of
/// the journal is deleted.
#[test]
fn an_index_dir_holding_the_journal_is_refused_and_nothing_is_deleted() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("ledger");
    let clock = clock();
    let provider = FakeProvider::new();
    {
        let (ledger, _) = Ledger::open(&dir, config(&clock)).unwrap();
        ledger
            .charge_once(&key("keep-me"), &intent(100), &*provider, DEADLINE)
            .unwrap();
    }
    // Something sled cannot open, so that the old code "cleans up" the directory.
    std::fs::write(dir.join("conf"), b"not a sled config").unwrap();
    std::fs::write(parent.path().join("conf"), b"not a sled config").unwrap();
    let segment = dir.join("00000000000000000000.seg");
    let before = std::fs::read(&segment).unwrap();
    for index_dir in [dir.clone(), parent.path().to_path_buf()] {
        let result = Ledger::open(
            &dir,
            LedgerConfig {
                index_dir: Some(index_dir.clone()),
                ..config(&clock)
            },
        );
        assert!(
            matches!(result, Err(Error::Input(InputError::IndexDir { .. }))),
            "{index_dir:?}: {result:?}"
        );
        assert_eq!(std::fs::read(&segment).unwrap(), before, "journal intact");
    }
}

/// 8.7: a conflict found on attempt 1 must not hide attempt 2, which may have charged too.
#[test]
fn a_conflict_on_an_earlier_attempt_keeps_the_open_attempt_reconciled() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (ledger, _) = Ledger::open(tmp.path(), config(&clock)).unwrap();
    let provider = FakeProvider::new();
    let k = key("order-two-doubts");
    // Attempt 1: the provider loses the charge; "not found" is trusted after the delay.
    *provider.lose_next.lock().unwrap() = true;
    *provider.reply_override.lock().unwrap() = Some(ChargeReply::Timeout);
    ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    let reconciler = Reconciler::new(ledger.clone(), Arc::clone(&provider));
    for _ in 0..300 {
        clock.advance(1_000);
        reconciler.run_once().unwrap();
        if matches!(phase(&ledger, &k), Phase::Ready { .. }) {
            break;
        }
    }
    assert!(matches!(phase(&ledger, &k), Phase::Ready { .. }));
    // Attempt 2 times out: unknown.
    ledger
        .charge_once(&k, &intent(1_000), &*provider, DEADLINE)
        .unwrap();
    assert!(matches!(phase(&ledger, &k), Phase::Unknown { attempt, .. } if attempt.get() == 2));
    // The settlement file shows attempt 1 charged after all: a conflict.
    let (reference, txn, amount) = provider.lost.lock().unwrap()[0].clone();
    let outcome = ledger
        .record_evidence(
            &ProviderReference::new(reference).unwrap(),
            EvidenceSource::Settlement,
            Finding::Charged {
                transaction_id: TransactionId::new(txn).unwrap(),
                amount: Amount::new(amount).unwrap(),
            },
        )
        .unwrap();
    assert_eq!(outcome, EvidenceOutcome::Conflict);
    assert_eq!(ledger.health().unwrap().conflict, 1);
    // Attempt 2 is still asked about until the provider answers for it.
    let second = ProviderReference::derive(&k, AttemptNumber::new(2).unwrap());
    let queries_before = provider.query_calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        clock.advance(5_000);
        reconciler.run_once().unwrap();
    }
    assert!(
        provider.query_calls.load(Ordering::SeqCst) > queries_before,
        "attempt 2 is queried"
    );
    let settled = ledger.history(&k).unwrap().into_iter().any(|entry| {
        matches!(entry.event.kind, EventKind::ProviderQueried { attempt, answer: QueryAnswer::FoundSucceeded { .. } } if attempt.get() == 2)
    });
    assert!(settled, "the answer about attempt 2 is recorded");
    assert_eq!(provider.charges.lock().unwrap().len(), 1);
    assert!(
        provider
            .charges
            .lock()
            .unwrap()
            .contains_key(second.as_str())
    );
    assert!(matches!(phase(&ledger, &k), Phase::Conflict { .. }));
}

/// 8.2 (stronger evidence): damage anywhere in the last acknowledged record stops the open;
/// the journal alone could take it for a torn tail, the index's watermark proves otherwise.
#[test]
fn every_flipped_byte_of_the_last_acknowledged_commit_stops_the_open() {
    let index = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(17);
    let clock = clock();
    let config = || LedgerConfig {
        storage: Arc::new(disk.clone()),
        index_dir: Some(index.path().to_path_buf()),
        ..config(&clock)
    };
    let provider = FakeProvider::new();
    let last = {
        let (ledger, _) = Ledger::open("/ledger", config()).unwrap();
        for i in 0..3 {
            ledger
                .charge_once(
                    &key(&format!("flip-{i}")),
                    &intent(100),
                    &*provider,
                    DEADLINE,
                )
                .unwrap();
        }
        ledger.journal().last_sequence()
    };
    let segment = std::path::Path::new("/ledger").join("00000000000000000000.seg");
    let original = disk.durable_bytes(&segment).unwrap();
    // The last commit frame: the charge's outcome, acknowledged.
    let (start, end, records) = *crate::support::frames(&original).last().unwrap();
    assert_eq!(records, 1, "one outcome record");
    for at in start..end {
        let mut bytes = original.clone();
        bytes[at] ^= 1 << (at % 8);
        disk.put_bytes(&segment, bytes.clone());
        match Ledger::open("/ledger", config()) {
            Err(Error::IndexAhead { watermark, .. }) => assert_eq!(watermark, last),
            Err(Error::Corrupt { .. }) => {}
            Ok(_) => panic!("byte {at} of the last acknowledged record: opened without it"),
            Err(other) => panic!("byte {at}: unexpected {other:?}"),
        }
        assert_eq!(
            disk.current_bytes(&segment).unwrap(),
            bytes,
            "byte {at}: nothing was cut"
        );
    }
    disk.put_bytes(&segment, original);
    let (ledger, _) = Ledger::open("/ledger", config()).unwrap();
    assert_eq!(ledger.journal().last_sequence(), last);
}

/// Found in review: a key whose outcome could not be written is unknown in this process until
/// something settles it. Evidence (a webhook) that settles it must also end that: `begin` then
/// answers what the ledger now knows, not "awaiting reconciliation" until a restart.
#[test]
fn evidence_that_settles_a_key_whose_outcome_could_not_be_written_ends_its_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = clock();
    let (config, faults) = faulty_index_config(&clock);
    let (ledger, _) = Ledger::open(tmp.path(), config).unwrap();
    let k = key("unwritten-then-webhook");
    let Begin::Attempt(ticket) = ledger.begin(&k, &intent(700)).unwrap() else {
        panic!("a new key starts an attempt");
    };
    let reference = ticket.provider_reference().clone();
    // The index has applied the attempt, so `record` reads it from the index: that read fails.
    ledger.wait_indexed().unwrap();
    faults.fail_next_gets(1);
    let paid = Outcome::Succeeded {
        transaction_id: TransactionId::new("ch_unwritten").unwrap(),
        amount: Amount::new(700).unwrap(),
    };
    assert!(ledger.record(ticket, paid).is_err());
    assert!(matches!(
        ledger.state(&k).unwrap().unwrap().phase,
        Phase::Unknown {
            reason: UnknownReason::LocalWriteFailed,
            ..
        }
    ));
    assert!(matches!(
        ledger.begin(&k, &intent(700)).unwrap(),
        Begin::AwaitingReconciliation { .. }
    ));
    // The provider's webhook says it was charged.
    let settled = ledger
        .record_evidence(
            &reference,
            EvidenceSource::Webhook,
            Finding::Charged {
                transaction_id: TransactionId::new("ch_unwritten").unwrap(),
                amount: Amount::new(700).unwrap(),
            },
        )
        .unwrap();
    assert!(
        matches!(settled, EvidenceOutcome::Settled(Phase::Succeeded { .. })),
        "{settled:?}"
    );
    let again = ledger.begin(&k, &intent(700)).unwrap();
    assert!(matches!(again, Begin::AlreadySucceeded { .. }), "{again:?}");
    assert!(matches!(
        ledger.state(&k).unwrap().unwrap().phase,
        Phase::Succeeded { .. }
    ));
}
