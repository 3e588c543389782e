//! # payledger-postgres
//!
//! payledger's event-store seam ([`payledger::store::EventStore`]) on PostgreSQL, so that
//! several processes or hosts share one ledger: [`payledger::store::StoreLedger`] over a
//! [`PgStore`] starts at most one attempt per key between all of them.
//!
//! ```no_run
//! use std::time::Duration;
//! use payledger::store::{StoreConfig, StoreLedger};
//! use payledger_postgres::PgStore;
//!
//! let store = PgStore::connect("host=/run/postgresql user=payments dbname=payments")?;
//! store.migrate()?; // idempotent: creates or upgrades the schema
//! let ledger = StoreLedger::new(store, StoreConfig::default());
//! # Ok::<(), payledger::Error>(())
//! ```
//!
//! Invariants (the seam's; `tests/` checks each on a real server):
//! - **compare-and-append per key, in one round trip**: an append is one statement, its own
//!   transaction, that writes a key's events only if the key still has `expected_version`
//!   events — all of them or none — and otherwise answers `Raced` having written nothing;
//! - **durable before `Done`**: `Done` follows the server's acknowledgement of the commit (and
//!   the store refuses a server running with `fsync = off`); an append whose acknowledgement
//!   was lost is resolved by reading back its own rows after the lost session can no longer
//!   commit (`resolve.rs`), never by guessing, and [`PgError::OutcomeUnknown`] is the only
//!   answer after which it may or may not have happened;
//! - **the fold on load**: a key's state is always the fold of its stored events, decoded by
//!   the library's codec; rows that contradict the sequence are errors, never skipped;
//! - the library itself links no database client: this crate is the only one that does.
//!
//! The schema (`migrations/*.sql`) is created and versioned by [`PgStore::migrate`]; a
//! database with a newer schema is refused ([`PgError::SchemaTooNew`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod error;
#[cfg(feature = "testing")]
mod faults;
mod resolve;
mod schema;
mod sql;
mod store;

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{PgError, pg_error};
#[cfg(feature = "testing")]
pub use faults::Faults;
/// The client this crate uses: its `Config` is what [`PgStore::connect_with`] takes.
pub use postgres;
pub use schema::SCHEMA_VERSION;
pub use store::{PgOptions, PgStore, Resolutions};
