//! Every bound payledger enforces, as a constant with the reason for it.
//!
//! Invariant: everything that grows with input — keys, texts, metadata, attempts, records,
//! segments, batches, queues — has a limit here, and the code that accepts such input checks it.

/// Keys come from API clients; bounding them bounds every index entry. 255 matches the
/// idempotency-key limit of the large card providers.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// Largest amount in minor units. 10^15 stays exactly representable as an IEEE-754 double
/// (2^53 ≈ 9.007 × 10^15), so JSON consumers of `export` never round a payment.
pub const AMOUNT_MINOR_MAX: u64 = 1_000_000_000_000_000;

/// ISO-4217 alphabetic codes are exactly three letters.
pub const CURRENCY_LEN: usize = 3;

/// Merchant or account identifiers are opaque ids chosen by the service.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;

/// Customer references are opaque ids chosen by the service.
pub const CUSTOMER_REF_LEN_MAX: usize = 128;

/// Descriptions end up on statements and in provider requests; providers cap them at a few
/// hundred bytes.
pub const DESCRIPTION_LEN_MAX: usize = 500;

/// Metadata bounds follow the common provider convention (50 entries, 40-byte keys,
/// 500-byte values), so a payledger intent can always be forwarded.
pub const METADATA_ENTRIES_MAX: usize = 50;
/// See [`METADATA_ENTRIES_MAX`].
pub const METADATA_KEY_LEN_MAX: usize = 40;
/// See [`METADATA_ENTRIES_MAX`].
pub const METADATA_VALUE_LEN_MAX: usize = 500;

/// Attempts per key. Each attempt after the first exists only because the provider proved the
/// previous one did not charge; more than a handful means something is wrong upstream.
pub const ATTEMPTS_MAX: u32 = 16;

/// Provider references travel in idempotency-key headers, which real providers cap at 64.
pub const PROVIDER_REFERENCE_LEN_MAX: usize = 64;

/// Transaction ids come from the provider; anything longer is treated as an unparseable reply.
pub const TRANSACTION_ID_LEN_MAX: usize = 128;

/// Decline and error codes come from the provider.
pub const DECLINE_CODE_LEN_MAX: usize = 64;

/// Operator names are logins or e-mail addresses.
pub const OPERATOR_LEN_MAX: usize = 64;

/// Longest caller-supplied id of a capture, void or refund (a merchant's refund id), in bytes.
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// Captures, voids and refunds one key may carry: bounds a state's size and the fold's work.
pub const OPERATIONS_MAX: u32 = 64;

/// Operator notes explain a manual resolution; a paragraph is enough.
pub const NOTE_LEN_MAX: usize = 1_000;

/// Largest payload of one journal record. The largest event (an intent with full metadata)
/// is about 30 KiB; 64 KiB leaves room for format growth while bounding every read buffer.
pub const RECORD_PAYLOAD_LEN_MAX: usize = 64 * 1024;

/// Smallest segment a journal may be configured with. Tiny segments exist for tests that
/// exercise rollover; an append that cannot fit an empty segment is refused with
/// `Error::TooLarge`, so the default segment size must hold the largest atomic append.
pub const SEGMENT_LEN_MIN: u64 = 4 * 1024;

/// Largest segment: bounds the memory `verify` and recovery use for one segment.
pub const SEGMENT_LEN_MAX: u64 = 1024 * 1024 * 1024;

/// Default segment size.
pub const SEGMENT_LEN_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest record sequence: 2^62. At a million appends a second that lasts 146,000 years, and
/// it keeps every sum of sequences far from overflowing; a header claiming more is corrupt.
pub const SEQUENCE_MAX: u64 = 1 << 62;

/// Records one caller may append atomically. The ledger needs two (intent + first attempt).
pub const ATOMIC_RECORDS_MAX: usize = 8;

/// Appends that may wait for a group commit at once; more callers block (back-pressure).
pub const COMMIT_QUEUE_LEN_MAX: usize = 4_096;

/// Durable commits that may wait for the index applier; a writer that finds this many waits
/// before appending (back-pressure), so the backlog and the overlay stay below this plus the
/// number of concurrent writers.
pub const INDEX_BACKLOG_MAX: usize = 16_384;

/// The smallest page cache the index may be given (1 MiB).
pub const INDEX_CACHE_BYTES_MIN: u64 = 1 << 20;

/// The default page cache of the index (128 MiB). Measured on a ledger of a million keys
/// (`cargo bench --bench scale`, `docs/performance.md`): random lookups 84–91k/s with 64 MiB,
/// 103–120k/s with 128, 134k/s with 160; peak memory of the process writing them 349, 471 and
/// 526 MiB. 128 MiB is the largest that keeps that process within 512 MB.
pub const INDEX_CACHE_BYTES_DEFAULT: u64 = 128 << 20;

/// The largest page cache the index may be given (64 GiB).
pub const INDEX_CACHE_BYTES_MAX: u64 = 64 << 30;

/// Commits the index applier applies in one atomic batch at most.
pub const INDEX_APPLY_BATCH_MAX: usize = 4_096;

/// Bytes one group commit writes at most (one commit frame, header included). A power cut can
/// damage only the last, unsynced commit, so recovery looks for torn bytes at most this far past
/// the journal's end. The largest atomic append (8 records of 64 KiB) fits many times over.
pub const COMMIT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Records written by one group commit; bounds the size of one write.
pub const COMMIT_BATCH_RECORDS_MAX: usize = 1_024;

/// Keys the reconciler examines in one `run_once`.
pub const RECONCILE_BATCH_MAX: usize = 1_000;

/// Queries per unknown attempt before it is escalated to manual review, at most.
pub const QUERIES_MAX: u32 = 100;

/// Shortest provider visibility delay a "not found" policy accepts. A provider needs time to show
/// a charge in its query API; a zero delay would trust the first "not found", which is the
/// seeds' retry-on-timeout double charge. Policies are stored in events, so this bound is part of
/// the event format and is never raised.
pub const VISIBILITY_DELAY_MS_MIN: u64 = 1_000;

/// Longest visibility delay: a week. An unknown key waits at least this long before "not found"
/// is trusted; beyond a week a settlement file settles it anyway.
pub const VISIBILITY_DELAY_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// Largest extra margin for clock skew between the ledger and the provider: an hour.
pub const CLOCK_SKEW_MARGIN_MS_MAX: u64 = 3_600_000;

/// Consecutive "not found" answers a policy requires, at least: zero would trust silence.
pub const NOT_FOUND_ANSWERS_MIN: u32 = 1;

/// Shortest ticket lease. A ticket's provider call that outlives its lease is taken over by the
/// reconciler (the attempt becomes unknown); shorter than a second would take over live calls.
pub const TICKET_LEASE_MS_MIN: u64 = 1_000;

/// Longest ticket lease: a day. A hung provider call pins its key in flight at most this long.
pub const TICKET_LEASE_MS_MAX: u64 = 24 * 3_600_000;

/// Default ticket lease: two minutes, several times any provider deadline worth using.
pub const TICKET_LEASE_MS_DEFAULT: u64 = 120_000;

/// Unknown attempts whose monotonic wait one process tracks. An attempt beyond it is tracked
/// once there is room; until then "not found" is never trusted for it (safe, only slower).
pub const UNKNOWN_WAITS_MAX: usize = 1_000_000;

/// Longest wait between two queries of one unknown key: a day.
pub const BACKOFF_MS_MAX: u64 = 24 * 3_600_000;

/// Keys one list call returns at most.
pub const LIST_LIMIT_MAX: usize = 10_000;

const _: () = assert!(PROVIDER_REFERENCE_LEN_MAX <= 64);
const _: () = assert!(VISIBILITY_DELAY_MS_MIN > 0 && NOT_FOUND_ANSWERS_MIN > 0);
const _: () = assert!(TICKET_LEASE_MS_MIN <= TICKET_LEASE_MS_DEFAULT);
const _: () = assert!(TICKET_LEASE_MS_DEFAULT <= TICKET_LEASE_MS_MAX);
const _: () = assert!(ATTEMPTS_MAX < 100, "provider references reserve two digits");
const _: () =
    assert!(SEGMENT_LEN_DEFAULT > (2 * ATOMIC_RECORDS_MAX * RECORD_PAYLOAD_LEN_MAX) as u64);
const _: () = assert!(COMMIT_BYTES_MAX > 2 * ATOMIC_RECORDS_MAX * (52 + RECORD_PAYLOAD_LEN_MAX));
