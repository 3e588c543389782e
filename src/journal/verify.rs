//! `verify`: walks every segment and checks each header, record crc, chain link and sequence,
//! and the links between segments.
//!
//! Invariant: verify reads the journal and never writes it; it holds at most one read window
//! per segment being checked, whatever the segment size.

use crate::error::{Corruption, Error, Result};
use crate::model::Sequence;

use super::format::{ChainHash, GENESIS_HASH, SEGMENT_HEADER_LEN};
use super::segment::{Cursor, READ_WINDOW_LEN, SegmentInfo, Step, Window, corrupt, open_segment};
use super::{Journal, VerifyReport};
use crate::sync::lock;

/// The offset of the first non-zero byte at or after `from`, if there is one.
fn first_nonzero(window: &mut Window, from: u64) -> std::io::Result<Option<u64>> {
    let mut at = from;
    while at < window.len() {
        let bytes = window.bytes_at(at, READ_WINDOW_LEN)?;
        if bytes.is_empty() {
            break;
        }
        if let Some(i) = bytes.iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += bytes.len() as u64;
    }
    Ok(None)
}

/// What checking one segment on its own found.
struct SegmentCheck {
    first_sequence: u64,
    previous_hash: ChainHash,
    records: u64,
    record_bytes: u64,
    last_sequence: u64,
    head: ChainHash,
}

impl Journal {
    /// Walks every segment and checks each header, record crc, chain link, sequence and the
    /// links between segments. Segments are checked in parallel (each header carries the
    /// sequence and chain hash it continues from), then linked in order.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the segment and offset of the first problem.
    pub fn verify(&self) -> Result<VerifyReport> {
        let until = self.last_sequence().0;
        let segments = self.segment_list();
        let mut report = VerifyReport {
            segments: segments.len(),
            records: 0,
            record_bytes: 0,
            last_sequence: Sequence(0),
            head: GENESIS_HASH,
            torn_tail: self.left_torn.clone(),
        };
        let parallel = std::thread::available_parallelism().map_or(1, usize::from);
        let mut expected = (1u64, GENESIS_HASH);
        for window in segments.chunks(parallel) {
            let checked: Vec<Result<SegmentCheck>> = std::thread::scope(|scope| {
                let handles: Vec<_> = window
                    .iter()
                    .map(|info| scope.spawn(move || self.check_segment(info, until)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(Error::VerifyPanicked)))
                    .collect()
            });
            for (info, check) in window.iter().zip(checked) {
                let check = check?;
                if (check.first_sequence, check.previous_hash) != expected {
                    let kind = Corruption::SegmentLink {
                        first: check.first_sequence,
                        previous_last: expected.0 - 1,
                    };
                    return Err(corrupt(info.number, 0, kind));
                }
                report.records += check.records;
                report.record_bytes += check.record_bytes;
                expected = (check.last_sequence + 1, check.head);
            }
        }
        report.last_sequence = Sequence(expected.0 - 1);
        report.head = expected.1;
        if report.last_sequence.0 != until {
            let kind = Corruption::EndsEarly {
                ends_at: report.last_sequence.0,
                written: until,
            };
            return Err(corrupt(segments.last().map_or(0, |s| s.number), 0, kind));
        }
        Ok(report)
    }

    /// Checks one segment on its own: header, every record up to sequence `until`, and that
    /// nothing but zeros follows its last record (beyond a torn tail a read-only open left). The last segment's tail is checked with
    /// appends held off, so that a commit being written is not taken for garbage.
    fn check_segment(&self, info: &SegmentInfo, until: u64) -> Result<SegmentCheck> {
        let segment = open_segment(&*self.storage, info)?;
        let header = segment.header;
        let mut cursor = Cursor::new(segment, info.number);
        let mut records = 0u64;
        while cursor.next_sequence() <= until {
            match cursor.step()? {
                Step::Record(_) => records += 1,
                Step::End => break,
                Step::Bad { offset, why } => {
                    return Err(corrupt(info.number, offset, why.into_corruption()));
                }
            }
        }
        let committed = cursor.committed();
        if cursor.inside_batch() {
            return Err(corrupt(
                info.number,
                committed.end,
                Corruption::AppendCutShort,
            ));
        }
        let writer = lock(&self.writer);
        let is_last = writer.segment == info.number;
        if !is_last {
            drop(writer);
        }
        // A read-only open leaves a torn tail where it is: skip exactly the bytes it reported.
        let tail_from = match &self.left_torn {
            Some(torn)
                if is_last && torn.segment == info.number && torn.offset == committed.end =>
            {
                committed.end + torn.bytes
            }
            _ => committed.end,
        };
        let window = cursor.window();
        if let Some(at) = first_nonzero(window, tail_from)
            .map_err(|e| Error::io(format!("reading {}", info.path.display()), e))?
            && (!is_last || self.last_sequence().0 == until)
        {
            return Err(corrupt(info.number, at, Corruption::GarbageAfterEnd { at }));
        }
        Ok(SegmentCheck {
            first_sequence: header.first_sequence,
            previous_hash: header.previous_hash,
            records,
            record_bytes: committed.end - SEGMENT_HEADER_LEN as u64,
            last_sequence: committed.last_sequence,
            head: committed.head,
        })
    }
}
