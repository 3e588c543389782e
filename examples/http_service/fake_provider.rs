//! A fake payment provider over HTTP, with the faults real providers have: the stand-in the
//! example service charges through, in `cargo run --example http_service` and in its tests.
//!
//! It keeps a real provider's promise: **one charge per provider reference**. A charge is
//! processed once; a request repeating its reference (the `Idempotency-Key` header) replays
//! the same answer and the same transaction, and never charges again. Processing runs in a task
//! of its own, so a client that goes away does not stop it midway.
//!
//! Routes:
//! - `POST /charges` (`Idempotency-Key: <reference>`, JSON `amount`, `currency`, `account`,
//!   `customer`, optional `description`): `200 {"status":"succeeded","transaction_id","amount"}`,
//!   `402 {"status":"declined","code"}` (customer `cus_declined`, a test-mode value), `400` for a
//!   request refused before processing, `409` while the reference is processing or was used with
//!   another body;
//! - `GET /charges/{reference}`: `200` with `succeeded`, `declined` or `processing`, or
//!   `404 {"status":"not_found"}`;
//! - `POST /control` (JSON, every field optional: `latency_ms`, `hang_ms`, `faults`,
//!   `queries_fail`): changes the behaviour; `faults` are queued for the next charges, one each:
//!   `timeout` (process, then answer only after `hang_ms`), `error_before_processing` (`503`,
//!   nothing charged), `error_after_processing` (charge, then `500`), `lost_reply` (charge, then
//!   drop the connection mid-reply);
//! - `GET /stats`: requests received and charges processed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

/// A fault injected into one charge request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Process the charge, then reply only after [`Behaviour::hang`]: beyond the client's
    /// deadline, the reply is lost to time.
    Timeout,
    /// Answer `503` without processing anything.
    ErrorBeforeProcessing,
    /// Process the charge, then answer `500`.
    ErrorAfterProcessing,
    /// Process the charge, then drop the connection in the middle of the reply.
    LostReply,
}

/// How the provider behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// How long processing a charge takes.
    pub latency: Duration,
    /// How long a [`Fault::Timeout`] waits before replying.
    pub hang: Duration,
    /// Faults for the next charge requests, one each, in order.
    pub faults: VecDeque<Fault>,
    /// The status API answers `503` to every query (an outage).
    pub queries_fail: bool,
}

impl Default for Behaviour {
    /// 50 ms per charge, a 10 s hang, no faults.
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(50),
            hang: Duration::from_secs(10),
            faults: VecDeque::new(),
            queries_fail: false,
        }
    }
}

/// The body of a charge request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeBody {
    amount: u64,
    currency: String,
    account: String,
    customer: String,
    #[serde(default)]
    description: Option<String>,
}

/// What the provider holds for one reference.
#[derive(Clone, Debug)]
enum Charge {
    Processing {
        body: ChargeBody,
    },
    Succeeded {
        body: ChargeBody,
        transaction_id: String,
    },
    Declined {
        body: ChargeBody,
        code: String,
    },
}

impl Charge {
    /// The request that created it.
    fn body(&self) -> &ChargeBody {
        match self {
            Charge::Processing { body }
            | Charge::Succeeded { body, .. }
            | Charge::Declined { body, .. } => body,
        }
    }

    /// The answer to a charge request or a query for this charge.
    fn answer(&self, to_charge: bool) -> Response {
        match self {
            Charge::Processing { .. } if to_charge => reply(
                StatusCode::CONFLICT,
                json!({ "status": "processing", "error": "a request with this reference is being processed" }),
            ),
            Charge::Processing { .. } => reply(StatusCode::OK, json!({ "status": "processing" })),
            Charge::Succeeded {
                body,
                transaction_id,
            } => reply(
                StatusCode::OK,
                json!({ "status": "succeeded", "transaction_id": transaction_id, "amount": body.amount }),
            ),
            Charge::Declined { code, .. } => reply(
                if to_charge {
                    StatusCode::PAYMENT_REQUIRED
                } else {
                    StatusCode::OK
                },
                json!({ "status": "declined", "code": code }),
            ),
        }
    }
}

/// The fake provider: cheap to clone, every clone shares the charges and the behaviour.
#[derive(Clone, Debug)]
pub struct FakeProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    charges: Mutex<HashMap<String, Charge>>,
    behaviour: Mutex<Behaviour>,
    stats: Mutex<Stats>,
}

/// What the provider saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Charge requests received (replays and refused ones included).
    pub requests: u64,
    /// Charges processed: each one charged or declined a customer, once per reference.
    pub charges_processed: u64,
}

/// Locks `mutex`; a panic while it was held leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeProvider {
    /// A provider behaving as `behaviour` says.
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            inner: Arc::new(Inner {
                charges: Mutex::new(HashMap::new()),
                behaviour: Mutex::new(behaviour),
                stats: Mutex::new(Stats::default()),
            }),
        }
    }

    /// Changes the behaviour (in place: queued faults stay unless `change` removes them).
    pub fn configure(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut lock(&self.inner.behaviour));
    }

    /// What it saw so far.
    pub fn stats(&self) -> Stats {
        *lock(&self.inner.stats)
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/charges", post(charge))
            .route("/charges/{reference}", get(query))
            .route("/control", post(control))
            .route("/stats", get(stats))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the runtime stops.
    ///
    /// # Errors
    /// The listener's I/O error.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Processes `body` under `reference` after the latency; the charge's final state.
    async fn process(self, reference: String, body: ChargeBody) -> Charge {
        let latency = lock(&self.inner.behaviour).latency;
        tokio::time::sleep(latency).await;
        let charge = {
            let mut stats = lock(&self.inner.stats);
            stats.charges_processed += 1;
            if body.customer == "cus_declined" {
                Charge::Declined {
                    body,
                    code: "card_declined".to_owned(),
                }
            } else {
                Charge::Succeeded {
                    body,
                    transaction_id: format!("ch_{:08}", stats.charges_processed),
                }
            }
        };
        lock(&self.inner.charges).insert(reference, charge.clone());
        charge
    }
}

/// A JSON response.
fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `POST /charges`.
async fn charge(State(provider): State<FakeProvider>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&provider.inner.stats).requests += 1;
    let reference = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(reference)) if !reference.is_empty() => reference.trim_matches('"').to_owned(),
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "an Idempotency-Key header is required; nothing was processed" }),
            );
        }
    };
    let body: ChargeBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("invalid charge ({e}); nothing was processed") }),
            );
        }
    };
    let (fault, hang) = {
        let mut behaviour = lock(&provider.inner.behaviour);
        (behaviour.faults.pop_front(), behaviour.hang)
    };
    if fault == Some(Fault::ErrorBeforeProcessing) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "temporarily unavailable" }),
        );
    }
    let existing = {
        let mut charges = lock(&provider.inner.charges);
        match charges.get(&reference) {
            Some(charge) => Some(charge.clone()),
            None => {
                charges.insert(reference.clone(), Charge::Processing { body: body.clone() });
                None
            }
        }
    };
    let charge = match existing {
        Some(charge) if *charge.body() != body => {
            return reply(
                StatusCode::CONFLICT,
                json!({ "error": "this reference was used for another charge" }),
            );
        }
        // A replay: the same answer, nothing charged again.
        Some(charge) => charge,
        None => {
            // Processing is not cancelled by a client that goes away.
            match tokio::spawn(provider.clone().process(reference, body)).await {
                Ok(charge) => charge,
                Err(_) => {
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "error": "processing failed" }),
                    );
                }
            }
        }
    };
    match fault {
        Some(Fault::Timeout) => {
            tokio::time::sleep(hang).await;
            charge.answer(true)
        }
        Some(Fault::ErrorAfterProcessing) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "internal error" }),
        ),
        Some(Fault::LostReply) => lost_reply(),
        Some(Fault::ErrorBeforeProcessing) | None => charge.answer(true),
    }
}

/// A `200` whose body breaks off: the connection is dropped mid-reply.
fn lost_reply() -> Response {
    let broken = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("the reply was lost"))
    });
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(broken),
    )
        .into_response()
}

/// `GET /charges/{reference}`.
async fn query(State(provider): State<FakeProvider>, Path(reference): Path<String>) -> Response {
    if lock(&provider.inner.behaviour).queries_fail {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the status API is down" }),
        );
    }
    match lock(&provider.inner.charges).get(&reference) {
        Some(charge) => charge.answer(false),
        None => reply(StatusCode::NOT_FOUND, json!({ "status": "not_found" })),
    }
}

/// The body of `POST /control`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    latency_ms: Option<u64>,
    hang_ms: Option<u64>,
    #[serde(default)]
    faults: Vec<Fault>,
    queries_fail: Option<bool>,
}

/// `POST /control`: changes the behaviour and answers the new one.
async fn control(State(provider): State<FakeProvider>, body: Bytes) -> Response {
    let control: Control = match serde_json::from_slice(&body) {
        Ok(control) => control,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
    };
    let mut now = Behaviour::default();
    provider.configure(|behaviour| {
        if let Some(ms) = control.latency_ms {
            behaviour.latency = Duration::from_millis(ms);
        }
        if let Some(ms) = control.hang_ms {
            behaviour.hang = Duration::from_millis(ms);
        }
        behaviour.faults.extend(control.faults);
        if let Some(fail) = control.queries_fail {
            behaviour.queries_fail = fail;
        }
        now = behaviour.clone();
    });
    reply(
        StatusCode::OK,
        json!({
            "latency_ms": now.latency.as_millis(),
            "hang_ms": now.hang.as_millis(),
            "faults": now.faults,
            "queries_fail": now.queries_fail,
        }),
    )
}

/// `GET /stats`.
async fn stats(State(provider): State<FakeProvider>) -> Response {
    axum::Json(provider.stats()).into_response()
}
