//! The sled index: what must be found fast without replaying history. The only file that
//! names sled.
//!
//! Invariant: the index is derived data. Everything in it is a function of the journal up to
//! its watermark, it is written after the journal sync and never synced per operation, and it
//! can be deleted at any time: the ledger rebuilds it from the journal.
//!
//! Trees:
//! - `states`: key → [`IndexEntry`] (current state, sequence of its last event, next query time);
//! - `phases`: phase tag ‖ key → () — keys by phase, ordered by key for cursor pagination;
//! - `schedule`: next query time (u64 BE) ‖ key → () — unknown keys by when to query them;
//! - `references`: provider reference → key;
//! - `history`: key ‖ 0x00 ‖ sequence (u64 BE) → event payload;
//! - `meta`: `format` → index format version, `watermark` → last journal sequence reflected
//!   (u64 BE) followed by the chain hash of that record (32 bytes), so that an index is tied to
//!   its journal: an index of another journal, or of a later copy, is recognised on open.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IndexError, Result};
use crate::journal::codec::{decode_value, encode_value};
use crate::journal::format::{ChainHash, GENESIS_HASH};
use crate::model::{IdempotencyKey, ProviderReference, Sequence, UnixMillis};
use crate::model::{PaymentState, PhaseKind};

/// Bumped whenever the index layout changes; an index of another version is rebuilt.
const INDEX_FORMAT_VERSION: u64 = 2;

/// The files and directories sled keeps in an index directory: the only entries payledger ever
/// deletes there.
const SLED_ENTRIES: [&str; 3] = ["conf", "db", "blobs"];
/// sled's snapshot files start with this.
const SLED_SNAPSHOT_PREFIX: &str = "snap.";

/// The position an index reflects: the journal sequence up to which every record is applied,
/// and the chain hash of that record (zeros for an empty journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexWatermark {
    pub sequence: Sequence,
    pub chain_hash: ChainHash,
}

/// What the index holds per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The key's state after its last event.
    pub state: PaymentState,
    /// Journal sequence of that event.
    pub last_sequence: Sequence,
    /// When the reconciler should next query the provider (unknown keys only), on the wall
    /// clock: a step of it only moves queries earlier or later, never decides anything.
    pub next_query_at: Option<UnixMillis>,
}

/// One event of a key's history, as stored.
pub(crate) struct StoredEvent {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    db: sled::Db,
    states: sled::Tree,
    phases: sled::Tree,
    schedule: sled::Tree,
    references: sled::Tree,
    history: sled::Tree,
    meta: sled::Tree,
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

fn phase_key(phase: PhaseKind, key: &IdempotencyKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + key.as_str().len());
    bytes.push(phase as u8);
    bytes.extend_from_slice(key.as_str().as_bytes());
    bytes
}

fn schedule_key(at: UnixMillis, key: &IdempotencyKey) -> Vec<u8> {
    let mut bytes = at.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(key.as_str().as_bytes());
    bytes
}

fn history_prefix(key: &IdempotencyKey) -> Vec<u8> {
    // Keys are visible ASCII, so 0x00 cannot occur inside one.
    let mut bytes = key.as_str().as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// The lists a key appears in: its phase, and `Conflict` too while a contradiction waits beside
/// an attempt still in doubt (which stays listed, and scheduled, under its own phase).
fn listed_as(state: &PaymentState) -> impl Iterator<Item = PhaseKind> {
    let phase = state.phase.kind();
    let conflict =
        (state.conflict.is_some() && phase != PhaseKind::Conflict).then_some(PhaseKind::Conflict);
    std::iter::once(phase).chain(conflict)
}

impl Index {
    /// An error about this index.
    fn error(&self, kind: IndexError) -> Error {
        index_error(&self.path, kind)
    }

    /// An error about this index from what sled said.
    fn sled(&self, error: sled::Error) -> Error {
        self.error(sled_error(error))
    }

    fn key_from(&self, bytes: &[u8]) -> Result<IdempotencyKey> {
        let malformed = || self.error(IndexError::Malformed { what: "key" });
        let text = std::str::from_utf8(bytes).map_err(|_| malformed())?;
        IdempotencyKey::new(text).map_err(|_| malformed())
    }

    /// Opens the index at `path`. `Ok(Err(reason))` means it exists but is unusable
    /// (unreadable, or another format version): the caller deletes and rebuilds it.
    pub fn open(path: &Path) -> Result<std::result::Result<Self, String>> {
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(index_error(path, IndexError::Locked));
            }
            Err(e) => return Ok(Err(format!("sled cannot open it: {e}"))),
        };
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| index_error(path, sled_error(e)))
        };
        let index = Self {
            path: path.to_path_buf(),
            states: tree("states")?,
            phases: tree("phases")?,
            schedule: tree("schedule")?,
            references: tree("references")?,
            history: tree("history")?,
            meta: tree("meta")?,
            db,
        };
        match index.meta_u64("format")? {
            None if index.states.is_empty() => {
                index.set_meta_u64("format", INDEX_FORMAT_VERSION)?;
            }
            Some(INDEX_FORMAT_VERSION) => {}
            Some(other) => {
                return Ok(Err(format!(
                    "index format {other}, expected {INDEX_FORMAT_VERSION}"
                )));
            }
            None => return Ok(Err("index has no format marker".into())),
        }
        Ok(Ok(index))
    }

    fn meta_u64(&self, name: &str) -> Result<Option<u64>> {
        let Some(bytes) = self.meta.get(name).map_err(|e| self.sled(e))? else {
            return Ok(None);
        };
        let word: [u8; 8] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| self.error(IndexError::Malformed { what: "meta u64" }))?;
        Ok(Some(u64::from_be_bytes(word)))
    }

    fn set_meta_u64(&self, name: &str, value: u64) -> Result<()> {
        self.meta
            .insert(name, &value.to_be_bytes())
            .map_err(|e| self.sled(e))?;
        Ok(())
    }

    /// The journal position the index reflects.
    pub fn watermark(&self) -> Result<IndexWatermark> {
        let Some(bytes) = self.meta.get("watermark").map_err(|e| self.sled(e))? else {
            return Ok(IndexWatermark {
                sequence: Sequence(0),
                chain_hash: GENESIS_HASH,
            });
        };
        let (sequence, hash) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| self.error(IndexError::Malformed { what: "watermark" }))?;
        let chain_hash: ChainHash = hash.try_into().map_err(|_| {
            self.error(IndexError::Malformed {
                what: "watermark hash",
            })
        })?;
        Ok(IndexWatermark {
            sequence: Sequence(u64::from_be_bytes(*sequence)),
            chain_hash,
        })
    }

    /// Records that every journal record up to `watermark` is reflected.
    pub fn set_watermark(&self, watermark: IndexWatermark) -> Result<()> {
        let mut bytes = watermark.sequence.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(&watermark.chain_hash);
        self.meta
            .insert("watermark", bytes)
            .map_err(|e| self.sled(e))?;
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

    /// The entry of `key`.
    pub fn get(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        self.states
            .get(key.as_str())
            .map_err(|e| self.sled(e))?
            .map(|bytes| decode_value(&bytes))
            .transpose()
    }

    /// Stores the entry of `key` after `events` (sequence, payload), replacing `before`.
    pub fn put(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        after: &IndexEntry,
        events: &[(u64, &[u8])],
        new_reference: Option<&ProviderReference>,
    ) -> Result<()> {
        if let Some(before) = before {
            assert!(
                after.last_sequence > before.last_sequence,
                "an index entry's last sequence only grows"
            );
            for kind in listed_as(&before.state) {
                self.phases
                    .remove(phase_key(kind, key))
                    .map_err(|e| self.sled(e))?;
            }
            if let Some(at) = before.next_query_at {
                self.schedule
                    .remove(schedule_key(at, key))
                    .map_err(|e| self.sled(e))?;
            }
        }
        for kind in listed_as(&after.state) {
            self.phases
                .insert(phase_key(kind, key), &[])
                .map_err(|e| self.sled(e))?;
        }
        if let Some(at) = after.next_query_at {
            self.schedule
                .insert(schedule_key(at, key), &[])
                .map_err(|e| self.sled(e))?;
        }
        if let Some(reference) = new_reference {
            self.references
                .insert(reference.as_str(), key.as_str())
                .map_err(|e| self.sled(e))?;
        }
        let prefix = history_prefix(key);
        for (sequence, payload) in events {
            let mut history_key = prefix.clone();
            history_key.extend_from_slice(&sequence.to_be_bytes());
            self.history
                .insert(history_key, *payload)
                .map_err(|e| self.sled(e))?;
        }
        self.states
            .insert(key.as_str(), encode_value(after)?)
            .map_err(|e| self.sled(e))?;
        Ok(())
    }

    /// Keys in `phase`, ordered by key, strictly after `after`, at most `limit`.
    pub fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        let prefix = [phase as u8];
        let start = match after {
            Some(after) => {
                let mut start = phase_key(phase, after);
                start.push(0);
                start
            }
            None => prefix.to_vec(),
        };
        let mut keys = Vec::new();
        for item in self.phases.range(start..) {
            let (bytes, _) = item.map_err(|e| self.sled(e))?;
            if !bytes.starts_with(&prefix) || keys.len() >= limit {
                break;
            }
            keys.push(self.key_from(&bytes[1..])?);
        }
        Ok(keys)
    }

    /// How many keys are in `phase`.
    pub fn count(&self, phase: PhaseKind) -> usize {
        self.phases.scan_prefix([phase as u8]).count()
    }

    /// Unknown keys whose query time is at or before `now`, earliest first, at most `limit`.
    pub fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        let mut keys = Vec::new();
        // Every entry of a later time sorts after that time's 8 bytes alone.
        for item in self.schedule.range(..now.plus_ms(1).0.to_be_bytes()) {
            let (bytes, _) = item.map_err(|e| self.sled(e))?;
            if keys.len() >= limit {
                break;
            }
            keys.push(self.key_from(bytes.get(8..).unwrap_or_default())?);
        }
        Ok(keys)
    }

    /// The key a provider reference was issued for.
    pub fn key_for_reference(
        &self,
        reference: &ProviderReference,
    ) -> Result<Option<IdempotencyKey>> {
        self.references
            .get(reference.as_str())
            .map_err(|e| self.sled(e))?
            .map(|bytes| self.key_from(&bytes))
            .transpose()
    }

    /// The stored events of `key`, in journal order.
    pub fn history(&self, key: &IdempotencyKey) -> Result<Vec<StoredEvent>> {
        let prefix = history_prefix(key);
        let mut events = Vec::new();
        for item in self.history.scan_prefix(&prefix) {
            let (bytes, payload) = item.map_err(|e| self.sled(e))?;
            let word: [u8; 8] = bytes
                .get(prefix.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    self.error(IndexError::Malformed {
                        what: "history key",
                    })
                })?;
            events.push(StoredEvent {
                sequence: u64::from_be_bytes(word),
                payload: payload.to_vec(),
            });
        }
        Ok(events)
    }

    /// Empties every tree (before a rebuild).
    pub fn clear(&self) -> Result<()> {
        for tree in [
            &self.states,
            &self.phases,
            &self.schedule,
            &self.references,
            &self.history,
            &self.meta,
        ] {
            tree.clear().map_err(|e| self.sled(e))?;
        }
        self.set_meta_u64("format", INDEX_FORMAT_VERSION)
    }

    /// Writes sled's buffers to disk (not needed for correctness: the index is derived).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.sled(e))?;
        Ok(())
    }
}
