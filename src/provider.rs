//! The provider seam: what the ledger sends to a payment provider, the raw replies it gets back,
//! and their classification into the model's outcomes and answers.
//!
//! Invariant: only a reply that proves the request never reached the provider is "not sent";
//! timeouts, dropped connections, server errors and replies of an unexpected shape are unknown,
//! and a success whose id or amount fails validation is unknown too.

use std::time::Duration;

use crate::model::Intent;
use crate::model::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, DeclineCode, Description,
    ProviderReference, TransactionId,
};
use crate::model::{NotFoundPolicy, NotSentReason, Outcome, QueryAnswer, UnknownReason};

/// What is sent to the provider for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The reference for this attempt; send it as the provider's idempotency key.
    pub provider_reference: ProviderReference,
    /// The attempt number.
    pub attempt: AttemptNumber,
    /// Amount in minor units.
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
    /// Merchant or account.
    pub account: AccountId,
    /// Paying customer.
    pub customer: CustomerRef,
    /// Statement description.
    pub description: Option<Description>,
    /// How long the caller will wait for the reply; a reply after it counts as a timeout.
    pub deadline: Duration,
}

impl ChargeRequest {
    /// The request for `attempt` of `intent`.
    pub fn new(
        intent: &Intent,
        attempt: AttemptNumber,
        provider_reference: ProviderReference,
        deadline: Duration,
    ) -> Self {
        Self {
            provider_reference,
            attempt,
            amount: intent.amount,
            currency: intent.currency,
            account: intent.account.clone(),
            customer: intent.customer.clone(),
            description: intent.description.clone(),
            deadline,
        }
    }
}

/// A provider's reply to a charge, as raw as the integration received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeReply {
    /// The provider says it charged.
    Charged {
        /// Its transaction id, unvalidated.
        transaction_id: String,
        /// The amount it says it charged.
        amount_minor: u64,
    },
    /// The provider says it declined.
    Declined {
        /// Its code, unvalidated.
        code: String,
    },
    /// The request provably never reached the provider.
    NotSent(NotSentReason),
    /// No reply within the deadline.
    Timeout,
    /// The connection dropped after the request was sent.
    ConnectionLost,
    /// A server error.
    ServerError {
        /// Its status.
        status: u16,
    },
    /// A reply the integration could not parse.
    Malformed {
        /// What was received, for the logs.
        detail: String,
    },
}

impl ChargeReply {
    /// The model's outcome for this reply. Anything that does not prove what happened is
    /// unknown; a success with an invalid id or amount is unknown too (the reconciler will ask).
    pub fn classify(self) -> Outcome {
        let unparseable = Outcome::Unknown {
            reason: UnknownReason::UnparseableReply,
        };
        match self {
            ChargeReply::Charged {
                transaction_id,
                amount_minor,
            } => match (
                TransactionId::new(transaction_id),
                Amount::new(amount_minor),
            ) {
                (Ok(transaction_id), Ok(amount)) => Outcome::Succeeded {
                    transaction_id,
                    amount,
                },
                _ => unparseable,
            },
            ChargeReply::Declined { code } => match DeclineCode::new(code) {
                Ok(code) => Outcome::Declined { code },
                Err(_) => unparseable,
            },
            ChargeReply::NotSent(reason) => Outcome::NotSent { reason },
            ChargeReply::Timeout => Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
            ChargeReply::ConnectionLost => Outcome::Unknown {
                reason: UnknownReason::ConnectionLost,
            },
            ChargeReply::ServerError { status } => Outcome::Unknown {
                reason: UnknownReason::ProviderError { status },
            },
            ChargeReply::Malformed { detail } => {
                tracing::warn!(%detail, "provider reply could not be parsed; outcome unknown");
                unparseable
            }
        }
    }
}

/// A provider's reply to a status query, raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryReply {
    /// The charge exists and succeeded.
    Succeeded {
        /// Its transaction id, unvalidated.
        transaction_id: String,
        /// Its amount.
        amount_minor: u64,
    },
    /// The request exists and was declined.
    Declined {
        /// Its code, unvalidated.
        code: String,
    },
    /// The request exists and is still processing.
    Pending,
    /// The provider has no record of the reference.
    NotFound,
    /// The query failed.
    Failed(UnknownReason),
    /// A reply that could not be parsed.
    Malformed {
        /// What was received.
        detail: String,
    },
}

impl QueryReply {
    /// The model's answer. "Not found" carries `policy` and `waited_ms`, the monotonic time the
    /// ledger had waited since the attempt became unknown when the query was sent.
    pub fn classify(self, policy: NotFoundPolicy, waited_ms: u64) -> QueryAnswer {
        let failed = QueryAnswer::QueryFailed {
            reason: UnknownReason::UnparseableReply,
        };
        match self {
            QueryReply::Succeeded {
                transaction_id,
                amount_minor,
            } => match (
                TransactionId::new(transaction_id),
                Amount::new(amount_minor),
            ) {
                (Ok(transaction_id), Ok(amount)) => QueryAnswer::FoundSucceeded {
                    transaction_id,
                    amount,
                },
                _ => failed,
            },
            QueryReply::Declined { code } => match DeclineCode::new(code) {
                Ok(code) => QueryAnswer::FoundDeclined { code },
                Err(_) => failed,
            },
            QueryReply::Pending => QueryAnswer::FoundPending,
            QueryReply::NotFound => QueryAnswer::NotFoundAfterWait { policy, waited_ms },
            QueryReply::Failed(reason) => QueryAnswer::QueryFailed { reason },
            QueryReply::Malformed { detail } => {
                tracing::warn!(%detail, "provider query reply could not be parsed");
                failed
            }
        }
    }
}

/// A payment provider. Implementations must send `provider_reference` as the provider's own
/// idempotency key where the provider supports one.
pub trait Provider: Send + Sync {
    /// Sends one charge.
    fn charge(&self, request: &ChargeRequest) -> ChargeReply;
    /// Asks what happened to the request sent with `reference`.
    fn query(&self, reference: &ProviderReference) -> QueryReply;
}

/// A borrowed provider is a provider.
impl<P: Provider + ?Sized> Provider for &P {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        (**self).charge(request)
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        (**self).query(reference)
    }
}

/// A shared provider is a provider, so one client can serve `charge_once` and the reconciler.
impl<P: Provider + ?Sized> Provider for std::sync::Arc<P> {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        (**self).charge(request)
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        (**self).query(reference)
    }
}
