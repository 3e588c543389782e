//! The index as the ledger sees it: the applied index plus the overlay of what is durable but
//! not applied yet, and the applier thread that moves commits from one to the other, off the
//! commit path.
//!
//! Invariants:
//! - a commit is submitted only after the journal sync that covers it, so the index is never
//!   ahead of the journal;
//! - commits are applied in journal order, contiguously from the applied watermark, in atomic
//!   batches that carry the watermark they reach;
//! - a key's overlay entry is installed before the writer releases the key's lock and retired
//!   only after the batch holding its last event is applied, so a reader holding the key's lock
//!   always sees every durable event of the key (overlay first, then the index);
//! - the backlog is bounded (`LedgerConfig::index_backlog_max`): writers wait for room before appending,
//!   never after, so a waiting writer never holds a sequence the applier needs; a batch of
//!   the async adapter waits before its first append only, and exceeds the bound by at most
//!   its own size (`Room`);
//! - the first failure to apply stops the ledger (fail-stop): nothing more is applied, every
//!   later write is refused with the cause, reads still see the overlay; reopening catches the
//!   index up from its watermark;
//! - the applier works in the background (`index::priority`) only where it holds none of the
//!   ledger's locks (merging a batch, the engine's write, freeing), only on a batch taken with
//!   nobody waiting and the backlog under half full, and never while someone waits: a waiter
//!   brings it back before it waits (`Governor`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, FatalCause, Result};
use crate::journal::format::ChainHash;
use crate::limits::INDEX_APPLY_BATCH_MAX;
use crate::model::{IdempotencyKey, PhaseKind, ProviderReference, Sequence, UnixMillis};
use crate::sync::{Condvar, JoinHandle, Mutex, MutexGuard, lock, spawn_named, wait, wait_timeout};

use super::overlay::Overlay;
use super::priority::{self, Governor};
use super::{IndexEntry, IndexWatermark, KeyIndex, KeyUpdate, StoredEvent, merged};

/// One durable commit waiting to be applied.
#[derive(Debug)]
struct Commit {
    last: Sequence,
    head: ChainHash,
    update: KeyUpdate,
}

/// Durable commits not taken by the applier yet, in slots by sequence: slot `i` is for the
/// commit whose first sequence is `front + i`. The slots of a commit not submitted yet, and of
/// the later sequences of a commit of several events, are empty. Slots are reused, so filing a
/// commit allocates nothing once the ring has grown to the backlog's size (a B-tree keyed by
/// sequence allocated a 4 KiB node every few commits, a measurable part of a charge's CPU).
#[derive(Debug)]
struct Pending {
    /// The sequence of the first slot: the first one the applier has not taken.
    front: Sequence,
    slots: VecDeque<Option<Commit>>,
    /// Slots holding a commit.
    len: usize,
}

/// Slots an empty ring keeps; a burst that grew it beyond is given back once it drains.
const PENDING_SLOTS_KEPT: usize = INDEX_APPLY_BATCH_MAX;

impl Pending {
    fn new(front: Sequence) -> Self {
        Self {
            front,
            slots: VecDeque::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files `commit`, whose first sequence is `first`. A sequence the applier has already
    /// taken, or the first sequence of a commit already filed, is a writer's bug: it is refused
    /// (`false`). (A sequence inside a filed commit's span is the same bug; it is not detected
    /// here, and is dropped when that commit is taken.)
    fn insert(&mut self, first: Sequence, commit: Commit) -> bool {
        let Some(offset) = first
            .0
            .checked_sub(self.front.0)
            .and_then(|offset| usize::try_from(offset).ok())
        else {
            return false;
        };
        if offset >= self.slots.len() {
            self.slots.resize_with(offset + 1, || None);
        }
        let slot = &mut self.slots[offset];
        if slot.is_some() {
            return false;
        }
        *slot = Some(commit);
        self.len += 1;
        true
    }

    /// Takes the commit at the front, if it has been filed; the front moves past its last
    /// sequence.
    fn pop_front(&mut self) -> Option<Commit> {
        let commit = self.slots.front_mut()?.take()?;
        let spanned = commit.last.0.saturating_sub(self.front.0).saturating_add(1);
        let spanned = usize::try_from(spanned).unwrap_or(usize::MAX);
        self.slots.drain(..spanned.min(self.slots.len()));
        self.front = commit.last.next();
        self.len -= 1;
        if self.slots.is_empty() && self.slots.capacity() > PENDING_SLOTS_KEPT {
            self.slots.shrink_to(PENDING_SLOTS_KEPT);
        }
        Some(commit)
    }
}

#[derive(Debug)]
struct Queue {
    /// Durable commits not taken by the applier yet.
    pending: Pending,
    /// What the index reflects.
    applied: IndexWatermark,
    /// The failure that stopped the applier, if one did.
    failed: Option<FatalCause>,
    /// Set when the index is dropped: the applier applies what it can, then exits.
    stopping: bool,
    /// Commits that may wait at once.
    backlog_max: usize,
    /// Commits taken by the applier and not applied yet.
    applying: usize,
    /// The applier sleeps until a commit arrives: the next submit must wake it.
    applier_idle: bool,
    /// Callers waiting for the watermark (or for room): the applier applies at once.
    urgent: usize,
}

impl Queue {
    /// Someone waits for the applier, or soon will: the applier hurries, and stays at normal
    /// priority.
    fn pressed(&self) -> bool {
        self.stopping || self.urgent > 0 || self.backlog() * 2 >= self.backlog_max
    }

    /// Durable commits not applied yet: waiting, or being applied.
    fn backlog(&self) -> usize {
        self.pending.len() + self.applying
    }

    /// Takes the commits that continue the applied watermark without a gap, at most `max`;
    /// returns them and the watermark they reach.
    fn take_contiguous(&mut self, max: usize) -> Option<(Vec<KeyUpdate>, IndexWatermark)> {
        debug_assert_eq!(self.pending.front, self.applied.sequence.next());
        let mut updates = Vec::new();
        let mut reached = None;
        while updates.len() < max {
            let Some(commit) = self.pending.pop_front() else {
                break;
            };
            reached = Some(IndexWatermark {
                sequence: commit.last,
                chain_hash: commit.head,
            });
            updates.push(commit.update);
        }
        reached.map(|watermark| (updates, watermark))
    }
}

#[derive(Debug)]
struct Shared {
    base: Box<dyn KeyIndex>,
    overlay: Mutex<Overlay>,
    queue: Mutex<Queue>,
    /// The applier waits here for commits.
    work: Condvar,
    /// Writers wait here for room in the backlog, and `wait_applied_for` for the watermark.
    progress: Condvar,
    /// The applier's priority.
    governor: Governor,
}

/// Whether a writer waits for room in the backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// Waits until the backlog is below its bound: a writer that holds no appended and
    /// unsubmitted sequence (every blocking call).
    Wait,
    /// Never waits: a writer that may already hold appended sequences it has not submitted
    /// yet (a batch's writes after its first, `ledger/batch.rs`), which the applier needs
    /// before it can make room. The bound is exceeded by at most one batch (64 commits) per
    /// such writer.
    Overshoot,
}

/// The index behind an overlay, fed by an applier thread.
#[derive(Debug)]
pub(crate) struct LiveIndex {
    shared: Arc<Shared>,
    applier: Option<JoinHandle<()>>,
}

impl LiveIndex {
    /// Starts the applier over `base`, which reflects the journal up to its watermark; at most
    /// `backlog_max` commits wait for it. With `background`, the applier runs in the background
    /// while nobody waits for it, where this process can bring it back.
    ///
    /// # Errors
    /// Reading the watermark; [`Error::Io`] if the thread cannot be started.
    pub fn start(base: Box<dyn KeyIndex>, backlog_max: usize, background: bool) -> Result<Self> {
        let applied = base.watermark()?;
        let background_allowed = background && priority::background_available();
        if background && !background_allowed {
            tracing::info!(
                "the index applier runs at normal priority: its background priority (Linux \
                 SCHED_IDLE) needs a thread at nice 0 and SCHED_OTHER, and CAP_SYS_NICE or \
                 RLIMIT_NICE >= 20 to come back"
            );
        }
        let shared = Arc::new(Shared {
            base,
            overlay: Mutex::new(Overlay::default()),
            queue: Mutex::new(Queue {
                pending: Pending::new(applied.sequence.next()),
                applied,
                failed: None,
                stopping: false,
                backlog_max,
                applying: 0,
                applier_idle: false,
                urgent: 0,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            governor: Governor::new(background_allowed),
        });
        let applier = {
            let shared = Arc::clone(&shared);
            spawn_named("payledger-index", move || run_applier(&shared))
                .map_err(|e| Error::io("starting the index applier thread", e))?
        };
        Ok(Self {
            shared,
            applier: Some(applier),
        })
    }

    /// Waits until the backlog has room for one more commit; call before appending it. With
    /// [`Room::Overshoot`] it never waits (see there).
    ///
    /// # Errors
    /// [`Error::IndexFailed`] once the applier has failed.
    pub fn reserve(&self, room: Room) -> Result<()> {
        let mut queue = lock(&self.shared.queue);
        loop {
            if let Some(cause) = &queue.failed {
                return Err(Error::IndexFailed {
                    cause: cause.clone(),
                });
            }
            if room == Room::Overshoot || queue.backlog() < queue.backlog_max {
                return Ok(());
            }
            queue = self.wait_for_applier(queue);
        }
    }

    /// Counts the caller among those waiting for the applier, which it brings to normal
    /// priority and asks to apply at once rather than gather; [`Self::unhasten`] ends it.
    fn hasten(&self, queue: &mut Queue) {
        queue.urgent += 1;
        self.shared.governor.start_waiting();
        self.shared.work.notify_one();
    }

    /// The caller no longer waits for the applier.
    fn unhasten(&self, queue: &mut Queue) {
        queue.urgent -= 1;
        self.shared.governor.stop_waiting();
    }

    /// Waits for the applier's progress (or [`priority::RETRY`], after which the caller looks
    /// again and, still waiting, brings the applier back again), asking it to apply at once
    /// rather than gather.
    fn wait_for_applier<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.hasten(&mut queue);
        let mut queue = wait_timeout(&self.shared.progress, queue, priority::RETRY);
        self.unhasten(&mut queue);
        queue
    }

    /// Hands a durable commit (`first..=last`, chain hash `head` at `last`) to the applier.
    /// The caller holds the key's lock: the overlay shows the update from now on.
    pub fn submit(&self, update: KeyUpdate, first: Sequence, last: Sequence, head: ChainHash) {
        lock(&self.shared.overlay).install(&update);
        let mut queue = lock(&self.shared.queue);
        let filed = queue.pending.insert(first, Commit { last, head, update });
        debug_assert!(
            filed,
            "sequence {first} submitted twice or after it was taken"
        );
        if !filed {
            tracing::error!(sequence = %first, "a commit submitted twice or after the applier took its sequence was not filed");
        }
        // Only a sleeping applier is woken: one that is gathering wakes on its own.
        let wake = std::mem::take(&mut queue.applier_idle);
        drop(queue);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until the index reflects the journal up to `upto` (the schedule explorations' wait;
    /// the ledger uses `wait_applied_for`, which also lets it notice a stopped journal).
    ///
    /// # Errors
    /// [`Error::IndexFailed`] if the applier fails first.
    #[cfg(all(test, shuttle))]
    pub fn wait_applied(&self, upto: Sequence) -> Result<()> {
        let mut queue = lock(&self.shared.queue);
        loop {
            if queue.applied.sequence >= upto {
                return Ok(());
            }
            if let Some(cause) = &queue.failed {
                return Err(Error::IndexFailed {
                    cause: cause.clone(),
                });
            }
            queue = self.wait_for_applier(queue);
        }
    }

    /// Waits until the index reflects the journal up to `upto`, the applier fails, or
    /// `timeout` passes; returns whether it got there.
    pub fn wait_applied_for(&self, upto: Sequence, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut queue = lock(&self.shared.queue);
        loop {
            if queue.applied.sequence >= upto {
                return true;
            }
            let now = Instant::now();
            if queue.failed.is_some() || now >= deadline {
                return false;
            }
            self.hasten(&mut queue);
            let wait_for = (deadline - now).min(priority::RETRY);
            queue = wait_timeout(&self.shared.progress, queue, wait_for);
            self.unhasten(&mut queue);
        }
    }

    /// The failure that stopped the applier, if one did.
    pub fn failure(&self) -> Option<FatalCause> {
        lock(&self.shared.queue).failed.clone()
    }

    /// Durable commits not applied yet.
    pub fn backlog(&self) -> usize {
        lock(&self.shared.queue).backlog()
    }

    /// The latest entry of `key`: the overlay's, else the index's. An entry in the overlay is
    /// shared, not copied.
    pub fn get(&self, key: &IdempotencyKey) -> Result<Option<Arc<IndexEntry>>> {
        if let Some(entry) = lock(&self.shared.overlay).get(key) {
            return Ok(Some(entry));
        }
        Ok(self.shared.base.get(key)?.map(Arc::new))
    }

    /// The key `reference` was issued for.
    pub fn key_for_reference(
        &self,
        reference: &ProviderReference,
    ) -> Result<Option<IdempotencyKey>> {
        if let Some(key) = lock(&self.shared.overlay).key_for_reference(reference) {
            return Ok(Some(key));
        }
        self.shared.base.key_for_reference(reference)
    }

    /// Every durable event of `key`, in journal order.
    pub fn history(&self, key: &IdempotencyKey) -> Result<Vec<StoredEvent>> {
        Ok(self
            .get(key)?
            .map(|entry| Arc::unwrap_or_clone(entry).events)
            .unwrap_or_default())
    }

    /// Keys in `phase` as applied (lags the journal by the backlog).
    pub fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<IdempotencyKey>> {
        self.shared.base.list(phase, after, limit)
    }

    /// How many keys are in `phase`, as applied.
    pub fn count(&self, phase: PhaseKind) -> usize {
        self.shared.base.count(phase)
    }

    /// Unknown keys due for a query at `now`, as applied.
    pub fn due(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.shared.base.due(now, limit)
    }

    /// What the index reflects.
    pub fn watermark(&self) -> IndexWatermark {
        lock(&self.shared.queue).applied
    }
}

impl Drop for LiveIndex {
    /// Lets the applier apply every contiguous commit, then flushes the index.
    fn drop(&mut self) {
        lock(&self.shared.queue).stopping = true;
        // Waits for the applier until it ends: never stops waiting.
        self.shared.governor.start_waiting();
        self.shared.work.notify_one();
        #[cfg(not(shuttle))]
        if let Some(applier) = &self.applier {
            while !applier.is_finished() {
                std::thread::sleep(CLOSE_POLL);
                self.shared.governor.bring_back();
            }
        }
        if let Some(applier) = self.applier.take()
            && applier.join().is_err()
        {
            tracing::error!("index applier panicked");
        }
        if let Err(e) = self.shared.base.flush() {
            tracing::warn!(error = %e, "flushing the index on close failed; it is caught up on the next open");
        }
    }
}

/// How often closing looks whether the applier has ended, bringing it back from the background
/// each time (`priority::Governor::bring_back`).
#[cfg(not(shuttle))]
const CLOSE_POLL: Duration = Duration::from_millis(1);

/// How long the applier gathers commits before applying them, unless someone waits for it or
/// the backlog fills: every batch costs the engine a write to its own log (sled also rolls its
/// IO buffer around a batch, with syncs), so fewer, larger batches leave the disk to the
/// journal.
const APPLY_GATHER: Duration = Duration::from_millis(20);

/// The applier: applies contiguous commits in batches until the index is dropped or an
/// apply fails. Only the work on a batch nobody waits for that takes none of the ledger's
/// locks runs in the background (`index::priority`): merging its commits, the engine's
/// `apply`, and freeing the batch before it.
fn run_applier(shared: &Shared) {
    shared.governor.register_applier();
    // The previous batch, freed in the next batch's background time rather than at normal
    // priority: about a kilobyte per commit, for one batch.
    let mut applied_before = Vec::new();
    loop {
        let Some((batch, watermark, pressed)) = next_batch(shared) else {
            return;
        };
        let background = !pressed && shared.governor.enter_background();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            drop(std::mem::take(&mut applied_before));
            // A key's commits in one batch become one update: its intermediate listings and
            // entries are never written.
            let updates = merged(batch);
            let applied = shared.base.apply(&updates, watermark);
            (updates, applied)
        }));
        if background {
            shared.governor.leave();
        }
        let (updates, applied) = outcome.unwrap_or_else(|_| {
            let panicked = std::io::Error::other("the index panicked");
            (
                Vec::new(),
                Err(Error::io("applying to the index", panicked)),
            )
        });
        match applied {
            Ok(()) => {
                lock(&shared.overlay).retire(&updates, watermark.sequence);
                let mut queue = lock(&shared.queue);
                queue.applied = watermark;
                queue.applying = 0;
                drop(queue);
                shared.progress.notify_all();
                applied_before = updates;
            }
            Err(e) => {
                tracing::error!(error = %e, upto = %watermark.sequence, "index update failed; ledger stopped until reopened");
                let cause = FatalCause::new(
                    format!(
                        "updating the index up to journal sequence {}",
                        watermark.sequence
                    ),
                    index_io_error(e),
                );
                let mut queue = lock(&shared.queue);
                queue.failed.get_or_insert(cause);
                drop(queue);
                shared.progress.notify_all();
                // The updates stay in the overlay: reads keep seeing every durable event.
                return;
            }
        }
    }
}

/// Waits for commits, gathers them for up to [`APPLY_GATHER`] (less when someone waits or the
/// backlog is half full), and takes a contiguous batch, with whether it was taken in a hurry;
/// `None` once stopping with nothing left.
fn next_batch(shared: &Shared) -> Option<(Vec<KeyUpdate>, IndexWatermark, bool)> {
    let mut queue = lock(&shared.queue);
    while queue.pending.is_empty() {
        if queue.stopping {
            return None;
        }
        queue.applier_idle = true;
        queue = wait(&shared.work, queue);
    }
    queue.applier_idle = false;
    let deadline = Instant::now() + APPLY_GATHER;
    loop {
        let now = Instant::now();
        let pressed = queue.pressed();
        if pressed || queue.pending.len() >= INDEX_APPLY_BATCH_MAX || now >= deadline {
            if let Some((updates, watermark)) = queue.take_contiguous(INDEX_APPLY_BATCH_MAX) {
                queue.applying = updates.len();
                drop(queue);
                return Some((updates, watermark, pressed));
            }
            if queue.stopping {
                return None; // a gap: a writer died between its append and its submit
            }
        }
        // Gathering, or waiting for the commit that closes a gap.
        let wait_for = deadline
            .saturating_duration_since(now)
            .max(APPLY_GATHER / 4);
        queue = wait_timeout(&shared.work, queue, wait_for);
    }
}

/// The I/O error inside an index failure, or the failure itself as one: kept whole as its inner
/// error (`get_ref`), so that the typed cause stays reachable, not only its text.
fn index_io_error(error: Error) -> std::io::Error {
    match error {
        Error::Io { source, .. } => source,
        other => std::io::Error::other(other),
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;
    use crate::error::IndexError;
    use crate::index::priority::Priority;

    fn commit(first: u64, last: u64) -> (Sequence, Commit) {
        let commit = Commit {
            last: Sequence(last),
            head: [0; 32],
            update: crate::index::tests::update(&format!("k{first}"), last, None),
        };
        (Sequence(first), commit)
    }

    fn taken(pending: &mut Pending) -> Vec<u64> {
        std::iter::from_fn(|| pending.pop_front())
            .map(|commit| commit.last.0)
            .collect()
    }

    #[test]
    fn commits_filed_in_any_order_are_taken_in_journal_order_up_to_the_first_gap() {
        let mut pending = Pending::new(Sequence(1));
        for (first, last) in [(4, 6), (1, 1), (8, 8), (2, 3)] {
            let (first, commit) = commit(first, last);
            assert!(pending.insert(first, commit));
        }
        assert_eq!(pending.len(), 4);
        // 7 is missing: 8 waits for it.
        assert_eq!(taken(&mut pending), [1, 3, 6]);
        assert_eq!(pending.len(), 1);
        let (first, seven) = commit(7, 7);
        assert!(pending.insert(first, seven));
        assert_eq!(taken(&mut pending), [7, 8]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_sequence_filed_twice_or_already_taken_is_refused() {
        let mut pending = Pending::new(Sequence(10));
        let (first, one) = commit(10, 11);
        assert!(pending.insert(first, one));
        let (first, again) = commit(10, 10);
        assert!(!pending.insert(first, again), "filed twice");
        assert_eq!(taken(&mut pending), [11]);
        let (first, late) = commit(11, 11);
        assert!(!pending.insert(first, late), "inside a taken commit");
        let (first, early) = commit(3, 3);
        assert!(!pending.insert(first, early), "below the front");
        assert!(pending.is_empty());
    }

    #[test]
    fn a_drained_ring_gives_back_what_a_burst_grew() {
        let mut pending = Pending::new(Sequence(1));
        let burst = 4 * PENDING_SLOTS_KEPT as u64;
        for n in 1..=burst {
            let (first, commit) = commit(n, n);
            assert!(pending.insert(first, commit));
        }
        assert!(pending.slots.capacity() >= burst as usize);
        assert_eq!(taken(&mut pending).len(), burst as usize);
        assert!(pending.slots.capacity() <= PENDING_SLOTS_KEPT);
    }

    /// Found in review: an index failure other than an I/O error reached the fatal cause as
    /// its text only.
    #[test]
    fn an_index_failure_keeps_its_typed_cause() {
        let failure = Error::Index {
            index: "/ledger/index".into(),
            kind: IndexError::Fjall {
                detail: "a table is damaged".into(),
            },
        };
        let io = index_io_error(failure);
        assert!(io.to_string().contains("a table is damaged"), "{io}");
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(
            matches!(
                inner,
                Some(Error::Index {
                    kind: IndexError::Fjall { .. },
                    ..
                })
            ),
            "{inner:?}"
        );
    }

    /// Polls `done` every millisecond until it holds; fails with `never` after 10 s.
    fn wait_for(never: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{never}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The applier's priority as the scheduler has it, once the applier has started.
    fn applier_priority(index: &LiveIndex) -> Priority {
        let mut priority = None;
        wait_for("the applier never started", || {
            priority = index.shared.governor.applier_priority();
            priority.is_some()
        });
        priority.unwrap()
    }

    /// The priority an applier allowed the background has inside a batch nobody waits for.
    fn background_where_available() -> Priority {
        if priority::background_available() {
            Priority::Background
        } else {
            Priority::Normal
        }
    }

    /// Waits until the applier is inside `apply` (paused there), then returns its priority.
    #[cfg(feature = "testing")]
    fn priority_inside_a_paused_apply(index: &LiveIndex, paused: &Resume) -> Priority {
        wait_for("the applier never took the commit", || {
            paused.0.waiting() > 0
        });
        applier_priority(index)
    }

    /// Resumes a paused index when dropped: a failed assertion then fails the test instead of
    /// leaving the applier paused and the index's drop waiting for it.
    #[cfg(feature = "testing")]
    struct Resume(crate::index::IndexFaults);

    #[cfg(feature = "testing")]
    impl Drop for Resume {
        fn drop(&mut self) {
            self.0.resume();
        }
    }

    /// An index whose applier pauses inside its first `apply`, and one commit for it.
    #[cfg(feature = "testing")]
    fn paused_index(background: bool) -> (LiveIndex, Resume) {
        paused_index_with_backlog(background, 16)
    }

    #[cfg(feature = "testing")]
    fn paused_index_with_backlog(background: bool, backlog_max: usize) -> (LiveIndex, Resume) {
        let faults = crate::index::IndexFaults::default();
        faults.pause();
        let base = crate::index::FaultyIndex::new(
            Box::new(crate::index::MemIndex::default()),
            faults.clone(),
        );
        let index = LiveIndex::start(Box::new(base), backlog_max, background).unwrap();
        let update = crate::index::tests::update("k1", 1, None);
        index.submit(update, Sequence(1), Sequence(1), [0; 32]);
        (index, Resume(faults))
    }

    #[test]
    #[cfg(feature = "testing")]
    fn the_applier_works_in_the_background_and_whoever_waits_for_it_brings_it_back() {
        let (index, paused) = paused_index(true);
        if !priority::background_available() {
            // This process may not bring a thread back from `SCHED_IDLE`: the applier must
            // then never go there.
            assert_eq!(
                priority_inside_a_paused_apply(&index, &paused),
                Priority::Normal
            );
            return;
        }
        // One commit, a backlog far from half full, nobody waiting: in the background.
        assert_eq!(
            priority_inside_a_paused_apply(&index, &paused),
            Priority::Background
        );
        // A caller waiting for the watermark brings it back before it waits.
        assert!(!index.wait_applied_for(Sequence(1), Duration::from_millis(5)));
        assert_eq!(applier_priority(&index), Priority::Normal);
        drop(paused);
        assert!(index.wait_applied_for(Sequence(1), Duration::from_secs(10)));
    }

    #[test]
    #[cfg(feature = "testing")]
    fn the_applier_is_back_to_normal_once_its_batch_is_applied() {
        let (index, paused) = paused_index(true);
        let expected = background_where_available();
        assert_eq!(priority_inside_a_paused_apply(&index, &paused), expected);
        // Nobody waits for it: only the applier itself can make itself normal again.
        drop(paused);
        wait_for("the batch was never applied", || {
            lock(&index.shared.queue).applied.sequence >= Sequence(1)
        });
        assert_eq!(applier_priority(&index), Priority::Normal);
    }

    #[test]
    #[cfg(feature = "testing")]
    fn a_writer_waiting_for_room_brings_the_applier_back() {
        // One commit in a backlog of 4 is under half: the applier takes it in the background.
        let (index, paused) = paused_index_with_backlog(true, 4);
        let expected = background_where_available();
        assert_eq!(priority_inside_a_paused_apply(&index, &paused), expected);
        for sequence in 2..=4 {
            let update = crate::index::tests::update(&format!("k{sequence}"), sequence, None);
            index.submit(update, Sequence(sequence), Sequence(sequence), [0; 32]);
        }
        std::thread::scope(|scope| {
            // Resumed if this closure panics, before the scope joins the waiting writer.
            let _resume = Resume(paused.0.clone());
            let writer = scope.spawn(|| index.reserve(Room::Wait));
            wait_for("the writer never waited for room", || {
                lock(&index.shared.queue).urgent > 0
            });
            let while_waiting = applier_priority(&index);
            paused.0.resume();
            writer.join().unwrap().unwrap();
            assert_eq!(while_waiting, Priority::Normal);
        });
    }

    #[test]
    #[cfg(feature = "testing")]
    fn an_applier_not_allowed_the_background_stays_normal() {
        let (index, paused) = paused_index(false);
        assert_eq!(
            priority_inside_a_paused_apply(&index, &paused),
            Priority::Normal
        );
        drop(paused);
        assert!(index.wait_applied_for(Sequence(1), Duration::from_secs(10)));
        assert_eq!(applier_priority(&index), Priority::Normal);
    }
}

#[cfg(all(test, shuttle))]
mod shuttle_tests {
    //! Run with `RUSTFLAGS="--cfg shuttle" cargo test --lib index`: shuttle explores the
    //! interleavings of writers (each holding its key's lock, taking sequences in journal order
    //! and submitting them in any order) and the applier.

    use std::sync::Arc;

    use super::*;
    use crate::index::{Listing, MemIndex};
    use crate::model::PaymentState;

    fn update(key: &IdempotencyKey, before: Option<&IndexEntry>, sequence: u64) -> KeyUpdate {
        KeyUpdate {
            key: key.clone(),
            before: before.map(Listing::of),
            after: Arc::new(IndexEntry {
                state: PaymentState::new(key.clone()),
                last_sequence: Sequence(sequence),
                next_query_at: None,
                events: Vec::new(),
            }),
            new_references: Vec::new(),
        }
    }

    /// `writers` threads each write `rounds` commits to one of two keys; every writer checks,
    /// under the key's lock, that the index shows the key's last durable commit.
    fn writers_and_applier(writers: usize, rounds: usize) {
        let index = Arc::new(LiveIndex::start(Box::new(MemIndex::default()), 4, false).unwrap());
        let journal = Arc::new(Mutex::new(0u64));
        let keys: Arc<Vec<(IdempotencyKey, Mutex<u64>)>> = Arc::new(
            ["a", "b"]
                .iter()
                .map(|k| (IdempotencyKey::new(*k).unwrap(), Mutex::new(0)))
                .collect(),
        );
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (index, journal, keys) =
                    (Arc::clone(&index), Arc::clone(&journal), Arc::clone(&keys));
                crate::sync::spawn(move || {
                    let (key, durable) = &keys[w % 2];
                    for _ in 0..rounds {
                        index.reserve(Room::Wait).unwrap();
                        let mut durable = lock(durable);
                        let before = index.get(key).unwrap();
                        assert_eq!(
                            before.as_ref().map_or(0, |e| e.last_sequence.0),
                            *durable,
                            "the writer holding the key's lock sees its last durable commit"
                        );
                        let sequence = {
                            let mut last = lock(&*journal);
                            *last += 1;
                            *last
                        };
                        let next = update(key, before.as_deref(), sequence);
                        index.submit(next, Sequence(sequence), Sequence(sequence), [0; 32]);
                        *durable = sequence;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let total = (writers * rounds) as u64;
        index.wait_applied(Sequence(total)).unwrap();
        assert_eq!(index.watermark().sequence, Sequence(total));
        for (key, durable) in keys.iter() {
            let applied = index.shared.base.get(key).unwrap();
            assert_eq!(applied.map_or(0, |e| e.last_sequence.0), *lock(durable));
            assert_eq!(
                lock(&index.shared.overlay).get(key),
                None,
                "retired once applied"
            );
        }
    }

    #[test]
    fn two_writers_two_rounds_and_the_applier_in_every_interleaving() {
        shuttle::check_dfs(|| writers_and_applier(2, 2), Some(50_000));
    }

    #[test]
    fn three_writers_two_rounds_each() {
        shuttle::check_pct(|| writers_and_applier(3, 2), 2_000, 3);
    }
}
