//! The index applier's CPU priority: the lowest the scheduler has (Linux `SCHED_IDLE`) while
//! it applies a batch nobody waits for, normal otherwise.
//!
//! Why: an applier batch keeps a core busy for a few milliseconds. On a machine with few cores,
//! a journal leader whose sync returns is often made runnable on that core, and it waits there
//! until the batch ends, and with it every caller of its commit. A thread at `SCHED_IDLE` gives
//! the core up to any other thread the moment that thread wakes. The applier is off the commit
//! path, so it can run on what the callers leave.
//!
//! Invariants kept ([`Governor`]):
//! - the applier is in the background only where it holds none of the ledger's locks (merging
//!   a batch, the index engine's `apply`, freeing the batch before): a thread at `SCHED_IDLE`
//!   can be preempted at any instant, and a lock it held would stop every writer behind it;
//! - it goes there only while nobody waits for it, and whoever starts waiting brings it back
//!   (priority inheritance, by hand): a waiter counts itself before it looks whether the
//!   applier is in the background, and the applier says so before it switches and looks for
//!   waiters after, so one of the two always sees the other (both sequentially consistent; the
//!   protocol needs no lock). A waiter's attempt can land just before the applier's switch, so
//!   waiters try again at least every [`RETRY`] while they wait;
//! - it goes there only where it can come back: Linux lets a thread leave `SCHED_IDLE` only
//!   where `RLIMIT_NICE` allows its nice value, or with `CAP_SYS_NICE`;
//!   [`background_available`] tries the round trip on a throwaway thread first.
//!
//! What it cannot do:
//! - `thread-priority` sets the *calling* thread's nice value to 0 when it sets any thread's
//!   policy, so a waiter at another nice value is refused, rather than reniced. Such a waiter
//!   turns the background off for the rest of the ledger's life (logged once) and waits for the
//!   batch in progress, which ends at the applier's priority of the moment.
//! - The engine's own locks: sled's batch holds a lock every sled read takes, so with sled
//!   (and for a read-only ledger's in-memory index) the applier never goes to the background
//!   (`ledger/open.rs`). fjall's reads share with its batches a read lock held for one
//!   memtable insert at a time; only if fjall's own worker queues for that lock's write side
//!   while the applier, preempted mid-insert, holds it, do readers wait for the applier to
//!   run again.
//!
//! Elsewhere than Linux, and under the schedule explorer, nothing changes priority.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// How the scheduler should treat the applier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Like every other thread.
    Normal,
    /// Only on a core no normal thread wants (Linux `SCHED_IDLE`).
    Background,
}

/// A thread of this process, whose priority any of its threads may change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Thread(imp::Native);

impl Thread {
    /// The calling thread.
    pub fn current() -> Self {
        Self(imp::current())
    }

    /// Sets the thread's priority. Does not change the calling thread's.
    pub fn set(self, priority: Priority) -> io::Result<()> {
        imp::set(self.0, priority)
    }

    /// The thread's priority, as the scheduler has it; `None` for a policy other than
    /// `SCHED_OTHER` and `SCHED_IDLE` (real-time, batch), which this module never sets.
    pub fn get(self) -> io::Result<Option<Priority>> {
        imp::get(self.0)
    }
}

/// Whether a thread of this process, spawned by the calling thread, can go to the background
/// and come back. Tried on a throwaway thread, which inherits the calling thread's policy and
/// nice value as the applier will; a thread that does not start at `SCHED_OTHER` (the process
/// runs under `chrt`, say) is left as the operator set it.
pub(crate) fn background_available() -> bool {
    imp::available()
}

/// How long a thread waiting for the applier waits before it tries again to bring it back: an
/// attempt made as the applier goes to the background can land just before it gets there.
pub(crate) const RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// The applier's priority, shared by the applier and the threads that wait for it; the
/// protocol needs no lock (see the module's invariants).
#[derive(Debug)]
pub(crate) struct Governor {
    /// Configured, available, and never failed since.
    allowed: AtomicBool,
    /// The applier's thread, once it has started.
    applier: OnceLock<Thread>,
    /// Set by the applier before it switches to the background (and looks for waiters after),
    /// cleared once it is back to normal.
    in_background: AtomicBool,
    /// Threads waiting for the applier; counted before they look at `in_background`.
    waiters: AtomicUsize,
}

impl Governor {
    /// A governor for an applier that may go to the background if `allowed`.
    pub fn new(allowed: bool) -> Self {
        Self {
            allowed: AtomicBool::new(allowed),
            applier: OnceLock::new(),
            in_background: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
        }
    }

    /// The applier, as it starts: its thread is the one to govern.
    pub fn register_applier(&self) {
        let _ = self.applier.set(Thread::current());
    }

    /// The applier, before applying a batch that nobody waits for: goes to the background,
    /// unless it may not or someone waits; returns whether it went (then [`Self::leave`] must
    /// follow).
    pub fn enter_background(&self) -> bool {
        let Some(applier) = self.applier.get() else {
            return false;
        };
        if !self.allowed.load(SeqCst) || self.waiters.load(SeqCst) > 0 {
            return false;
        }
        // Said before the switch, so that every waiter from here on tries to bring it back.
        // A waiter's attempt may land before the switch: waiters try again while they wait
        // ([`Self::bring_back`], at most [`RETRY`] apart).
        self.in_background.store(true, SeqCst);
        if let Err(e) = applier.set(Priority::Background) {
            self.disallow(&e);
            // The policy may have changed before the call failed (`set` is two system calls).
            self.leave();
            return false;
        }
        // A waiter that counted itself before the store above did not see it: look for one.
        if self.waiters.load(SeqCst) > 0 {
            self.leave();
            return false;
        }
        true
    }

    /// The applier, after the batch: back to normal, whether or not a waiter brought it back
    /// already (setting it again costs one system call, and leaves no doubt). If that fails,
    /// it stays marked as in the background, so that waiters keep trying.
    pub fn leave(&self) {
        let Some(applier) = self.applier.get() else {
            return;
        };
        match applier.set(Priority::Normal) {
            Ok(()) => self.in_background.store(false, SeqCst),
            Err(e) => self.disallow(&e),
        }
    }

    /// A thread starts waiting for the applier: it is counted, then brings the applier back
    /// if it is in the background. Ends with [`Self::stop_waiting`] (unless the index is being
    /// dropped); call [`Self::bring_back`] at least every [`RETRY`] while waiting.
    pub fn start_waiting(&self) {
        self.waiters.fetch_add(1, SeqCst);
        self.bring_back();
    }

    /// A counted waiter, again: brings the applier back if it is (or is going) in the
    /// background.
    pub fn bring_back(&self) {
        if self.in_background.load(SeqCst)
            && let Some(applier) = self.applier.get()
            && let Err(e) = applier.set(Priority::Normal)
        {
            self.disallow(&e);
        }
    }

    /// A thread no longer waits for the applier.
    pub fn stop_waiting(&self) {
        self.waiters.fetch_sub(1, SeqCst);
    }

    /// Turns the background off for good after a failure to change the applier's priority.
    fn disallow(&self, error: &io::Error) {
        if self.allowed.swap(false, SeqCst) {
            tracing::warn!(%error, "setting the index applier's priority failed; it no longer goes to the background");
        }
    }

    /// The applier's priority as the scheduler has it, once it has started.
    #[cfg(test)]
    pub fn applier_priority(&self) -> Option<Priority> {
        self.applier
            .get()
            .and_then(|applier| applier.get().unwrap())
    }
}

#[cfg(all(target_os = "linux", not(shuttle)))]
mod imp {
    use std::io;

    use thread_priority::ThreadPriority;
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };

    use super::{Priority, Thread};

    pub type Native = thread_priority::unix::ThreadId;

    /// The cross-platform priority (0–99) that `thread_priority` maps to nice 0 for
    /// `SCHED_OTHER` (46–48 do; the crate is pinned, and a test checks the mapping).
    pub(super) const NICE_ZERO: u8 = 47;

    pub fn current() -> Native {
        thread_native_id()
    }

    /// `thread_priority` sets the policy of `native` and then the nice value of the *calling*
    /// thread (`setpriority` on thread 0), to 0 for both policies used here (`SCHED_IDLE`
    /// takes only 0, and [`NICE_ZERO`] maps to 0 for `SCHED_OTHER`). So the calling thread
    /// must be at nice 0 already, which is checked first: its nice value never changes.
    pub fn set(native: Native, priority: Priority) -> io::Result<()> {
        if own_nice()? != 0 {
            return Err(io::Error::other(
                "the calling thread is not at nice 0, which setting a priority would change",
            ));
        }
        let (policy, value) = match priority {
            Priority::Normal => (
                NormalThreadSchedulePolicy::Other,
                ThreadPriority::try_from(NICE_ZERO).map_err(io::Error::other)?,
            ),
            // The one value `SCHED_IDLE` takes, 0.
            Priority::Background => (NormalThreadSchedulePolicy::Idle, ThreadPriority::Min),
        };
        set_thread_priority_and_policy(native, value, ThreadSchedulePolicy::Normal(policy))
            .map_err(|e| io::Error::other(format!("setting a thread's scheduling policy: {e:?}")))
    }

    pub fn get(native: Native) -> io::Result<Option<Priority>> {
        match thread_priority::unix::thread_schedule_policy_param(native) {
            Ok((ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle), _)) => {
                Ok(Some(Priority::Background))
            }
            Ok((ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other), _)) => {
                Ok(Some(Priority::Normal))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(io::Error::other(format!(
                "reading a thread's scheduling policy: {e:?}"
            ))),
        }
    }

    pub fn available() -> bool {
        let probe = std::thread::Builder::new()
            .name("payledger-probe".to_string())
            .spawn(|| {
                let me = Thread::current();
                matches!(me.get(), Ok(Some(Priority::Normal)))
                    && me.set(Priority::Background).is_ok()
                    && me.set(Priority::Normal).is_ok()
            });
        probe
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    }

    /// The calling thread's nice value: field 19 of `/proc/thread-self/stat`, counted after
    /// the command name, which may hold spaces and parentheses.
    pub(super) fn own_nice() -> io::Result<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        let after_name = stat
            .rfind(')')
            .map(|end| &stat[end + 1..])
            .ok_or_else(|| io::Error::other("/proc/thread-self/stat has no command name"))?;
        // Field 3 (the state) is the first after the name; the nice value is field 19.
        after_name
            .split_whitespace()
            .nth(19 - 3)
            .and_then(|nice| nice.parse().ok())
            .ok_or_else(|| io::Error::other("/proc/thread-self/stat has no nice value"))
    }
}

#[cfg(not(all(target_os = "linux", not(shuttle))))]
mod imp {
    use std::io;

    use super::Priority;

    pub type Native = ();

    pub fn current() -> Native {}

    pub fn set(_: Native, _: Priority) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub fn get(_: Native) -> io::Result<Option<Priority>> {
        Ok(Some(Priority::Normal))
    }

    pub fn available() -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux", not(shuttle)))]
mod tests {
    use thread_priority::ThreadPriority;
    use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};

    use super::*;

    #[test]
    fn the_priority_given_for_normal_is_nice_zero_in_the_pinned_crate() {
        let value = ThreadPriority::try_from(imp::NICE_ZERO).unwrap();
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        assert_eq!(value.to_posix(policy).unwrap(), 0);
    }

    #[test]
    fn setting_normal_on_a_normal_thread_changes_nothing_and_needs_no_privilege() {
        std::thread::spawn(|| {
            let me = Thread::current();
            assert_eq!(me.get().unwrap(), Some(Priority::Normal));
            let at_nice_zero = imp::own_nice().unwrap() == 0;
            assert_eq!(me.set(Priority::Normal).is_ok(), at_nice_zero);
            assert_eq!(me.get().unwrap(), Some(Priority::Normal));
            assert_eq!(imp::own_nice().unwrap() == 0, at_nice_zero);
        })
        .join()
        .unwrap();
    }

    /// Runs `steps` on a thread registered as a governor's applier, with the governor.
    fn with_applier<T: Send>(governor: &Governor, steps: impl FnOnce(&Governor) -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    governor.register_applier();
                    steps(governor)
                })
                .join()
                .unwrap()
        })
    }

    #[test]
    fn an_applier_does_not_go_to_the_background_while_someone_waits() {
        let governor = Governor::new(background_available());
        let waiter_first = with_applier(&governor, |governor| {
            governor.start_waiting();
            let entered = governor.enter_background();
            (entered, Thread::current().get().unwrap())
        });
        assert_eq!(waiter_first, (false, Some(Priority::Normal)));
        governor.stop_waiting();
        let nobody_waiting = with_applier(&governor, |governor| {
            let entered = governor.enter_background();
            let inside = Thread::current().get().unwrap();
            if entered {
                governor.leave();
            }
            (entered, inside, Thread::current().get().unwrap())
        });
        let available = background_available();
        let inside = if available {
            Priority::Background
        } else {
            Priority::Normal
        };
        assert_eq!(
            nobody_waiting,
            (available, Some(inside), Some(Priority::Normal))
        );
    }

    /// Whether a fresh thread can go to the background and come back, tried directly.
    fn round_trip_works() -> bool {
        std::thread::spawn(|| {
            let me = Thread::current();
            me.set(Priority::Background).is_ok() && me.set(Priority::Normal).is_ok()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_thread_in_the_background_is_brought_back_by_another_and_no_nice_value_changes() {
        let available = background_available();
        assert_eq!(available, round_trip_works());
        if !available {
            // This process may not leave `SCHED_IDLE` (no `CAP_SYS_NICE`, `RLIMIT_NICE` below
            // 20, or not at nice 0): the applier stays normal, which the index's tests check.
            return;
        }
        let (sent, received) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let me = Thread::current();
            me.set(Priority::Background).unwrap();
            sent.send(me).unwrap();
            released.recv().unwrap();
            (me.get().unwrap(), imp::own_nice().unwrap())
        });
        let worker_thread = received.recv().unwrap();
        assert_eq!(worker_thread.get().unwrap(), Some(Priority::Background));
        worker_thread.set(Priority::Normal).unwrap();
        assert_eq!(worker_thread.get().unwrap(), Some(Priority::Normal));
        let me = Thread::current();
        assert_eq!(me.get().unwrap(), Some(Priority::Normal));
        assert_eq!(
            imp::own_nice().unwrap(),
            0,
            "the thread that brought it back is unchanged"
        );
        release.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), (Some(Priority::Normal), 0));
    }
}
