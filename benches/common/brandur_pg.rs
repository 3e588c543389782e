//! Stripe's idempotency-key protocol on PostgreSQL, as written up by Brandur Leach
//! (<https://brandur.org/idempotency-keys>): the peer that `benches/peers.rs` and
//! `store-postgres/benches/pg.rs` both measure, in one place so that the two cannot drift apart.
//!
//! The including bench defines the order at its root: `AMOUNT_MINOR`, `CURRENCY`,
//! `REQUEST_PARAMS`, `USER_ID`, `key_text(n)` and `response_body(transaction_id)`.

use postgres::{Client, IsolationLevel, Statement, Transaction};

use super::{AMOUNT_MINOR, CURRENCY, REQUEST_PARAMS, USER_ID, key_text, response_body};

/// The schema the protocol's tables live in, beside anything else in the same database.
pub const PG_SCHEMA: &str = "payledger_peers";

/// Brandur's tables, in his PostgreSQL types.
const PG_SCHEMA_SQL: &str = "
    CREATE TABLE idempotency_keys (
        id              BIGSERIAL   PRIMARY KEY,
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        idempotency_key TEXT        NOT NULL CHECK (char_length(idempotency_key) <= 100),
        last_run_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
        locked_at       TIMESTAMPTZ DEFAULT now(),
        request_method  TEXT        NOT NULL,
        request_params  JSONB       NOT NULL,
        request_path    TEXT        NOT NULL,
        response_code   INT,
        response_body   JSONB,
        recovery_point  TEXT        NOT NULL,
        user_id         BIGINT      NOT NULL,
        UNIQUE (user_id, idempotency_key)
    );
    CREATE TABLE charges (
        id                 BIGSERIAL PRIMARY KEY,
        idempotency_key_id BIGINT    NOT NULL UNIQUE REFERENCES idempotency_keys (id),
        amount_minor       BIGINT    NOT NULL,
        currency           TEXT      NOT NULL,
        status             TEXT      NOT NULL,
        transaction_id     TEXT
    );";

const PG_INSERT_KEY: &str = "
    INSERT INTO idempotency_keys (idempotency_key, request_method, request_params, request_path,
                                  recovery_point, user_id)
    VALUES ($1, 'POST', $2::text::jsonb, '/charges', 'started', $3)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id";
const PG_INSERT_CHARGE: &str = "
    INSERT INTO charges (idempotency_key_id, amount_minor, currency, status)
    VALUES ($1, $2, $3, 'pending')";
const PG_FINISH_CHARGE: &str = "
    UPDATE charges SET status = 'succeeded', transaction_id = $2 WHERE idempotency_key_id = $1";
const PG_FINISH_KEY: &str = "
    UPDATE idempotency_keys
    SET last_run_at = now(), locked_at = NULL, recovery_point = 'finished', response_code = 201,
        response_body = $2::text::jsonb
    WHERE id = $1";
/// The preload, in two statements: finished keys `order-0` .. `order-(N-1)`, then their charges.
const PG_PRELOAD_KEYS: &str = "
    INSERT INTO idempotency_keys (idempotency_key, locked_at, request_method, request_params,
                                  request_path, recovery_point, user_id, response_code,
                                  response_body)
    SELECT 'order-' || n, NULL, 'POST', $1::text::jsonb, '/charges', 'finished', $2, 201,
           jsonb_build_object('id', 'ch_' || n, 'status', 'succeeded', 'amount', $3::bigint,
                              'currency', $4::text)
    FROM generate_series(0, $5::bigint - 1) AS n";
const PG_PRELOAD_CHARGES: &str = "
    INSERT INTO charges (idempotency_key_id, amount_minor, currency, status, transaction_id)
    SELECT id, $1, $2, 'succeeded', response_body ->> 'id' FROM idempotency_keys";

/// Creates [`PG_SCHEMA`] afresh with the protocol's tables and `preload` finished keys, and
/// analyzes them. `client` is left with its search path on the schema.
pub fn create(client: &mut Client, preload: u64) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE; CREATE SCHEMA {PG_SCHEMA};
         SET search_path TO {PG_SCHEMA}; {PG_SCHEMA_SQL}"
    ))?;
    let preload = i64::try_from(preload).unwrap_or(i64::MAX);
    let amount = i64::from(AMOUNT_MINOR);
    client.execute(
        PG_PRELOAD_KEYS,
        &[&REQUEST_PARAMS, &USER_ID, &amount, &CURRENCY, &preload],
    )?;
    client.execute(PG_PRELOAD_CHARGES, &[&amount, &CURRENCY])?;
    // One statement per call: several in one string would run as one transaction, and VACUUM
    // refuses to run inside one.
    for table in ["idempotency_keys", "charges"] {
        client.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
    }
    Ok(())
}

/// The protocol's statements, prepared on one connection (whose search path is [`PG_SCHEMA`]).
pub struct Statements {
    insert_key: Statement,
    insert_charge: Statement,
    finish_charge: Statement,
    finish_key: Statement,
}

impl Statements {
    /// Prepares them on `client`.
    pub fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            insert_key: client.prepare(PG_INSERT_KEY)?,
            insert_charge: client.prepare(PG_INSERT_CHARGE)?,
            finish_charge: client.prepare(PG_FINISH_CHARGE)?,
            finish_key: client.prepare(PG_FINISH_KEY)?,
        })
    }

    /// Transaction 1: the key row for order `n`, started and locked, and its pending charge.
    /// Returns the key row's id, or `None` if the key already existed.
    pub fn start(&self, client: &mut Client, n: u64) -> Result<Option<i64>, postgres::Error> {
        let mut tx = read_committed(client)?;
        let Some(row) =
            tx.query_opt(&self.insert_key, &[&key_text(n), &REQUEST_PARAMS, &USER_ID])?
        else {
            return Ok(None);
        };
        let key_id: i64 = row.try_get(0)?;
        let amount = i64::from(AMOUNT_MINOR);
        tx.execute(&self.insert_charge, &[&key_id, &amount, &CURRENCY])?;
        tx.commit()?;
        Ok(Some(key_id))
    }

    /// Transaction 2: the charge succeeded with `transaction_id`, the key finished with its
    /// response.
    pub fn finish(
        &self,
        client: &mut Client,
        key_id: i64,
        transaction_id: &str,
    ) -> Result<(), postgres::Error> {
        let mut tx = read_committed(client)?;
        tx.execute(&self.finish_charge, &[&key_id, &transaction_id])?;
        tx.execute(&self.finish_key, &[&key_id, &response_body(transaction_id)])?;
        tx.commit()
    }
}

/// How many keys the protocol finished (`completed` charges should have).
pub fn finished(client: &mut Client) -> Result<i64, postgres::Error> {
    client
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE recovery_point = 'finished'",
            &[],
        )?
        .try_get(0)
}

fn read_committed(client: &mut Client) -> Result<Transaction<'_>, postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
}
