//! [`PgStore`]: the [`EventStore`] seam on PostgreSQL.
//!
//! Invariants (the seam's, `payledger::store`):
//! - **compare-and-append**: an append is one statement in its own transaction (`sql.rs`): the
//!   key row's version moves from `expected` to `expected + n` and the `n` events are inserted
//!   at `expected + 1 ..`, or nothing is written and the answer is `Raced`;
//! - **durable before `Done`**: `Done` is answered only after the server acknowledged the
//!   commit (connections refuse `fsync = off`), or after reading back the append's own rows
//!   (`resolve.rs`) when the acknowledgement was lost;
//! - **the fold on load**: `load` and `list` fold the stored events (the library's codec and
//!   `apply`) and check their sequence against the key's version; they never read a stored state;
//! - lists, the schedule and the references are derived data, written by the append's own
//!   statement from the writer's `after` state, `next_query_at` and events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use payledger::journal::codec::{decode_event, encode_event};
use payledger::limits::{ATOMIC_RECORDS_MAX, LIST_LIMIT_MAX};
use payledger::store::{Append, Appended, EventStore, StoredKey};
use payledger::{
    EventKind, IdempotencyKey, OperationStep, PaymentState, PhaseKind, ProviderReference,
    UnixMillis, apply,
};
use postgres::Row;
use postgres::error::SqlState;
use postgres::types::ToSql;

use crate::conn::{Conn, Pool, Token};
use crate::error::{PgError, certainly_rolled_back, io};
use crate::schema::{self, SCHEMA_VERSION};
use crate::sql::Sql;

/// How a [`PgStore`] keeps connections and resolves lost appends.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections kept open between calls. Default 8.
    pub idle_max: usize,
    /// How long an append whose connection was lost before its answer keeps trying to read
    /// back what it left (reconnecting, ending the lost session) before it answers
    /// [`PgError::OutcomeUnknown`]. Default 30 s: longer than a server restart, so that a
    /// restart leaves no outcome unknown.
    pub resolve_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            idle_max: 8,
            resolve_timeout: Duration::from_secs(30),
        }
    }
}

/// What happened to appends whose connection was lost before their answer arrived, since the
/// store was connected ([`PgStore::resolutions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolutions {
    /// Appends whose connection was lost before their answer.
    pub lost: u64,
    /// ... found written by reading back (their own rows, by their token): `Done`.
    pub found_written: u64,
    /// ... found beaten by another writer: `Raced`.
    pub found_raced: u64,
    /// ... found not written (after the lost session ended), and tried once more.
    pub retried: u64,
    /// ... answered [`PgError::NotWritten`]: the retry lost its connection too.
    pub not_written: u64,
    /// ... answered [`PgError::OutcomeUnknown`]: the deadline passed.
    pub unknown: u64,
}

#[derive(Default)]
pub(crate) struct ResolutionCounters {
    pub(crate) lost: AtomicU64,
    pub(crate) found_written: AtomicU64,
    pub(crate) found_raced: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) not_written: AtomicU64,
    pub(crate) unknown: AtomicU64,
}

/// payledger's event store on PostgreSQL: several processes (or hosts) share one database and
/// keep the ledger's promise between them through [`payledger::store::StoreLedger`].
///
/// ```no_run
/// use payledger::store::{StoreConfig, StoreLedger};
/// use payledger_postgres::PgStore;
///
/// let store = PgStore::connect("host=/run/postgresql user=payments dbname=payments")?;
/// store.migrate()?;
/// let ledger = StoreLedger::new(store, StoreConfig::default());
/// # Ok::<(), payledger::Error>(())
/// ```
pub struct PgStore {
    pub(crate) pool: Pool,
    pub(crate) options: PgOptions,
    pub(crate) resolutions: ResolutionCounters,
    #[cfg(feature = "testing")]
    pub(crate) faults: crate::faults::Faults,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("options", &self.options)
            .field("resolutions", &self.resolutions())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects with a libpq-style connection string (`host=/run/postgresql dbname=payments`)
    /// or URL (`postgresql://user@host/payments`) and the default [`PgOptions`]. No TLS: use
    /// a Unix socket or a trusted network.
    ///
    /// # Errors
    /// As [`PgStore::connect_with`]; an unparsable string is [`PgError::Connect`].
    pub fn connect(params: &str) -> payledger::Result<Self> {
        let config = params.parse::<postgres::Config>().map_err(|e| {
            io(
                "parse the PostgreSQL connection string",
                PgError::Connect(e),
            )
        })?;
        Self::connect_with(config, PgOptions::default())
    }

    /// Connects with `config`: opens one connection now, so that a wrong address or a server
    /// that would not make commits durable fails here, and checks that the database's schema
    /// is not newer than this crate's. Call [`PgStore::migrate`] before the first use.
    ///
    /// A `config` without a connect timeout gets 10 s, so that resolving a lost append keeps
    /// to [`PgOptions::resolve_timeout`]. Over TCP, also set `keepalives_idle` and
    /// `tcp_user_timeout`: a statement on a connection whose peer vanished waits for them.
    ///
    /// # Errors
    /// `Error::Io` with [`PgError::Connect`], [`PgError::NotDurable`] or
    /// [`PgError::SchemaTooNew`].
    pub fn connect_with(
        mut config: postgres::Config,
        options: PgOptions,
    ) -> payledger::Result<Self> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let context = "connect to PostgreSQL (payledger_schema_version)";
        let mut conn = Conn::open(&config).map_err(|e| io(context, e))?;
        if let Some(found) = schema::version(conn.client()).map_err(|e| io(context, e))?
            && found > SCHEMA_VERSION
        {
            return Err(io(
                context,
                PgError::SchemaTooNew {
                    found,
                    known: SCHEMA_VERSION,
                },
            ));
        }
        let store = Self {
            pool: Pool::new(config, options.idle_max),
            options,
            resolutions: ResolutionCounters::default(),
            #[cfg(feature = "testing")]
            faults: crate::faults::Faults::default(),
        };
        store.pool.give(conn);
        Ok(store)
    }

    /// Creates or upgrades the schema to [`SCHEMA_VERSION`] (`migrations/*.sql`, in one
    /// transaction); idempotent. Returns the version the database was at (0 for none).
    ///
    /// # Errors
    /// `Error::Io` with [`PgError::SchemaTooNew`] for a database this crate does not know, or
    /// the server's error (nothing is applied).
    pub fn migrate(&self) -> payledger::Result<i32> {
        let context = "migrate the payledger schema (payledger_schema_version)";
        let mut conn = self.pool.take().map_err(|e| io(context, e))?;
        let found = schema::migrate(conn.client()).map_err(|e| io(context, e))?;
        self.pool.give(conn);
        Ok(found)
    }

    /// The database's schema version, `None` before [`PgStore::migrate`].
    ///
    /// # Errors
    /// `Error::Io` with the server's error.
    pub fn schema_version(&self) -> payledger::Result<Option<i32>> {
        let context = "read the payledger schema version (payledger_schema_version)";
        let mut conn = self.pool.take().map_err(|e| io(context, e))?;
        let version = schema::version(conn.client()).map_err(|e| io(context, e))?;
        self.pool.give(conn);
        Ok(version)
    }

    /// The options.
    pub fn options(&self) -> &PgOptions {
        &self.options
    }

    /// What happened to appends that lost their connection, so far.
    pub fn resolutions(&self) -> Resolutions {
        let r = &self.resolutions;
        Resolutions {
            lost: r.lost.load(Ordering::Relaxed),
            found_written: r.found_written.load(Ordering::Relaxed),
            found_raced: r.found_raced.load(Ordering::Relaxed),
            retried: r.retried.load(Ordering::Relaxed),
            not_written: r.not_written.load(Ordering::Relaxed),
            unknown: r.unknown.load(Ordering::Relaxed),
        }
    }

    /// The fault switches (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn faults(&self) -> &crate::faults::Faults {
        &self.faults
    }

    /// Runs a read on a pooled connection; if its connection failed (not an `ERROR` answer),
    /// once more on a new one: a read can be repeated, and a pooled connection may have died
    /// with its server's restart.
    fn read(&self, sql: Sql, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        let mut conn = self.pool.take()?;
        match query(&mut conn, sql, params) {
            Ok(rows) => {
                self.pool.give(conn);
                Ok(rows)
            }
            Err(error) if certainly_rolled_back(&error) => {
                self.pool.give(conn);
                Err(PgError::Statement(error))
            }
            Err(_) => {
                drop(conn);
                self.pool.clear();
                let mut conn = self.pool.open()?;
                let rows = query(&mut conn, sql, params).map_err(PgError::Statement)?;
                self.pool.give(conn);
                Ok(rows)
            }
        }
    }

    /// Runs the append's statement on `conn` (with the test-only faults).
    pub(crate) fn execute(&self, conn: &mut Conn, request: &Request, token: &Token) -> Tried {
        #[cfg(feature = "testing")]
        if self.faults.take_lose_before() {
            return Tried::Lost(crate::faults::simulated(
                "connection lost before the append was sent",
            ));
        }
        let tried = execute(conn, request, token);
        #[cfg(feature = "testing")]
        if matches!(tried, Tried::Applied(_)) && self.faults.take_lose_after() {
            return Tried::Lost(crate::faults::simulated(
                "connection lost after COMMIT, before its reply",
            ));
        }
        tried
    }
}

fn query(
    conn: &mut Conn,
    sql: Sql,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, postgres::Error> {
    let statement = conn.statement(sql)?;
    conn.client().query(&statement, params)
}

/// One append, encoded for its statement.
pub(crate) struct Request {
    pub(crate) key: String,
    pub(crate) expected: i64,
    pub(crate) version_after: i64,
    next_query_at: Option<i64>,
    pub(crate) events: Vec<Vec<u8>>,
    references: Vec<String>,
    lists: Vec<&'static str>,
}

impl Request {
    fn new(append: &Append<'_>) -> Result<Self, PgError> {
        let invalid = |reason: String| Err(PgError::InvalidAppend { reason });
        if append.events.is_empty() {
            return invalid("no events".into());
        }
        if append.events.len() > ATOMIC_RECORDS_MAX {
            return invalid(format!(
                "{} events, more than the {ATOMIC_RECORDS_MAX} one append may hold",
                append.events.len()
            ));
        }
        if let Some(other) = append
            .events
            .iter()
            .map(|e| &e.key)
            .chain([&append.after.key])
            .find(|k| *k != append.key)
        {
            return invalid(format!("an event or the state after is about key {other}"));
        }
        let too_large = || PgError::InvalidAppend {
            reason: format!("version {} is too large", append.expected_version),
        };
        let expected = i64::try_from(append.expected_version).map_err(|_| too_large())?;
        let version_after = i64::try_from(append.events.len())
            .ok()
            .and_then(|n| expected.checked_add(n))
            .ok_or_else(too_large)?;
        let events = append
            .events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PgError::Encode)?;
        let references = append
            .events
            .iter()
            .filter_map(|event| match &event.kind {
                EventKind::AttemptStarted {
                    provider_reference, ..
                }
                | EventKind::OperationStepped {
                    step:
                        OperationStep::AttemptStarted {
                            provider_reference, ..
                        },
                    ..
                } => Some(provider_reference.as_str().to_owned()),
                _ => None,
            })
            .collect();
        // A time past what a bigint holds is never: the key is not scheduled.
        let next_query_at = append.next_query_at.and_then(|at| i64::try_from(at.0).ok());
        Ok(Self {
            key: append.key.as_str().to_owned(),
            expected,
            version_after,
            next_query_at,
            events,
            references,
            lists: append
                .after
                .listed_as()
                .into_iter()
                .map(PhaseKind::name)
                .collect(),
        })
    }

    /// The answer for a statement that wrote `appended` events.
    pub(crate) fn answer(&self, appended: i64) -> Result<Appended, PgError> {
        if appended == 0 {
            return Ok(Appended::Raced);
        }
        if usize::try_from(appended).ok() == Some(self.events.len()) {
            return Ok(Appended::Done {
                version: self.version_after.unsigned_abs(),
            });
        }
        Err(PgError::Inconsistent {
            key: self.key.clone(),
            detail: format!("an append of {} events wrote {appended}", self.events.len()),
        })
    }

    /// The answer for a statement the server refused (nothing was written): a unique
    /// violation of a key's version or sequence is another writer's win.
    pub(crate) fn refused(&self, error: postgres::Error) -> Result<Appended, PgError> {
        let constraint = error
            .as_db_error()
            .filter(|db| *db.code() == SqlState::UNIQUE_VIOLATION)
            .and_then(|db| db.constraint());
        match constraint {
            Some("payledger_keys_pkey" | "payledger_events_pkey") => Ok(Appended::Raced),
            Some("payledger_references_pkey") => Err(PgError::ReferenceTaken(error)),
            _ => Err(PgError::Statement(error)),
        }
    }
}

/// What running an append's statement did.
pub(crate) enum Tried {
    /// The server answered: this many events were written (all, or none).
    Applied(i64),
    /// The server refused it with an `ERROR`: nothing was written.
    Refused(postgres::Error),
    /// It was never sent (its statement could not be prepared): nothing was written.
    NotSent(postgres::Error),
    /// The connection failed before the answer: it may or may not have committed.
    Lost(Box<dyn std::error::Error + Send + Sync>),
}

fn execute(conn: &mut Conn, request: &Request, token: &Token) -> Tried {
    let sql = if request.expected == 0 {
        Sql::AppendNew
    } else {
        Sql::AppendNext
    };
    let statement = match conn.statement(sql) {
        Ok(statement) => statement,
        Err(error) => return Tried::NotSent(error),
    };
    let token: &[u8] = token;
    let result = conn.client().query_one(
        &statement,
        &[
            &request.key,
            &request.expected,
            &request.version_after,
            &request.next_query_at,
            &request.events,
            &token,
            &request.references,
            &request.lists,
        ],
    );
    match result.and_then(|row| row.try_get::<_, i64>(0)) {
        Ok(appended) => Tried::Applied(appended),
        Err(error) if certainly_rolled_back(&error) => Tried::Refused(error),
        Err(error) => Tried::Lost(Box::new(error)),
    }
}

/// Folds one key's `(seq, event)` rows, checking that they are 1, 2, ... without gaps.
fn fold<'a>(
    key: &IdempotencyKey,
    rows: impl Iterator<Item = (i64, &'a [u8])>,
) -> Result<(PaymentState, i64), PgError> {
    let mut state = PaymentState::new(key.clone());
    let mut count = 0;
    for (seq, bytes) in rows {
        count += 1;
        if seq != count {
            return Err(PgError::Inconsistent {
                key: key.to_string(),
                detail: format!("event {seq} where event {count} was expected"),
            });
        }
        let event_error = |cause| PgError::Event {
            key: key.to_string(),
            seq,
            cause,
        };
        let event = decode_event(bytes).map_err(event_error)?;
        state = apply(&state, &event).map_err(|rejection| event_error(rejection.into()))?;
    }
    Ok((state, count))
}

impl EventStore for PgStore {
    fn load(&self, key: &IdempotencyKey) -> payledger::Result<Option<StoredKey>> {
        let context = || format!("load key {key} from payledger_events");
        let load = || -> Result<Option<StoredKey>, PgError> {
            let rows = self.read(Sql::Load, &[&key.as_str()])?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let version: i64 = first.try_get(0).map_err(PgError::Statement)?;
            let events = rows
                .iter()
                .map(|row| Ok((row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<Vec<(i64, &[u8])>, postgres::Error>>()
                .map_err(PgError::Statement)?;
            let (state, count) = fold(key, events.into_iter())?;
            if count != version {
                return Err(PgError::Inconsistent {
                    key: key.to_string(),
                    detail: format!("version {version} but {count} events"),
                });
            }
            Ok(Some(StoredKey {
                state,
                version: version.unsigned_abs(),
            }))
        };
        load().map_err(|e| io(context(), e))
    }

    fn append(&self, append: Append<'_>) -> payledger::Result<Appended> {
        let context = || {
            format!(
                "append to key {} at version {} (payledger_events, payledger_keys)",
                append.key, append.expected_version
            )
        };
        let run = || -> Result<Appended, PgError> {
            let request = Request::new(&append)?;
            let mut conn = self.pool.take()?;
            let token = conn.next_token();
            match self.execute(&mut conn, &request, &token) {
                Tried::Applied(appended) => {
                    self.pool.give(conn);
                    request.answer(appended)
                }
                Tried::Refused(error) => {
                    self.pool.give(conn);
                    request.refused(error)
                }
                Tried::NotSent(error) => Err(PgError::Statement(error)),
                Tried::Lost(cause) => {
                    let session = conn.session();
                    drop(conn);
                    self.pool.clear();
                    self.resolve(&request, token, session, cause)
                }
            }
        };
        run().map_err(|e| io(context(), e))
    }

    fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> payledger::Result<Vec<PaymentState>> {
        let context = || format!("list keys {} (payledger_key_phases)", phase.name());
        let list = || -> Result<Vec<PaymentState>, PgError> {
            let limit = i64::try_from(limit.min(LIST_LIMIT_MAX)).unwrap_or(i64::MAX);
            let after = after.map_or("", IdempotencyKey::as_str);
            let rows = self.read(Sql::List, &[&phase.name(), &after, &limit])?;
            let rows = rows
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                .collect::<Result<Vec<(&str, i64, &[u8])>, postgres::Error>>()
                .map_err(PgError::Statement)?;
            let mut states = Vec::new();
            for group in rows.chunk_by(|a, b| a.0 == b.0) {
                let name = group[0].0;
                let key = IdempotencyKey::new(name).map_err(|e| PgError::Inconsistent {
                    key: name.to_owned(),
                    detail: e.to_string(),
                })?;
                let (state, _) = fold(&key, group.iter().map(|&(_, seq, event)| (seq, event)))?;
                // The list is the writer's `after`; the fold decides what is returned.
                if state.listed_as().contains(&phase) {
                    states.push(state);
                }
            }
            Ok(states)
        };
        list().map_err(|e| io(context(), e))
    }

    fn key_of(&self, reference: &ProviderReference) -> payledger::Result<Option<IdempotencyKey>> {
        let context = || format!("find the key of reference {reference} (payledger_references)");
        let find = || -> Result<Option<IdempotencyKey>, PgError> {
            let rows = self.read(Sql::KeyOf, &[&reference.as_str()])?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let name: &str = row.try_get(0).map_err(PgError::Statement)?;
            IdempotencyKey::new(name)
                .map(Some)
                .map_err(|e| PgError::Inconsistent {
                    key: name.to_owned(),
                    detail: e.to_string(),
                })
        };
        find().map_err(|e| io(context(), e))
    }

    fn due(&self, now: UnixMillis, limit: usize) -> payledger::Result<Vec<IdempotencyKey>> {
        let context = || format!("list keys due at {} (payledger_keys)", now.0);
        let due = || -> Result<Vec<IdempotencyKey>, PgError> {
            let now = i64::try_from(now.0).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit.min(LIST_LIMIT_MAX)).unwrap_or(i64::MAX);
            let rows = self.read(Sql::Due, &[&now, &limit])?;
            rows.iter()
                .map(|row| {
                    let name: &str = row.try_get(0).map_err(PgError::Statement)?;
                    IdempotencyKey::new(name).map_err(|e| PgError::Inconsistent {
                        key: name.to_owned(),
                        detail: e.to_string(),
                    })
                })
                .collect()
        };
        due().map_err(|e| io(context(), e))
    }
}
