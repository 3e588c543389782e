//! payledger-postgres on a real server: each test starts a throwaway cluster of its own
//! (`tests/support`), so that restarts and server settings stay within the test.
//!
//! - `contract.rs`: the store contract, lists, schedule and references, the schema, rows
//!   that contradict the invariants, and the seed scenarios of `tests/scenarios/store.rs`
//!   through `StoreLedger`;
//! - `processes.rs`: two OS processes double-clicking the same keys;
//! - `lost_commit.rs`: appends whose connection is lost before or after COMMIT;
//! - `restart.rs`: the server restarted while a thread appends;
//! - `standby.rs`: a synchronous standby promoted after the primary dies holds every `Done`.

#[path = "../support/mod.rs"]
mod support;

#[path = "../../../tests/scenarios/store.rs"]
mod scenarios;

mod contract;
mod lost_commit;
mod processes;
mod restart;
mod standby;

use payledger::store::{Append, Appended, EventStore};
use payledger::*;
use payledger_postgres::PgStore;

/// `kinds` as events of `key`, at the scenarios' clock.
pub fn events(key: &IdempotencyKey, kinds: Vec<EventKind>) -> Vec<Event> {
    kinds
        .into_iter()
        .map(|kind| Event {
            key: key.clone(),
            at: UnixMillis(scenarios::T0),
            kind,
        })
        .collect()
}

/// An intent of `amount` and its first attempt: a new key's first append.
pub fn intent_and_attempt(key: &IdempotencyKey, amount: u64) -> Vec<EventKind> {
    let intent = scenarios::intent(amount);
    vec![
        EventKind::IntentRecorded {
            fingerprint: intent.fingerprint(),
            intent,
        },
        EventKind::AttemptStarted {
            attempt: AttemptNumber::FIRST,
            provider_reference: ProviderReference::derive(key, AttemptNumber::FIRST),
        },
    ]
}

/// Appends `events` at `expected` (folding them onto the stored state, as a writer does).
pub fn append_events(
    store: &PgStore,
    key: &IdempotencyKey,
    expected: u64,
    events: &[Event],
    next_query_at: Option<UnixMillis>,
) -> Result<Appended> {
    let before = match expected {
        0 => PaymentState::new(key.clone()),
        _ => store.load(key)?.expect("the key exists").state,
    };
    let after = events
        .iter()
        .try_fold(before, |state, event| apply(&state, event))?;
    store.append(Append {
        key,
        expected_version: expected,
        events,
        after: &after,
        next_query_at,
    })
}

/// How many `AttemptStarted` events the database holds for `key`, read straight from
/// `payledger_events` and decoded with the library's codec.
pub fn attempts_in_database(client: &mut payledger_postgres::postgres::Client, key: &str) -> usize {
    client
        .query(
            "SELECT event FROM payledger_events WHERE key = $1 ORDER BY seq",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|row| journal::codec::decode_event(row.get(0)).unwrap())
        .filter(|event| matches!(event.kind, EventKind::AttemptStarted { .. }))
        .count()
}
