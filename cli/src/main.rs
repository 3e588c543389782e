//! `payledger`: the operator's CLI and the seeded chaos simulation.
//!
//! Every command but `simulate` opens an existing ledger read-only: none of them appends to or
//! rewrites the journal (opening may cut a torn tail, which is reported). Exit status: 0 on
//! success, 1 when `verify` finds a problem or `simulate` finds a violation, 2 for errors.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use payledger::journal::codec::decode_event;
use payledger::journal::{Journal, JournalConfig};
use payledger::sim::{Profile, SimConfig};
use payledger::{
    Error, EventKind, IdempotencyKey, IndexRecovery, Ledger, LedgerConfig, OpenReport, Phase,
    PhaseKind, Sequence, UnixMillis,
};

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
    },
    /// Show a key's state and its full event timeline.
    Inspect {
        /// Ledger directory.
        dir: PathBuf,
        /// Idempotency key.
        key: String,
    },
    /// List keys in a state, ordered by key.
    List {
        /// Ledger directory.
        dir: PathBuf,
        /// unknown, in-review, conflict, succeeded, declined, in-flight, ready, exhausted.
        #[arg(long)]
        state: PhaseKind,
        /// Start after this key (the last key of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Keys per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check every record's crc, chain link and sequence.
    Verify {
        /// Ledger directory.
        dir: PathBuf,
    },
    /// Counts by state, oldest unknown, journal size, index watermark.
    Stats {
        /// Ledger directory.
        dir: PathBuf,
    },
    /// Every event as one JSON object per line, with its sequence and chain hash.
    Export {
        /// Ledger directory.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
    /// Rebuild the sled index from the journal.
    RebuildIndex {
        /// Ledger directory.
        dir: PathBuf,
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
        Command::Simulate {
            seed,
            ops,
            clients,
            keys,
            profile,
            dir,
        } => simulate(SimConfig {
            seed,
            ops,
            clients,
            keys,
            profile,
            dir,
            ..SimConfig::default()
        }),
        Command::Inspect { dir, key } => inspect(&dir, &key),
        Command::List {
            dir,
            state,
            after,
            limit,
        } => list(&dir, state, after.as_deref(), limit),
        Command::Verify { dir } => verify(&dir),
        Command::Stats { dir } => stats(&dir),
        Command::Export {
            dir,
            format: Format::Jsonl,
        } => export(&dir),
        Command::RebuildIndex { dir } => rebuild_index(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line.
fn one_line(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    match error {
        Error::Locked { .. } => {
            text.push_str(" (stop the service using it, or run this on a copy)")
        }
        Error::Corrupt { .. } => text.push_str(" (see docs/runbook.md, \"verify fails\")"),
        _ => {}
    }
    text
}

fn open(dir: &Path) -> payledger::Result<Ledger> {
    let config = LedgerConfig {
        create_if_missing: false,
        read_only: true,
        ..LedgerConfig::default()
    };
    let (ledger, report) = Ledger::open(dir, config)?;
    report_open(&report);
    Ok(ledger)
}

fn report_open(report: &OpenReport) {
    if let Some(torn) = &report.journal.torn_tail {
        eprintln!(
            "note: cut a torn tail of {} bytes at offset {} of segment {} (an append that never completed)",
            torn.bytes, torn.offset, torn.segment
        );
    }
    if let IndexRecovery::Rebuilt { reason, events } = &report.index {
        eprintln!("note: index rebuilt from {events} journal events ({reason})");
    }
}

fn time(at: UnixMillis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(at.0);
    humantime::format_rfc3339_millis(t).to_string()
}

fn simulate(config: SimConfig) -> payledger::Result<ExitCode> {
    println!(
        "payledger simulate: seed {}, {} ops, {} clients, {} keys, profile {}",
        config.seed, config.ops, config.clients, config.keys, config.profile
    );
    let bar = (config.ops >= 100_000 && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(config.ops);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {eta} left")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        payledger::sim::run(config.clone(), |done, _| {
            if let Some(bar) = &bar
                && done % 100 == 0
            {
                bar.set_position(done);
            }
        })
    }));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = match outcome {
        Ok(report) => report?,
        Err(_) => {
            println!(
                "result: VIOLATION panic (replay: {})",
                config.replay_command()
            );
            return Ok(ExitCode::from(1));
        }
    };
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn inspect(dir: &Path, key: &str) -> payledger::Result<ExitCode> {
    let key = IdempotencyKey::new(key)?;
    let ledger = open(dir)?;
    let Some(state) = ledger.state(&key)? else {
        eprintln!("error: no key {key} in {}", dir.display());
        return Ok(ExitCode::from(2));
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "key: {key}");
    let _ = writeln!(out, "state: {}", describe(&state.phase));
    if let Some(intent) = &state.intent {
        let _ = writeln!(
            out,
            "intent: {} {} (fingerprint {})",
            intent.amount, intent.currency, intent.fingerprint
        );
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  {:<22}  {:>7}  provider reference / detail",
        "sequence", "time", "event", "attempt"
    );
    for entry in ledger.history(&key)? {
        let event = &entry.event;
        let attempt = event
            .kind
            .attempt()
            .map_or("-".to_string(), |a| a.to_string());
        let detail = match &event.kind {
            EventKind::AttemptStarted {
                provider_reference, ..
            } => provider_reference.to_string(),
            EventKind::OutcomeReported { outcome, .. } => format!("{outcome:?}"),
            EventKind::ProviderQueried { answer, .. } => format!("{answer:?}"),
            EventKind::EvidenceReceived {
                source, finding, ..
            }
            | EventKind::ConflictDetected {
                source, finding, ..
            } => {
                format!("{source:?}: {finding:?}")
            }
            EventKind::EscalatedToReview { reason, .. } => format!("{reason:?}"),
            EventKind::ResolvedByOperator {
                resolution,
                operator,
                note,
                ..
            } => format!("{resolution:?} by {operator}: {note}"),
            EventKind::IntentRecorded { intent, .. } => format!(
                "{} {} for {}",
                intent.amount, intent.currency, intent.customer
            ),
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<24}  {:<22}  {:>7}  {detail}",
            entry.sequence,
            time(event.at),
            event.kind.name(),
            attempt
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(phase: &Phase) -> String {
    match phase {
        Phase::Unknown {
            attempt,
            since,
            reason,
            queries,
            ..
        } => {
            format!(
                "unknown (attempt {attempt}, since {}, {reason:?}, {queries} queries)",
                time(*since)
            )
        }
        Phase::InReview {
            attempt,
            since,
            reason,
            ..
        } => format!(
            "in review (attempt {attempt}, since {}, {reason:?})",
            time(*since)
        ),
        Phase::Succeeded {
            attempt,
            transaction_id,
            amount,
        } => format!("succeeded (attempt {attempt}, {transaction_id}, {amount})"),
        Phase::Declined { attempt, code } => format!("declined (attempt {attempt}, {code})"),
        Phase::Conflict {
            attempt,
            source,
            finding,
            ..
        } => format!(
            "CONFLICT (attempt {attempt}, {source:?}: {finding:?}) — needs a refund or a human"
        ),
        other => other.name().to_string(),
    }
}

fn list(
    dir: &Path,
    state: PhaseKind,
    after: Option<&str>,
    limit: usize,
) -> payledger::Result<ExitCode> {
    let after = after.map(IdempotencyKey::new).transpose()?;
    let ledger = open(dir)?;
    let states = ledger.list(state, after.as_ref(), limit)?;
    let mut out = std::io::stdout().lock();
    for s in &states {
        let _ = writeln!(out, "{}\t{}", s.key, describe(&s.phase));
    }
    if states.len() == limit
        && let Some(last) = states.last()
    {
        eprintln!(
            "next page: payledger list {} --state {} --after '{}' --limit {limit}",
            dir.display(),
            state.name(),
            last.key
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open_journal(dir: &Path) -> payledger::Result<Journal> {
    let (journal, report) = Journal::open(
        dir,
        JournalConfig {
            create_if_missing: false,
            ..JournalConfig::default()
        },
    )?;
    if let Some(torn) = &report.torn_tail {
        eprintln!(
            "note: cut a torn tail of {} bytes at offset {} of segment {}",
            torn.bytes, torn.offset, torn.segment
        );
    }
    Ok(journal)
}

fn verify(dir: &Path) -> payledger::Result<ExitCode> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("verifying");
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let result = open_journal(dir).and_then(|journal| journal.verify());
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    match result {
        Ok(report) => {
            let head: String = report.head.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "journal sound: {} segments, {} records, {} record bytes, last sequence {}, chain head {head}",
                report.segments, report.records, report.record_bytes, report.last_sequence
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Corrupt {
            segment,
            offset,
            kind,
        }) => {
            println!("journal corrupt: segment {segment} at offset {offset}: {kind}");
            println!(
                "next: stop writers, copy the directory, and follow docs/runbook.md \"verify fails\"; records before this offset are intact"
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e),
    }
}

fn stats(dir: &Path) -> payledger::Result<ExitCode> {
    let ledger = open(dir)?;
    let health = ledger.health()?;
    let mut out = std::io::stdout().lock();
    for (kind, count) in ledger.counts() {
        if kind != PhaseKind::Vacant {
            let _ = writeln!(out, "{:<10} {count}", kind.name());
        }
    }
    let oldest = health.unknown_age_ms_max.map_or("none".to_string(), |ms| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        format!(
            "{} ago (at {})",
            humantime::format_duration(Duration::from_secs(ms / 1000)),
            time(UnixMillis(now.saturating_sub(ms)))
        )
    });
    let _ = writeln!(out, "oldest unknown: {oldest}");
    let (mut segments, mut bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                segments += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    let _ = writeln!(
        out,
        "journal: {segments} segments, {bytes} bytes on disk, last sequence {}",
        health.last_sequence
    );
    let _ = writeln!(out, "index watermark: {}", ledger.index_watermark()?);
    Ok(ExitCode::SUCCESS)
}

fn export(dir: &Path) -> payledger::Result<ExitCode> {
    let journal = open_journal(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for record in journal.read_from(Sequence(1)) {
        let record = record?;
        let event = decode_event(&record.payload)?;
        let hash: String = record.hash.iter().map(|b| format!("{b:02x}")).collect();
        let line = serde_json::json!({ "sequence": record.sequence.0, "chain_hash": hash, "event": event });
        if writeln!(out, "{line}").is_err() {
            break; // The reader went away (e.g. `| head`).
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

fn rebuild_index(dir: &Path) -> payledger::Result<ExitCode> {
    if !dir.join("00000000000000000000.seg").exists() {
        return Err(Error::NotFound {
            dir: dir.to_path_buf(),
        });
    }
    let index = dir.join("index");
    if index.exists() {
        // Take the journal lock first so a running service is never disturbed.
        let guard = open_journal(dir)?;
        std::fs::remove_dir_all(&index).map_err(|e| Error::Io {
            context: format!("removing {}", index.display()),
            source: e,
        })?;
        drop(guard);
    }
    let ledger = open(dir)?;
    println!("index rebuilt: watermark {}", ledger.index_watermark()?);
    Ok(ExitCode::SUCCESS)
}
