//! A simulated payment provider with seeded faults. It keeps the truth the simulation checks
//! against: which references were really charged, and which charges it lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::{Amount, NotSentReason, OperationKind, UnknownReason};
use crate::model::{ProviderReference, UnixMillis};
use crate::provider::{ChargeReply, ChargeRequest, Provider, QueryReply};

use super::Profile;

/// What the provider really did with a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Truth {
    /// Charged; queries show it from `visible_at` on.
    Charged {
        transaction_id: String,
        amount: u64,
        visible_at: UnixMillis,
    },
    /// Charged, then lost: queries say "not found" forever; a settlement line shows it later.
    Lost { transaction_id: String, amount: u64 },
    /// Declined.
    Declined,
}

/// Evidence waiting to be delivered (webhooks, settlement lines).
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub due: UnixMillis,
    pub reference: String,
    pub transaction_id: String,
    pub amount: u64,
    pub settlement: bool,
}

#[derive(Debug)]
pub(crate) struct ProviderState {
    pub rng: ChaCha8Rng,
    pub now: UnixMillis,
    pub profile: Profile,
    pub faults_on: bool,
    pub truth: BTreeMap<String, Truth>,
    pub pending: Vec<Pending>,
    pub charges: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Lag before a charge shows in queries, at most the ledger's visibility delay.
    pub visibility_lag_max_ms: u64,
    /// Time the last charge call took (a slow reply, still within the deadline).
    pub last_call_ms: u64,
    /// The last charge call hangs: its reply comes this long after the call, far beyond any
    /// ticket lease.
    pub hang_ms: Option<u64>,
    /// Which order's follow-up each operation reference was sent for (told by the client).
    pub expected: BTreeMap<String, (usize, usize)>,
    /// Captures, voids and refunds the provider executed: reference → what.
    pub executions: BTreeMap<String, Execution>,
}

/// A capture, void or refund the provider executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Execution {
    pub order: usize,
    /// Which of the order's follow-ups the client sent it for.
    pub follow: usize,
    pub kind: OperationKind,
    pub amount: u64,
}

/// What a simulated provider client "panics" with: unwound without the panic hook, so that a
/// simulation prints nothing for it.
pub(crate) struct ProviderPanic;

/// The simulated provider; clones share state.
#[derive(Clone, Debug)]
pub(crate) struct SimProvider(pub Arc<Mutex<ProviderState>>);

impl SimProvider {
    pub fn state(&self) -> MutexGuard<'_, ProviderState> {
        crate::sync::lock(&*self.0)
    }

    /// The client is about to send `reference` for follow-up `follow` of `order`.
    pub fn expect(&self, reference: &ProviderReference, order: usize, follow: usize) {
        self.state()
            .expected
            .insert(reference.as_str().to_string(), (order, follow));
    }

    /// A capture, void or refund sent with `reference`: executed at most once per reference
    /// (the provider's own idempotency), with the charge's faults, lost replies, late and
    /// duplicated webhooks.
    pub fn operate(
        &self,
        order: usize,
        follow: usize,
        kind: OperationKind,
        reference: &ProviderReference,
        amount: Amount,
    ) -> ChargeReply {
        let mut s = self.state();
        let p = s.profile.rates();
        if s.roll(p.refused) {
            s.fault("operation refused before processing");
            return ChargeReply::NotSent(NotSentReason::ConnectionRefused);
        }
        let reference = reference.as_str().to_string();
        if let Some(existing) = s.truth.get(&reference).cloned() {
            return match existing {
                Truth::Charged {
                    transaction_id,
                    amount,
                    ..
                } => ChargeReply::Charged {
                    transaction_id,
                    amount_minor: amount,
                },
                Truth::Lost { .. } => ChargeReply::Timeout,
                Truth::Declined => ChargeReply::Declined {
                    code: "operation_declined".into(),
                },
            };
        }
        if s.rng.random_bool(p.decline / 4.0) {
            s.truth.insert(reference, Truth::Declined);
            return ChargeReply::Declined {
                code: "operation_declined".into(),
            };
        }
        s.charges += 1;
        let transaction_id = format!("{}_{:06}", &kind.name()[..2], s.charges);
        let amount = amount.minor();
        let lag_max = s.visibility_lag_max_ms;
        let lag = s.rng.random_range(0..=lag_max);
        let now = s.now;
        s.truth.insert(
            reference.clone(),
            Truth::Charged {
                transaction_id: transaction_id.clone(),
                amount,
                visible_at: now.plus_ms(lag),
            },
        );
        s.executions.insert(
            reference.clone(),
            Execution {
                order,
                follow,
                kind,
                amount,
            },
        );
        if s.roll(p.webhook) {
            let copies = if s.rng.random_bool(0.2) {
                s.fault("duplicate webhook");
                2
            } else {
                1
            };
            for _ in 0..copies {
                let due = now.plus_ms(s.rng.random_range(0..300_000));
                s.pending.push(Pending {
                    due,
                    reference: reference.clone(),
                    transaction_id: transaction_id.clone(),
                    amount,
                    settlement: false,
                });
            }
        }
        if s.roll(p.reply_lost) {
            s.fault("operation reply lost");
            return ChargeReply::ConnectionLost;
        }
        if s.roll(p.server_error_processed) {
            s.fault("operation 5xx after processing");
            return ChargeReply::ServerError { status: 500 };
        }
        ChargeReply::Charged {
            transaction_id,
            amount_minor: amount,
        }
    }
}

impl ProviderState {
    fn roll(&mut self, rate: f64) -> bool {
        self.faults_on && rate > 0.0 && self.rng.random_bool(rate.min(1.0))
    }

    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }
}

impl Provider for SimProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let mut s = self.state();
        let p = s.profile.rates();
        s.last_call_ms = 0;
        s.hang_ms = None;
        if s.roll(p.provider_panic / 2.0) {
            s.fault("provider client panicked before sending");
            drop(s);
            std::panic::resume_unwind(Box::new(ProviderPanic));
        }
        if s.roll(p.slow_reply) {
            s.fault("slow reply within the deadline");
            let deadline_ms = u64::try_from(request.deadline.as_millis()).unwrap_or(u64::MAX);
            let slow = s.rng.random_range(deadline_ms / 4..deadline_ms / 2 + 1);
            s.last_call_ms = slow;
        }
        if s.roll(p.refused) {
            s.fault("refused before processing");
            return ChargeReply::NotSent(NotSentReason::ConnectionRefused);
        }
        if s.roll(p.server_error_unprocessed) {
            s.fault("5xx without processing");
            return ChargeReply::ServerError { status: 503 };
        }
        let reference = request.provider_reference.as_str().to_string();
        if let Some(existing) = s.truth.get(&reference).cloned() {
            // The provider's own idempotency: the same reference is never processed twice.
            return match existing {
                Truth::Charged {
                    transaction_id,
                    amount,
                    ..
                } => ChargeReply::Charged {
                    transaction_id,
                    amount_minor: amount,
                },
                Truth::Lost { .. } => ChargeReply::Timeout,
                Truth::Declined => ChargeReply::Declined {
                    code: "card_declined".into(),
                },
            };
        }
        if s.rng.random_bool(p.decline) {
            s.truth.insert(reference, Truth::Declined);
            return ChargeReply::Declined {
                code: "card_declined".into(),
            };
        }
        s.charges += 1;
        let transaction_id = format!("ch_{:06}", s.charges);
        let amount = request.amount.minor();
        let lag_max = s.visibility_lag_max_ms;
        let lag = s.rng.random_range(0..=lag_max);
        let now = s.now;
        if s.roll(p.lose_charge) {
            s.fault("charge processed then lost");
            s.truth.insert(
                reference.clone(),
                Truth::Lost {
                    transaction_id: transaction_id.clone(),
                    amount,
                },
            );
            let due = now.plus_ms(s.rng.random_range(50_000..400_000));
            s.pending.push(Pending {
                due,
                reference,
                transaction_id,
                amount,
                settlement: true,
            });
            return ChargeReply::Timeout;
        }
        s.truth.insert(
            reference.clone(),
            Truth::Charged {
                transaction_id: transaction_id.clone(),
                amount,
                visible_at: now.plus_ms(lag),
            },
        );
        if s.roll(p.webhook) {
            let due = now.plus_ms(s.rng.random_range(0..120_000));
            s.pending.push(Pending {
                due,
                reference,
                transaction_id: transaction_id.clone(),
                amount,
                settlement: false,
            });
        }
        if s.roll(p.provider_panic / 2.0) {
            s.fault("provider client panicked after the charge");
            drop(s);
            std::panic::resume_unwind(Box::new(ProviderPanic));
        }
        if s.roll(p.hung_call) {
            s.fault("provider call hung past its lease");
            let hang = s.rng.random_range(5 * 60_000..30 * 60_000);
            s.hang_ms = Some(hang);
        }
        if s.roll(p.reply_lost) {
            s.fault("success reply lost");
            return ChargeReply::ConnectionLost;
        }
        if s.roll(p.reply_late) {
            s.fault("success reply after the deadline");
            return ChargeReply::Timeout;
        }
        if s.roll(p.server_error_processed) {
            s.fault("5xx after processing");
            return ChargeReply::ServerError { status: 500 };
        }
        if s.roll(p.malformed) {
            s.fault("reply in an unexpected shape");
            return ChargeReply::Malformed {
                detail: "{\"status\":\"ok\",\"id\":null}".into(),
            };
        }
        ChargeReply::Charged {
            transaction_id,
            amount_minor: amount,
        }
    }

    fn query(&self, reference: &ProviderReference) -> QueryReply {
        let mut s = self.state();
        let p = s.profile.rates();
        if s.roll(p.query_outage) {
            s.fault("query outage");
            return QueryReply::Failed(UnknownReason::ProviderError { status: 503 });
        }
        match s.truth.get(reference.as_str()) {
            Some(Truth::Charged {
                transaction_id,
                amount,
                visible_at,
            }) if *visible_at <= s.now => QueryReply::Succeeded {
                transaction_id: transaction_id.clone(),
                amount_minor: *amount,
            },
            // Inside its visibility lag a real provider does not show the charge yet: this is
            // why "not found" is trusted only after the visibility delay.
            Some(Truth::Charged { .. }) => QueryReply::NotFound,
            Some(Truth::Declined) => QueryReply::Declined {
                code: "card_declined".into(),
            },
            Some(Truth::Lost { .. }) | None => QueryReply::NotFound,
        }
    }
}
