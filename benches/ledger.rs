//! End-to-end `begin` + `record` throughput and latency at 1, 8, 32 and 64 threads over distinct
//! keys: one durable intent+attempt append and one outcome append per payment, plus the index
//! updates. Run with `cargo bench --bench ledger`; p50/p99 are printed at the end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Latencies, run_concurrent};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use payledger::*;

fn intent() -> Intent {
    Intent {
        amount: Amount::new(4_999).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_bench").unwrap(),
        customer: CustomerRef::new("cus_bench").unwrap(),
        description: Some(Description::new("benchmark order").unwrap()),
        metadata: Metadata::default(),
    }
}

fn begin_record(c: &mut Criterion) {
    let latencies = Arc::new(Latencies::default());
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(tmp.path(), LedgerConfig::default()).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let intent = Arc::new(intent());
    let mut group = c.benchmark_group("begin_record");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    for threads in [1usize, 8, 32, 64] {
        let lat = Arc::clone(&latencies);
        let (ledger, counter, intent) = (ledger.clone(), Arc::clone(&counter), Arc::clone(&intent));
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            move |b, &threads| {
                b.iter_custom(|iters| {
                    let (ledger, counter, intent) =
                        (ledger.clone(), Arc::clone(&counter), Arc::clone(&intent));
                    let op = move |_, _| {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let key = IdempotencyKey::new(format!("bench-{n}")).unwrap();
                        let Begin::Attempt(ticket) = ledger.begin(&key, &intent).unwrap() else {
                            panic!("new key")
                        };
                        let outcome = Outcome::Succeeded {
                            transaction_id: TransactionId::new(format!("ch_{n}")).unwrap(),
                            amount: intent.amount,
                        };
                        ledger.record(ticket, outcome).unwrap();
                    };
                    let (elapsed, samples) = run_concurrent(threads, iters, Arc::new(op));
                    lat.add(&format!("ledger/{threads}"), samples);
                    elapsed
                })
            },
        );
    }
    group.finish();
    println!("\nbegin+record latency (all samples, warm-up included)");
    println!(
        "{:<12} {:>9} {:>8} {:>8}",
        "bench", "samples", "p50 µs", "p99 µs"
    );
    for (label, count, p50, p99) in latencies.summary() {
        println!("{label:<12} {count:>9} {p50:>8} {p99:>8}");
    }
}

criterion_group!(benches, begin_record);
criterion_main!(benches);
