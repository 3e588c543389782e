//! Every statement the store sends, in one place, prepared once per connection.
//!
//! Invariant: an append is ONE statement (one round trip, its own implicit transaction): the
//! compare (`bump`: the key row's version moves from `expected` to `expected + n` only if it is
//! still `expected`) and every write that depends on it (events, references, lists) are
//! data-modifying CTEs joined to `bump`, so they all happen or none does. A writer that lost
//! the race finds `bump` empty — PostgreSQL re-checks the version after waiting for the
//! winner's row lock (`UPDATE`), or finds the winner's row (`INSERT ... ON CONFLICT DO
//! NOTHING`) — and writes nothing.

/// The statements, each prepared lazily on a connection and kept with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sql {
    /// A key's version and events. `$1` key.
    Load,
    /// Append to a new key (expected version 0).
    AppendNew,
    /// Append to a key at `expected` > 0.
    AppendNext,
    /// What an append whose answer was lost left behind.
    ReadBack,
    /// A page of keys in one list, with their events.
    List,
    /// Keys whose next query time has come.
    Due,
    /// The key of a provider reference.
    KeyOf,
    /// Ends a session that lost its connection, if it is still there.
    EndSession,
}

impl Sql {
    /// How many statements there are: the size of a connection's cache.
    pub(crate) const COUNT: usize = 8;

    /// The statement's place in a connection's cache.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The statement's text.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Sql::Load => LOAD,
            Sql::AppendNew => APPEND_NEW,
            Sql::AppendNext => APPEND_NEXT,
            Sql::ReadBack => READ_BACK,
            Sql::List => LIST,
            Sql::Due => DUE,
            Sql::KeyOf => KEY_OF,
            Sql::EndSession => END_SESSION,
        }
    }
}

const _: () = assert!(Sql::EndSession as usize + 1 == Sql::COUNT);

/// One snapshot: the key row and its events.
const LOAD: &str = "\
SELECT k.version, e.seq, e.event
FROM payledger_keys AS k
JOIN payledger_events AS e ON e.key = k.key
WHERE k.key = $1::text
ORDER BY e.seq";

/// The writes that follow from `bump`: nothing unless it moved the version. Data-modifying
/// CTEs always run to completion whether or not the final query reads them.
macro_rules! append_tail {
    () => {
        "appended AS (
    INSERT INTO payledger_events (key, seq, event, append_token)
    SELECT bump.key, $2::bigint + e.ordinality, e.event, $6::bytea
    FROM bump, unnest($5::bytea[]) WITH ORDINALITY AS e (event, ordinality)
    RETURNING seq
), referenced AS (
    INSERT INTO payledger_references (reference, key)
    SELECT r.reference, bump.key FROM bump, unnest($7::text[]) AS r (reference)
    RETURNING reference
), unlisted AS (
    DELETE FROM payledger_key_phases AS p USING bump
    WHERE p.key = bump.key AND NOT (p.phase = ANY ($8::text[]))
    RETURNING p.phase
), listed AS (
    INSERT INTO payledger_key_phases (phase, key)
    SELECT l.phase, bump.key FROM bump, unnest($8::text[]) AS l (phase)
    ON CONFLICT (phase, key) DO NOTHING
    RETURNING phase
)
SELECT count(*) FROM appended"
    };
}

/// `$1` key, `$2` expected version (0), `$3` new version, `$4` next query time, `$5` the
/// encoded events, `$6` the append token, `$7` the references issued, `$8` the key's lists
/// after. Answers the number of events written: all of them, or 0 when another writer won.
const APPEND_NEW: &str = concat!(
    "WITH bump AS (
    INSERT INTO payledger_keys AS k (key, version, next_query_at)
    VALUES ($1::text, $3::bigint, $4::bigint)
    ON CONFLICT (key) DO NOTHING
    RETURNING k.key
), ",
    append_tail!()
);

/// As [`APPEND_NEW`], for a key that has `$2` events.
const APPEND_NEXT: &str = concat!(
    "WITH bump AS (
    UPDATE payledger_keys AS k SET version = $3::bigint, next_query_at = $4::bigint
    WHERE k.key = $1::text AND k.version = $2::bigint
    RETURNING k.key
), ",
    append_tail!()
);

/// One snapshot: the key's version (NULL for no row) and its events in `($2, $3]`, with the
/// tokens of the appends that wrote them. Always at least one row.
const READ_BACK: &str = "\
SELECT k.version, e.seq, e.event, e.append_token
FROM (SELECT $1::text COLLATE \"C\" AS key) AS q
LEFT JOIN payledger_keys AS k ON k.key = q.key
LEFT JOIN payledger_events AS e ON e.key = q.key AND e.seq > $2::bigint AND e.seq <= $3::bigint
ORDER BY e.seq";

/// `$1` phase name, `$2` the key to start after ('' for the first page: every key is longer),
/// `$3` the page size. One snapshot: the keys and their events, by key then seq.
const LIST: &str = "\
SELECT p.key, e.seq, e.event
FROM (
    SELECT key FROM payledger_key_phases
    WHERE phase = $1::text AND key > $2::text
    ORDER BY key
    LIMIT $3::bigint
) AS p
JOIN payledger_events AS e ON e.key = p.key
ORDER BY p.key, e.seq";

/// `$1` now, `$2` how many.
const DUE: &str = "\
SELECT key FROM payledger_keys
WHERE next_query_at <= $1::bigint
ORDER BY next_query_at, key
LIMIT $2::bigint";

const KEY_OF: &str = "SELECT key FROM payledger_references WHERE reference = $1::text";

/// `$1` the session's process id, `$2` its start in microseconds: the pair names one session
/// for the server's lifetime (a process id alone may be reused). Answers a row while the
/// session is there (and signals it to end); none once it has ended — and a session ends only
/// after its transaction has committed or rolled back.
const END_SESSION: &str = "\
SELECT pg_terminate_backend(pid)
FROM pg_stat_activity
WHERE pid = $1::integer
  AND (extract(epoch FROM backend_start) * 1000000)::bigint = $2::bigint";

/// The session's identity and the settings durability depends on. Run once per connection.
pub(crate) const SESSION: &str = "\
SELECT pg_backend_pid(),
       (SELECT (extract(epoch FROM backend_start) * 1000000)::bigint
        FROM pg_stat_activity WHERE pid = pg_backend_pid()),
       current_setting('fsync'),
       current_setting('synchronous_commit')";
