//! The index applier's CPU priority: the lowest the scheduler has (Linux `SCHED_IDLE`) while
//! nobody waits for it, normal while someone does.
//!
//! Why: an applier batch keeps a core busy for a few milliseconds. On a machine with few cores,
//! a journal leader whose sync returns is often made runnable on that core, and it waits there
//! until the batch ends, and with it every caller of its commit. A thread at `SCHED_IDLE` gives
//! the core up to any other thread the moment that thread wakes. The applier is off the commit
//! path, so it can run on what the callers leave.
//!
//! Invariant kept: the applier is in the background only while it can be brought back, and
//! whoever waits for it brings it back first.
//! - Linux lets an unprivileged thread leave `SCHED_IDLE` only where `RLIMIT_NICE` allows its
//!   nice value, or with `CAP_SYS_NICE`. [`background_available`] tries the round trip on a
//!   throwaway thread; where it fails, the applier stays normal.
//! - A writer waiting for room, a read waiting for the watermark and closing make the applier
//!   normal before they wait (`LiveIndex`), so that a machine busy with other threads cannot
//!   starve a thread others wait for: priority inheritance, by hand.
//!
//! Elsewhere than Linux, and under the schedule explorer, nothing changes priority.

use std::io;

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

    /// The thread's priority, as the scheduler has it.
    #[cfg(test)]
    pub fn get(self) -> io::Result<Priority> {
        imp::get(self.0)
    }
}

/// Whether a thread of this process, spawned by the calling thread, can go to the background
/// and come back. Tried on a throwaway thread, which inherits the calling thread's nice value
/// as the applier will.
pub(crate) fn background_available() -> bool {
    imp::available()
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
    const NICE_ZERO: u8 = 47;

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

    #[cfg(test)]
    pub fn get(native: Native) -> io::Result<Priority> {
        match thread_priority::unix::thread_schedule_policy_param(native) {
            Ok((ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle), _)) => {
                Ok(Priority::Background)
            }
            Ok(_) => Ok(Priority::Normal),
            Err(e) => Err(io::Error::other(format!("{e:?}"))),
        }
    }

    pub fn available() -> bool {
        let probe = std::thread::Builder::new()
            .name("payledger-probe".to_string())
            .spawn(|| {
                let me = Thread::current();
                me.set(Priority::Background).is_ok() && me.set(Priority::Normal).is_ok()
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

    #[cfg(test)]
    pub fn get(_: Native) -> io::Result<Priority> {
        Ok(Priority::Normal)
    }

    pub fn available() -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux", not(shuttle)))]
mod tests {
    use super::*;

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
            // 20, or not at nice 0): the applier stays normal, which is all there is to check.
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
        assert_eq!(worker_thread.get().unwrap(), Priority::Background);
        worker_thread.set(Priority::Normal).unwrap();
        assert_eq!(worker_thread.get().unwrap(), Priority::Normal);
        let me = Thread::current();
        assert_eq!(me.get().unwrap(), Priority::Normal);
        assert_eq!(
            imp::own_nice().unwrap(),
            0,
            "the thread that brought it back is unchanged"
        );
        release.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), (Priority::Normal, 0));
    }
}
