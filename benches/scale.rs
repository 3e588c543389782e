//! The ledger at scale: a million keys (three million events) by default, each phase in a
//! process of its own so that its peak memory is its own.
//!
//! ```text
//! cargo bench --bench scale                      # 1,000,000 keys: a few minutes on 2 cores
//! cargo bench --bench scale -- --keys 3400000    # ~10 million events: the reopen target
//! cargo bench --bench scale -- --smoke           # CI: 2,000 keys, checks every phase runs
//! cargo bench --bench scale -- --engine sled     # sled's index instead of fjall (the default)
//! ```
//!
//! Phases, each a child process of this binary (`--phase NAME DIR`):
//!
//! - `build`: `--keys` charges (`begin` → a success → `record`) from 32 threads with the
//!   default configuration: charges/s and peak memory of a process writing that many keys.
//! - sizes: the journal's record bytes and the index directory's allocated bytes, per key.
//! - `rebuild`: `Ledger::rebuild_index` (the index deleted, replayed from the journal):
//!   events/s and peak memory.
//! - `reopen`, twice: `Ledger::open` with the index present and caught up: wall time and peak
//!   memory. The first open after the process that wrote the index also replays sled's own
//!   log since that process opened it (sled 0.34 writes its snapshot only when it starts); the
//!   second shows an open with sled's snapshot current.
//! - `lookup`: `Ledger::state` of random existing keys from one thread for a few seconds:
//!   lookups/s, p50 and p99, and peak memory of a process serving that many keys.
//!
//! Peak memory is the child's `VmHWM` from `/proc/self/status` (Linux).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use payledger::{
    AccountId, Amount, Begin, Currency, CustomerRef, Description, IdempotencyKey, IndexEngine,
    Intent, Ledger, LedgerConfig, Metadata, Outcome, TransactionId,
};

const BUILD_THREADS: u64 = 32;
const LOOKUP_SECONDS: u64 = 3;
/// The environment variable that passes `--engine` to the phases.
const ENGINE_VAR: &str = "PAYLEDGER_SCALE_ENGINE";

/// The index engine named `name`.
fn engine(name: &str) -> Result<IndexEngine, String> {
    match name {
        "sled" => Ok(IndexEngine::Sled),
        "fjall" => Ok(IndexEngine::Fjall),
        other => Err(format!("unknown index engine {other:?} (sled, fjall)")),
    }
}

/// The default configuration, with the index engine this run measures.
fn ledger_config() -> LedgerConfig {
    let name = std::env::var(ENGINE_VAR).unwrap_or_else(|_| "fjall".into());
    LedgerConfig {
        index_engine: engine(&name).unwrap_or_default(),
        ..LedgerConfig::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--phase") {
        let (Some(phase), Some(dir)) = (args.get(at + 1), args.get(at + 2)) else {
            eprintln!("usage: scale --phase NAME DIR [KEYS]");
            return ExitCode::from(2);
        };
        let keys = args.get(at + 3).and_then(|k| k.parse().ok()).unwrap_or(0);
        return run_phase(phase, Path::new(dir), keys);
    }
    let smoke = args.iter().any(|a| a == "--smoke" || a == "--test")
        || !args.iter().any(|a| a == "--bench");
    let keys = value_of(&args, "--keys").unwrap_or(if smoke { 2_000 } else { 1_000_000 });
    let engine_name = args
        .iter()
        .position(|a| a == "--engine")
        .and_then(|at| args.get(at + 1))
        .map_or("fjall", String::as_str);
    if let Err(e) = engine(engine_name) {
        eprintln!("scale: {e}");
        return ExitCode::from(2);
    }
    match run_all(keys, smoke, engine_name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn value_of(args: &[String], flag: &str) -> Option<u64> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{flag}="))
            .map(str::to_string)
            .or_else(|| (a == flag).then(|| args.get(i + 1).cloned()).flatten())
            .and_then(|v| v.parse().ok())
    })
}

/// Runs every phase in a child process and prints the figures.
fn run_all(keys: u64, smoke: bool, engine: &str) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("ledger");
    println!("# payledger at scale: {keys} keys, {engine} index");
    println!(
        "- command: `cargo bench --bench scale -- --keys {keys} --engine {engine}`; {} cores",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let child = |phase: &str| child(phase, &dir, keys, engine);
    let build = child("build")?;
    let (journal_bytes, index_bytes) = sizes(&dir)?;
    let rebuild = child("rebuild")?;
    let reopen = child("reopen")?;
    let reopen_again = child("reopen")?;
    let lookup = child("lookup")?;
    let per_key = |bytes: u64| bytes as f64 / keys.max(1) as f64;
    println!();
    println!("| phase | figure | peak memory |");
    println!("| --- | ---: | ---: |");
    println!(
        "| build ({BUILD_THREADS} threads) | {} | {} |",
        build.figure,
        mib(build.peak_kib)
    );
    println!(
        "| rebuild the index | {} | {} |",
        rebuild.figure,
        mib(rebuild.peak_kib)
    );
    println!(
        "| reopen, index present, first after the rebuild | {} | {} |",
        reopen.figure,
        mib(reopen.peak_kib)
    );
    println!(
        "| reopen again | {} | {} |",
        reopen_again.figure,
        mib(reopen_again.peak_kib)
    );
    println!(
        "| random `state`, one thread | {} | {} |",
        lookup.figure,
        mib(lookup.peak_kib)
    );
    println!();
    println!(
        "- journal: {:.0} record bytes per key; index: {:.0} allocated bytes per key ({:.2}x the journal)",
        per_key(journal_bytes),
        per_key(index_bytes),
        index_bytes as f64 / journal_bytes.max(1) as f64
    );
    if smoke {
        println!("smoke: ok");
    }
    Ok(())
}

/// What a phase reports: its figure, and its process's peak memory.
struct Phase {
    figure: String,
    peak_kib: u64,
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// Runs `phase` in a child process of this binary.
fn child(phase: &str, dir: &Path, keys: u64, engine: &str) -> Result<Phase, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .env(ENGINE_VAR, engine)
        .args(["--phase", phase])
        .arg(dir)
        .arg(keys.to_string())
        .output()
        .map_err(|e| format!("running phase {phase}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "phase {phase} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut lines = stdout.lines().rev();
    let peak_kib = lines
        .next()
        .and_then(|l| l.strip_prefix("peak_kib "))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("phase {phase} printed no peak: {stdout}"))?;
    let figure = lines.next().unwrap_or_default().to_string();
    eprintln!("{phase}: {figure}");
    Ok(Phase { figure, peak_kib })
}

/// The journal's record bytes (from `verify`) and the index directory's allocated bytes.
fn sizes(dir: &Path) -> Result<(u64, u64), String> {
    let config = LedgerConfig {
        read_only: true,
        create_if_missing: false,
        ..LedgerConfig::default()
    };
    let journal = payledger::journal::Journal::open_read_only(config.storage.clone(), dir, || {
        Ok(payledger::Sequence(0))
    })
    .map_err(|e| e.to_string())?
    .0;
    let record_bytes = journal.verify().map_err(|e| e.to_string())?.record_bytes;
    Ok((record_bytes, allocated(&dir.join("index"))))
}

/// Bytes allocated on disk under `path`.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries.flatten().map(|e| allocated(&e.path())).sum::<u64>()
    })
}

fn run_phase(phase: &str, dir: &Path, keys: u64) -> ExitCode {
    let figure = match phase {
        "build" => build(dir, keys),
        "rebuild" => rebuild(dir),
        "reopen" => reopen(dir),
        "lookup" => lookup(dir, keys),
        other => Err(format!("unknown phase {other}")),
    };
    match figure {
        Ok(figure) => {
            println!("{figure}");
            println!("peak_kib {}", peak_kib());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// This process's peak resident memory (`VmHWM`), in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn key(n: u64) -> IdempotencyKey {
    IdempotencyKey::new(format!("order-{n:09}/pay")).expect("a valid key")
}

fn intent() -> Intent {
    Intent {
        amount: Amount::new(4_999).expect("an amount"),
        currency: Currency::new("EUR").expect("a currency"),
        account: AccountId::new("acct_bench").expect("an account"),
        customer: CustomerRef::new("cus_bench").expect("a customer"),
        description: Some(Description::new("benchmark order").expect("a description")),
        metadata: Metadata::default(),
    }
}

fn build(dir: &Path, keys: u64) -> Result<String, String> {
    let (ledger, _) = Ledger::open(dir, ledger_config()).map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..BUILD_THREADS {
            let (ledger, next) = (ledger.clone(), Arc::clone(&next));
            scope.spawn(move || -> Result<(), String> {
                let intent = intent();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= keys {
                        return Ok(());
                    }
                    let begun = ledger.begin(&key(n), &intent).map_err(|e| e.to_string())?;
                    let Begin::Attempt(ticket) = begun else {
                        return Err(format!("key {n} did not start an attempt"));
                    };
                    let outcome = Outcome::Succeeded {
                        transaction_id: TransactionId::new(format!("ch_{n}"))
                            .map_err(|e| e.to_string())?,
                        amount: intent.amount,
                    };
                    ledger.record(ticket, outcome).map_err(|e| e.to_string())?;
                }
            });
        }
    });
    ledger.wait_indexed().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    Ok(format!(
        "{:.0} charges/s ({keys} in {:.1} s)",
        keys as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    ))
}

fn rebuild(dir: &Path) -> Result<String, String> {
    let started = Instant::now();
    let (ledger, report) =
        Ledger::rebuild_index(dir, ledger_config()).map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let events = match report.index {
        payledger::IndexRecovery::Rebuilt { events, .. } => events,
        other => return Err(format!("expected a rebuild, got {other:?}")),
    };
    drop(ledger);
    Ok(format!(
        "{:.0} events/s ({events} events in {:.1} s)",
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    ))
}

fn reopen(dir: &Path) -> Result<String, String> {
    let started = Instant::now();
    let (ledger, _) = Ledger::open(dir, ledger_config()).map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let last = ledger.journal().last_sequence();
    Ok(format!(
        "{:.3} s ({} events in the journal)",
        elapsed.as_secs_f64(),
        last.0
    ))
}

fn lookup(dir: &Path, keys: u64) -> Result<String, String> {
    let (ledger, _) = Ledger::open(dir, ledger_config()).map_err(|e| e.to_string())?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(LOOKUP_SECONDS) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let k = key(state % keys.max(1));
        let at = Instant::now();
        let found = ledger.state(&k).map_err(|e| e.to_string())?;
        latencies.push(at.elapsed().as_nanos() as u64);
        if found.is_none() {
            return Err(format!("{k} not found"));
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] / 1_000;
    Ok(format!(
        "{:.0} lookups/s (p50 {} µs, p99 {} µs)",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99)
    ))
}
