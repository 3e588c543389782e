//! The synchronisation primitives of the per-key gate: `std`'s, or shuttle's when the crate is
//! built with `--cfg shuttle` so that a schedule explorer can drive every interleaving.
//!
//! Invariant: `gate.rs` takes its locks only from here.

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(shuttle))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`. A poisoned lock is taken over: every critical section guarded here leaves its
/// data consistent before anything in it can panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
