//! `payledger bench DIR`: what the disk under DIR allows, and what the ledger achieves on it, for
//! sizing a disk before going live.
//!
//! Three measurements, each a closed loop of N callers (threads) for one window:
//!
//! - *sync*: one thread writes 256 bytes into a preallocated file and calls `fdatasync`: the
//!   latency of one durable write, the floor under every commit.
//! - *journal*: N threads append 256-byte records through [`payledger::journal::Journal`], which
//!   shares one `fdatasync` among concurrent appends (group commit): the raw limit of durable
//!   records per second, with payledger's framing, crc and chain hash.
//! - *ledger*: N threads charge fresh keys through a [`Ledger`] with the default configuration:
//!   `begin`, an in-memory success, `record`. A charge's latency covers both durable steps.
//!
//! An operation counts if it completed inside its window. Latencies go into a fixed-size
//! histogram, so memory does not grow with the window.
//!
//! Invariant: nothing is written outside one scratch directory, `DIR/payledger-bench-PID`, which
//! this command creates (never one that exists) and removes on every exit it controls: success,
//! error, panic. A signal (Ctrl-C) ends the process without unwinding and leaves it behind.

use hdrhistogram::Histogram;
use std::fs::OpenOptions;
use std::io::{ErrorKind, IsTerminal};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use payledger::journal::{Journal, JournalConfig};
use payledger::{
    AccountId, Amount, Begin, Currency, CustomerRef, Error, IdempotencyKey, Intent, Ledger,
    LedgerConfig, Metadata, Outcome, TransactionId,
};

/// Bytes of every raw write and journal record: a small event.
const RECORD_LEN: usize = 256;
/// The sync file is preallocated to this length and written round and round, so that no sync
/// has to write the file's size.
const SYNC_FILE_LEN: u64 = 1 << 20;
/// The longest window: bounds the run's time and the disk it fills (a fast disk takes about
/// 100,000 records a second, 30 MB, into the journal).
const SECONDS_MAX: f64 = 60.0;
/// The most callers: beyond this, the machine's scheduler is measured rather than the disk.
const CALLERS_MAX: usize = 256;

/// What to run.
pub struct Options {
    /// Each measurement's window.
    pub window: Duration,
    /// The concurrencies of the journal and ledger measurements.
    pub callers: Vec<usize>,
    /// One JSON object instead of the table.
    pub json: bool,
}

/// `--seconds`: a positive number of seconds up to [`SECONDS_MAX`].
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|seconds| *seconds > 0.0 && *seconds <= SECONDS_MAX)
        .map(Duration::from_secs_f64)
        .ok_or(format!(
            "wants seconds above 0 and up to {SECONDS_MAX}, not {text:?}"
        ))
}

/// One `--callers` count: from 1 to [`CALLERS_MAX`].
pub fn parse_callers(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|callers| (1..=CALLERS_MAX).contains(callers))
        .ok_or(format!(
            "wants counts from 1 to {CALLERS_MAX}, not {text:?}"
        ))
}

/// One measurement's figures; latencies in microseconds.
#[derive(serde::Serialize)]
struct Figures {
    callers: usize,
    /// Operations completed inside the window.
    completed: u64,
    /// Completed operations per second: syncs, records or charges.
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Everything measured, as `--json` prints it.
#[derive(serde::Serialize)]
struct Report {
    dir: String,
    seconds: f64,
    record_len: usize,
    sync: Figures,
    journal: Vec<Figures>,
    ledger: Vec<Figures>,
}

pub fn bench(dir: &Path, options: &Options) -> payledger::Result<ExitCode> {
    let scratch = Scratch::create(dir)?;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let step = |what: String| {
        if let Some(spinner) = &spinner {
            spinner.set_message(format!("{}: {what}", scratch.path.display()));
        }
    };
    let measured = measure(&scratch.path, options, &step);
    if let Some(spinner) = &spinner {
        spinner.finish_and_clear();
    }
    let (sync, journal, ledger) = measured?;
    scratch.remove()?;
    let report = Report {
        dir: dir.display().to_string(),
        seconds: options.window.as_secs_f64(),
        record_len: RECORD_LEN,
        sync,
        journal,
        ledger,
    };
    if options.json {
        let json = serde_json::to_string(&report).map_err(|e| Error::Io {
            context: "encoding the bench report".into(),
            source: std::io::Error::other(e),
        })?;
        println!("{json}");
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

type Measured = (Figures, Vec<Figures>, Vec<Figures>);

/// The three measurements, in order; every file they open is closed when this returns.
fn measure(
    scratch: &Path,
    options: &Options,
    step: &dyn Fn(String),
) -> payledger::Result<Measured> {
    step("write + fdatasync".into());
    let sync = measure_sync(scratch, options.window)?;
    let journal = measure_journal(scratch, options, step)?;
    let ledger = measure_ledger(scratch, options, step)?;
    Ok((sync, journal, ledger))
}

fn measure_sync(scratch: &Path, window: Duration) -> payledger::Result<Figures> {
    let path = scratch.join("sync");
    let io = |doing: &str| {
        let context = format!("{doing} {}", path.display());
        move |source| Error::Io { context, source }
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io("creating"))?;
    let zeros = vec![0u8; 64 * 1024];
    for offset in (0..SYNC_FILE_LEN).step_by(zeros.len()) {
        file.write_all_at(&zeros, offset)
            .map_err(io("preallocating"))?;
    }
    file.sync_all().map_err(io("syncing"))?;
    let record = [b's'; RECORD_LEN];
    let slots = SYNC_FILE_LEN / RECORD_LEN as u64;
    let next = AtomicU64::new(0);
    closed_loop(1, window, || {
        let offset = next.fetch_add(1, Ordering::Relaxed) % slots * RECORD_LEN as u64;
        file.write_all_at(&record, offset)
            .and_then(|()| file.sync_data())
            .map_err(io("writing and syncing"))
    })
}

fn measure_journal(
    scratch: &Path,
    options: &Options,
    step: &dyn Fn(String),
) -> payledger::Result<Vec<Figures>> {
    let (journal, _) = Journal::open(scratch.join("journal"), JournalConfig::default())?;
    let record = vec![b'j'; RECORD_LEN];
    options
        .callers
        .iter()
        .map(|&callers| {
            step(format!("journal append, {callers} callers"));
            closed_loop(callers, options.window, || {
                journal.append(vec![record.clone()]).map(drop)
            })
        })
        .collect()
}

fn measure_ledger(
    scratch: &Path,
    options: &Options,
    step: &dyn Fn(String),
) -> payledger::Result<Vec<Figures>> {
    let (ledger, _) = Ledger::open(scratch.join("ledger"), LedgerConfig::default())?;
    let intent = Intent {
        amount: Amount::new(4_999)?,
        currency: Currency::new("EUR")?,
        account: AccountId::new("acct_bench")?,
        customer: CustomerRef::new("cus_bench")?,
        description: None,
        metadata: Metadata::default(),
    };
    // Shared by every run, so that every charge has a fresh key.
    let next = AtomicU64::new(0);
    options
        .callers
        .iter()
        .map(|&callers| {
            step(format!("ledger charge, {callers} callers"));
            closed_loop(callers, options.window, || {
                charge(&ledger, &intent, next.fetch_add(1, Ordering::Relaxed))
            })
        })
        .collect()
}

/// A charge of the fresh key number `n`, answered at once by a provider that succeeds.
fn charge(ledger: &Ledger, intent: &Intent, n: u64) -> payledger::Result<()> {
    let key = IdempotencyKey::new(format!("bench-{n}"))?;
    let ticket = match ledger.begin(&key, intent)? {
        Begin::Attempt(ticket) => ticket,
        other => {
            return Err(Error::Io {
                context: format!(
                    "the ledger answered {} for the fresh key {key}",
                    other.name()
                ),
                source: std::io::Error::other("a fresh key must be allowed an attempt"),
            });
        }
    };
    let outcome = Outcome::Succeeded {
        transaction_id: TransactionId::new(format!("ch_bench_{n}"))?,
        amount: intent.amount,
    };
    ledger.record(ticket, outcome).map(drop)
}

/// Runs `op` on `callers` threads, each calling it again as soon as it returns, for `window`;
/// the first error stops every thread and is returned.
fn closed_loop(
    callers: usize,
    window: Duration,
    op: impl Fn() -> payledger::Result<()> + Sync,
) -> payledger::Result<Figures> {
    let start = Barrier::new(callers);
    let failed = AtomicBool::new(false);
    let results: Vec<payledger::Result<Histogram<u64>>> = thread::scope(|scope| {
        let threads: Vec<_> = (0..callers)
            .map(|_| {
                scope.spawn(|| {
                    // Nanoseconds, three significant digits: a quantile within 0.1%.
                    let mut latencies = Histogram::<u64>::new(3).map_err(|e| Error::Io {
                        context: "creating a latency histogram".into(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                    start.wait();
                    let deadline = Instant::now() + window;
                    while !failed.load(Ordering::Relaxed) {
                        let began = Instant::now();
                        if let Err(e) = op() {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        let ended = Instant::now();
                        if ended > deadline {
                            break;
                        }
                        let ns = u64::try_from((ended - began).as_nanos()).unwrap_or(u64::MAX);
                        latencies.saturating_record(ns);
                    }
                    Ok(latencies)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut all = Histogram::<u64>::new(3).map_err(|e| Error::Io {
        context: "creating a latency histogram".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for latencies in results {
        all.add(latencies?).map_err(|e| Error::Io {
            context: "merging latency histograms".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let us = |ns: u64| ns as f64 / 1_000.0;
    Ok(Figures {
        callers,
        completed: all.len(),
        per_s: all.len() as f64 / window.as_secs_f64(),
        p50_us: us(all.value_at_quantile(0.50)),
        p99_us: us(all.value_at_quantile(0.99)),
        max_us: us(all.max()),
    })
}

fn print_table(report: &Report) {
    println!(
        "payledger bench {}: {} s per measurement, {}-byte records",
        report.dir, report.seconds, report.record_len
    );
    println!(
        "{:<32} {:>7} {:>12} {:>10} {:>10} {:>10}",
        "measurement", "callers", "per second", "p50", "p99", "max"
    );
    let rows = std::iter::once(("write + fdatasync", &report.sync))
        .chain(
            report
                .journal
                .iter()
                .map(|f| ("journal append (records)", f)),
        )
        .chain(
            report
                .ledger
                .iter()
                .map(|f| ("ledger charge (begin + record)", f)),
        );
    for (name, f) in rows {
        println!(
            "{name:<32} {:>7} {:>12.0} {:>10} {:>10} {:>10}",
            f.callers,
            f.per_s,
            latency(f.p50_us),
            latency(f.p99_us),
            latency(f.max_us)
        );
    }
}

fn latency(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1} us")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// The one directory the bench writes in. `remove` removes it and reports a failure; dropped
/// without that (an error, a panic), it is removed as well, and a failure is printed.
struct Scratch {
    path: PathBuf,
    removed: bool,
}

impl Scratch {
    /// Creates `DIR/payledger-bench-PID`; refuses a DIR that is missing, not a directory or not
    /// writable, and a scratch directory that exists (it is not ours to remove).
    fn create(dir: &Path) -> payledger::Result<Self> {
        let context = || format!("bench directory {}", dir.display());
        let metadata = std::fs::metadata(dir).map_err(|source| Error::Io {
            context: context(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(Error::Io {
                context: context(),
                source: ErrorKind::NotADirectory.into(),
            });
        }
        let path = dir.join(format!("payledger-bench-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| Error::Io {
            context: format!("creating the scratch directory {}", path.display()),
            source,
        })?;
        Ok(Self {
            path,
            removed: false,
        })
    }

    fn remove(mut self) -> payledger::Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path).map_err(|source| Error::Io {
            context: format!("removing the scratch directory {}", self.path.display()),
            source,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!(
                "warning: the scratch directory {} could not be removed: {e}",
                self.path.display()
            );
        }
    }
}
