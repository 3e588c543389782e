//! Reading durable records back in order, one segment window in memory at a time.
//!
//! Invariant: a reader returns only records up to the durable sequence at the time it was
//! created, each checked (crc, sequence, chain link); damage before that sequence ends the
//! iteration with a typed error naming segment and offset.

use std::sync::Arc;

use crate::error::Result;
use crate::model::Sequence;

use super::segment::{Cursor, SegmentInfo, Step, corrupt, open_segment};
use super::storage::Storage;
use super::{Journal, JournalRecord};

impl Journal {
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
