//! Issue 8: the journal under a panicking storage and hostile bytes on disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use payledger::journal::format::{GENESIS_HASH, SEGMENT_FORMAT_V1, SegmentHeader, encode_record};
use payledger::journal::simdisk::SimDisk;
use payledger::journal::storage::{DirLock, Storage, StorageFile};
use payledger::journal::{Journal, JournalConfig};
use payledger::limits::SEGMENT_LEN_MAX;
use payledger::{Error, Sequence};

/// Storage over a `SimDisk` that can panic inside a write and records the largest read.
#[derive(Debug, Clone)]
struct Hostile {
    disk: SimDisk,
    panic_next_write: Arc<AtomicBool>,
    read_max: Arc<AtomicU64>,
}

#[derive(Debug)]
struct HostileFile {
    inner: Box<dyn StorageFile>,
    storage: Hostile,
}

impl StorageFile for HostileFile {
    fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.storage
            .read_max
            .fetch_max(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.storage.panic_next_write.swap(false, Ordering::SeqCst) {
            panic!("a bug inside a user-supplied storage");
        }
        self.inner.write_all_at(data, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
}

impl Storage for Hostile {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.disk.exists(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.disk.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(HostileFile {
            inner: self.disk.open(path, create)?,
            storage: self.clone(),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path, false)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.disk.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_dir(dir)
    }
    fn try_lock(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        self.disk.try_lock(dir)
    }
}

fn hostile() -> Hostile {
    Hostile {
        disk: SimDisk::new(1),
        panic_next_write: Arc::new(AtomicBool::new(false)),
        read_max: Arc::new(AtomicU64::new(0)),
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/ledger")
}

/// 8.5: a panic inside the group-commit leader poisons the journal; nobody waits forever.
#[test]
fn a_panicking_commit_leader_poisons_the_journal_and_wakes_every_waiter() {
    let storage = hostile();
    let config = JournalConfig {
        segment_len: 1 << 16,
        create_if_missing: true,
    };
    let (journal, _) = Journal::open_on(Arc::new(storage.clone()), dir(), config).unwrap();
    let journal = Arc::new(journal);
    journal.append(vec![b"before".to_vec()]).unwrap();
    storage.panic_next_write.store(true, Ordering::SeqCst);
    let first = {
        let journal = Arc::clone(&journal);
        std::thread::spawn(move || journal.append(vec![b"panics".to_vec()]))
    };
    let _ = first.join();
    let (done, results) = mpsc::channel();
    for i in 0..4 {
        let (journal, done) = (Arc::clone(&journal), done.clone());
        std::thread::spawn(move || {
            let _ = done.send(journal.append(vec![format!("after {i}").into_bytes()]));
        });
    }
    for _ in 0..4 {
        let result = results
            .recv_timeout(Duration::from_secs(30))
            .expect("an append after the panic must return, not hang");
        assert!(matches!(result, Err(Error::Poisoned { .. })), "{result:?}");
    }
}

fn one_segment(disk: &SimDisk, bytes: Vec<u8>) {
    disk.put_bytes(&dir().join(format!("{:020}.seg", 0)), bytes);
}

/// 8.6: a crafted header cannot overflow the record sequence.
#[test]
fn a_sequence_at_the_end_of_the_number_space_is_corruption_not_a_panic() {
    let disk = SimDisk::new(2);
    let header = SegmentHeader {
        version: SEGMENT_FORMAT_V1,
        number: 0,
        first_sequence: u64::MAX,
        previous_hash: GENESIS_HASH,
    };
    let mut bytes = header.encode().to_vec();
    let hash = encode_record(&mut bytes, &GENESIS_HASH, u64::MAX, 0, b"last");
    encode_record(&mut bytes, &hash, 0, 0, b"wrapped");
    bytes.resize(8192, 0);
    one_segment(&disk, bytes);
    let config = JournalConfig {
        segment_len: 8192,
        create_if_missing: false,
    };
    let result = Journal::open_on(Arc::new(disk), dir(), config);
    assert!(
        matches!(result, Err(Error::Corrupt { .. })),
        "{:?}",
        result.map(|_| ())
    );
}

/// 8.6: a segment file longer than any segment may be is refused before it is read.
#[test]
fn a_segment_longer_than_the_limit_is_refused_before_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let header = SegmentHeader {
        version: SEGMENT_FORMAT_V1,
        number: 0,
        first_sequence: 1,
        previous_hash: GENESIS_HASH,
    };
    let path = tmp.path().join(format!("{:020}.seg", 0));
    let file = std::fs::File::create(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &header.encode(), 0).unwrap();
    file.set_len(SEGMENT_LEN_MAX + 4096).unwrap(); // sparse
    let result = Journal::open(
        tmp.path(),
        JournalConfig {
            segment_len: 1 << 20,
            create_if_missing: false,
        },
    );
    assert!(
        matches!(result, Err(Error::Corrupt { .. })),
        "{:?}",
        result.map(|_| ())
    );
}

/// 8.6: opening and verifying read a segment in bounded windows, not whole.
#[test]
fn open_and_verify_read_in_bounded_windows() {
    let storage = hostile();
    let config = JournalConfig {
        segment_len: 16 << 20,
        create_if_missing: true,
    };
    {
        let (journal, _) = Journal::open_on(Arc::new(storage.clone()), dir(), config).unwrap();
        for i in 0..100u32 {
            journal.append(vec![vec![i as u8 + 1; 60_000]]).unwrap();
        }
    }
    storage.read_max.store(0, Ordering::SeqCst);
    let (journal, report) = Journal::open_on(Arc::new(storage.clone()), dir(), config).unwrap();
    assert_eq!(report.last_sequence, Sequence(100));
    assert_eq!(journal.verify().unwrap().records, 100);
    assert_eq!(journal.read_from(Sequence(1)).count(), 100);
    let read_max = storage.read_max.load(Ordering::SeqCst);
    assert!(
        read_max <= 2 << 20,
        "largest single read {read_max} bytes of a 16 MiB segment"
    );
}

/// Storage over a `SimDisk` on which the second segment can never be created (a full disk at
/// the first roll-over), and every sync takes a few milliseconds, as a real disk's does, so
/// that concurrent appends gather into commit batches of many records.
#[derive(Debug, Clone)]
struct NoSecondSegment(SimDisk);

/// How long a sync of [`NoSecondSegment`] takes.
const SLOW_SYNC: Duration = Duration::from_millis(3);

impl NoSecondSegment {
    fn refuses(path: &Path) -> bool {
        path.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("00000000000000000001"))
    }
}

impl Storage for NoSecondSegment {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.0.exists(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        if create && Self::refuses(path) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        Ok(Box::new(crate::support::SyncWith {
            inner: self.0.open(path, create)?,
            sync: |file: &dyn StorageFile| {
                std::thread::sleep(SLOW_SYNC);
                file.sync_data()
            },
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.0.open_read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if Self::refuses(to) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.0.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sync_dir(dir)
    }
    fn try_lock(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        self.0.try_lock(dir)
    }
    fn background_writes(&self) -> bool {
        self.0.background_writes()
    }
}

/// Found in review: a commit batch that spans a segment boundary syncs its first part, then
/// the roll-over fails, and every append of the batch is answered `AppendFailed`: none of them
/// reaches the index although some are durable. Waiting for the index (lists, counts, the
/// reconciler) must then end with the journal's error, not wait forever for sequences nobody
/// will apply. Runs until a batch did span the boundary (a gap between the durable journal and
/// what reached the index). Twelve writers behind a 3 ms sync gather batches of about twelve
/// records, and 32 records fill the segment, so a batch straddles the boundary in almost every
/// run. (With instant syncs batches were one or two records, and a clean-clone CI run once went
/// 30 runs without a straddling batch.)
#[test]
fn a_failed_roll_over_inside_a_commit_never_leaves_index_waiters_waiting() {
    use payledger::*;
    // 32 records of this test fill a 4 KiB segment; batches of 12 do not end on 32.
    const WRITERS: usize = 12;
    let mut gaps = 0;
    for run in 0..30u64 {
        let tmp = tempfile::tempdir().unwrap();
        let clock = crate::support::clock();
        let config = LedgerConfig {
            segment_len: 4096,
            storage: Arc::new(NoSecondSegment(SimDisk::new(run))),
            index_dir: Some(tmp.path().to_path_buf()),
            ..crate::support::config(&clock)
        };
        let (ledger, _) = Ledger::open(dir(), config).unwrap();
        std::thread::scope(|s| {
            for t in 0..WRITERS {
                let ledger = &ledger;
                s.spawn(move || {
                    for i in 0.. {
                        let k = crate::support::key(&format!("roll-{t}-{i}"));
                        if ledger.begin(&k, &crate::support::intent(100)).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        assert!(ledger.journal().stopped().is_some(), "the roll-over failed");
        let durable = ledger.journal().last_sequence();
        let (tx, rx) = mpsc::channel();
        let waiter = ledger.clone();
        std::thread::spawn(move || {
            let _ = tx.send(waiter.wait_indexed());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            // Every durable record reached the index: this batch did not span the boundary.
            Ok(Ok(())) => continue,
            Ok(Err(e)) => {
                assert!(matches!(e, Error::Poisoned { .. }), "{e:?}");
                gaps += 1;
                break;
            }
            Err(_) => panic!(
                "run {run}: waiting for the index never ends (journal durable up to {durable:?}, index at {:?})",
                ledger.index_watermark()
            ),
        }
    }
    assert!(
        gaps > 0,
        "no commit batch spanned the failed roll-over in 30 runs"
    );
}
