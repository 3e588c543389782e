//! The journal: payledger's source of truth, an append-only log of framed records in segment
//! files, with group commit, fail-stop on I/O errors, torn-tail recovery and verification.
//!
//! Invariants:
//! - an append returns `Ok` only after an `fdatasync` that covers all of its records;
//! - the records of one append are all present after a crash or none are;
//! - nothing rewrites a record: the only bytes ever changed after a write are a torn tail's,
//!   zeroed on open and reported;
//! - after a failed write or sync the journal is poisoned: every later append fails until it is
//!   reopened, which re-reads what is really on disk (a failed sync is never retried);
//! - corruption anywhere but the torn tail is a typed error naming segment and offset; nothing
//!   is skipped;
//! - no read holds more than one window of a segment in memory, and no length read from disk is
//!   trusted before it is checked against a limit.
//!
//! Files: [`mod@format`] is the byte layout, [`codec`] turns events into payloads, [`storage`] is
//! the file seam; `segment.rs` creates and walks one segment, `group_commit.rs` appends,
//! `recovery.rs` opens the last segment, `read.rs` and `verify.rs` read back.

pub mod codec;
pub mod format;
mod group_commit;
mod read;
mod recovery;
mod segment;
#[cfg(feature = "sim")]
pub mod simdisk;
pub mod storage;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::error::{Corruption, Error, Result};
use crate::limits::{SEGMENT_LEN_DEFAULT, SEGMENT_LEN_MAX, SEGMENT_LEN_MIN};
use crate::model::InputError;
use crate::model::Sequence;
use crate::sync::{lock, read};
use format::{ChainHash, GENESIS_HASH, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_LEN, SegmentHeader};
pub use group_commit::Appended;
use group_commit::{CommitQueue, Writer};
pub use read::{Follower, JournalReader};
use segment::{
    SEGMENT_SUFFIX, SegmentInfo, TEMP_SUFFIX, corrupt, create_segment, open_segment, segment_path,
};
use storage::{DirLock, Storage};

/// How a journal is opened.
#[derive(Clone, Copy, Debug)]
pub struct JournalConfig {
    /// Size every segment file is preallocated to; a segment rolls over when the next append
    /// does not fit.
    pub segment_len: u64,
    /// Create the directory and the first segment if there is no journal.
    pub create_if_missing: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            segment_len: SEGMENT_LEN_DEFAULT,
            create_if_missing: true,
        }
    }
}

/// What opening found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Segment files in the journal.
    pub segments: usize,
    /// Sequence of the last record (0 for an empty journal).
    pub last_sequence: Sequence,
}

/// An incomplete write at the end of the last segment, zeroed on a writable open and left in
/// place by a read-only one. It was never acknowledged: appends return only after the sync that
/// covers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: u64,
    /// Where the valid records end.
    pub offset: u64,
    /// How many bytes after it were not zero.
    pub bytes: u64,
}

/// What `verify` checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments walked.
    pub segments: usize,
    /// Records checked.
    pub records: u64,
    /// Bytes of records checked (headers and payloads).
    pub record_bytes: u64,
    /// Sequence of the last record.
    pub last_sequence: Sequence,
    /// Chain hash of the last record.
    pub head: ChainHash,
    /// A torn tail a read-only open left in place (a writable open cuts it before anyone can
    /// verify): reported, not corruption. Any non-zero byte beyond it still is.
    pub torn_tail: Option<TornTail>,
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Its sequence.
    pub sequence: Sequence,
    /// Its chain hash.
    pub hash: ChainHash,
    /// Where it is.
    pub position: RecordPosition,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Where a record is: its segment and the offset of its header in the segment file. Stable for
/// the life of the journal (records are never moved or rewritten).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct RecordPosition {
    /// The segment's number.
    pub segment: u64,
    /// The offset of the record's header.
    pub offset: u64,
}

impl RecordPosition {
    /// The 16 bytes of a position (segment, offset; u64 BE each).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.segment.to_be_bytes());
        bytes[8..].copy_from_slice(&self.offset.to_be_bytes());
        bytes
    }

    /// A position from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let (segment, offset) = bytes.split_at(8);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_be_bytes(w)
        };
        Self {
            segment: word(segment),
            offset: word(offset),
        }
    }
}

/// Figures for alerting and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended since open.
    pub records: u64,
    /// Group commits (one write and one sync each) since open.
    pub commits: u64,
    /// Latency of the last `fdatasync`, in microseconds.
    pub sync_us_last: u64,
    /// Largest `fdatasync` latency since open, in microseconds.
    pub sync_us_max: u64,
    /// Sum of `fdatasync` latencies since open, in microseconds.
    pub sync_us_total: u64,
}

/// An open journal. Cheap to share between threads (`Send + Sync`); appends from many threads
/// share syncs.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: JournalConfig,
    segments: RwLock<Vec<SegmentInfo>>,
    writer: Mutex<Writer>,
    queue: Mutex<CommitQueue>,
    queue_changed: Condvar,
    durable_sequence: AtomicU64,
    stats: Mutex<JournalStats>,
    /// The directory lock; `None` for a read-only journal, which takes none.
    _lock: Option<Box<dyn DirLock>>,
    /// The torn tail a read-only open found and, writing nothing, left in place.
    left_torn: Option<TornTail>,
    /// The next segment, being prepared off the commit path.
    spare: Mutex<Option<group_commit::Spare>>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` on the real file system.
    ///
    /// # Errors
    /// See [`Journal::open_on`].
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<(Self, RecoveryReport)> {
        Self::open_on(Arc::new(storage::FsStorage), dir, config)
    }

    /// Opens (or creates) the journal in `dir` on `storage`: takes the directory lock, checks
    /// every segment header, scans the last segment, cuts a torn tail and re-establishes the
    /// chain head.
    ///
    /// # Errors
    /// [`Error::Locked`] if another handle owns the directory, [`Error::NotFound`] if there is
    /// no journal and `create_if_missing` is off, [`Error::Corrupt`] for damage other than a
    /// torn tail, [`Error::Io`] for I/O failures, [`Error::Input`] for a bad config.
    pub fn open_on(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: JournalConfig,
    ) -> Result<(Self, RecoveryReport)> {
        Self::open_acknowledged(storage, dir, config, || Ok(Sequence(0)))
    }

    /// [`Journal::open_on`], with evidence of what was acknowledged: once the directory lock is
    /// held and before recovery changes a byte, `acknowledged` says up to which sequence records
    /// were synced and acknowledged (the ledger's index watermark, say). A journal that ends
    /// before it is refused with [`Error::AcknowledgedMissing`] and left untouched, instead of
    /// having its damaged last records cut as a torn tail.
    ///
    /// # Errors
    /// As [`Journal::open_on`], [`Error::AcknowledgedMissing`], and whatever `acknowledged`
    /// returns.
    pub fn open_acknowledged(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        config: JournalConfig,
        acknowledged: impl FnOnce() -> Result<Sequence>,
    ) -> Result<(Self, RecoveryReport)> {
        let dir = dir.as_ref().to_path_buf();
        if !(SEGMENT_LEN_MIN..=SEGMENT_LEN_MAX).contains(&config.segment_len) {
            return Err(InputError::Config {
                field: "segment_len",
                value: config.segment_len,
                min: SEGMENT_LEN_MIN,
                max: SEGMENT_LEN_MAX,
            }
            .into());
        }
        let dir_lock = lock_dir(&*storage, &dir, &config)?;
        let mut segments = list_segments(&*storage, &dir, true)?;
        if segments.is_empty() && !config.create_if_missing {
            return Err(Error::NotFound { dir });
        }
        let acknowledged = acknowledged()?;
        let mut report = RecoveryReport::default();
        let writer = match segments.last() {
            None => {
                let header = SegmentHeader {
                    version: SEGMENT_FORMAT_VERSION,
                    number: 0,
                    first_sequence: 1,
                    previous_hash: GENESIS_HASH,
                };
                let file = create_segment(&*storage, &dir, &config, header)?;
                segments.push(SegmentInfo {
                    number: 0,
                    first_sequence: 1,
                    path: segment_path(&dir, 0),
                });
                Writer {
                    file,
                    segment: 0,
                    version: SEGMENT_FORMAT_VERSION,
                    offset: SEGMENT_HEADER_LEN as u64,
                    next_sequence: 1,
                    head: GENESIS_HASH,
                    frame_buf: Vec::new(),
                }
            }
            Some(last) => recovery::recover_last(&*storage, last, acknowledged, &mut report)?,
        };
        report.segments = segments.len();
        report.last_sequence = Sequence(writer.next_sequence - 1);
        if report.last_sequence < acknowledged {
            // Only an empty directory gets here: a journal that does not exist any more.
            return Err(Error::AcknowledgedMissing {
                acknowledged,
                journal_last: report.last_sequence,
            });
        }
        if let Some(torn) = &report.torn_tail {
            tracing::warn!(
                segment = torn.segment,
                offset = torn.offset,
                bytes = torn.bytes,
                "journal torn tail truncated"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            last_sequence = report.last_sequence.0,
            "journal opened"
        );
        let journal = Self {
            dir,
            storage,
            config,
            segments: RwLock::new(segments),
            durable_sequence: AtomicU64::new(writer.next_sequence - 1),
            writer: Mutex::new(writer),
            queue: Mutex::new(CommitQueue::default()),
            queue_changed: Condvar::new(),
            stats: Mutex::new(JournalStats::default()),
            _lock: Some(dir_lock),
            left_torn: None,
            spare: Mutex::new(None),
        };
        journal.leave_old_format()?;
        Ok((journal, report))
    }

    /// Opens the journal in `dir` on `storage` for reading only: no lock is taken, no file is
    /// created, opened for writing, changed or synced, so it works on a read-only copy or a
    /// file-system snapshot, even while the live journal is written elsewhere. A torn tail is
    /// reported and left as it is; reads end at the last complete commit. Appends are refused
    /// ([`Error::ReadOnly`]).
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no journal; otherwise as [`Journal::open_acknowledged`]
    /// (with `acknowledged` read once the segments are listed).
    pub fn open_read_only(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        acknowledged: impl FnOnce() -> Result<Sequence>,
    ) -> Result<(Self, RecoveryReport)> {
        let dir = dir.as_ref().to_path_buf();
        if !storage.exists(&dir) {
            return Err(Error::NotFound { dir });
        }
        let segments = list_segments(&*storage, &dir, false)?;
        let Some(last) = segments.last().cloned() else {
            return Err(Error::NotFound { dir });
        };
        let acknowledged = acknowledged()?;
        let scanned = recovery::scan_last(&*storage, &last, acknowledged)?;
        let file = storage
            .open_read(&last.path)
            .map_err(|e| Error::io(format!("opening {}", last.path.display()), e))?;
        let committed = scanned.committed;
        let report = RecoveryReport {
            torn_tail: scanned.torn_tail(last.number),
            segments: segments.len(),
            last_sequence: Sequence(committed.last_sequence),
        };
        let writer = Writer {
            file,
            segment: last.number,
            version: scanned.version,
            offset: committed.end,
            next_sequence: committed.last_sequence.saturating_add(1),
            head: committed.head,
            frame_buf: Vec::new(),
        };
        let journal = Self {
            dir,
            storage,
            config: JournalConfig {
                segment_len: SEGMENT_LEN_MAX,
                create_if_missing: false,
            },
            segments: RwLock::new(segments),
            durable_sequence: AtomicU64::new(committed.last_sequence),
            writer: Mutex::new(writer),
            queue: Mutex::new(CommitQueue::default()),
            queue_changed: Condvar::new(),
            stats: Mutex::new(JournalStats::default()),
            _lock: None,
            left_torn: report.torn_tail.clone(),
            spare: Mutex::new(None),
        };
        Ok((journal, report))
    }

    /// Whether the journal was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self._lock.is_none()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence of the last durable record (0 for an empty journal).
    pub fn last_sequence(&self) -> Sequence {
        Sequence(self.durable_sequence.load(Ordering::Acquire))
    }

    /// Figures since open.
    pub fn stats(&self) -> JournalStats {
        *lock(&self.stats)
    }

    /// Appends go only to a segment of the current format: a journal whose last segment is of
    /// an older version continues in a fresh segment. The old segments are read, never written.
    fn leave_old_format(&self) -> Result<()> {
        let mut writer = lock(&self.writer);
        if writer.version == SEGMENT_FORMAT_VERSION {
            return Ok(());
        }
        self.roll_over(&mut writer).map_err(|cause| Error::Io {
            context: cause.context().to_string(),
            source: std::io::Error::new(cause.io_error().kind(), cause.io_error().to_string()),
        })
    }

    fn segment_list(&self) -> Vec<SegmentInfo> {
        read(&self.segments).clone()
    }

    /// How many segments the journal has.
    pub fn segment_count(&self) -> usize {
        read(&self.segments).len()
    }
}

/// Creates `dir` if asked to and takes its exclusive lock.
fn lock_dir(storage: &dyn Storage, dir: &Path, config: &JournalConfig) -> Result<Box<dyn DirLock>> {
    if !storage.exists(dir) {
        if !config.create_if_missing {
            return Err(Error::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        storage
            .create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    storage
        .try_lock(dir)
        .map_err(|e| Error::io(format!("locking {}", dir.display()), e))?
        .ok_or_else(|| Error::Locked {
            dir: dir.to_path_buf(),
        })
}

/// Removes segments whose creation never finished (when `repair`), then checks every segment's
/// header, numbering and first sequence, in order.
fn list_segments(storage: &dyn Storage, dir: &Path, repair: bool) -> Result<Vec<SegmentInfo>> {
    let names = storage
        .list(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for name in names.iter().filter(|n| repair && n.ends_with(TEMP_SUFFIX)) {
        // A segment whose creation did not finish: it was never renamed into place, so it
        // holds no record.
        let path = dir.join(name);
        storage
            .remove(&path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    let mut numbers: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(SEGMENT_SUFFIX)?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(numbers.len());
    for (i, &number) in numbers.iter().enumerate() {
        if number != i as u64 {
            return Err(corrupt(
                number,
                0,
                Corruption::SegmentMissing { missing: i as u64 },
            ));
        }
        let mut info = SegmentInfo {
            number,
            first_sequence: 0,
            path: segment_path(dir, number),
        };
        info.first_sequence = open_segment(storage, &info)?.header.first_sequence;
        if let Some(previous) = segments.last()
            && info.first_sequence < previous.first_sequence
        {
            return Err(corrupt(number, 0, Corruption::FirstSequenceBackwards));
        }
        segments.push(info);
    }
    Ok(segments)
}

impl Drop for Journal {
    /// Waits for a segment being prepared ahead and removes it: nothing writes in the directory
    /// once the journal is closed (its lock may be taken by the next process), and no unused
    /// segment-sized file is left behind (a writable open removes one left by a crash).
    fn drop(&mut self) {
        if let Some((number, file)) = self.finish_spare() {
            drop(file);
            if let Err(e) = segment::discard_prepared(&*self.storage, &self.dir, number) {
                tracing::warn!(error = %e, segment = number, "removing the unused prepared segment failed");
            }
        }
    }
}
