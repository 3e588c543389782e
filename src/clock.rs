//! Where the ledger's time comes from: a wall clock that stamps events, and a monotonic clock
//! that measures every wait a safety decision depends on.
//!
//! Invariant: the ledger reads time only through a [`Clock`]; the fold never reads one. The wall
//! clock may step in either direction (NTP, a VM resume, an operator): it stamps events and
//! schedules queries, but no decision that could allow a second charge rests on it. Waits that
//! protect money (the provider's visibility delay, ticket leases) are measured on the monotonic
//! clock, which never steps, and restart from zero in a new process.
//!
//! Tests and the simulator use [`ManualClock`], which moves only when told to.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::model::UnixMillis;

/// Milliseconds on a monotonic clock since an origin fixed for the life of one process. Only
/// differences between two readings of the same clock mean anything; it is never persisted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct MonotonicMillis(pub u64);

impl MonotonicMillis {
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: MonotonicMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A source of time: wall-clock time for stamping events, monotonic time for measuring waits.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time. May step forwards or backwards.
    fn now(&self) -> UnixMillis;
    /// The current monotonic reading: never decreases and ignores wall-clock steps.
    fn monotonic(&self) -> MonotonicMillis;
}

/// The system's clocks: `SystemTime` for the wall, `Instant` for monotonic readings.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn process_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        UnixMillis(ms)
    }

    fn monotonic(&self) -> MonotonicMillis {
        let elapsed = process_origin().elapsed().as_millis();
        MonotonicMillis(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: [`advance`](Self::advance) lets real time pass (both
/// readings move), [`set`](Self::set) steps the wall clock alone, as NTP or a VM resume does.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicU64,
    monotonic: AtomicU64,
}

impl ManualClock {
    /// A clock showing `at`, with its monotonic reading at 0.
    pub fn new(at: UnixMillis) -> Self {
        Self {
            wall: AtomicU64::new(at.0),
            monotonic: AtomicU64::new(0),
        }
    }

    /// `ms` milliseconds of real time pass: both readings move forward.
    pub fn advance(&self, ms: u64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps the wall clock to `at` (forwards or backwards); the monotonic reading stays.
    pub fn set(&self, at: UnixMillis) {
        self.wall.store(at.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.wall.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> MonotonicMillis {
        MonotonicMillis(self.monotonic.load(Ordering::SeqCst))
    }
}

/// A shared clock is a clock.
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> UnixMillis {
        (**self).now()
    }
    fn monotonic(&self) -> MonotonicMillis {
        (**self).monotonic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_step_moves_only_the_wall_clock() {
        let clock = ManualClock::new(UnixMillis(1_000));
        clock.advance(500);
        clock.set(UnixMillis(1_000_000));
        clock.set(UnixMillis(10));
        assert_eq!(clock.now(), UnixMillis(10));
        assert_eq!(clock.monotonic(), MonotonicMillis(500));
    }

    #[test]
    fn the_system_monotonic_clock_never_decreases() {
        let a = SystemClock.monotonic();
        let b = SystemClock.monotonic();
        assert!(b >= a);
        assert_eq!(MonotonicMillis(3).since(MonotonicMillis(5)), 0);
    }
}
