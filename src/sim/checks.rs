//! The checks at the end of a run: nothing charged twice unless the provider lost a charge
//! (and then the key is in conflict), replay equals live state, every key settled after healing.
//!
//! Invariant: the truth checked against is the simulated provider's, never the ledger's.

use std::collections::BTreeMap;

use super::provider::Truth;
use super::world::World;
use crate::error::Result;
use crate::journal::codec::decode_event;
use crate::ledger::Ledger;
use crate::model::{IdempotencyKey, ProviderReference, Sequence};
use crate::model::{PaymentState, Phase, PhaseKind, apply};

impl World {
    pub(super) fn check_end(&mut self) -> Result<()> {
        let ledger = self.ledger()?.clone();
        // Replaying the journal reproduces the live states.
        let mut replayed: BTreeMap<IdempotencyKey, PaymentState> = BTreeMap::new();
        for record in ledger.journal().read_from(Sequence(1)) {
            let record = record?;
            let event = decode_event(&record.payload)?;
            let state = replayed
                .remove(&event.key)
                .unwrap_or_else(|| PaymentState::new(event.key.clone()));
            let next = apply(&state, &event)?;
            replayed.insert(event.key.clone(), next);
        }
        // Charges per order at the provider.
        let truth = self.provider.state().truth.clone();
        for order in &self.orders {
            let mut charged = 0;
            let mut lost = false;
            for key in &order.keys {
                let Some(state) = replayed.get(key) else {
                    continue;
                };
                for attempt in 1..=state.attempts_started {
                    let Ok(attempt) = crate::model::AttemptNumber::new(attempt) else {
                        continue;
                    };
                    match truth.get(ProviderReference::derive(key, attempt).as_str()) {
                        Some(Truth::Charged { .. }) => charged += 1,
                        Some(Truth::Lost { .. }) => {
                            charged += 1;
                            lost = true;
                        }
                        _ => {}
                    }
                }
            }
            if charged > 1 {
                let in_conflict = order.keys.iter().any(|k| {
                    replayed
                        .get(k)
                        .is_some_and(|s| matches!(s.phase, Phase::Conflict { .. }))
                });
                if lost && in_conflict {
                    self.report.explained_double_charges += 1;
                } else {
                    self.report.double_charges += 1;
                    let keys: Vec<String> = order.keys.iter().map(ToString::to_string).collect();
                    self.report.violate(format!(
                        "order charged {charged} times under {}",
                        keys.join(", ")
                    ));
                }
            }
        }
        for (key, state) in &replayed {
            if ledger.state(key)?.as_ref() != Some(state) {
                self.report.violate(format!(
                    "replaying the journal gives another state for {key}"
                ));
            }
            let phase = state.phase.name();
            *self.report.final_phases.entry(phase).or_default() += 1;
            if !matches!(
                state.phase.kind(),
                PhaseKind::Succeeded
                    | PhaseKind::Declined
                    | PhaseKind::Exhausted
                    | PhaseKind::InReview
                    | PhaseKind::Conflict
            ) {
                self.report.unresolved_after_heal += 1;
                self.report
                    .violate(format!("{key} is {phase} after healing"));
            }
        }
        Ok(())
    }
}

/// The chain hash of the record at `sequence`: it commits to every record up to it, so equal
/// hashes before and after a crash mean nothing durable was lost.
pub(super) fn chain_hash_at(ledger: &Ledger, sequence: Sequence) -> Result<Option<[u8; 32]>> {
    Ok(ledger
        .journal()
        .read_from(sequence)
        .next()
        .transpose()?
        .map(|r| r.hash))
}
