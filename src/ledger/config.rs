//! How a ledger is opened.
//!
//! Invariant: a ledger opens only with a configuration whose every value is within its limit
//! (`limits.rs`); the reconciliation policy checks itself on construction.

use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::journal::storage::{FsStorage, Storage};
use crate::limits::{
    INDEX_BACKLOG_MAX, INDEX_CACHE_BYTES_DEFAULT, INDEX_CACHE_BYTES_MAX, INDEX_CACHE_BYTES_MIN,
    SEGMENT_LEN_DEFAULT, TICKET_LEASE_MS_DEFAULT, TICKET_LEASE_MS_MAX, TICKET_LEASE_MS_MIN,
};
use crate::model::InputError;
use crate::model::ReconcileConfig;
use crate::model::check_range;

/// Which engine keeps the persistent index (the index is derived data: switching engines
/// rebuilds it from the journal, in a directory of the new engine's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexEngine {
    /// fjall 3, an LSM tree: the default.
    #[default]
    Fjall,
    /// sled 0.34, a B-tree over a log (feature `sled`): slower to write, rebuild and look up,
    /// and three times the size (`docs/performance.md`).
    #[cfg(feature = "sled")]
    Sled,
}

/// How a ledger is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Journal segment size.
    pub segment_len: u64,
    /// Create the ledger if the directory holds none.
    pub create_if_missing: bool,
    /// Open for inspection only: no event is appended (not even for attempts orphaned by a
    /// previous process); the index may still be caught up.
    pub read_only: bool,
    /// Which engine keeps the persistent index; default [`IndexEngine::Fjall`].
    pub index_engine: IndexEngine,
    /// Where the index lives; `None` means `<dir>/index`. It is always on the real file
    /// system, and may not be the ledger directory, one of its ancestors, or hold segments.
    pub index_dir: Option<PathBuf>,
    /// Reconciler behaviour (its schedule is part of the index).
    pub reconcile: ReconcileConfig,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where the journal's bytes go.
    pub storage: Arc<dyn Storage>,
    /// How long a ticket's provider call may take before the reconciler takes the attempt over
    /// (it becomes unknown and is queried); a late `record` then enters as evidence. Measured on
    /// the monotonic clock, from [`TICKET_LEASE_MS_MIN`] to [`TICKET_LEASE_MS_MAX`].
    pub ticket_lease_ms: u64,
    /// Durable commits that may wait for the index applier, from 1 to [`INDEX_BACKLOG_MAX`]
    /// (the default): a writer finding this many waits before appending. Bounds the memory of
    /// the backlog and the overlay (about a kilobyte per commit).
    pub index_backlog_max: usize,
    /// Memory the index engine may use for its cache (sled's page cache, fjall's block cache), from [`INDEX_CACHE_BYTES_MIN`] to
    /// [`INDEX_CACHE_BYTES_MAX`]; default [`INDEX_CACHE_BYTES_DEFAULT`]. The index's hot part
    /// (keys being charged, unknowns) stays cached; a larger cache speeds up random lookups of
    /// old keys.
    pub index_cache_bytes: u64,
    /// Let the index applier work in the background (Linux `SCHED_IDLE`); default `true`. It
    /// goes there only for the work on a batch that takes none of the ledger's locks (merging,
    /// the engine's write, freeing), and only when the batch was taken with nobody waiting for
    /// it and the backlog under half full; whoever starts waiting brings it back first. Its
    /// batches then do not keep a thread of the commit path from a core, which matters on
    /// machines with few cores (`docs/performance.md`). Takes effect only where the process
    /// may bring a thread back from `SCHED_IDLE`, which is tried at open: the opening thread at
    /// nice 0 and `SCHED_OTHER`, and `CAP_SYS_NICE` or an `RLIMIT_NICE` of at least 20
    /// (systemd: `LimitNICE=+0`); elsewhere the applier runs at normal priority, and the log
    /// says so at open. Ignored with sled (whose batches hold a lock its reads take) and for a
    /// read-only ledger. A thread waiting for the applier at a nice value other than 0 cannot
    /// bring it back: it turns the background off for the rest of the ledger's life (logged)
    /// and waits for the batch in progress.
    pub index_applier_background: bool,
    /// Test-only faults of the index applier (feature `testing`).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub index_faults: Option<crate::index::IndexFaults>,
    /// Test-only sabotage for the simulator's self-test: reopening marks orphaned attempts
    /// "not sent" instead of unknown, the bug the simulator must catch. Exists only with the
    /// `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub sabotage_forget_unknown_on_replay: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            segment_len: SEGMENT_LEN_DEFAULT,
            create_if_missing: true,
            read_only: false,
            index_dir: None,
            reconcile: ReconcileConfig::default(),
            clock: Arc::new(SystemClock),
            storage: Arc::new(FsStorage),
            ticket_lease_ms: TICKET_LEASE_MS_DEFAULT,
            index_backlog_max: INDEX_BACKLOG_MAX,
            index_cache_bytes: INDEX_CACHE_BYTES_DEFAULT,
            index_applier_background: true,
            index_engine: IndexEngine::default(),
            #[cfg(feature = "testing")]
            index_faults: None,
            #[cfg(feature = "testing")]
            sabotage_forget_unknown_on_replay: false,
        }
    }
}

impl LedgerConfig {
    /// Checks the values the journal does not check itself.
    pub(crate) fn validate(&self) -> Result<(), InputError> {
        check_range(
            "ticket_lease_ms",
            self.ticket_lease_ms,
            TICKET_LEASE_MS_MIN,
            TICKET_LEASE_MS_MAX,
        )?;
        check_range(
            "index_backlog_max",
            self.index_backlog_max as u64,
            1,
            INDEX_BACKLOG_MAX as u64,
        )?;
        check_range(
            "index_cache_bytes",
            self.index_cache_bytes,
            INDEX_CACHE_BYTES_MIN,
            INDEX_CACHE_BYTES_MAX,
        )
    }
}
