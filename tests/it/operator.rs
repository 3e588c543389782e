//! Issue 14, through the library: errors that stop the ledger name their cause once, health
//! shows it, a read-only open changes nothing and can follow a live ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use payledger::*;

use crate::support::*;

/// The error and its sources, as `payledger` prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn a_full_disk_is_named_in_the_first_error_once_and_in_health() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(3);
    let clock = clock();
    let config = LedgerConfig {
        storage: Arc::new(disk.clone()),
        index_dir: Some(tmp.path().to_path_buf()),
        ..config(&clock)
    };
    let (ledger, _) = Ledger::open("/ledger", config).unwrap();
    ledger
        .begin(&key("first"), &intent(100))
        .unwrap()
        .into_attempt()
        .ok();
    disk.fail_next_writes(1);
    let first = ledger.begin(&key("second"), &intent(100)).unwrap_err();
    assert!(matches!(first, Error::AppendFailed { .. }), "{first:?}");
    let text = chain(&first);
    assert!(
        text.contains("/ledger/00000000000000000000.seg")
            && text.contains("simulated write failure"),
        "the file and the I/O error: {text}"
    );
    assert_eq!(
        text.matches("simulated write failure").count(),
        1,
        "the cause appears once: {text}"
    );
    let source = std::error::Error::source(&first).expect("a source");
    let io = source
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .expect("the I/O error is reachable as a source");
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
    let later = ledger.begin(&key("third"), &intent(100)).unwrap_err();
    assert!(matches!(later, Error::Poisoned { .. }));
    assert!(
        chain(&later).contains("simulated write failure"),
        "later errors carry it too"
    );
    let health = ledger.health().unwrap();
    let fatal = health.fatal.expect("health names the failure");
    assert!(fatal.context().contains("/ledger/00000000000000000000.seg"));
    assert_eq!(fatal.io_error().kind(), std::io::ErrorKind::StorageFull);
}

/// Every file under `dir` with its bytes' hash and its modification time.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
                files.insert(path, (String::new(), meta.modified().unwrap()));
            } else {
                let hash = blake3::hash(&std::fs::read(&path).unwrap())
                    .to_hex()
                    .to_string();
                files.insert(path, (hash, meta.modified().unwrap()));
            }
        }
    }
    files
}

fn ledger_with_history(dir: &Path) {
    let clock = clock();
    let provider = FakeProvider::new();
    let (ledger, _) = Ledger::open(dir, config(&clock)).unwrap();
    for i in 0..12 {
        *provider.reply_override.lock().unwrap() = (i % 3 == 0).then_some(ChargeReply::Timeout);
        ledger
            .charge_once(
                &key(&format!("ro-{i:02}")),
                &intent(100 + i),
                &*provider,
                Duration::from_millis(200),
            )
            .unwrap();
    }
}

#[test]
fn a_read_only_open_changes_no_byte_and_takes_no_lock_even_beside_a_live_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    ledger_with_history(&dir);
    let clock = clock();
    // The live ledger holds the lock and keeps writing.
    let (live, _) = Ledger::open(&dir, config(&clock)).unwrap();
    let before = snapshot(&dir);
    let (reader, report) = Ledger::open(
        &dir,
        LedgerConfig {
            read_only: true,
            create_if_missing: false,
            ..config(&clock)
        },
    )
    .unwrap();
    assert!(
        matches!(report.index, IndexRecovery::InMemory { .. }),
        "{:?}",
        report.index
    );
    for i in 0..12 {
        let k = key(&format!("ro-{i:02}"));
        assert_eq!(reader.state(&k).unwrap(), live.state(&k).unwrap());
        assert_eq!(reader.history(&k).unwrap(), live.history(&k).unwrap());
    }
    assert_eq!(
        reader.health().unwrap().unknown,
        live.health().unwrap().unknown
    );
    assert!(matches!(
        reader.begin(&key("new"), &intent(1)),
        Err(Error::ReadOnly)
    ));
    assert_eq!(
        snapshot(&dir),
        before,
        "no byte or modification time changed"
    );

    // The reader follows what the live ledger appends.
    let mut follower = reader
        .journal()
        .follow(reader.journal().last_sequence().next());
    assert!(follower.poll().unwrap().is_none());
    live.begin(&key("new-live"), &intent(5))
        .unwrap()
        .into_attempt()
        .ok();
    let mut seen = Vec::new();
    for _ in 0..100 {
        match follower.poll().unwrap() {
            Some(record) => seen.push(record),
            None if seen.len() >= 2 => break,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(seen.len(), 2, "the intent and the attempt");
    assert_eq!(seen[0].sequence, reader.journal().last_sequence().next());
}

#[test]
fn verify_on_a_read_only_open_reports_the_torn_tail_it_left_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let config = journal::JournalConfig {
        segment_len: 1 << 16,
        create_if_missing: true,
    };
    let (journal, _) = journal::Journal::open(&dir, config).unwrap();
    journal
        .append(vec![b"one".to_vec(), b"two".to_vec()])
        .unwrap();
    drop(journal);
    let segment = dir.join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    // Half a commit frame: what a crash in the middle of a write leaves.
    bytes[end..end + 10].copy_from_slice(b"PLCF\x07\x00\x00\x00\x01\x02");
    std::fs::write(&segment, &bytes).unwrap();
    let no_ack = || Ok(Sequence(0));

    let storage: Arc<dyn journal::storage::Storage> = Arc::new(journal::storage::FsStorage);
    let (reader, report) =
        journal::Journal::open_read_only(Arc::clone(&storage), &dir, no_ack).unwrap();
    let torn = report.torn_tail.expect("the open reports the torn tail");
    assert_eq!((torn.offset, torn.bytes), (end as u64, 10));
    let verified = reader.verify().expect("a torn tail is not corruption");
    assert_eq!(verified.torn_tail, Some(torn));
    assert_eq!(verified.records, 2);
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");
    drop(reader);

    // The writable open cuts it; verify then has nothing to report.
    let (journal, report) = journal::Journal::open(&dir, config).unwrap();
    assert!(report.torn_tail.is_some());
    assert_eq!(journal.verify().unwrap().torn_tail, None);
}
