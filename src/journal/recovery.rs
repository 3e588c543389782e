//! Recovery of the last segment on open: find where the complete commits end, tell a power cut
//! (an unsynced commit torn or partly lost: cut and reported) from corruption (a typed error,
//! never skipped), and make what remains durable before anything is served from it.
//!
//! The rule (version 2 segments, `docs/format.md` "Recovery"): a power cut can only damage the
//! last commit frame, the one whose sync had not returned, and only within `COMMIT_BYTES_MAX`
//! bytes of the end of the last intact frame; a later frame is written only after the earlier
//! one was synced. So damage is a torn tail exactly when no intact frame follows it; bytes past
//! the torn region are never looked at on open (`verify` checks them). Version 1 segments
//! (records without frames) keep their own rule: damage followed by an intact record is
//! corruption.
//!
//! Invariants:
//! - only bytes after the last complete commit of the last segment are ever changed, and only
//!   to zeros, and never when evidence shows that records up to a later sequence were
//!   acknowledged (then nothing is changed and the open fails);
//! - the segment is synced before the journal serves anything, so nothing that only reached the
//!   page cache (a previous process's failed sync) is ever acknowledged again.

use crate::error::{Corruption, Error, Result};
use crate::limits::COMMIT_BYTES_MAX;
use crate::model::Sequence;

use super::RecoveryReport;
use super::TornTail;
use super::format::{
    BadRecord, FRAME_HEADER_LEN, FRAME_MAGIC, RECORD_HEADER_LEN, SEGMENT_FORMAT_V1, decode_intact,
};
use super::group_commit::Writer;
use super::segment::{
    Committed, Cursor, READ_WINDOW_LEN, RECORD_LEN_MAX, SegmentInfo, Step, Window, corrupt,
    intact_frame_at, open_segment,
};
use super::storage::Storage;

/// What scanning the last segment found, before anything is changed.
pub(crate) struct LastSegment {
    /// Its format version.
    pub version: u32,
    /// Where the last complete commit ends, with the chain head and sequence there.
    pub committed: Committed,
    /// The end of the torn tail after it (`committed.end` if there is none).
    pub garbage_end: u64,
}

impl LastSegment {
    /// The torn tail the scan found, if any.
    pub fn torn_tail(&self, segment: u64) -> Option<TornTail> {
        (self.garbage_end > self.committed.end).then(|| TornTail {
            segment,
            offset: self.committed.end,
            bytes: self.garbage_end - self.committed.end,
        })
    }
}

/// Scans the last segment, reading only: where its complete commits end, whether a torn tail
/// follows, or why the damage is corruption. `acknowledged` is the evidence of what was
/// acknowledged (an index watermark).
pub(crate) fn scan_last(
    storage: &dyn Storage,
    last: &SegmentInfo,
    acknowledged: Sequence,
) -> Result<LastSegment> {
    let segment = open_segment(storage, last)?;
    let version = segment.header.version;
    let mut cursor = Cursor::new(segment, last.number);
    let bad = loop {
        match cursor.step()? {
            Step::Record(_) => {}
            Step::End => break None,
            Step::Bad { offset, why } => break Some((offset, why)),
        }
    };
    let committed = cursor.committed();
    let damage = match bad {
        Some((offset, BadRecord::Misplaced(kind))) => {
            return Err(corrupt(last.number, offset, kind));
        }
        Some((offset, BadRecord::Damaged(kind))) => Some((offset, kind)),
        None => None,
    };
    if committed.last_sequence < acknowledged.0 {
        // Whatever is wrong at the end was synced and acknowledged: not a torn tail. Nothing is
        // cut, so the damaged bytes stay for an operator to see.
        return Err(Error::AcknowledgedMissing {
            acknowledged,
            journal_last: Sequence(committed.last_sequence),
        });
    }
    let next = committed.last_sequence.saturating_add(1);
    let window = cursor.window();
    let read_err = |e| Error::io(format!("reading {}", last.path.display()), e);
    let garbage_end = if version == SEGMENT_FORMAT_V1 {
        if let Some((offset, kind)) = damage
            && let Some(intact_at) =
                intact_record_after(window, offset + 1, next).map_err(read_err)?
        {
            return Err(damage_before_intact(last.number, offset, kind, intact_at));
        }
        last_nonzero_end(window, committed.end, window.len()).map_err(read_err)?
    } else {
        let region_end = window.len().min(committed.end + COMMIT_BYTES_MAX as u64);
        let garbage_end = last_nonzero_end(window, committed.end, region_end).map_err(read_err)?;
        if damage.is_some() || garbage_end > committed.end {
            let from = committed.end + 1;
            if let Some(intact_at) = intact_frame_after(window, from, next).map_err(read_err)? {
                let (offset, kind) = damage.unwrap_or((
                    committed.end,
                    Corruption::GarbageAfterEnd { at: committed.end },
                ));
                return Err(damage_before_intact(last.number, offset, kind, intact_at));
            }
        }
        garbage_end
    };
    Ok(LastSegment {
        version,
        committed,
        garbage_end,
    })
}

/// Scans the last segment, cuts a torn tail (reporting it) and returns the writer positioned
/// after the last complete commit.
pub(crate) fn recover_last(
    storage: &dyn Storage,
    last: &SegmentInfo,
    acknowledged: Sequence,
    report: &mut RecoveryReport,
) -> Result<Writer> {
    let scanned = scan_last(storage, last, acknowledged)?;
    let committed = scanned.committed;
    let io_err = |e| Error::io(format!("recovering {}", last.path.display()), e);
    let file = storage.open(&last.path, false).map_err(io_err)?;
    let mut at = committed.end;
    while at < scanned.garbage_end {
        let len = (scanned.garbage_end - at).min(READ_WINDOW_LEN as u64);
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.write_all_at(&zeros, at).map_err(io_err)?;
        at += len;
    }
    // An existing segment keeps the length it has: only new segments are preallocated, so that
    // opening a journal (even with another configured segment length) changes no byte of it
    // beyond a torn tail. What was just read may be only in the page cache (a previous
    // process's sync failed, or it died before syncing): make it durable before anyone is
    // served from it.
    file.sync_data().map_err(io_err)?;
    report.torn_tail = scanned.torn_tail(last.number);
    Ok(Writer {
        file,
        segment: last.number,
        version: scanned.version,
        offset: committed.end,
        next_sequence: committed.last_sequence.saturating_add(1),
        head: committed.head,
        frame_buf: Vec::new(),
    })
}

fn damage_before_intact(segment: u64, offset: u64, damage: Corruption, intact_at: u64) -> Error {
    let kind = Corruption::DamageBeforeIntact {
        damage: Box::new(damage),
        intact_at,
    };
    corrupt(segment, offset, kind)
}

/// Where an intact commit frame with a plausible sequence starts at or after `from`, if one
/// does: then damage before it is corruption, not a torn tail.
fn intact_frame_after(
    window: &mut Window,
    from: u64,
    next_sequence: u64,
) -> std::io::Result<Option<u64>> {
    let end = window.len().saturating_sub(FRAME_HEADER_LEN as u64);
    let mut at = from;
    while at < end {
        let bytes = window.bytes_at(at, READ_WINDOW_LEN)?;
        let scan = bytes.len().saturating_sub(FRAME_HEADER_LEN - 1).max(1);
        let Some(i) = bytes[..scan.min(bytes.len())]
            .windows(FRAME_MAGIC.len())
            .position(|w| w == FRAME_MAGIC)
        else {
            at += scan as u64;
            continue;
        };
        let candidate = at + i as u64;
        if intact_frame_at(window, candidate, next_sequence)? {
            return Ok(Some(candidate));
        }
        at = candidate + 1;
    }
    Ok(None)
}

/// Whether an intact record with a plausible sequence exists anywhere at or after `from` (the
/// version 1 rule): if so, damage before it is corruption, not a torn tail.
fn intact_record_after(
    window: &mut Window,
    from: u64,
    next_sequence: u64,
) -> std::io::Result<Option<u64>> {
    let end = window.len().saturating_sub(RECORD_HEADER_LEN as u64);
    for at in from..end {
        let bytes = window.bytes_at(at, RECORD_LEN_MAX)?;
        let plausible = decode_intact(bytes).is_ok_and(|r| {
            r.sequence >= next_sequence && r.sequence - next_sequence < u64::from(u32::MAX)
        });
        if plausible {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// The offset after the last non-zero byte in `from..to` (`from` if there is none).
fn last_nonzero_end(window: &mut Window, from: u64, to: u64) -> std::io::Result<u64> {
    let mut end = from;
    let mut at = from;
    while at < to {
        let want = usize::try_from((to - at).min(READ_WINDOW_LEN as u64)).unwrap_or(0);
        let bytes = window.bytes_at(at, want)?;
        let chunk = &bytes[..bytes.len().min(want)];
        if chunk.is_empty() {
            break;
        }
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            end = at + i as u64 + 1;
        }
        at += chunk.len() as u64;
    }
    Ok(end)
}
