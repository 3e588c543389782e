//! Calls run as one batch by one thread, the async adapter's workers (`asynchronous/pool.rs`):
//! each call takes its key's lock and queues its append without waiting, one group commit then
//! makes every append of the batch durable, and each call is finished in the order it was
//! staged. A burst of calls thus costs one thread hand-off and one commit, not one of each per
//! call.
//!
//! Invariants:
//! - a staged call holds its key's lock from its load until its finish, as the blocking call
//!   does, so the gate decides as it would for the blocking call; a call whose lock is held
//!   (by another thread, or by an earlier call of the same batch: keys share lock stripes) is
//!   not staged but run as a blocking call after the batch has finished;
//! - every staged append is finished (handed to the index) before the batch returns, in the
//!   order of staging, and nothing between its commit and its finish can fail;
//! - a thread holding staged appends never waits for room in the index backlog (the applier
//!   may need those very appends first): a batch's first write waits for room as a blocking
//!   call does, its later ones write with [`Room::Overshoot`], so a batch exceeds the bound
//!   by at most its own size;
//! - a panic in one call (a tracing subscriber's, a metrics recorder's) loses that call's
//!   answer only: every staged call is still finished;
//! - only the common paths are staged: a new attempt, and an outcome for the attempt in
//!   flight. Everything else (an outcome that meets a settled key, which becomes evidence) runs
//!   as the blocking call after the batch, its ticket untouched until then.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::gate::{Admission, GateStore, Request, StartedAttempt};
use crate::index::{IndexEntry, Room};
use crate::model::PrimaryKind;
use crate::model::{Event, EventKind, IdempotencyKey, Intent, Outcome, PaymentState, Phase};
use crate::sync::MutexGuard;

use super::api::{begin_span, record_span};
use super::replies::Begin;
use super::write::StagedWrite;
use super::{Ledger, Ticket};

/// A call the async adapter can run in a batch.
#[derive(Debug)]
pub(crate) enum Call {
    /// [`Ledger::begin`] or [`Ledger::begin_authorization`].
    Begin {
        key: IdempotencyKey,
        intent: Intent,
        primary: PrimaryKind,
    },
    /// [`Ledger::record`].
    Record { ticket: Ticket, outcome: Outcome },
}

impl Call {
    fn key(&self) -> &IdempotencyKey {
        match self {
            Call::Begin { key, .. } => key,
            Call::Record { ticket, .. } => &ticket.key,
        }
    }
}

/// The answer to a [`Call`]: what the blocking call would have returned.
#[derive(Debug)]
pub(crate) enum Answer {
    /// For [`Call::Begin`].
    Begin(Result<Begin>),
    /// For [`Call::Record`].
    Record(Result<PaymentState>),
}

/// A staged call: its append is queued, its key's lock held.
struct Staged<'a> {
    _guard: MutexGuard<'a, ()>,
    write: StagedWrite,
    span: tracing::Span,
    started: Instant,
    then: Then,
}

/// What a staged call does once its append is durable.
enum Then {
    /// Makes the attempt's ticket live and answers it.
    Begin {
        key: IdempotencyKey,
        primary: PrimaryKind,
        attempt: StartedAttempt,
    },
    /// Answers the recorded state.
    Record { key: IdempotencyKey },
}

/// What staging a call came to.
enum Staging<'a> {
    /// Its append is queued.
    Staged(Box<Staged<'a>>),
    /// It needed no append of its own (or made it at once): here is its answer.
    Answered(Answer),
    /// It runs as the blocking call after the batch.
    Later(Call),
}

/// The gate's store for a batch: the ledger, writing with the batch's `room` policy (the rare
/// append the gate makes at once, for a dropped ticket, is finished at once).
struct Batched<'a> {
    ledger: &'a Ledger,
    room: Room,
}

impl GateStore for Batched<'_> {
    type Entry = Arc<IndexEntry>;

    fn load(&self, key: &IdempotencyKey) -> Result<Option<Arc<IndexEntry>>> {
        GateStore::load(self.ledger, key)
    }

    fn state(entry: &Arc<IndexEntry>) -> &PaymentState {
        <Ledger as GateStore>::state(entry)
    }

    fn append(
        &self,
        key: &IdempotencyKey,
        before: Option<&Arc<IndexEntry>>,
        events: Vec<Event>,
    ) -> Result<()> {
        let write = self
            .ledger
            .stage_events(key, before.map(|b| &**b), events, self.room)?;
        self.ledger.finish_events(write).map(drop)
    }
}

impl Ledger {
    /// Runs `calls` as one batch and gives each answer to `answer` with the call's index, as
    /// soon as it is known: once per call, except a call that panicked (its reply is dropped).
    ///
    /// A panic while one call is staged, finished or run loses that call's answer only: the
    /// calls staged before it are still finished (their appends may be durable, and the
    /// applier needs every durable sequence), and the others still run.
    pub(crate) fn run_batch(&self, calls: Vec<Call>, mut answer: impl FnMut(usize, Answer)) {
        let mut staged = Vec::with_capacity(calls.len());
        let mut later = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            let Some(guard) = self.inner.gate.try_lock(call.key()) else {
                later.push((i, call));
                continue;
            };
            // Until the batch holds a queued append, its first write may wait for room in the
            // index backlog as a blocking call does; after, it may not.
            let room = if staged.is_empty() {
                Room::Wait
            } else {
                Room::Overshoot
            };
            let staging = catch_unwind(AssertUnwindSafe(|| self.stage(call, guard, room)));
            match staging {
                Ok(Staging::Staged(call)) => staged.push((i, *call)),
                Ok(Staging::Answered(reply)) => answer(i, reply),
                Ok(Staging::Later(call)) => later.push((i, call)),
                Err(_) => tracing::error!("a batched call panicked while it was staged"),
            }
        }
        for (i, call) in staged {
            match catch_unwind(AssertUnwindSafe(|| self.finish_staged(call))) {
                Ok(reply) => answer(i, reply),
                Err(_) => tracing::error!("a batched call panicked while it was finished"),
            }
        }
        for (i, call) in later {
            match catch_unwind(AssertUnwindSafe(|| self.run_call(call))) {
                Ok(reply) => answer(i, reply),
                Err(_) => tracing::error!("a call deferred from a batch panicked"),
            }
        }
    }

    /// The blocking call.
    fn run_call(&self, call: Call) -> Answer {
        match call {
            Call::Begin {
                key,
                intent,
                primary: PrimaryKind::Purchase,
            } => Answer::Begin(self.begin(&key, &intent)),
            Call::Begin {
                key,
                intent,
                primary: PrimaryKind::Authorization { multiple_captures },
            } => Answer::Begin(self.begin_authorization(&key, &intent, multiple_captures)),
            Call::Record { ticket, outcome } => Answer::Record(self.record(ticket, outcome)),
        }
    }

    /// Stages `call`, whose key's lock `guard` holds.
    fn stage<'a>(&'a self, call: Call, guard: MutexGuard<'a, ()>, room: Room) -> Staging<'a> {
        match call {
            Call::Begin {
                key,
                intent,
                primary,
            } => {
                let span = begin_span(&key);
                let entered = span.clone();
                let _enter = entered.enter();
                let started = Instant::now();
                if let Err(e) = self.writable() {
                    return Staging::Answered(Answer::Begin(Err(e)));
                }
                let request = Request {
                    intent: &intent,
                    primary,
                };
                let store = Batched { ledger: self, room };
                let admission = self.inner.gate.admit_locked(
                    &store,
                    &key,
                    &request,
                    self.now(),
                    |before, events| self.stage_events(&key, before.map(|b| &**b), events, room),
                );
                match admission {
                    Err(e) => Staging::Answered(Answer::Begin(Err(e))),
                    Ok(Admission::Decided(decision)) => Staging::Answered(Answer::Begin(Ok(
                        self.begun(&key, primary, decision, started, &span)
                    ))),
                    Ok(Admission::Appending { append, attempt }) => {
                        Staging::Staged(Box::new(Staged {
                            _guard: guard,
                            write: append,
                            span,
                            started,
                            then: Then::Begin {
                                key,
                                primary,
                                attempt,
                            },
                        }))
                    }
                }
            }
            Call::Record { ticket, outcome } => {
                let span = record_span(&ticket);
                let entered = span.clone();
                let _enter = entered.enter();
                let started = Instant::now();
                if self.check_ticket(&ticket).is_err() {
                    return Staging::Later(Call::Record { ticket, outcome });
                }
                let Ok(entry) = self.inner.index.get(&ticket.key) else {
                    return Staging::Later(Call::Record { ticket, outcome });
                };
                let in_flight = entry.as_deref().is_some_and(|e| {
                    matches!(e.state.phase, Phase::InFlight { attempt, .. } if attempt == ticket.attempt)
                });
                if !in_flight {
                    return Staging::Later(Call::Record { ticket, outcome });
                }
                let mut ticket = ticket;
                ticket.recorded = true;
                let key = ticket.key.clone();
                let attempt = ticket.attempt;
                self.inner.gate.release(&key, attempt);
                let event = self.event(&key, EventKind::OutcomeReported { attempt, outcome });
                match self.stage_events(&key, entry.as_deref(), vec![event], room) {
                    Ok(write) => Staging::Staged(Box::new(Staged {
                        _guard: guard,
                        write,
                        span,
                        started,
                        then: Then::Record { key },
                    })),
                    Err(e) => {
                        Staging::Answered(Answer::Record(self.recorded(&key, Err(e), started)))
                    }
                }
            }
        }
    }

    /// Waits for a staged call's append and answers the call; then its key's lock is released.
    fn finish_staged(&self, call: Staged<'_>) -> Answer {
        let Staged {
            _guard,
            write,
            span,
            started,
            then,
        } = call;
        let _enter = span.enter();
        let written = self.finish_events(write);
        match then {
            Then::Begin {
                key,
                primary,
                attempt,
            } => Answer::Begin(written.map(|_| {
                let decision = self.inner.gate.started(&key, attempt, self.monotonic_now());
                self.begun(&key, primary, decision, started, &span)
            })),
            Then::Record { key } => {
                Answer::Record(self.recorded(&key, written.map(IndexEntry::state_of), started))
            }
        }
    }
}
