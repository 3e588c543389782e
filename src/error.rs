//! The public error types.
//!
//! Invariant: expected outcomes of normal operation (a duplicate request, a key reused with a
//! different intent, a key awaiting reconciliation) are *values* returned by the gate, never
//! errors. An [`Error`] means the caller's input was invalid or the ledger cannot do its job.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{InputError, Rejection, Sequence};

/// Everything that can go wrong in payledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller or provider input was invalid.
    #[error("invalid input")]
    Input(#[from] InputError),

    /// The fold refused an event: appending it would allow an illegal state.
    #[error("event refused")]
    Rejected(#[from] Rejection),

    /// Another process or handle owns the ledger directory.
    #[error("{} is locked by another process or handle", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },

    /// The directory holds no journal and the caller asked not to create one.
    #[error("{} holds no payledger journal", dir.display())]
    NotFound {
        /// The directory.
        dir: PathBuf,
    },

    /// Bytes on disk are not what was written: a checksum, chain, sequence or header check
    /// failed somewhere other than a torn tail. Nothing is skipped: the journal refuses to open.
    #[error("journal corrupt in segment {segment} at offset {offset}: {what}")]
    Corrupt {
        /// Segment number.
        segment: u64,
        /// Byte offset inside the segment file.
        offset: u64,
        /// Which check failed.
        what: String,
    },

    /// The write or sync covering this append failed (or the storage panicked): the append may
    /// or may not be on disk, and the journal is stopped until reopened, because what is on disk
    /// after a failed `fdatasync` is unknown.
    #[error("journal append failed and the journal stopped; reopen it")]
    AppendFailed {
        /// The failure.
        #[source]
        cause: FatalCause,
    },

    /// The journal stopped after an earlier write or sync failure; nothing of this append was
    /// written. The cause is the first failure, whichever append met it.
    #[error("journal stopped by an earlier failure; reopen it")]
    Poisoned {
        /// The failure that stopped it.
        #[source]
        cause: FatalCause,
    },

    /// Records up to `acknowledged` were synced and acknowledged, but the journal ends at
    /// `journal_last`: damage at its end that is not a torn tail. Nothing was cut.
    #[error(
        "records up to sequence {acknowledged} were acknowledged but the journal ends at {journal_last}; nothing was cut"
    )]
    AcknowledgedMissing {
        /// The last sequence known to be acknowledged.
        acknowledged: Sequence,
        /// The journal's last intact sequence.
        journal_last: Sequence,
    },

    /// The index reflects journal records the journal does not have: the journal lost records
    /// that were synced and acknowledged (damage at its end), or the index belongs to a later
    /// copy of this ledger or to another one. Nothing is rebuilt or cut: an operator decides.
    #[error(
        "index {} reflects the journal up to sequence {watermark}, but the journal ends at {journal_last}: acknowledged records are missing from the journal, or the index is not this journal's; nothing was changed (docs/runbook.md, \"the index is ahead of the journal\")",
        index.display()
    )]
    IndexAhead {
        /// The index directory.
        index: PathBuf,
        /// The last sequence the index reflects.
        watermark: Sequence,
        /// The journal's last sequence.
        journal_last: Sequence,
    },

    /// One append is larger than a record or segment can hold.
    #[error("append too large: {what}")]
    TooLarge {
        /// Which bound was exceeded.
        what: String,
    },

    /// A record payload could not be encoded or decoded.
    #[error("codec: {what}")]
    Codec {
        /// What failed.
        what: String,
    },

    /// The sled index failed; the journal is unaffected and the index can be rebuilt.
    #[error("index: {what}")]
    Index {
        /// What failed.
        what: String,
    },

    /// The simulator has no open ledger to drive (its own bug, reported rather than panicking).
    #[cfg(feature = "sim")]
    #[error("the simulation has no open ledger")]
    SimulationStopped,

    /// A thread checking a segment in `verify` panicked (a bug, or a panicking storage).
    #[error("a verify thread panicked")]
    VerifyPanicked,

    /// The ledger was opened read-only; nothing may be appended.
    #[error("ledger is open read-only")]
    ReadOnly,

    /// The index could not be updated after a durable append; the ledger refuses further work
    /// until reopened, which catches the index up from the journal.
    #[error("index update failed earlier; reopen the ledger")]
    IndexFailed,

    /// The journal holds an event the fold refuses: the journal was written by something other
    /// than this ledger, or a bug let an illegal event through. Nothing is skipped.
    #[error("journal event at sequence {sequence} is inconsistent: {what}")]
    Inconsistent {
        /// The event's sequence.
        sequence: u64,
        /// What is wrong.
        what: String,
    },

    /// A ticket was presented to a ledger that did not issue it, or twice.
    #[error("ticket for {key} attempt {attempt} is not live in this ledger")]
    StaleTicket {
        /// The ticket's key.
        key: String,
        /// The ticket's attempt.
        attempt: u32,
    },

    /// An I/O operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The failure that stopped the journal or the index: what was being done (with the file) and
/// the underlying I/O error, shared by every error that reports it.
#[derive(Clone, Debug)]
pub struct FatalCause {
    context: String,
    source: Arc<std::io::Error>,
}

impl FatalCause {
    /// A cause: `context` says what was being done, with the path.
    pub fn new(context: impl Into<String>, source: std::io::Error) -> Self {
        Self {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &std::io::Error {
        &self.source
    }
}

impl fmt::Display for FatalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for FatalCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// payledger's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
