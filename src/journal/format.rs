//! The journal's byte layout: segment headers and record framing, as pure functions over
//! byte slices. `docs/format.md` is the specification; this file repeats it.
//!
//! Invariant: a record is accepted only if its crc, sequence and chain link all check; the
//! decoder never panics and never returns a payload it did not fully verify.
//!
//! ```text
//! segment header (64 bytes)
//! offset size field
//!  0      8   magic            b"PLJRNL\r\n"
//!  8      4   format version   u32 LE (2; version 1 segments are still read)
//! 12      4   header crc32     u32 LE over bytes 16..64
//! 16      8   segment number   u64 LE
//! 24      8   first sequence   u64 LE (sequence of the segment's first record)
//! 32     32   previous hash    chain hash of the record before the first (zeros at genesis)
//!
//! commit frame (version 2): one per write-and-sync, the unit a power cut keeps or loses
//! offset size field
//!  0      4   magic            b"PLCF"
//!  4      4   body length      u32 LE, bytes of records after this header, 1..=COMMIT_BYTES_MAX-32
//!  8      8   first sequence   u64 LE, sequence of its first record
//! 16      4   record count     u32 LE, >= 1
//! 20      4   body crc32       u32 LE over the body
//! 24      4   reserved         zero
//! 28      4   header crc32     u32 LE over bytes 0..28
//! 32   body   records, back to back
//!
//! record (52-byte header + payload)
//! offset size field
//!  0      4   payload length   u32 LE, 1..=RECORD_PAYLOAD_LEN_MAX
//!  4      4   crc32            u32 LE over bytes 0..4 and 8..52+len
//!  8      8   sequence         u64 LE, previous + 1
//! 16      4   batch left       u32 LE, records after this one in the same atomic append
//! 20     32   chain hash       blake3(previous hash ‖ sequence LE ‖ batch left LE ‖ payload)
//! 52    len   payload          format-version byte + bincode event (see codec)
//! ```
//! Version 1 segments hold records back to back with no frames. After the last record (or
//! frame) a segment is zero up to its preallocated length.

use crate::error::Corruption;
use crate::limits::{COMMIT_BYTES_MAX, RECORD_PAYLOAD_LEN_MAX, SEQUENCE_MAX};

/// Identifies a payledger segment file. The `\r\n` catches text-mode mangling.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PLJRNL\r\n";
/// The segment format version this code writes: records in commit frames.
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// The first published segment format: records back to back, no frames. Read, never written.
pub const SEGMENT_FORMAT_V1: u32 = 1;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const HEADER_CRC_AT: usize = VERSION_AT + 4;
const SEGMENT_NUMBER_AT: usize = HEADER_CRC_AT + 4;
const FIRST_SEQUENCE_AT: usize = SEGMENT_NUMBER_AT + 8;
const PREVIOUS_HASH_AT: usize = FIRST_SEQUENCE_AT + 8;
/// Length of a segment header.
pub const SEGMENT_HEADER_LEN: usize = PREVIOUS_HASH_AT + 32;
const _: () = assert!(SEGMENT_HEADER_LEN == 64);

const PAYLOAD_LEN_AT: usize = 0;
const CRC_AT: usize = PAYLOAD_LEN_AT + 4;
const SEQUENCE_AT: usize = CRC_AT + 4;
const BATCH_LEFT_AT: usize = SEQUENCE_AT + 8;
const CHAIN_HASH_AT: usize = BATCH_LEFT_AT + 4;
/// Length of a record header; the payload follows.
pub const RECORD_HEADER_LEN: usize = CHAIN_HASH_AT + 32;
const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 8 + 4 + 32);

/// A chain hash: blake3 over the previous hash and the record.
pub type ChainHash = [u8; 32];

/// The hash the first segment continues from.
pub const GENESIS_HASH: ChainHash = [0; 32];

/// A decoded segment header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    /// The segment's format version: [`SEGMENT_FORMAT_VERSION`], or [`SEGMENT_FORMAT_V1`] for
    /// segments written before commit frames.
    pub version: u32,
    /// The segment's number, from 0, matching its file name.
    pub number: u64,
    /// Sequence of its first record.
    pub first_sequence: u64,
    /// Chain hash of the record before its first.
    pub previous_hash: ChainHash,
}

impl SegmentHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        bytes[MAGIC_AT..VERSION_AT].copy_from_slice(&SEGMENT_MAGIC);
        bytes[VERSION_AT..HEADER_CRC_AT].copy_from_slice(&self.version.to_le_bytes());
        bytes[SEGMENT_NUMBER_AT..FIRST_SEQUENCE_AT].copy_from_slice(&self.number.to_le_bytes());
        bytes[FIRST_SEQUENCE_AT..PREVIOUS_HASH_AT]
            .copy_from_slice(&self.first_sequence.to_le_bytes());
        bytes[PREVIOUS_HASH_AT..SEGMENT_HEADER_LEN].copy_from_slice(&self.previous_hash);
        let crc = crc32fast::hash(&bytes[SEGMENT_NUMBER_AT..]);
        bytes[HEADER_CRC_AT..SEGMENT_NUMBER_AT].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes and checks a header.
    ///
    /// # Errors
    /// The first failed check.
    pub fn decode(bytes: &[u8]) -> Result<Self, Corruption> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(Corruption::HeaderTruncated);
        };
        if bytes[MAGIC_AT..VERSION_AT] != SEGMENT_MAGIC {
            return Err(Corruption::BadMagic);
        }
        let version = u32_at(bytes, VERSION_AT);
        if version != SEGMENT_FORMAT_VERSION && version != SEGMENT_FORMAT_V1 {
            return Err(Corruption::UnknownVersion { version });
        }
        if u32_at(bytes, HEADER_CRC_AT) != crc32fast::hash(&bytes[SEGMENT_NUMBER_AT..]) {
            return Err(Corruption::HeaderCrc);
        }
        let first_sequence = u64_at(bytes, FIRST_SEQUENCE_AT);
        if first_sequence == 0 || first_sequence > SEQUENCE_MAX {
            return Err(Corruption::FirstSequence {
                first: first_sequence,
            });
        }
        Ok(Self {
            version,
            number: u64_at(bytes, SEGMENT_NUMBER_AT),
            first_sequence,
            previous_hash: hash_at(bytes, PREVIOUS_HASH_AT),
        })
    }
}

/// Identifies a commit frame.
pub const FRAME_MAGIC: [u8; 4] = *b"PLCF";

const FRAME_MAGIC_AT: usize = 0;
const FRAME_BODY_LEN_AT: usize = FRAME_MAGIC_AT + 4;
const FRAME_FIRST_SEQUENCE_AT: usize = FRAME_BODY_LEN_AT + 4;
const FRAME_RECORDS_AT: usize = FRAME_FIRST_SEQUENCE_AT + 8;
const FRAME_BODY_CRC_AT: usize = FRAME_RECORDS_AT + 4;
const FRAME_RESERVED_AT: usize = FRAME_BODY_CRC_AT + 4;
const FRAME_HEADER_CRC_AT: usize = FRAME_RESERVED_AT + 4;
/// Length of a commit frame header; the body follows.
pub const FRAME_HEADER_LEN: usize = FRAME_HEADER_CRC_AT + 4;
const _: () = assert!(FRAME_HEADER_LEN == 32);
const _: () = assert!(COMMIT_BYTES_MAX <= u32::MAX as usize);

/// A commit frame header: what one write-and-sync wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// Bytes of records after the header.
    pub body_len: u32,
    /// Sequence of the first record.
    pub first_sequence: u64,
    /// Records in the body.
    pub records: u32,
    /// crc32 of the body.
    pub body_crc: u32,
}

impl FrameHeader {
    /// The header of a frame whose body is `body`, holding `records` records from
    /// `first_sequence` on.
    pub fn for_body(body: &[u8], first_sequence: u64, records: u32) -> Self {
        Self {
            body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            first_sequence,
            records,
            body_crc: crc32fast::hash(body),
        }
    }

    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut bytes = [0u8; FRAME_HEADER_LEN];
        bytes[FRAME_MAGIC_AT..FRAME_BODY_LEN_AT].copy_from_slice(&FRAME_MAGIC);
        bytes[FRAME_BODY_LEN_AT..FRAME_FIRST_SEQUENCE_AT]
            .copy_from_slice(&self.body_len.to_le_bytes());
        bytes[FRAME_FIRST_SEQUENCE_AT..FRAME_RECORDS_AT]
            .copy_from_slice(&self.first_sequence.to_le_bytes());
        bytes[FRAME_RECORDS_AT..FRAME_BODY_CRC_AT].copy_from_slice(&self.records.to_le_bytes());
        bytes[FRAME_BODY_CRC_AT..FRAME_RESERVED_AT].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..FRAME_HEADER_CRC_AT]);
        bytes[FRAME_HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a frame header from the start of `bytes`. `Ok(None)` means its 32 bytes are all
    /// zero: the clean end of the written part of a segment.
    ///
    /// # Errors
    /// The first failed check: too few bytes, bad magic, header crc, an impossible length or
    /// record count.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, Corruption> {
        let Some(bytes) = bytes.get(..FRAME_HEADER_LEN) else {
            if bytes.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            return Err(Corruption::FrameHeaderCut {
                available: bytes.len(),
            });
        };
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if bytes[FRAME_MAGIC_AT..FRAME_BODY_LEN_AT] != FRAME_MAGIC {
            return Err(Corruption::FrameMagic);
        }
        if u32_at(bytes, FRAME_HEADER_CRC_AT) != crc32fast::hash(&bytes[..FRAME_HEADER_CRC_AT]) {
            return Err(Corruption::FrameHeaderCrc);
        }
        let header = Self {
            body_len: u32_at(bytes, FRAME_BODY_LEN_AT),
            first_sequence: u64_at(bytes, FRAME_FIRST_SEQUENCE_AT),
            records: u32_at(bytes, FRAME_RECORDS_AT),
            body_crc: u32_at(bytes, FRAME_BODY_CRC_AT),
        };
        let body_len = header.body_len as usize;
        let min_body = RECORD_HEADER_LEN + 1;
        if body_len < min_body
            || body_len > COMMIT_BYTES_MAX - FRAME_HEADER_LEN
            || header.records == 0
        {
            return Err(Corruption::FrameLength {
                body_len: header.body_len,
                records: header.records,
            });
        }
        Ok(Some(header))
    }
}

/// The chain hash of a record.
pub fn chain_hash(
    previous: &ChainHash,
    sequence: u64,
    batch_left: u32,
    payload: &[u8],
) -> ChainHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(&sequence.to_le_bytes());
    hasher.update(&batch_left.to_le_bytes());
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// Appends one framed record to `out` and returns its chain hash.
///
/// The payload length must already be checked against [`RECORD_PAYLOAD_LEN_MAX`].
pub fn encode_record(
    out: &mut Vec<u8>,
    previous: &ChainHash,
    sequence: u64,
    batch_left: u32,
    payload: &[u8],
) -> ChainHash {
    assert!(
        !payload.is_empty() && payload.len() <= RECORD_PAYLOAD_LEN_MAX,
        "payload length is checked before framing"
    );
    let start = out.len();
    let hash = chain_hash(previous, sequence, batch_left, payload);
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&batch_left.to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(payload);
    let crc = record_crc(&out[start..]);
    out[start + CRC_AT..start + SEQUENCE_AT].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(matches!(
        decode_record(&out[start..], previous, sequence),
        Ok(Some(record)) if record.payload == payload
    ));
    hash
}

fn record_crc(record: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record[PAYLOAD_LEN_AT..CRC_AT]);
    crc.update(&record[SEQUENCE_AT..]);
    crc.finalize()
}

/// A record decoded from a byte slice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordView<'a> {
    /// Its sequence.
    pub sequence: u64,
    /// Records after it in the same atomic append.
    pub batch_left: u32,
    /// Its chain hash.
    pub hash: ChainHash,
    /// Its payload.
    pub payload: &'a [u8],
    /// Bytes it occupies (header + payload).
    pub len: usize,
}

/// Why bytes at an offset are not the next record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BadRecord {
    /// Not even a whole record fits, or its length field is impossible, or its crc fails:
    /// typical of a torn write, and of corruption.
    Damaged(Corruption),
    /// The record is intact (crc checks) but is not the one expected next: only corruption or
    /// tampering produces this.
    Misplaced(Corruption),
}

impl BadRecord {
    /// The check that failed.
    pub fn into_corruption(self) -> Corruption {
        match self {
            BadRecord::Damaged(c) | BadRecord::Misplaced(c) => c,
        }
    }
}

/// Decodes the record at the start of `bytes`, expected to follow `previous` with sequence
/// `sequence`. `Ok(None)` means the rest of `bytes` is zero: the clean end of the segment.
///
/// # Errors
/// [`BadRecord`] describing the first failed check.
pub fn decode_record<'a>(
    bytes: &'a [u8],
    previous: &ChainHash,
    sequence: u64,
) -> Result<Option<RecordView<'a>>, BadRecord> {
    let length_is_zero = bytes.get(..4).is_none_or(|word| word == [0; 4]);
    if length_is_zero && bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let view = decode_intact(bytes).map_err(BadRecord::Damaged)?;
    if view.sequence != sequence {
        return Err(BadRecord::Misplaced(Corruption::SequenceGap {
            expected: sequence,
            found: view.sequence,
        }));
    }
    if chain_hash(previous, view.sequence, view.batch_left, view.payload) != view.hash {
        return Err(BadRecord::Misplaced(Corruption::BrokenChain));
    }
    Ok(Some(view))
}

/// Decodes a record whose crc checks, without knowing what should precede it.
///
/// # Errors
/// What is wrong with the bytes.
pub fn decode_intact(bytes: &[u8]) -> Result<RecordView<'_>, Corruption> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(Corruption::RecordHeaderCut {
            available: bytes.len(),
        });
    }
    let payload_len = u32_at(bytes, PAYLOAD_LEN_AT) as usize;
    if payload_len == 0 || payload_len > RECORD_PAYLOAD_LEN_MAX {
        return Err(Corruption::PayloadLength {
            len: payload_len as u64,
        });
    }
    let len = RECORD_HEADER_LEN + payload_len;
    let Some(record) = bytes.get(..len) else {
        return Err(Corruption::RecordCut {
            len,
            available: bytes.len(),
        });
    };
    if u32_at(record, CRC_AT) != record_crc(record) {
        return Err(Corruption::RecordCrc);
    }
    Ok(RecordView {
        sequence: u64_at(record, SEQUENCE_AT),
        batch_left: u32_at(record, BATCH_LEFT_AT),
        hash: hash_at(record, CHAIN_HASH_AT),
        payload: &record[RECORD_HEADER_LEN..],
        len,
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn hash_at(bytes: &[u8], at: usize) -> ChainHash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[at..at + 32]);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks() {
        let header = SegmentHeader {
            version: SEGMENT_FORMAT_VERSION,
            number: 3,
            first_sequence: 42,
            previous_hash: [9; 32],
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit}");
        }
        assert!(SegmentHeader::decode(&bytes[..63]).is_err());
    }

    #[test]
    fn record_round_trips_and_links() {
        let mut out = Vec::new();
        let first = encode_record(&mut out, &GENESIS_HASH, 1, 1, b"one");
        let split = out.len();
        let second = encode_record(&mut out, &first, 2, 0, b"two");
        let a = decode_record(&out, &GENESIS_HASH, 1).unwrap().unwrap();
        assert_eq!(
            (a.payload, a.batch_left, a.hash, a.len),
            (&b"one"[..], 1, first, split)
        );
        let b = decode_record(&out[split..], &first, 2).unwrap().unwrap();
        assert_eq!((b.payload, b.hash), (&b"two"[..], second));
        assert!(matches!(
            decode_record(&out[split..], &GENESIS_HASH, 2),
            Err(BadRecord::Misplaced(_))
        ));
        assert!(matches!(
            decode_record(&out[split..], &first, 3),
            Err(BadRecord::Misplaced(_))
        ));
        assert_eq!(decode_record(&[0; 100], &first, 3), Ok(None));
    }

    fn segment_header_with(first_sequence: u64) -> [u8; SEGMENT_HEADER_LEN] {
        SegmentHeader {
            version: SEGMENT_FORMAT_VERSION,
            number: 0,
            first_sequence,
            previous_hash: GENESIS_HASH,
        }
        .encode()
    }

    #[test]
    fn a_first_sequence_from_1_to_sequence_max_is_accepted_and_any_other_refused() {
        for first in [1, SEQUENCE_MAX] {
            let header = SegmentHeader::decode(&segment_header_with(first));
            assert_eq!(header.map(|h| h.first_sequence), Ok(first));
        }
        for first in [0, SEQUENCE_MAX + 1, u64::MAX] {
            assert_eq!(
                SegmentHeader::decode(&segment_header_with(first)),
                Err(Corruption::FirstSequence { first }),
            );
        }
    }

    /// A frame header whose crc checks, whatever its fields say.
    fn frame_header_with(body_len: usize, records: u32) -> [u8; FRAME_HEADER_LEN] {
        FrameHeader {
            body_len: u32::try_from(body_len).unwrap(),
            first_sequence: 1,
            records,
            body_crc: 0,
        }
        .encode()
    }

    #[test]
    fn a_frame_body_from_one_smallest_record_to_the_commit_limit_is_accepted() {
        let smallest = RECORD_HEADER_LEN + 1;
        let largest = COMMIT_BYTES_MAX - FRAME_HEADER_LEN;
        for body_len in [smallest, largest] {
            let header = FrameHeader::decode(&frame_header_with(body_len, 1));
            assert_eq!(
                header.map(|h| h.map(|h| h.body_len as usize)),
                Ok(Some(body_len))
            );
        }
        for (body_len, records) in [(smallest - 1, 1), (largest + 1, 1), (smallest, 0)] {
            assert_eq!(
                FrameHeader::decode(&frame_header_with(body_len, records)),
                Err(Corruption::FrameLength {
                    body_len: u32::try_from(body_len).unwrap(),
                    records,
                }),
                "body {body_len}, records {records}"
            );
        }
    }

    #[test]
    fn a_record_cut_after_its_header_is_a_cut_record_not_a_cut_header() {
        let mut out = Vec::new();
        encode_record(&mut out, &GENESIS_HASH, 1, 0, b"ten bytes!");
        assert_eq!(
            decode_intact(&out[..RECORD_HEADER_LEN]),
            Err(Corruption::RecordCut {
                len: RECORD_HEADER_LEN + 10,
                available: RECORD_HEADER_LEN,
            })
        );
        assert_eq!(
            decode_intact(&out[..RECORD_HEADER_LEN - 1]),
            Err(Corruption::RecordHeaderCut {
                available: RECORD_HEADER_LEN - 1,
            })
        );
    }

    #[test]
    fn a_payload_of_1_to_the_limit_is_accepted_and_any_other_length_refused() {
        for len in [1, RECORD_PAYLOAD_LEN_MAX] {
            let mut out = Vec::new();
            encode_record(&mut out, &GENESIS_HASH, 1, 0, &vec![7; len]);
            assert_eq!(decode_intact(&out).map(|r| r.payload.len()), Ok(len));
        }
        // Headers whose crc checks, so that only the length can be refused.
        for len in [0, RECORD_PAYLOAD_LEN_MAX + 1] {
            let mut record = vec![0; RECORD_HEADER_LEN];
            record[PAYLOAD_LEN_AT..CRC_AT]
                .copy_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
            record[SEQUENCE_AT..BATCH_LEFT_AT].copy_from_slice(&1u64.to_le_bytes());
            let crc = record_crc(&record);
            record[CRC_AT..SEQUENCE_AT].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                decode_intact(&record),
                Err(Corruption::PayloadLength { len: len as u64 }),
                "payload length {len}"
            );
        }
    }

    #[test]
    fn every_bit_flip_and_cut_is_refused() {
        let mut out = Vec::new();
        encode_record(&mut out, &GENESIS_HASH, 1, 0, b"payload bytes");
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&flipped, &GENESIS_HASH, 1).is_err(),
                "bit {bit}"
            );
        }
        for cut in 1..out.len() {
            assert!(
                decode_record(&out[..cut], &GENESIS_HASH, 1).is_err(),
                "cut {cut}"
            );
        }
    }
}
