-- payledger's event store, schema version 2: the derived tables no longer carry foreign keys
-- to payledger_keys.
--
-- Every row that names a key is written by the same statement that inserts or bumps that
-- key's row (store-postgres/src/sql.rs: data-modifying CTEs joined to `bump`), and no
-- statement deletes a key row, so a reference cannot dangle. The constraints checked that
-- again for every written row, with a trigger and a row lock on the key row (a WAL record
-- each): about a third of an append's WAL for nothing the single statement does not already
-- guarantee.

ALTER TABLE payledger_events DROP CONSTRAINT payledger_events_key_fkey;
ALTER TABLE payledger_key_phases DROP CONSTRAINT payledger_key_phases_key_fkey;
ALTER TABLE payledger_references DROP CONSTRAINT payledger_references_key_fkey;
