//! The `segment` target: arbitrary bytes as the only segment of a journal.
//!
//! Invariant: opening, reading and verifying never panic, whatever the bytes.

use std::path::Path;
use std::sync::Arc;

use crate::journal::codec::decode_event;
use crate::journal::format::{
    FrameHeader, GENESIS_HASH, SEGMENT_HEADER_LEN, SegmentHeader, decode_record,
};
use crate::journal::simdisk::SimDisk;
use crate::journal::{Journal, JournalConfig};
use crate::model::Sequence;

/// Opens `bytes` as the only segment of a journal, reads every record back, verifies, and
/// decodes each record directly as well.
pub fn segment(bytes: &[u8]) {
    let dir = Path::new("/fuzz");
    let disk = SimDisk::new(0);
    disk.put_bytes(&dir.join(format!("{:020}.seg", 0)), bytes.to_vec());
    let config = JournalConfig {
        segment_len: crate::limits::SEGMENT_LEN_MIN,
        create_if_missing: false,
    };
    if let Ok((journal, _)) = Journal::open_on(Arc::new(disk), dir, config) {
        for record in journal.read_from(Sequence(1)) {
            match record {
                Ok(record) => {
                    let _ = decode_event(&record.payload);
                }
                Err(_) => break,
            }
        }
        let _ = journal.verify();
    }
    let (mut previous, mut sequence, mut at) = (GENESIS_HASH, 1, 0);
    if let Ok(header) = SegmentHeader::decode(bytes) {
        (previous, sequence, at) = (
            header.previous_hash,
            header.first_sequence,
            SEGMENT_HEADER_LEN,
        );
    }
    let _ = bytes.get(at..).map(FrameHeader::decode);
    while let Some(rest) = bytes.get(at..) {
        match decode_record(rest, &previous, sequence) {
            Ok(Some(record)) => {
                let _ = decode_event(record.payload);
                previous = record.hash;
                sequence = sequence.wrapping_add(1);
                at += record.len;
            }
            _ => break,
        }
    }
}
