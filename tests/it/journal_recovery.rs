//! Recovery of the last segment, edge by edge. The segments here are built frame by frame
//! (version 2) or record by record (version 1) with the format's own encoders and damaged at
//! chosen offsets, so that each test pins one edge of the rule in `docs/format.md`: how far a
//! torn tail reaches, which intact bytes after damage make it corruption, and that opening
//! changes no byte but the torn tail's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use payledger::journal::format::{
    ChainHash, FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, GENESIS_HASH, RECORD_HEADER_LEN,
    SEGMENT_FORMAT_V1, SEGMENT_FORMAT_VERSION, SegmentHeader, encode_record,
};
use payledger::journal::{Journal, JournalConfig};
use payledger::limits::COMMIT_BYTES_MAX;
use payledger::{Corruption, Error, RecoveryReport, Sequence, SimDisk, TornTail};

const CONFIG: JournalConfig = JournalConfig {
    segment_len: 4096,
    create_if_missing: false,
};

/// Bytes recovery reads at once when it looks for an intact frame after damage (the read window
/// of `journal/segment.rs`).
const READ_WINDOW_LEN: usize = 1 << 20;

const U32_MAX: u64 = u32::MAX as u64;

fn dir() -> &'static Path {
    Path::new("/ledger")
}

fn segment_path() -> PathBuf {
    dir().join(format!("{:020}.seg", 0))
}

/// One record on its own (batch left 0), following `previous`.
fn record(previous: &ChainHash, sequence: u64, payload: &[u8]) -> (Vec<u8>, ChainHash) {
    let mut bytes = Vec::new();
    let hash = encode_record(&mut bytes, previous, sequence, 0, payload);
    (bytes, hash)
}

/// A commit frame of one record per payload, the first with `first_sequence`.
fn frame(previous: &ChainHash, first_sequence: u64, payloads: &[&[u8]]) -> (Vec<u8>, ChainHash) {
    let mut body = Vec::new();
    let mut head = *previous;
    for (sequence, payload) in (first_sequence..).zip(payloads) {
        head = encode_record(&mut body, &head, sequence, 0, payload);
    }
    let records = u32::try_from(payloads.len()).unwrap();
    let mut bytes = FrameHeader::for_body(&body, first_sequence, records)
        .encode()
        .to_vec();
    bytes.extend_from_slice(&body);
    (bytes, head)
}

/// Segment 0 being built: its bytes so far, and the chain head and sequence that follow them.
struct Segment {
    bytes: Vec<u8>,
    head: ChainHash,
    next_sequence: u64,
}

impl Segment {
    fn new(version: u32, first_sequence: u64) -> Self {
        let header = SegmentHeader {
            version,
            number: 0,
            first_sequence,
            previous_hash: GENESIS_HASH,
        };
        Self {
            bytes: header.encode().to_vec(),
            head: GENESIS_HASH,
            next_sequence: first_sequence,
        }
    }

    /// Where the next record or frame starts.
    fn end(&self) -> usize {
        self.bytes.len()
    }

    /// Appends a record on its own (version 1); returns where it starts.
    fn record(&mut self, payload: &[u8]) -> usize {
        let start = self.end();
        let (bytes, head) = record(&self.head, self.next_sequence, payload);
        self.bytes.extend_from_slice(&bytes);
        self.head = head;
        self.next_sequence += 1;
        start
    }

    /// Appends a commit frame of one record per payload (version 2); returns where it starts.
    fn frame(&mut self, payloads: &[&[u8]]) -> usize {
        let start = self.end();
        let (bytes, head) = frame(&self.head, self.next_sequence, payloads);
        self.bytes.extend_from_slice(&bytes);
        self.head = head;
        self.next_sequence += payloads.len() as u64;
        start
    }

    /// The segment file: its bytes, then zeros up to `len`.
    fn file(&self, len: usize) -> Vec<u8> {
        let mut file = self.bytes.clone();
        assert!(len >= file.len());
        file.resize(len, 0);
        file
    }
}

fn put(file: &mut [u8], at: usize, bytes: &[u8]) {
    file[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Opens a journal whose only segment is `file`, on a disk the caller can look at afterwards.
fn open(file: Vec<u8>) -> (SimDisk, payledger::Result<(Journal, RecoveryReport)>) {
    let disk = SimDisk::new(0);
    disk.put_bytes(&segment_path(), file);
    let opened = Journal::open_on(Arc::new(disk.clone()), dir(), CONFIG);
    (disk, opened)
}

fn payloads(journal: &Journal) -> Vec<Vec<u8>> {
    journal
        .read_from(Sequence(1))
        .map(|r| r.unwrap().payload)
        .collect()
}

fn torn(offset: usize, bytes: usize) -> Option<TornTail> {
    Some(TornTail {
        segment: 0,
        offset: offset as u64,
        bytes: bytes as u64,
    })
}

/// The offset and kind of the corruption in segment 0 that stopped the open.
fn corruption(opened: payledger::Result<(Journal, RecoveryReport)>) -> (u64, Corruption) {
    match opened {
        Err(Error::Corrupt {
            segment: 0,
            offset,
            kind,
        }) => (offset, kind),
        Err(e) => panic!("expected corruption in segment 0, got {e:?}"),
        Ok((_, report)) => panic!("expected corruption, opened with {report:?}"),
    }
}

fn damage_before_intact(offset: usize, damage: Corruption, intact_at: usize) -> (u64, Corruption) {
    (
        offset as u64,
        Corruption::DamageBeforeIntact {
            damage: Box::new(damage),
            intact_at: intact_at as u64,
        },
    )
}

#[test]
fn a_torn_tail_is_zeroed_exactly_and_no_other_byte_changes() {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    segment.frame(&[b"one"]);
    segment.frame(&[b"two", b"three"]);
    let end = segment.end();
    // The segment ends shortly after the torn tail: zeroing past it would lengthen the file.
    let mut file = segment.file(end + 100);
    put(&mut file, end, &[0xAB; 30]);
    let (disk, opened) = open(file.clone());
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, torn(end, 30));
    assert_eq!(payloads(&journal), [&b"one"[..], b"two", b"three"]);
    file[end..end + 30].fill(0);
    assert_eq!(
        disk.durable_bytes(&segment_path()).unwrap(),
        file,
        "the torn tail is zero and durable, the segment keeps its length and every other byte"
    );
    journal.verify().unwrap();
}

#[test]
fn a_torn_tail_reaches_commit_bytes_max_past_the_last_commit_and_no_further() {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    segment.frame(&[b"one"]);
    let end = segment.end();
    let len = end + COMMIT_BYTES_MAX + 4096;

    // The last byte of the torn region: all of the region is the torn tail.
    let mut file = segment.file(len);
    file[end + COMMIT_BYTES_MAX - 1] = 0xAB;
    let (disk, opened) = open(file);
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, torn(end, COMMIT_BYTES_MAX));
    assert_eq!(
        disk.durable_bytes(&segment_path()).unwrap(),
        segment.file(len)
    );
    journal.verify().unwrap();

    // The first byte after it: not read on open, left for `verify` to name.
    let mut file = segment.file(len);
    let beyond = end + COMMIT_BYTES_MAX;
    file[beyond] = 0xAB;
    let (disk, opened) = open(file.clone());
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.last_sequence, Sequence(1));
    assert_eq!(disk.durable_bytes(&segment_path()).unwrap(), file);
    assert!(
        matches!(
            journal.verify(),
            Err(Error::Corrupt { segment: 0, kind: Corruption::GarbageAfterEnd { at }, .. })
                if at == beyond as u64
        ),
        "{:?}",
        journal.verify()
    );
}

/// After a clean end, recovery does not search the rest of the segment for intact frames: a
/// frame far beyond the torn region cannot be the tail of a power cut, and `verify` names it.
#[test]
fn an_intact_frame_beyond_the_torn_region_after_a_clean_end_is_left_for_verify() {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    segment.frame(&[b"one"]);
    let end = segment.end();
    let (later, _) = frame(&segment.head, segment.next_sequence, &[b"two"]);
    let at = end + COMMIT_BYTES_MAX + 100;
    let mut file = segment.file(at + later.len() + 100);
    put(&mut file, at, &later);
    let (disk, opened) = open(file.clone());
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.last_sequence, Sequence(1));
    assert_eq!(payloads(&journal), [b"one"]);
    assert_eq!(disk.durable_bytes(&segment_path()).unwrap(), file);
    assert!(
        matches!(
            journal.verify(),
            Err(Error::Corrupt { segment: 0, kind: Corruption::GarbageAfterEnd { at: found }, .. })
                if found == at as u64
        ),
        "{:?}",
        journal.verify()
    );
}

/// A frame whose header sector was lost but whose body survived, followed by an intact frame:
/// the later frame was written only after this one was synced, so this is no power cut.
#[test]
fn a_zeroed_frame_header_before_an_intact_frame_is_corruption_not_the_end() {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    segment.frame(&[b"one"]);
    let second = segment.frame(&[b"two"]);
    let third = segment.frame(&[b"three"]);
    let mut file = segment.file(8192);
    file[second..second + FRAME_HEADER_LEN].fill(0);
    let (_, opened) = open(file);
    assert_eq!(
        corruption(opened),
        damage_before_intact(
            second,
            Corruption::GarbageAfterEnd { at: second as u64 },
            third
        )
    );
}

/// Opens a segment holding one frame, garbage where the second starts, and an intact frame at
/// `intact_at`; returns where the garbage starts and the outcome.
fn damage_then_intact_frame_at(
    intact_at: impl Fn(usize) -> usize,
) -> (usize, usize, payledger::Result<(Journal, RecoveryReport)>) {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    segment.frame(&[b"one"]);
    let end = segment.end();
    // A frame after one that was lost: its sequence is later than the next.
    let (later, _) = frame(&segment.head, segment.next_sequence + 1, &[b"three"]);
    let at = intact_at(end);
    let mut file = segment.file(at + later.len() + 4096);
    file[end..end + 100].fill(0xAB);
    put(&mut file, at, &later);
    let (_, opened) = open(file);
    (end, at, opened)
}

#[test]
fn damage_before_an_intact_frame_more_than_a_read_window_later_is_corruption() {
    let (end, at, opened) = damage_then_intact_frame_at(|end| end + READ_WINDOW_LEN * 3 / 2);
    assert_eq!(
        corruption(opened),
        damage_before_intact(end, Corruption::FrameMagic, at)
    );
}

/// The search for an intact frame reads one window at a time, from the byte after the damage
/// on; a frame is found wherever it starts relative to the windows' edges.
#[test]
fn an_intact_frame_is_found_on_either_side_of_a_read_window_edge() {
    for before_edge in [36, 35, 31, 0] {
        let (end, at, opened) = damage_then_intact_frame_at(|end| {
            let first_window_end = end + 1 + READ_WINDOW_LEN;
            first_window_end - before_edge
        });
        assert_eq!(
            corruption(opened),
            damage_before_intact(end, Corruption::FrameMagic, at),
            "{before_edge} bytes before the edge of the first window"
        );
    }
}

/// The byte before the damage belongs to the last intact commit: a frame that would start there
/// overlaps it and was not written after it.
#[test]
fn an_intact_frame_overlapping_the_last_commit_is_not_a_later_commit() {
    let mut segment = Segment::new(SEGMENT_FORMAT_VERSION, 1);
    // The last commit ends with the first byte of a frame's magic.
    segment.frame(&[b"one", b"ends with P"]);
    let end = segment.end();
    assert_eq!(segment.bytes[end - 1], FRAME_MAGIC[0]);
    let (overlapping, _) = frame(&segment.head, segment.next_sequence, &[b"three"]);
    let mut file = segment.file(8192);
    put(&mut file, end - 1, &overlapping);
    let (_, opened) = open(file);
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, torn(end, overlapping.len() - 1));
    assert_eq!(payloads(&journal), [&b"one"[..], b"ends with P"]);
}

#[test]
fn a_damaged_version_1_record_before_an_intact_one_is_corruption() {
    let mut segment = Segment::new(SEGMENT_FORMAT_V1, 1);
    segment.record(b"one");
    let second = segment.record(b"two");
    let third = segment.record(b"three");
    let mut file = segment.file(4096);
    file[second + RECORD_HEADER_LEN] ^= 0x01;
    let (_, opened) = open(file);
    assert_eq!(
        corruption(opened),
        damage_before_intact(second, Corruption::RecordCrc, third)
    );
}

#[test]
fn a_damaged_last_version_1_record_is_a_torn_tail() {
    let mut segment = Segment::new(SEGMENT_FORMAT_V1, 1);
    segment.record(b"one");
    segment.record(b"two");
    let third = segment.record(b"three");
    let mut file = segment.file(4096);
    file[third + RECORD_HEADER_LEN] ^= 0x01;
    let (disk, opened) = open(file);
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, torn(third, segment.end() - third));
    assert_eq!(payloads(&journal), [b"one", b"two"]);
    let mut expected = segment.file(4096);
    expected[third..].fill(0);
    assert_eq!(disk.durable_bytes(&segment_path()).unwrap(), expected);
}

/// Version 1: after a damaged record, an intact record is evidence of a later write only if its
/// sequence is the next one or at most `u32::MAX - 1` beyond it.
#[test]
fn an_intact_version_1_record_after_damage_is_evidence_only_within_u32_max_sequences() {
    // The damaged record is the segment's first: the next sequence is 1.
    for (sequence, evidence) in [(0, false), (U32_MAX, true), (U32_MAX + 1, false)] {
        let mut segment = Segment::new(SEGMENT_FORMAT_V1, 1);
        let damaged = segment.record(b"one");
        let candidate = segment.end();
        let (bytes, _) = record(&GENESIS_HASH, sequence, b"later");
        segment.bytes.extend_from_slice(&bytes);
        let mut file = segment.file(4096);
        file[damaged + RECORD_HEADER_LEN] ^= 0x01;
        let (_, opened) = open(file);
        if evidence {
            assert_eq!(
                corruption(opened),
                damage_before_intact(damaged, Corruption::RecordCrc, candidate),
                "sequence {sequence}"
            );
        } else {
            let (_, report) = opened.unwrap();
            assert_eq!(
                report.torn_tail,
                torn(damaged, segment.end() - damaged),
                "sequence {sequence}"
            );
            assert_eq!(report.last_sequence, Sequence(0));
        }
    }
}

/// Version 1: the byte before the damage belongs to the last intact record; a record that would
/// start there overlaps it and was not written after it.
#[test]
fn an_intact_version_1_record_overlapping_the_last_one_is_not_evidence() {
    let (overlapping, _) = record(&GENESIS_HASH, 2, &[b'x'; 16]);
    let mut segment = Segment::new(SEGMENT_FORMAT_V1, 1);
    // The last intact record ends with the first byte of the overlapping one.
    let mut one = b"one".to_vec();
    one.push(overlapping[0]);
    segment.record(&one);
    let end = segment.end();
    let mut file = segment.file(4096);
    put(&mut file, end - 1, &overlapping);
    let (_, opened) = open(file);
    let (journal, report) = opened.unwrap();
    assert_eq!(report.torn_tail, torn(end, overlapping.len() - 1));
    assert_eq!(payloads(&journal), [one]);
}
