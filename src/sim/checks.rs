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
use crate::model::{IdempotencyKey, OperationKind, ProviderReference, Sequence};
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
        for (i, order) in self.orders.iter().enumerate() {
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
                    // Refunded, or its refund waits for a human in review (a hostile provider
                    // can exhaust the queries of a refund as of a charge).
                    let settled = order.keys.iter().any(|k| {
                        replayed.get(k).is_some_and(|s| {
                            let sums = s.sums();
                            s.conflict_resolved()
                                || sums.refunds_counted + order.intent.amount.minor()
                                    >= sums.captured
                        })
                    });
                    // A duplicate hold of an authorisation expires at the provider; a duplicate
                    // purchase is money the customer must get back through the ledger.
                    if !order.authorization && !settled {
                        self.report.violate(format!(
                            "order {i}'s duplicate charge was not refunded after healing"
                        ));
                    }
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
        self.check_operations(&replayed);
        for (key, state) in &replayed {
            if ledger.state(key)?.as_ref() != Some(state) {
                self.report.violate(format!(
                    "replaying the journal gives another state for {key}"
                ));
            }
            let phase = state.phase.name();
            *self.report.final_phases.entry(phase).or_default() += 1;
            if state.conflict_resolved() {
                self.report.conflicts_settled += 1;
            }
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

impl World {
    /// Against the provider's truth: no follow-up executed twice, refunded ≤ captured ≤
    /// authorised for every order, no void beside a capture, no operation left in doubt.
    fn check_operations(&mut self, replayed: &BTreeMap<IdempotencyKey, PaymentState>) {
        let executions = self.provider.state().executions.clone();
        let truth = self.provider.state().truth.clone();
        let mut per_follow_up: BTreeMap<(usize, usize), (OperationKind, u32)> = BTreeMap::new();
        let mut per_order: BTreeMap<usize, Money> = BTreeMap::new();
        for execution in executions.values() {
            let entry = per_follow_up
                .entry((execution.order, execution.follow))
                .or_insert((execution.kind, 0));
            entry.1 += 1;
            let money = per_order.entry(execution.order).or_default();
            match execution.kind {
                OperationKind::Capture => money.captured += execution.amount,
                OperationKind::Refund => money.refunded += execution.amount,
                OperationKind::Void => money.voided = true,
            }
        }
        for ((order, follow), (kind, times)) in per_follow_up {
            if times > 1 {
                if kind == OperationKind::Refund {
                    self.report.double_refunds += u64::from(times - 1);
                }
                self.report.violate(format!(
                    "order {order}'s {kind} #{follow} executed {times} times at the provider"
                ));
            }
        }
        for (o, order) in self.orders.iter().enumerate() {
            let mut charged = 0;
            for key in &order.keys {
                let Some(state) = replayed.get(key) else {
                    continue;
                };
                for attempt in 1..=state.attempts_started {
                    let Ok(attempt) = crate::model::AttemptNumber::new(attempt) else {
                        continue;
                    };
                    if let Some(Truth::Charged { amount, .. } | Truth::Lost { amount, .. }) =
                        truth.get(ProviderReference::derive(key, attempt).as_str())
                    {
                        charged += amount;
                    }
                }
            }
            let money = per_order.get(&o).copied().unwrap_or_default();
            let (captured, authorized) = if order.authorization {
                (money.captured, charged)
            } else {
                (charged, 0)
            };
            let over_refund = money.refunded > captured;
            let over_capture = order.authorization && money.captured > authorized;
            if over_refund || over_capture {
                self.report.over_refunds += 1;
                self.report.violate(format!(
                    "order {o}: refunded {} of {captured} captured ({authorized} authorised)",
                    money.refunded
                ));
            }
            if money.voided && money.captured > 0 {
                self.report
                    .violate(format!("order {o} was voided and captured"));
            }
        }
        for (key, state) in replayed {
            for op in &state.operations {
                if matches!(op.phase, Phase::InFlight { .. } | Phase::Unknown { .. }) {
                    self.report.unresolved_after_heal += 1;
                    self.report.violate(format!(
                        "{key}'s {} #{} is {} after healing",
                        op.kind,
                        op.ordinal,
                        op.phase.name()
                    ));
                }
            }
        }
    }
}

/// What the provider did with an order's money after the charge.
#[derive(Clone, Copy, Debug, Default)]
struct Money {
    captured: u64,
    refunded: u64,
    voided: bool,
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
