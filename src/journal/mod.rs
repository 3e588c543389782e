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
//!   is skipped.
//!
//! The journal moves opaque payloads; [`codec`] turns events into payloads.

pub mod codec;
pub mod format;
pub mod storage;

use std::collections::HashMap;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crate::error::{Error, InputError, Result};
use crate::key::Sequence;
use crate::limits::{
    ATOMIC_RECORDS_MAX, COMMIT_BATCH_RECORDS_MAX, COMMIT_QUEUE_LEN_MAX, RECORD_PAYLOAD_LEN_MAX,
    SEGMENT_LEN_DEFAULT, SEGMENT_LEN_MAX, SEGMENT_LEN_MIN,
};
use format::{
    BadRecord, ChainHash, GENESIS_HASH, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
    decode_intact, decode_record, encode_record,
};
use storage::{DirLock, Storage, StorageFile};

const SEGMENT_SUFFIX: &str = ".seg";
const TEMP_SUFFIX: &str = ".seg.tmp";

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

/// An incomplete write at the end of the last segment, zeroed on open. It was never
/// acknowledged: appends return only after the sync that covers them.
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
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Its sequence.
    pub sequence: Sequence,
    /// Its chain hash.
    pub hash: ChainHash,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Figures for alerting and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended since open.
    pub records: u64,
    /// Group commits (one write and one sync each) since open.
    pub commits: u64,
    /// Latency of the last `fdatasync`, in microseconds.
    pub sync_last_us: u64,
    /// Largest `fdatasync` latency since open, in microseconds.
    pub sync_max_us: u64,
    /// Sum of `fdatasync` latencies since open, in microseconds.
    pub sync_total_us: u64,
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
    _lock: Box<dyn DirLock>,
}

#[derive(Clone, Debug)]
struct SegmentInfo {
    number: u64,
    first_sequence: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct Writer {
    file: Box<dyn StorageFile>,
    segment: u64,
    offset: u64,
    next_sequence: u64,
    head: ChainHash,
}

#[derive(Debug, Default)]
struct CommitQueue {
    waiting: Vec<Request>,
    leader_active: bool,
    poisoned: bool,
    done: HashMap<u64, Result<RangeInclusive<u64>>>,
    next_id: u64,
}

#[derive(Debug)]
struct Request {
    id: u64,
    payloads: Vec<Vec<u8>>,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SEGMENT_SUFFIX}"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent before it can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn corrupt(segment: u64, offset: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        segment,
        offset,
        what: what.into(),
    }
}

/// A record's position inside a segment buffer.
struct Span {
    sequence: u64,
    hash: ChainHash,
    payload: std::ops::Range<usize>,
}

/// What scanning one segment found.
struct Scan {
    spans: Vec<Span>,
    /// Offset after the last complete batch.
    end: usize,
    /// Chain hash and sequence at `end`.
    head: ChainHash,
    last_sequence: u64,
    /// The first bytes that are not the next record, if the scan did not reach a clean end.
    bad: Option<(usize, BadRecord)>,
    /// Records of an atomic append whose last record is missing were dropped from `spans`.
    incomplete_batch: bool,
}

/// Walks the records of one segment, stopping after `until` if given.
fn scan(bytes: &[u8], header: &SegmentHeader, until: Option<u64>) -> Scan {
    let mut spans = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut previous = header.previous_hash;
    let mut sequence = header.first_sequence;
    let mut committed = (pos, previous, sequence - 1, 0usize);
    let mut batch_left: Option<u32> = None;
    let mut bad = None;
    while until.is_none_or(|until| sequence <= until) {
        let rest = bytes.get(pos..).unwrap_or_default();
        match decode_record(rest, &previous, sequence) {
            Ok(None) => break,
            Ok(Some(record)) => {
                if let Some(expected) = batch_left
                    && record.batch_left != expected
                {
                    bad = Some((
                        pos,
                        BadRecord::Misplaced(format!(
                            "batch expects {expected} more records, record says {}",
                            record.batch_left
                        )),
                    ));
                    break;
                }
                spans.push(Span {
                    sequence,
                    hash: record.hash,
                    payload: pos + RECORD_HEADER_LEN..pos + record.len,
                });
                pos += record.len;
                previous = record.hash;
                batch_left = record.batch_left.checked_sub(1);
                if record.batch_left == 0 {
                    committed = (pos, previous, sequence, spans.len());
                }
                sequence += 1;
            }
            Err(why) => {
                bad = Some((pos, why));
                break;
            }
        }
    }
    let (end, head, last_sequence, complete) = committed;
    let incomplete_batch = spans.len() > complete;
    spans.truncate(complete);
    Scan {
        spans,
        end,
        head,
        last_sequence,
        bad,
        incomplete_batch,
    }
}

/// Whether an intact record with a plausible sequence exists anywhere at or after `from`:
/// if so, damage before it is corruption, not a torn tail.
fn intact_record_after(bytes: &[u8], from: usize, next_sequence: u64) -> Option<usize> {
    (from..bytes.len().saturating_sub(RECORD_HEADER_LEN)).find(|&at| {
        decode_intact(&bytes[at..]).is_ok_and(|r| {
            r.sequence >= next_sequence && r.sequence - next_sequence < u64::from(u32::MAX)
        })
    })
}

fn read_all(file: &dyn StorageFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.file_len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
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
        if !storage.exists(&dir) {
            if !config.create_if_missing {
                return Err(Error::NotFound { dir });
            }
            storage
                .create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let dir_lock = storage
            .try_lock(&dir)
            .map_err(|e| Error::io(format!("locking {}", dir.display()), e))?
            .ok_or_else(|| Error::Locked { dir: dir.clone() })?;
        let names = storage
            .list(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for name in names.iter().filter(|n| n.ends_with(TEMP_SUFFIX)) {
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
        if numbers.is_empty() && !config.create_if_missing {
            return Err(Error::NotFound { dir });
        }

        let mut segments = Vec::with_capacity(numbers.len());
        for (i, &number) in numbers.iter().enumerate() {
            if number != i as u64 {
                return Err(corrupt(number, 0, format!("segment {i} is missing")));
            }
            let path = segment_path(&dir, number);
            let file = storage
                .open(&path, false)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let mut bytes = [0u8; SEGMENT_HEADER_LEN];
            file.read_exact_at(&mut bytes, 0)
                .map_err(|_| corrupt(number, 0, "segment shorter than its header"))?;
            let header = SegmentHeader::decode(&bytes).map_err(|what| corrupt(number, 0, what))?;
            if header.number != number {
                return Err(corrupt(
                    number,
                    0,
                    format!("header says segment {}", header.number),
                ));
            }
            if let Some(previous) = segments.last().map(|s: &SegmentInfo| s.first_sequence)
                && header.first_sequence < previous
            {
                return Err(corrupt(number, 0, "first sequence goes backwards"));
            }
            segments.push(SegmentInfo {
                number,
                first_sequence: header.first_sequence,
                path,
            });
        }

        let mut journal_segments = segments;
        let mut report = RecoveryReport::default();
        let writer = match journal_segments.last() {
            None => {
                let writer = create_segment(&*storage, &dir, &config, 0, 1, GENESIS_HASH)?;
                journal_segments.push(SegmentInfo {
                    number: 0,
                    first_sequence: 1,
                    path: segment_path(&dir, 0),
                });
                writer
            }
            Some(last) => recover_last(&*storage, last, &mut report)?,
        };
        report.segments = journal_segments.len();
        report.last_sequence = Sequence(writer.next_sequence - 1);
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
            segments: RwLock::new(journal_segments),
            durable_sequence: AtomicU64::new(writer.next_sequence - 1),
            writer: Mutex::new(writer),
            queue: Mutex::new(CommitQueue::default()),
            queue_changed: Condvar::new(),
            stats: Mutex::new(JournalStats::default()),
            _lock: dir_lock,
        };
        Ok((journal, report))
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

    /// Appends `payloads` atomically (all or none survive a crash) and returns their sequences
    /// once an `fdatasync` covers them. Concurrent callers share one write and one sync.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for an empty, oversized or too-long append (nothing is written),
    /// [`Error::Io`] if the write or sync covering it failed, [`Error::Poisoned`] after an
    /// earlier failure.
    pub fn append(&self, payloads: Vec<Vec<u8>>) -> Result<RangeInclusive<Sequence>> {
        self.check_append(&payloads)?;
        let mut queue = lock(&self.queue);
        while !queue.poisoned && queue.waiting.len() >= COMMIT_QUEUE_LEN_MAX {
            queue = self
                .queue_changed
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if queue.poisoned {
            return Err(Error::Poisoned);
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.waiting.push(Request { id, payloads });
        loop {
            if let Some(result) = queue.done.remove(&id) {
                return result.map(|r| Sequence(*r.start())..=Sequence(*r.end()));
            }
            if !queue.leader_active {
                queue.leader_active = true;
                let batch = take_batch(&mut queue.waiting);
                drop(queue);
                let outcome = self.commit(&batch);
                queue = lock(&self.queue);
                queue.leader_active = false;
                match outcome {
                    Ok(ranges) => {
                        for (request, range) in batch.iter().zip(ranges) {
                            queue.done.insert(request.id, Ok(range));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, dir = %self.dir.display(), "journal write or sync failed; journal poisoned");
                        queue.poisoned = true;
                        for request in &batch {
                            let source = io::Error::new(e.kind(), e.to_string());
                            let failed = Error::io("journal write or sync failed", source);
                            queue.done.insert(request.id, Err(failed));
                        }
                        for request in std::mem::take(&mut queue.waiting) {
                            queue.done.insert(request.id, Err(Error::Poisoned));
                        }
                    }
                }
                self.queue_changed.notify_all();
                continue;
            }
            queue = self
                .queue_changed
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn check_append(&self, payloads: &[Vec<u8>]) -> Result<()> {
        if payloads.is_empty() || payloads.len() > ATOMIC_RECORDS_MAX {
            return Err(Error::TooLarge {
                what: format!(
                    "{} records in one append, 1 to {ATOMIC_RECORDS_MAX} allowed",
                    payloads.len()
                ),
            });
        }
        let mut bytes = SEGMENT_HEADER_LEN as u64;
        for payload in payloads {
            if payload.is_empty() || payload.len() > RECORD_PAYLOAD_LEN_MAX {
                return Err(Error::TooLarge {
                    what: format!(
                        "payload of {} bytes, 1 to {RECORD_PAYLOAD_LEN_MAX} allowed",
                        payload.len()
                    ),
                });
            }
            bytes += (RECORD_HEADER_LEN + payload.len()) as u64;
        }
        if bytes > self.config.segment_len {
            return Err(Error::TooLarge {
                what: format!(
                    "append of {bytes} bytes does not fit a {}-byte segment",
                    self.config.segment_len
                ),
            });
        }
        Ok(())
    }

    /// Frames, writes and syncs one batch; the leader runs this without the queue lock.
    fn commit(&self, batch: &[Request]) -> io::Result<Vec<RangeInclusive<u64>>> {
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        let mut buf = Vec::new();
        let mut ranges = Vec::with_capacity(batch.len());
        let mut records = 0u64;
        for request in batch {
            let need: u64 = request
                .payloads
                .iter()
                .map(|p| (RECORD_HEADER_LEN + p.len()) as u64)
                .sum();
            if writer.offset + buf.len() as u64 + need > self.config.segment_len {
                // Batches never span segments, and a segment is synced before its successor
                // exists, so a torn tail can only be in the last segment.
                self.write_and_sync(writer, &mut buf)?;
                self.roll_over(writer)?;
            }
            let first = writer.next_sequence;
            let count = request.payloads.len();
            for (i, payload) in request.payloads.iter().enumerate() {
                let batch_left = u32::try_from(count - 1 - i).unwrap_or(u32::MAX);
                writer.head = encode_record(
                    &mut buf,
                    &writer.head,
                    writer.next_sequence,
                    batch_left,
                    payload,
                );
                writer.next_sequence += 1;
            }
            records += count as u64;
            ranges.push(first..=writer.next_sequence - 1);
        }
        self.write_and_sync(writer, &mut buf)?;
        let mut stats = lock(&self.stats);
        stats.records += records;
        stats.commits += 1;
        Ok(ranges)
    }

    fn write_and_sync(&self, writer: &mut Writer, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        writer.file.write_all_at(buf, writer.offset)?;
        writer.offset += buf.len() as u64;
        buf.clear();
        let started = Instant::now();
        writer.file.sync_data()?;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.durable_sequence
            .store(writer.next_sequence - 1, Ordering::Release);
        let mut stats = lock(&self.stats);
        stats.sync_last_us = us;
        stats.sync_max_us = stats.sync_max_us.max(us);
        stats.sync_total_us += us;
        Ok(())
    }

    fn roll_over(&self, writer: &mut Writer) -> io::Result<()> {
        let number = writer.segment + 1;
        let next = create_segment(
            &*self.storage,
            &self.dir,
            &self.config,
            number,
            writer.next_sequence,
            writer.head,
        )
        .map_err(|e| match e {
            Error::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        segments.push(SegmentInfo {
            number,
            first_sequence: writer.next_sequence,
            path: segment_path(&self.dir, number),
        });
        *writer = next;
        tracing::debug!(segment = number, "journal segment rolled over");
        Ok(())
    }

    fn segment_list(&self) -> Vec<SegmentInfo> {
        self.segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn load_segment(&self, info: &SegmentInfo) -> Result<(Vec<u8>, SegmentHeader)> {
        let file = self
            .storage
            .open(&info.path, false)
            .map_err(|e| Error::io(format!("opening {}", info.path.display()), e))?;
        let bytes = read_all(&*file)
            .map_err(|e| Error::io(format!("reading {}", info.path.display()), e))?;
        let header = SegmentHeader::decode(&bytes).map_err(|what| corrupt(info.number, 0, what))?;
        Ok((bytes, header))
    }

    /// Every durable record with sequence `from` or later, in order, one segment in memory at a
    /// time. Records appended after the call are not included.
    pub fn read_from(&self, from: Sequence) -> JournalReader<'_> {
        let until = self.last_sequence().0;
        let segments: Vec<SegmentInfo> = self
            .segment_list()
            .into_iter()
            .rev()
            .scan(false, |done, s| {
                // Keep segments from the last one starting at or before `from`, onwards.
                if *done {
                    return None;
                }
                *done = s.first_sequence <= from.0;
                Some(s)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        JournalReader {
            journal: self,
            segments: segments.into_iter(),
            current: Vec::new().into_iter(),
            from: from.0.max(1),
            until,
        }
    }

    /// Walks every segment and checks each header, record crc, chain link, sequence and the
    /// links between segments. Segments are checked in parallel (each header carries the
    /// sequence and chain hash it continues from), then linked in order.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the segment and offset of the first problem.
    pub fn verify(&self) -> Result<VerifyReport> {
        let until = self.last_sequence().0;
        let segments = self.segment_list();
        let mut report = VerifyReport {
            segments: segments.len(),
            records: 0,
            record_bytes: 0,
            last_sequence: Sequence(0),
            head: GENESIS_HASH,
        };
        let parallel = std::thread::available_parallelism().map_or(1, usize::from);
        let mut expected = (1u64, GENESIS_HASH);
        for window in segments.chunks(parallel) {
            let checked: Vec<Result<SegmentCheck>> = std::thread::scope(|scope| {
                let handles: Vec<_> = window
                    .iter()
                    .map(|info| scope.spawn(move || self.check_segment(info, until)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Codec {
                                what: "verify thread panicked".into(),
                            })
                        })
                    })
                    .collect()
            });
            for (info, check) in window.iter().zip(checked) {
                let check = check?;
                if (check.first_sequence, check.previous_hash) != expected {
                    return Err(corrupt(
                        info.number,
                        0,
                        format!(
                            "segment starts at sequence {} but the previous segment ends at {} or its chain head differs",
                            check.first_sequence,
                            expected.0 - 1
                        ),
                    ));
                }
                report.records += check.records;
                report.record_bytes += check.record_bytes;
                expected = (check.last_sequence + 1, check.head);
            }
        }
        report.last_sequence = Sequence(expected.0 - 1);
        report.head = expected.1;
        if report.last_sequence.0 != until {
            return Err(corrupt(
                segments.last().map_or(0, |s| s.number),
                0,
                format!(
                    "journal ends at sequence {} but {until} were written",
                    report.last_sequence.0
                ),
            ));
        }
        Ok(report)
    }

    /// Checks one segment on its own: header, and every record up to sequence `until`.
    fn check_segment(&self, info: &SegmentInfo, until: u64) -> Result<SegmentCheck> {
        let (bytes, header) = self.load_segment(info)?;
        if header.number != info.number {
            return Err(corrupt(
                info.number,
                0,
                format!("header says segment {}", header.number),
            ));
        }
        let scan = scan(&bytes, &header, Some(until));
        if let Some((offset, why)) = scan.bad
            && scan.last_sequence < until
        {
            let what = match why {
                BadRecord::Damaged(w) | BadRecord::Misplaced(w) => w,
            };
            return Err(corrupt(info.number, offset as u64, what));
        }
        if scan.incomplete_batch {
            return Err(corrupt(
                info.number,
                scan.end as u64,
                "atomic append cut short",
            ));
        }
        Ok(SegmentCheck {
            first_sequence: header.first_sequence,
            previous_hash: header.previous_hash,
            records: scan.spans.len() as u64,
            record_bytes: (scan.end - SEGMENT_HEADER_LEN) as u64,
            last_sequence: scan.last_sequence,
            head: scan.head,
        })
    }
}

/// What checking one segment on its own found.
struct SegmentCheck {
    first_sequence: u64,
    previous_hash: ChainHash,
    records: u64,
    record_bytes: u64,
    last_sequence: u64,
    head: ChainHash,
}

/// Takes whole requests from the front of the queue, up to the batch record limit (at least
/// one request).
fn take_batch(waiting: &mut Vec<Request>) -> Vec<Request> {
    let mut records = 0;
    let mut count = 0;
    for request in waiting.iter() {
        if count > 0 && records + request.payloads.len() > COMMIT_BATCH_RECORDS_MAX {
            break;
        }
        records += request.payloads.len();
        count += 1;
    }
    waiting.drain(..count).collect()
}

/// Creates segment `number` under a temporary name, preallocates it, syncs it, renames it into
/// place and syncs the directory: a segment is visible only once it is whole.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    config: &JournalConfig,
    number: u64,
    first_sequence: u64,
    previous_hash: ChainHash,
) -> Result<Writer> {
    let path = segment_path(dir, number);
    let temp = dir.join(format!("{number:020}{TEMP_SUFFIX}"));
    let io_err = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    let file = storage
        .open(&temp, true)
        .map_err(|e| io_err("creating", e))?;
    let header = SegmentHeader {
        number,
        first_sequence,
        previous_hash,
    };
    file.set_len(0).map_err(|e| io_err("truncating", e))?;
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| io_err("writing header of", e))?;
    file.preallocate(config.segment_len)
        .map_err(|e| io_err("preallocating", e))?;
    file.sync_data().map_err(|e| io_err("syncing", e))?;
    storage
        .rename(&temp, &path)
        .map_err(|e| io_err("renaming", e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
    Ok(Writer {
        file,
        segment: number,
        offset: SEGMENT_HEADER_LEN as u64,
        next_sequence: first_sequence,
        head: previous_hash,
    })
}

/// Scans the last segment, cuts a torn tail (reporting it) and returns the writer positioned
/// after the last complete atomic append.
fn recover_last(
    storage: &dyn Storage,
    last: &SegmentInfo,
    report: &mut RecoveryReport,
) -> Result<Writer> {
    let file = storage
        .open(&last.path, false)
        .map_err(|e| Error::io(format!("opening {}", last.path.display()), e))?;
    let bytes =
        read_all(&*file).map_err(|e| Error::io(format!("reading {}", last.path.display()), e))?;
    let header = SegmentHeader::decode(&bytes).map_err(|what| corrupt(last.number, 0, what))?;
    let scan = scan(&bytes, &header, None);
    if let Some((offset, why)) = &scan.bad {
        match why {
            BadRecord::Misplaced(what) => {
                return Err(corrupt(last.number, *offset as u64, what.clone()));
            }
            BadRecord::Damaged(what) => {
                if let Some(at) = intact_record_after(&bytes, offset + 1, scan.last_sequence + 1) {
                    return Err(corrupt(
                        last.number,
                        *offset as u64,
                        format!("{what}, followed by an intact record at offset {at}"),
                    ));
                }
            }
        }
    }
    let garbage_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let io_err = |e| Error::io(format!("recovering {}", last.path.display()), e);
    if garbage_end > scan.end {
        let zeros = vec![0u8; garbage_end - scan.end];
        file.write_all_at(&zeros, scan.end as u64).map_err(io_err)?;
    }
    // An existing segment keeps the length it has: only new segments are preallocated, so that
    // opening a journal (even with another configured segment length) changes no byte of it
    // beyond a torn tail.
    // What was just read may be only in the page cache (a previous process's sync failed, or
    // it died before syncing): make it durable before anyone is served from it.
    file.sync_data().map_err(io_err)?;
    if garbage_end > scan.end {
        report.torn_tail = Some(TornTail {
            segment: last.number,
            offset: scan.end as u64,
            bytes: (garbage_end - scan.end) as u64,
        });
    }
    Ok(Writer {
        file,
        segment: last.number,
        offset: scan.end as u64,
        next_sequence: scan.last_sequence + 1,
        head: scan.head,
    })
}

/// Iterator over durable records; see [`Journal::read_from`].
#[derive(Debug)]
pub struct JournalReader<'a> {
    journal: &'a Journal,
    segments: std::vec::IntoIter<SegmentInfo>,
    current: std::vec::IntoIter<JournalRecord>,
    from: u64,
    until: u64,
}

impl Iterator for JournalReader<'_> {
    type Item = Result<JournalRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(Ok(record));
            }
            let info = self.segments.next()?;
            let (bytes, header) = match self.journal.load_segment(&info) {
                Ok(loaded) => loaded,
                Err(e) => return Some(Err(e)),
            };
            let scan = scan(&bytes, &header, Some(self.until));
            if let Some((offset, why)) = scan.bad
                && scan.last_sequence < self.until
                && info.first_sequence <= self.until
            {
                let what = match why {
                    BadRecord::Damaged(w) | BadRecord::Misplaced(w) => w,
                };
                self.segments = Vec::new().into_iter();
                return Some(Err(corrupt(info.number, offset as u64, what)));
            }
            let from = self.from;
            self.current = scan
                .spans
                .into_iter()
                .filter(|span| span.sequence >= from)
                .map(|span| JournalRecord {
                    sequence: Sequence(span.sequence),
                    hash: span.hash,
                    payload: bytes[span.payload].to_vec(),
                })
                .collect::<Vec<_>>()
                .into_iter();
        }
    }
}
