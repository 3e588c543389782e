//! How the operator commands open a ledger: read-only, always.
//!
//! Invariant: no command opened here takes the writer's lock, creates a file or writes a byte;
//! they work on a read-only copy or snapshot while the live ledger runs elsewhere.

use std::path::Path;
use std::sync::Arc;

use payledger::journal::Journal;
use payledger::journal::storage::FsStorage;
use payledger::{IndexRecovery, Ledger, LedgerConfig, OpenReport, RecoveryReport, Sequence};

/// Opens the ledger in `dir` read-only, reporting what opening found.
pub fn ledger(dir: &Path) -> payledger::Result<Ledger> {
    let config = LedgerConfig {
        create_if_missing: false,
        read_only: true,
        ..LedgerConfig::default()
    };
    let (ledger, report) = Ledger::open(dir, config)?;
    report_open(&report);
    Ok(ledger)
}

/// Opens the journal in `dir` read-only, reporting a torn tail.
pub fn journal(dir: &Path) -> payledger::Result<Journal> {
    let (journal, report) = Journal::open_read_only(Arc::new(FsStorage), dir, || Ok(Sequence(0)))?;
    report_journal(&report);
    Ok(journal)
}

fn report_journal(report: &RecoveryReport) {
    if let Some(torn) = &report.torn_tail {
        eprintln!(
            "note: segment {} ends in a torn tail of {} bytes at offset {} (an append that never completed; the service cuts it when it next opens the ledger)",
            torn.segment, torn.bytes, torn.offset
        );
    }
}

fn report_open(report: &OpenReport) {
    report_journal(&report.journal);
    if let IndexRecovery::Rebuilt { reason, events } = &report.index {
        eprintln!("note: index rebuilt from {events} journal events ({reason})");
    }
}
