//! The example payment service (`examples/http_service`) over real HTTP on 127.0.0.1: its
//! promise (one key charges at most once) under a double-click storm, a provider timeout, a
//! client that disconnects mid-request; its Idempotency-Key replies; its metrics.
//!
//! Each test runs its own service, fake provider and ledger (ephemeral ports, a temporary
//! directory) on a runtime of its own, bounded by [`TEST_TIME_MAX`]. The Prometheus recorder is
//! process-wide, so it is installed once and shared.

#[path = "../examples/http_service/fake_provider.rs"]
mod fake_provider;
#[path = "../examples/http_service/service.rs"]
mod service;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

use fake_provider::{Behaviour, FakeProvider, Fault};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use payledger::asynchronous::{AsyncConfig, AsyncLedger};
use payledger::{IdempotencyKey, Ledger, LedgerConfig, NotFoundPolicy, ReconcileConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use service::{HttpProvider, PaymentService, ServiceConfig};
use tokio::net::TcpListener;

/// No test may take longer (each takes a few seconds).
const TEST_TIME_MAX: Duration = Duration::from_secs(30);

/// A deadline no healthy call misses, even in a debug build on a busy machine.
const DEADLINE: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder.
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(service::LATENCY_BUCKETS)
                .unwrap()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

/// A reconciler that asks at once and keeps asking every few tens of milliseconds.
fn reconcile_config() -> ReconcileConfig {
    ReconcileConfig::new(NotFoundPolicy::new(1_000, 0, 1).unwrap(), 100, 1, 50, 100).unwrap()
}

/// A running service and its provider.
struct World {
    /// `http://127.0.0.1:PORT` of the payment service.
    base: String,
    client: reqwest::Client,
    provider: FakeProvider,
    /// The service's ledger, to read a key's history.
    ledger: AsyncLedger,
}

impl World {
    /// `POST /payments` with `key` and `body`.
    async fn pay(&self, key: &str, body: &Value) -> Reply {
        let response = self
            .client
            .post(format!("{}/payments", self.base))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        Reply::read(response).await
    }

    /// `GET {path}`.
    async fn get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        Reply::read(response).await
    }

    /// Polls `GET /payments/{key}` until its phase is `phase`.
    async fn wait_for_phase(&self, key: &str, phase: &str) -> Value {
        loop {
            let reply = self.get(&format!("/payments/{key}")).await;
            if reply.status == StatusCode::OK && reply.json["phase"] == phase {
                return reply.json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    retry_after: Option<String>,
    replayed: bool,
    json: Value,
}

impl Reply {
    /// Reads `response` whole.
    async fn read(response: reqwest::Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let status = response.status();
        let content_type = header("content-type");
        let retry_after = header("retry-after");
        let replayed = match header("idempotent-replayed").as_deref() {
            None => false,
            Some("true") => true,
            Some(other) => panic!("Idempotent-Replayed: {other}"),
        };
        let bytes = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            content_type,
            retry_after,
            replayed,
            json,
        }
    }

    /// Asserts an RFC 9457 problem document with `status`, and answers its `type`.
    fn problem(&self, status: StatusCode) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(self.json["status"], status.as_u16(), "{self:?}");
        assert!(self.json["title"].is_string(), "{self:?}");
        assert!(self.json["detail"].is_string(), "{self:?}");
        self.json["type"].as_str().unwrap()
    }
}

/// A payment request body.
fn order(amount: u64) -> Value {
    json!({ "amount": amount, "currency": "EUR", "customer": "cus_311", "account": "acct_shop_7" })
}

/// How a test's world is set up.
struct Setup {
    /// How the fake provider behaves.
    behaviour: Behaviour,
    /// The service's provider deadline.
    deadline: Duration,
    /// The service is pointed at a closed port instead of the provider.
    provider_unreachable: bool,
    /// The async adapter's workers and queue.
    pool: AsyncConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            behaviour: Behaviour::default(),
            deadline: DEADLINE,
            provider_unreachable: false,
            pool: AsyncConfig {
                workers: 16,
                queue: 1_024,
            },
        }
    }
}

/// Runs `test` against a fresh world set up as `setup` says, then stops everything (the runtime
/// first, then the ledger's directory).
fn run<T, F>(setup: Setup, test: T)
where
    T: FnOnce(World) -> F,
    F: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let provider = FakeProvider::new(setup.behaviour);
        let provider_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut provider_url = format!("http://{}", provider_listener.local_addr().unwrap());
        tokio::spawn(provider.clone().serve(provider_listener));
        if setup.provider_unreachable {
            let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            provider_url = format!("http://{}", closed.local_addr().unwrap());
        }

        let config = LedgerConfig {
            reconcile: reconcile_config(),
            ..LedgerConfig::default()
        };
        let (ledger, _) = Ledger::open(dir.path(), config).unwrap();
        let ledger = AsyncLedger::new(ledger, setup.pool).unwrap();
        let service_config = ServiceConfig {
            deadline: setup.deadline,
            reconcile_every: Duration::from_millis(20),
            ..ServiceConfig::default()
        };
        let http_provider = HttpProvider::new(&provider_url, Duration::from_secs(2)).unwrap();
        let service = PaymentService::new(ledger.clone(), http_provider, metrics(), service_config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(service.serve(listener, std::future::pending()));

        let world = World {
            base,
            client: reqwest::Client::new(),
            provider,
            ledger,
        };
        tokio::time::timeout(TEST_TIME_MAX, test(world))
            .await
            .expect("the test finished in time");
    });
    drop(runtime);
    drop(dir);
}

#[test]
fn two_hundred_concurrent_requests_with_one_key_charge_once() {
    let behaviour = Behaviour {
        latency: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let setup = Setup {
        behaviour,
        ..Setup::default()
    };
    run(setup, |world| async move {
        let world = std::sync::Arc::new(world);
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let world = world.clone();
            requests.spawn(async move { world.pay("order-storm", &order(4_999)).await });
        }
        let replies = requests.join_all().await;

        let mut originals = Vec::new();
        let mut replays = Vec::new();
        let mut in_flight = 0;
        for reply in replies {
            match reply.status {
                StatusCode::CREATED if reply.replayed => replays.push(reply.json),
                StatusCode::CREATED => originals.push(reply.json),
                StatusCode::CONFLICT => {
                    assert!(
                        reply
                            .problem(StatusCode::CONFLICT)
                            .ends_with("/in-progress")
                    );
                    assert_eq!(reply.retry_after.as_deref(), Some("1"));
                    in_flight += 1;
                }
                _ => panic!("an incoherent reply: {reply:?}"),
            }
        }
        assert_eq!(originals.len(), 1, "exactly one request charged");
        let success = &originals[0];
        assert_eq!(success["status"], "succeeded");
        assert_eq!(success["amount"], 4_999);
        assert!(
            replays.iter().all(|replay| replay == success),
            "replays are the original"
        );
        assert_eq!(1 + replays.len() + in_flight, 200);
        assert_eq!(world.provider.stats().charges_processed, 1);
    });
}

#[test]
fn a_provider_timeout_is_unknown_until_reconciled_then_replays_the_success() {
    let behaviour = Behaviour {
        latency: Duration::ZERO,
        hang: Duration::from_secs(3),
        faults: [Fault::Timeout].into(),
        // The status API is down: the reconciler cannot settle the key yet.
        queries_fail: true,
    };
    let setup = Setup {
        behaviour,
        deadline: Duration::from_millis(500),
        ..Setup::default()
    };
    run(setup, |world| async move {
        let first = world.pay("order-timeout", &order(1_250)).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
        assert_eq!(first.json["status"], "unknown");
        assert!(first.retry_after.is_some());

        let retry = world.pay("order-timeout", &order(1_250)).await;
        assert!(
            retry
                .problem(StatusCode::CONFLICT)
                .ends_with("/outcome-unknown")
        );
        assert_eq!(retry.retry_after.as_deref(), Some("1"));
        let state = world.get("/payments/order-timeout").await;
        assert_eq!(state.json["phase"], "unknown");
        assert_eq!(state.json["unknown_reason"], "Timeout");

        // The status API recovers; the reconciler finds the charge.
        world.provider.configure(|b| b.queries_fail = false);
        let state = world.wait_for_phase("order-timeout", "succeeded").await;
        let replay = world.pay("order-timeout", &order(1_250)).await;
        assert_eq!(replay.status, StatusCode::CREATED, "{replay:?}");
        assert!(replay.replayed);
        assert_eq!(replay.json["status"], "succeeded");
        assert_eq!(replay.json["transaction_id"], state["transaction_id"]);
        assert_eq!(world.provider.stats().charges_processed, 1);
    });
}

#[test]
fn a_reused_key_is_422_and_a_missing_key_is_400_as_problem_documents() {
    run(Setup::default(), |world| async move {
        let paid = world.pay("order-reused", &order(4_999)).await;
        assert_eq!(paid.status, StatusCode::CREATED, "{paid:?}");
        assert!(!paid.replayed);

        let reused = world.pay("order-reused", &order(5_000)).await;
        assert!(
            reused
                .problem(StatusCode::UNPROCESSABLE_ENTITY)
                .ends_with("/idempotency-key-reused")
        );
        assert!(!reused.replayed);

        let quoted = world.pay("\"order-reused\"", &order(4_999)).await;
        assert_eq!(
            quoted.status,
            StatusCode::CREATED,
            "a structured-header string is the same key"
        );
        assert!(quoted.replayed);

        let response = world
            .client
            .post(format!("{}/payments", world.base))
            .json(&order(4_999))
            .send()
            .await
            .unwrap();
        let missing = Reply::read(response).await;
        assert!(
            missing
                .problem(StatusCode::BAD_REQUEST)
                .ends_with("/missing-idempotency-key")
        );

        let invalid = world.pay("order-invalid", &json!({ "amount": 0 })).await;
        assert!(
            invalid
                .problem(StatusCode::BAD_REQUEST)
                .ends_with("/invalid-body")
        );
        assert_eq!(world.provider.stats().charges_processed, 1);
    });
}

#[test]
fn a_client_that_disconnects_mid_request_is_charged_exactly_once() {
    let behaviour = Behaviour {
        latency: Duration::from_millis(1_500),
        ..Behaviour::default()
    };
    let setup = Setup {
        behaviour,
        ..Setup::default()
    };
    run(setup, |world| async move {
        let impatient = world
            .client
            .post(format!("{}/payments", world.base))
            .header("Idempotency-Key", "order-gone")
            .json(&order(700))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(
            impatient.unwrap_err().is_timeout(),
            "the client gave up and hung up"
        );
        assert_eq!(
            world.provider.stats().charges_processed,
            0,
            "before the charge finished"
        );

        let state = world.wait_for_phase("order-gone", "succeeded").await;
        assert_eq!(state["attempts_started"], 1);
        assert_eq!(world.provider.stats().charges_processed, 1);
        // The charge itself recorded the success: it was not dropped and then reconciled.
        let key = IdempotencyKey::new("order-gone").unwrap();
        let history = world.ledger.history(&key).await.unwrap();
        let events: Vec<&str> = history.iter().map(|e| e.event.kind.name()).collect();
        assert_eq!(
            events,
            ["intent recorded", "attempt started", "outcome reported"]
        );
        let back = world.pay("order-gone", &order(700)).await;
        assert_eq!(back.status, StatusCode::CREATED, "{back:?}");
        assert!(back.replayed);
        assert_eq!(back.json["transaction_id"], state["transaction_id"]);
        assert_eq!(world.provider.stats().charges_processed, 1);
    });
}

#[test]
fn lost_replies_and_server_errors_are_reconciled_not_retried() {
    let behaviour = Behaviour {
        faults: [Fault::LostReply, Fault::ErrorAfterProcessing].into(),
        ..Behaviour::default()
    };
    let setup = Setup {
        behaviour,
        ..Setup::default()
    };
    run(setup, |world| async move {
        for key in ["order-lost", "order-500"] {
            let first = world.pay(key, &order(300)).await;
            assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
            world.wait_for_phase(key, "succeeded").await;
            let replay = world.pay(key, &order(300)).await;
            assert_eq!(replay.status, StatusCode::CREATED, "{replay:?}");
            assert!(replay.replayed);
        }
        assert_eq!(world.provider.stats().charges_processed, 2);
    });
}

#[test]
fn health_and_metrics_expose_the_ledger() {
    run(Setup::default(), |world| async move {
        let paid = world.pay("order-metrics", &order(4_999)).await;
        assert_eq!(paid.status, StatusCode::CREATED, "{paid:?}");

        let health = world.get("/healthz").await;
        assert_eq!(health.status, StatusCode::OK, "{health:?}");
        assert_eq!(health.json["status"], "ok");

        let response = world
            .client
            .get(format!("{}/metrics", world.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        for name in [
            "payledger_decisions_total{",
            "payledger_outcomes_total{",
            "payledger_provider_call_seconds_bucket{",
            "payledger_journal_sync_seconds_bucket{",
            "payledger_keys{phase=\"succeeded\"}",
            "payledger_stopped",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    });
}

#[test]
fn an_unreachable_provider_is_503_charges_nothing_and_may_be_retried() {
    let setup = Setup {
        provider_unreachable: true,
        ..Setup::default()
    };
    run(setup, |world| async move {
        for attempt in 1..=2 {
            let refused = world.pay("order-refused", &order(900)).await;
            assert!(
                refused
                    .problem(StatusCode::SERVICE_UNAVAILABLE)
                    .ends_with("/provider-unavailable")
            );
            assert_eq!(refused.retry_after.as_deref(), Some("1"));
            // Proven not sent: the key is ready for the next attempt, not unknown.
            let state = world.get("/payments/order-refused").await;
            assert_eq!(state.json["phase"], "ready", "{state:?}");
            assert_eq!(state.json["attempts_started"], attempt);
        }
        assert_eq!(world.provider.stats().requests, 0);
    });
}

#[test]
fn a_decline_is_402_and_replayed_as_such() {
    run(Setup::default(), |world| async move {
        let body = json!({ "amount": 100, "currency": "EUR", "customer": "cus_declined", "account": "acct_shop_7" });
        let declined = world.pay("order-declined", &body).await;
        assert!(
            declined
                .problem(StatusCode::PAYMENT_REQUIRED)
                .ends_with("/declined")
        );
        assert_eq!(declined.json["decline_code"], "card_declined");
        assert!(!declined.replayed);

        let again = world.pay("order-declined", &body).await;
        assert!(again.replayed);
        assert_eq!(again.status, declined.status);
        assert_eq!(again.json, declined.json);
        assert_eq!(world.provider.stats().charges_processed, 1);
    });
}

/// An overloaded service refuses new payments with `503` and `Retry-After`, having charged and
/// recorded nothing for them, but never refuses the provider's answer to a payment it admitted.
#[test]
fn an_overloaded_service_refuses_new_payments_and_never_loses_an_admitted_one() {
    let setup = Setup {
        pool: AsyncConfig {
            workers: 1,
            queue: 2,
        },
        ..Setup::default()
    };
    run(setup, |world| async move {
        let world = std::sync::Arc::new(world);
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..60 {
            let world = world.clone();
            requests.spawn(async move {
                let key = format!("order-rush-{n}");
                let reply = world.pay(&key, &order(1_500)).await;
                (key, reply)
            });
        }
        let mut refused = Vec::new();
        let mut charged = 0;
        for (key, reply) in requests.join_all().await {
            if reply.status == StatusCode::CREATED {
                assert_eq!(reply.json["status"], "succeeded", "{reply:?}");
                charged += 1;
            } else {
                assert!(
                    reply
                        .problem(StatusCode::SERVICE_UNAVAILABLE)
                        .ends_with("/overloaded"),
                    "{reply:?}"
                );
                assert_eq!(reply.retry_after.as_deref(), Some("1"));
                refused.push(key);
            }
        }
        assert!(
            !refused.is_empty(),
            "one worker and a queue of 2 overflowed"
        );
        assert!(charged > 0, "the admitted payments completed");
        assert_eq!(
            world.provider.stats().charges_processed,
            charged,
            "a refused payment charged nothing; every admitted one charged once"
        );
        for key in &refused {
            let reply = world.get(&format!("/payments/{key}")).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{key}: {reply:?}");
            let retried = world.pay(key, &order(1_500)).await;
            assert_eq!(retried.status, StatusCode::CREATED, "{key}: {retried:?}");
            assert!(!retried.replayed);
        }
        assert_eq!(world.provider.stats().charges_processed, 60);
    });
}
