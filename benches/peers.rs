//! Side by side, in one process and one run: payledger against the disk's raw limit and against
//! the idempotency-key protocol on SQLite and PostgreSQL.
//!
//! ```text
//! cargo bench --bench peers                          # full: ~3 minutes on 2 cores
//! scripts/pg-throwaway.sh cargo bench --bench peers  # with PostgreSQL as well: ~4 minutes
//! cargo bench --bench peers -- --callers 1,8 --seconds 1 --rounds 1 --preload 10000
//! cargo bench --bench peers -- --smoke               # CI: a few seconds, no figures
//! ```
//!
//! The full run is 1, 8, 32 and 64 callers, 3 s per contender, 3 rounds, 100,000 preloaded keys.
//! `--smoke` (also `--test`, and a run without cargo's `--bench`, as `cargo test --benches` makes
//! it, like criterion's test mode) runs the raw contenders, payledger and SQLite at 1 and 8
//! callers for 0.3 s over 1,000 keys, checks that each completed charges, and prints
//! `smoke: ok`.
//!
//! # What is measured
//!
//! A *charge* is what a payment service does for one new idempotency key: make the request
//! durable, call the provider, make the provider's answer durable. The provider answers at once
//! (a success is built in memory), so what is left is the store's cost. N callers (threads)
//! charge in a closed loop, each charge with a fresh key, for a fixed window; a charge counts if
//! it completed inside the window, and its latency covers both durable steps. Keys are always
//! fresh, so no contender takes its "key seen before" path (a client's retry). Before any
//! window, every store holds `--preload` finished keys, so lookups do not run against an empty
//! store: payledger gets them through `begin` and `record`, the SQL stores in one bulk
//! transaction (the same rows the protocol leaves), the journal as appended records.
//!
//! The *raw limit* is what the disk allows when nothing but the two durable writes of a charge
//! is done: no model, no index, no lookup, no per-key lock. Two contenders measure it:
//!
//! - `raw-group`: two appends of a 200-byte record per charge through
//!   [`payledger::journal::Journal`], shared by all callers, so concurrent appends share one
//!   `fdatasync` (group commit). This is payledger's own durable floor (framing, crc and chain
//!   hash included): payledger makes the same two appends, so its ratio to this row is what the
//!   model, the index and the gate cost.
//! - `raw-file`: no group commit: each caller writes a 200-byte record into its own
//!   preallocated file and calls `fdatasync`, twice per charge. At one caller this is the floor
//!   of any store that makes both steps durable: two sequential syncs.
//!
//! The others run the full protocol:
//!
//! - `payledger`: `Ledger::begin` (intent and attempt durable), the provider, `Ledger::record`
//!   (outcome durable), default configuration.
//! - `sqlite`: the idempotency-key protocol of Stripe as written up by Brandur Leach
//!   (<https://brandur.org/idempotency-keys>): transaction 1 inserts the key row at recovery
//!   point `started` (locked, with the request parameters; the unique index refuses a second
//!   row for the key) and the pending charge; transaction 2, after the provider, marks the charge
//!   succeeded and the key `finished` with the stored response. WAL, `synchronous=FULL`, one
//!   connection per caller, `BEGIN IMMEDIATE`, a 5 s busy timeout. SQLite admits one writer at a
//!   time and its busy handler sleeps and retries rather than queueing, so some callers may
//!   complete nothing in a window: they are counted as *starved*, and a charge that gave up on
//!   the busy timeout is counted as *busy* (and not as a charge).
//! - `postgres`: the same protocol on PostgreSQL (read committed, one connection per caller),
//!   only when `PAYLEDGER_BENCH_PG_URL` is set (`scripts/pg-throwaway.sh` sets it).
//!
//! # Fairness
//!
//! Disks drift over minutes (caches, wear levelling, a neighbour's load), so rounds are
//! interleaved: for each concurrency, for each round, every contender runs once, and each round
//! starts with a different contender. Each figure printed is the median of its rounds. All files
//! live in temporary directories on the same file system, removed at the end. After the run, the
//! SQL contenders are checked to hold exactly as many finished keys as charges completed, so the
//! bench cannot report a protocol that skipped its second transaction.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use payledger::journal::{Journal, JournalConfig};
use payledger::{
    AccountId, Amount, Begin, Currency, CustomerRef, Description, IdempotencyKey, IndexEngine,
    Intent, Ledger, LedgerConfig, Metadata, Outcome, TransactionId,
};
use rusqlite::{ErrorCode, OptionalExtension, TransactionBehavior, params};
use tempfile::TempDir;

/// The environment variable naming the PostgreSQL server, as a libpq-style connection string.
const PG_URL_VAR: &str = "PAYLEDGER_BENCH_PG_URL";
/// Bytes of each raw record: a small event.
const RECORD_LEN: usize = 200;
/// Each raw-file caller cycles through a preallocated file this long, so that a sync never has
/// to write file-size metadata.
const RAW_FILE_LEN: u64 = 1 << 20;
/// Threads that fill the stores before measuring: enough for group commit to batch.
const PRELOAD_THREADS: usize = 32;
/// SQLite's busy timeout: how long a caller waits for the write lock before the charge fails.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The one request every charge makes, in the ledger's types and as the SQL stores keep it.
const AMOUNT_MINOR: u32 = 4_999;
const CURRENCY: &str = "EUR";
const ACCOUNT: &str = "acct_bench";
const CUSTOMER: &str = "cus_bench";
const DESCRIPTION: &str = "benchmark order";
const REQUEST_PARAMS: &str = concat!(
    r#"{"amount":4999,"currency":"EUR","account":"acct_bench","#,
    r#""customer":"cus_bench","description":"benchmark order"}"#
);
/// Brandur's keys are unique per user; every request here comes from one.
const USER_ID: i64 = 1;

// ---------------------------------------------------------------------------------------------
// Options

/// What to run, from the command line (cargo passes everything after `--`).
#[derive(Debug)]
struct Options {
    /// Only check that every contender runs; print no figures.
    smoke: bool,
    /// False when `cargo bench NAME` named another bench: then this one does nothing.
    selected: bool,
    callers: Vec<usize>,
    window: Duration,
    rounds: usize,
    preload: u64,
    /// payledger's index engine.
    engine: IndexEngine,
    postgres_url: Option<String>,
    /// The arguments as given, for the command line printed in the report.
    args: Vec<String>,
}

const USAGE: &str = "usage: cargo bench --bench peers -- [--smoke|--test] [--callers 1,8,32,64] \
                     [--seconds S] [--rounds R] [--preload N] [--engine sled|fjall]
PostgreSQL joins when PAYLEDGER_BENCH_PG_URL is set (scripts/pg-throwaway.sh sets it)";

impl Options {
    /// Like a criterion bench, this one runs only its smoke check unless cargo says `--bench`
    /// (`cargo test --benches` does not), and `--test` means `--smoke`.
    fn parse(args: &[String], postgres_url: Option<String>) -> Result<Self, String> {
        let benching = args.iter().any(|arg| arg == "--bench");
        let smoke = !benching || args.iter().any(|arg| arg == "--smoke" || arg == "--test");
        let mut options = if smoke {
            Self::smoke_defaults()
        } else {
            Self::full_defaults(postgres_url)
        };
        let mut filters = Vec::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| rest.next().cloned())
                    .ok_or(format!("{flag} needs a value"))
            };
            match flag {
                // cargo adds `--bench` when it runs a bench without a harness.
                "--bench" | "--smoke" | "--test" => {}
                "--callers" => options.callers = parse_callers(&value()?)?,
                "--seconds" => options.window = parse_seconds(&value()?)?,
                "--rounds" => options.rounds = parse_count(flag, &value()?)?,
                "--preload" => options.preload = parse_count(flag, &value()?)?,
                "--engine" => options.engine = parse_engine(&value()?)?,
                // `cargo bench NAME` hands NAME to every bench as a filter.
                filter if !filter.starts_with('-') => filters.push(filter),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        options.selected = filters.is_empty() || filters.iter().any(|f| "peers".contains(f));
        options.args = args
            .iter()
            .filter(|arg| *arg != "--bench")
            .cloned()
            .collect();
        Ok(options)
    }

    fn full_defaults(postgres_url: Option<String>) -> Self {
        Self {
            smoke: false,
            selected: true,
            callers: vec![1, 8, 32, 64],
            window: Duration::from_secs(3),
            rounds: 3,
            preload: 100_000,
            engine: IndexEngine::default(),
            postgres_url,
            args: Vec::new(),
        }
    }

    /// Small enough for CI on two cores; PostgreSQL is left out even when configured.
    fn smoke_defaults() -> Self {
        Self {
            smoke: true,
            selected: true,
            callers: vec![1, 8],
            window: Duration::from_millis(300),
            rounds: 1,
            preload: 1_000,
            engine: IndexEngine::default(),
            postgres_url: None,
            args: Vec::new(),
        }
    }

    fn callers_max(&self) -> usize {
        self.callers.iter().copied().max().unwrap_or(1)
    }
}

fn parse_callers(text: &str) -> Result<Vec<usize>, String> {
    let callers = text
        .split(',')
        .map(|part| parse_count::<usize>("--callers", part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if callers.is_empty() {
        return Err("--callers needs at least one count".into());
    }
    Ok(callers)
}

fn parse_engine(text: &str) -> Result<IndexEngine, String> {
    match text {
        "sled" => Ok(IndexEngine::Sled),
        "fjall" => Ok(IndexEngine::Fjall),
        other => Err(format!("--engine wants sled or fjall, not {other:?}")),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!("--seconds wants a positive number, not {text:?}"))
}

/// A positive whole number.
fn parse_count<T: std::str::FromStr + Default + PartialEq>(
    flag: &str,
    text: &str,
) -> Result<T, String> {
    text.parse::<T>()
        .ok()
        .filter(|count| *count != T::default())
        .ok_or(format!(
            "{flag} wants a positive whole number, not {text:?}"
        ))
}

// ---------------------------------------------------------------------------------------------
// The contenders

/// A store that charges can be made against.
trait Store: Sync {
    fn name(&self) -> &'static str;

    /// One caller's own handle on the store (a connection, a file), made before its window
    /// opens, so that connecting is not measured.
    fn session(&self, caller: usize) -> Box<dyn Session + '_>;

    /// After a window: finishes the work the window's charges left in the background (the
    /// index applier's backlog), so that its CPU is counted in this contender's window, not in
    /// the next one's.
    fn settle(&self) {}

    /// After the run: `completed` charges (the preload included) finished; does the store agree?
    fn check(&self, _completed: u64) -> Result<(), String> {
        Ok(())
    }
}

/// One caller's handle.
trait Session {
    /// One charge for the fresh key number `n`, both durable steps around the provider call.
    fn charge(&mut self, n: u64) -> Result<(), Busy>;
}

/// The store gave up waiting for its write lock; the charge did not complete.
struct Busy;

/// The key a client sends for its `n`th order.
fn key_text(n: u64) -> String {
    format!("order-{n}")
}

/// The zero-delay provider: every charge succeeds at once, with this transaction id.
fn provider_charge(n: u64) -> String {
    format!("ch_{n}")
}

/// The response the SQL stores keep for a finished key.
fn response_body(transaction_id: &str) -> String {
    format!(
        "{{\"id\":\"{transaction_id}\",\"status\":\"succeeded\",\
         \"amount\":{AMOUNT_MINOR},\"currency\":\"{CURRENCY}\"}}"
    )
}

/// A record of `RECORD_LEN` bytes for step 1 or 2 of charge `n`.
fn raw_record(n: u64, step: u8) -> Vec<u8> {
    let mut record = format!("{} step {step}", key_text(n)).into_bytes();
    record.resize(RECORD_LEN, b' ');
    record
}

/// Runs `work(i)` for every `i` below `count` on `PRELOAD_THREADS` threads.
fn in_parallel(count: u64, work: impl Fn(u64) + Sync) {
    let next = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..PRELOAD_THREADS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    work(i);
                }
            });
        }
    });
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A busy SQLite becomes [`Busy`]; any other error is a broken bench.
fn sqlite_busy(what: &'static str) -> impl FnOnce(rusqlite::Error) -> Busy {
    move |error| {
        if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
            Busy
        } else {
            panic!("sqlite: {what}: {error}")
        }
    }
}

// --- raw-group ---

/// The journal alone: the raw limit with group commit.
struct RawGroup {
    journal: Journal,
    _dir: TempDir,
}

impl RawGroup {
    fn open(preload: u64) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the journal");
        let (journal, _) =
            Journal::open(dir.path(), JournalConfig::default()).expect("open the journal");
        // Two records per preloaded charge, eight to an append (the journal's atomic maximum).
        in_parallel(preload.div_ceil(4), |batch| {
            let records = (0..4)
                .flat_map(|i| [raw_record(batch * 4 + i, 1), raw_record(batch * 4 + i, 2)])
                .collect();
            journal.append(records).expect("preload the journal");
        });
        Self { journal, _dir: dir }
    }
}

impl Store for RawGroup {
    fn name(&self) -> &'static str {
        "raw-group"
    }

    fn session(&self, _caller: usize) -> Box<dyn Session + '_> {
        Box::new(RawGroupSession(&self.journal))
    }
}

struct RawGroupSession<'a>(&'a Journal);

impl Session for RawGroupSession<'_> {
    fn charge(&mut self, n: u64) -> Result<(), Busy> {
        self.0
            .append(vec![raw_record(n, 1)])
            .expect("append the first record");
        let _transaction_id = provider_charge(n);
        self.0
            .append(vec![raw_record(n, 2)])
            .expect("append the second record");
        Ok(())
    }
}

// --- raw-file ---

/// A preallocated file per caller and two `fdatasync`s per charge: the raw limit without group
/// commit. Nothing is looked up, so there is nothing to preload.
struct RawFile {
    files: Vec<File>,
    _dir: TempDir,
}

impl RawFile {
    fn open(callers: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the raw files");
        let zeros = vec![0u8; 64 * 1024];
        let files = (0..callers)
            .map(|caller| {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(dir.path().join(format!("caller-{caller}")))
                    .expect("create a raw file");
                for offset in (0..RAW_FILE_LEN).step_by(zeros.len()) {
                    file.write_all_at(&zeros, offset)
                        .expect("preallocate a raw file");
                }
                file.sync_all().expect("sync a preallocated raw file");
                file
            })
            .collect();
        Self { files, _dir: dir }
    }
}

impl Store for RawFile {
    fn name(&self) -> &'static str {
        "raw-file"
    }

    fn session(&self, caller: usize) -> Box<dyn Session + '_> {
        Box::new(RawFileSession {
            file: &self.files[caller],
            offset: 0,
        })
    }
}

struct RawFileSession<'a> {
    file: &'a File,
    offset: u64,
}

impl RawFileSession<'_> {
    fn write_durably(&mut self, record: &[u8]) {
        let len = record.len() as u64;
        if self.offset + len > RAW_FILE_LEN {
            self.offset = 0;
        }
        self.file
            .write_all_at(record, self.offset)
            .expect("write a raw record");
        self.file.sync_data().expect("sync a raw record");
        self.offset += len;
    }
}

impl Session for RawFileSession<'_> {
    fn charge(&mut self, n: u64) -> Result<(), Busy> {
        self.write_durably(&raw_record(n, 1));
        let _transaction_id = provider_charge(n);
        self.write_durably(&raw_record(n, 2));
        Ok(())
    }
}

// --- payledger ---

struct Payledger {
    ledger: Ledger,
    intent: Intent,
    _dir: TempDir,
}

impl Payledger {
    /// Preloads through the public API: the only way keys get into a ledger.
    fn open(preload: u64, index_engine: IndexEngine) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the ledger");
        let config = LedgerConfig {
            index_engine,
            ..LedgerConfig::default()
        };
        let (ledger, _) = Ledger::open(dir.path(), config).expect("open the ledger");
        let store = Self {
            ledger,
            intent: intent(),
            _dir: dir,
        };
        in_parallel(preload, |n| store.charge(n));
        store
    }

    fn charge(&self, n: u64) {
        let key = IdempotencyKey::new(key_text(n)).expect("a valid idempotency key");
        let Begin::Attempt(ticket) = self.ledger.begin(&key, &self.intent).expect("begin") else {
            panic!("a fresh key must be allowed an attempt")
        };
        let outcome = Outcome::Succeeded {
            transaction_id: TransactionId::new(provider_charge(n)).expect("a valid transaction id"),
            amount: self.intent.amount,
        };
        self.ledger.record(ticket, outcome).expect("record");
    }
}

fn intent() -> Intent {
    Intent {
        amount: Amount::new(u64::from(AMOUNT_MINOR)).expect("a valid amount"),
        currency: Currency::new(CURRENCY).expect("a valid currency"),
        account: AccountId::new(ACCOUNT).expect("a valid account"),
        customer: CustomerRef::new(CUSTOMER).expect("a valid customer"),
        description: Some(Description::new(DESCRIPTION).expect("a valid description")),
        metadata: Metadata::default(),
    }
}

impl Store for Payledger {
    fn name(&self) -> &'static str {
        "payledger"
    }

    fn settle(&self) {
        self.ledger.wait_indexed().expect("the index catches up");
    }

    fn session(&self, _caller: usize) -> Box<dyn Session + '_> {
        Box::new(PayledgerSession(self))
    }
}

struct PayledgerSession<'a>(&'a Payledger);

impl Session for PayledgerSession<'_> {
    fn charge(&mut self, n: u64) -> Result<(), Busy> {
        self.0.charge(n);
        Ok(())
    }
}

// --- sqlite ---

/// Brandur's `idempotency_keys` table, and the charge (his `rides`) created under a key.
const SQLITE_SCHEMA: &str = "
    CREATE TABLE idempotency_keys (
        id              INTEGER PRIMARY KEY,
        created_at      INTEGER NOT NULL,
        idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) <= 100),
        last_run_at     INTEGER NOT NULL,
        locked_at       INTEGER,
        request_method  TEXT    NOT NULL,
        request_params  TEXT    NOT NULL,
        request_path    TEXT    NOT NULL,
        response_code   INTEGER,
        response_body   TEXT,
        recovery_point  TEXT    NOT NULL,
        user_id         INTEGER NOT NULL,
        UNIQUE (user_id, idempotency_key)
    );
    CREATE TABLE charges (
        id                 INTEGER PRIMARY KEY,
        idempotency_key_id INTEGER NOT NULL UNIQUE REFERENCES idempotency_keys (id),
        amount_minor       INTEGER NOT NULL,
        currency           TEXT    NOT NULL,
        status             TEXT    NOT NULL,
        transaction_id     TEXT
    );";

/// Transaction 1: the key row, started and locked; no row comes back if the key exists.
const SQLITE_INSERT_KEY: &str = "
    INSERT INTO idempotency_keys (created_at, idempotency_key, last_run_at, locked_at,
                                  request_method, request_params, request_path, recovery_point,
                                  user_id)
    VALUES (?1, ?2, ?1, ?1, 'POST', ?3, '/charges', 'started', ?4)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id";
const SQLITE_INSERT_CHARGE: &str = "
    INSERT INTO charges (idempotency_key_id, amount_minor, currency, status)
    VALUES (?1, ?2, ?3, 'pending')";
/// Transaction 2: the provider's answer, and the key finished with its response.
const SQLITE_FINISH_CHARGE: &str = "
    UPDATE charges SET status = 'succeeded', transaction_id = ?2 WHERE idempotency_key_id = ?1";
const SQLITE_FINISH_KEY: &str = "
    UPDATE idempotency_keys
    SET last_run_at = ?2, locked_at = NULL, recovery_point = 'finished', response_code = 201,
        response_body = ?3
    WHERE id = ?1";
const SQLITE_PRELOAD_KEY: &str = "
    INSERT INTO idempotency_keys (created_at, idempotency_key, last_run_at, request_method,
                                  request_params, request_path, recovery_point, user_id,
                                  response_code, response_body)
    VALUES (?1, ?2, ?1, 'POST', ?3, '/charges', 'finished', ?4, 201, ?5)";
const SQLITE_PRELOAD_CHARGE: &str = "
    INSERT INTO charges (idempotency_key_id, amount_minor, currency, status, transaction_id)
    VALUES (last_insert_rowid(), ?1, ?2, 'succeeded', ?3)";

struct Sqlite {
    path: PathBuf,
    _dir: TempDir,
}

impl Sqlite {
    /// Creates the database in WAL mode and loads the finished keys in one transaction: the
    /// state the protocol would have left, without spending minutes on it.
    fn open(preload: u64) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for sqlite");
        let path = dir.path().join("payments.sqlite");
        let mut conn = rusqlite::Connection::open(&path).expect("create the sqlite database");
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .expect("switch sqlite to WAL");
        assert_eq!(mode, "wal", "sqlite refused WAL mode");
        conn.execute_batch(SQLITE_SCHEMA)
            .expect("create the sqlite tables");
        let tx = conn.transaction().expect("begin the sqlite preload");
        {
            let mut key = tx.prepare(SQLITE_PRELOAD_KEY).expect("prepare the preload");
            let mut charge = tx
                .prepare(SQLITE_PRELOAD_CHARGE)
                .expect("prepare the preload");
            let now = now_unix_ms();
            for n in 0..preload {
                let transaction_id = provider_charge(n);
                key.execute(params![
                    now,
                    key_text(n),
                    REQUEST_PARAMS,
                    USER_ID,
                    response_body(&transaction_id)
                ])
                .expect("preload a sqlite key");
                charge
                    .execute(params![AMOUNT_MINOR, CURRENCY, transaction_id])
                    .expect("preload a sqlite charge");
            }
        }
        tx.commit().expect("commit the sqlite preload");
        Self { path, _dir: dir }
    }

    fn connect(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.path).expect("open a sqlite connection");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("set synchronous=FULL");
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT)
            .expect("set the busy timeout");
        conn
    }
}

impl Store for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn session(&self, _caller: usize) -> Box<dyn Session + '_> {
        Box::new(SqliteSession(self.connect()))
    }

    fn check(&self, completed: u64) -> Result<(), String> {
        let finished: i64 = self
            .connect()
            .query_row(
                "SELECT count(*) FROM idempotency_keys WHERE recovery_point = 'finished'",
                [],
                |row| row.get(0),
            )
            .map_err(|error| format!("count finished keys: {error}"))?;
        check_finished("sqlite", finished, completed)
    }
}

struct SqliteSession(rusqlite::Connection);

impl SqliteSession {
    /// Transaction 1; returns the key row's id.
    fn start(&mut self, n: u64) -> Result<i64, Busy> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_busy("begin transaction 1"))?;
        let key_id: Option<i64> = tx
            .prepare_cached(SQLITE_INSERT_KEY)
            .and_then(|mut insert| {
                insert
                    .query_row(
                        params![now_unix_ms(), key_text(n), REQUEST_PARAMS, USER_ID],
                        |row| row.get(0),
                    )
                    .optional()
            })
            .map_err(sqlite_busy("insert the key"))?;
        let Some(key_id) = key_id else {
            panic!("sqlite: key {n} existed before its first request")
        };
        tx.prepare_cached(SQLITE_INSERT_CHARGE)
            .and_then(|mut insert| insert.execute(params![key_id, AMOUNT_MINOR, CURRENCY]))
            .map_err(sqlite_busy("insert the charge"))?;
        tx.commit().map_err(sqlite_busy("commit transaction 1"))?;
        Ok(key_id)
    }

    /// Transaction 2.
    fn finish(&mut self, key_id: i64, transaction_id: &str) -> Result<(), Busy> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_busy("begin transaction 2"))?;
        tx.prepare_cached(SQLITE_FINISH_CHARGE)
            .and_then(|mut update| update.execute(params![key_id, transaction_id]))
            .map_err(sqlite_busy("finish the charge"))?;
        tx.prepare_cached(SQLITE_FINISH_KEY)
            .and_then(|mut update| {
                update.execute(params![
                    key_id,
                    now_unix_ms(),
                    response_body(transaction_id)
                ])
            })
            .map_err(sqlite_busy("finish the key"))?;
        tx.commit().map_err(sqlite_busy("commit transaction 2"))
    }
}

impl Session for SqliteSession {
    fn charge(&mut self, n: u64) -> Result<(), Busy> {
        let key_id = self.start(n)?;
        let transaction_id = provider_charge(n);
        self.finish(key_id, &transaction_id)
    }
}

fn check_finished(store: &str, finished: i64, completed: u64) -> Result<(), String> {
    if u64::try_from(finished) == Ok(completed) {
        Ok(())
    } else {
        Err(format!(
            "{store} holds {finished} finished keys, but {completed} charges completed"
        ))
    }
}

// --- postgres ---
//
// The protocol (tables, statements, the two transactions) is `common/brandur_pg.rs`, shared
// with `store-postgres/benches/pg.rs`; the schema it creates is dropped at the end.

#[path = "common/brandur_pg.rs"]
mod brandur_pg;

use brandur_pg::PG_SCHEMA;

struct Postgres {
    url: String,
    version: String,
}

impl Postgres {
    fn open(url: &str, preload: u64) -> Self {
        let mut store = Self {
            url: url.to_string(),
            version: String::new(),
        };
        let mut client = store.connect();
        brandur_pg::create(&mut client, preload).expect("create and preload the postgres tables");
        store.version = client
            .query_one("SHOW server_version", &[])
            .and_then(|row| row.try_get(0))
            .expect("ask the server's version");
        store
    }

    fn connect(&self) -> postgres::Client {
        let mut client =
            postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to postgres");
        client
            .batch_execute(&format!("SET search_path TO {PG_SCHEMA}"))
            .expect("set the search path");
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let dropped =
            postgres::Client::connect(&self.url, postgres::NoTls).and_then(|mut client| {
                client.batch_execute(&format!("DROP SCHEMA {PG_SCHEMA} CASCADE"))
            });
        if let Err(error) = dropped {
            eprintln!("postgres: could not drop schema {PG_SCHEMA}: {error}");
        }
    }
}

impl Store for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn session(&self, _caller: usize) -> Box<dyn Session + '_> {
        let mut client = self.connect();
        let statements =
            brandur_pg::Statements::prepare(&mut client).expect("prepare the statements");
        Box::new(PostgresSession { client, statements })
    }

    fn check(&self, completed: u64) -> Result<(), String> {
        let finished = brandur_pg::finished(&mut self.connect())
            .map_err(|error| format!("count finished keys: {error}"))?;
        check_finished("postgres", finished, completed)
    }
}

struct PostgresSession {
    client: postgres::Client,
    statements: brandur_pg::Statements,
}

impl Session for PostgresSession {
    fn charge(&mut self, n: u64) -> Result<(), Busy> {
        let key_id = self
            .statements
            .start(&mut self.client, n)
            .expect("transaction 1");
        let Some(key_id) = key_id else {
            panic!("postgres: key {n} existed before its first request")
        };
        let transaction_id = provider_charge(n);
        self.statements
            .finish(&mut self.client, key_id, &transaction_id)
            .expect("transaction 2");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// A store and the charges made against it.
struct Contender {
    store: Box<dyn Store>,
    /// The next fresh key number; keys below it were used (the preload included).
    next_key: AtomicU64,
    /// Charges completed, inside a window or not, the preload included.
    completed: AtomicU64,
}

impl Contender {
    fn new(store: Box<dyn Store>, preload: u64) -> Self {
        Self {
            store,
            next_key: AtomicU64::new(preload),
            completed: AtomicU64::new(preload),
        }
    }
}

/// What one caller did in one window.
#[derive(Default)]
struct CallerLog {
    /// Latency of every charge completed inside the window, in microseconds.
    latencies_us: Vec<u64>,
    /// Charges completed after the window closed (not counted, but in the store).
    late: u64,
    busy: u64,
}

/// One contender at one concurrency in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Charges completed inside the window.
    charges: u64,
    charges_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    starved: u64,
    busy: u64,
    /// This process's CPU time (user and system, every thread) from the start line until the
    /// contender settled after the window (its background work done; sessions made and dropped
    /// outside it), per charge completed, in microseconds; `None` where `/proc/self/stat` cannot
    /// be read.
    cpu_us: Option<f64>,
}

/// Linux reports a process's CPU times in `USER_HZ` ticks, 100 a second on x86 and ARM (the
/// ABI's fixed unit, not the kernel's `CONFIG_HZ`; `getconf CLK_TCK` says it).
const USER_HZ: f64 = 100.0;

/// This process's CPU time so far (user and system, every thread), in seconds, from
/// `/proc/self/stat`; `None` elsewhere than Linux.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) in parentheses; utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th of these.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// Runs `callers` closed-loop callers against the contender for one window.
fn measure(contender: &Contender, callers: usize, window: Duration) -> Sample {
    // Sessions are made before the start line and dropped after the finish line: the CPU
    // reading spans only the charges and the contender's settling.
    let start = Barrier::new(callers + 1);
    let finish = Barrier::new(callers + 1);
    let mut cpu_s = None;
    let logs: Vec<CallerLog> = thread::scope(|scope| {
        let handles: Vec<_> = (0..callers)
            .map(|caller| {
                let (start, finish) = (&start, &finish);
                scope.spawn(move || run_caller(contender, caller, start, finish, window))
            })
            .collect();
        start.wait();
        let cpu_before = process_cpu_s();
        finish.wait();
        contender.store.settle();
        cpu_s = process_cpu_s()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        finish.wait();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a caller panicked"))
            .collect()
    });
    let completed: u64 = logs
        .iter()
        .map(|log| log.latencies_us.len() as u64 + log.late)
        .sum();
    contender.completed.fetch_add(completed, Ordering::Relaxed);
    let mut sample = Sample::from_logs(&logs, window);
    // The reading paid for the charges that finished late as well.
    sample.cpu_us = cpu_s
        .filter(|_| completed > 0)
        .map(|cpu_s| cpu_s * 1e6 / completed as f64);
    sample
}

/// One caller: its session is made before the start line, then it charges until its window
/// closes; the charge in flight at that moment finishes but does not count.
fn run_caller(
    contender: &Contender,
    caller: usize,
    start: &Barrier,
    finish: &Barrier,
    window: Duration,
) -> CallerLog {
    let mut session = contender.store.session(caller);
    let mut log = CallerLog::default();
    start.wait();
    let deadline = Instant::now() + window;
    loop {
        let started = Instant::now();
        if started >= deadline {
            // Past the finish line, then held until the CPU reading is taken.
            finish.wait();
            finish.wait();
            return log;
        }
        let n = contender.next_key.fetch_add(1, Ordering::Relaxed);
        let result = session.charge(n);
        let finished = Instant::now();
        match result {
            Ok(()) if finished <= deadline => log.latencies_us.push(micros(finished - started)),
            Ok(()) => log.late += 1,
            Err(Busy) => log.busy += 1,
        }
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

impl Sample {
    fn from_logs(logs: &[CallerLog], window: Duration) -> Self {
        let mut latencies: Vec<u64> = logs
            .iter()
            .flat_map(|log| log.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        Self {
            charges: latencies.len() as u64,
            charges_per_s: latencies.len() as f64 / window.as_secs_f64(),
            p50_us: percentile(&latencies, 500),
            p99_us: percentile(&latencies, 990),
            p999_us: percentile(&latencies, 999),
            max_us: latencies.last().copied().unwrap_or(0),
            starved: logs
                .iter()
                .filter(|log| log.latencies_us.is_empty())
                .count() as u64,
            busy: logs.iter().map(|log| log.busy).sum(),
            cpu_us: None,
        }
    }

    /// Each field the median of its rounds.
    fn median_of(rounds: &[Sample]) -> Self {
        let field = |get: fn(&Sample) -> u64| {
            median(rounds.iter().map(|s| get(s) as f64).collect()).round() as u64
        };
        Self {
            charges: field(|s| s.charges),
            charges_per_s: median(rounds.iter().map(|s| s.charges_per_s).collect()),
            p50_us: field(|s| s.p50_us),
            p99_us: field(|s| s.p99_us),
            p999_us: field(|s| s.p999_us),
            max_us: field(|s| s.max_us),
            starved: field(|s| s.starved),
            busy: field(|s| s.busy),
            cpu_us: rounds
                .iter()
                .map(|s| s.cpu_us)
                .collect::<Option<Vec<f64>>>()
                .map(median),
        }
    }
}

/// The nearest-rank percentile of sorted samples, `per_mille` of 1000 (0 for no samples).
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000);
    sorted.get(rank.saturating_sub(1)).copied().unwrap_or(0)
}

/// The median; for an even count, the mean of the two middle values.
fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "a median of no rounds");
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn print_header(options: &Options, postgres_version: Option<&str>) {
    let command = if options.args.is_empty() {
        "cargo bench --bench peers".to_string()
    } else {
        format!("cargo bench --bench peers -- {}", options.args.join(" "))
    };
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("## payledger side by side (benches/peers.rs)\n");
    println!("- date: {}", utc_now());
    println!("- machine: {cores} cores, {}", cpu_model());
    println!(
        "- files: temporary directories under {}",
        std::env::temp_dir().display()
    );
    println!("- command: `{command}`");
    println!("- payledger's index engine: {:?}", options.engine);
    println!(
        "- each contender {:.1} s per concurrency per round, {} round(s) interleaved, median of \
         rounds; {} finished keys preloaded per store",
        options.window.as_secs_f64(),
        options.rounds,
        grouped(options.preload)
    );
    println!(
        "- sqlite {} (bundled): WAL, synchronous=FULL, BEGIN IMMEDIATE, busy timeout {} s",
        rusqlite::version(),
        SQLITE_BUSY_TIMEOUT.as_secs()
    );
    match (postgres_version, &options.postgres_url) {
        (Some(version), Some(url)) => {
            println!("- postgres {version}: read committed, server at `{url}`");
        }
        _ => println!("- postgres: not run (set {PG_URL_VAR}, or use scripts/pg-throwaway.sh)"),
    }
    println!(
        "- starved: callers that completed no charge in the window (their waits are in no \
         latency column); busy: charges that gave up on SQLite's busy timeout"
    );
    println!(
        "- CPU µs/charge: this process's CPU time (user and system, all its threads) from the \
         start line until the contender has settled after its window (payledger: its index \
         caught up), per charge; fjall's background flushes and compactions may still fall \
         partly outside it; PostgreSQL's server runs in other processes, so its figure is the \
         client's alone"
    );
    println!(
        "- ratios: payledger's figure over the peer's (above 1 is better for charges/s, below 1 \
         for latency)"
    );
    println!();
}

fn print_table(callers: usize, names: &[&str], summaries: &[Sample]) {
    println!("### {callers} caller(s)\n");
    println!(
        "| contender | charges/s | p50 µs | p99 µs | p99.9 µs | max µs | starved | busy | CPU µs/charge |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, s) in names.iter().zip(summaries) {
        let cpu = s.cpu_us.map_or("n/a".to_string(), |us| format!("{us:.1}"));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {cpu} |",
            grouped(s.charges_per_s.round() as u64),
            grouped(s.p50_us),
            grouped(s.p99_us),
            grouped(s.p999_us),
            grouped(s.max_us),
            s.starved,
            s.busy
        );
    }
    println!();
    print_ratios(callers, names, summaries);
    println!();
}

/// payledger against each other contender: throughput, and latency at the median and the tail.
fn print_ratios(callers: usize, names: &[&str], summaries: &[Sample]) {
    let find = |wanted: &str| {
        names
            .iter()
            .position(|name| *name == wanted)
            .map(|i| summaries[i])
    };
    let Some(ours) = find("payledger") else {
        return;
    };
    for peer in ["raw-group", "raw-file", "sqlite", "postgres"] {
        let Some(theirs) = find(peer) else { continue };
        let note = match (peer, callers) {
            ("raw-file", 1) => " (the raw limit at one caller: two sequential syncs)",
            ("raw-group", 2..) => " (the raw limit with group commit)",
            _ => "",
        };
        println!(
            "- payledger / {peer}: {} charges/s, {} p50, {} p99{note}",
            ratio(ours.charges_per_s, theirs.charges_per_s),
            ratio(ours.p50_us as f64, theirs.p50_us as f64),
            ratio(ours.p99_us as f64, theirs.p99_us as f64),
        );
        if let (Some(ours), Some(theirs), false) = (ours.cpu_us, theirs.cpu_us, peer == "postgres")
        {
            println!("  - CPU per charge: payledger {ours:.1} µs, {peer} {theirs:.1} µs");
        }
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "n/a".to_string()
    }
}

/// `1234567` as `1,234,567`, as docs/performance.md writes figures.
fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "cpu model unknown".to_string())
}

/// The current UTC time, RFC 3339 to the second.
fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

// ---------------------------------------------------------------------------------------------
// The run

/// Opens and preloads every store; also returns the PostgreSQL server's version when it is one
/// of them.
fn open_contenders(options: &Options) -> (Vec<Contender>, Option<String>) {
    let preload = options.preload;
    let contender = |store: Box<dyn Store>| Contender::new(store, preload);
    let mut contenders = vec![
        contender(Box::new(timed("raw-group", preload, || {
            RawGroup::open(preload)
        }))),
        contender(Box::new(timed("raw-file", preload, || {
            RawFile::open(options.callers_max())
        }))),
        contender(Box::new(timed("payledger", preload, || {
            Payledger::open(preload, options.engine)
        }))),
        contender(Box::new(timed("sqlite", preload, || Sqlite::open(preload)))),
    ];
    let mut postgres_version = None;
    if let Some(url) = &options.postgres_url {
        let postgres = timed("postgres", preload, || Postgres::open(url, preload));
        postgres_version = Some(postgres.version.clone());
        contenders.push(contender(Box::new(postgres)));
    }
    (contenders, postgres_version)
}

/// Opens one store, saying on stderr how long its preload took.
fn timed<S>(name: &str, preload: u64, open: impl FnOnce() -> S) -> S {
    eprintln!("preloading {name} with {preload} keys ...");
    let started = Instant::now();
    let store = open();
    eprintln!("  {name} ready in {:.1} s", started.elapsed().as_secs_f64());
    store
}

/// Every round of every contender at `callers`, interleaved; the median of each.
fn run_concurrency(options: &Options, contenders: &[Contender], callers: usize) -> Vec<Sample> {
    let mut rounds: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    for round in 0..options.rounds {
        for turn in 0..contenders.len() {
            // Each round starts with the next contender, so none always runs first.
            let i = (round + turn) % contenders.len();
            let sample = measure(&contenders[i], callers, options.window);
            eprintln!(
                "callers {callers}, round {}/{}: {} completed {} charges",
                round + 1,
                options.rounds,
                contenders[i].store.name(),
                sample.charges
            );
            rounds[i].push(sample);
        }
    }
    rounds.iter().map(|r| Sample::median_of(r)).collect()
}

fn main() -> ExitCode {
    let postgres_url = std::env::var(PG_URL_VAR).ok().filter(|url| !url.is_empty());
    let options = match Options::parse(&std::env::args().skip(1).collect::<Vec<_>>(), postgres_url)
    {
        Ok(options) => options,
        Err(error) => {
            eprintln!("peers: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !options.selected {
        return ExitCode::SUCCESS;
    }
    let (contenders, postgres_version) = open_contenders(&options);
    let names: Vec<&str> = contenders.iter().map(|c| c.store.name()).collect();
    if !options.smoke {
        print_header(&options, postgres_version.as_deref());
    }
    let mut failures = Vec::new();
    for &callers in &options.callers {
        let summaries = run_concurrency(&options, &contenders, callers);
        if options.smoke {
            failures.extend(smoke_failures(callers, &names, &summaries));
        } else {
            print_table(callers, &names, &summaries);
        }
    }
    for contender in &contenders {
        let completed = contender.completed.load(Ordering::Relaxed);
        if let Err(error) = contender.store.check(completed) {
            failures.push(error);
        }
    }
    report_end(options.smoke, &failures)
}

/// In smoke mode a contender fails if it completed no charge at all.
fn smoke_failures(callers: usize, names: &[&str], summaries: &[Sample]) -> Vec<String> {
    names
        .iter()
        .zip(summaries)
        .filter(|(_, s)| s.charges == 0)
        .map(|(name, _)| format!("{name} completed no charge with {callers} caller(s)"))
        .collect()
}

fn report_end(smoke: bool, failures: &[String]) -> ExitCode {
    for failure in failures {
        eprintln!("peers: {failure}");
    }
    match (smoke, failures.is_empty()) {
        (true, true) => {
            println!("smoke: ok");
            ExitCode::SUCCESS
        }
        (false, true) => ExitCode::SUCCESS,
        (true, false) => {
            println!("smoke: FAILED");
            ExitCode::FAILURE
        }
        (false, false) => ExitCode::FAILURE,
    }
}
