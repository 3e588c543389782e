//! [`AsyncLedger`]: the blocking API's twins as futures, and [`AsyncProvider`].
//!
//! Invariant: each method queues exactly one blocking call (two for `charge_once`, with the
//! provider call between them on the caller's task) and answers what that call answered.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pool::{AsyncConfig, Pool, Reply};
use crate::error::Result;
use crate::ledger::{
    Begin, Call, ChargeReport, EvidenceOutcome, Health, HistoryEntry, Ledger, OperationBegin,
    OperationTicket, Ticket, outcome_within,
};
use crate::model::{
    Amount, AttemptNumber, EvidenceSource, Finding, IdempotencyKey, Intent, Note, OperationKind,
    Operator, Outcome, PaymentState, PhaseKind, PrimaryKind, ProviderReference, RequestId,
    Resolution,
};
use crate::provider::{ChargeReply, ChargeRequest, QueryReply};

/// A payment provider's client for async code: the twin of [`Provider`](crate::Provider).
///
/// The provider must honour `request.deadline` itself (e.g. a `reqwest` timeout): a reply
/// after the deadline is recorded as a timeout, whatever it says.
pub trait AsyncProvider: Send + Sync {
    /// Sends one charge.
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = ChargeReply> + Send;
    /// Asks what happened to the request sent with `reference`.
    fn query(&self, reference: &ProviderReference) -> impl Future<Output = QueryReply> + Send;
}

impl<P: AsyncProvider + ?Sized> AsyncProvider for Arc<P> {
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = ChargeReply> + Send {
        (**self).charge(request)
    }
    fn query(&self, reference: &ProviderReference) -> impl Future<Output = QueryReply> + Send {
        (**self).query(reference)
    }
}

/// An open [`Ledger`] behind a bounded pool of worker threads. Clones share the pool; the
/// workers stop once the last clone is dropped (after finishing what was queued).
///
/// # Cancellation
/// Every method but [`AsyncLedger::charge_once`] queues its call when it is called and returns
/// a [`Reply`]; dropping the reply (a client disconnects, a `select!` picks another branch, a
/// timeout fires) never cancels the call, it only discards the answer:
/// - a dropped [`AsyncLedger::begin`] that started an attempt leaves its ticket unused; an
///   unused ticket is dropped, and the ledger holds the attempt as *possibly sent*: the key is
///   unknown until the reconciler's queries prove the provider never saw it (then it is
///   retryable) — never charged twice;
/// - a dropped [`AsyncLedger::record`] (or `record_evidence`, `resolve`) is recorded all the
///   same; asking [`AsyncLedger::state`] shows it;
/// - a dropped [`AsyncLedger::charge_once`] stops at its next `.await`: before `begin` is
///   queued nothing happens; after, as a dropped `begin`; while the provider call is awaited,
///   the ticket is dropped and the key is unknown until reconciled (the provider may or may not
///   have charged; its reply, if any, is lost, and the reconciler asks); once `record` is
///   queued, the outcome is recorded.
///
/// A service that must finish a charge although its client went away runs `charge_once` in a
/// spawned task (the example service does).
///
/// ```
/// use payledger::*;
/// use payledger::asynchronous::{AsyncConfig, AsyncLedger};
///
/// # futures::executor::block_on(async {
/// let dir = tempfile::tempdir()?;
/// let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default())?;
/// let ledger = AsyncLedger::new(ledger, AsyncConfig::default())?;
/// let key = IdempotencyKey::new("order-1")?;
/// let intent = Intent {
///     amount: Amount::new(1_000)?,
///     currency: Currency::new("EUR")?,
///     account: AccountId::new("acct_1")?,
///     customer: CustomerRef::new("cus_1")?,
///     description: None,
///     metadata: Metadata::default(),
/// };
/// let Begin::Attempt(ticket) = ledger.begin(&key, &intent).await? else { unreachable!() };
/// // Call the provider (awaiting its client) with ticket.provider_reference(), then:
/// let paid = Outcome::Succeeded { transaction_id: TransactionId::new("ch_1")?, amount: intent.amount };
/// let state = ledger.record(ticket, paid).await?;
/// assert!(matches!(state.phase, Phase::Succeeded { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AsyncLedger {
    ledger: Ledger,
    pool: Arc<Pool>,
}

impl AsyncLedger {
    /// Puts `ledger` behind `config.workers` worker threads.
    ///
    /// # Errors
    /// [`Error::Input`](crate::Error::Input) for a config out of range; an I/O error if a
    /// thread cannot be started.
    pub fn new(ledger: Ledger, config: AsyncConfig) -> Result<Self> {
        let pool = Pool::start(&ledger, config)?;
        Ok(Self {
            ledger,
            pool: Arc::new(pool),
        })
    }

    /// The blocking ledger (for code that already runs on a blocking thread).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// [`Ledger::begin`].
    pub fn begin(&self, key: &IdempotencyKey, intent: &Intent) -> Reply<Begin> {
        self.pool.begin(Call::Begin {
            key: key.clone(),
            intent: intent.clone(),
            primary: PrimaryKind::Purchase,
        })
    }

    /// [`Ledger::begin_authorization`].
    pub fn begin_authorization(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        multiple_captures: bool,
    ) -> Reply<Begin> {
        self.pool.begin(Call::Begin {
            key: key.clone(),
            intent: intent.clone(),
            primary: PrimaryKind::Authorization { multiple_captures },
        })
    }

    /// [`Ledger::record`]. Never refused with [`Error::Overloaded`](crate::Error::Overloaded):
    /// the attempt was admitted by its `begin`, and its outcome always queues.
    pub fn record(&self, ticket: Ticket, outcome: Outcome) -> Reply<PaymentState> {
        self.pool.record(Call::Record { ticket, outcome })
    }

    /// [`Ledger::charge_once`] with an async provider: `begin` and `record` run on the pool,
    /// the provider call on the caller's task. See the type's docs for what dropping this
    /// future midway leaves behind.
    ///
    /// # Errors
    /// As [`Ledger::charge_once`], and [`Error::Overloaded`](crate::Error::Overloaded).
    pub async fn charge_once<P: AsyncProvider + ?Sized>(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        provider: &P,
        deadline: Duration,
    ) -> Result<ChargeReport> {
        self.ledger.check_deadline(deadline)?;
        let fingerprint = intent.fingerprint();
        let ticket = match self.begin(key, intent).await?.into_attempt() {
            Ok(ticket) => ticket,
            Err(other) => return Ok(ChargeReport::not_called(other)),
        };
        let request = ChargeRequest::new(
            intent,
            ticket.attempt(),
            ticket.provider_reference().clone(),
            deadline,
        );
        let started = Instant::now();
        let reply = provider.charge(&request).await;
        let outcome = outcome_within(reply, started.elapsed(), deadline);
        crate::telemetry::provider_call(started.elapsed());
        let state = self.record(ticket, outcome.clone()).await?;
        Ok(ChargeReport {
            called_provider: true,
            outcome: Some(outcome),
            decision: state.decide(&fingerprint),
        })
    }

    /// [`Ledger::record_evidence`].
    pub fn record_evidence(
        &self,
        reference: &ProviderReference,
        source: EvidenceSource,
        finding: Finding,
    ) -> Reply<EvidenceOutcome> {
        let reference = reference.clone();
        self.pool
            .call(move |ledger| ledger.record_evidence(&reference, source, finding))
    }

    /// [`Ledger::resolve`].
    pub fn resolve(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        resolution: Resolution,
        operator: Operator,
        note: Note,
    ) -> Reply<PaymentState> {
        let key = key.clone();
        self.pool
            .call(move |ledger| ledger.resolve(&key, attempt, resolution, operator, note))
    }

    /// [`Ledger::begin_operation`].
    pub fn begin_operation(
        &self,
        key: &IdempotencyKey,
        kind: OperationKind,
        request_id: &RequestId,
        amount: Amount,
    ) -> Reply<OperationBegin> {
        let (key, request_id) = (key.clone(), request_id.clone());
        self.pool
            .call(move |ledger| ledger.begin_operation(&key, kind, &request_id, amount))
    }

    /// [`Ledger::record_operation`]. Never refused with
    /// [`Error::Overloaded`](crate::Error::Overloaded), as [`AsyncLedger::record`].
    pub fn record_operation(
        &self,
        ticket: OperationTicket,
        outcome: Outcome,
    ) -> Reply<PaymentState> {
        self.pool
            .complete(move |ledger| ledger.record_operation(ticket, outcome))
    }

    /// [`Ledger::resolve_operation`].
    pub fn resolve_operation(
        &self,
        key: &IdempotencyKey,
        ordinal: u32,
        attempt: AttemptNumber,
        resolution: Resolution,
        operator: Operator,
        note: Note,
    ) -> Reply<PaymentState> {
        let key = key.clone();
        self.pool.call(move |ledger| {
            ledger.resolve_operation(&key, ordinal, attempt, resolution, operator, note)
        })
    }

    /// [`Ledger::state`].
    pub fn state(&self, key: &IdempotencyKey) -> Reply<Option<PaymentState>> {
        let key = key.clone();
        self.pool.call(move |ledger| ledger.state(&key))
    }

    /// [`Ledger::history`].
    pub fn history(&self, key: &IdempotencyKey) -> Reply<Vec<HistoryEntry>> {
        let key = key.clone();
        self.pool.call(move |ledger| ledger.history(&key))
    }

    /// [`Ledger::list`].
    pub fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Reply<Vec<PaymentState>> {
        let after = after.cloned();
        self.pool
            .call(move |ledger| ledger.list(phase, after.as_ref(), limit))
    }

    /// [`Ledger::health`] (which also sets the metrics gauges).
    pub fn health(&self) -> Reply<Health> {
        self.pool.call(Ledger::health)
    }

    /// Runs `job` with the ledger on a worker: for blocking work the twins above do not cover.
    pub fn run<T, F>(&self, job: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        self.pool.call(job)
    }
}
