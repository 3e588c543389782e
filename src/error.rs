//! The public error types: [`Error`], and the typed kinds inside it ([`Corruption`],
//! [`CodecError`], [`TooLarge`], [`IndexError`]) so that callers and tests match on values,
//! never on message text.
//!
//! Invariants:
//! - expected outcomes of normal operation (a duplicate request, a key reused with a different
//!   intent, a key awaiting reconciliation) are *values* returned by the gate, never errors; an
//!   [`Error`] means the caller's input was invalid or the ledger cannot do its job;
//! - every error that stops the journal or the index carries the failure that stopped it
//!   ([`FatalCause`]: what was being done, with the file, and the I/O error with its errno);
//! - a cause appears once in an error chain: either in the message or as `source()`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::{InputError, Rejection, Sequence};

/// Everything that can go wrong in payledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller or provider input was invalid.
    #[error("invalid input: {0}")]
    Input(InputError),

    /// The fold refused an event: appending it would allow an illegal state.
    #[error("event refused: {0}")]
    Rejected(Rejection),

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
    #[error("journal corrupt in segment {segment} at offset {offset}: {kind}")]
    Corrupt {
        /// Segment number.
        segment: u64,
        /// Byte offset inside the segment file.
        offset: u64,
        /// Which check failed.
        kind: Corruption,
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

    /// One append is larger than a record or segment can hold; nothing was written.
    #[error("append too large: {0}")]
    TooLarge(TooLarge),

    /// A record payload could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(CodecError),

    /// The index failed; the journal is unaffected and the index can be rebuilt.
    #[error("index {}: {kind}", index.display())]
    Index {
        /// The index directory.
        index: PathBuf,
        /// What failed.
        kind: IndexError,
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
    #[error("the index could not be updated after a durable append; the ledger stopped, reopen it")]
    IndexFailed {
        /// The first index failure.
        #[source]
        cause: FatalCause,
    },

    /// The journal holds an event the fold refuses or cannot decode: the journal was written
    /// by something other than this ledger, or a bug let an illegal event through. Nothing is
    /// skipped.
    #[error("journal event at sequence {sequence} is inconsistent")]
    Inconsistent {
        /// The event's sequence.
        sequence: Sequence,
        /// What is wrong with it (a [`Error::Codec`] or [`Error::Rejected`]).
        #[source]
        cause: Box<Error>,
    },

    /// A ticket was presented to a ledger that did not issue it, or twice.
    #[error("ticket for {key} attempt {attempt} is not live in this ledger")]
    StaleTicket {
        /// The ticket's key.
        key: String,
        /// The ticket's attempt.
        attempt: u32,
    },

    /// Other writers kept appending to a key of a shared store while this process decided: it
    /// gave up after `races` tries, having written nothing.
    #[error("{key}: other writers won {races} races in a row; nothing was written, try again")]
    Contended {
        /// The key.
        key: String,
        /// Races lost.
        races: u32,
    },

    /// The async adapter's queue of new calls is full: the request was not queued and nothing
    /// was written. Answer "try again later" (HTTP 503 with `Retry-After`); the same request
    /// may be retried. (The outcome of an admitted attempt is never refused.)
    #[error("overloaded: the ledger's queue of {queue} new requests is full")]
    Overloaded {
        /// The queue's capacity.
        queue: usize,
    },

    /// The async adapter's worker thread running the request panicked or stopped before it
    /// replied: whether the request was applied is unknown, as after a crash (a started attempt
    /// becomes unknown and is reconciled).
    #[error("the ledger's worker stopped before replying")]
    WorkerLost,

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

impl From<InputError> for Error {
    fn from(error: InputError) -> Self {
        Error::Input(error)
    }
}

impl From<Rejection> for Error {
    fn from(rejection: Rejection) -> Self {
        Error::Rejected(rejection)
    }
}

impl From<TooLarge> for Error {
    fn from(too_large: TooLarge) -> Self {
        Error::TooLarge(too_large)
    }
}

impl From<CodecError> for Error {
    fn from(error: CodecError) -> Self {
        Error::Codec(error)
    }
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

/// Which check failed on bytes read from a journal segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The segment file is shorter than its header.
    #[error("segment shorter than its header")]
    HeaderTruncated,
    /// The header does not start with the segment magic.
    #[error("bad magic: not a payledger segment")]
    BadMagic,
    /// The header names a format version this code does not read.
    #[error("unsupported segment format version {version}")]
    UnknownVersion {
        /// The version found.
        version: u32,
    },
    /// The header's crc does not match.
    #[error("header crc mismatch")]
    HeaderCrc,
    /// The header's first sequence is 0 or above [`crate::limits::SEQUENCE_MAX`].
    #[error("first sequence {first} out of range 1..=2^62")]
    FirstSequence {
        /// The first sequence found.
        first: u64,
    },
    /// The header's segment number differs from the file name's.
    #[error("header says segment {header}")]
    SegmentNumber {
        /// The number in the header.
        header: u64,
    },
    /// A segment between the first and the last is missing.
    #[error("segment {missing} is missing")]
    SegmentMissing {
        /// The missing segment's number.
        missing: u64,
    },
    /// A segment's first sequence is below its predecessor's.
    #[error("first sequence goes backwards")]
    FirstSequenceBackwards,
    /// A segment file is longer than any segment may be.
    #[error("segment is {len} bytes, longer than the limit")]
    SegmentTooLong {
        /// Its length.
        len: u64,
    },
    /// A segment does not continue where its predecessor ends.
    #[error(
        "segment starts at sequence {first} but the previous segment ends at {previous_last} or its chain head differs"
    )]
    SegmentLink {
        /// The segment's first sequence.
        first: u64,
        /// The previous segment's last sequence.
        previous_last: u64,
    },
    /// Fewer bytes remain than a record header needs.
    #[error("{available} bytes left, a record header needs 52")]
    RecordHeaderCut {
        /// Bytes left.
        available: usize,
    },
    /// A record's length field is 0 or above the payload limit.
    #[error("payload length {len} out of range")]
    PayloadLength {
        /// The length field.
        len: u64,
    },
    /// A record ends beyond the bytes available.
    #[error("record of {len} bytes cut off after {available}")]
    RecordCut {
        /// The record's length.
        len: usize,
        /// Bytes available.
        available: usize,
    },
    /// A record's crc does not match.
    #[error("record crc mismatch")]
    RecordCrc,
    /// An intact record has another sequence than the next one.
    #[error("sequence {found} where {expected} was expected")]
    SequenceGap {
        /// The sequence expected.
        expected: u64,
        /// The sequence found.
        found: u64,
    },
    /// An intact record's chain hash does not link to its predecessor.
    #[error("chain hash does not link to the previous record")]
    BrokenChain,
    /// A record of an atomic append says another count of records follows.
    #[error("batch expects {expected} more records, record says {found}")]
    BatchMismatch {
        /// Records the append still expects.
        expected: u32,
        /// Records this record says follow.
        found: u32,
    },
    /// The record sequence would overflow.
    #[error("sequence overflows")]
    SequenceOverflow,
    /// Damage followed by an intact record: not a torn tail.
    #[error("damaged record ({damage}), followed by an intact record at offset {intact_at}")]
    DamageBeforeIntact {
        /// What is wrong with the damaged record.
        damage: Box<Corruption>,
        /// Where the intact record starts.
        intact_at: u64,
    },
    /// Fewer bytes remain than a commit frame header needs.
    #[error("{available} bytes left, a commit frame header needs 32")]
    FrameHeaderCut {
        /// Bytes left.
        available: usize,
    },
    /// A commit frame header does not start with the frame magic.
    #[error("bad commit frame magic")]
    FrameMagic,
    /// A commit frame header's crc does not match.
    #[error("commit frame header crc mismatch")]
    FrameHeaderCrc,
    /// A commit frame's body length or record count is impossible.
    #[error("commit frame of {body_len} body bytes and {records} records is impossible")]
    FrameLength {
        /// The body length field.
        body_len: u32,
        /// The record count field.
        records: u32,
    },
    /// A commit frame's body does not match its crc.
    #[error("commit frame body crc mismatch")]
    FrameCrc,
    /// A commit frame's records do not fill its body exactly.
    #[error("commit frame records do not fill its body")]
    FrameMismatch,
    /// Non-zero bytes after the end of the journal, beyond what a torn commit can explain.
    #[error("non-zero bytes at offset {at} after the journal's end")]
    GarbageAfterEnd {
        /// Where.
        at: u64,
    },
    /// The records of an atomic append stop before its last record.
    #[error("atomic append cut short")]
    AppendCutShort,
    /// The journal ends before the sequence it reported durable.
    #[error("journal ends at sequence {ends_at} but {written} were written")]
    EndsEarly {
        /// Where the records end.
        ends_at: u64,
        /// The durable sequence.
        written: u64,
    },
}

/// Why a payload could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// The payload's format version is not one this code reads.
    #[error("unknown event format version {version}")]
    UnknownVersion {
        /// The version byte.
        version: u8,
    },
    /// The bytes are not an event of the format (bincode's description).
    #[error("malformed event: {detail}")]
    Malformed {
        /// What the decoder said.
        detail: String,
    },
    /// Bytes follow the event.
    #[error("{count} trailing bytes after the event")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A value could not be encoded (bincode's description).
    #[error("encoding failed: {detail}")]
    Encode {
        /// What the encoder said.
        detail: String,
    },
    /// A derived value in the index could not be decoded.
    #[error("malformed index value: {detail}")]
    MalformedIndexValue {
        /// What the decoder said.
        detail: String,
    },
}

/// Which bound an append exceeds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TooLarge {
    /// Too many (or no) records in one atomic append.
    #[error("{count} records in one append, 1 to {max} allowed")]
    Records {
        /// Records given.
        count: usize,
        /// Records allowed.
        max: usize,
    },
    /// A payload is empty or larger than a record may hold.
    #[error("payload of {len} bytes, 1 to {max} allowed")]
    Payload {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The append does not fit one segment.
    #[error("append of {bytes} bytes does not fit a {segment_len}-byte segment")]
    Append {
        /// Bytes of the append with a segment header.
        bytes: u64,
        /// The configured segment length.
        segment_len: u64,
    },
    /// One encoded event is larger than a record may hold.
    #[error("event of {len} bytes, limit {max}")]
    Event {
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What failed in the index.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Another process holds the index.
    #[error("is locked by another process")]
    Locked,
    /// sled reported an error (its description; feature `sled`).
    #[cfg(feature = "sled")]
    #[error("sled: {detail}")]
    Sled {
        /// What sled said.
        detail: String,
    },
    /// fjall reported an error (its description).
    #[error("fjall: {detail}")]
    Fjall {
        /// What fjall said.
        detail: String,
    },
    /// A freshly created index is unusable.
    #[error("fresh index unusable: {reason}")]
    FreshUnusable {
        /// Why.
        reason: String,
    },
    /// An entry of the index fails its checksum or does not decode: the index's own files are
    /// damaged (the journal is not involved). Rebuild the index from the journal.
    #[error("damaged {what}: rebuild the index from the journal (payledger rebuild-index)")]
    Damaged {
        /// Which entry.
        what: &'static str,
    },
    /// The index was not opened with the journal (a bug).
    #[error("not opened with the journal")]
    NotOpened,
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

    /// The underlying I/O error. A failure that was not an I/O error (of the index, or of a
    /// segment's creation) is one of kind `Other` whose inner error (`get_ref`) is that
    /// [`Error`], whole.
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
