//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the test that replays their
//! checked-in corpora on stable. Not part of the stable API.
//!
//! Invariant: every function here accepts arbitrary bytes and returns normally; a panic is a bug.

use std::path::Path;
use std::sync::Arc;

use crate::journal::codec::decode_event;
use crate::journal::format::{GENESIS_HASH, SEGMENT_HEADER_LEN, SegmentHeader, decode_record};
use crate::journal::simdisk::SimDisk;
use crate::journal::{Journal, JournalConfig};
use crate::model::Event;
use crate::model::{IdempotencyKey, Sequence};
use crate::model::{PaymentState, apply};

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

/// Decodes `bytes` as a sequence of length-prefixed event payloads and folds those that decode
/// for the first key seen; the fold must never panic.
pub fn fold(bytes: &[u8]) {
    let mut events: Vec<Event> = Vec::new();
    let mut rest = bytes;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        if let Ok(event) = decode_event(&tail[..len]) {
            events.push(event);
        }
        rest = &tail[len..];
    }
    let Some(key) = events.first().map(|e| e.key.clone()) else {
        return;
    };
    let mut state = PaymentState::new(key);
    for event in &events {
        if let Ok(next) = apply(&state, event) {
            state = next;
        }
    }
    let _ = IdempotencyKey::new(String::from_utf8_lossy(bytes).into_owned());
}
