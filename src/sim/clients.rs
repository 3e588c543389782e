//! The logical clients: each takes an order, begins, calls the provider, records the reply; some
//! double-click; a broken client (self-test only) retries a timeout with a new key.
//!
//! Invariant: a client holds at most one ticket, and a ticket whose call "panicked" is dropped
//! unrecorded, as unwinding would drop it.

use rand::Rng;

use super::provider::ProviderPanic;
use super::world::{ClientState, DEADLINE, World};
use crate::error::{Error, Result};
use crate::ledger::Begin;
use crate::model::IdempotencyKey;
use crate::provider::{ChargeRequest, Provider};

impl World {
    pub(super) fn client_step(&mut self, c: usize) -> Result<()> {
        match std::mem::replace(&mut self.clients[c], ClientState::Idle) {
            ClientState::Idle => self.client_begin(c),
            ClientState::Holding { order, ticket } => {
                let request = ChargeRequest::new(
                    &self.orders[order].intent,
                    ticket.attempt(),
                    ticket.provider_reference().clone(),
                    DEADLINE,
                );
                self.count("provider calls");
                let provider = self.provider.clone();
                let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    provider.charge(&request)
                }));
                let reply = match call {
                    Ok(reply) => reply,
                    Err(panic) if panic.is::<ProviderPanic>() => {
                        // The ticket unwinds with the caller: dropped, never recorded.
                        drop(ticket);
                        return Ok(());
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                // A slow call takes simulated time, during which the world moves on.
                let (took, hang) = {
                    let state = self.provider.state();
                    (state.last_call_ms, state.hang_ms)
                };
                self.pass_time(took);
                self.clients[c] = match hang {
                    Some(hang) => ClientState::Hung {
                        order,
                        ticket,
                        reply,
                        until: self.now.plus_ms(hang),
                    },
                    None => ClientState::Replied {
                        order,
                        ticket,
                        reply,
                    },
                };
                Ok(())
            }
            ClientState::Hung {
                order,
                ticket,
                reply,
                until,
            } => {
                self.clients[c] = if self.now >= until {
                    ClientState::Replied {
                        order,
                        ticket,
                        reply,
                    }
                } else {
                    ClientState::Hung {
                        order,
                        ticket,
                        reply,
                        until,
                    }
                };
                Ok(())
            }
            ClientState::Replied {
                order,
                ticket,
                reply,
            } => {
                self.count("records");
                let outcome = reply.classify();
                let unknown = matches!(outcome, crate::model::Outcome::Unknown { .. });
                if let Err(e) = self.ledger()?.record(ticket, outcome) {
                    self.ledger_failed(e);
                } else if unknown && self.config.sabotage().retry_with_new_key {
                    self.retry_with_new_key(order)?;
                }
                Ok(())
            }
        }
    }

    /// The broken client's "fix" for a timeout: a fresh key for the same order.
    pub(super) fn retry_with_new_key(&mut self, order: usize) -> Result<()> {
        let n = self.orders[order].keys.len();
        let key = IdempotencyKey::new(format!("order-{order:05}-retry{n}"))?;
        self.orders[order].keys.push(key);
        Ok(())
    }

    pub(super) fn client_begin(&mut self, c: usize) -> Result<()> {
        let clients = self.clients.len();
        let mine: Vec<usize> = (c..self.orders.len())
            .step_by(clients)
            .filter(|&o| !self.orders[o].done)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let order = mine[self.rng.random_range(0..mine.len())];
        let key = self.orders[order]
            .keys
            .last()
            .cloned()
            .ok_or(Error::SimulationStopped)?;
        let intent = self.orders[order].intent.clone();
        self.count("begins");
        let first = match self.ledger()?.begin(&key, &intent) {
            Ok(first) => first,
            Err(e) => {
                self.ledger_failed(e);
                return Ok(());
            }
        };
        if self
            .rng
            .random_bool(self.config.profile.rates().double_click)
        {
            self.fault("double click");
            self.count("begins");
            match self.ledger()?.begin(&key, &intent) {
                Ok(Begin::Attempt(second)) => {
                    self.report
                        .violate(format!("two tickets at once for {key}"));
                    drop(second);
                }
                Ok(_) => {}
                Err(e) => self.ledger_failed(e),
            }
        }
        match first {
            Begin::Attempt(ticket) => self.clients[c] = ClientState::Holding { order, ticket },
            Begin::AlreadySucceeded { .. }
            | Begin::AlreadyDeclined { .. }
            | Begin::AttemptsExhausted { .. }
            | Begin::InConflict { .. }
            | Begin::InReview { .. } => {
                self.orders[order].done = true;
            }
            Begin::AwaitingReconciliation { .. } if self.config.sabotage().retry_with_new_key => {
                self.retry_with_new_key(order)?;
            }
            Begin::InFlight { .. } | Begin::AwaitingReconciliation { .. } => {}
            Begin::KeyReused { .. } => self
                .report
                .violate(format!("{key} reported reused with its own intent")),
        }
        Ok(())
    }

    /// A ledger call failed (poisoned journal, failed index): the service restarts.
    pub(super) fn ledger_failed(&mut self, error: Error) {
        tracing::debug!(%error, "ledger call failed; the simulated service restarts");
        self.restart_needed = true;
    }
}
