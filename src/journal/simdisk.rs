//! `SimDisk`: an in-memory implementation of the storage seam that loses, tears and fails
//! writes the way a crashing machine does, deterministically from a seed. It backs the
//! simulator and the crash tests; it is compiled only with the `sim` feature.
//!
//! Invariant: a file's durable bytes change only on a successful `sync_data` of that file, and
//! a directory entry becomes durable only on `sync_dir` of its directory; a crash keeps exactly
//! the durable state plus what the crash mode lets survive.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::storage::{DirLock, Storage, StorageFile};

/// How a simulated crash treats writes that were not synced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// A random prefix of the unsynced writes survives, the last of them torn at a random byte
    /// (a process killed while the kernel was writing back in order).
    TearUnsynced,
    /// The machine loses power: every 4 KiB page written since its file's last sync survives or
    /// is lost independently of the others (out of order, as a drive's cache flushes), and a
    /// surviving page may be torn at 512-byte sector granularity. A file's length is its length
    /// at its last sync; directory entries are those of the last directory sync.
    PowerLoss,
}

/// Bytes of a page of the simulated disk: the unit that survives or is lost on power loss.
pub const PAGE_LEN: usize = 4096;
/// Bytes of a sector: the unit a power loss cannot tear.
pub const SECTOR_LEN: usize = 512;

/// What power losses did to unsynced pages since the disk was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLossCounts {
    /// Unsynced pages that were lost.
    pub pages_lost: u64,
    /// Unsynced pages that survived whole.
    pub pages_kept: u64,
    /// Unsynced pages that survived torn (some sectors new, some old).
    pub pages_torn: u64,
}

/// An in-memory disk that loses what was not synced when it "crashes", and fails chosen writes
/// and syncs. Clones share the same disk. Deterministic for a given seed.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimDisk")
    }
}

struct SimState {
    files: BTreeMap<PathBuf, SimFileData>,
    /// Names as they are after the last directory sync (path → file id).
    durable_names: BTreeMap<PathBuf, u64>,
    names: BTreeMap<PathBuf, u64>,
    locks: Vec<PathBuf>,
    /// Handles from before the last crash belong to a dead process.
    generation: u64,
    next_id: u64,
    rng: ChaCha8Rng,
    faults: Faults,
    bytes_written: u64,
    syncs: u64,
    power_loss: PowerLossCounts,
}

#[derive(Default)]
struct Faults {
    fail_writes: u32,
    fail_syncs: u32,
    write_fail_rate: f64,
    sync_fail_rate: f64,
}

#[derive(Default, Clone)]
struct SimFileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<PendingOp>,
}

#[derive(Clone)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply_op(bytes: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated process ended: handle from before the crash")
}

impl SimDisk {
    /// A new empty disk whose crashes and random faults follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState {
                files: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                names: BTreeMap::new(),
                locks: Vec::new(),
                generation: 0,
                next_id: 0,
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults: Faults::default(),
                bytes_written: 0,
                syncs: 0,
                power_loss: PowerLossCounts::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        crate::sync::lock(&*self.state)
    }

    /// The next `count` writes fail without writing anything.
    pub fn fail_next_writes(&self, count: u32) {
        self.lock().faults.fail_writes = count;
    }

    /// The next `count` syncs fail; what they covered stays unsynced.
    pub fn fail_next_syncs(&self, count: u32) {
        self.lock().faults.fail_syncs = count;
    }

    /// Every write fails with probability `write`, every sync with probability `sync`.
    pub fn set_fault_rates(&self, write: f64, sync: f64) {
        let mut state = self.lock();
        state.faults.write_fail_rate = write;
        state.faults.sync_fail_rate = sync;
    }

    /// Simulates the process dying (and, for unsynced data, the machine losing power): locks are
    /// released, old handles stop working, unsynced writes are dropped or torn per `mode`, and
    /// files whose directory entry was never synced disappear.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = self.lock();
        let state = &mut *state;
        state.generation += 1;
        state.locks.clear();
        state.names = state.durable_names.clone();
        let live: Vec<u64> = state.names.values().copied().collect();
        state.files.retain(|path, _| {
            path.to_str()
                .and_then(|s| s.strip_prefix("#"))
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| live.contains(&id))
        });
        for file in state.files.values_mut() {
            let mut bytes = file.durable.clone();
            if mode == CrashMode::PowerLoss {
                lose_pages(file, &mut bytes, &mut state.rng, &mut state.power_loss);
            }
            if mode == CrashMode::TearUnsynced && !file.unsynced.is_empty() {
                let survivors = state.rng.random_range(0..=file.unsynced.len());
                for (i, op) in file.unsynced.iter().take(survivors).enumerate() {
                    match op {
                        PendingOp::Write { offset, data } if i + 1 == survivors => {
                            let cut = state.rng.random_range(0..=data.len());
                            let torn = PendingOp::Write {
                                offset: *offset,
                                data: data[..cut].to_vec(),
                            };
                            apply_op(&mut bytes, &torn);
                        }
                        op => apply_op(&mut bytes, op),
                    }
                }
            }
            file.durable = bytes.clone();
            file.current = bytes;
            file.unsynced.clear();
        }
    }

    /// The durable bytes of the file at `path`, as a crash would leave them with
    /// [`CrashMode::DropUnsynced`].
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.names.get(path)?;
        state.files.get(&file_key(*id)).map(|f| f.durable.clone())
    }

    /// The current bytes of the file at `path`.
    pub fn current_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.names.get(path)?;
        state.files.get(&file_key(*id)).map(|f| f.current.clone())
    }

    /// Replaces the file at `path` with `bytes`, durable at once (for corruption tests).
    pub fn put_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        let id = match state.names.get(path) {
            Some(id) => *id,
            None => {
                let id = state.next_id;
                state.next_id += 1;
                state.names.insert(path.to_path_buf(), id);
                state.durable_names.insert(path.to_path_buf(), id);
                id
            }
        };
        state.files.insert(
            file_key(id),
            SimFileData {
                durable: bytes.clone(),
                current: bytes,
                unsynced: Vec::new(),
            },
        );
    }

    /// What power losses did to unsynced pages so far.
    pub fn power_loss_counts(&self) -> PowerLossCounts {
        self.lock().power_loss
    }

    /// Bytes written and syncs made so far.
    pub fn io_counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.bytes_written, state.syncs)
    }
}

/// Applies a power loss to one file: `bytes` holds its durable bytes; each page an unsynced write
/// touched survives whole, survives torn (an arbitrary subset of its sectors), or is lost.
fn lose_pages(
    file: &SimFileData,
    bytes: &mut [u8],
    rng: &mut ChaCha8Rng,
    counts: &mut PowerLossCounts,
) {
    let mut pages = std::collections::BTreeSet::new();
    for op in &file.unsynced {
        if let PendingOp::Write { offset, data } = op
            && !data.is_empty()
        {
            let first = usize::try_from(*offset).unwrap_or(usize::MAX) / PAGE_LEN;
            let last = (usize::try_from(*offset).unwrap_or(usize::MAX) + data.len() - 1) / PAGE_LEN;
            pages.extend(first..=last);
        }
    }
    for page in pages {
        // Beyond the length at the last sync the data is lost with the length change.
        let start = page * PAGE_LEN;
        let end = (start + PAGE_LEN).min(bytes.len()).min(file.current.len());
        if start >= end {
            counts.pages_lost += 1;
            continue;
        }
        match rng.random_range(0..3) {
            0 => counts.pages_lost += 1,
            1 => {
                bytes[start..end].copy_from_slice(&file.current[start..end]);
                counts.pages_kept += 1;
            }
            _ => {
                for sector in (start..end).step_by(SECTOR_LEN) {
                    if rng.random_bool(0.5) {
                        let sector_end = (sector + SECTOR_LEN).min(end);
                        bytes[sector..sector_end]
                            .copy_from_slice(&file.current[sector..sector_end]);
                    }
                }
                counts.pages_torn += 1;
            }
        }
    }
}

/// Files are stored under an id so that renames move names, not data.
fn file_key(id: u64) -> PathBuf {
    PathBuf::from(format!("#{id}"))
}

#[derive(Debug)]
struct SimHandle {
    disk: SimDisk,
    id: u64,
    generation: u64,
}

#[derive(Debug)]
struct SimLock {
    disk: SimDisk,
    dir: PathBuf,
    generation: u64,
}

impl DirLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.disk.lock();
        if state.generation == self.generation {
            state.locks.retain(|d| d != &self.dir);
        }
    }
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimState, PathBuf) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.lock();
        if state.generation != self.generation {
            return Err(crashed());
        }
        f(&mut state, file_key(self.id))
    }
}

/// Whether an operation fails now: one of the `armed` failures, or by chance at `rate`.
fn fault_now(armed: &mut u32, rate: f64, rng: &mut ChaCha8Rng) -> bool {
    if *armed > 0 {
        *armed -= 1;
        return true;
    }
    rate > 0.0 && rng.random_bool(rate.min(1.0))
}

fn missing() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "simulated file is gone")
}

impl StorageFile for SimHandle {
    fn file_len(&self) -> io::Result<u64> {
        self.with(|state, key| Ok(state.files.get(&key).ok_or_else(missing)?.current.len() as u64))
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|state, key| {
            let file = state.files.get(&key).ok_or_else(missing)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let src = start
                .checked_add(buf.len())
                .and_then(|end| file.current.get(start..end))
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.with(|state, key| {
            let rate = state.faults.write_fail_rate;
            if fault_now(&mut state.faults.fail_writes, rate, &mut state.rng) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated write failure",
                ));
            }
            state.bytes_written += data.len() as u64;
            let file = state.files.get_mut(&key).ok_or_else(missing)?;
            let op = PendingOp::Write {
                offset,
                data: data.to_vec(),
            };
            apply_op(&mut file.current, &op);
            file.unsynced.push(op);
            Ok(())
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, key| {
            let rate = state.faults.sync_fail_rate;
            if fault_now(&mut state.faults.fail_syncs, rate, &mut state.rng) {
                return Err(io::Error::other("simulated fdatasync failure"));
            }
            state.syncs += 1;
            let file = state.files.get_mut(&key).ok_or_else(missing)?;
            file.durable = file.current.clone();
            file.unsynced.clear();
            Ok(())
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|state, key| {
            let file = state.files.get_mut(&key).ok_or_else(missing)?;
            let op = PendingOp::SetLen(len);
            apply_op(&mut file.current, &op);
            file.unsynced.push(op);
            Ok(())
        })
    }
    fn preallocate(&self, len: u64) -> io::Result<()> {
        let current = self.file_len()?;
        if current < len {
            let zeros = vec![0u8; usize::try_from(len - current).unwrap_or(0)];
            self.write_all_at(&zeros, current)?;
        }
        Ok(())
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.names.contains_key(path) || state.names.keys().any(|p| p.starts_with(path))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.lock();
        let id = match state.names.get(path) {
            Some(id) => *id,
            None if create => {
                let id = state.next_id;
                state.next_id += 1;
                state.names.insert(path.to_path_buf(), id);
                state.files.insert(file_key(id), SimFileData::default());
                id
            }
            None => return Err(missing()),
        };
        Ok(Box::new(SimHandle {
            disk: self.clone(),
            id,
            generation: state.generation,
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path, false)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.names.remove(from).ok_or_else(missing)?;
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.names.remove(path).ok_or_else(missing)?;
        Ok(())
    }
    /// Every write happens on the caller's thread, so that a seed replays byte for byte.
    fn background_writes(&self) -> bool {
        false
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        state.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (path, id) in &state.names {
            if path.parent() == Some(dir) {
                state.durable_names.insert(path.clone(), *id);
            }
        }
        Ok(())
    }
    fn try_lock(&self, dir: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let mut state = self.lock();
        if state.locks.iter().any(|d| d == dir) {
            return Ok(None);
        }
        state.locks.push(dir.to_path_buf());
        Ok(Some(Box::new(SimLock {
            disk: self.clone(),
            dir: dir.to_path_buf(),
            generation: state.generation,
        })))
    }
}
