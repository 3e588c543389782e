//! The sled index, the only file that names sled.
//!
//! Invariants:
//! - everything one batch of commits changes (states with their event positions, lists,
//!   schedule, references and the watermark) is one atomic sled batch, so a crash leaves the index at some earlier watermark
//!   with exactly the entries of that watermark, never half a commit;
//! - every value carries a crc32 of its key and bytes: damage inside sled's files is reported
//!   as [`IndexError::Damaged`] naming the index, never served as a state and never blamed on the
//!   journal.
//!
//! Layout: one sled tree, `index`, keys prefixed by their kind:
//! - `s` ‖ key → [`IndexEntry`] (current state, sequence of its last event, next query time, and
//!   the journal position of each of its events: its history is read from the journal);
//! - `p` ‖ phase tag ‖ key → () — keys by phase, ordered by key for cursor pagination;
//! - `q` ‖ next query time (u64 BE) ‖ key → () — unknown keys by when to query them;
//! - `r` ‖ provider reference → key;
//! - `m` ‖ `format` → index format version; `m` ‖ `watermark` → last journal sequence reflected
//!   (u64 BE) and the chain hash of that record (32 bytes), which ties the index to its journal.
//!
//! Values are `crc32 (u32 LE) ‖ bytes`, the crc taken over the full sled key and the bytes.

use std::path::{Path, PathBuf};

use crate::error::{Error, IndexError, Result};
use crate::journal::codec::{decode_value, encode_value};
use crate::journal::format::{ChainHash, GENESIS_HASH};
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, Sequence, UnixMillis};

use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate, listed_as};

/// Bumped whenever the index layout changes; an index of another version is rebuilt.
const INDEX_FORMAT_VERSION: u64 = 6;

/// The files and directories sled keeps in an index directory: the only entries payledger ever
/// deletes there.
const SLED_ENTRIES: [&str; 3] = ["conf", "db", "blobs"];
/// sled's snapshot files start with this.
const SLED_SNAPSHOT_PREFIX: &str = "snap.";

const STATE: u8 = b's';
const PHASE: u8 = b'p';
const SCHEDULE: u8 = b'q';
const REFERENCE: u8 = b'r';
const META: u8 = b'm';
const CRC_LEN: usize = 4;

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

/// An index error naming the index directory.
fn index_error(path: &Path, kind: IndexError) -> Error {
    Error::Index {
        index: path.to_path_buf(),
        kind,
    }
}

/// What sled said, as an index error kind.
fn sled_error(error: sled::Error) -> IndexError {
    IndexError::Sled {
        detail: error.to_string(),
    }
}

fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    bytes.push(prefix);
    for part in parts {
        bytes.extend_from_slice(part);
    }
    bytes
}

fn state_key(key: &IdempotencyKey) -> Vec<u8> {
    prefixed(STATE, &[key.as_str().as_bytes()])
}

fn phase_key(phase: PhaseKind, key: &IdempotencyKey) -> Vec<u8> {
    prefixed(PHASE, &[&[phase as u8], key.as_str().as_bytes()])
}

fn schedule_key(at: UnixMillis, key: &IdempotencyKey) -> Vec<u8> {
    prefixed(SCHEDULE, &[&at.0.to_be_bytes(), key.as_str().as_bytes()])
}

fn reference_key(reference: &ProviderReference) -> Vec<u8> {
    prefixed(REFERENCE, &[reference.as_str().as_bytes()])
}

fn meta_key(name: &str) -> Vec<u8> {
    prefixed(META, &[name.as_bytes()])
}

/// `crc32(sled key ‖ bytes) ‖ bytes`.
fn sealed(sled_key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(sled_key);
    crc.update(bytes);
    let mut value = crc.finalize().to_le_bytes().to_vec();
    value.extend_from_slice(bytes);
    value
}

/// The bytes of a sealed value, if its crc matches.
fn unsealed<'v>(sled_key: &[u8], value: &'v [u8]) -> Option<&'v [u8]> {
    let (crc, bytes) = value.split_first_chunk::<CRC_LEN>()?;
    let mut check = crc32fast::Hasher::new();
    check.update(sled_key);
    check.update(bytes);
    (check.finalize() == u32::from_le_bytes(*crc)).then_some(bytes)
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
        let text = std::str::from_utf8(bytes).map_err(|_| self.damaged("key"))?;
        IdempotencyKey::new(text).map_err(|_| self.damaged("key"))
    }

    /// The checked bytes of the value at `sled_key`.
    fn read(&self, sled_key: &[u8], what: &'static str) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.tree.get(sled_key).map_err(|e| self.sled(e))? else {
            return Ok(None);
        };
        let bytes = unsealed(sled_key, &value).ok_or_else(|| self.damaged(what))?;
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
        match index.format() {
            Ok(Some(INDEX_FORMAT_VERSION)) => Ok(Ok(index)),
            Ok(None) if index.tree.is_empty() => {
                index.set_format()?;
                Ok(Ok(index))
            }
            Ok(Some(other)) => Ok(Err(format!(
                "index format {other}, expected {INDEX_FORMAT_VERSION}"
            ))),
            Ok(None) => Ok(Err("index has no format marker".into())),
            Err(e) => Ok(Err(format!("index format marker unreadable: {e}"))),
        }
    }

    fn format(&self) -> Result<Option<u64>> {
        let Some(bytes) = self.read(&meta_key("format"), "format marker")? else {
            return Ok(None);
        };
        let word: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| self.damaged("format marker"))?;
        Ok(Some(u64::from_be_bytes(word)))
    }

    fn set_format(&self) -> Result<()> {
        let key = meta_key("format");
        let value = sealed(&key, &INDEX_FORMAT_VERSION.to_be_bytes());
        self.tree.insert(key, value).map_err(|e| self.sled(e))?;
        Ok(())
    }

    fn watermark_value(watermark: IndexWatermark) -> (Vec<u8>, Vec<u8>) {
        let key = meta_key("watermark");
        let mut bytes = watermark.sequence.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(&watermark.chain_hash);
        let value = sealed(&key, &bytes);
        (key, value)
    }

    /// Adds one key's update to `batch`.
    fn add_to_batch(&self, batch: &mut sled::Batch, update: &KeyUpdate) -> Result<()> {
        let KeyUpdate {
            key,
            before,
            after,
            new_references,
        } = update;
        if let Some(before) = before {
            for kind in before.phases() {
                batch.remove(phase_key(kind, key));
            }
            if let Some(at) = before.next_query_at {
                batch.remove(schedule_key(at, key));
            }
        }
        for kind in listed_as(&after.state) {
            let sled_key = phase_key(kind, key);
            let value = sealed(&sled_key, &[]);
            batch.insert(sled_key, value);
        }
        if let Some(at) = after.next_query_at {
            let sled_key = schedule_key(at, key);
            let value = sealed(&sled_key, &[]);
            batch.insert(sled_key, value);
        }
        for reference in new_references {
            let sled_key = reference_key(reference);
            let value = sealed(&sled_key, key.as_str().as_bytes());
            batch.insert(sled_key, value);
        }
        let sled_key = state_key(key);
        let value = sealed(&sled_key, &encode_value(after)?);
        batch.insert(sled_key, value);
        Ok(())
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
        let Some(bytes) = self.read(&meta_key("watermark"), "watermark")? else {
            return Ok(IndexWatermark {
                sequence: Sequence(0),
                chain_hash: GENESIS_HASH,
            });
        };
        let (sequence, hash) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| self.damaged("watermark"))?;
        let chain_hash: ChainHash = hash.try_into().map_err(|_| self.damaged("watermark"))?;
        Ok(IndexWatermark {
            sequence: Sequence(u64::from_be_bytes(*sequence)),
            chain_hash,
        })
    }

    /// The entry of `key`.
    ///
    /// # Errors
    /// [`IndexError::Damaged`] if its bytes fail their check.
    fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        self.read(&state_key(key), "state entry")?
            .map(|bytes| decode_value(&bytes).map_err(|_| self.damaged("state entry")))
            .transpose()
    }

    /// Applies `updates` and the watermark in one atomic sled batch. Several updates of one key
    /// in a batch are in journal order, and a batch keeps the last write of each sled key, so
    /// the later update's removals and inserts win.
    fn apply(&self, updates: &[KeyUpdate], watermark: IndexWatermark) -> Result<()> {
        let mut batch = sled::Batch::default();
        for update in updates {
            self.add_to_batch(&mut batch, update)?;
        }
        let (sled_key, value) = Self::watermark_value(watermark);
        batch.insert(sled_key, value);
        self.tree.apply_batch(batch).map_err(|e| self.sled(e))
    }

    /// Keys in `phase`, ordered by key, strictly after `after`, at most `limit`.
    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        let prefix = [PHASE, phase as u8];
        let start = match after {
            Some(after) => {
                let mut start = phase_key(phase, after);
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
        self.tree.scan_prefix([PHASE, phase as u8]).count()
    }

    /// Unknown keys whose query time is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        let mut keys = Vec::new();
        let start = [SCHEDULE];
        // Every entry of a later time sorts after that time's 8 bytes alone.
        let end = prefixed(SCHEDULE, &[&now.plus_ms(1).0.to_be_bytes()]);
        for item in self.tree.range(start.to_vec()..end) {
            let (bytes, _) = item.map_err(|e| self.sled(e))?;
            if keys.len() >= limit {
                break;
            }
            keys.push(self.key_from(bytes.get(1 + 8..).unwrap_or_default())?);
        }
        Ok(keys)
    }

    /// The key a provider reference was issued for.
    fn key_for_reference(&self, reference: &ProviderReference) -> Result<Option<IdempotencyKey>> {
        self.read(&reference_key(reference), "reference")?
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
