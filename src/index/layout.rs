//! The persistent index's layout, shared by its engines (`fjall.rs`, the default, and `sled.rs`
//! behind the `sled` feature): which bytes go under which key, and the checksum that seals each
//! value.
//!
//! Invariant: every value is sealed with a crc32 of its full engine key and its bytes, so that
//! damage inside an engine's files is reported as [`IndexError::Damaged`], never served as a
//! state and never blamed on the journal; and one commit batch's changes (states, lists,
//! schedule, references, the watermark) are produced as one list of writes, which each engine
//! applies atomically, with each engine key written at most once (given one update per key, as
//! `merged` makes them): a listing an update keeps is neither removed nor written again.
//!
//! Layout: one ordered key space, keys prefixed by their kind:
//! - `s` ‖ key → [`IndexEntry`] (current state, sequence of its last event, next query time, and
//!   the journal position of each of its events: its history is read from the journal);
//! - `p` ‖ phase tag ‖ key → () — keys by phase, ordered by key for cursor pagination;
//! - `q` ‖ next query time (u64 BE) ‖ key → () — unknown keys by when to query them;
//! - `r` ‖ provider reference → key;
//! - `m` ‖ `format` → index format version; `m` ‖ `watermark` → last journal sequence reflected
//!   (u64 BE) and the chain hash of that record (32 bytes), which ties the index to its journal.
//!
//! Values are `crc32 (u32 LE) ‖ bytes`, the crc taken over the full key and the bytes.

use crate::error::{IndexError, Result};
use crate::journal::codec::encode_value;
use crate::journal::format::{ChainHash, GENESIS_HASH};
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, Sequence, UnixMillis};

use super::{IndexWatermark, KeyUpdate};

/// Bumped whenever the index layout changes; an index of another version is rebuilt.
const INDEX_FORMAT_VERSION: u64 = 6;

const STATE: u8 = b's';
pub(super) const PHASE: u8 = b'p';
const SCHEDULE: u8 = b'q';
const REFERENCE: u8 = b'r';
const META: u8 = b'm';
const CRC_LEN: usize = 4;

/// Where an engine puts one batch's writes, each engine key at most once; it applies them
/// atomically. Keys and values are lent from buffers the writer reuses: an engine copies them.
pub(super) trait Writes {
    /// Sets `key` to `value`.
    fn insert(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn remove(&mut self, key: &[u8]);
}

fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    prefixed_into(&mut bytes, prefix, parts);
    bytes
}

/// A key built by one of the `*_into` functions below into a new vector.
fn built(into: impl FnOnce(&mut Vec<u8>) -> &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    into(&mut bytes);
    bytes
}

/// `prefix ‖ parts` in `bytes`, replacing what it held.
fn prefixed_into<'b>(bytes: &'b mut Vec<u8>, prefix: u8, parts: &[&[u8]]) -> &'b [u8] {
    bytes.clear();
    bytes.push(prefix);
    for part in parts {
        bytes.extend_from_slice(part);
    }
    bytes
}

/// The key of `key`'s entry.
pub(super) fn state_key(key: &IdempotencyKey) -> Vec<u8> {
    built(|bytes| state_key_into(bytes, key))
}

fn state_key_into<'b>(bytes: &'b mut Vec<u8>, key: &IdempotencyKey) -> &'b [u8] {
    prefixed_into(bytes, STATE, &[key.as_str().as_bytes()])
}

/// The key listing `key` in `phase`.
pub(super) fn phase_key(phase: PhaseKind, key: &IdempotencyKey) -> Vec<u8> {
    built(|bytes| phase_key_into(bytes, phase, key))
}

fn phase_key_into<'b>(bytes: &'b mut Vec<u8>, phase: PhaseKind, key: &IdempotencyKey) -> &'b [u8] {
    prefixed_into(bytes, PHASE, &[&[phase as u8], key.as_str().as_bytes()])
}

/// The prefix of every key listed in `phase`.
pub(super) fn phase_prefix(phase: PhaseKind) -> [u8; 2] {
    [PHASE, phase as u8]
}

fn schedule_key_into<'b>(bytes: &'b mut Vec<u8>, at: UnixMillis, key: &IdempotencyKey) -> &'b [u8] {
    prefixed_into(
        bytes,
        SCHEDULE,
        &[&at.0.to_be_bytes(), key.as_str().as_bytes()],
    )
}

/// The schedule's range up to and including `now`: `start..end`.
pub(super) fn schedule_until(now: UnixMillis) -> (Vec<u8>, Vec<u8>) {
    // Every entry of a later time sorts after that time's 8 bytes alone.
    (
        vec![SCHEDULE],
        prefixed(SCHEDULE, &[&now.plus_ms(1).0.to_be_bytes()]),
    )
}

/// The idempotency key's bytes inside a schedule key.
pub(super) fn scheduled_key_bytes(schedule_key: &[u8]) -> &[u8] {
    schedule_key.get(1 + 8..).unwrap_or_default()
}

/// The key of `reference`'s entry.
pub(super) fn reference_key(reference: &ProviderReference) -> Vec<u8> {
    built(|bytes| reference_key_into(bytes, reference))
}

fn reference_key_into<'b>(bytes: &'b mut Vec<u8>, reference: &ProviderReference) -> &'b [u8] {
    prefixed_into(bytes, REFERENCE, &[reference.as_str().as_bytes()])
}

/// The key of the format marker.
pub(super) fn format_key() -> Vec<u8> {
    prefixed(META, &[b"format"])
}

/// The key of the watermark.
pub(super) fn watermark_key() -> Vec<u8> {
    prefixed(META, &[b"watermark"])
}

/// `crc32(key ‖ bytes) ‖ bytes`.
pub(super) fn sealed(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + bytes.len());
    sealed_into(&mut value, key, bytes);
    value
}

/// `crc32(key ‖ bytes) ‖ bytes` in `value`, replacing what it held.
fn sealed_into<'v>(value: &'v mut Vec<u8>, key: &[u8], bytes: &[u8]) -> &'v [u8] {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key);
    crc.update(bytes);
    value.clear();
    value.extend_from_slice(&crc.finalize().to_le_bytes());
    value.extend_from_slice(bytes);
    value
}

/// The bytes of a sealed value, if its crc matches.
pub(super) fn unsealed<'v>(key: &[u8], value: &'v [u8]) -> Option<&'v [u8]> {
    let (crc, bytes) = value.split_first_chunk::<CRC_LEN>()?;
    let mut check = crc32fast::Hasher::new();
    check.update(key);
    check.update(bytes);
    (check.finalize() == u32::from_le_bytes(*crc)).then_some(bytes)
}

/// The sealed format marker: (key, value).
pub(super) fn format_marker() -> (Vec<u8>, Vec<u8>) {
    let key = format_key();
    let value = sealed(&key, &INDEX_FORMAT_VERSION.to_be_bytes());
    (key, value)
}

/// The format version in a marker's unsealed bytes.
pub(super) fn decode_format(bytes: &[u8]) -> std::result::Result<u64, IndexError> {
    let word: [u8; 8] = bytes.try_into().map_err(|_| IndexError::Damaged {
        what: "format marker",
    })?;
    Ok(u64::from_be_bytes(word))
}

/// What an index's format marker says about it, once its engine opened it.
pub(super) enum Format {
    /// This version's: use it.
    Current,
    /// Empty and unmarked: mark it, then use it.
    Fresh,
    /// Another version's, unmarked but not empty, or unreadable: rebuild it (why).
    Unusable(String),
}

/// Judges the format `marker` read from an index that is `empty` or not.
pub(super) fn judge_format(marker: Result<Option<u64>>, empty: bool) -> Format {
    match marker {
        Ok(Some(INDEX_FORMAT_VERSION)) => Format::Current,
        Ok(None) if empty => Format::Fresh,
        Ok(Some(other)) => Format::Unusable(format!(
            "index format {other}, expected {INDEX_FORMAT_VERSION}"
        )),
        Ok(None) => Format::Unusable("index has no format marker".into()),
        Err(e) => Format::Unusable(format!("index format marker unreadable: {e}")),
    }
}

/// The sealed watermark: (key, value).
pub(super) fn watermark_entry(watermark: IndexWatermark) -> (Vec<u8>, Vec<u8>) {
    let key = watermark_key();
    let mut bytes = watermark.sequence.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&watermark.chain_hash);
    let value = sealed(&key, &bytes);
    (key, value)
}

/// The watermark in its unsealed bytes, or the empty journal's when there is none.
pub(super) fn decode_watermark(
    bytes: Option<&[u8]>,
) -> std::result::Result<IndexWatermark, IndexError> {
    let Some(bytes) = bytes else {
        return Ok(IndexWatermark {
            sequence: Sequence(0),
            chain_hash: GENESIS_HASH,
        });
    };
    let damaged = || IndexError::Damaged { what: "watermark" };
    let (sequence, hash) = bytes.split_first_chunk::<8>().ok_or_else(damaged)?;
    let chain_hash: ChainHash = hash.try_into().map_err(|_| damaged())?;
    Ok(IndexWatermark {
        sequence: Sequence(u64::from_be_bytes(*sequence)),
        chain_hash,
    })
}

/// An idempotency key read back from an index key or value.
pub(super) fn decode_key(bytes: &[u8]) -> std::result::Result<IdempotencyKey, IndexError> {
    let damaged = || IndexError::Damaged { what: "key" };
    let text = std::str::from_utf8(bytes).map_err(|_| damaged())?;
    IdempotencyKey::new(text).map_err(|_| damaged())
}

/// Adds the writes of `updates` (in journal order, at most one per key: `merged`) and then of
/// `watermark` to `writes`.
pub(super) fn write_batch(
    writes: &mut impl Writes,
    updates: &[KeyUpdate],
    watermark: IndexWatermark,
) -> Result<()> {
    let mut buffers = Buffers::default();
    for update in updates {
        write_update(writes, update, &mut buffers)?;
    }
    let (key, value) = watermark_entry(watermark);
    writes.insert(&key, &value);
    Ok(())
}

/// The key and value buffers a batch's writes are built in, reused from one write to the next.
#[derive(Default)]
struct Buffers {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Adds one key's update to `writes`: removes it from the lists it leaves, lists it in those it
/// joins, moves it in the schedule if its time changed, records its new references and its
/// entry. A listing it keeps is left as it is: the value of a listing is always the same.
fn write_update(writes: &mut impl Writes, update: &KeyUpdate, buffers: &mut Buffers) -> Result<()> {
    let KeyUpdate {
        key,
        before,
        after,
        new_references,
    } = update;
    let Buffers {
        key: index_key,
        value,
    } = buffers;
    let before = before.unwrap_or_default();
    let listed = after.state.listed_as();
    for kind in before.phases().filter(|kind| !listed.contains(kind)) {
        writes.remove(phase_key_into(index_key, kind, key));
    }
    for &kind in listed
        .iter()
        .filter(|kind| !before.phases().any(|was| was == **kind))
    {
        let index_key = phase_key_into(index_key, kind, key);
        writes.insert(index_key, sealed_into(value, index_key, &[]));
    }
    if before.next_query_at != after.next_query_at {
        if let Some(at) = before.next_query_at {
            writes.remove(schedule_key_into(index_key, at, key));
        }
        if let Some(at) = after.next_query_at {
            let index_key = schedule_key_into(index_key, at, key);
            writes.insert(index_key, sealed_into(value, index_key, &[]));
        }
    }
    for reference in new_references {
        let index_key = reference_key_into(index_key, reference);
        writes.insert(
            index_key,
            sealed_into(value, index_key, key.as_str().as_bytes()),
        );
    }
    let entry = encode_value(&**after)?;
    let index_key = state_key_into(index_key, key);
    writes.insert(index_key, sealed_into(value, index_key, &entry));
    Ok(())
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::*;
    use crate::index::{IndexEntry, Listing};
    use crate::model::{AttemptNumber, PaymentState, Phase, UnknownReason};

    /// An engine as a map, refusing a key written twice in one batch.
    #[derive(Default)]
    struct Engine {
        keys: BTreeMap<Vec<u8>, Vec<u8>>,
        batch: BTreeSet<Vec<u8>>,
    }

    impl Writes for Engine {
        fn insert(&mut self, key: &[u8], value: &[u8]) {
            assert!(self.batch.insert(key.to_vec()), "written twice: {key:?}");
            self.keys.insert(key.to_vec(), value.to_vec());
        }
        fn remove(&mut self, key: &[u8]) {
            assert!(self.batch.insert(key.to_vec()), "written twice: {key:?}");
            self.keys.remove(key);
        }
    }

    impl Engine {
        fn apply(&mut self, update: &KeyUpdate, sequence: u64) {
            self.batch.clear();
            let watermark = IndexWatermark {
                sequence: Sequence(sequence),
                chain_hash: GENESIS_HASH,
            };
            write_batch(self, std::slice::from_ref(update), watermark).unwrap();
        }
    }

    fn unknown(queries: u32) -> Phase {
        Phase::Unknown {
            attempt: AttemptNumber::FIRST,
            started_at: UnixMillis(1),
            since: UnixMillis(2),
            reason: UnknownReason::Timeout,
            queries,
            not_found_streak: 0,
            pending: false,
            waited_ms: 0,
        }
    }

    /// A key's entries in a life that keeps a listing and a query time across updates, then
    /// leaves both.
    fn life() -> Vec<IndexEntry> {
        let key = IdempotencyKey::new("order-1").unwrap();
        let entry = |phase: Phase, next_query_at: Option<u64>, last: u64| {
            let mut state = PaymentState::new(key.clone());
            state.phase = phase;
            IndexEntry {
                state,
                last_sequence: Sequence(last),
                next_query_at: next_query_at.map(UnixMillis),
                events: Vec::new(),
            }
        };
        let in_flight = Phase::InFlight {
            attempt: AttemptNumber::FIRST,
            started_at: UnixMillis(1),
        };
        vec![
            entry(in_flight, None, 1),
            entry(unknown(0), Some(100), 2),
            entry(unknown(1), Some(200), 3),
            // Still unknown and due at the same time: neither listing nor schedule moves.
            entry(unknown(2), Some(200), 4),
            entry(
                Phase::Exhausted {
                    attempt: AttemptNumber::FIRST,
                },
                None,
                5,
            ),
        ]
    }

    #[test]
    fn updates_applied_one_by_one_leave_what_a_fresh_write_of_the_last_entry_leaves() {
        let entries = life();
        let mut incremental = Engine::default();
        let mut before: Option<&IndexEntry> = None;
        let mut keys_after_each = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let update = KeyUpdate {
                key: entry.state.key.clone(),
                before: before.map(Listing::of),
                after: Arc::new(entry.clone()),
                new_references: Vec::new(),
            };
            incremental.apply(&update, i as u64 + 1);
            if i == 3 {
                // The update that kept its listing and its query time wrote only the entry and
                // the watermark.
                assert_eq!(
                    incremental.batch,
                    BTreeSet::from([state_key(&entry.state.key), watermark_key()])
                );
            }
            let mut fresh = Engine::default();
            let update = KeyUpdate {
                before: None,
                ..update
            };
            fresh.apply(&update, i as u64 + 1);
            keys_after_each.push((incremental.keys.clone(), fresh.keys));
            before = Some(entry);
        }
        for (i, (incremental, fresh)) in keys_after_each.into_iter().enumerate() {
            assert_eq!(incremental, fresh, "after update {i}");
        }
    }
}
