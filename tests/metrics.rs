//! What the library emits through the `metrics` facade, read back with a debugging recorder:
//! every documented name appears with the labels `docs/metrics.md` gives it, with the counts
//! of what happened.

use std::collections::HashMap;
use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use payledger::*;

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

fn intent(amount: u64) -> Intent {
    Intent {
        amount: Amount::new(amount).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

fn charged(id: &str, amount: u64) -> Outcome {
    Outcome::Succeeded {
        transaction_id: TransactionId::new(id).unwrap(),
        amount: Amount::new(amount).unwrap(),
    }
}

/// name{label=value,...} → value, for counters and gauges; histograms → their sample count.
fn snapshot(recorder: &metrics_util::debugging::Snapshotter) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in recorder.snapshot().into_vec() {
        let key: CompositeKey = key;
        let mut labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
        let value = match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => n as f64,
            (MetricKind::Gauge, DebugValue::Gauge(g)) => g.into_inner(),
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => samples.len() as f64,
            _ => f64::NAN,
        };
        out.insert(name, value);
    }
    out
}

#[test]
fn the_documented_metrics_count_what_happened() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixMillis(1_800_000_000_000)));
    let config = LedgerConfig {
        clock: Arc::clone(&clock) as Arc<dyn Clock>,
        ..LedgerConfig::default()
    };
    let (ledger, _) = Ledger::open(tmp.path(), config).unwrap();

    // A success, a double click answered from the ledger, a timeout.
    let paid = key("m-paid");
    let Begin::Attempt(ticket) = ledger.begin(&paid, &intent(500)).unwrap() else {
        panic!("new key")
    };
    ledger.record(ticket, charged("ch_1", 500)).unwrap();
    assert!(matches!(
        ledger.begin(&paid, &intent(500)).unwrap(),
        Decision::AlreadySucceeded { .. }
    ));
    let lost = key("m-lost");
    let Begin::Attempt(ticket) = ledger.begin(&lost, &intent(700)).unwrap() else {
        panic!("new key")
    };
    let reference = ticket.provider_reference().clone();
    ledger
        .record(
            ticket,
            Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
        )
        .unwrap();
    // A settlement line shows another charge for the paid key: a conflict.
    ledger
        .record_evidence(
            &ProviderReference::derive(&paid, AttemptNumber::FIRST),
            EvidenceSource::Settlement,
            Finding::Charged {
                transaction_id: TransactionId::new("ch_other").unwrap(),
                amount: Amount::new(500).unwrap(),
            },
        )
        .unwrap();
    // A refund of the lost key is refused before anything is written: nothing captured.
    assert!(
        ledger
            .begin_operation(
                &lost,
                OperationKind::Refund,
                &RequestId::new("r-1").unwrap(),
                Amount::new(1).unwrap(),
            )
            .is_err()
    );
    clock.advance(60_000);
    let health = ledger.health().unwrap();
    assert_eq!((health.unknown, health.conflict), (1, 1));

    let m = snapshot(&snapshotter);
    let get = |name: &str| m.get(name).copied().unwrap_or_default();
    assert_eq!(
        get("payledger_decisions_total{decision=attempt,track=purchase}"),
        2.0
    );
    assert_eq!(
        get("payledger_decisions_total{decision=already-succeeded,track=purchase}"),
        1.0
    );
    assert_eq!(
        get("payledger_outcomes_total{outcome=succeeded,track=purchase}"),
        1.0
    );
    assert_eq!(
        get("payledger_outcomes_total{outcome=unknown,track=purchase}"),
        1.0
    );
    assert_eq!(get("payledger_conflicts_total{track=purchase}"), 1.0);
    assert!(get("payledger_journal_sync_seconds{}") >= 5.0, "{m:#?}");
    assert!(get("payledger_journal_bytes_total{}") > 0.0);
    assert_eq!(get("payledger_keys{phase=unknown}"), 1.0);
    assert_eq!(get("payledger_keys{phase=conflict}"), 1.0);
    assert_eq!(get("payledger_oldest_unknown_seconds{}"), 60.0);
    assert_eq!(get("payledger_stopped{}"), 0.0);
    assert!(m.contains_key("payledger_index_lag_commits{}"));
    assert!(m.contains_key("payledger_oldest_in_flight_seconds{}"));
    assert!(m.contains_key("payledger_oldest_review_seconds{}"));
    assert!(m.contains_key("payledger_oldest_operation_unknown_seconds{kind=refund}"));

    // The reconciler's query and charge_once's provider call.
    struct Charged;
    impl Provider for Charged {
        fn charge(&self, _: &ChargeRequest) -> ChargeReply {
            ChargeReply::Charged {
                transaction_id: "ch_9".into(),
                amount_minor: 900,
            }
        }
        fn query(&self, _: &ProviderReference) -> QueryReply {
            QueryReply::Succeeded {
                transaction_id: "ch_lost".into(),
                amount_minor: 700,
            }
        }
    }
    let _ = reference;
    Reconciler::new(ledger.clone(), Charged).run_once().unwrap();
    ledger
        .charge_once(
            &key("m-once"),
            &intent(900),
            &Charged,
            std::time::Duration::from_millis(500),
        )
        .unwrap();
    let m = snapshot(&snapshotter);
    assert_eq!(
        m.get("payledger_queries_total{answer=found_succeeded,track=purchase}"),
        Some(&1.0),
        "{m:#?}"
    );
    assert_eq!(m.get("payledger_provider_call_seconds{}"), Some(&1.0));
}
