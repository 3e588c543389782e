//! Reading durable records back in order, one segment window in memory at a time.
//!
//! Invariant: a reader returns only records up to the durable sequence at the time it was
//! created, each checked (crc, sequence, chain link); damage before that sequence ends the
//! iteration with a typed error naming segment and offset.

use std::sync::Arc;

use crate::error::{Corruption, Error, Result};
use crate::model::Sequence;

use super::format::{BadRecord, decode_intact};
use super::segment::{Cursor, RECORD_LEN_MAX, SegmentInfo, Step, Window, corrupt, open_segment};
use super::storage::Storage;
use super::{Journal, JournalRecord, RecordPosition};

impl Journal {
    /// The record at `position`, which must hold record `sequence` (as an index says): its crc
    /// and sequence are checked, not its chain link (that needs its predecessor).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the bytes there are not that record, [`Error::Io`].
    pub fn read_at(&self, position: RecordPosition, sequence: Sequence) -> Result<JournalRecord> {
        let info = self
            .segment_list()
            .into_iter()
            .find(|s| s.number == position.segment)
            .ok_or(Error::Corrupt {
                segment: position.segment,
                offset: position.offset,
                kind: Corruption::SegmentMissing {
                    missing: position.segment,
                },
            })?;
        let segment = open_segment(&*self.storage, &info)?;
        let mut window = Window::new(segment.file, segment.len);
        let bytes = window
            .bytes_at(position.offset, RECORD_LEN_MAX)
            .map_err(|e| Error::io(format!("reading {}", info.path.display()), e))?;
        let record = decode_intact(bytes)
            .map_err(|kind| corrupt(position.segment, position.offset, kind))?;
        if record.sequence != sequence.0 {
            let gap = Corruption::SequenceGap {
                expected: sequence.0,
                found: record.sequence,
            };
            return Err(corrupt(position.segment, position.offset, gap));
        }
        Ok(JournalRecord {
            sequence,
            hash: record.hash,
            position,
            payload: record.payload.to_vec(),
        })
    }

    /// Every durable record with sequence `from` or later, in order, one window of one segment
    /// in memory at a time. Records appended after the call are not included.
    pub fn read_from(&self, from: Sequence) -> JournalReader {
        let until = self.last_sequence().0;
        let mut all = self.segment_list();
        // Keep the segments from the last one starting at or before `from`, onwards.
        let first = all
            .iter()
            .rposition(|s| s.first_sequence <= from.0)
            .unwrap_or(0);
        JournalReader {
            storage: Arc::clone(&self.storage),
            segments: all.split_off(first).into_iter(),
            current: None,
            from: from.0.max(1),
            until,
        }
    }
}

/// Iterator over durable records; see [`Journal::read_from`].
pub struct JournalReader {
    storage: Arc<dyn Storage>,
    segments: std::vec::IntoIter<SegmentInfo>,
    current: Option<Cursor>,
    from: u64,
    until: u64,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("from", &self.from)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl JournalReader {
    fn next_record(&mut self) -> Result<Option<JournalRecord>> {
        loop {
            let Some(cursor) = &mut self.current else {
                let Some(info) = self.segments.next() else {
                    return Ok(None);
                };
                if info.first_sequence > self.until {
                    return Ok(None);
                }
                let segment = open_segment(&*self.storage, &info)?;
                self.current = Some(Cursor::new(segment, info.number));
                continue;
            };
            if cursor.next_sequence() > self.until {
                return Ok(None);
            }
            match cursor.step()? {
                Step::Record(record) => {
                    if record.sequence < self.from {
                        continue;
                    }
                    let payload = cursor.payload(&record)?;
                    return Ok(Some(JournalRecord {
                        sequence: Sequence(record.sequence),
                        hash: record.hash,
                        position: RecordPosition {
                            segment: cursor.segment(),
                            offset: record.offset,
                        },
                        payload,
                    }));
                }
                Step::End => self.current = None,
                Step::Bad { offset, why } => {
                    let number = cursor.segment();
                    self.segments = Vec::new().into_iter();
                    self.current = None;
                    return Err(corrupt(number, offset, why.into_corruption()));
                }
            }
        }
    }
}

impl Iterator for JournalReader {
    type Item = Result<JournalRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

impl Journal {
    /// Reads the journal in `dir` without opening it: every record of every segment in order,
    /// up to the first damage, which ends the iteration with a typed error naming segment and
    /// offset. For salvaging what a damaged journal still holds (`payledger export`); it takes
    /// no lock and writes nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`], or what listing the segments finds ([`Error::Corrupt`] for a bad
    /// header or a missing segment).
    pub fn salvage(storage: Arc<dyn Storage>, dir: &std::path::Path) -> Result<JournalReader> {
        let segments = super::list_segments(&*storage, dir, false)?;
        if segments.is_empty() {
            return Err(Error::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        Ok(JournalReader {
            storage,
            segments: segments.into_iter(),
            current: None,
            from: 1,
            until: u64::MAX,
        })
    }

    /// A reader that follows the journal as it grows, from record `from` on: it returns the
    /// records durable so far and `None` when there is nothing new yet; call again later. It
    /// sees records appended by another process (it re-reads the files), so a read-only journal
    /// can follow a live one.
    pub fn follow(&self, from: Sequence) -> Follower {
        let segments = self.segment_list();
        let first = segments
            .iter()
            .rposition(|s| s.first_sequence <= from.0)
            .unwrap_or(0);
        Follower {
            storage: Arc::clone(&self.storage),
            dir: self.dir.clone(),
            segment: segments.get(first).map_or(0, |s| s.number),
            cursor: None,
            from: from.0.max(1),
        }
    }
}

/// Follows a journal as it grows; see [`Journal::follow`].
pub struct Follower {
    storage: Arc<dyn Storage>,
    dir: std::path::PathBuf,
    segment: u64,
    cursor: Option<Cursor>,
    from: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("segment", &self.segment)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// The next record, or `None` if none is complete yet.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for bytes that cannot be a commit being written, [`Error::Io`].
    pub fn poll(&mut self) -> Result<Option<JournalRecord>> {
        loop {
            let Some(cursor) = &mut self.cursor else {
                let path = super::segment::segment_path(&self.dir, self.segment);
                if !self.storage.exists(&path) {
                    return Ok(None);
                }
                let info = SegmentInfo {
                    number: self.segment,
                    first_sequence: 0,
                    path,
                };
                let segment = open_segment(&*self.storage, &info)?;
                self.cursor = Some(Cursor::new(segment, info.number));
                continue;
            };
            match cursor.step()? {
                Step::Record(record) => {
                    if record.sequence < self.from {
                        continue;
                    }
                    self.from = record.sequence + 1;
                    let payload = cursor.payload(&record)?;
                    return Ok(Some(JournalRecord {
                        sequence: Sequence(record.sequence),
                        hash: record.hash,
                        position: RecordPosition {
                            segment: cursor.segment(),
                            offset: record.offset,
                        },
                        payload,
                    }));
                }
                // Nothing more here yet, or a commit still being written. A segment whose
                // successor exists is finished (it was synced before the successor was
                // created): move on from its end; damage in it is corruption.
                Step::End => {
                    let next = super::segment::segment_path(&self.dir, self.segment + 1);
                    if self.storage.exists(&next) {
                        self.segment += 1;
                        self.cursor = None;
                        continue;
                    }
                    cursor.refresh();
                    return Ok(None);
                }
                Step::Bad {
                    offset,
                    why: BadRecord::Damaged(kind),
                } => {
                    let next = super::segment::segment_path(&self.dir, self.segment + 1);
                    if self.storage.exists(&next) {
                        return Err(corrupt(cursor.segment(), offset, kind));
                    }
                    cursor.refresh();
                    return Ok(None);
                }
                Step::Bad {
                    offset,
                    why: BadRecord::Misplaced(kind),
                } => return Err(corrupt(cursor.segment(), offset, kind)),
            }
        }
    }
}
