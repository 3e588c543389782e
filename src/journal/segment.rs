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
    BadRecord, ChainHash, FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, RECORD_HEADER_LEN,
    SEGMENT_FORMAT_V1, SEGMENT_HEADER_LEN, SegmentHeader, decode_record,
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
        .open_read(path)
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
    let file = prepare_segment(storage, dir, header.number, config.segment_len)?;
    install_segment(storage, dir, file, header)
}

/// The temporary name of segment `number` while it is prepared.
fn temp_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{TEMP_SUFFIX}"))
}

/// The slow half of creating segment `number`: a zero-filled file of `segment_len` bytes under
/// its temporary name, synced. It is not a segment yet (no header, not named as one), so it can
/// be prepared ahead of time, off the commit path.
pub(crate) fn prepare_segment(
    storage: &dyn Storage,
    dir: &Path,
    number: u64,
    segment_len: u64,
) -> Result<Box<dyn StorageFile>> {
    let temp = temp_path(dir, number);
    let io_err = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    let file = storage
        .open(&temp, true)
        .map_err(|e| io_err("creating", e))?;
    file.set_len(0).map_err(|e| io_err("truncating", e))?;
    file.preallocate(segment_len)
        .map_err(|e| io_err("preallocating", e))?;
    file.sync_data().map_err(|e| io_err("syncing", e))?;
    Ok(file)
}

/// Removes a prepared segment file that will not be used (the journal is closing).
pub(crate) fn discard_prepared(storage: &dyn Storage, dir: &Path, number: u64) -> io::Result<()> {
    storage.remove(&temp_path(dir, number))
}

/// The quick half: writes `header` into a prepared file, syncs it, and names it a segment
/// (synced whole before it is named, so a named segment always has its header).
pub(crate) fn install_segment(
    storage: &dyn Storage,
    dir: &Path,
    file: Box<dyn StorageFile>,
    header: SegmentHeader,
) -> Result<Box<dyn StorageFile>> {
    let temp = temp_path(dir, header.number);
    let io_err = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| io_err("writing header of", e))?;
    file.sync_data().map_err(|e| io_err("syncing", e))?;
    storage
        .rename(&temp, &segment_path(dir, header.number))
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

    /// Forgets the bytes read so far, so that the next read sees what was written since (a
    /// reader following a live journal).
    pub fn forget(&mut self) {
        self.buf.clear();
        self.start = 0;
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

/// Walks the records of one segment from its header on, one window in memory at a time: through
/// commit frames (version 2), or records back to back (version 1).
pub(crate) struct Cursor {
    window: Window,
    segment: u64,
    version: u32,
    pos: u64,
    previous: ChainHash,
    next_sequence: u64,
    batch_left: Option<u32>,
    committed: Committed,
    /// Records passed since the last complete append (version 1) or frame (version 2).
    uncommitted: u64,
    /// The commit frame being walked (version 2).
    frame: Option<OpenFrame>,
}

/// A commit frame whose header and body checked, being walked record by record.
#[derive(Clone, Copy, Debug)]
struct OpenFrame {
    end: u64,
    records_left: u32,
}

impl Cursor {
    /// A cursor at the first record of `segment`.
    pub fn new(segment: OpenSegment, number: u64) -> Self {
        let header = segment.header;
        let start = SEGMENT_HEADER_LEN as u64;
        Self {
            window: Window::new(segment.file, segment.len),
            segment: number,
            version: header.version,
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
            frame: None,
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

    /// Where the last complete atomic append (version 1) or commit frame (version 2) ends.
    pub fn committed(&self) -> Committed {
        self.committed
    }

    /// Whether records of an append (or frame) whose end was not reached were passed.
    pub fn inside_batch(&self) -> bool {
        self.uncommitted > 0
    }

    /// Forgets the bytes read so far (see [`Window::forget`]): the next step re-reads the file.
    pub fn refresh(&mut self) {
        self.window.forget();
    }

    /// The window, for callers that look past the records (recovery).
    pub fn window(&mut self) -> &mut Window {
        &mut self.window
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
            .map_err(|e| read_error(segment, record.offset, e))?;
        Ok(bytes
            .get(RECORD_HEADER_LEN..record.len)
            .unwrap_or_default()
            .to_vec())
    }

    /// Decodes the next record.
    ///
    /// # Errors
    /// [`Error::Io`] if the segment cannot be read.
    pub fn step(&mut self) -> Result<Step> {
        if self.version != SEGMENT_FORMAT_V1
            && self.frame.is_none()
            && let Some(step) = self.enter_frame()?
        {
            return Ok(step);
        }
        let offset = self.pos;
        let limit = self.frame.map_or(RECORD_LEN_MAX as u64, |f| f.end - offset);
        let want = usize::try_from(limit)
            .unwrap_or(RECORD_LEN_MAX)
            .min(RECORD_LEN_MAX);
        let segment = self.segment;
        let bytes = self
            .window
            .bytes_at(offset, want)
            .map_err(|e| read_error(segment, offset, e))?;
        let bytes = &bytes[..bytes.len().min(want)];
        let record = match decode_record(bytes, &self.previous, self.next_sequence) {
            Ok(Some(record)) => record,
            Ok(None) if self.frame.is_none() => return Ok(Step::End),
            // Inside a frame whose body checked, nothing is torn: any bad record is corruption.
            Ok(None) => return Ok(misplaced(offset, Corruption::FrameMismatch)),
            Err(why) if self.frame.is_some() => {
                return Ok(misplaced(offset, why.into_corruption()));
            }
            Err(why) => return Ok(Step::Bad { offset, why }),
        };
        if let Some(expected) = self.batch_left
            && record.batch_left != expected
        {
            let found = record.batch_left;
            return Ok(misplaced(
                offset,
                Corruption::BatchMismatch { expected, found },
            ));
        }
        let Some(next_sequence) = self.next_sequence.checked_add(1) else {
            return Ok(misplaced(offset, Corruption::SequenceOverflow));
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
        match &mut self.frame {
            None if record.batch_left == 0 => self.commit_here(),
            None => {}
            Some(frame) => {
                frame.records_left -= 1;
                if frame.records_left == 0 {
                    if self.pos != frame.end || self.batch_left.is_some() {
                        return Ok(misplaced(self.pos, Corruption::FrameMismatch));
                    }
                    self.frame = None;
                    self.commit_here();
                }
            }
        }
        Ok(Step::Record(at))
    }

    /// Everything up to the current position is a complete append (or frame).
    fn commit_here(&mut self) {
        self.committed = Committed {
            end: self.pos,
            head: self.previous,
            last_sequence: self.next_sequence - 1,
        };
        self.uncommitted = 0;
    }

    /// Checks the commit frame at the current position and enters it; `Some` when there is no
    /// frame to enter (the clean end, or bytes that are not the next frame).
    fn enter_frame(&mut self) -> Result<Option<Step>> {
        let offset = self.pos;
        let segment = self.segment;
        let bytes = self
            .window
            .bytes_at(offset, FRAME_HEADER_LEN)
            .map_err(|e| read_error(segment, offset, e))?;
        let header = match FrameHeader::decode(bytes) {
            Ok(None) => return Ok(Some(Step::End)),
            Ok(Some(header)) => header,
            Err(damage) => {
                return Ok(Some(Step::Bad {
                    offset,
                    why: BadRecord::Damaged(damage),
                }));
            }
        };
        if let Some(damage) = self.check_body(offset, &header)? {
            return Ok(Some(Step::Bad {
                offset,
                why: BadRecord::Damaged(damage),
            }));
        }
        if header.first_sequence != self.next_sequence {
            let gap = Corruption::SequenceGap {
                expected: self.next_sequence,
                found: header.first_sequence,
            };
            return Ok(Some(misplaced(offset, gap)));
        }
        let body = offset + FRAME_HEADER_LEN as u64;
        self.frame = Some(OpenFrame {
            end: body + u64::from(header.body_len),
            records_left: header.records,
        });
        self.pos = body;
        Ok(None)
    }

    /// Whether the body of the frame at `offset` is whole and matches its crc.
    fn check_body(&mut self, offset: u64, header: &FrameHeader) -> Result<Option<Corruption>> {
        let body = offset + FRAME_HEADER_LEN as u64;
        let len = u64::from(header.body_len);
        if body + len > self.window.len() {
            return Ok(Some(Corruption::RecordCut {
                len: header.body_len as usize,
                available: usize::try_from(self.window.len().saturating_sub(body)).unwrap_or(0),
            }));
        }
        let crc =
            body_crc(&mut self.window, body, len).map_err(|e| read_error(self.segment, body, e))?;
        Ok((crc != header.body_crc).then_some(Corruption::FrameCrc))
    }
}

fn read_error(segment: u64, offset: u64, e: io::Error) -> Error {
    Error::io(format!("reading segment {segment} at offset {offset}"), e)
}

/// A record that is intact but not where it should be: only corruption produces it.
fn misplaced(offset: u64, kind: Corruption) -> Step {
    Step::Bad {
        offset,
        why: BadRecord::Misplaced(kind),
    }
}

/// crc32 of `len` bytes from `from`, read window by window.
fn body_crc(window: &mut Window, from: u64, len: u64) -> io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut at = from;
    while at < from + len {
        let want = usize::try_from((from + len - at).min(READ_WINDOW_LEN as u64)).unwrap_or(0);
        let bytes = window.bytes_at(at, want)?;
        let chunk = bytes.get(..want).unwrap_or(bytes);
        if chunk.is_empty() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        crc.update(chunk);
        at += chunk.len() as u64;
    }
    Ok(crc.finalize())
}

/// Whether an intact commit frame (header, body crc, plausible sequence) starts at `at`: a frame
/// written after `next_sequence - 1`.
pub(crate) fn intact_frame_at(
    window: &mut Window,
    at: u64,
    next_sequence: u64,
) -> io::Result<bool> {
    let bytes = window.bytes_at(at, FRAME_HEADER_LEN)?;
    if !bytes.starts_with(&FRAME_MAGIC) {
        return Ok(false);
    }
    let Ok(Some(header)) = FrameHeader::decode(bytes) else {
        return Ok(false);
    };
    let plausible = header.first_sequence >= next_sequence
        && header.first_sequence - next_sequence < u64::from(u32::MAX);
    let body = at + FRAME_HEADER_LEN as u64;
    let len = u64::from(header.body_len);
    if !plausible || body + len > window.len() {
        return Ok(false);
    }
    Ok(body_crc(window, body, len)? == header.body_crc)
}
