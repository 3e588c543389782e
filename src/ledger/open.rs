//! Opening a ledger: the journal first (it is the truth), then the index, which must be this
//! journal's and no further than it, then the attempts a previous process left in flight.
//!
//! Invariants:
//! - an index directory that could hold the journal (the ledger directory, an ancestor of it,
//!   or a directory with segments) is refused before anything is opened there, and only the
//!   configured index engine's own files are ever deleted from an index directory;
//! - an index whose watermark is beyond the journal's end is an error naming both positions,
//!   never a silent rebuild: it proves acknowledged records are missing, or that the index is
//!   not this journal's;
//! - an index whose chain hash at its watermark differs from the journal's belongs to another
//!   journal and is rebuilt, with the reason reported;
//! - attempts in flight when the previous process ended become unknown before anyone is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, IndexError, Result};
#[cfg(feature = "sled")]
use crate::index::SledIndex;
use crate::index::{FjallIndex, KeyIndex, LiveIndex, MemIndex};
use crate::journal::{Journal, JournalConfig};
use crate::limits::LIST_LIMIT_MAX;
use crate::model::InputError;
use crate::model::{EventKind, Outcome, UnknownReason};
use crate::model::{IdempotencyKey, Sequence};
use crate::model::{Phase, PhaseKind};

use super::replies::{IndexRecovery, OpenReport};
use super::{IndexEngine, Inner, Ledger, LedgerConfig, elapsed_us, replay};

impl Ledger {
    /// Opens (or creates) the ledger in `dir`: opens the journal (recovering a torn tail), opens
    /// the index (rebuilding it if missing, unreadable or another journal's, else catching it
    /// up from its watermark), and marks attempts orphaned by a previous process unknown.
    ///
    /// # Errors
    /// [`Error::Input`] for a bad configuration (including an index directory that overlaps the
    /// journal), [`Error::Locked`], [`Error::NotFound`], [`Error::Corrupt`],
    /// [`Error::Inconsistent`], [`Error::IndexAhead`], [`Error::Index`], [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, config: LedgerConfig) -> Result<(Self, OpenReport)> {
        Self::open_with(dir.as_ref(), config, false)
    }

    /// Opens the ledger in `dir` and rebuilds its index from the journal: the journal's lock
    /// is taken first, so a ledger another process holds is never disturbed, then only the
    /// configured index engine's own files are removed from the index directory.
    ///
    /// # Errors
    /// As [`Ledger::open`] (a read-only configuration is refused: rebuilding writes).
    pub fn rebuild_index(
        dir: impl AsRef<Path>,
        config: LedgerConfig,
    ) -> Result<(Self, OpenReport)> {
        if config.read_only {
            return Err(Error::ReadOnly);
        }
        Self::open_with(dir.as_ref(), config, true)
    }

    fn open_with(dir: &Path, config: LedgerConfig, rebuild: bool) -> Result<(Self, OpenReport)> {
        let span = tracing::info_span!("open", dir = %dir.display());
        let _enter = span.enter();
        let started = Instant::now();
        config.validate()?;
        if config.read_only {
            return Self::open_read_only(dir, config);
        }
        let index_dir = config
            .index_dir
            .clone()
            .unwrap_or_else(|| dir.join("index"));
        check_index_dir(dir, &index_dir)?;
        // The index is opened once the journal's lock is held and before its recovery changes a
        // byte: its watermark is evidence of what was acknowledged.
        let mut opened = None;
        let journal = Journal::open_acknowledged(
            Arc::clone(&config.storage),
            dir,
            JournalConfig {
                segment_len: config.segment_len,
                create_if_missing: config.create_if_missing,
            },
            || {
                if rebuild {
                    remove_index_files(config.index_engine, &index_dir)?;
                }
                let (index, reason) =
                    open_index(config.index_engine, &index_dir, config.index_cache_bytes)?;
                let watermark = index.watermark()?.sequence;
                opened = Some((index, reason));
                Ok(watermark)
            },
        );
        let (journal, journal_report) = match journal {
            Err(Error::AcknowledgedMissing {
                acknowledged,
                journal_last,
            }) => {
                return Err(Error::IndexAhead {
                    index: index_dir,
                    watermark: acknowledged,
                    journal_last,
                });
            }
            other => other?,
        };
        let (index, reason) = opened.ok_or_else(|| Error::Index {
            index: index_dir.clone(),
            kind: IndexError::NotOpened,
        })?;
        let rebuild_reason = match rebuild {
            true => Some("rebuild requested".to_string()),
            false => check_index_chain(&*index, &journal)?.or(reason),
        };
        let start = match rebuild_reason {
            // Created, recreated or cleared just now.
            Some(_) => replay::Start::Empty,
            None => replay::Start::Existing,
        };
        let replayed = replay::catch_up(&journal, &*index, &config.reconcile, start)?;
        let index_report = match rebuild_reason {
            Some(reason) => {
                tracing::warn!(%reason, events = replayed.events, "index rebuilt from the journal");
                IndexRecovery::Rebuilt {
                    reason,
                    events: replayed.events,
                }
            }
            None => IndexRecovery::CaughtUp {
                from: replayed.from,
                to: journal.last_sequence(),
            },
        };
        let index = live_index(index, &config)?;
        let ledger = Ledger {
            inner: Arc::new(Inner::new(journal, index, config)),
        };
        let orphaned_attempts = if ledger.inner.config.read_only {
            0
        } else {
            ledger.settle_orphans()? + ledger.settle_orphan_operations()?
        };
        ledger.watch_unknown_from_open()?;
        tracing::info!(
            orphaned_attempts,
            duration_us = elapsed_us(started),
            "ledger opened"
        );
        Ok((
            ledger,
            OpenReport {
                journal: journal_report,
                index: index_report,
                orphaned_attempts,
            },
        ))
    }

    /// A read-only open: no lock, no byte written anywhere. The journal is read as it is (a torn
    /// tail is reported, not cut); the index is an in-memory replay of the journal, because the
    /// persistent index cannot be opened without writing to it.
    fn open_read_only(dir: &Path, config: LedgerConfig) -> Result<(Self, OpenReport)> {
        let (journal, journal_report) =
            Journal::open_read_only(Arc::clone(&config.storage), dir, || Ok(Sequence(0)))?;
        let index = MemIndex::default();
        let replayed = replay::catch_up(&journal, &index, &config.reconcile, replay::Start::Empty)?;
        let index = live_index(Box::new(index), &config)?;
        let ledger = Ledger {
            inner: Arc::new(Inner::new(journal, index, config)),
        };
        ledger.watch_unknown_from_open()?;
        Ok((
            ledger,
            OpenReport {
                journal: journal_report,
                index: IndexRecovery::InMemory {
                    events: replayed.events,
                },
                orphaned_attempts: 0,
            },
        ))
    }

    /// Attempts started by a previous process with no outcome become unknown.
    fn settle_orphans(&self) -> Result<usize> {
        let mut count = 0;
        let mut after: Option<IdempotencyKey> = None;
        loop {
            let keys =
                self.inner
                    .index
                    .list(PhaseKind::InFlight, after.as_ref(), LIST_LIMIT_MAX)?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for key in keys {
                let _guard = self.lock_key(&key);
                let entry = self.inner.index.get(&key)?;
                if let Some(Phase::InFlight { attempt, .. }) =
                    entry.as_deref().map(|e| &e.state.phase)
                {
                    let event = self.event(
                        &key,
                        EventKind::OutcomeReported {
                            attempt: *attempt,
                            outcome: self.orphan_outcome(),
                        },
                    );
                    self.write_events(&key, entry.as_deref(), vec![event])?;
                    tracing::warn!(key = %key, attempt = attempt.get(), "attempt orphaned by a previous process is now unknown");
                    count += 1;
                }
            }
            after = Some(last);
        }
        Ok(count)
    }

    /// Operations a previous process left in flight become unknown.
    fn settle_orphan_operations(&self) -> Result<usize> {
        let mut count = 0;
        loop {
            let settled = self.take_over_operations(LIST_LIMIT_MAX, true)?;
            if settled == 0 {
                return Ok(count);
            }
            count += settled;
        }
    }

    /// This process waits for every attempt that is unknown when it opens, from now on, on top
    /// of the wait earlier processes recorded: the time the ledger was down is never counted,
    /// the time it is up always is.
    fn watch_unknown_from_open(&self) -> Result<()> {
        for list in [PhaseKind::Unknown, PhaseKind::OperationUnknown] {
            let mut after: Option<IdempotencyKey> = None;
            loop {
                let states = self.list(list, after.as_ref(), LIST_LIMIT_MAX)?;
                let Some(last) = states.last().map(|s| s.key.clone()) else {
                    break;
                };
                for state in &states {
                    self.watch_unknown(state);
                }
                after = Some(last);
            }
        }
        Ok(())
    }

    /// What an attempt orphaned by a previous process becomes: unknown.
    fn orphan_outcome(&self) -> Outcome {
        #[cfg(feature = "testing")]
        if self.inner.config.sabotage_forget_unknown_on_replay {
            return Outcome::NotSent {
                reason: crate::model::NotSentReason::ConnectionRefused,
            };
        }
        Outcome::Unknown {
            reason: UnknownReason::ProcessEnded,
        }
    }
}

/// Starts the applier over a caught-up index (behind the test-only faults, if configured).
fn live_index(base: Box<dyn KeyIndex>, config: &LedgerConfig) -> Result<LiveIndex> {
    #[cfg(feature = "testing")]
    let base: Box<dyn KeyIndex> = match &config.index_faults {
        Some(faults) => Box::new(crate::index::FaultyIndex::new(base, faults.clone())),
        None => base,
    };
    // sled's batch holds a lock every sled read takes, and a read-only ledger's in-memory
    // index one its reads take: an applier preempted in the background there would hold up
    // the readers. fjall's share one only for an insert at a time (`index::priority`).
    let background = config.index_applier_background
        && !config.read_only
        && matches!(config.index_engine, IndexEngine::Fjall);
    LiveIndex::start(base, config.index_backlog_max, background)
}

/// `path` made absolute and, where it exists, with symbolic links resolved.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Refuses an index directory that could hold the journal: deleting or rebuilding the index
/// there could destroy it.
fn check_index_dir(ledger_dir: &Path, index_dir: &Path) -> Result<()> {
    let refuse = |reason| {
        Err(InputError::IndexDir {
            index_dir: index_dir.to_path_buf(),
            reason,
        }
        .into())
    };
    let (ledger, index) = (resolved(ledger_dir), resolved(index_dir));
    if index == ledger {
        return refuse("is the ledger directory");
    }
    if ledger.starts_with(&index) {
        return refuse("contains the ledger directory");
    }
    let holds_segments = std::fs::read_dir(&index).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    });
    if holds_segments {
        return refuse("holds journal segments");
    }
    Ok(())
}

/// Deletes the files `engine` keeps in `dir`, and nothing else.
fn remove_index_files(engine: IndexEngine, dir: &Path) -> Result<()> {
    match engine {
        IndexEngine::Fjall => FjallIndex::remove_files(dir),
        #[cfg(feature = "sled")]
        IndexEngine::Sled => SledIndex::remove_files(dir),
    }
}

/// Whether `engine` keeps an index in `dir`.
fn index_exists(engine: IndexEngine, dir: &Path) -> bool {
    match engine {
        IndexEngine::Fjall => FjallIndex::exists(dir),
        #[cfg(feature = "sled")]
        IndexEngine::Sled => SledIndex::exists(dir),
    }
}

/// Opens `engine`'s index in `dir`; `Ok(Err(reason))` if it exists but is unusable.
fn open_engine(
    engine: IndexEngine,
    dir: &Path,
    cache_bytes: u64,
) -> Result<std::result::Result<Box<dyn KeyIndex>, String>> {
    fn boxed<I: KeyIndex + 'static>(
        opened: Result<std::result::Result<I, String>>,
    ) -> Result<std::result::Result<Box<dyn KeyIndex>, String>> {
        Ok(opened?.map(|index| Box::new(index) as Box<dyn KeyIndex>))
    }
    match engine {
        IndexEngine::Fjall => boxed(FjallIndex::open(dir, cache_bytes)),
        #[cfg(feature = "sled")]
        IndexEngine::Sled => boxed(SledIndex::open(dir, cache_bytes)),
    }
}

/// Opens the index, or makes a fresh one when it is missing or unusable; returns why it must be
/// rebuilt, if it must.
fn open_index(
    engine: IndexEngine,
    dir: &Path,
    cache_bytes: u64,
) -> Result<(Box<dyn KeyIndex>, Option<String>)> {
    let existed = index_exists(engine, dir);
    match open_engine(engine, dir, cache_bytes)? {
        Ok(index) => Ok((index, (!existed).then(|| "index missing".to_string()))),
        Err(reason) => {
            remove_index_files(engine, dir)?;
            let index = open_engine(engine, dir, cache_bytes)?.map_err(|reason| Error::Index {
                index: dir.to_path_buf(),
                kind: IndexError::FreshUnusable { reason },
            })?;
            Ok((index, Some(reason)))
        }
    }
}

/// Checks that the index is this journal's: the chain hash it recorded at its watermark must be
/// the journal's. An index of another journal is cleared for a rebuild; returns why.
fn check_index_chain(index: &dyn KeyIndex, journal: &Journal) -> Result<Option<String>> {
    let watermark = index.watermark()?;
    debug_assert!(watermark.sequence <= journal.last_sequence());
    if watermark.sequence == Sequence(0) {
        return Ok(None);
    }
    let at = journal.read_from(watermark.sequence).next().transpose()?;
    if at.is_some_and(|record| record.hash == watermark.chain_hash) {
        return Ok(None);
    }
    index.clear()?;
    Ok(Some(format!(
        "the index's chain hash at sequence {} is not this journal's: it belongs to another ledger",
        watermark.sequence.0
    )))
}
