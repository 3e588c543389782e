//! The fjall index, the default engine and the only file that names fjall: the layout of
//! `layout.rs` in one keyspace, `index`, of an LSM tree. Measured side by side with the sled
//! index (feature `sled`) in `docs/performance.md`.
//!
//! Invariants:
//! - everything one batch of commits changes is one fjall write batch (one journal entry of
//!   fjall's, applied atomically on recovery), with each key written at most once, because
//!   every item of a fjall batch carries the same sequence number: the layout writes each key
//!   once given one update per key (checked in debug builds);
//! - every value is sealed (`layout.rs`), as in the sled index;
//! - fjall's files live in their own directory, `fjall/`, under the index directory, so that
//!   removing them never touches anything else.
//!
//! fjall writes each batch to its journal in the operating system's buffers, and the applier
//! syncs that journal at most every [`SYNC_EVERY`] (as sled synced its log every second): not
//! for durability (the index is derived and caught up from the ledger's journal on open) but so
//! that the watermark on disk stays close to the journal's end, which is what lets an open
//! notice acknowledged records missing from the journal (`Error::IndexAhead`). fjall recovers
//! at most [`JOURNAL_BYTES_MAX`] of its journal when it opens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::error::{Error, IndexError, Result};
use crate::journal::codec::decode_value;
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, UnixMillis};

use super::index_error;
use super::layout::{self, Format, Writes};
use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate};

/// The directory, under the index directory, that holds fjall's files.
const FJALL_DIR: &str = "fjall";
/// fjall's journal, at most: what an open replays into memory (fjall's minimum).
pub(crate) const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// How long a flush waits for fjall to write its in-memory table out.
const FLUSH_WAIT: Duration = Duration::from_secs(30);
/// How often the applier syncs fjall's journal, at most.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);
/// The size at which fjall writes its in-memory table out.
const MEMTABLE_BYTES_MAX: u64 = 32 * 1024 * 1024;

pub(crate) struct FjallIndex {
    path: PathBuf,
    db: Database,
    keyspace: Keyspace,
    /// When fjall's journal was last synced.
    synced: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for FjallIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallIndex")
            .field("path", &self.path)
            .finish()
    }
}

/// What fjall said, as an index error kind.
fn fjall_error(error: &fjall::Error) -> IndexError {
    IndexError::Fjall {
        detail: error.to_string(),
    }
}

/// One fjall write batch being filled, with the keys it holds in debug builds, to check that
/// none is written twice.
struct Batch<'k> {
    batch: fjall::OwnedWriteBatch,
    keyspace: &'k Keyspace,
    #[cfg(debug_assertions)]
    written: std::collections::HashSet<Vec<u8>>,
}

impl Batch<'_> {
    fn check_once(&mut self, _key: &[u8]) {
        #[cfg(debug_assertions)]
        assert!(
            self.written.insert(_key.to_vec()),
            "an index key written twice in one fjall batch"
        );
    }
}

impl Writes for Batch<'_> {
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.check_once(key);
        self.batch.insert(self.keyspace, key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        self.check_once(key);
        self.batch.remove(self.keyspace, key);
    }
}

impl FjallIndex {
    fn error(&self, kind: IndexError) -> Error {
        index_error(&self.path, kind)
    }

    fn fjall(&self, error: &fjall::Error) -> Error {
        self.error(fjall_error(error))
    }

    fn damaged(&self, what: &'static str) -> Error {
        self.error(IndexError::Damaged { what })
    }

    fn key_from(&self, bytes: &[u8]) -> Result<IdempotencyKey> {
        layout::decode_key(bytes).map_err(|kind| self.error(kind))
    }

    /// The checked bytes of the value at `index_key`.
    fn read(&self, index_key: &[u8], what: &'static str) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.keyspace.get(index_key).map_err(|e| self.fjall(&e))? else {
            return Ok(None);
        };
        let bytes = layout::unsealed(index_key, &value).ok_or_else(|| self.damaged(what))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Opens the index under `path`, with at most `cache_bytes` of fjall's block cache.
    /// `Ok(Err(reason))` means it exists but is unusable: the caller deletes and rebuilds it.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<std::result::Result<Self, String>> {
        let opened = Database::builder(path.join(FJALL_DIR))
            .cache_size(cache_bytes)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .worker_threads(1)
            .open();
        let db = match opened {
            Ok(db) => db,
            Err(fjall::Error::Locked) => return Err(index_error(path, IndexError::Locked)),
            Err(e) => return Ok(Err(format!("fjall cannot open it: {e}"))),
        };
        let keyspace = match db.keyspace("index", || {
            KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
        }) {
            Ok(keyspace) => keyspace,
            Err(e) => return Ok(Err(format!("fjall cannot open its keyspace: {e}"))),
        };
        let index = Self {
            path: path.to_path_buf(),
            db,
            keyspace,
            synced: std::sync::Mutex::new(Instant::now()),
        };
        let empty = match index.keyspace.is_empty() {
            Ok(empty) => empty,
            Err(e) => return Ok(Err(format!("fjall cannot read its keyspace: {e}"))),
        };
        match layout::judge_format(index.format(), empty) {
            Format::Current => Ok(Ok(index)),
            Format::Fresh => {
                index.set_format()?;
                Ok(Ok(index))
            }
            Format::Unusable(reason) => Ok(Err(reason)),
        }
    }

    fn format(&self) -> Result<Option<u64>> {
        let Some(bytes) = self.read(&layout::format_key(), "format marker")? else {
            return Ok(None);
        };
        layout::decode_format(&bytes)
            .map(Some)
            .map_err(|kind| self.error(kind))
    }

    fn set_format(&self) -> Result<()> {
        let (key, value) = layout::format_marker();
        self.keyspace.insert(key, value).map_err(|e| self.fjall(&e))
    }

    /// Whether `dir` holds a fjall index (its directory).
    pub fn exists(dir: &Path) -> bool {
        dir.join(FJALL_DIR).exists()
    }

    /// Deletes fjall's directory under `dir` and nothing else.
    pub fn remove_files(dir: &Path) -> Result<()> {
        let path = dir.join(FJALL_DIR);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing index files {}", path.display()),
                e,
            )),
        }
    }

    /// Keys under `start..end` (or `start..` when `end` is `None`) whose bytes start with
    /// `prefix`, decoded by `key_of`, at most `limit`.
    fn keys_in(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        prefix: &[u8],
        limit: usize,
        key_of: impl Fn(&[u8]) -> &[u8],
    ) -> Result<Vec<IdempotencyKey>> {
        let range = match end {
            Some(end) => self.keyspace.range(start..end),
            None => self.keyspace.range(start..),
        };
        let mut keys = Vec::new();
        for item in range {
            if keys.len() >= limit {
                break;
            }
            let bytes = item.key().map_err(|e| self.fjall(&e))?;
            if !bytes.starts_with(prefix) {
                break;
            }
            keys.push(self.key_from(key_of(&bytes))?);
        }
        Ok(keys)
    }
}

impl KeyIndex for FjallIndex {
    fn watermark(&self) -> Result<IndexWatermark> {
        let bytes = self.read(&layout::watermark_key(), "watermark")?;
        layout::decode_watermark(bytes.as_deref()).map_err(|kind| self.error(kind))
    }

    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        self.read(&layout::state_key(key), "state entry")?
            .map(|bytes| decode_value(&bytes).map_err(|_| self.damaged("state entry")))
            .transpose()
    }

    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()> {
        let mut batch = Batch {
            batch: self.db.batch(),
            keyspace: &self.keyspace,
            #[cfg(debug_assertions)]
            written: std::collections::HashSet::new(),
        };
        layout::write_batch(&mut batch, updates, watermark)?;
        batch.batch.commit().map_err(|e| self.fjall(&e))?;
        let mut synced = crate::sync::lock(&self.synced);
        if synced.elapsed() >= SYNC_EVERY {
            self.db
                .persist(fjall::PersistMode::SyncData)
                .map_err(|e| self.fjall(&e))?;
            *synced = Instant::now();
        }
        Ok(())
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        let prefix = layout::phase_prefix(phase);
        let start = match after {
            Some(after) => {
                let mut start = layout::phase_key(phase, after);
                start.push(0);
                start
            }
            None => prefix.to_vec(),
        };
        self.keys_in(start, None, &prefix, limit, |bytes| &bytes[prefix.len()..])
    }

    fn count(&self, phase: PhaseKind) -> usize {
        self.keyspace.prefix(layout::phase_prefix(phase)).count()
    }

    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        let (start, end) = layout::schedule_until(now);
        let prefix = start.clone();
        self.keys_in(
            start,
            Some(end),
            &prefix,
            limit,
            layout::scheduled_key_bytes,
        )
    }

    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.read(&layout::reference_key(reference), "reference")?
            .map(|bytes| self.key_from(&bytes))
            .transpose()
    }

    fn clear(&self) -> Result<()> {
        self.keyspace.clear().map_err(|e| self.fjall(&e))?;
        self.set_format()
    }

    /// Writes the in-memory table out as a table file and syncs, so that the next open has
    /// no journal of fjall's to replay (called on close and after a replay). The wait is
    /// bounded: a fjall worker that failed never finishes it (fjall is then poisoned, and
    /// `persist` says so); a worker still busy after [`FLUSH_WAIT`] (a long compaction) only
    /// leaves the next open more of fjall's journal to replay, so that is a warning, not an
    /// error.
    fn flush(&self) -> Result<()> {
        self.keyspace
            .rotate_memtable()
            .map_err(|e| self.fjall(&e))?;
        let deadline = Instant::now() + FLUSH_WAIT;
        while self.keyspace.sealed_memtable_count() > 0 {
            self.db
                .persist(fjall::PersistMode::Buffer)
                .map_err(|e| self.fjall(&e))?;
            if Instant::now() >= deadline {
                tracing::warn!(index = %self.path.display(), wait_s = FLUSH_WAIT.as_secs(), "fjall did not write its in-memory table out in time; the next open replays its journal");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| self.fjall(&e))
    }
}
