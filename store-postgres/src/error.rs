//! [`PgError`]: what went wrong talking to PostgreSQL, typed, inside the library's
//! [`payledger::Error::Io`].
//!
//! Invariants:
//! - every error of this crate reaches the caller as `payledger::Error::Io { context, source }`,
//!   the context naming the operation and the table, the source an `std::io::Error` wrapping a
//!   [`PgError`] (find it with [`pg_error`]) whose own source is the driver's error;
//! - an append's error says whether anything was written: [`PgError::OutcomeUnknown`] is the
//!   only error after which the append may have happened; every other error of `append` means
//!   nothing was written.

use std::time::Duration;

/// What went wrong talking to PostgreSQL. Messages are lowercase; the cause is the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// No connection could be opened: nothing was sent.
    #[error("could not connect to the server")]
    Connect(#[source] postgres::Error),

    /// The server refused a statement (it answered with an error and rolled the statement's
    /// transaction back), or a read failed. Nothing of an append was written.
    #[error("the statement failed")]
    Statement(#[source] postgres::Error),

    /// An append lost its connection before its answer arrived and the outcome could not be
    /// established by reading back before the resolution deadline: the events may or may not
    /// be in the store. Load the key to find out; never assume either.
    #[error(
        "the append's connection was lost and its outcome could not be read back within {resolve_timeout:?}: it may or may not have been written"
    )]
    OutcomeUnknown {
        /// The deadline that passed ([`PgOptions::resolve_timeout`](crate::PgOptions)).
        resolve_timeout: Duration,
        /// The last failure met while resolving.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An append lost its connection, the read-back (after the lost session was ended) showed
    /// it had not happened, and its one retry lost its connection too and was not written
    /// either: nothing was written. The append may be tried again.
    #[error(
        "the append and its retry both lost their connection before committing; nothing was written"
    )]
    NotWritten {
        /// The retry's failure.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The server does not show the new session's start time in `pg_stat_activity`: without
    /// it, a session whose connection was lost cannot be told apart from a later one with the
    /// same process id, so an append's lost outcome could not be resolved safely.
    #[error("the server does not show this session in pg_stat_activity")]
    NoSessionIdentity,

    /// The database's payledger schema is newer than this crate knows: it refuses to read or
    /// write it. Upgrade the crate.
    #[error(
        "the database's payledger schema is version {found}, newer than version {known} this crate knows"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i32,
        /// The newest version this crate knows.
        known: i32,
    },

    /// The server would not make a commit durable before answering (`fsync = off`): the store
    /// refuses it, since `Done` promises durability.
    #[error(
        "the server runs with {setting} = {value}: an acknowledged append would not be durable"
    )]
    NotDurable {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: String,
    },

    /// Rows that contradict the store's invariants (a gap in a key's sequence, a version that
    /// is not its number of events, a key that is not a valid key): written by something other
    /// than this crate, or a bug. Nothing is skipped.
    #[error("inconsistent rows for key {key}: {detail}")]
    Inconsistent {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },

    /// A stored event could not be decoded or the fold refused it.
    #[error("event {seq} of key {key} is inconsistent")]
    Event {
        /// The key.
        key: String,
        /// Its position in the key's events, from 1.
        seq: i64,
        /// The codec's or the fold's error.
        #[source]
        cause: payledger::Error,
    },

    /// A provider reference the append issues already belongs to another key (the server's
    /// error names it): nothing was written.
    #[error("a provider reference the append issues belongs to another key")]
    ReferenceTaken(#[source] postgres::Error),

    /// The append itself is malformed (no events, events of another key, too many events, a
    /// version past what a `bigint` holds): nothing was sent.
    #[error("invalid append: {reason}")]
    InvalidAppend {
        /// What is wrong with it.
        reason: String,
    },

    /// An event could not be encoded: nothing was sent.
    #[error("an event could not be encoded")]
    Encode(#[source] payledger::Error),
}

/// The [`PgError`] inside an error this crate returned, if it is one.
///
/// ```
/// # use payledger_postgres::{PgError, pg_error};
/// let error = payledger::Error::Io {
///     context: "load".into(),
///     source: std::io::Error::other(PgError::InvalidAppend { reason: "no events".into() }),
/// };
/// assert!(matches!(pg_error(&error), Some(PgError::InvalidAppend { .. })));
/// ```
pub fn pg_error(error: &payledger::Error) -> Option<&PgError> {
    match error {
        payledger::Error::Io { source, .. } => source.get_ref()?.downcast_ref::<PgError>(),
        _ => None,
    }
}

/// `error` as the library's error, with what was being done.
pub(crate) fn io(context: impl Into<String>, error: PgError) -> payledger::Error {
    payledger::Error::Io {
        context: context.into(),
        source: std::io::Error::other(error),
    }
}

/// Whether a failed statement certainly did not commit: the server answered with an `ERROR`
/// (not `FATAL` or `PANIC`), which rolls the statement's transaction back and leaves the
/// session usable. Anything else — a lost connection, an I/O error, a session ended by the
/// server (which may happen after a local commit, e.g. while waiting for a synchronous
/// standby) — leaves the outcome unknown.
pub(crate) fn certainly_rolled_back(error: &postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(postgres::error::Severity::Error))
}
