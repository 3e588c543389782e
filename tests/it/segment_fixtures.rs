//! Golden segment files freeze every published segment format: a version 1 segment (records
//! back to back, written before commit frames) still opens, reads, verifies and folds, and new
//! appends go to a fresh version 2 segment; a version 2 segment written now is byte for byte the
//! fixture.
//!
//! A missing fixture of the current version is written with `PAYLEDGER_BLESS=1`; an existing
//! fixture is never rewritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use payledger::journal::codec::{decode_event, encode_event};
use payledger::journal::format::{SEGMENT_FORMAT_V1, SEGMENT_FORMAT_VERSION, SegmentHeader};
use payledger::journal::simdisk::SimDisk;
use payledger::journal::{Journal, JournalConfig};
use payledger::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/segments")
        .join(name)
}

fn segment(n: u64) -> PathBuf {
    Path::new("/ledger").join(format!("{n:020}.seg"))
}

const CONFIG: JournalConfig = JournalConfig {
    segment_len: 4096,
    create_if_missing: false,
};

fn events(journal: &Journal) -> Vec<Event> {
    journal
        .read_from(Sequence(1))
        .map(|r| decode_event(&r.unwrap().payload).unwrap())
        .collect()
}

#[test]
fn a_version_1_segment_opens_reads_and_continues_in_a_version_2_segment() {
    let bytes = std::fs::read(fixture("v1_six_events.seg")).unwrap();
    assert_eq!(
        SegmentHeader::decode(&bytes).unwrap().version,
        SEGMENT_FORMAT_V1
    );
    let disk = SimDisk::new(1);
    disk.put_bytes(&segment(0), bytes.clone());
    let (journal, report) = Journal::open_on(Arc::new(disk.clone()), "/ledger", CONFIG).unwrap();
    assert_eq!(report.last_sequence, Sequence(6));
    assert_eq!(report.torn_tail, None);
    let old = events(&journal);
    assert_eq!(old.len(), 6);
    let state = PaymentState::fold(old[0].key.clone(), &old).unwrap();
    assert_eq!(journal.verify().unwrap().records, 6);
    assert_eq!(
        disk.current_bytes(&segment(0)).unwrap(),
        bytes,
        "the old segment is read, never written"
    );
    let next = encode_event(&old[5]).unwrap();
    assert_eq!(
        journal.append(vec![next.clone()]).unwrap(),
        Sequence(7)..=Sequence(7)
    );
    drop(journal);
    let new = disk.current_bytes(&segment(1)).unwrap();
    assert_eq!(
        SegmentHeader::decode(&new).unwrap().version,
        SEGMENT_FORMAT_VERSION
    );
    let (journal, _) = Journal::open_on(Arc::new(disk), "/ledger", CONFIG).unwrap();
    let all = events(&journal);
    assert_eq!(all.len(), 7);
    assert_eq!(all[..6], old[..]);
    assert_eq!(journal.verify().unwrap().records, 7);
    assert!(state.intent.is_some(), "the old events fold: {state:?}");
}

#[test]
fn a_version_2_segment_is_written_byte_for_byte_as_the_fixture() {
    let bless = std::env::var_os("PAYLEDGER_BLESS").is_some();
    // The same events as the version 1 fixture, appended as two atomic appends and singles.
    let old = {
        let disk = SimDisk::new(1);
        disk.put_bytes(
            &segment(0),
            std::fs::read(fixture("v1_six_events.seg")).unwrap(),
        );
        let (journal, _) = Journal::open_on(Arc::new(disk), "/ledger", CONFIG).unwrap();
        events(&journal)
    };
    let disk = SimDisk::new(2);
    let config = JournalConfig {
        create_if_missing: true,
        ..CONFIG
    };
    let (journal, _) = Journal::open_on(Arc::new(disk.clone()), "/ledger", config).unwrap();
    let payloads: Vec<Vec<u8>> = old.iter().map(|e| encode_event(e).unwrap()).collect();
    journal.append(payloads[..2].to_vec()).unwrap();
    for payload in &payloads[2..] {
        journal.append(vec![payload.clone()]).unwrap();
    }
    drop(journal);
    let written = disk.current_bytes(&segment(0)).unwrap();
    let path = fixture("v2_six_events.seg");
    if bless && !path.exists() {
        std::fs::write(&path, &written).unwrap();
    }
    let frozen = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        written, frozen,
        "the version 2 layout changed: that needs a new version"
    );
    let disk = SimDisk::new(3);
    disk.put_bytes(&segment(0), frozen);
    let (journal, _) = Journal::open_on(Arc::new(disk), "/ledger", CONFIG).unwrap();
    assert_eq!(events(&journal), old);
    assert_eq!(journal.verify().unwrap().records, 6);
}
