//! The worker pool: one queue of jobs, worker threads running them, oneshot replies; new calls
//! are admitted up to a bound, the outcomes of calls already admitted always.
//!
//! Invariants:
//! - a job accepted by [`Pool::call`] or [`Pool::complete`] runs exactly once, on a worker,
//!   even if the caller drops its [`Reply`]; a job refused (queue full, pool shut) never runs;
//! - at most `queue` new calls wait for a worker; only new calls are refused for overload. The
//!   outcome of an attempt admitted earlier (a provider's answer to record) always queues:
//!   refusing it would turn a known charge into an unknown one. Outcomes need no bound of their
//!   own: each admitted ticket is recorded at most once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;

use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::model::check_range;

/// How many worker threads run the blocking calls and how many calls may wait for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncConfig {
    /// Worker threads. Each call holds one for its duration (including its share of a group
    /// commit's `fdatasync`), so this bounds the calls in progress: to share a sync among N
    /// concurrent requests, allow N workers. 1..=1024; default 64.
    pub workers: usize,
    /// New calls that may wait for a worker before [`Error::Overloaded`] is answered.
    /// 1..=1,000,000; default 4,096. Outcomes of admitted attempts (`record`,
    /// `record_operation`) are never refused: they queue beyond this bound.
    pub queue: usize,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            queue: 4_096,
        }
    }
}

type Job = Box<dyn FnOnce(&Ledger) + Send>;

/// The worker threads and the sending side of their queue.
pub(super) struct Pool {
    sender: Option<Sender<Job>>,
    /// New calls queued and not started yet (at most `queue`).
    waiting: Arc<AtomicUsize>,
    queue: usize,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("queue", &self.queue)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Pool {
    /// Starts `config.workers` threads serving `ledger`.
    pub(super) fn start(ledger: &Ledger, config: AsyncConfig) -> Result<Self> {
        check_range("workers", config.workers as u64, 1, 1_024)?;
        check_range("queue", config.queue as u64, 1, 1_000_000)?;
        // Unbounded: new calls are bounded by `waiting`, outcomes by the tickets admitted.
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let mut workers = Vec::with_capacity(config.workers);
        for n in 0..config.workers {
            let ledger = ledger.clone();
            let receiver = receiver.clone();
            let worker = std::thread::Builder::new()
                .name(format!("payledger-async-{n}"))
                .spawn(move || serve(&ledger, &receiver))
                .map_err(|e| Error::io("starting an async worker thread", e))?;
            workers.push(worker);
        }
        Ok(Self {
            sender: Some(sender),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue: config.queue,
            workers,
        })
    }

    /// Queues the new call `job` now, or refuses it if the queue is full, and answers its
    /// result through the returned future.
    pub(super) fn call<T, F>(&self, job: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        let Some(sender) = &self.sender else {
            return Reply::refused(Error::WorkerLost);
        };
        // A refusal leaves the count untouched, so it never refuses another call by accident.
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.queue).then_some(waiting + 1)
            });
        if admitted.is_err() {
            crate::telemetry::overloaded();
            return Reply::refused(Error::Overloaded { queue: self.queue });
        }
        let waiting = Arc::clone(&self.waiting);
        let (job, reply) = replying(move |ledger| {
            waiting.fetch_sub(1, Ordering::AcqRel);
            job(ledger)
        });
        match sender.send(job) {
            Ok(()) => reply,
            Err(_) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                Reply::refused(Error::WorkerLost)
            }
        }
    }

    /// Queues `job`, the outcome of an attempt admitted earlier; never refused for overload.
    pub(super) fn complete<T, F>(&self, job: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        let Some(sender) = &self.sender else {
            return Reply::refused(Error::WorkerLost);
        };
        let (job, reply) = replying(job);
        match sender.send(job) {
            Ok(()) => reply,
            Err(_) => Reply::refused(Error::WorkerLost),
        }
    }
}

/// `job` as a queued job that sends its result to the returned reply.
fn replying<T, F>(job: F) -> (Job, Reply<T>)
where
    T: Send + 'static,
    F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |ledger| {
        // The caller may have dropped its future: the job ran all the same.
        let _ = tx.send(job(ledger));
    });
    let reply = Reply {
        state: State::Queued(rx),
    };
    (job, reply)
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue lets every worker finish what was queued and then stop.
        self.sender = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: runs jobs until the queue is closed and empty. A panicking job loses only its own
/// reply (its caller gets [`Error::WorkerLost`]); the worker goes on.
fn serve(ledger: &Ledger, receiver: &Receiver<Job>) {
    while let Ok(job) = receiver.recv() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(ledger)));
    }
}

/// The answer to a queued call: a future of the call's result. Dropping it does not cancel the
/// call.
#[derive(Debug)]
#[must_use = "the call runs anyway; the future only carries its answer"]
pub struct Reply<T> {
    state: State<T>,
}

#[derive(Debug)]
enum State<T> {
    Queued(oneshot::Receiver<Result<T>>),
    Refused(Option<Error>),
}

impl<T> Reply<T> {
    fn refused(error: Error) -> Self {
        Self {
            state: State::Refused(Some(error)),
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match &mut self.get_mut().state {
            State::Queued(receiver) => Pin::new(receiver).poll(cx).map(|answer| match answer {
                Ok(result) => result,
                Err(oneshot::Canceled) => Err(Error::WorkerLost),
            }),
            State::Refused(error) => Poll::Ready(Err(error.take().unwrap_or(Error::WorkerLost))),
        }
    }
}
