//! The payment service: `POST /payments` with an `Idempotency-Key` header, charged at most once
//! through payledger's [`AsyncLedger`], and the client of the provider it charges through.
//!
//! What it guarantees, whatever the network does:
//! - one key charges at most once: every request goes through [`AsyncLedger::charge_once`],
//!   whose gate lets exactly one attempt be in flight or succeeded per key;
//! - a charge that started finishes: it runs in a task of its own, so a client that disconnects
//!   mid-request cancels nothing (its reply is lost, the payment is not);
//! - a reply it cannot trust becomes *unknown*, never *failed*: the request is answered
//!   `202 Accepted`, retries get `409` with `Retry-After`, and the background reconciler asks
//!   the provider until it knows; then retries replay the final answer;
//! - replies follow the IETF httpapi Idempotency-Key draft: a missing key is `400`, a key reused
//!   for another body `422`, a key still processing (or unknown, or in review) `409`, and a
//!   completed key replays its response with `Idempotent-Replayed: true`. Errors are RFC 9457
//!   problem documents (`application/problem+json`).
//!
//! Routes: `POST /payments`, `GET /payments/{key}`, `GET /healthz`, `GET /metrics`.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use payledger::asynchronous::{AsyncLedger, AsyncProvider, AsyncReconciler};
use payledger::{
    AccountId, AlertThresholds, Amount, AttemptNumber, ChargeReply, ChargeReport, ChargeRequest,
    Currency, CustomerRef, Decision, Description, Error, IdempotencyKey, Intent, Metadata,
    NotSentReason, Phase, ProviderReference, QueryReply, UnknownReason,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The request header that names a payment, per the IETF httpapi Idempotency-Key draft.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Where the problem types are documented: each problem's `type` is this plus its name. A real
/// service points it at its own API documentation.
pub const PROBLEM_TYPE_BASE: &str = "https://docs.example.com/payments/problems/";

/// Histogram buckets (seconds) for the Prometheus exporter: the provider call and the journal
/// sync, from a fast disk's sync to a provider deadline.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How the service calls the provider and paces its answers.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// How long one charge call may take; a reply after it is a timeout (unknown). Must be
    /// below the ledger's `ticket_lease_ms`.
    pub deadline: Duration,
    /// Pause between two reconciler passes.
    pub reconcile_every: Duration,
    /// `Retry-After` (seconds) for a key in flight or unknown, and for an overloaded ledger.
    pub retry_after_secs: u64,
    /// `Retry-After` (seconds) for a key in manual review: a human is on it.
    pub review_retry_after_secs: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(2),
            reconcile_every: Duration::from_secs(1),
            retry_after_secs: 1,
            review_retry_after_secs: 300,
        }
    }
}

/// The payment service: cheap to clone, every clone shares the ledger and the provider client.
#[derive(Clone)]
pub struct PaymentService {
    inner: Arc<Inner>,
}

/// What the handlers and the reconciler share.
struct Inner {
    ledger: AsyncLedger,
    provider: HttpProvider,
    metrics: PrometheusHandle,
    config: ServiceConfig,
    /// The last reconciler pass's error, if it failed (reported by `/healthz`).
    reconciler_error: Mutex<Option<String>>,
}

impl PaymentService {
    /// A service charging through `provider` with `ledger`; `/metrics` renders `metrics` (the
    /// handle of the process's installed Prometheus recorder).
    pub fn new(
        ledger: AsyncLedger,
        provider: HttpProvider,
        metrics: PrometheusHandle,
        config: ServiceConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ledger,
                provider,
                metrics,
                config,
                reconciler_error: Mutex::new(None),
            }),
        }
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/payments", post(create_payment))
            .route("/payments/{key}", get(payment))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves on `listener`, with the reconciler in the background, until `shutdown` resolves
    /// (then stops accepting, lets the open requests finish, and stops the reconciler).
    ///
    /// # Errors
    /// The listener's I/O error.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let reconciler = tokio::spawn(self.clone().reconcile());
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        // A pass cut short leaves nothing half-done: what it recorded is recorded, and an
        // unknown key is asked again by the next process.
        reconciler.abort();
        let _ = reconciler.await;
        served
    }

    /// The reconciler, forever: a pass every `reconcile_every`. A failed pass (an overloaded
    /// queue, a provider outage, a stopped ledger) is reported on `/healthz` and retried at the
    /// next tick: an unknown key is never dropped, only asked again.
    async fn reconcile(self) {
        let reconciler =
            AsyncReconciler::new(self.inner.ledger.clone(), self.inner.provider.clone());
        loop {
            let result = reconciler.run_once().await;
            let error = result.err().map(|e| e.to_string());
            if let Some(error) = &error {
                eprintln!("reconciler pass failed: {error}");
            }
            *self
                .inner
                .reconciler_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = error;
            tokio::time::sleep(self.inner.config.reconcile_every).await;
        }
    }
}

/// The body of `POST /payments`: what is charged, to whom, for whom. Its fingerprint (every
/// field) is what makes a retry "the same request".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentRequest {
    /// Minor units (cents).
    amount: u64,
    /// ISO 4217, upper case.
    currency: String,
    /// The paying customer.
    customer: String,
    /// The merchant account credited.
    account: String,
    /// Statement text.
    #[serde(default)]
    description: Option<String>,
}

impl PaymentRequest {
    /// The ledger's intent: every field validated (a bad one is the client's `400`).
    fn into_intent(self) -> Result<Intent, payledger::InputError> {
        Ok(Intent {
            amount: Amount::new(self.amount)?,
            currency: Currency::new(&self.currency)?,
            account: AccountId::new(self.account)?,
            customer: CustomerRef::new(self.customer)?,
            description: self.description.map(Description::new).transpose()?,
            metadata: Metadata::default(),
        })
    }
}

/// `POST /payments`.
async fn create_payment(
    State(service): State<PaymentService>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    let intent = match serde_json::from_slice::<PaymentRequest>(&body)
        .map_err(|e| e.to_string())
        .and_then(|request| request.into_intent().map_err(|e| e.to_string()))
    {
        Ok(intent) => intent,
        Err(detail) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid-body", "invalid payment")
                .detail(detail)
                .into_response();
        }
    };
    let currency = intent.currency;
    let amount = intent.amount;
    // The charge runs in a task of its own: a client that disconnects drops this handler,
    // never the charge (a dropped charge_once would leave its attempt unknown until reconciled).
    let task = {
        let service = service.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let inner = &service.inner;
            inner
                .ledger
                .charge_once(&key, &intent, &inner.provider, inner.config.deadline)
                .await
        })
    };
    match task.await {
        Ok(Ok(report)) => answer(&service.inner.config, &key, currency, amount, &report),
        Ok(Err(error)) => ledger_error(&service.inner.config, &error),
        Err(join_error) => {
            // The task panicked: any attempt it started is unknown, and will be reconciled.
            eprintln!("charge task for {key} failed: {join_error}");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the charge was interrupted",
            )
            .detail("its outcome will be settled; retry with the same Idempotency-Key")
            .retry_after(service.inner.config.retry_after_secs)
            .into_response()
        }
    }
}

/// The response for what `charge_once` reports. A request that did not call the provider
/// answers from the key's state: for a final state that is a replay of the original response.
fn answer(
    config: &ServiceConfig,
    key: &IdempotencyKey,
    currency: Currency,
    amount: Amount,
    report: &ChargeReport,
) -> Response {
    let replayed = !report.called_provider;
    let (response, is_final) = match &report.decision {
        Decision::AlreadySucceeded {
            attempt,
            transaction_id,
            amount,
        } => {
            let body = Payment {
                key: key.as_str(),
                status: "succeeded",
                attempt: attempt.get(),
                transaction_id: Some(transaction_id.as_str()),
                amount: amount.minor(),
                currency: currency.as_str(),
                detail: None,
            };
            let location = location(key);
            let response = (
                StatusCode::CREATED,
                [(LOCATION, location)],
                axum::Json(body),
            );
            (response.into_response(), true)
        }
        Decision::AlreadyDeclined { attempt, code } => {
            let problem = Problem::new(
                StatusCode::PAYMENT_REQUIRED,
                "declined",
                "the payment was declined",
            )
            .detail(format!("the provider declined attempt {attempt}: {code}"))
            .extension("decline_code", code.as_str());
            (problem.into_response(), true)
        }
        Decision::AttemptsExhausted { attempt } => {
            let problem = Problem::new(
                StatusCode::BAD_GATEWAY,
                "attempts-exhausted",
                "the payment failed",
            )
            .detail(format!(
                "all {attempt} attempts provably did not charge; use a new Idempotency-Key to try again"
            ));
            (problem.into_response(), true)
        }
        // A call that provably sent nothing (the provider was unreachable): the key is ready
        // for another attempt.
        Decision::Attempt(_) => {
            let problem = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider-unavailable",
                "the payment provider could not be reached",
            )
            .detail("nothing was charged; retry with the same Idempotency-Key")
            .retry_after(config.retry_after_secs);
            (problem.into_response(), false)
        }
        Decision::AwaitingReconciliation { attempt } if report.called_provider => {
            let body = Payment {
                key: key.as_str(),
                status: "unknown",
                attempt: attempt.get(),
                transaction_id: None,
                amount: amount.minor(),
                currency: currency.as_str(),
                detail: Some(
                    "the provider's answer was lost; the payment may or may not be charged and \
                     will be settled by reconciliation: poll the Location or retry with the \
                     same Idempotency-Key",
                ),
            };
            let response = (
                StatusCode::ACCEPTED,
                [
                    (LOCATION, location(key)),
                    (RETRY_AFTER, HeaderValue::from(config.retry_after_secs)),
                ],
                axum::Json(body),
            );
            (response.into_response(), false)
        }
        Decision::InFlight { attempt } => (
            in_progress(
                "in-progress",
                "the original request is still being processed",
                *attempt,
                config.retry_after_secs,
            ),
            false,
        ),
        Decision::AwaitingReconciliation { attempt } => (
            in_progress(
                "outcome-unknown",
                "the outcome of the original request is not known yet",
                *attempt,
                config.retry_after_secs,
            ),
            false,
        ),
        Decision::InReview { attempt } => (
            in_progress(
                "in-review",
                "the payment is being reviewed by an operator",
                *attempt,
                config.review_retry_after_secs,
            ),
            false,
        ),
        Decision::InConflict { attempt } => {
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "in-conflict",
                "the payment needs an operator",
            )
            .detail(format!(
                "provider evidence contradicts attempt {attempt}; retrying will not help"
            ));
            (problem.into_response(), false)
        }
        Decision::KeyReused { .. } => {
            let problem = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "the Idempotency-Key was used for another request",
            )
            .detail("a key names one payment forever: send its original body, or use a new key");
            (problem.into_response(), false)
        }
    };
    if replayed && is_final {
        let mut response = response;
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response
    } else {
        response
    }
}

/// A `409` for a key whose original request has not completed: retry later.
fn in_progress(name: &str, title: &str, attempt: AttemptNumber, retry_after_secs: u64) -> Response {
    Problem::new(StatusCode::CONFLICT, name, title)
        .detail(format!(
            "attempt {attempt} has no final outcome yet; retry with the same Idempotency-Key"
        ))
        .retry_after(retry_after_secs)
        .into_response()
}

/// The response for an error of the ledger itself.
fn ledger_error(config: &ServiceConfig, error: &Error) -> Response {
    match error {
        Error::Overloaded { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the service is overloaded",
        )
        .detail("nothing was recorded; retry with the same Idempotency-Key")
        .retry_after(config.retry_after_secs)
        .into_response(),
        // The request was validated before it reached the ledger: anything else (a stopped
        // ledger, a deadline the ledger refuses) is the service's own failure.
        other => {
            eprintln!("ledger error: {other}");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the payment ledger failed",
            )
            .detail("retry with the same Idempotency-Key; a charge is never repeated")
            .retry_after(config.retry_after_secs)
            .into_response()
        }
    }
}

/// The key from the `Idempotency-Key` header: an RFC 8941 string (`"order-1"`), or for
/// convenience a bare token (`order-1`).
fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, Problem> {
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "invalid Idempotency-Key header",
        )
        .detail(detail)
    };
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "missing-idempotency-key",
            "the Idempotency-Key header is required",
        )
        .detail("POST /payments needs an Idempotency-Key header naming the payment"));
    };
    if values.next().is_some() {
        return Err(invalid("more than one Idempotency-Key header".to_owned()));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("the key is not visible ASCII".to_owned()))?;
    let key = structured_string(text.trim())
        .ok_or_else(|| invalid("a malformed quoted string".to_owned()))?;
    IdempotencyKey::new(key).map_err(|e| invalid(e.to_string()))
}

/// An RFC 8941 sf-string's content (`"a\"b"` is `a"b`), or `text` itself if it is not quoted;
/// `None` for a malformed quoted string.
fn structured_string(text: &str) -> Option<String> {
    let Some(quoted) = text.strip_prefix('"') else {
        return Some(text.to_owned());
    };
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                _ => return None,
            },
            '"' => return chars.next().is_none().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// `/payments/{key}`, the key percent-encoded (a key may hold `/`).
fn location(key: &IdempotencyKey) -> HeaderValue {
    let mut path = String::from("/payments/");
    for byte in key.as_str().bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            let _ = write!(path, "%{byte:02X}");
        }
    }
    // Percent-encoded ASCII is always a valid header value.
    HeaderValue::try_from(path).unwrap_or_else(|_| HeaderValue::from_static("/payments"))
}

/// The body of a `201` (and of a `202` while the outcome is unknown).
#[derive(Serialize)]
struct Payment<'a> {
    /// The Idempotency-Key.
    key: &'a str,
    /// `succeeded`, or `unknown` until reconciled.
    status: &'static str,
    /// The attempt that charged (or may have).
    attempt: u32,
    /// The provider's id of the charge, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
    /// Minor units.
    amount: u64,
    /// ISO 4217.
    currency: &'a str,
    /// What an unknown outcome means for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'static str>,
}

/// `GET /payments/{key}`: where the key stands.
async fn payment(State(service): State<PaymentService>, Path(key): Path<String>) -> Response {
    let key = match IdempotencyKey::new(key) {
        Ok(key) => key,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid-key", "invalid key")
                .detail(e.to_string())
                .into_response();
        }
    };
    match service.inner.ledger.state(&key).await {
        Ok(Some(state)) => {
            let sums = state.sums();
            let view = StateView {
                key: key.as_str(),
                phase: state.phase.name(),
                attempts_started: state.attempts_started,
                attempt: phase_attempt(&state.phase).map(AttemptNumber::get),
                amount: state.intent.as_ref().map(|i| i.amount.minor()),
                currency: state
                    .intent
                    .as_ref()
                    .map(|i| i.currency.as_str().to_owned()),
                charged: sums.captured,
                refunded: sums.refunded,
                transaction_id: match &state.phase {
                    Phase::Succeeded { transaction_id, .. } => Some(transaction_id.to_string()),
                    _ => None,
                },
                decline_code: match &state.phase {
                    Phase::Declined { code, .. } => Some(code.to_string()),
                    _ => None,
                },
                unknown_reason: match &state.phase {
                    Phase::Unknown { reason, .. } => Some(*reason),
                    _ => None,
                },
                in_conflict: state.conflict.is_some()
                    || matches!(state.phase, Phase::Conflict { .. }),
            };
            axum::Json(view).into_response()
        }
        Ok(None) => Problem::new(StatusCode::NOT_FOUND, "unknown-key", "no such payment")
            .detail(format!("no payment was ever requested with the key {key}"))
            .into_response(),
        Err(error) => ledger_error(&service.inner.config, &error),
    }
}

/// The body of `GET /payments/{key}`.
#[derive(Serialize)]
struct StateView<'a> {
    /// The Idempotency-Key.
    key: &'a str,
    /// The `payledger list --state` name of the phase.
    phase: &'static str,
    /// Attempts started so far (a new one only after proof the previous one did not charge).
    attempts_started: u32,
    /// The attempt the phase is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// The intent's amount, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<u64>,
    /// The intent's currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    /// Minor units charged (more than `amount` only if a conflict surfaced a duplicate).
    charged: u64,
    /// Minor units refunded.
    refunded: u64,
    /// The provider's id of the charge, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<String>,
    /// The provider's code, once declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_code: Option<String>,
    /// Why the outcome is unknown, while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown_reason: Option<UnknownReason>,
    /// Provider evidence contradicts the ledger: an operator must act.
    in_conflict: bool,
}

/// The attempt a phase is about, if any.
fn phase_attempt(phase: &Phase) -> Option<AttemptNumber> {
    match phase {
        Phase::Vacant | Phase::Ready { .. } => None,
        Phase::InFlight { attempt, .. }
        | Phase::Unknown { attempt, .. }
        | Phase::InReview { attempt, .. }
        | Phase::Succeeded { attempt, .. }
        | Phase::Declined { attempt, .. }
        | Phase::Exhausted { attempt }
        | Phase::Conflict { attempt, .. } => Some(*attempt),
    }
}

/// `GET /healthz`: `200` while the ledger works (with its figures and alerts), `503` with the
/// reason once it stopped (reopen it: restart the service) or cannot answer.
async fn healthz(State(service): State<PaymentService>) -> Response {
    let reconciler = service
        .inner
        .reconciler_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match service.inner.ledger.health().await {
        Ok(health) => {
            if let Some(cause) = &health.fatal {
                let reason = format!("the ledger stopped: {cause}: {}", cause.io_error());
                return unavailable("stopped", reason);
            }
            let view = HealthView {
                status: "ok",
                unknown: health.unknown,
                in_flight: health.in_flight,
                in_review: health.in_review,
                conflict: health.conflict,
                index_backlog: health.index_backlog,
                alerts: health
                    .alerts(&AlertThresholds::default())
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                reconciler_error: reconciler,
            };
            axum::Json(view).into_response()
        }
        Err(error) => unavailable("unavailable", error.to_string()),
    }
}

/// The body of a `200` from `/healthz`: the figures to watch, and the alerts payledger's own
/// rules raise (the same as `payledger health`); alerts are for humans, not a reason to fail
/// the probe.
#[derive(Serialize)]
struct HealthView {
    status: &'static str,
    unknown: usize,
    in_flight: usize,
    in_review: usize,
    conflict: usize,
    index_backlog: usize,
    alerts: Vec<String>,
    reconciler_error: Option<String>,
}

/// A `503` from `/healthz`.
fn unavailable(status: &'static str, reason: String) -> Response {
    #[derive(Serialize)]
    struct Down {
        status: &'static str,
        reason: String,
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(Down { status, reason }),
    )
        .into_response()
}

/// `GET /metrics`: the Prometheus exposition. `health()` runs first because it sets the gauges
/// (keys by phase, oldest ages, index lag); counters and histograms are emitted as things happen.
async fn metrics(State(service): State<PaymentService>) -> Response {
    if let Err(error) = service.inner.ledger.health().await {
        // The exposition is served all the same: its counters are still right.
        eprintln!("health for /metrics failed: {error}");
    }
    service.inner.metrics.run_upkeep();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        service.inner.metrics.render(),
    )
        .into_response()
}

/// An RFC 9457 problem document: `type`, `title`, `status`, `detail` and extension members,
/// served as `application/problem+json`.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    type_uri: String,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(flatten)]
    extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of type `PROBLEM_TYPE_BASE` + `name`.
    fn new(status: StatusCode, name: &str, title: &str) -> Self {
        Self {
            type_uri: format!("{PROBLEM_TYPE_BASE}{name}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    /// The explanation of this occurrence.
    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An extension member.
    fn extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// A `Retry-After` header.
    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // A struct of strings, numbers and JSON values always serialises.
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut response =
            (status, [(CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The provider's client: charges with `POST {base}/charges` (the provider reference as its
/// `Idempotency-Key`) and asks with `GET {base}/charges/{reference}`.
///
/// The provider's contract, which the mapping below relies on: `200` with `"succeeded"` is a
/// charge, `402` with `"declined"` a decline, `400` and `429` mean the request was refused
/// before processing (nothing charged); any `5xx`, a timeout or a dropped connection may hide a
/// charge. A query's `404` means "no record" only with the provider's own `not_found` body: a
/// `404` from a wrong URL or a proxy must never be read as "not charged".
#[derive(Clone, Debug)]
pub struct HttpProvider {
    client: reqwest::Client,
    charges: reqwest::Url,
    query_timeout: Duration,
}

/// The body of a charge sent to the provider.
#[derive(Serialize)]
struct ProviderCharge<'a> {
    amount: u64,
    currency: &'a str,
    account: &'a str,
    customer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// What the provider answers about a charge.
#[derive(Deserialize)]
struct ProviderAnswer {
    status: String,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    code: Option<String>,
}

impl HttpProvider {
    /// A client of the provider at `base` (e.g. `http://127.0.0.1:3001`); a status query may
    /// take `query_timeout`.
    ///
    /// # Errors
    /// An unusable `base` or HTTP client.
    pub fn new(
        base: &str,
        query_timeout: Duration,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        // `join` replaces the last segment of a base without a trailing slash: keep its path.
        let base = if base.ends_with('/') {
            reqwest::Url::parse(base)?
        } else {
            reqwest::Url::parse(&format!("{base}/"))?
        };
        let charges = base.join("charges")?;
        // A redirect is not an answer about a charge: never follow one (a POST turned into a
        // GET elsewhere would report on something else).
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            charges,
            query_timeout,
        })
    }

    /// `{base}/charges/{reference}`.
    fn charge_url(&self, reference: &ProviderReference) -> reqwest::Url {
        let mut url = self.charges.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(reference.as_str());
        }
        url
    }
}

impl AsyncProvider for HttpProvider {
    async fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        let body = ProviderCharge {
            amount: request.amount.minor(),
            currency: request.currency.as_str(),
            account: request.account.as_str(),
            customer: request.customer.as_str(),
            description: request.description.as_ref().map(Description::as_str),
        };
        let sent = self
            .client
            .post(self.charges.clone())
            .header(&IDEMPOTENCY_KEY, request.provider_reference.as_str())
            .timeout(request.deadline)
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Nothing reached the provider only if no connection was ever made.
            Err(e) if e.is_connect() && e.is_timeout() => {
                return ChargeReply::NotSent(NotSentReason::DeadlineBeforeSend);
            }
            Err(e) if e.is_connect() => {
                return ChargeReply::NotSent(NotSentReason::ConnectionRefused);
            }
            Err(e) if e.is_timeout() => return ChargeReply::Timeout,
            Err(_) => return ChargeReply::ConnectionLost,
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.is_timeout() => return ChargeReply::Timeout,
            Err(_) => return ChargeReply::ConnectionLost,
        };
        match status {
            200 | 402 => match serde_json::from_slice::<ProviderAnswer>(&bytes) {
                Ok(ProviderAnswer {
                    status: answer,
                    transaction_id: Some(transaction_id),
                    amount: Some(amount_minor),
                    ..
                }) if status == 200 && answer == "succeeded" => ChargeReply::Charged {
                    transaction_id,
                    amount_minor,
                },
                Ok(ProviderAnswer {
                    status: answer,
                    code: Some(code),
                    ..
                }) if status == 402 && answer == "declined" => ChargeReply::Declined { code },
                _ => ChargeReply::Malformed {
                    detail: format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
                },
            },
            400 | 429 => ChargeReply::NotSent(NotSentReason::RejectedBeforeProcessing),
            // 5xx, and any other status (a 409 while the reference is processing, a redirect):
            // the provider answered without saying what happened, so the charge is unknown.
            status => ChargeReply::ServerError { status },
        }
    }

    async fn query(&self, reference: &ProviderReference) -> QueryReply {
        let sent = self
            .client
            .get(self.charge_url(reference))
            .timeout(self.query_timeout)
            .send()
            .await;
        let failed = |e: reqwest::Error| {
            QueryReply::Failed(if e.is_timeout() {
                UnknownReason::Timeout
            } else {
                UnknownReason::ConnectionLost
            })
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => return failed(e),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return failed(e),
        };
        let answer = serde_json::from_slice::<ProviderAnswer>(&bytes);
        match (status, answer) {
            (200, Ok(answer)) => match (
                answer.status.as_str(),
                answer.transaction_id,
                answer.amount,
                answer.code,
            ) {
                ("succeeded", Some(transaction_id), Some(amount_minor), _) => {
                    QueryReply::Succeeded {
                        transaction_id,
                        amount_minor,
                    }
                }
                ("declined", _, _, Some(code)) => QueryReply::Declined { code },
                ("processing", ..) => QueryReply::Pending,
                (other, ..) => QueryReply::Malformed {
                    detail: format!("status 200 with {other:?}"),
                },
            },
            (404, Ok(answer)) if answer.status == "not_found" => QueryReply::NotFound,
            (500..=599, _) => QueryReply::Failed(UnknownReason::ProviderError { status }),
            (status, _) => QueryReply::Malformed {
                detail: format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
            },
        }
    }
}
