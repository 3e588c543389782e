//! The schema, created and versioned by the crate: plain SQL files in `migrations/`, applied in
//! order inside one transaction that records each version in `payledger_schema_version`.
//!
//! Invariants:
//! - migrating is idempotent and safe to run from several processes at once (an advisory lock
//!   serialises them; a migration already recorded is never applied again);
//! - a database whose schema is newer than this crate knows is refused
//!   ([`PgError::SchemaTooNew`]), never read or written;
//! - migrations are only ever added: a published file never changes.

use postgres::Client;

use crate::error::PgError;

/// The newest schema version this crate knows.
pub const SCHEMA_VERSION: i32 = 2;

/// Every migration, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: [(i32, &str); 2] = [
    (1, include_str!("../migrations/0001_events.sql")),
    (2, include_str!("../migrations/0002_no_foreign_keys.sql")),
];

const _: () = assert!(MIGRATIONS.len() as i32 == SCHEMA_VERSION);
const _: () = {
    let mut i = 0;
    while i < MIGRATIONS.len() {
        assert!(
            MIGRATIONS[i].0 == i as i32 + 1,
            "migrations are numbered 1, 2, ..."
        );
        i += 1;
    }
};

/// The advisory lock migrations hold ("payledgr" in ASCII): one migration at a time.
const MIGRATION_LOCK: i64 = 0x7061_796c_6564_6772;

/// Brings the schema to [`SCHEMA_VERSION`]; returns the version it was at.
pub(crate) fn migrate(client: &mut Client) -> Result<i32, PgError> {
    let mut tx = client.transaction().map_err(PgError::Statement)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(PgError::Statement)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS payledger_schema_version (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(PgError::Statement)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM payledger_schema_version",
            &[],
        )
        .and_then(|row| row.try_get(0))
        .map_err(PgError::Statement)?;
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > found) {
        tx.batch_execute(sql).map_err(PgError::Statement)?;
        tx.execute(
            "INSERT INTO payledger_schema_version (version) VALUES ($1)",
            &[version],
        )
        .map_err(PgError::Statement)?;
    }
    tx.commit().map_err(PgError::Statement)?;
    Ok(found)
}

/// The database's schema version, `None` before the first migration.
pub(crate) fn version(client: &mut Client) -> Result<Option<i32>, PgError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('payledger_schema_version') IS NOT NULL",
            &[],
        )
        .and_then(|row| row.try_get(0))
        .map_err(PgError::Statement)?;
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM payledger_schema_version", &[])
        .and_then(|row| row.try_get(0))
        .map_err(PgError::Statement)
}
