//! An append whose connection was lost before its answer arrived (the COMMIT's reply lost, the
//! session ended by the server, a network failure): resolved by reading back, never by
//! guessing.
//!
//! On a new connection, the store reads the key's version and the rows at
//! `expected + 1 ..= expected + n`, with the token of the append that wrote them:
//! - the rows are this append's own (its events' bytes, its token) → `Done`;
//! - the version moved past `expected` otherwise → `Raced`: the statement, even if it were
//!   still running somewhere, can no longer win the compare;
//! - the version is still `expected` → not written *yet*: the lost session may still be
//!   running the statement, so it is ended first (`pg_terminate_backend`, then wait until the
//!   server no longer lists it — a session is listed until its transaction has committed or
//!   rolled back) and the key is read again. Still `expected`: the append did not happen, and
//!   is tried once more on the new connection (the compare-and-append makes that safe). If the
//!   retry loses its connection too, the same resolution runs for it; not written again →
//!   [`PgError::NotWritten`].
//!
//! Invariant: every answer is established by rows read after the lost statement can no longer
//! commit; until then (server down, the session still listed) the store keeps trying, and at
//! [`PgOptions::resolve_timeout`](crate::PgOptions) it answers [`PgError::OutcomeUnknown`].
//! It assumes the server read back is the one that ran the statement (a failover must fence the
//! old primary, as failover tools do).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use payledger::store::Appended;

use crate::conn::{Conn, Session, Token};
use crate::error::PgError;
use crate::sql::Sql;
use crate::store::{PgStore, Request, Tried};

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the read-back found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The append's own rows.
    Ours,
    /// Another writer's: the version moved past `expected`.
    Theirs,
    /// The key is still at `expected`.
    Absent,
}

/// Where a resolution stands between rounds.
struct Resolution {
    /// The tokens of this append's statements (the first, and the retry's).
    tokens: Vec<Token>,
    /// The session whose statement's outcome is unknown.
    suspect: Session,
    /// Whether the retry was made.
    retried: bool,
    /// The last connection failure of a statement of this append.
    cause: Cause,
}

/// What one round established.
enum Round {
    /// The answer.
    Known(Result<Appended, PgError>),
    /// The retry lost its connection too: resolve again, about it.
    RetryLost,
}

impl PgStore {
    /// Establishes what an append whose connection was lost did; see the module docs.
    pub(crate) fn resolve(
        &self,
        request: &Request,
        token: Token,
        session: Session,
        cause: Cause,
    ) -> Result<Appended, PgError> {
        self.resolutions.lost.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "testing")]
        self.faults.run_before_read_back();
        let deadline = Instant::now() + self.options.resolve_timeout;
        let mut resolution = Resolution {
            tokens: vec![token],
            suspect: session,
            retried: false,
            cause,
        };
        let mut pause = Duration::from_millis(10);
        loop {
            let failure = match self.round(request, &mut resolution, deadline) {
                Ok(Round::Known(answer)) => return answer,
                Ok(Round::RetryLost) => continue,
                Err(failure) => failure,
            };
            let now = Instant::now();
            if now >= deadline {
                self.resolutions.unknown.fetch_add(1, Ordering::Relaxed);
                return Err(PgError::OutcomeUnknown {
                    resolve_timeout: self.options.resolve_timeout,
                    cause: failure,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One try on a new connection. `Err` is a failure to read back (the server unreachable,
    /// the lost session still there): try again until the deadline.
    fn round(
        &self,
        request: &Request,
        resolution: &mut Resolution,
        deadline: Instant,
    ) -> Result<Round, Cause> {
        let mut conn = self.pool.open()?;
        let mut seen = read_back(&mut conn, request, &resolution.tokens)?;
        if seen == Seen::Absent {
            end_session(&mut conn, resolution.suspect, deadline)?;
            seen = read_back(&mut conn, request, &resolution.tokens)?;
        }
        let counters = &self.resolutions;
        let answer = match seen {
            Seen::Ours => {
                counters.found_written.fetch_add(1, Ordering::Relaxed);
                Ok(Appended::Done {
                    version: request.version_after.unsigned_abs(),
                })
            }
            Seen::Theirs => {
                counters.found_raced.fetch_add(1, Ordering::Relaxed);
                Ok(Appended::Raced)
            }
            Seen::Absent if resolution.retried => {
                counters.not_written.fetch_add(1, Ordering::Relaxed);
                let cause = std::mem::replace(&mut resolution.cause, "resolved".into());
                Err(PgError::NotWritten { cause })
            }
            Seen::Absent => {
                resolution.retried = true;
                counters.retried.fetch_add(1, Ordering::Relaxed);
                let token = conn.next_token();
                resolution.tokens.push(token);
                match self.execute(&mut conn, request, &token) {
                    Tried::Applied(appended) => request.answer(appended),
                    Tried::Refused(error) => request.refused(error),
                    Tried::NotSent(error) => {
                        counters.not_written.fetch_add(1, Ordering::Relaxed);
                        return Ok(Round::Known(Err(PgError::NotWritten {
                            cause: Box::new(error),
                        })));
                    }
                    Tried::Lost(cause) => {
                        resolution.suspect = conn.session();
                        resolution.cause = cause;
                        return Ok(Round::RetryLost);
                    }
                }
            }
        };
        self.pool.give(conn);
        Ok(Round::Known(answer))
    }
}

/// What the append left: see [`Seen`].
fn read_back(conn: &mut Conn, request: &Request, tokens: &[Token]) -> Result<Seen, Cause> {
    let statement = conn.statement(Sql::ReadBack)?;
    let rows = conn.client().query(
        &statement,
        &[&request.key, &request.expected, &request.version_after],
    )?;
    let mut version = 0;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        version = row.try_get::<_, Option<i64>>(0)?.unwrap_or(0);
        let seq: Option<i64> = row.try_get(1)?;
        let event: Option<&[u8]> = row.try_get(2)?;
        let token: Option<&[u8]> = row.try_get(3)?;
        if let (Some(seq), Some(event), Some(token)) = (seq, event, token) {
            found.push((seq, event, token));
        }
    }
    if version == request.expected {
        return Ok(Seen::Absent);
    }
    let ours = found.len() == request.events.len()
        && found
            .iter()
            .zip(&request.events)
            .zip(request.expected + 1..)
            .all(|(((seq, event, token), mine), expected_seq)| {
                *seq == expected_seq && event == mine && tokens.iter().any(|t| t == token)
            });
    Ok(if ours { Seen::Ours } else { Seen::Theirs })
}

/// Ends `session` if it is still there, and waits until the server no longer lists it: from
/// then on, its statement has committed or rolled back for good.
fn end_session(conn: &mut Conn, session: Session, deadline: Instant) -> Result<(), Cause> {
    let statement = conn.statement(Sql::EndSession)?;
    loop {
        let rows = conn
            .client()
            .query(&statement, &[&session.pid, &session.started_us])?;
        if rows.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the lost session (server process {}) has not ended",
                session.pid
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
