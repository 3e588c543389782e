//! A fresh order and a provider that charges at once, blocking or async: the benches that
//! measure the ledger's own cost (`async.rs`, `store.rs`) share them.

use payledger::asynchronous::AsyncProvider;
use payledger::*;

/// The order every charge is for.
pub fn intent() -> Intent {
    Intent {
        amount: Amount::new(4_999).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_bench").unwrap(),
        customer: CustomerRef::new("cus_bench").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

/// A provider that charges at once, blocking or async.
pub struct Instant0;

impl Provider for Instant0 {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        ChargeReply::Charged {
            transaction_id: format!("ch_{}", request.provider_reference),
            amount_minor: request.amount.minor(),
        }
    }
    fn query(&self, _: &ProviderReference) -> QueryReply {
        QueryReply::NotFound
    }
}

impl AsyncProvider for Instant0 {
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = ChargeReply> + Send {
        let reply = Provider::charge(self, request);
        async move { reply }
    }
    fn query(&self, reference: &ProviderReference) -> impl Future<Output = QueryReply> + Send {
        let reply = Provider::query(self, reference);
        async move { reply }
    }
}
