//! The worker pool: one queue of jobs, worker threads running them, oneshot replies; new calls
//! are admitted up to a bound, the outcomes of calls already admitted always. `begin` and
//! `record` jobs queued one after another are taken by one worker as a batch
//! (`ledger/batch.rs`: one commit for all of them), and a burst of jobs wakes one worker.
//!
//! Invariants:
//! - a job queued is taken by a worker: a job wakes a worker unless one woken earlier has not
//!   taken the queue yet, and a worker that takes part of the queue wakes another for the
//!   rest; a busy worker looks at the queue before it sleeps;
//! - a job accepted by [`Pool::call`] or [`Pool::complete`] runs exactly once, on a worker,
//!   even if the caller drops its [`Reply`]; a job refused (queue full, pool shut) never runs;
//! - at most `queue` new calls wait for a worker; only new calls are refused for overload. The
//!   outcome of an attempt admitted earlier (a provider's answer to record) always queues:
//!   refusing it would turn a known charge into an unknown one. Outcomes need no bound of their
//!   own: each admitted ticket is recorded at most once.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use futures_channel::oneshot;

use crate::error::{Error, Result};
use crate::ledger::{Answer, Begin, Call, Ledger};
use crate::model::{PaymentState, check_range};
use crate::sync::lock;

/// How many worker threads run the blocking calls and how many calls may wait for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncConfig {
    /// Worker threads. `begin` and `record` calls queued together run as one batch on one
    /// worker (up to 64, one commit); every other call holds a worker for its duration
    /// (including its share of a group commit's `fdatasync`), so this bounds those in
    /// progress. 1..=1024; default 64.
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

/// The most `begin`/`record` calls one worker takes from the queue as one batch.
const BATCH_MAX: usize = 64;

/// A queued call.
enum Job {
    /// Any call, run on its own.
    Run(Box<dyn FnOnce(&Ledger) + Send>),
    /// A `begin` or `record`, run in a batch with the others queued beside it.
    Batch(Call, Replier),
}

/// Where the answer to a batched call goes.
enum Replier {
    Begin(oneshot::Sender<Result<Begin>>),
    Record(oneshot::Sender<Result<PaymentState>>),
}

impl Replier {
    fn send(self, answer: Answer) {
        // The caller may have dropped its future: the call ran all the same. (An answer of the
        // other kind cannot happen; dropping the sender would answer `WorkerLost`.)
        match (self, answer) {
            (Replier::Begin(tx), Answer::Begin(result)) => drop(tx.send(result)),
            (Replier::Record(tx), Answer::Record(result)) => drop(tx.send(result)),
            _ => {}
        }
    }
}

/// A job and whether it counts against the bound of new calls.
struct Queued {
    job: Job,
    new_call: bool,
}

/// The queue the workers share.
struct Shared {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// New calls queued and not started yet (at most the pool's `queue`).
    waiting: AtomicUsize,
}

struct QueueState {
    jobs: VecDeque<Queued>,
    open: bool,
    /// A worker was woken for the jobs queued and has not taken them yet: later jobs need no
    /// wake-up of their own, so that a burst of calls wakes one worker, which takes it whole.
    waking: bool,
}

impl Shared {
    /// Queues `queued`, waking a worker unless one is already on its way; `false` (and the
    /// job dropped unrun) if the pool is shut.
    fn push(&self, queued: Queued) -> bool {
        let mut state = lock(&self.state);
        if !state.open {
            return false;
        }
        state.jobs.push_back(queued);
        if !state.waking {
            state.waking = true;
            drop(state);
            self.ready.notify_one();
        }
        true
    }

    /// The next jobs to run: one job, or up to [`BATCH_MAX`] batchable ones queued one after
    /// another; `None` once the pool is shut and its queue empty.
    fn take(&self) -> Option<Vec<Queued>> {
        let mut state = lock(&self.state);
        while state.jobs.is_empty() {
            if !state.open {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let mut taken = Vec::new();
        while let Some(next) = state.jobs.front() {
            let batchable = matches!(next.job, Job::Batch(..));
            let first = taken.is_empty();
            if (!first && !batchable) || taken.len() >= BATCH_MAX {
                break;
            }
            taken.extend(state.jobs.pop_front());
            if !batchable {
                break;
            }
        }
        // What is left needs a worker of its own.
        state.waking = !state.jobs.is_empty();
        let more = state.waking;
        drop(state);
        if more {
            self.ready.notify_one();
        }
        Some(taken)
    }

    fn started(&self, queued: &Queued) {
        if queued.new_call {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The worker threads and their queue.
pub(super) struct Pool {
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                open: true,
                waking: false,
            }),
            ready: Condvar::new(),
            waiting: AtomicUsize::new(0),
        });
        let mut pool = Self {
            shared,
            queue: config.queue,
            workers: Vec::with_capacity(config.workers),
        };
        for n in 0..config.workers {
            let ledger = ledger.clone();
            let shared = Arc::clone(&pool.shared);
            let worker = std::thread::Builder::new()
                .name(format!("payledger-async-{n}"))
                .spawn(move || serve(&ledger, &shared))
                .map_err(|e| Error::io("starting an async worker thread", e))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Queues the new call `job` now, or refuses it if the queue is full, and answers its
    /// result through the returned future.
    pub(super) fn call<T, F>(&self, job: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        let (job, reply) = replying(job);
        self.queue_new(job, reply)
    }

    /// Queues `job`, the outcome of an attempt admitted earlier; never refused for overload.
    pub(super) fn complete<T, F>(&self, job: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
    {
        let (job, reply) = replying(job);
        self.queue_admitted(job, reply)
    }

    /// Queues the new call `begin` (run in a batch), or refuses it if the queue is full.
    pub(super) fn begin(&self, begin: Call) -> Reply<Begin> {
        let (tx, rx) = oneshot::channel();
        self.queue_new(Job::Batch(begin, Replier::Begin(tx)), Reply::queued(rx))
    }

    /// Queues `record` (run in a batch), the outcome of an attempt admitted earlier; never
    /// refused for overload.
    pub(super) fn record(&self, record: Call) -> Reply<PaymentState> {
        let (tx, rx) = oneshot::channel();
        self.queue_admitted(Job::Batch(record, Replier::Record(tx)), Reply::queued(rx))
    }

    fn queue_new<T>(&self, job: Job, reply: Reply<T>) -> Reply<T> {
        // A refusal leaves the count untouched, so it never refuses another call by accident.
        let admitted =
            self.shared
                .waiting
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                    (waiting < self.queue).then_some(waiting + 1)
                });
        if admitted.is_err() {
            crate::telemetry::overloaded();
            return Reply::refused(Error::Overloaded { queue: self.queue });
        }
        if self.shared.push(Queued {
            job,
            new_call: true,
        }) {
            reply
        } else {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            Reply::refused(Error::WorkerLost)
        }
    }

    fn queue_admitted<T>(&self, job: Job, reply: Reply<T>) -> Reply<T> {
        let queued = Queued {
            job,
            new_call: false,
        };
        if self.shared.push(queued) {
            reply
        } else {
            Reply::refused(Error::WorkerLost)
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
    let job = Job::Run(Box::new(move |ledger| {
        // The caller may have dropped its future: the job ran all the same.
        let _ = tx.send(job(ledger));
    }));
    (job, Reply::queued(rx))
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Shutting the queue lets every worker finish what was queued and then stop.
        lock(&self.shared.state).open = false;
        self.shared.ready.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A worker: runs jobs until the pool is shut and its queue empty. A panicking job loses only
/// its own reply (its caller gets [`Error::WorkerLost`]); the worker goes on.
fn serve(ledger: &Ledger, shared: &Shared) {
    while let Some(taken) = shared.take() {
        let mut calls = Vec::new();
        let mut repliers = Vec::new();
        for queued in taken {
            shared.started(&queued);
            match queued.job {
                Job::Run(job) => {
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(ledger)));
                }
                Job::Batch(call, replier) => {
                    calls.push(call);
                    repliers.push(Some(replier));
                }
            }
        }
        if calls.is_empty() {
            continue;
        }
        // A panic loses the replies not sent yet (their callers get `WorkerLost`).
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            ledger.run_batch(calls, |i, answer| {
                if let Some(replier) = repliers.get_mut(i).and_then(Option::take) {
                    replier.send(answer);
                }
            });
        }));
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
    fn queued(receiver: oneshot::Receiver<Result<T>>) -> Self {
        Self {
            state: State::Queued(receiver),
        }
    }

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
