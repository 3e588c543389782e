//! The one way payledger takes a lock, and the synchronisation primitives of the per-key gate:
//! `std`'s, or shuttle's when the crate is built with `--cfg shuttle` so that a schedule
//! explorer can drive every interleaving.
//!
//! Invariants:
//! - `gate.rs` and `index/live.rs` take their locks, condition variables and threads only from
//!   here;
//! - every lock is taken with [`lock`], [`read`] or [`write`]: a lock poisoned by a panic is
//!   taken over, because every critical section in payledger leaves its data consistent before
//!   anything in it can panic (and a panic inside the journal's commit poisons the journal
//!   itself, see `journal/group_commit.rs`).

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};
#[cfg(shuttle)]
pub(crate) use shuttle::thread::{JoinHandle, spawn};
#[cfg(not(shuttle))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(shuttle))]
pub(crate) use std::thread::JoinHandle;

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A mutex [`lock`] can take: `std`'s, and shuttle's under `--cfg shuttle`.
pub(crate) trait Lockable<'a> {
    /// What holding the lock gives.
    type Guard;
    /// Takes the lock, taking over a poisoned one.
    fn take(&'a self) -> Self::Guard;
}

impl<'a, T: 'a> Lockable<'a> for std::sync::Mutex<T> {
    type Guard = std::sync::MutexGuard<'a, T>;
    fn take(&'a self) -> Self::Guard {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(shuttle)]
impl<'a, T: 'a> Lockable<'a> for shuttle::sync::Mutex<T> {
    type Guard = shuttle::sync::MutexGuard<'a, T>;
    fn take(&'a self) -> Self::Guard {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Locks `mutex`, taking over a poisoned lock.
pub(crate) fn lock<'a, M: Lockable<'a>>(mutex: &'a M) -> M::Guard {
    mutex.take()
}

/// Starts a thread named `name` (under shuttle, one of its unnamed threads).
pub(crate) fn spawn_named<F>(name: &str, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    #[cfg(shuttle)]
    {
        let _ = name;
        Ok(spawn(f))
    }
    #[cfg(not(shuttle))]
    {
        std::thread::Builder::new().name(name.to_string()).spawn(f)
    }
}

/// Waits on `condvar`, taking over a poisoned lock.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` for at most `timeout`, taking over a poisoned lock.
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// Read-locks `rwlock`, taking over a poisoned lock.
pub(crate) fn read<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `rwlock`, taking over a poisoned lock.
pub(crate) fn write<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock.write().unwrap_or_else(PoisonError::into_inner)
}
