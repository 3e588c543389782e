//! [`AsyncReconciler`]: the reconciler with an async provider.
//!
//! Invariant: the same pass as [`Reconciler::run_once`](crate::Reconciler::run_once) — the
//! same take-overs, the same queries, the same records and escalations — with only the
//! provider's queries awaited on the caller's task and the ledger's work on the pool.

use std::future::Future;
use std::time::{Duration, Instant};

use super::ledger::{AsyncLedger, AsyncProvider};
use crate::error::{Error, Result};
use crate::reconcile::{ReconcileReport, finish, plan, settle};

/// Resolves unknown outcomes by asking an [`AsyncProvider`].
#[derive(Debug)]
pub struct AsyncReconciler<P> {
    ledger: AsyncLedger,
    provider: P,
}

impl<P: AsyncProvider> AsyncReconciler<P> {
    /// A reconciler for `ledger` asking `provider`.
    pub fn new(ledger: AsyncLedger, provider: P) -> Self {
        Self { ledger, provider }
    }

    /// One pass, as [`Reconciler::run_once`](crate::Reconciler::run_once).
    ///
    /// # Errors
    /// As `Reconciler::run_once`, and [`Error::Overloaded`](crate::Error::Overloaded) when the
    /// pool's queue is full (the pass stops; what it recorded stays recorded).
    pub async fn run_once(&self) -> Result<ReconcileReport> {
        let started = Instant::now();
        let (queries, mut report) = self.ledger.run(plan).await?;
        for query in queries {
            let asked_at = self.ledger.ledger().monotonic_now();
            let reply = self.provider.query(&query.reference).await;
            report = self
                .ledger
                .run(move |ledger| {
                    let mut report = report;
                    settle(ledger, &query, reply, asked_at, &mut report)?;
                    Ok(report)
                })
                .await?;
        }
        finish(&report, started);
        Ok(report)
    }

    /// Passes forever, `every` apart, sleeping with the runtime's own timer (e.g.
    /// `|d| tokio::time::sleep(d)`). A pass refused by a full queue
    /// ([`Error::Overloaded`]) is tried again at the next tick; any other error (a stopped
    /// ledger) ends the loop.
    ///
    /// # Errors
    /// The first error other than `Overloaded`.
    pub async fn run<S, F>(&self, every: Duration, sleep: S) -> Result<()>
    where
        S: Fn(Duration) -> F,
        F: Future<Output = ()>,
    {
        loop {
            match self.run_once().await {
                Ok(_) | Err(Error::Overloaded { .. }) => {}
                Err(other) => return Err(other),
            }
            sleep(every).await;
        }
    }
}
