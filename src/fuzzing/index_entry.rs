//! The `index_entry` target: arbitrary bytes through the decoder of the index's state entries.
//!
//! Invariant: decoding never panics, and whatever decodes encodes back to a value that decodes
//! to the same entry.

use crate::index::IndexEntry;
use crate::journal::codec::{decode_value, encode_value};

/// Decodes `bytes` as an index entry; a decoded entry must survive a round trip.
pub fn index_entry(bytes: &[u8]) {
    let Ok(entry) = decode_value::<IndexEntry>(bytes) else {
        return;
    };
    let encoded = encode_value(&entry).unwrap_or_else(|e| panic!("a decoded entry encodes: {e}"));
    let again: IndexEntry =
        decode_value(&encoded).unwrap_or_else(|e| panic!("an encoded entry decodes: {e}"));
    assert_eq!(again, entry, "an entry survives a round trip");
}

/// The bytes of a realistic entry (an unknown key after a query), to seed the corpus.
pub fn sample_index_entry() -> Vec<u8> {
    use crate::model::{AttemptNumber, IdempotencyKey, PaymentState, Phase, Sequence, UnixMillis};
    let Ok(key) = IdempotencyKey::new("order-1/pay") else {
        return Vec::new();
    };
    let mut state = PaymentState::new(key);
    state.attempts_started = 1;
    state.phase = Phase::Unknown {
        attempt: AttemptNumber::FIRST,
        started_at: UnixMillis(1_800_000_000_000),
        since: UnixMillis(1_800_000_000_500),
        reason: crate::model::UnknownReason::Timeout,
        queries: 2,
        not_found_streak: 1,
        pending: false,
        waited_ms: 12_000,
    };
    let entry = IndexEntry {
        state,
        last_sequence: Sequence(42),
        next_query_at: Some(UnixMillis(1_800_000_004_000)),
        events: (40..=42)
            .map(|sequence| crate::index::StoredEvent {
                sequence: Sequence(sequence),
                position: crate::journal::RecordPosition {
                    segment: 0,
                    offset: 64 + 32 + (sequence - 40) * 300,
                },
            })
            .collect(),
    };
    encode_value(&entry).unwrap_or_default()
}
