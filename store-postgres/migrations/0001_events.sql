-- payledger's event store, schema version 1.
--
-- The events are the truth; every other table is derived data that the writer updates in the
-- same statement that appends the events (store-postgres/src/sql.rs), so they never disagree.
-- Keys compare byte by byte (COLLATE "C"), as the embedded ledger orders them, whatever the
-- database's default collation.

-- One row per key: its version (the number of its events; the compare-and-append target) and
-- when the reconciler should next look at it.
CREATE TABLE payledger_keys (
    key           text COLLATE "C" PRIMARY KEY,
    version       bigint NOT NULL CHECK (version >= 1),
    next_query_at bigint
);

-- `due`: keys by next query time.
CREATE INDEX payledger_keys_due ON payledger_keys (next_query_at, key)
    WHERE next_query_at IS NOT NULL;

-- Every event of every key, in order: seq is 1, 2, ... without gaps per key. `event` is the
-- library's codec (a format-version byte, then the event). `append_token` names the append
-- that wrote the row (its server session and a counter), so that an append whose reply was
-- lost recognises its own rows when it reads them back, even beside identical bytes from
-- another writer.
CREATE TABLE payledger_events (
    key          text COLLATE "C" NOT NULL REFERENCES payledger_keys (key),
    seq          bigint NOT NULL CHECK (seq >= 1),
    event        bytea NOT NULL,
    append_token bytea NOT NULL,
    PRIMARY KEY (key, seq)
);

-- `list`: the lists a key appears in (PaymentState::listed_as, by PhaseKind::name), keyed for
-- cursor pagination by phase, then key.
CREATE TABLE payledger_key_phases (
    phase text NOT NULL,
    key   text COLLATE "C" NOT NULL REFERENCES payledger_keys (key),
    PRIMARY KEY (phase, key)
);

-- An append replaces its key's lists: they are found by key.
CREATE INDEX payledger_key_phases_key ON payledger_key_phases (key);

-- `key_of`: the key each provider reference was issued for (the charge's attempts and the
-- operations' attempts).
CREATE TABLE payledger_references (
    reference text PRIMARY KEY,
    key       text COLLATE "C" NOT NULL REFERENCES payledger_keys (key)
);
