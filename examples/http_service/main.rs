//! An example payment service over HTTP (axum, tokio), built on payledger's async adapter, with
//! a fake payment provider that is a real HTTP server too. Copy `service.rs` to start a service
//! of your own; `tests/http.rs` runs both over real sockets.
//!
//! What it guarantees: one `Idempotency-Key` charges at most once, whatever the clients and the
//! provider do (double clicks, disconnects, timeouts, lost replies, 5xx); a charge that started
//! finishes even if its client went away; an answer that was lost is *unknown* (`202`, then
//! `409` with `Retry-After`) until the reconciler learns it from the provider, after which a
//! retry replays the result with `Idempotent-Replayed: true`. See `service.rs` for the replies.
//!
//! ```text
//! cargo run --example http_service
//! ```
//!
//! Payments listen on 127.0.0.1:3000 (`PAYMENTS_PORT`), the fake provider on 127.0.0.1:3001
//! (`PROVIDER_PORT`). The ledger lives in a fresh temporary directory, removed on Ctrl-C, or in
//! `LEDGER_DIR` (kept, so a restart shows recovery).

mod fake_provider;
mod service;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use fake_provider::{Behaviour, FakeProvider};
use metrics_exporter_prometheus::PrometheusBuilder;
use payledger::asynchronous::{AsyncConfig, AsyncLedger};
use payledger::{Ledger, LedgerConfig};
use service::{HttpProvider, PaymentService, ServiceConfig};
use tokio::net::TcpListener;

/// Any error, for `main`.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let payments_port = port("PAYMENTS_PORT", 3000)?;
    let provider_port = port("PROVIDER_PORT", 3001)?;
    let (dir, _temporary) = match std::env::var_os("LEDGER_DIR") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let temporary = tempfile::tempdir()?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };

    // One recorder per process: everything the ledger emits through `metrics` lands here.
    let metrics = PrometheusBuilder::new()
        .set_buckets(service::LATENCY_BUCKETS)?
        .install_recorder()?;

    let provider = FakeProvider::new(Behaviour::default());
    let provider_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, provider_port)).await?;
    let provider_url = format!("http://{}", provider_listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = provider.serve(provider_listener).await {
            eprintln!("fake provider stopped: {e}");
        }
    });

    let (ledger, report) = Ledger::open(&dir, LedgerConfig::default())?;
    let ledger = AsyncLedger::new(ledger, AsyncConfig::default())?;
    let config = ServiceConfig::default();
    let provider = HttpProvider::new(&provider_url, Duration::from_secs(5))?;
    let service = PaymentService::new(ledger, provider, metrics, config.clone());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, payments_port)).await?;
    let base = format!("http://{}", listener.local_addr()?);

    println!("payments:      {base}  (ledger in {})", dir.display());
    if report.orphaned_attempts > 0 {
        println!(
            "               {} attempt(s) of a previous run are unknown; the reconciler asks",
            report.orphaned_attempts
        );
    }
    println!(
        "fake provider: {provider_url}  (deadline {} ms; customer cus_declined is declined)",
        config.deadline.as_millis()
    );
    println!();
    println!("Pay, then click again (the second is a replay):");
    println!(
        "  curl -i {base}/payments -H 'Idempotency-Key: order-1' -H 'Content-Type: application/json' \\\n    -d '{{\"amount\":4999,\"currency\":\"EUR\",\"customer\":\"cus_311\",\"account\":\"acct_shop_7\"}}'"
    );
    println!("  curl -i {base}/payments/order-1");
    println!("Make the provider's next charge time out (202, then 409 until reconciled):");
    println!(
        "  curl {provider_url}/control -H 'Content-Type: application/json' -d '{{\"faults\":[\"timeout\"]}}'"
    );
    println!("Operate:");
    println!("  curl {base}/healthz");
    println!("  curl {base}/metrics");
    println!("  curl {provider_url}/stats");
    println!("Ctrl-C stops.");

    service.serve(listener, shutdown()).await?;
    Ok(())
}

/// The port in the environment variable `name`, or `default`.
fn port(name: &str, default: u16) -> Result<u16, BoxError> {
    match std::env::var(name) {
        Ok(value) => Ok(value
            .parse()
            .map_err(|e| format!("{name}={value:?}: {e}"))?),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}

/// Resolves on Ctrl-C.
async fn shutdown() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler: run until killed.
        std::future::pending::<()>().await;
    }
    println!("stopping: finishing open requests");
}
