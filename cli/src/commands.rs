//! The commands. Each returns its exit status, or an error the caller prints on one line.
//!
//! Invariant: every command here but `simulate` and `rebuild-index` opens the ledger read-only
//! (`open.rs`), so none of them changes a byte of the ledger directory.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use payledger::journal::Journal;
use payledger::journal::codec::decode_event;
use payledger::journal::storage::FsStorage;
use payledger::sim::SimConfig;
use payledger::{
    AlertThresholds, Error, IdempotencyKey, JournalRecord, Ledger, LedgerConfig, PhaseKind,
    PrimaryKind, Sequence, UnixMillis,
};

use crate::quote::{option, quote};
use crate::{open, show};

/// Exit status when a check finds a problem.
const FOUND_PROBLEM: u8 = 1;
/// Exit status of an export that stopped at damage after printing what it could.
const EXPORT_STOPPED: u8 = 3;

/// `simulate --store postgres`: chaos through the store seam against a PostgreSQL database.
pub fn simulate_postgres(
    seed: u64,
    ops: u64,
    keys: u64,
    url: Option<String>,
) -> payledger::Result<ExitCode> {
    use payledger::sim::store_chaos::{StoreChaosConfig, run};
    let Some(url) = url
        .or_else(|| std::env::var("PAYLEDGER_PG_URL").ok())
        .or_else(|| std::env::var("PAYLEDGER_BENCH_PG_URL").ok())
    else {
        eprintln!(
            "error: --store postgres needs --pg-url (or PAYLEDGER_PG_URL); for a throwaway server: scripts/pg-throwaway.sh cargo run --release -- simulate --store postgres"
        );
        return Ok(ExitCode::from(2));
    };
    println!("payledger simulate --store postgres: seed {seed}, {ops} ops, {keys} keys");
    let store = payledger_postgres::PgStore::connect(&url)?;
    store.migrate()?;
    let report = run(store, StoreChaosConfig { seed, ops, keys })?;
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn simulate(config: SimConfig) -> payledger::Result<ExitCode> {
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
            return Ok(ExitCode::from(FOUND_PROBLEM));
        }
    };
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FOUND_PROBLEM)
    })
}

pub fn inspect(dir: &Path, key: &str) -> payledger::Result<ExitCode> {
    let key = IdempotencyKey::new(key)?;
    let ledger = open::ledger(dir)?;
    let Some(state) = ledger.state(&key)? else {
        eprintln!("error: no key {} in {}", quote(key.as_str()), dir.display());
        return Ok(ExitCode::from(2));
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "key: {key}");
    let _ = writeln!(out, "state: {}", show::describe(&state.phase));
    if let Some(conflict) = &state.conflict {
        let _ = writeln!(
            out,
            "CONFLICT beside it: attempt {} ({:?}: {:?}) - needs a refund or a human",
            conflict.attempt, conflict.source, conflict.finding
        );
    }
    if let Some(intent) = &state.intent {
        let what = match state.primary {
            PrimaryKind::Purchase => "intent",
            PrimaryKind::Authorization { .. } => "authorisation",
        };
        let _ = writeln!(
            out,
            "{what}: {} {} (fingerprint {})",
            intent.amount, intent.currency, intent.fingerprint
        );
    }
    if state.conflict_resolved() {
        let _ = writeln!(
            out,
            "conflict settled: the duplicate charge was refunded (the history keeps it)"
        );
    }
    if !state.operations.is_empty() {
        let sums = state.sums();
        let _ = writeln!(
            out,
            "money: authorised {}, captured {}, refunded {} (captures counted {}, refunds counted {})",
            sums.authorized,
            sums.captured,
            sums.refunded,
            sums.captures_counted,
            sums.refunds_counted
        );
        let _ = writeln!(out, "operations:");
        for op in &state.operations {
            let _ = writeln!(
                out,
                "  #{:<3} {:<8} {:>12}  request {:<24}  {}",
                op.ordinal,
                op.kind.name(),
                op.amount.to_string(),
                op.request_id.as_str(),
                show::describe(&op.phase)
            );
        }
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<24}  {:<22}  {:>7}  provider reference / detail",
        "sequence", "time", "event", "attempt"
    );
    for entry in ledger.history(&key)? {
        let event = &entry.event;
        let _ = writeln!(
            out,
            "{:>8}  {:<24}  {:<22}  {:>7}  {}",
            entry.sequence,
            show::time(event.at),
            event.kind.name(),
            show::attempt(event),
            show::detail(event)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(
    dir: &Path,
    state: PhaseKind,
    after: Option<&str>,
    limit: usize,
) -> payledger::Result<ExitCode> {
    let after = after.map(IdempotencyKey::new).transpose()?;
    let ledger = open::ledger(dir)?;
    let states = ledger.list(state, after.as_ref(), limit)?;
    let mut out = std::io::stdout().lock();
    for s in &states {
        let _ = writeln!(out, "{}\t{}", s.key, show::describe(&s.phase));
    }
    if states.len() == limit
        && let Some(last) = states.last()
    {
        eprintln!(
            "next page: payledger list {} --state {} {} --limit {limit}",
            quote(&dir.display().to_string()),
            state.name(),
            option("after", last.key.as_str()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(dir: &Path) -> payledger::Result<ExitCode> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("verifying");
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let result = open::journal(dir).and_then(|journal| journal.verify());
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
            if let Some(torn) = report.torn_tail {
                println!(
                    "torn tail left in place: segment {} at offset {}, {} bytes of an unacknowledged write (the ledger's next writable open zeroes it)",
                    torn.segment, torn.offset, torn.bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Corrupt {
            segment,
            offset,
            kind,
        }) => {
            println!("journal corrupt: segment {segment} at offset {offset}: {kind}");
            println!(
                "next: keep a copy (cp -a), export what is readable (payledger export {}), and follow docs/runbook.md \"verify reports a corrupt journal\"",
                quote(&dir.display().to_string())
            );
            Ok(ExitCode::from(FOUND_PROBLEM))
        }
        Err(e) => Err(e),
    }
}

fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixMillis(ms)
}

pub fn stats(dir: &Path) -> payledger::Result<ExitCode> {
    let ledger = open::ledger(dir)?;
    let health = ledger.health()?;
    let mut out = std::io::stdout().lock();
    for (kind, count) in ledger.counts() {
        if kind != PhaseKind::Vacant {
            let _ = writeln!(out, "{:<10} {count}", kind.name());
        }
    }
    let ago = |ms: Option<u64>| {
        ms.map_or("none".to_string(), |ms| {
            format!(
                "{} ago (at {})",
                show::age(ms),
                show::time(UnixMillis(now().0.saturating_sub(ms)))
            )
        })
    };
    let _ = writeln!(out, "oldest unknown: {}", ago(health.unknown_age_ms_max));
    for op in &health.operations {
        let _ = writeln!(
            out,
            "{}s in doubt: {} unknown (oldest {}), {} in review, {} in conflict",
            op.kind.name(),
            op.unknown,
            ago(op.unknown_age_ms_max),
            op.in_review,
            op.conflict
        );
    }
    let _ = writeln!(
        out,
        "oldest in flight: {}",
        ago(health.in_flight_age_ms_max)
    );
    let (segments, bytes) = journal_files(dir);
    let _ = writeln!(
        out,
        "journal: {segments} segments, {bytes} bytes on disk, last sequence {}",
        health.last_sequence
    );
    Ok(ExitCode::SUCCESS)
}

/// Segment files and their bytes.
fn journal_files(dir: &Path) -> (u64, u64) {
    let (mut segments, mut bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".seg") {
                segments += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (segments, bytes)
}

pub fn health(dir: &Path, thresholds: &AlertThresholds, json: bool) -> payledger::Result<ExitCode> {
    let ledger = open::ledger(dir)?;
    let health = ledger.health()?;
    let alerts: Vec<String> = health
        .alerts(thresholds)
        .iter()
        .map(ToString::to_string)
        .collect();
    if json {
        let value = serde_json::json!({
            "ok": alerts.is_empty(),
            "alerts": alerts,
            "unknown": health.unknown,
            "unknown_age_ms_max": health.unknown_age_ms_max,
            "in_flight": health.in_flight,
            "in_flight_age_ms_max": health.in_flight_age_ms_max,
            "in_review": health.in_review,
            "conflict": health.conflict,
            "last_sequence": health.last_sequence.0,
            "index_watermark": health.index_watermark.0,
            "operations": health.operations.iter().map(|op| serde_json::json!({
                "kind": op.kind.name(),
                "unknown": op.unknown,
                "in_review": op.in_review,
                "conflict": op.conflict,
                "unknown_age_ms_max": op.unknown_age_ms_max,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else if alerts.is_empty() {
        println!(
            "ok: {} unknown, {} in flight, {} in review, {} in conflict",
            health.unknown, health.in_flight, health.in_review, health.conflict
        );
    } else {
        println!("ALERT: {}", alerts.join("; "));
    }
    Ok(if alerts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FOUND_PROBLEM)
    })
}

fn json_line(record: &JournalRecord) -> payledger::Result<String> {
    let event = decode_event(&record.payload).map_err(|e| Error::Inconsistent {
        sequence: record.sequence,
        cause: Box::new(e),
    })?;
    /// One exported line; fields in this order, so that `grep '"sequence":N,'` finds one.
    #[derive(serde::Serialize)]
    struct Line {
        sequence: u64,
        chain_hash: String,
        event: payledger::Event,
    }
    let chain_hash: String = record.hash.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::to_string(&Line {
        sequence: record.sequence.0,
        chain_hash,
        event,
    })
    .map_err(|e| Error::Io {
        context: "encoding an exported line".into(),
        source: std::io::Error::other(e),
    })
}

pub fn export(dir: &Path) -> payledger::Result<ExitCode> {
    let records: Box<dyn Iterator<Item = payledger::Result<JournalRecord>>> =
        match open::journal(dir) {
            Ok(journal) => Box::new(journal.read_from(Sequence(1))),
            // The last segment is damaged: salvage every record before the damage.
            Err(Error::Corrupt { .. }) => Box::new(Journal::salvage(Arc::new(FsStorage), dir)?),
            Err(e) => return Err(e),
        };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut exported = 0u64;
    for record in records {
        let line = record.and_then(|record| json_line(&record));
        match line {
            Ok(line) => {
                if writeln!(out, "{line}").is_err() {
                    return Ok(ExitCode::SUCCESS); // The reader went away (`| head`).
                }
                exported += 1;
            }
            Err(e) => {
                let _ = out.flush();
                eprintln!(
                    "export stopped after {exported} events (sequences 1 to {exported}): {}",
                    crate::one_line(&e)
                );
                eprintln!(
                    "records after this point cannot be read in order; see docs/runbook.md \"verify reports a corrupt journal\""
                );
                return Ok(ExitCode::from(EXPORT_STOPPED));
            }
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

pub fn tail(dir: &Path, from: Option<u64>, limit: Option<u64>) -> payledger::Result<ExitCode> {
    let journal = open::journal(dir)?;
    let start = from.map_or(journal.last_sequence().next(), Sequence);
    let mut follower = journal.follow(start);
    let mut shown = 0u64;
    let mut out = std::io::stdout();
    while limit.is_none_or(|limit| shown < limit) {
        let Some(record) = follower.poll()? else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let event = decode_event(&record.payload)?;
        let line = format!(
            "{:>8}  {:<24}  {:<24}  {:<22}  {:>7}  {}",
            record.sequence,
            show::time(event.at),
            event.key,
            event.kind.name(),
            show::attempt(&event),
            show::detail(&event)
        );
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // The reader went away.
        }
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rebuild_index(dir: &Path) -> payledger::Result<ExitCode> {
    let config = LedgerConfig {
        create_if_missing: false,
        ..LedgerConfig::default()
    };
    let (ledger, report) = Ledger::rebuild_index(dir, config)?;
    if let payledger::IndexRecovery::Rebuilt { events, .. } = report.index {
        eprintln!("note: index rebuilt from {events} journal events");
    }
    println!("index rebuilt: watermark {}", ledger.index_watermark()?);
    Ok(ExitCode::SUCCESS)
}
