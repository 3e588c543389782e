//! Reading the ledger: a key's state and history, keys by phase, and the health figures to alert
//! on.
//!
//! Invariant: what `state` and `health` report agrees with what the gate answers: an attempt
//! whose outcome could not be written (of a key's primary or of an operation) shows as unknown,
//! as the gate treats it, never as in flight. `list` and the phase counts read the applied
//! index as it is: such a key is listed in flight there until the reconciler or evidence
//! writes its next event.

use crate::error::Result;
use crate::gate::GateStore;
use std::sync::Arc;

use crate::index::IndexEntry;
use crate::journal::Journal;
use crate::journal::codec::decode_event;
use crate::limits::LIST_LIMIT_MAX;
use crate::model::{AttemptNumber, Event, OperationKind, UnknownReason};
use crate::model::{IdempotencyKey, UnixMillis};
use crate::model::{PaymentState, Phase, PhaseKind};
use crate::sync::lock;

use super::Ledger;
use super::replies::{Health, HistoryEntry, OperationHealth};

/// How long `health` waits for the index applier to reflect what is durable.
const HEALTH_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Ledger {
    /// The state of `key`, if it has any event.
    ///
    /// # Errors
    /// Index errors.
    pub fn state(&self, key: &IdempotencyKey) -> Result<Option<PaymentState>> {
        Ok(self
            .inner
            .index
            .get(key)?
            .map(|e| self.as_the_gate_sees_it(IndexEntry::state_of(e))))
    }

    /// `state` with an outcome that could not be written shown as the gate treats it: unknown
    /// (its primary's, and each operation's).
    fn as_the_gate_sees_it(&self, mut state: PaymentState) -> PaymentState {
        self.show_unwritten_operations(&mut state);
        if let Phase::InFlight {
            attempt,
            started_at,
        } = state.phase
            && let Some(since) = self.inner.gate.unwritten_since(&state.key)
        {
            state.phase = unwritten_phase(attempt, started_at, since);
        }
        state
    }

    /// Shows unknown each operation of `state` still in flight with an attempt whose outcome
    /// could not be written.
    fn show_unwritten_operations(&self, state: &mut PaymentState) {
        let unwritten = lock(&self.inner.operations_unwritten);
        if unwritten.is_empty() {
            return;
        }
        for op in &mut state.operations {
            if let Phase::InFlight {
                attempt,
                started_at,
            } = op.phase
                && let Some((failed, since)) = unwritten.get(&(state.key.clone(), op.ordinal))
                && *failed == attempt
            {
                op.phase = unwritten_phase(attempt, started_at, *since);
            }
        }
    }

    /// Every event of `key`, in journal order, read from the journal at the positions the index
    /// keeps.
    ///
    /// # Errors
    /// Index, journal or codec errors.
    pub fn history(&self, key: &IdempotencyKey) -> Result<Vec<HistoryEntry>> {
        self.inner
            .index
            .history(key)?
            .into_iter()
            .map(|stored| {
                let record = self
                    .inner
                    .journal
                    .read_at(stored.position, stored.sequence)?;
                Ok(HistoryEntry {
                    sequence: stored.sequence,
                    event: decode_event(&record.payload)?,
                })
            })
            .collect()
    }

    /// Keys in `phase` with their states, ordered by key, strictly after `after` (a stable,
    /// unique cursor), at most `limit` (capped at [`LIST_LIMIT_MAX`]).
    ///
    /// # Errors
    /// Index errors.
    pub fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        // Lists are read from the applied index: first let it reflect every durable event.
        self.wait_indexed()?;
        self.list_applied(phase, after, limit)
    }

    /// [`Ledger::list`] as the index has applied it, without waiting for the applier.
    fn list_applied(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        let keys = self
            .inner
            .index
            .list(phase, after, limit.min(LIST_LIMIT_MAX))?;
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            // A key written since the list was read may have left the phase.
            if let Some(entry) = self.inner.index.get(&key)?
                && entry.state.listed_as().contains(&phase)
            {
                states.push(IndexEntry::state_of(entry));
            }
        }
        Ok(states)
    }

    /// The earliest `since(state)` among the keys in `phase`.
    fn oldest(
        &self,
        phase: PhaseKind,
        since: impl Fn(&Phase) -> Option<UnixMillis>,
    ) -> Result<Option<UnixMillis>> {
        let mut oldest: Option<UnixMillis> = None;
        let mut after = None;
        loop {
            let states = self.list_applied(phase, after.as_ref(), LIST_LIMIT_MAX)?;
            let Some(last) = states.last().map(|s| s.key.clone()) else {
                break;
            };
            for at in states.iter().filter_map(|s| since(&s.phase)) {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            after = Some(last);
        }
        Ok(oldest)
    }

    /// Operations in doubt, by kind: from the keys listed with an unknown, in-review or
    /// conflicting operation.
    fn operation_health(&self, now: UnixMillis) -> Result<Vec<OperationHealth>> {
        let mut by_kind: Vec<OperationHealth> = Vec::new();
        for list in [
            PhaseKind::OperationUnknown,
            PhaseKind::OperationInReview,
            PhaseKind::OperationConflict,
        ] {
            let mut after = None;
            loop {
                let states = self.list_applied(list, after.as_ref(), LIST_LIMIT_MAX)?;
                let Some(last) = states.last().map(|s| s.key.clone()) else {
                    break;
                };
                for op in states.iter().flat_map(|s| &s.operations) {
                    if PhaseKind::of_operation(&op.phase) != Some(list) {
                        continue;
                    }
                    let health = health_of(&mut by_kind, op.kind);
                    match &op.phase {
                        Phase::Unknown { since, .. } => count_unknown(health, now.since(*since)),
                        Phase::InReview { .. } => health.in_review += 1,
                        _ => health.conflict += 1,
                    }
                }
                after = Some(last);
            }
        }
        // Operations whose outcome could not be written count as unknown, as the gate treats
        // them, while the index still has them in flight.
        let unwritten: Vec<_> = lock(&self.inner.operations_unwritten)
            .iter()
            .map(|((key, ordinal), (attempt, since))| (key.clone(), *ordinal, *attempt, *since))
            .collect();
        for (key, ordinal, attempt, since) in unwritten {
            let entry = self.inner.index.get(&key)?;
            match entry.as_deref().and_then(|e| e.state.operation(ordinal)) {
                Some(op) if matches!(op.phase, Phase::InFlight { attempt: a, .. } if a == attempt) =>
                {
                    count_unknown(health_of(&mut by_kind, op.kind), now.since(since));
                }
                // Settled since (by evidence or the reconciler, once the journal took writes
                // again): forgotten, so the map holds only what is still shown unknown.
                _ => {
                    let mut unwritten = lock(&self.inner.operations_unwritten);
                    if unwritten
                        .get(&(key.clone(), ordinal))
                        .is_some_and(|(a, _)| *a == attempt)
                    {
                        unwritten.remove(&(key, ordinal));
                    }
                }
            }
        }
        by_kind.sort_by_key(|h| h.kind);
        Ok(by_kind)
    }

    /// Counts and ages to alert on; also sets the metrics gauges (`docs/metrics.md`), so call
    /// it when metrics are scraped. Counts come from the applied index: exact once the applier
    /// has reflected what was durable when `health` was called, which it waits for up to a
    /// second; beyond that they lag by `index_backlog` commits.
    ///
    /// # Errors
    /// Index errors.
    pub fn health(&self) -> Result<Health> {
        // Counts are read from the applied index. Give the applier a moment to reflect what is
        // durable now, but no more: a probe must answer even when the applier is stuck, and
        // then its lag is what it reports (`index_backlog`, `index_watermark`).
        let index = &self.inner.index;
        index.wait_applied_for(self.inner.journal.last_sequence(), HEALTH_INDEX_WAIT);
        let now = self.now();
        let mut oldest_unknown = self.oldest(PhaseKind::Unknown, |phase| match phase {
            Phase::Unknown { since, .. } => Some(*since),
            _ => None,
        })?;
        let oldest_in_flight = self.oldest(PhaseKind::InFlight, |phase| match phase {
            Phase::InFlight { started_at, .. } => Some(*started_at),
            _ => None,
        })?;
        // Outcomes that could not be written count as unknown, as the gate treats them.
        let unwritten = self.inner.gate.unwritten();
        let mut unwritten_in_flight = 0;
        for (key, since) in &unwritten {
            if matches!(
                index.get(key)?.map(|e| e.state.phase.clone()),
                Some(Phase::InFlight { .. })
            ) {
                unwritten_in_flight += 1;
                oldest_unknown = Some(oldest_unknown.map_or(*since, |o| o.min(*since)));
            }
        }
        let oldest_review = self.oldest(PhaseKind::InReview, |phase| match phase {
            Phase::InReview { since, .. } => Some(*since),
            _ => None,
        })?;
        let operations = self.operation_health(now)?;
        let health = Health {
            operations,
            unknown: index.count(PhaseKind::Unknown) + unwritten_in_flight,
            unknown_age_ms_max: oldest_unknown.map(|since| now.since(since)),
            in_flight: index
                .count(PhaseKind::InFlight)
                .saturating_sub(unwritten_in_flight),
            in_flight_age_ms_max: oldest_in_flight.map(|since| now.since(since)),
            in_review: index.count(PhaseKind::InReview),
            in_review_age_ms_max: oldest_review.map(|since| now.since(since)),
            conflict: index.count(PhaseKind::Conflict),
            last_sequence: self.inner.journal.last_sequence(),
            index_watermark: index.watermark().sequence,
            index_backlog: index.backlog(),
            journal: self.inner.journal.stats(),
            fatal: self.inner.journal.stopped().or_else(|| index.failure()),
        };
        let keys: Vec<(PhaseKind, usize)> = PhaseKind::ALL
            .into_iter()
            .map(|kind| (kind, index.count(kind)))
            .collect();
        crate::telemetry::gauges(&health, &keys);
        Ok(health)
    }

    /// Keys per phase.
    pub fn counts(&self) -> Vec<(PhaseKind, usize)> {
        // From the applied index; if the applier stopped, as far as it got.
        let _ = self.wait_indexed();
        PhaseKind::ALL
            .into_iter()
            .map(|kind| (kind, self.inner.index.count(kind)))
            .collect()
    }

    /// The journal, for verification, export and replay.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }
}

impl GateStore for Ledger {
    type Entry = Arc<IndexEntry>;

    fn load(&self, key: &IdempotencyKey) -> Result<Option<Arc<IndexEntry>>> {
        self.inner.index.get(key)
    }

    fn state(entry: &Arc<IndexEntry>) -> &PaymentState {
        &entry.state
    }

    fn append(
        &self,
        key: &IdempotencyKey,
        before: Option<&Arc<IndexEntry>>,
        events: Vec<Event>,
    ) -> Result<()> {
        self.write_events(key, before.map(|b| &**b), events)
            .map(drop)
    }
}

/// The phase an attempt whose outcome could not be written is shown in: unknown since `since`.
fn unwritten_phase(attempt: AttemptNumber, started_at: UnixMillis, since: UnixMillis) -> Phase {
    Phase::Unknown {
        attempt,
        started_at,
        since,
        reason: UnknownReason::LocalWriteFailed,
        queries: 0,
        not_found_streak: 0,
        pending: false,
        waited_ms: 0,
    }
}

/// The health line of operations of `kind`, added if it is not there yet.
fn health_of(by_kind: &mut Vec<OperationHealth>, kind: OperationKind) -> &mut OperationHealth {
    let i = match by_kind.iter().position(|h| h.kind == kind) {
        Some(i) => i,
        None => {
            by_kind.push(OperationHealth {
                kind,
                unknown: 0,
                in_review: 0,
                conflict: 0,
                unknown_age_ms_max: None,
            });
            by_kind.len() - 1
        }
    };
    &mut by_kind[i]
}

/// Counts one more unknown operation, unknown for `age_ms`.
fn count_unknown(health: &mut OperationHealth, age_ms: u64) {
    health.unknown += 1;
    health.unknown_age_ms_max = Some(health.unknown_age_ms_max.map_or(age_ms, |a| a.max(age_ms)));
}
