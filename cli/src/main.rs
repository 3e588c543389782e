//! `payledger`: the operator's CLI and the seeded chaos simulation.
//!
//! Every command but `simulate`, `rebuild-index` and `bench` is read-only: it takes no lock,
//! creates no file and writes no byte, so it works on a read-only copy or snapshot while the live
//! ledger runs elsewhere; `bench` writes only inside a scratch directory it creates and removes.
//! Keys are taken verbatim (a key may start with `-`: use `--after=KEY`, or put `--` before a
//! positional key), and every command printed for copy and paste is shell-quoted.
//!
//! Exit status: 0 success; 1 a check found a problem (`verify` damage, a `health` alert, a
//! `simulate` violation); 2 an error; 3 `export` stopped at damage after printing what it could.

#![forbid(unsafe_code)]

mod bench;
mod commands;
mod open;
mod quote;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use payledger::sim::{Profile, SimConfig};
use payledger::{Error, PhaseKind};

#[derive(Parser)]
#[command(
    name = "payledger",
    version,
    about = "An embedded payment ledger that cannot represent a double charge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which store `simulate` runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// The embedded journal and index on a simulated disk.
    Embedded,
    /// A PostgreSQL database, through the store seam.
    Postgres,
}

#[derive(Subcommand)]
enum Command {
    /// Run a seeded, deterministic chaos simulation and check that no order is charged twice.
    Simulate {
        /// Seed for every random choice.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Scheduler steps before the heal phase.
        #[arg(long, default_value_t = 20_000)]
        ops: u64,
        /// Concurrent logical clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Orders (idempotency keys).
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        /// How hostile the world is: calm, stormy or hostile.
        #[arg(long, default_value = "stormy")]
        profile: Profile,
        /// Keep the resulting ledger in this (new or empty) directory for inspection.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The store: `embedded` (the full simulation on a simulated disk) or `postgres`
        /// (chaos through the store seam against the database of `--pg-url`, which must hold
        /// no earlier run).
        #[arg(long, default_value = "embedded")]
        store: StoreKind,
        /// PostgreSQL connection string or URL for `--store postgres` (default: the
        /// `PAYLEDGER_PG_URL` environment variable; `scripts/pg-throwaway.sh` sets
        /// `PAYLEDGER_BENCH_PG_URL`, also read).
        #[arg(long)]
        pg_url: Option<String>,
    },
    /// Show a key's state and its full event timeline.
    Inspect {
        /// Ledger directory.
        dir: PathBuf,
        /// Idempotency key, verbatim (it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// List keys in a state, ordered by key, a page at a time.
    List {
        /// Ledger directory.
        dir: PathBuf,
        /// unknown, in-review, conflict, succeeded, declined, in-flight, ready, exhausted.
        #[arg(long)]
        state: PhaseKind,
        /// Start after this key (the last key of the previous page), verbatim.
        #[arg(long, allow_hyphen_values = true)]
        after: Option<String>,
        /// Keys per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check every frame's and record's crc, chain link and sequence, and the zeros after.
    Verify {
        /// Ledger directory.
        dir: PathBuf,
    },
    /// Counts by state, oldest unknown and in-flight, journal size.
    Stats {
        /// Ledger directory.
        dir: PathBuf,
    },
    /// Exit 1 with a one-line reason when an alert condition holds (for cron jobs and probes).
    Health {
        /// Ledger directory.
        dir: PathBuf,
        /// Alert when an outcome has been unknown longer than this.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        unknown_age_max: Duration,
        /// Alert when a provider call has been in flight longer than this (a hung call).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        in_flight_age_max: Duration,
        /// Alert when more keys than this wait in manual review.
        #[arg(long, default_value_t = 0)]
        review_max: usize,
        /// Alert when the index lags the journal by more than this many events.
        #[arg(long, default_value_t = 10_000)]
        index_lag_max: u64,
        /// Print the figures and alerts as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every event as one JSON object per line, with its sequence and chain hash; on damage,
    /// every event before it, then where and why it stopped (exit 3).
    Export {
        /// Ledger directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
    /// Follow new events as they are appended (read-only; stop with Ctrl-C).
    Tail {
        /// Ledger directory.
        dir: PathBuf,
        /// Start at this sequence (default: after the last event).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Rebuild the index from the journal (writes the index; takes the ledger's lock).
    RebuildIndex {
        /// Ledger directory.
        dir: PathBuf,
    },
    /// Measure the disk under DIR and the ledger on it, for sizing a disk before going live.
    ///
    /// Three measurements, each for `--seconds`: the latency of writing 256 bytes and calling
    /// fdatasync (one thread, a preallocated file); the records per second the journal's group
    /// commit reaches with 256-byte records at each `--callers` count (the raw limit); and the
    /// charges per second and latency of the ledger at each count (`begin`, an in-memory
    /// success, `record`, fresh keys, default configuration). A charge makes two durable
    /// appends (three records).
    ///
    /// Everything is written in a scratch directory, DIR/payledger-bench-PID, created at the
    /// start and removed at the end, also after an error. Ctrl-C stops the process at once and
    /// leaves the scratch directory behind: remove it by hand. The bench writes journal segments
    /// of 64 MiB and keeps the disk busy: do not run it beside a live ledger.
    Bench {
        /// A directory on the disk to measure (it must exist and be writable).
        dir: PathBuf,
        /// Seconds per measurement (up to 60).
        #[arg(long, default_value = "2", value_parser = bench::parse_seconds)]
        seconds: Duration,
        /// Concurrent callers of the journal and ledger measurements, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1,8,32",
            value_parser = bench::parse_callers
        )]
        callers: Vec<usize>,
        /// Print the figures as one JSON object (latencies in microseconds).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// JSON lines.
    Jsonl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[allow(
            clippy::needless_update,
            reason = "the rest of `SimConfig` exists only with the library's `testing` feature"
        )]
        Command::Simulate {
            seed,
            ops,
            keys,
            store: StoreKind::Postgres,
            pg_url,
            ..
        } => commands::simulate_postgres(seed, ops, keys as u64, pg_url),
        Command::Simulate {
            seed,
            ops,
            clients,
            keys,
            profile,
            dir,
            store: StoreKind::Embedded,
            pg_url: _,
        } => commands::simulate(SimConfig {
            seed,
            ops,
            clients,
            keys,
            profile,
            dir,
            ..SimConfig::default()
        }),
        Command::Inspect { dir, key } => commands::inspect(&dir, &key),
        Command::List {
            dir,
            state,
            after,
            limit,
        } => commands::list(&dir, state, after.as_deref(), limit),
        Command::Verify { dir } => commands::verify(&dir),
        Command::Stats { dir } => commands::stats(&dir),
        Command::Health {
            dir,
            unknown_age_max,
            in_flight_age_max,
            review_max,
            index_lag_max,
            json,
        } => {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let thresholds = payledger::AlertThresholds {
                unknown_age_ms_max: ms(unknown_age_max),
                in_flight_age_ms_max: ms(in_flight_age_max),
                in_review_max: review_max,
                index_lag_max,
            };
            commands::health(&dir, &thresholds, json)
        }
        Command::Export {
            dir,
            format: Format::Jsonl,
        } => commands::export(&dir),
        Command::Tail { dir, from, limit } => commands::tail(&dir, from, limit),
        Command::RebuildIndex { dir } => commands::rebuild_index(&dir),
        Command::Bench {
            dir,
            seconds,
            callers,
            json,
        } => bench::bench(
            &dir,
            &bench::Options {
                window: seconds,
                callers,
                json,
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    match error {
        Error::Locked { .. } => text.push_str(
            " (another process holds the ledger: stop it, or use a read-only command instead)",
        ),
        Error::Corrupt { .. } => {
            text.push_str(" (docs/runbook.md, \"verify reports a corrupt journal\")")
        }
        _ => {}
    }
    text
}
