//! The narrow interface the reconciler works through: which keys are due, taking over attempts
//! nobody will report, recording query answers, escalating to review.
//!
//! Invariants:
//! - each operation takes the key's lock and re-reads its state, so an answer about an attempt
//!   that moved on meanwhile is dropped, never misapplied;
//! - a "not found" answer carries how long the ledger had waited for the attempt when the query
//!   was sent: the wait earlier processes recorded, plus this process's monotonic wait since it
//!   started watching the attempt (the time between processes is never counted);
//! - an attempt in flight is taken over only when no live ticket holds it or its ticket's lease
//!   expired on the monotonic clock.

use crate::clock::MonotonicMillis;
use crate::error::Result;
use crate::model::ReconcileConfig;
use crate::model::{AttemptNumber, IdempotencyKey};
use crate::model::{EventKind, Outcome, ReviewReason, UnknownReason};
use crate::model::{Phase, PhaseKind};
use crate::provider::QueryReply;

use super::{Ledger, Track};
use crate::sync::lock;

impl Ledger {
    /// Appends the answer to a query for `attempt` if the key still awaits it; returns the new
    /// phase, or `None` if the key moved on meanwhile. `asked_at` is when the query was sent.
    pub(crate) fn record_query(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        reply: QueryReply,
        asked_at: MonotonicMillis,
    ) -> Result<Option<Phase>> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let Some(Phase::Unknown {
            attempt: current,
            waited_ms: before_ms,
            ..
        }) = entry.as_deref().map(|e| &e.state.phase)
        else {
            return Ok(None);
        };
        if *current != attempt {
            return Ok(None);
        }
        // Waited until the query was sent: what earlier processes recorded plus this process's
        // monotonic wait; nothing while the attempt cannot be tracked.
        let waited_ms = self
            .unknown_wait(key, Track::Primary, attempt, *before_ms)
            .map_or(0, |wait| wait.before_ms + asked_at.since(wait.since));
        let answer = reply.classify(self.inner.config.reconcile.not_found(), waited_ms);
        let event = self.event(key, EventKind::ProviderQueried { attempt, answer });
        let after = self.write_events(key, entry.as_deref(), vec![event])?;
        if !matches!(after.state.phase, Phase::Unknown { .. }) {
            self.inner.gate.clear_unwritten(key);
        }
        Ok(Some(after.state.phase.clone()))
    }

    /// Escalates an unknown attempt to review; `false` if the key moved on meanwhile.
    pub(crate) fn escalate(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        queries: u32,
    ) -> Result<bool> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        if !matches!(entry.as_deref().map(|e| &e.state.phase), Some(Phase::Unknown { attempt: a, .. }) if *a == attempt)
        {
            return Ok(false);
        }
        let event = self.event(
            key,
            EventKind::EscalatedToReview {
                attempt,
                reason: ReviewReason::QueriesExhausted { queries },
            },
        );
        self.write_events(key, entry.as_deref(), vec![event])?;
        tracing::warn!(key = %key, attempt = attempt.get(), queries, "escalated to manual review");
        Ok(true)
    }

    /// Takes over up to `limit` attempts in flight that nobody will report: their ticket was
    /// dropped, or its lease expired (a hung provider call). They become unknown; returns how
    /// many. The scan resumes where the previous one stopped, so every key gets its turn.
    pub(crate) fn take_over_in_flight(&self, limit: usize) -> Result<usize> {
        self.wait_indexed()?;
        let cursor = lock(&self.inner.in_flight_cursor).clone();
        let keys = self
            .inner
            .index
            .list(PhaseKind::InFlight, cursor.as_ref(), limit)?;
        *lock(&self.inner.in_flight_cursor) = if keys.len() < limit {
            None
        } else {
            keys.last().cloned()
        };
        let lease_ms = self.inner.config.ticket_lease_ms;
        let mut count = 0;
        for key in keys {
            let _guard = self.lock_key(&key);
            let entry = self.inner.index.get(&key)?;
            let Some(Phase::InFlight { attempt, .. }) = entry.as_deref().map(|e| &e.state.phase)
            else {
                continue;
            };
            let attempt = *attempt;
            let reason = match self.inner.gate.live(&key) {
                None => UnknownReason::TicketDropped,
                // A ticket of an earlier attempt (moved on through the event-store seam, which
                // does not know this process's tickets) does not hold this one.
                Some(ticket) if ticket.attempt != attempt => {
                    tracing::error!(key = %key, live = ticket.attempt.get(), attempt = attempt.get(), "a live ticket of another attempt: this ledger is also written through the event-store seam");
                    self.inner.gate.release(&key, ticket.attempt);
                    UnknownReason::TicketDropped
                }
                Some(ticket) => {
                    if self.monotonic_now().since(ticket.issued) <= lease_ms {
                        continue;
                    }
                    self.inner.gate.release(&key, attempt);
                    tracing::warn!(key = %key, attempt = attempt.get(), lease_ms, "ticket lease expired; the reconciler takes the attempt over");
                    UnknownReason::LeaseExpired
                }
            };
            let event = self.event(
                &key,
                EventKind::OutcomeReported {
                    attempt,
                    outcome: Outcome::Unknown { reason },
                },
            );
            self.write_events(&key, entry.as_deref(), vec![event])?;
            count += 1;
        }
        Ok(count)
    }

    /// Unknown keys whose query time has come on the ledger's wall clock, at most `limit`.
    pub(crate) fn due_keys(&self, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.wait_indexed()?;
        self.inner.index.due(self.now(), limit)
    }

    pub(crate) fn reconcile_config(&self) -> ReconcileConfig {
        self.inner.config.reconcile
    }
}
