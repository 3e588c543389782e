//! Chaos over the event-store seam: the same clients' misbehaviour and the same provider
//! faults as the main simulation, against a [`StoreLedger`] over any [`EventStore`] — the
//! embedded ledger, the shard router, PostgreSQL (`payledger simulate --store postgres`).
//!
//! Invariants checked: no order is charged twice at the provider; after a heal phase every key
//! the provider charged is `Succeeded` in the store, and every key is settled (succeeded,
//! declined), in review, or retryable with nothing charged; no call fails.
//!
//! One thread, one seeded RNG, a manual clock: the same seed and an empty store give the same
//! report.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::{Clock, ManualClock};
use crate::error::Result;
use crate::model::{
    AccountId, Amount, Currency, CustomerRef, Decision, EvidenceSource, Finding, IdempotencyKey,
    Intent, Metadata, NotFoundPolicy, Phase, ProviderReference, ReconcileConfig, TransactionId,
    UnixMillis,
};
use crate::provider::{ChargeReply, ChargeRequest, Provider, QueryReply};
use crate::store::{EventStore, StoreConfig, StoreLedger};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreChaosConfig {
    /// Seed for every random choice.
    pub seed: u64,
    /// Steps before the heal phase.
    pub ops: u64,
    /// Orders (keys).
    pub keys: u64,
}

/// What happened, and what was violated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreChaosReport {
    /// Steps by kind.
    pub steps: BTreeMap<&'static str, u64>,
    /// Orders the provider charged more than once.
    pub double_charges: u64,
    /// Orders charged at the provider whose key is not `Succeeded` after healing.
    pub charged_not_succeeded: u64,
    /// Keys neither settled, in review, nor retryable-with-nothing-charged after healing.
    pub unresolved_after_heal: u64,
    /// Final phases by name.
    pub final_phases: BTreeMap<&'static str, u64>,
    /// Every violation, in order.
    pub violations: Vec<String>,
}

impl StoreChaosReport {
    /// No violation.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for StoreChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |m: &BTreeMap<&'static str, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "steps: {}", join(&self.steps))?;
        writeln!(f, "final states: {}", join(&self.final_phases))?;
        writeln!(f, "double charges: {}", self.double_charges)?;
        writeln!(
            f,
            "charged but not succeeded after heal: {}",
            self.charged_not_succeeded
        )?;
        writeln!(f, "unresolved after heal: {}", self.unresolved_after_heal)?;
        match self.violations.first() {
            None => write!(f, "result: ok"),
            Some(first) => write!(f, "result: VIOLATION {first}"),
        }
    }
}

/// The provider: charges once per reference; its faults are chosen by the world before each
/// call.
#[derive(Default)]
struct ChaosProvider {
    state: Mutex<ProviderState>,
}

#[derive(Default)]
struct ProviderState {
    /// reference → (transaction, order, the reference): ordered, so that picks are
    /// deterministic.
    charges: BTreeMap<String, (String, usize, ProviderReference)>,
    /// What the next charge call does.
    next: Fault,
    /// The order the next call is for.
    order: usize,
    /// Queries fail while set.
    outage: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Fault {
    #[default]
    None,
    /// Charged, the reply lost.
    ReplyLost,
    /// Refused before processing.
    Refused,
    /// Declined.
    Declined,
}

impl Provider for ChaosProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let mut s = crate::sync::lock(&self.state);
        let fault = std::mem::take(&mut s.next);
        match fault {
            Fault::Refused => {
                return ChargeReply::NotSent(crate::model::NotSentReason::ConnectionRefused);
            }
            Fault::Declined => {
                return ChargeReply::Declined {
                    code: "card_declined".into(),
                };
            }
            Fault::None | Fault::ReplyLost => {}
        }
        let n = s.charges.len() + 1;
        let order = s.order;
        let (txn, _, _) = s
            .charges
            .entry(request.provider_reference.as_str().to_string())
            .or_insert_with(|| {
                (
                    format!("ch_{n:06}"),
                    order,
                    request.provider_reference.clone(),
                )
            })
            .clone();
        if fault == Fault::ReplyLost {
            return ChargeReply::Timeout;
        }
        ChargeReply::Charged {
            transaction_id: txn,
            amount_minor: request.amount.minor(),
        }
    }

    fn query(&self, reference: &ProviderReference) -> QueryReply {
        let s = crate::sync::lock(&self.state);
        if s.outage {
            return QueryReply::Failed(crate::model::UnknownReason::Timeout);
        }
        match s.charges.get(reference.as_str()) {
            Some((txn, _, _)) => QueryReply::Succeeded {
                transaction_id: txn.clone(),
                amount_minor: 1_000,
            },
            None => QueryReply::NotFound,
        }
    }
}

fn intent() -> Result<Intent> {
    Ok(Intent {
        amount: Amount::new(1_000)?,
        currency: Currency::new("EUR")?,
        account: AccountId::new("acct_chaos")?,
        customer: CustomerRef::new("cus_chaos")?,
        description: None,
        metadata: Metadata::default(),
    })
}

/// Runs chaos against `store`, which must hold no key named `chaos-…` yet.
///
/// # Errors
/// The store's errors (a failed call is also reported as a violation before it is returned).
pub fn run<S: EventStore>(store: S, config: StoreChaosConfig) -> Result<StoreChaosReport> {
    let clock = Arc::new(ManualClock::new(UnixMillis(1_800_000_000_000)));
    let ledger = StoreLedger::new(
        store,
        StoreConfig {
            reconcile: ReconcileConfig::new(
                NotFoundPolicy::new(10_000, 2_000, 2)?,
                6,
                1_000,
                8_000,
                100,
            )?,
            ticket_lease_ms: 10_000,
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
        },
    );
    let provider = ChaosProvider::default();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut report = StoreChaosReport::default();
    let keys: Vec<IdempotencyKey> = (0..config.keys)
        .map(|n| IdempotencyKey::new(format!("chaos-{n:06}")))
        .collect::<std::result::Result<_, _>>()?;
    let intent = intent()?;
    let deadline = Duration::from_secs(2);
    if let Some(first) = keys.first()
        && ledger.state(first)?.is_some()
    {
        report.violations.push(format!(
            "the store already holds {first}: chaos needs an empty store"
        ));
        return Ok(report);
    }
    let count = |report: &mut StoreChaosReport, what: &'static str| {
        *report.steps.entry(what).or_default() += 1;
    };
    for _ in 0..config.ops {
        clock.advance(rng.random_range(0..400));
        let roll = rng.random_range(0..100);
        if roll < 70 {
            let order = rng.random_range(0..keys.len());
            let key = &keys[order];
            {
                let mut s = crate::sync::lock(&provider.state);
                s.order = order;
                s.next = match rng.random_range(0..100) {
                    0..10 => Fault::ReplyLost,
                    10..15 => Fault::Refused,
                    15..20 => Fault::Declined,
                    _ => Fault::None,
                };
            }
            if rng.random_range(0..100) < 10 {
                // The process dies after the provider call: the ticket is never recorded.
                count(&mut report, "process crashes");
                if let Decision::Attempt(ticket) = ledger.begin(key, &intent)? {
                    let request = ChargeRequest::new(
                        &intent,
                        ticket.attempt(),
                        ticket.provider_reference().clone(),
                        deadline,
                    );
                    let _ = provider.charge(&request);
                }
                continue;
            }
            count(&mut report, "charges");
            ledger.charge_once(key, &intent, &provider, deadline)?;
            if rng.random_range(0..100) < 15 {
                count(&mut report, "double clicks");
                ledger.charge_once(key, &intent, &provider, deadline)?;
            }
        } else if roll < 85 {
            count(&mut report, "reconcile passes");
            crate::sync::lock(&provider.state).outage = rng.random_range(0..100) < 20;
            ledger.reconcile_once(&provider)?;
        } else {
            // A webhook (sometimes twice) for a charge the provider made.
            let charged: Option<(ProviderReference, String)> = {
                let s = crate::sync::lock(&provider.state);
                let n = s.charges.len();
                if n == 0 {
                    None
                } else {
                    let i = rng.random_range(0..n);
                    s.charges
                        .values()
                        .nth(i)
                        .map(|(txn, _, reference)| (reference.clone(), txn.clone()))
                }
            };
            if let Some((reference, txn)) = charged {
                count(&mut report, "webhooks");
                let finding = Finding::Charged {
                    transaction_id: TransactionId::new(txn)?,
                    amount: intent.amount,
                };
                ledger.record_evidence(&reference, EvidenceSource::Webhook, finding)?;
            }
        }
    }
    // Heal: no faults; time passes; the reconciler runs until nothing is unknown.
    crate::sync::lock(&provider.state).outage = false;
    for _ in 0..40 {
        clock.advance(12_000);
        ledger.reconcile_once(&provider)?;
    }
    let s = crate::sync::lock(&provider.state);
    let mut charged_orders: HashMap<usize, u64> = HashMap::new();
    for (_, order, _) in s.charges.values() {
        *charged_orders.entry(*order).or_default() += 1;
    }
    for (order, key) in keys.iter().enumerate() {
        let charges = charged_orders.get(&order).copied().unwrap_or(0);
        if charges > 1 {
            report.double_charges += 1;
            report
                .violations
                .push(format!("{key} charged {charges} times at the provider"));
        }
        let state = ledger.state(key)?;
        let phase = state.as_ref().map_or("vacant", |s| s.phase.name());
        *report.final_phases.entry(phase).or_default() += 1;
        let succeeded = matches!(
            state.as_ref().map(|s| &s.phase),
            Some(Phase::Succeeded { .. })
        );
        if charges == 1 && !succeeded {
            report.charged_not_succeeded += 1;
            report
                .violations
                .push(format!("{key} was charged but is {phase} after healing"));
        }
        let settled = match state.as_ref().map(|s| &s.phase) {
            None | Some(Phase::Succeeded { .. } | Phase::Declined { .. }) => true,
            Some(Phase::InReview { .. }) => true,
            Some(Phase::Ready { .. } | Phase::Exhausted { .. }) => charges == 0,
            Some(_) => false,
        };
        if !settled {
            report.unresolved_after_heal += 1;
            report
                .violations
                .push(format!("{key} is {phase} after healing"));
        }
    }
    Ok(report)
}
