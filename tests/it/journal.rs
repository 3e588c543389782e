//! The journal through its public API: appends, reads, reopen, recovery from every truncation
//! and every bit flip, locking and fail-stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use payledger::journal::simdisk::{CrashMode, SimDisk};
use payledger::journal::{Journal, JournalConfig};
use payledger::{Error, Sequence};

const SMALL: JournalConfig = JournalConfig {
    segment_len: 4096,
    create_if_missing: true,
};

fn dir() -> PathBuf {
    PathBuf::from("/ledger")
}

fn open_sim(disk: &SimDisk) -> payledger::Result<(Journal, payledger::RecoveryReport)> {
    Journal::open_on(Arc::new(disk.clone()), dir(), SMALL)
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i:04} {}", "x".repeat((i % 97) as usize)).into_bytes()
}

fn read_all(journal: &Journal) -> payledger::Result<Vec<Vec<u8>>> {
    journal
        .read_from(Sequence(1))
        .map(|r| r.map(|r| r.payload))
        .collect()
}

#[test]
fn appends_read_back_in_order_across_segments_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_len: 8192,
        create_if_missing: true,
    };
    {
        let (journal, report) = Journal::open(tmp.path(), config).unwrap();
        assert_eq!(report.last_sequence, Sequence(0));
        for i in 1..=300 {
            let seqs = journal.append(vec![payload(i)]).unwrap();
            assert_eq!(seqs, Sequence(i)..=Sequence(i));
        }
        assert!(journal.verify().unwrap().segments > 3, "rolled over");
        let from_middle: Vec<_> = journal
            .read_from(Sequence(150))
            .map(|r| r.unwrap().sequence.0)
            .collect();
        assert_eq!(from_middle, (150..=300).collect::<Vec<_>>());
    }
    let (journal, report) = Journal::open(tmp.path(), config).unwrap();
    assert_eq!(report.last_sequence, Sequence(300));
    assert_eq!(report.torn_tail, None);
    assert_eq!(
        read_all(&journal).unwrap(),
        (1..=300).map(payload).collect::<Vec<_>>()
    );
    let verified = journal.verify().unwrap();
    assert_eq!(
        (verified.records, verified.last_sequence),
        (300, Sequence(300))
    );
    assert_eq!(
        journal.append(vec![payload(301)]).unwrap(),
        Sequence(301)..=Sequence(301)
    );
}

#[test]
fn concurrent_appenders_share_syncs_and_get_unique_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(
        tmp.path(),
        JournalConfig {
            segment_len: 1 << 16,
            create_if_missing: true,
        },
    )
    .unwrap();
    let journal = Arc::new(journal);
    const THREADS: u64 = 16;
    const ROUNDS: u64 = 50;
    // Every round starts all appenders together, so they meet in the commit queue.
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (journal, barrier) = (Arc::clone(&journal), Arc::clone(&barrier));
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|i| {
                        barrier.wait();
                        let body = format!("t{t} i{i}").into_bytes();
                        let seqs = journal.append(vec![body.clone(), body.clone()]).unwrap();
                        assert_eq!(
                            seqs.end().0,
                            seqs.start().0 + 1,
                            "atomic pair is contiguous"
                        );
                        (seqs.start().0, body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();
    let records: Vec<_> = journal.read_from(Sequence(1)).map(|r| r.unwrap()).collect();
    let appends = THREADS * ROUNDS;
    assert_eq!(records.len() as u64, appends * 2);
    for (seq, body) in acked {
        assert_eq!(records[(seq - 1) as usize].payload, body);
        assert_eq!(records[seq as usize].payload, body);
    }
    let stats = journal.stats();
    assert_eq!(stats.records, appends * 2);
    // Sixteen appends arrive together each round: most of them must ride a commit (and a
    // sync) that another appender leads.
    assert!(
        stats.commits * 2 <= appends,
        "{} commits for {appends} appends: syncs are not shared",
        stats.commits
    );
    journal.verify().unwrap();
}

#[test]
fn a_second_opener_gets_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let (_journal, _) = Journal::open(tmp.path(), JournalConfig::default()).unwrap();
    match Journal::open(tmp.path(), JournalConfig::default()) {
        Err(Error::Locked { dir }) => assert_eq!(dir, tmp.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let disk = SimDisk::new(1);
    let (_held, _) = open_sim(&disk).unwrap();
    assert!(matches!(open_sim(&disk), Err(Error::Locked { .. })));
}

#[test]
fn missing_journal_is_not_created_when_asked_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        create_if_missing: false,
        ..JournalConfig::default()
    };
    assert!(matches!(
        Journal::open(tmp.path().join("absent"), config),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        Journal::open(tmp.path(), config),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn bad_appends_are_refused_before_anything_is_written() {
    let disk = SimDisk::new(2);
    let (journal, _) = open_sim(&disk).unwrap();
    assert!(matches!(
        journal.append(vec![]),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        journal.append(vec![vec![]]),
        Err(Error::TooLarge { .. })
    ));
    assert!(
        matches!(
            journal.append(vec![vec![1; 5000]]),
            Err(Error::TooLarge { .. })
        ),
        "larger than a segment"
    );
    assert!(matches!(
        journal.append(vec![vec![1]; 9]),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        journal.append(vec![vec![1]]).unwrap(),
        Sequence(1)..=Sequence(1)
    );
}

#[test]
fn a_failed_sync_poisons_until_reopen() {
    let disk = SimDisk::new(3);
    let (journal, _) = open_sim(&disk).unwrap();
    journal.append(vec![payload(1)]).unwrap();
    disk.fail_next_syncs(1);
    assert!(matches!(
        journal.append(vec![payload(2)]),
        Err(Error::AppendFailed { .. })
    ));
    assert!(matches!(
        journal.append(vec![payload(3)]),
        Err(Error::Poisoned { .. })
    ));
    drop(journal);
    disk.crash(CrashMode::DropUnsynced);
    let (journal, _) = open_sim(&disk).unwrap();
    assert_eq!(
        read_all(&journal).unwrap(),
        vec![payload(1)],
        "the unsynced record is gone"
    );
    assert_eq!(
        journal.append(vec![payload(4)]).unwrap(),
        Sequence(2)..=Sequence(2)
    );
}

#[test]
fn a_failed_write_poisons_until_reopen() {
    let disk = SimDisk::new(4);
    let (journal, _) = open_sim(&disk).unwrap();
    disk.fail_next_writes(1);
    assert!(matches!(
        journal.append(vec![payload(1)]),
        Err(Error::AppendFailed { .. })
    ));
    assert!(matches!(
        journal.append(vec![payload(2)]),
        Err(Error::Poisoned { .. })
    ));
    drop(journal);
    let (journal, _) = open_sim(&disk).unwrap();
    assert_eq!(
        journal.append(vec![payload(3)]).unwrap(),
        Sequence(1)..=Sequence(1)
    );
}

/// A synced journal of three or more small segments, and its records.
fn small_journal() -> (SimDisk, Vec<PathBuf>, Vec<Vec<u8>>) {
    let disk = SimDisk::new(5);
    let (journal, _) = open_sim(&disk).unwrap();
    let mut records = Vec::new();
    let mut i = 0;
    while journal.verify().unwrap().segments < 3 {
        i += 1;
        journal.append(vec![payload(i)]).unwrap();
        records.push(payload(i));
    }
    // A few records into the third segment.
    for _ in 0..3 {
        i += 1;
        journal.append(vec![payload(i)]).unwrap();
        records.push(payload(i));
    }
    drop(journal);
    let mut files: Vec<PathBuf> = (0..3).map(|n| dir().join(format!("{n:020}.seg"))).collect();
    files.retain(|f| disk.durable_bytes(f).is_some());
    assert_eq!(files.len(), 3);
    (disk, files, records)
}

/// The used bytes of a segment: up to its last non-zero byte.
fn used_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Records whose bytes end at or before `cut` in the concatenation of the segments.
fn records_before(
    disk: &SimDisk,
    files: &[PathBuf],
    records: &[Vec<u8>],
    cut_file: usize,
    cut: usize,
) -> usize {
    let mut count = 0;
    for (n, file) in files.iter().enumerate().take(cut_file + 1) {
        let bytes = disk.durable_bytes(file).unwrap();
        for (_, end, records) in crate::support::frames(&bytes) {
            if n == cut_file && end > cut {
                return count;
            }
            count += records as usize;
        }
    }
    assert!(count <= records.len());
    count
}

#[test]
fn every_truncation_offset_opens_to_the_synced_prefix() {
    let (disk, files, records) = small_journal();
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| disk.durable_bytes(f).unwrap())
        .collect();
    let mut opened = 0;
    for (n, original) in originals.iter().enumerate() {
        for cut in 0..=used_len(original) + 1 {
            let trial = SimDisk::new(0);
            for (m, bytes) in originals.iter().enumerate().take(n) {
                trial.put_bytes(&files[m], bytes.clone());
            }
            trial.put_bytes(&files[n], original[..cut.min(original.len())].to_vec());
            match open_sim(&trial) {
                Ok((journal, _)) => {
                    opened += 1;
                    let expected = records_before(&disk, &files, &records, n, cut);
                    assert_eq!(
                        read_all(&journal).unwrap(),
                        records[..expected].to_vec(),
                        "segment {n} cut at {cut}"
                    );
                    journal.verify().unwrap();
                    drop(journal);
                }
                // Segments appear only whole (temp file + rename), so a cut header is
                // corruption, reported as such.
                Err(Error::Corrupt {
                    segment, offset: 0, ..
                }) if cut < 64 => assert_eq!(segment, n as u64),
                Err(e) => panic!("segment {n} cut at {cut}: {e:?}"),
            }
        }
    }
    assert!(opened > 3 * 1000, "most cuts open: {opened}");
}

/// Every bit flip in a journal whose records were all acknowledged is reported; none loses an
/// acknowledged record. The journal alone cannot tell a damaged last record from a torn write,
/// so the test gives it the evidence a ledger has (its index watermark): a flip that would cut
/// an acknowledged record is refused, and only garbage after the last record is cut.
#[test]
fn every_bit_flip_is_detected_and_no_acknowledged_record_is_cut() {
    let (disk, files, records) = small_journal();
    let acknowledged = Sequence(records.len() as u64);
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| disk.durable_bytes(f).unwrap())
        .collect();
    let (mut corrupt, mut refused, mut torn) = (0, 0, 0);
    for (n, original) in originals.iter().enumerate() {
        for bit in 0..(used_len(original) + 16).min(original.len()) * 8 {
            let trial = SimDisk::new(0);
            for (m, bytes) in originals.iter().enumerate() {
                let mut bytes = bytes.clone();
                if m == n {
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
                trial.put_bytes(&files[m], bytes);
            }
            let read = Journal::open_acknowledged(Arc::new(trial.clone()), dir(), SMALL, || {
                Ok(acknowledged)
            })
            .and_then(|(journal, report)| {
                let read = read_all(&journal)?;
                journal.verify()?;
                Ok((read, report))
            });
            match read {
                Err(Error::Corrupt { segment, .. }) => {
                    assert_eq!(segment, n as u64, "bit {bit}");
                    corrupt += 1;
                }
                Err(Error::AcknowledgedMissing { journal_last, .. }) => {
                    assert!(journal_last < acknowledged);
                    assert_eq!(n, 2, "only the last segment ends in a tail");
                    refused += 1;
                }
                Ok((read, report)) => {
                    assert!(
                        report.torn_tail.is_some(),
                        "segment {n} bit {bit} went unnoticed"
                    );
                    assert_eq!(read, records, "segment {n} bit {bit}: every record kept");
                    torn += 1;
                }
                Err(e) => panic!("segment {n} bit {bit}: unexpected {e:?}"),
            }
        }
    }
    assert!(
        corrupt > 0 && refused > 0 && torn > 0,
        "corrupt {corrupt}, refused {refused}, torn {torn}"
    );
}

#[test]
fn torn_tail_is_cut_and_reported_and_appends_continue() {
    let disk = SimDisk::new(6);
    let (journal, _) = open_sim(&disk).unwrap();
    journal.append(vec![payload(1)]).unwrap();
    drop(journal);
    let path = dir().join(format!("{:020}.seg", 0));
    let mut bytes = disk.durable_bytes(&path).unwrap();
    let end = used_len(&bytes);
    bytes[end..end + 30].copy_from_slice(&[0xAB; 30]);
    disk.put_bytes(&path, bytes);
    let (journal, report) = open_sim(&disk).unwrap();
    let torn = report.torn_tail.expect("reported");
    assert_eq!((torn.segment, torn.offset, torn.bytes), (0, end as u64, 30));
    assert_eq!(
        journal.append(vec![payload(2)]).unwrap(),
        Sequence(2)..=Sequence(2)
    );
    assert_eq!(read_all(&journal).unwrap(), vec![payload(1), payload(2)]);
}

#[test]
fn an_atomic_append_survives_whole_or_not_at_all() {
    for seed in 0..200 {
        let disk = SimDisk::new(seed);
        let (journal, _) = open_sim(&disk).unwrap();
        journal.append(vec![payload(1)]).unwrap();
        // Write the batch but crash before the sync completes.
        disk.fail_next_syncs(1);
        let _ = journal.append(vec![payload(2), payload(3), payload(4)]);
        drop(journal);
        disk.crash(CrashMode::TearUnsynced);
        let (journal, _) = open_sim(&disk).unwrap();
        let read = read_all(&journal).unwrap();
        assert!(
            read == vec![payload(1)] || read == (1..=4).map(payload).collect::<Vec<_>>(),
            "seed {seed}: {} records",
            read.len()
        );
    }
}

#[test]
fn verify_names_segment_and_offset_of_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_len: 4096,
        create_if_missing: true,
    };
    {
        let (journal, _) = Journal::open(tmp.path(), config).unwrap();
        for i in 1..=100 {
            journal.append(vec![payload(i)]).unwrap();
        }
    }
    let first: &Path = &tmp.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(first).unwrap();
    bytes[64 + 60] ^= 0x10;
    std::fs::write(first, bytes).unwrap();
    let (journal, _) = Journal::open(tmp.path(), config).unwrap();
    match journal.verify() {
        Err(Error::Corrupt {
            segment: 0,
            offset: 64,
            kind: payledger::Corruption::FrameCrc,
        }) => {}
        other => panic!("expected corruption at segment 0 offset 64, got {other:?}"),
    }
}

/// Issue 15: the next segment is prepared off the commit path once the current one is half
/// full; the roll-over then only writes its header. Nothing prepared is left after close.
#[test]
fn the_next_segment_is_prepared_ahead_and_nothing_is_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_len: 64 * 1024,
        create_if_missing: true,
    };
    let (journal, _) = Journal::open(tmp.path(), config).unwrap();
    let spare = tmp.path().join("00000000000000000001.seg.tmp");
    let mut n = 0;
    // Past half of segment 0 (but well short of its end), one record per append.
    let mut bytes = 0;
    while bytes < config.segment_len * 5 / 8 {
        let record = payload(n);
        bytes += record.len() as u64 + 52;
        journal.append(vec![record]).unwrap();
        n += 1;
    }
    assert_eq!(journal.segment_count(), 1);
    // The preparation runs in the background: the spare appears, at the segment's full length.
    let prepared = (0..1_000).any(|_| {
        let len = std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0);
        len == config.segment_len || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        }
    });
    assert!(prepared, "a spare is prepared once segment 0 is half full");
    while journal.segment_count() < 4 {
        journal.append(vec![payload(n)]).unwrap();
        n += 1;
    }
    assert!(journal.verify().is_ok());
    assert_eq!(read_all(&journal).unwrap().len() as u64, n);
    drop(journal);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (journal, _) = Journal::open(tmp.path(), config).unwrap();
    assert_eq!(journal.last_sequence(), Sequence(n));
}
