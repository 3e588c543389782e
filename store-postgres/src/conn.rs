//! A connection with what the store keeps beside it (its server session's identity, its
//! prepared statements, its append counter), and the pool of idle ones.
//!
//! Invariants:
//! - a connection is opened only to a server that makes a commit durable before answering
//!   (`fsync` on; `synchronous_commit = off` is raised to `on` for the session), so that `Done`
//!   means durable;
//! - a connection goes back to the pool only after a call that ended with the server's answer
//!   (a success or an `ERROR`): one whose connection failed is dropped;
//! - an append token names one append for the server's lifetime: the session (process id and
//!   start time, which no two sessions share) and a counter the session never repeats.

use std::sync::{Mutex, PoisonError};

use postgres::{Client, NoTls, Statement};

use crate::error::PgError;
use crate::sql::{SESSION, Sql};

/// A server session: its process id and its start in microseconds since the epoch. The pair
/// names one session for the server's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    pub(crate) started_us: i64,
}

/// The bytes that name one append: session process id (4), session start (8), counter (8),
/// big-endian.
pub(crate) type Token = [u8; 20];

/// One open connection.
pub(crate) struct Conn {
    client: Client,
    session: Session,
    statements: [Option<Statement>; Sql::COUNT],
    appends: u64,
}

impl Conn {
    /// Opens a connection and checks that the server makes commits durable.
    ///
    /// # Errors
    /// [`PgError::Connect`] if the connection or its first query failed; [`PgError::NotDurable`]
    /// for a server running with `fsync = off`.
    pub(crate) fn open(config: &postgres::Config) -> Result<Self, PgError> {
        let mut client = config.connect(NoTls).map_err(PgError::Connect)?;
        let row = client.query_one(SESSION, &[]).map_err(PgError::Connect)?;
        let pid: i32 = row.try_get(0).map_err(PgError::Connect)?;
        let started_us: Option<i64> = row.try_get(1).map_err(PgError::Connect)?;
        let fsync: String = row.try_get(2).map_err(PgError::Connect)?;
        let synchronous_commit: String = row.try_get(3).map_err(PgError::Connect)?;
        let Some(started_us) = started_us else {
            return Err(PgError::NoSessionIdentity);
        };
        if fsync != "on" {
            return Err(PgError::NotDurable {
                setting: "fsync",
                value: fsync,
            });
        }
        if synchronous_commit == "off" {
            client
                .batch_execute("SET synchronous_commit = on")
                .map_err(PgError::Connect)?;
        }
        Ok(Self {
            client,
            session: Session { pid, started_us },
            statements: Default::default(),
            appends: 0,
        })
    }

    /// The client.
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The server session behind the connection.
    pub(crate) fn session(&self) -> Session {
        self.session
    }

    /// `sql`, prepared on this connection (once).
    ///
    /// # Errors
    /// The driver's, if the statement could not be prepared: it was not executed.
    pub(crate) fn statement(&mut self, sql: Sql) -> Result<Statement, postgres::Error> {
        if let Some(statement) = &self.statements[sql.index()] {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql.text())?;
        self.statements[sql.index()] = Some(statement.clone());
        Ok(statement)
    }

    /// A token no other append of any session of this server carries.
    pub(crate) fn next_token(&mut self) -> Token {
        self.appends += 1;
        let mut token = [0; 20];
        token[..4].copy_from_slice(&self.session.pid.to_be_bytes());
        token[4..12].copy_from_slice(&self.session.started_us.to_be_bytes());
        token[12..].copy_from_slice(&self.appends.to_be_bytes());
        token
    }
}

/// Idle connections, reused by the next call.
pub(crate) struct Pool {
    config: postgres::Config,
    idle: Mutex<Vec<Conn>>,
    idle_max: usize,
}

impl Pool {
    /// An empty pool for `config`.
    pub(crate) fn new(config: postgres::Config, idle_max: usize) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            idle_max,
        }
    }

    /// An idle connection, or a new one.
    ///
    /// # Errors
    /// As [`Conn::open`].
    pub(crate) fn take(&self) -> Result<Conn, PgError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open(),
        }
    }

    /// A new connection, never a pooled one (which may have died with the one that failed).
    ///
    /// # Errors
    /// As [`Conn::open`].
    pub(crate) fn open(&self) -> Result<Conn, PgError> {
        Conn::open(&self.config)
    }

    /// Drops every idle connection: one failed, and the others probably went with it (a
    /// server restart ends them all), so none of them is handed to the next call.
    pub(crate) fn clear(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
    }

    /// Keeps `conn` for the next call, unless enough are idle or it is closed.
    pub(crate) fn give(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(conn);
        }
    }
}
