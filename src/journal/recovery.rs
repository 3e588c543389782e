//! Recovery of the last segment on open: find where the complete atomic appends end, tell a torn
//! tail (an append that never completed, cut and reported) from corruption (a typed error,
//! never skipped), and make what remains durable before anything is served from it.
//!
//! Invariants:
//! - only bytes after the last complete append of the last segment are ever changed, and only
//!   to zeros, and never when evidence shows that records up to a later sequence were
//!   acknowledged (then nothing is changed and the open fails);
//! - damage followed by an intact record with a later sequence is corruption, not a torn tail:
//!   a record is written only after everything before it was synced;
//! - the segment is synced before the journal serves anything, so nothing that only reached the
//!   page cache (a previous process's failed sync) is ever acknowledged again.

use crate::error::{Corruption, Error, Result};
use crate::limits::SEGMENT_LEN_MAX;
use crate::model::Sequence;

use super::RecoveryReport;
use super::TornTail;
use super::format::{BadRecord, RECORD_HEADER_LEN, decode_intact};
use super::group_commit::Writer;
use super::segment::{
    Cursor, READ_WINDOW_LEN, RECORD_LEN_MAX, SegmentInfo, Step, Window, corrupt, open_segment,
};
use super::storage::Storage;

/// Scans the last segment, cuts a torn tail (reporting it) and returns the writer positioned
/// after the last complete atomic append.
pub(crate) fn recover_last(
    storage: &dyn Storage,
    last: &SegmentInfo,
    acknowledged: Sequence,
    report: &mut RecoveryReport,
) -> Result<Writer> {
    let segment = open_segment(storage, last)?;
    let mut cursor = Cursor::new(segment, last.number);
    let bad = loop {
        match cursor.step()? {
            Step::Record(_) => {}
            Step::End => break None,
            Step::Bad { offset, why } => break Some((offset, why)),
        }
    };
    let committed = cursor.committed();
    if committed.last_sequence < acknowledged.0 {
        // Whatever is wrong at the end was synced and acknowledged: not a torn tail. Nothing is
        // cut, so the damaged bytes stay for an operator to see.
        return Err(Error::AcknowledgedMissing {
            acknowledged,
            journal_last: Sequence(committed.last_sequence),
        });
    }
    let window = cursor.window();
    if let Some((offset, why)) = bad {
        match why {
            BadRecord::Misplaced(kind) => return Err(corrupt(last.number, offset, kind)),
            BadRecord::Damaged(damage) => {
                let next = committed.last_sequence.saturating_add(1);
                if let Some(intact_at) = intact_record_after(window, offset + 1, next, last.number)?
                {
                    let kind = Corruption::DamageBeforeIntact {
                        damage: Box::new(damage),
                        intact_at,
                    };
                    return Err(corrupt(last.number, offset, kind));
                }
            }
        }
    }
    let garbage_end = last_nonzero_end(window, committed.end, last.number)?;
    let io_err = |e| Error::io(format!("recovering {}", last.path.display()), e);
    let file = cursor.into_file();
    let mut at = committed.end;
    while at < garbage_end {
        let len = (garbage_end - at).min(READ_WINDOW_LEN as u64);
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
    if garbage_end > committed.end {
        report.torn_tail = Some(TornTail {
            segment: last.number,
            offset: committed.end,
            bytes: garbage_end - committed.end,
        });
    }
    Ok(Writer {
        file,
        segment: last.number,
        offset: committed.end,
        next_sequence: committed.last_sequence + 1,
        head: committed.head,
    })
}

/// Whether an intact record with a plausible sequence exists anywhere at or after `from`: if
/// so, damage before it is corruption, not a torn tail.
fn intact_record_after(
    window: &mut Window,
    from: u64,
    next_sequence: u64,
    segment: u64,
) -> Result<Option<u64>> {
    let end = window.len().saturating_sub(RECORD_HEADER_LEN as u64);
    for at in from..end {
        let bytes = window
            .bytes_at(at, RECORD_LEN_MAX)
            .map_err(|e| Error::io(format!("reading segment {segment}"), e))?;
        let plausible = decode_intact(bytes).is_ok_and(|r| {
            r.sequence >= next_sequence && r.sequence - next_sequence < u64::from(u32::MAX)
        });
        if plausible {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// The offset after the last non-zero byte at or after `from` (`from` if there is none).
fn last_nonzero_end(window: &mut Window, from: u64, segment: u64) -> Result<u64> {
    debug_assert!(window.len() <= SEGMENT_LEN_MAX);
    let mut end = from;
    let mut at = from;
    while at < window.len() {
        let bytes = window
            .bytes_at(at, READ_WINDOW_LEN)
            .map_err(|e| Error::io(format!("reading segment {segment}"), e))?;
        if bytes.is_empty() {
            break;
        }
        if let Some(i) = bytes.iter().rposition(|&b| b != 0) {
            end = at + i as u64 + 1;
        }
        at += bytes.len() as u64;
    }
    Ok(end)
}
