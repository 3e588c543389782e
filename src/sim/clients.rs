//! The logical clients: each takes an order, begins, calls the provider, records the reply; some
//! double-click; a broken client (self-test only) retries a timeout with a new key.
//!
//! Invariant: a client holds at most one ticket, and a ticket whose call "panicked" is dropped
//! unrecorded, as unwinding would drop it.

use rand::Rng;

use super::provider::ProviderPanic;
use super::world::FollowUp;
use super::world::{ClientState, DEADLINE, World};
use crate::error::{Error, Result};
use crate::ledger::Begin;
use crate::model::{Amount, Decision, IdempotencyKey, OperationKind, RequestId};
use crate::provider::{ChargeRequest, Provider};

/// The request id prefix of the refund that settles a conflict by returning the duplicate charge.
const DUPLICATE_REFUND: &str = "duplicate-";

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
            ClientState::Operating {
                order,
                follow,
                ticket,
            } => {
                self.count(ticket.kind().name());
                let (reference, kind, amount) = (
                    ticket.provider_reference().clone(),
                    ticket.kind(),
                    ticket.amount(),
                );
                let reply = self
                    .provider
                    .operate(order, follow, kind, &reference, amount);
                self.clients[c] = ClientState::OperationReplied {
                    order,
                    follow,
                    ticket,
                    reply,
                };
                Ok(())
            }
            ClientState::OperationReplied {
                order,
                follow,
                ticket,
                reply,
            } => {
                let outcome = reply.classify();
                let unknown = matches!(outcome, crate::model::Outcome::Unknown { .. });
                let kind = ticket.kind();
                match self.ledger()?.record_operation(ticket, outcome) {
                    Err(e) => self.ledger_failed(e),
                    Ok(_)
                        if unknown
                            && kind == OperationKind::Refund
                            && self.config.sabotage().retry_refund_with_new_id =>
                    {
                        self.retry_follow_up_with_new_id(order, follow)?;
                    }
                    Ok(_) => {}
                }
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

    /// The broken client's "fix" for a refund that timed out: the same refund again under a
    /// new request id.
    fn retry_follow_up_with_new_id(&mut self, order: usize, follow: usize) -> Result<()> {
        let follow_up = &mut self.orders[order].follow_ups[follow];
        follow_up.ids_used += 1;
        follow_up.request_id = RequestId::new(format!(
            "{}-retry{}",
            follow_up.request_id, follow_up.ids_used
        ))?;
        Ok(())
    }

    pub(super) fn client_begin(&mut self, c: usize) -> Result<()> {
        let clients = self.clients.len();
        let mine: Vec<usize> = (c..self.orders.len())
            .step_by(clients)
            .filter(|&o| !self.orders[o].finished())
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let order = mine[self.rng.random_range(0..mine.len())];
        if self.orders[order].done {
            return match self.orders[order].next_follow_up() {
                Some(follow) => self.client_operate(c, order, follow),
                None => Ok(()),
            };
        }
        let key = self.orders[order]
            .keys
            .last()
            .cloned()
            .ok_or(Error::SimulationStopped)?;
        let intent = self.orders[order].intent.clone();
        self.count("begins");
        let authorization = self.orders[order].authorization;
        let begin = |ledger: &crate::ledger::Ledger| {
            if authorization {
                ledger.begin_authorization(&key, &intent, false)
            } else {
                ledger.begin(&key, &intent)
            }
        };
        let first = match begin(self.ledger()?) {
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
            match begin(self.ledger()?) {
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
            Begin::AlreadySucceeded { .. } => {
                self.orders[order].done = true;
                self.orders[order].succeeded = true;
            }
            Begin::InConflict { .. } => {
                self.orders[order].done = true;
                self.plan_duplicate_refund(order, &key)?;
            }
            Begin::AlreadyDeclined { .. }
            | Begin::AttemptsExhausted { .. }
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

    /// A purchase in conflict because the provider charged twice: refund the duplicate, under
    /// the discipline of any refund, so the conflict is settled inside the ledger.
    pub(super) fn plan_duplicate_refund(
        &mut self,
        order: usize,
        key: &IdempotencyKey,
    ) -> Result<()> {
        let duplicates: Vec<bool> = self.orders[order]
            .follow_ups
            .iter()
            .filter(|f| f.request_id.as_str().starts_with(DUPLICATE_REFUND))
            .map(|f| f.done)
            .collect();
        // One refund of the duplicate at a time; another (under a new request id) only once the
        // last one ended without settling the conflict (the provider declined it).
        if self.orders[order].authorization || duplicates.contains(&false) {
            return Ok(());
        }
        let Some(state) = self.ledger()?.state(key)? else {
            return Ok(());
        };
        let intended = self.orders[order].intent.amount.minor();
        let excess = state.sums().captured.saturating_sub(intended);
        if excess == 0 || state.conflict_resolved() {
            return Ok(());
        }
        // After the follow-ups already planned (and perhaps made): their indices name them at
        // the provider.
        self.orders[order].follow_ups.push(FollowUp {
            kind: OperationKind::Refund,
            amount: Amount::new(excess)?,
            request_id: RequestId::new(format!(
                "{DUPLICATE_REFUND}{order:05}-{}",
                duplicates.len()
            ))?,
            ids_used: 1,
            done: false,
        });
        self.orders[order].succeeded = true;
        Ok(())
    }

    /// Starts (or replays) a follow-up of `order`.
    fn client_operate(&mut self, c: usize, order: usize, follow: usize) -> Result<()> {
        let Some(key) = self.orders[order].keys.last().cloned() else {
            return Ok(());
        };
        let follow_up = &self.orders[order].follow_ups[follow];
        let (kind, request_id, amount) = (
            follow_up.kind,
            follow_up.request_id.clone(),
            follow_up.amount,
        );
        self.count("operation begins");
        let begun = self
            .ledger()?
            .begin_operation(&key, kind, &request_id, amount);
        match begun {
            Ok(Decision::Attempt(ticket)) => {
                self.provider
                    .expect(ticket.provider_reference(), order, follow);
                self.clients[c] = ClientState::Operating {
                    order,
                    follow,
                    ticket,
                };
            }
            Ok(Decision::InFlight { .. } | Decision::AwaitingReconciliation { .. }) => {}
            Ok(_) => self.orders[order].follow_ups[follow].done = true,
            Err(Error::Rejected(_)) => {
                // Refused before anything was sent: a bound the plan cannot meet (a refund of
                // more than was captured, say). Nothing to do.
                self.count("operations refused");
                self.orders[order].follow_ups[follow].done = true;
            }
            Err(e) => self.ledger_failed(e),
        }
        Ok(())
    }

    /// A ledger call failed (poisoned journal, failed index): the service restarts.
    pub(super) fn ledger_failed(&mut self, error: Error) {
        tracing::debug!(%error, "ledger call failed; the simulated service restarts");
        self.restart_needed = true;
    }
}
