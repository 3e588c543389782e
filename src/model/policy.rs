//! The reconciliation policy: pure data and arithmetic, no I/O and no clock. The ledger derives
//! each unknown key's query schedule from it (so a rebuilt index has the same schedule) and the
//! reconciler follows it.
//!
//! Invariant: every `ReconcileConfig` in existence passed [`ReconcileConfig::new`]'s checks (or
//! is the default), so a zero visibility delay or zero required answers cannot be configured.

use super::event::NotFoundPolicy;
use super::input::InputError;
use super::input::check_range;
use super::key::{IdempotencyKey, UnixMillis};
use super::state::{PaymentState, Phase};
use crate::limits::{BACKOFF_MS_MAX, QUERIES_MAX, RECONCILE_BATCH_MAX};

/// How unknown outcomes are reconciled: when "not found" may be trusted, how often to ask, when
/// to give up and escalate to review. Validated on construction.
///
/// ```
/// use payledger::{NotFoundPolicy, ReconcileConfig};
/// let config = ReconcileConfig::new(NotFoundPolicy::new(60_000, 5_000, 3)?, 12, 1_000, 600_000, 100)?;
/// assert_eq!(config.queries_max(), 12);
/// assert!(ReconcileConfig::new(NotFoundPolicy::new(60_000, 5_000, 3)?, 0, 1_000, 600_000, 100).is_err());
/// # Ok::<(), payledger::InputError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    not_found: NotFoundPolicy,
    queries_max: u32,
    backoff_ms_initial: u64,
    backoff_ms_max: u64,
    batch_max: usize,
}

impl Default for ReconcileConfig {
    /// Not found trusted after 60 s + 5 s and 3 answers; 12 queries before review; backoff from
    /// 1 s to 10 min; 100 keys per pass.
    fn default() -> Self {
        Self {
            not_found: NotFoundPolicy::DEFAULT,
            queries_max: 12,
            backoff_ms_initial: 1_000,
            backoff_ms_max: 600_000,
            batch_max: 100,
        }
    }
}

impl ReconcileConfig {
    /// A configuration: `not_found` decides when "not found" is trusted; after `queries_max`
    /// answers that settle nothing the key is escalated to review; queries back off
    /// exponentially from `backoff_ms_initial` to `backoff_ms_max`; a pass examines at most
    /// `batch_max` keys.
    ///
    /// # Errors
    /// [`InputError::Config`] for `queries_max` outside 1 to [`QUERIES_MAX`] or below the
    /// answers `not_found` requires, a backoff outside 1 ms to [`BACKOFF_MS_MAX`] (or an initial
    /// backoff above the maximum), or `batch_max` outside 1 to [`RECONCILE_BATCH_MAX`].
    pub fn new(
        not_found: NotFoundPolicy,
        queries_max: u32,
        backoff_ms_initial: u64,
        backoff_ms_max: u64,
        batch_max: usize,
    ) -> Result<Self, InputError> {
        check_range(
            "queries_max",
            u64::from(queries_max),
            u64::from(not_found.consistent_answers_min()),
            u64::from(QUERIES_MAX),
        )?;
        check_range("backoff_ms_max", backoff_ms_max, 1, BACKOFF_MS_MAX)?;
        check_range("backoff_ms_initial", backoff_ms_initial, 1, backoff_ms_max)?;
        check_range("batch_max", batch_max as u64, 1, RECONCILE_BATCH_MAX as u64)?;
        Ok(Self {
            not_found,
            queries_max,
            backoff_ms_initial,
            backoff_ms_max,
            batch_max,
        })
    }

    /// When "not found" may be trusted.
    pub fn not_found(&self) -> NotFoundPolicy {
        self.not_found
    }

    /// Queries without a definitive answer before escalation to review.
    pub fn queries_max(&self) -> u32 {
        self.queries_max
    }

    /// Wait before the first query after an attempt became unknown.
    pub fn backoff_ms_initial(&self) -> u64 {
        self.backoff_ms_initial
    }

    /// Longest wait between queries.
    pub fn backoff_ms_max(&self) -> u64 {
        self.backoff_ms_max
    }

    /// Keys examined per reconciler pass.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// When an unknown key should next be queried, given its last event's time: exponential
    /// backoff from `backoff_ms_initial`, capped at `backoff_ms_max`, plus up to 25 % jitter
    /// derived from the key (deterministic, so the index can be rebuilt to the same schedule).
    pub fn next_query_at(
        &self,
        key: &IdempotencyKey,
        phase: &Phase,
        last_event_at: UnixMillis,
    ) -> Option<UnixMillis> {
        let Phase::Unknown { queries, .. } = phase else {
            return None;
        };
        Some(self.after_backoff(key, None, *queries, last_event_at))
    }

    /// When a key should next be queried: the earliest of its own unknown attempt's time and
    /// each unknown operation's (whose jitter also derives from the operation's ordinal).
    pub fn next_query_at_state(
        &self,
        state: &PaymentState,
        last_event_at: UnixMillis,
    ) -> Option<UnixMillis> {
        let own = self.next_query_at(&state.key, &state.phase, last_event_at);
        let operations = state.operations.iter().filter_map(|op| match &op.phase {
            Phase::Unknown { queries, .. } => {
                Some(self.after_backoff(&state.key, Some(op.ordinal), *queries, last_event_at))
            }
            _ => None,
        });
        own.into_iter().chain(operations).min()
    }

    /// `last_event_at` plus the backoff after `queries` answers, with its jitter.
    fn after_backoff(
        &self,
        key: &IdempotencyKey,
        ordinal: Option<u32>,
        queries: u32,
        last_event_at: UnixMillis,
    ) -> UnixMillis {
        let base = self
            .backoff_ms_initial
            .saturating_mul(1u64 << queries.min(32))
            .min(self.backoff_ms_max);
        let mut hasher = blake3::Hasher::new();
        hasher.update(key.as_str().as_bytes());
        hasher.update(&queries.to_le_bytes());
        if let Some(ordinal) = ordinal {
            hasher.update(&ordinal.to_le_bytes());
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        let jitter = u64::from_le_bytes(word) % (base / 4 + 1);
        last_event_at.plus_ms(base + jitter)
    }
}
