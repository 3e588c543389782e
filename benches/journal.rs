//! Journal append throughput and latency against a raw group-commit baseline (bare pwrite +
//! fdatasync, no framing), at 1, 8, 32 and 64 concurrent appenders with 256-byte payloads; and
//! `verify` throughput. Run with `cargo bench --bench journal`; the p50/p99 table and the
//! journal/raw ratios are printed at the end.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Latencies, run_concurrent};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use payledger::journal::{Journal, JournalConfig};

const PAYLOAD_LEN: usize = 256;
const APPENDERS: [usize; 4] = [1, 8, 32, 64];
const FILE_LEN: u64 = 1 << 30;

/// The baseline: the same leader/follower group commit, but each caller's bytes are copied
/// into one buffer with no header, crc or hash.
struct Raw {
    file: File,
    state: Mutex<RawState>,
    changed: Condvar,
}

#[derive(Default)]
struct RawState {
    pending: Vec<u8>,
    next_ticket: u64,
    durable_ticket: u64,
    leader: bool,
    offset: u64,
}

impl Raw {
    fn new(dir: &std::path::Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("raw"))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < FILE_LEN {
            file.write_all_at(&zeros, at).unwrap();
            at += zeros.len() as u64;
        }
        file.sync_all().unwrap();
        Self {
            file,
            state: Mutex::new(RawState::default()),
            changed: Condvar::new(),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.pending.extend_from_slice(bytes);
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        loop {
            if state.durable_ticket >= ticket {
                return;
            }
            if !state.leader {
                state.leader = true;
                let batch = std::mem::take(&mut state.pending);
                let covers = state.next_ticket;
                let offset = state.offset % (FILE_LEN - (64 << 20));
                state.offset += batch.len() as u64;
                drop(state);
                self.file.write_all_at(&batch, offset).unwrap();
                self.file.sync_data().unwrap();
                state = self.state.lock().unwrap();
                state.durable_ticket = covers;
                state.leader = false;
                self.changed.notify_all();
                continue;
            }
            state = self.changed.wait(state).unwrap();
        }
    }
}

fn appends(c: &mut Criterion) {
    let latencies = Arc::new(Latencies::default());
    let mut group = c.benchmark_group("append_256B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for &threads in &APPENDERS {
        let tmp = tempfile::tempdir().unwrap();
        let raw = Arc::new(Raw::new(tmp.path()));
        let lat = Arc::clone(&latencies);
        group.bench_with_input(BenchmarkId::new("raw", threads), &threads, |b, &threads| {
            b.iter_custom(|iters| {
                let raw = Arc::clone(&raw);
                let payload = vec![7u8; PAYLOAD_LEN];
                let (elapsed, samples) =
                    run_concurrent(threads, iters, Arc::new(move |_, _| raw.append(&payload)));
                lat.add(&format!("raw/{threads}"), samples);
                elapsed
            })
        });
        drop(raw);

        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), JournalConfig::default()).unwrap();
        let journal = Arc::new(journal);
        let lat = Arc::clone(&latencies);
        group.bench_with_input(
            BenchmarkId::new("journal", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let journal = Arc::clone(&journal);
                    let (elapsed, samples) = run_concurrent(
                        threads,
                        iters,
                        Arc::new(move |_, _| {
                            journal.append(vec![vec![7u8; PAYLOAD_LEN]]).unwrap();
                        }),
                    );
                    lat.add(&format!("journal/{threads}"), samples);
                    elapsed
                })
            },
        );
    }
    group.finish();
    println!("\nappend latency, 256-byte payloads (all samples, warm-up included)");
    println!(
        "{:<12} {:>9} {:>8} {:>8}",
        "bench", "samples", "p50 µs", "p99 µs"
    );
    for (label, count, p50, p99) in latencies.summary() {
        println!("{label:<12} {count:>9} {p50:>8} {p99:>8}");
    }
}

fn verify(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(tmp.path(), JournalConfig::default()).unwrap();
    let journal = Arc::new(journal);
    // ~96 MiB of records over two segments, written by 64 appenders so that it is quick.
    let target = 96u64 << 20;
    let per_record = (PAYLOAD_LEN + payledger::journal::format::RECORD_HEADER_LEN) as u64;
    let writer = Arc::clone(&journal);
    run_concurrent(
        64,
        target / per_record / 8,
        Arc::new(move |_, _| {
            writer.append(vec![vec![7u8; PAYLOAD_LEN]; 8]).unwrap();
        }),
    );
    let bytes = journal.verify().unwrap().record_bytes;
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("journal_96MiB", |b| b.iter(|| journal.verify().unwrap()));
    group.finish();
}

criterion_group!(benches, appends, verify);
criterion_main!(benches);
