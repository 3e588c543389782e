//! One segment file: its name, its creation (whole or not at all), and reading it in bounded
//! windows with a cursor that walks its records.
//!
//! Invariants:
//! - a segment is visible under its final name only once its header and preallocated zeros are
//!   durable (created under a temporary name, synced, renamed, directory synced);
//! - reading never holds more than one window ([`READ_WINDOW_LEN`]) of a segment in memory and
//!   never trusts a length read from disk before checking it against a limit;
//! - the cursor accepts a record only if its crc, sequence and chain link check, and reports the
//!   first bytes that are not the next record, with their offset.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::limits::{RECORD_PAYLOAD_LEN_MAX, SEGMENT_LEN_MAX};

use super::JournalConfig;
use super::format::{
    BadRecord, ChainHash, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, decode_record,
};
use super::storage::{Storage, StorageFile};

/// File name suffix of a segment.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// File name suffix of a segment being created.
pub(crate) const TEMP_SUFFIX: &str = ".seg.tmp";

/// Bytes of a segment read at once: enough for many records, small enough that verifying one
/// segment per core stays within a few MiB whatever the segment size.
pub(crate) const READ_WINDOW_LEN: usize = 1 << 20;

/// The most bytes one record occupies.
pub(crate) const RECORD_LEN_MAX: usize = RECORD_HEADER_LEN + RECORD_PAYLOAD_LEN_MAX;
const _: () = assert!(READ_WINDOW_LEN >= 2 * RECORD_LEN_MAX);

/// Where a segment is and where its records start in the sequence.
#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub number: u64,
    pub first_sequence: u64,
    pub path: PathBuf,
}

/// The path of segment `number` in `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SEGMENT_SUFFIX}"))
}

/// A corruption error naming the segment and offset.
pub(crate) fn corrupt(segment: u64, offset: u64, kind: Corruption) -> Error {
    Error::Corrupt {
        segment,
        offset,
        kind,
    }
}

/// The open file of a segment, its checked length and its header.
pub(crate) struct OpenSegment {
    pub file: Box<dyn StorageFile>,
    pub len: u64,
    pub header: SegmentHeader,
}

/// Opens segment `info` and checks its length and header.
///
/// # Errors
/// [`Error::Io`] if it cannot be opened or read; [`Error::Corrupt`] if it is longer than
/// [`SEGMENT_LEN_MAX`], shorter than its header, or its header fails a check.
pub(crate) fn open_segment(storage: &dyn Storage, info: &SegmentInfo) -> Result<OpenSegment> {
    let path = &info.path;
    let file = storage
        .open(path, false)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .file_len()
        .map_err(|e| Error::io(format!("reading the length of {}", path.display()), e))?;
    if len > SEGMENT_LEN_MAX {
        return Err(corrupt(
            info.number,
            SEGMENT_LEN_MAX,
            Corruption::SegmentTooLong { len },
        ));
    }
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|_| corrupt(info.number, 0, Corruption::HeaderTruncated))?;
    let header = SegmentHeader::decode(&bytes).map_err(|kind| corrupt(info.number, 0, kind))?;
    if header.number != info.number {
        return Err(corrupt(
            info.number,
            0,
            Corruption::SegmentNumber {
                header: header.number,
            },
        ));
    }
    Ok(OpenSegment { file, len, header })
}

/// Creates segment `number` under a temporary name, preallocates it, syncs it, renames it into
/// place and syncs the directory: a segment is visible only once it is whole.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    config: &JournalConfig,
    header: SegmentHeader,
) -> Result<Box<dyn StorageFile>> {
    let number = header.number;
    let path = segment_path(dir, number);
    let temp = dir.join(format!("{number:020}{TEMP_SUFFIX}"));
    let io_err = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    let file = storage
        .open(&temp, true)
        .map_err(|e| io_err("creating", e))?;
    file.set_len(0).map_err(|e| io_err("truncating", e))?;
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| io_err("writing header of", e))?;
    file.preallocate(config.segment_len)
        .map_err(|e| io_err("preallocating", e))?;
    file.sync_data().map_err(|e| io_err("syncing", e))?;
    storage
        .rename(&temp, &path)
        .map_err(|e| io_err("renaming", e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
    Ok(file)
}

/// A bounded view of a file: at most one window of its bytes in memory.
pub(crate) struct Window {
    file: Box<dyn StorageFile>,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window {
    /// A window over `file`, whose length `len` was checked against [`SEGMENT_LEN_MAX`].
    pub fn new(file: Box<dyn StorageFile>, len: u64) -> Self {
        Self {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The bytes from `offset` on: at least `want` of them unless the file ends first, at most
    /// one window.
    pub fn bytes_at(&mut self, offset: u64, want: usize) -> io::Result<&[u8]> {
        assert!(
            want <= READ_WINDOW_LEN,
            "a read asks for at most one window"
        );
        let available = self.len.saturating_sub(offset);
        let need = (want as u64).min(available);
        let loaded_end = self.start + self.buf.len() as u64;
        if offset < self.start || offset + need > loaded_end {
            // At most one window: the conversion cannot truncate.
            let load = usize::try_from(available.min(READ_WINDOW_LEN as u64)).unwrap_or(0);
            self.buf.resize(load, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        Ok(self.buf.get(from..).unwrap_or_default())
    }
}

/// A record the cursor accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordAt {
    pub sequence: u64,
    pub hash: ChainHash,
    /// Offset of its header in the segment.
    pub offset: u64,
    /// Bytes it occupies (header + payload).
    pub len: usize,
}

/// What the cursor found next.
pub(crate) enum Step {
    /// The next record, chained and in sequence.
    Record(RecordAt),
    /// Zeros where the next record would start: the clean end of the written part.
    End,
    /// Bytes that are not the next record, at `offset`.
    Bad { offset: u64, why: BadRecord },
}

/// The position after the last complete atomic append the cursor has passed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Committed {
    /// Offset after it.
    pub end: u64,
    /// Chain hash of its last record.
    pub head: ChainHash,
    /// Sequence of its last record.
    pub last_sequence: u64,
}

/// Walks the records of one segment from its header on, one window in memory at a time.
pub(crate) struct Cursor {
    window: Window,
    segment: u64,
    pos: u64,
    previous: ChainHash,
    next_sequence: u64,
    batch_left: Option<u32>,
    committed: Committed,
    /// Records passed since the last complete append.
    uncommitted: u64,
}

impl Cursor {
    /// A cursor at the first record of `segment`.
    pub fn new(segment: OpenSegment, number: u64) -> Self {
        let header = segment.header;
        let start = SEGMENT_HEADER_LEN as u64;
        Self {
            window: Window::new(segment.file, segment.len),
            segment: number,
            pos: start,
            previous: header.previous_hash,
            next_sequence: header.first_sequence,
            batch_left: None,
            committed: Committed {
                end: start,
                head: header.previous_hash,
                last_sequence: header.first_sequence - 1,
            },
            uncommitted: 0,
        }
    }

    /// The segment's number.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// The sequence the next record must have.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Where the last complete atomic append ends.
    pub fn committed(&self) -> Committed {
        self.committed
    }

    /// Whether records of an append whose last record was not reached were passed.
    pub fn inside_batch(&self) -> bool {
        self.uncommitted > 0
    }

    /// The window, for callers that look past the records (recovery).
    pub fn window(&mut self) -> &mut Window {
        &mut self.window
    }

    /// The segment's file, once the walk is over.
    pub fn into_file(self) -> Box<dyn StorageFile> {
        self.window.file
    }

    /// Decodes the next record.
    ///
    /// # Errors
    /// [`Error::Io`] if the segment cannot be read.
    pub fn step(&mut self) -> Result<Step> {
        let offset = self.pos;
        let segment = self.segment;
        let bytes = self
            .window
            .bytes_at(offset, RECORD_LEN_MAX)
            .map_err(|e| Error::io(format!("reading segment {segment} at offset {offset}"), e))?;
        let record = match decode_record(bytes, &self.previous, self.next_sequence) {
            Ok(None) => return Ok(Step::End),
            Ok(Some(record)) => record,
            Err(why) => return Ok(Step::Bad { offset, why }),
        };
        if let Some(expected) = self.batch_left
            && record.batch_left != expected
        {
            return Ok(Step::Bad {
                offset,
                why: BadRecord::Misplaced(Corruption::BatchMismatch {
                    expected,
                    found: record.batch_left,
                }),
            });
        }
        let Some(next_sequence) = self.next_sequence.checked_add(1) else {
            return Ok(Step::Bad {
                offset,
                why: BadRecord::Misplaced(Corruption::SequenceOverflow),
            });
        };
        let at = RecordAt {
            sequence: record.sequence,
            hash: record.hash,
            offset,
            len: record.len,
        };
        self.pos = offset + record.len as u64;
        self.previous = record.hash;
        self.next_sequence = next_sequence;
        self.batch_left = record.batch_left.checked_sub(1);
        self.uncommitted += 1;
        if record.batch_left == 0 {
            self.committed = Committed {
                end: self.pos,
                head: record.hash,
                last_sequence: record.sequence,
            };
            self.uncommitted = 0;
        }
        Ok(Step::Record(at))
    }

    /// The payload of `record`, which this cursor just returned.
    ///
    /// # Errors
    /// [`Error::Io`] if the segment cannot be read.
    pub fn payload(&mut self, record: &RecordAt) -> Result<Vec<u8>> {
        let segment = self.segment;
        let bytes = self
            .window
            .bytes_at(record.offset, record.len)
            .map_err(|e| Error::io(format!("reading segment {segment}"), e))?;
        Ok(bytes
            .get(RECORD_HEADER_LEN..record.len)
            .unwrap_or_default()
            .to_vec())
    }
}
