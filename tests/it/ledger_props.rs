//! Model test of the ledger: random operations on a handful of keys (begin, charge, record,
//! dropped tickets, reconcile, webhooks, crashes and reopen, injected journal failures). The
//! test plays the provider, so it knows the truth: no key is ever charged twice, and reopening
//! after a clean stop reproduces the same states.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use payledger::*;
use proptest::prelude::*;

use crate::support::{T0, intent, key};

#[derive(Clone, Debug)]
enum Op {
    /// Begin for key k; if an attempt is granted, charge for real or not, then report.
    Pay {
        k: usize,
        charge: bool,
        report: u8,
    },
    /// Begin for key k and drop the ticket without recording.
    PayAndDrop {
        k: usize,
        charge: bool,
    },
    Reconcile {
        advance_ms: u64,
    },
    Webhook {
        k: usize,
    },
    Reopen {
        tear: bool,
    },
    FailNextSync,
    FailNextWrite,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3, any::<bool>(), 0u8..4).prop_map(|(k, charge, report)| Op::Pay { k, charge, report }),
        1 => (0usize..3, any::<bool>()).prop_map(|(k, charge)| Op::PayAndDrop { k, charge }),
        3 => (0u64..40_000).prop_map(|advance_ms| Op::Reconcile { advance_ms }),
        1 => (0usize..3).prop_map(|k| Op::Webhook { k }),
        1 => any::<bool>().prop_map(|tear| Op::Reopen { tear }),
        1 => Just(Op::FailNextSync),
        1 => Just(Op::FailNextWrite),
    ]
}

/// The provider's truth: reference → (transaction id, declined?).
#[derive(Default)]
struct Truth {
    charged: HashMap<String, String>,
    declined: Vec<String>,
    charges_per_key: HashMap<String, usize>,
}

struct ModelProvider(Arc<Mutex<Truth>>);

impl Provider for ModelProvider {
    fn charge(&self, _: &ChargeRequest) -> ChargeReply {
        unreachable!("the test charges by hand")
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        let truth = self.0.lock().unwrap();
        if let Some(txn) = truth.charged.get(reference.as_str()) {
            QueryReply::Succeeded {
                transaction_id: txn.clone(),
                amount_minor: 100,
            }
        } else if truth.declined.iter().any(|r| r == reference.as_str()) {
            QueryReply::Declined {
                code: "card_declined".into(),
            }
        } else {
            QueryReply::NotFound
        }
    }
}

fn open(
    disk: &SimDisk,
    index_dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    index_engine: IndexEngine,
) -> Ledger {
    let config = LedgerConfig {
        index_engine,
        segment_len: 8192,
        index_dir: Some(index_dir.to_path_buf()),
        reconcile: ReconcileConfig::new(
            NotFoundPolicy::new(20_000, 1_000, 2).unwrap(),
            5,
            1_000,
            8_000,
            10,
        )
        .unwrap(),
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        storage: Arc::new(disk.clone()),
        ..LedgerConfig::default()
    };
    Ledger::open(PathBuf::from("/ledger"), config).unwrap().0
}

fn states(ledger: &Ledger, keys: &[IdempotencyKey]) -> Vec<Option<PaymentState>> {
    keys.iter().map(|k| ledger.state(k).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_key_is_ever_charged_twice(
        seed in any::<u64>(),
        fjall in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let engine = if fjall { IndexEngine::Fjall } else { IndexEngine::Sled };
        let tmp = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(seed);
        let clock = Arc::new(ManualClock::new(UnixMillis(T0)));
        let truth = Arc::new(Mutex::new(Truth::default()));
        let keys: Vec<_> = (0..3).map(|i| key(&format!("model-{i}"))).collect();
        let mut ledger = open(&disk, tmp.path(), &clock, engine);
        let mut failures_since_open = false;
        let mut txn = 0;
        let mut charge = |truth: &Arc<Mutex<Truth>>, k: &IdempotencyKey, ticket: &Ticket, really: bool| -> Option<String> {
            let mut truth = truth.lock().unwrap();
            if !really {
                truth.declined.push(ticket.provider_reference().to_string());
                return None;
            }
            txn += 1;
            let id = format!("ch_{txn}");
            truth.charged.insert(ticket.provider_reference().to_string(), id.clone());
            *truth.charges_per_key.entry(k.to_string()).or_default() += 1;
            Some(id)
        };
        // Every case charges at least once, so the oracle below is never vacuous.
        let ops = std::iter::once(Op::Pay { k: 0, charge: true, report: 0 }).chain(ops);
        for op in ops {
            match op {
                Op::Pay { k, charge: really, report } => {
                    let ticket = match ledger.begin(&keys[k], &intent(100)) {
                        Ok(Begin::Attempt(ticket)) => ticket,
                        Ok(_) => continue,
                        Err(e) => { expected_failure(&e, failures_since_open)?; continue; }
                    };
                    previous_attempt_did_not_charge(&truth, &keys[k], &ticket)?;
                    let charged = charge(&truth, &keys[k], &ticket, really);
                    let outcome = match (charged, report) {
                        (Some(id), 0 | 1) => Outcome::Succeeded { transaction_id: TransactionId::new(id).unwrap(), amount: Amount::new(100).unwrap() },
                        (None, 0 | 1) => Outcome::Declined { code: DeclineCode::new("card_declined").unwrap() },
                        // A provider that declined never "charged", but the test must not claim
                        // "not sent" for a request that reached the provider.
                        (None, 2) => { truth.lock().unwrap().declined.pop(); Outcome::NotSent { reason: NotSentReason::ConnectionRefused } }
                        _ => Outcome::Unknown { reason: UnknownReason::Timeout },
                    };
                    if let Err(e) = ledger.record(ticket, outcome) {
                        expected_failure(&e, failures_since_open)?;
                    }
                }
                Op::PayAndDrop { k, charge: really } => {
                    match ledger.begin(&keys[k], &intent(100)) {
                        Ok(Begin::Attempt(ticket)) => {
                            previous_attempt_did_not_charge(&truth, &keys[k], &ticket)?;
                            charge(&truth, &keys[k], &ticket, really);
                        }
                        Ok(_) => {}
                        Err(e) => expected_failure(&e, failures_since_open)?,
                    }
                }
                Op::Reconcile { advance_ms } => {
                    clock.advance(advance_ms);
                    let reconciler = Reconciler::new(ledger.clone(), ModelProvider(Arc::clone(&truth)));
                    if let Err(e) = reconciler.run_once() {
                        expected_failure(&e, failures_since_open)?;
                    }
                }
                Op::Webhook { k } => {
                    let charged: Vec<(String, String)> = truth.lock().unwrap().charged.iter()
                        .filter(|(r, _)| ledger.state(&keys[k]).ok().flatten().is_some() && r.starts_with("pl_"))
                        .map(|(r, t)| (r.clone(), t.clone()))
                        .collect();
                    for (reference, id) in charged {
                        let finding = Finding::Charged { transaction_id: TransactionId::new(id).unwrap(), amount: Amount::new(100).unwrap() };
                        if let Err(e) = ledger.record_evidence(&ProviderReference::new(reference).unwrap(), EvidenceSource::Webhook, finding) {
                            expected_failure(&e, failures_since_open)?;
                        }
                    }
                }
                Op::Reopen { tear } => {
                    let before = states(&ledger, &keys);
                    drop(ledger);
                    disk.fail_next_syncs(0);
                    disk.fail_next_writes(0);
                    disk.crash(if tear { CrashMode::TearUnsynced } else { CrashMode::DropUnsynced });
                    ledger = open(&disk, tmp.path(), &clock, engine);
                    if !failures_since_open {
                        // Orphaned attempts become unknown on reopen; everything else is as it was.
                        let after = states(&ledger, &keys);
                        for (b, a) in before.iter().zip(&after) {
                            match (b.as_ref().map(|s| &s.phase), a.as_ref().map(|s| &s.phase)) {
                                (Some(Phase::InFlight { .. }), Some(Phase::Unknown { reason: UnknownReason::ProcessEnded, .. })) => {}
                                _ => prop_assert_eq!(b, a),
                            }
                        }
                    }
                    failures_since_open = false;
                }
                Op::FailNextSync => { disk.fail_next_syncs(1); failures_since_open = true; }
                Op::FailNextWrite => { disk.fail_next_writes(1); failures_since_open = true; }
            }
            for (k, count) in &truth.lock().unwrap().charges_per_key {
                prop_assert!(*count <= 1, "key {} charged {} times", k, count);
            }
        }
        prop_assert!(!truth.lock().unwrap().charged.is_empty(), "the case charged nothing");
    }
}

/// A ledger call may fail only after the test injected a write or sync failure, and only with
/// the errors such a failure causes.
fn expected_failure(error: &Error, injected: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        injected,
        "a ledger call failed with no fault injected: {:?}",
        error
    );
    prop_assert!(
        matches!(
            error,
            Error::AppendFailed { .. } | Error::Poisoned { .. } | Error::IndexFailed { .. }
        ),
        "unexpected error kind: {:?}",
        error
    );
    Ok(())
}

/// The oracle, from the test's own books: a new attempt is granted only if the provider never
/// charged the previous one.
fn previous_attempt_did_not_charge(
    truth: &Arc<Mutex<Truth>>,
    k: &IdempotencyKey,
    ticket: &Ticket,
) -> Result<(), TestCaseError> {
    if let Some(previous) = ticket.attempt().get().checked_sub(1).filter(|&p| p > 0) {
        let reference = ProviderReference::derive(k, AttemptNumber::new(previous).unwrap());
        prop_assert!(
            !truth
                .lock()
                .unwrap()
                .charged
                .contains_key(reference.as_str()),
            "attempt {} of {} granted although attempt {} charged",
            ticket.attempt(),
            k,
            previous
        );
    }
    Ok(())
}
