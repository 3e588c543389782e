//! The ticket: the right to make one provider call for one attempt.
//!
//! Invariant: a ticket exists only after its `AttemptStarted` event is durable; dropping it
//! unrecorded releases only its own attempt, and the reconciler takes the attempt over (it
//! becomes unknown, never retryable).

use std::sync::Weak;

use crate::model::{Amount, AttemptNumber, IdempotencyKey, OperationKind, ProviderReference};

use super::Inner;

/// The right to make one provider call. Its `AttemptStarted` event is durable. Record its
/// outcome with [`Ledger::record`](crate::Ledger::record); dropping it unrecorded leaves the key unknown for the
/// reconciler, never retryable.
#[derive(Debug)]
#[must_use = "record the outcome of the provider call with Ledger::record"]
pub struct Ticket {
    pub(super) key: IdempotencyKey,
    pub(super) attempt: AttemptNumber,
    pub(super) provider_reference: ProviderReference,
    pub(super) ledger: Weak<Inner>,
    pub(super) lease_ms: u64,
    pub(super) recorded: bool,
}

impl Ticket {
    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
    /// The attempt number.
    pub fn attempt(&self) -> AttemptNumber {
        self.attempt
    }
    /// The reference to send to the provider (as its idempotency key).
    pub fn provider_reference(&self) -> &ProviderReference {
        &self.provider_reference
    }
    /// How long the provider call may take, from when the ticket was handed out, before the
    /// reconciler takes the attempt over; keep every provider deadline well below it.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if let Some(inner) = self.ledger.upgrade() {
            tracing::warn!(key = %self.key, attempt = self.attempt.get(), "ticket dropped without an outcome; key left for the reconciler");
            inner.gate.release(&self.key, self.attempt);
        }
    }
}

/// The right to make one provider call for one attempt of a capture, void or refund. Its
/// `AttemptStarted` step is durable. Record the call's outcome with
/// [`Ledger::record_operation`](crate::Ledger::record_operation); dropping it unrecorded leaves
/// the operation unknown for the reconciler, never retryable.
#[derive(Debug)]
#[must_use = "record the outcome of the provider call with Ledger::record_operation"]
pub struct OperationTicket {
    pub(super) key: IdempotencyKey,
    pub(super) ordinal: u32,
    pub(super) kind: OperationKind,
    pub(super) amount: Amount,
    pub(super) attempt: AttemptNumber,
    pub(super) provider_reference: ProviderReference,
    pub(super) ledger: Weak<Inner>,
    pub(super) lease_ms: u64,
    pub(super) recorded: bool,
}

impl OperationTicket {
    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
    /// The operation's ordinal within the key.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }
    /// What the operation does.
    pub fn kind(&self) -> OperationKind {
        self.kind
    }
    /// Its amount, in the key's currency.
    pub fn amount(&self) -> Amount {
        self.amount
    }
    /// The attempt number.
    pub fn attempt(&self) -> AttemptNumber {
        self.attempt
    }
    /// The reference to send to the provider (as its idempotency key).
    pub fn provider_reference(&self) -> &ProviderReference {
        &self.provider_reference
    }
    /// How long the provider call may take before the reconciler takes the attempt over.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

impl Drop for OperationTicket {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if let Some(inner) = self.ledger.upgrade() {
            tracing::warn!(key = %self.key, ordinal = self.ordinal, attempt = self.attempt.get(), "operation ticket dropped without an outcome; left for the reconciler");
            inner.release_operation(&self.key, self.ordinal, self.attempt);
        }
    }
}
