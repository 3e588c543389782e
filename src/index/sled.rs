//! The sled index, the only file that names sled: the layout of `layout.rs` in one sled tree,
//! `index`.
//!
//! Invariants:
//! - everything one batch of commits changes (states with their event positions, lists,
//!   schedule, references and the watermark) is one atomic sled batch, so a crash leaves the
//!   index at some earlier watermark with exactly the entries of that watermark, never half a
//!   commit;
//! - every value is sealed (`layout.rs`): damage inside sled's files is reported as
//!   [`IndexError::Damaged`] naming the index, never served as a state and never blamed on the
//!   journal.

use std::path::{Path, PathBuf};

use crate::error::{Error, IndexError, Result};
use crate::journal::codec::decode_value;
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, UnixMillis};

use super::index_error;
use super::layout::{self, Format, Writes};
use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate};

/// The files and directories sled keeps in an index directory: the only entries payledger ever
/// deletes there.
const SLED_ENTRIES: [&str; 3] = ["conf", "db", "blobs"];
/// sled's snapshot files start with this.
const SLED_SNAPSHOT_PREFIX: &str = "snap.";

/// How often sled syncs its log, in milliseconds. Not for durability (the index is derived and
/// caught up from the journal on open) but to bound that catch-up: at 20,000 charges a second
/// a crash costs replaying about 40,000 events, a fraction of a second.
pub(crate) const FLUSH_EVERY_MS: u64 = 1_000;

#[derive(Debug)]
pub(crate) struct SledIndex {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
}

/// What sled said, as an index error kind.
fn sled_error(error: sled::Error) -> IndexError {
    IndexError::Sled {
        detail: error.to_string(),
    }
}

impl Writes for sled::Batch {
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        sled::Batch::insert(self, key, value);
    }
    fn remove(&mut self, key: &[u8]) {
        sled::Batch::remove(self, key);
    }
}

impl SledIndex {
    /// An error about this index.
    fn error(&self, kind: IndexError) -> Error {
        index_error(&self.path, kind)
    }

    /// An error about this index from what sled said.
    fn sled(&self, error: sled::Error) -> Error {
        self.error(sled_error(error))
    }

    fn damaged(&self, what: &'static str) -> Error {
        self.error(IndexError::Damaged { what })
    }

    fn key_from(&self, bytes: &[u8]) -> Result<IdempotencyKey> {
        layout::decode_key(bytes).map_err(|kind| self.error(kind))
    }

    /// The checked bytes of the value at `sled_key`.
    fn read(&self, sled_key: &[u8], what: &'static str) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.tree.get(sled_key).map_err(|e| self.sled(e))? else {
            return Ok(None);
        };
        let bytes = layout::unsealed(sled_key, &value).ok_or_else(|| self.damaged(what))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Opens the index at `path`, with at most `cache_bytes` of sled's page cache.
    /// `Ok(Err(reason))` means it exists but is unusable (unreadable, or another format
    /// version): the caller deletes and rebuilds it.
    ///
    /// sled writes its log in the background and syncs it every [`FLUSH_EVERY_MS`]: the index
    /// is derived, so a crash only costs replaying the journal since the last flush.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<std::result::Result<Self, String>> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(FLUSH_EVERY_MS));
        let db = match config.open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(index_error(path, IndexError::Locked));
            }
            Err(e) => return Ok(Err(format!("sled cannot open it: {e}"))),
        };
        let tree = db
            .open_tree("index")
            .map_err(|e| index_error(path, sled_error(e)))?;
        let index = Self {
            path: path.to_path_buf(),
            db,
            tree,
        };
        match layout::judge_format(index.format(), index.tree.is_empty()) {
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
        self.tree.insert(key, value).map_err(|e| self.sled(e))?;
        Ok(())
    }

    /// Whether `dir` holds a sled index (its data file).
    pub fn exists(dir: &Path) -> bool {
        dir.join("db").exists()
    }

    /// Deletes what sled keeps in `dir` (its config, data, blobs and snapshots) and nothing
    /// else, so that a misconfigured directory never loses a file that is not the index's.
    pub fn remove_files(dir: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("listing index {}", dir.display()), e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("listing index {}", dir.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !SLED_ENTRIES.contains(&name.as_ref()) && !name.starts_with(SLED_SNAPSHOT_PREFIX) {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(format!("removing index file {}", path.display()), e))?;
        }
        Ok(())
    }
}

impl KeyIndex for SledIndex {
    /// The journal position the index reflects.
    fn watermark(&self) -> Result<IndexWatermark> {
        let bytes = self.read(&layout::watermark_key(), "watermark")?;
        layout::decode_watermark(bytes.as_deref()).map_err(|kind| self.error(kind))
    }

    /// The entry of `key`.
    ///
    /// # Errors
    /// [`IndexError::Damaged`] if its bytes fail their check.
    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        self.read(&layout::state_key(key), "state entry")?
            .map(|bytes| decode_value(&bytes).map_err(|_| self.damaged("state entry")))
            .transpose()
    }

    /// Applies `updates` (one per key) and the watermark in one atomic sled batch.
    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()> {
        let mut batch = sled::Batch::default();
        layout::write_batch(&mut batch, updates, watermark)?;
        self.tree.apply_batch(batch).map_err(|e| self.sled(e))
    }

    /// Keys in `phase`, ordered by key, strictly after `after`, at most `limit`.
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
        let mut keys = Vec::new();
        for item in self.tree.range(start..) {
            let (bytes, _) = item.map_err(|e| self.sled(e))?;
            if !bytes.starts_with(&prefix) || keys.len() >= limit {
                break;
            }
            keys.push(self.key_from(&bytes[prefix.len()..])?);
        }
        Ok(keys)
    }

    /// How many keys are in `phase`.
    fn count(&self, phase: PhaseKind) -> usize {
        self.tree.scan_prefix(layout::phase_prefix(phase)).count()
    }

    /// Unknown keys whose query time is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        let mut keys = Vec::new();
        let (start, end) = layout::schedule_until(now);
        for item in self.tree.range(start..end) {
            let (bytes, _) = item.map_err(|e| self.sled(e))?;
            if keys.len() >= limit {
                break;
            }
            keys.push(self.key_from(layout::scheduled_key_bytes(&bytes))?);
        }
        Ok(keys)
    }

    /// The key a provider reference was issued for.
    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.read(&layout::reference_key(reference), "reference")?
            .map(|bytes| self.key_from(&bytes))
            .transpose()
    }

    /// Empties the index (before a rebuild).
    fn clear(&self) -> Result<()> {
        self.tree.clear().map_err(|e| self.sled(e))?;
        self.set_format()
    }

    /// Writes sled's buffers to disk (not needed for correctness: the index is derived).
    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.sled(e))?;
        Ok(())
    }
}
