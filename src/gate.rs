//! The per-key gate: serialises the requests for one key and knows which attempts have a live
//! ticket in this process.
//!
//! Invariant: for one key, between loading its state and appending the events that follow from
//! it, no other request for that key runs; so two simultaneous `begin` calls yield exactly one
//! attempt and the other sees it in flight. An attempt in flight without a live ticket (dropped,
//! or from a process that ended) is never handed out again: it becomes unknown. A ticket is
//! live from the durable `AttemptStarted` until it is recorded, dropped, or its lease expires
//! and the reconciler takes the attempt over; releasing a ticket never touches a later attempt's.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::clock::MonotonicMillis;
use crate::error::Result;
use crate::model::Intent;
use crate::model::{AttemptNumber, IdempotencyKey, ProviderReference, UnixMillis};
use crate::model::{AttemptPlan, Decision, PaymentState, PrimaryKind};
use crate::model::{Event, EventKind, Outcome, UnknownReason};
use crate::sync::{Mutex, MutexGuard, lock};

const STRIPES: usize = 1024;

/// Where the gate reads a key's state and appends its events (the ledger: journal + index).
pub(crate) trait GateStore {
    /// What `load` returns and `append` is given back, so the store need not read twice.
    type Entry;
    /// The key's entry, if it has any event.
    fn load(&self, key: &IdempotencyKey) -> Result<Option<Self::Entry>>;
    /// The state inside an entry.
    fn state(entry: &Self::Entry) -> &PaymentState;
    /// Checks `events` against the fold and makes them durable, atomically.
    fn append(
        &self,
        key: &IdempotencyKey,
        before: Option<&Self::Entry>,
        events: Vec<Event>,
    ) -> Result<()>;
}

/// What a caller asks the gate for: a purchase or an authorisation of `intent`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'a> {
    pub intent: &'a Intent,
    pub primary: PrimaryKind,
}

/// An attempt the gate made durable and whose ticket is live: call the provider with its
/// reference.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StartedAttempt {
    pub attempt: AttemptNumber,
    pub provider_reference: ProviderReference,
}

/// A ticket handed out and not yet recorded, dropped or taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveTicket {
    pub attempt: AttemptNumber,
    /// When it was handed out, on the monotonic clock: its lease runs from here.
    pub issued: MonotonicMillis,
}

/// What the gate decided under the key's lock.
#[derive(Debug)]
pub(crate) enum Admission<A> {
    /// The answer: nothing is left to append.
    Decided(Decision<StartedAttempt>),
    /// A new attempt's events went to the append (`append` is what it returned): once they are
    /// durable, [`KeyGate::started`] makes its ticket live.
    Appending { append: A, attempt: StartedAttempt },
}

#[derive(Debug)]
pub(crate) struct KeyGate {
    stripes: Vec<Mutex<()>>,
    live: Mutex<HashMap<IdempotencyKey, LiveTicket>>,
    /// Keys whose outcome could not be written, with when that happened: unknown in this
    /// process whatever the store says.
    unwritten: Mutex<HashMap<IdempotencyKey, UnixMillis>>,
}

impl KeyGate {
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            live: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
        }
    }

    /// Serialises work on `key` (and on the keys sharing its stripe) until the guard drops.
    pub fn lock(&self, key: &IdempotencyKey) -> MutexGuard<'_, ()> {
        lock(&self.stripes[stripe_of(key)])
    }

    /// Whether `key` has a live ticket.
    pub fn is_live(&self, key: &IdempotencyKey) -> bool {
        lock(&self.live).contains_key(key)
    }

    /// The live ticket of `key`, if it has one.
    pub fn live(&self, key: &IdempotencyKey) -> Option<LiveTicket> {
        lock(&self.live).get(key).copied()
    }

    /// The ticket of `key` for `attempt` is gone (recorded, dropped or taken over). A ticket of
    /// another attempt stays live: a late ticket never releases its successor.
    pub fn release(&self, key: &IdempotencyKey, attempt: AttemptNumber) {
        let mut live = lock(&self.live);
        if live.get(key).is_some_and(|t| t.attempt == attempt) {
            live.remove(key);
        }
    }

    /// The outcome of `key`'s attempt could not be written at `at`.
    pub fn mark_unwritten(&self, key: &IdempotencyKey, at: UnixMillis) {
        lock(&self.unwritten).entry(key.clone()).or_insert(at);
    }

    /// When the outcome of `key`'s attempt could not be written, if it could not.
    pub fn unwritten_since(&self, key: &IdempotencyKey) -> Option<UnixMillis> {
        lock(&self.unwritten).get(key).copied()
    }

    /// Keys whose outcome could not be written, with when.
    pub fn unwritten(&self) -> Vec<(IdempotencyKey, UnixMillis)> {
        lock(&self.unwritten)
            .iter()
            .map(|(k, at)| (k.clone(), *at))
            .collect()
    }

    /// Evidence or an operator settled `key`.
    pub fn clear_unwritten(&self, key: &IdempotencyKey) {
        lock(&self.unwritten).remove(key);
    }

    /// Serialises work on `key` as [`KeyGate::lock`] does if nobody holds its stripe now;
    /// `None` if somebody (this thread included) does.
    #[cfg(feature = "async")]
    pub fn try_lock(&self, key: &IdempotencyKey) -> Option<MutexGuard<'_, ()>> {
        let stripe = &self.stripes[stripe_of(key)];
        match stripe.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The gate: decides what a request for `key` with `intent` may do, and for a new attempt
    /// makes it durable and its ticket live before returning.
    pub fn admit<S: GateStore>(
        &self,
        store: &S,
        key: &IdempotencyKey,
        request: &Request<'_>,
        now: UnixMillis,
        monotonic: impl FnOnce() -> MonotonicMillis,
    ) -> Result<Decision<StartedAttempt>> {
        let _guard = self.lock(key);
        let append = |before: Option<&S::Entry>, events| store.append(key, before, events);
        match self.admit_locked(store, key, request, now, append)? {
            Admission::Decided(decision) => Ok(decision),
            Admission::Appending {
                append: (),
                attempt,
            } => Ok(self.started(key, attempt, monotonic())),
        }
    }

    /// [`KeyGate::admit`] for a caller that holds `key`'s lock, up to the append of a new
    /// attempt's events, which `append` makes (or queues: the caller then finishes the append
    /// and calls [`KeyGate::started`], both still holding the lock).
    pub fn admit_locked<S: GateStore, A>(
        &self,
        store: &S,
        key: &IdempotencyKey,
        request: &Request<'_>,
        now: UnixMillis,
        append: impl FnOnce(Option<&S::Entry>, Vec<Event>) -> Result<A>,
    ) -> Result<Admission<A>> {
        let intent = request.intent;
        let fingerprint = match request.primary {
            PrimaryKind::Purchase => intent.fingerprint(),
            PrimaryKind::Authorization { .. } => intent.authorization_fingerprint(),
        };
        let entry = store.load(key)?;
        let state = entry
            .as_ref()
            .map_or_else(|| PaymentState::new(key.clone()), |e| S::state(e).clone());
        let decision = state.decide(&fingerprint);
        if lock(&self.unwritten).contains_key(key)
            && !matches!(decision, Decision::KeyReused { .. })
        {
            let attempt = state
                .phase
                .possibly_charged()
                .unwrap_or(AttemptNumber::FIRST);
            return Ok(Admission::Decided(Decision::AwaitingReconciliation {
                attempt,
            }));
        }
        let event = |kind| Event {
            key: key.clone(),
            at: now,
            kind,
        };
        let AttemptPlan {
            attempt,
            record_intent,
        } = match decision.into_attempt() {
            Ok(plan) => plan,
            Err(Decision::InFlight { attempt }) if !self.is_live(key) => {
                // Nobody will report this attempt's outcome.
                store.append(
                    key,
                    entry.as_ref(),
                    vec![event(EventKind::OutcomeReported {
                        attempt,
                        outcome: Outcome::Unknown {
                            reason: UnknownReason::TicketDropped,
                        },
                    })],
                )?;
                return Ok(Admission::Decided(Decision::AwaitingReconciliation {
                    attempt,
                }));
            }
            Err(other) => return Ok(Admission::Decided(other.widen())),
        };
        let provider_reference = ProviderReference::derive(key, attempt);
        let mut events = Vec::with_capacity(2);
        if record_intent {
            events.push(event(match request.primary {
                PrimaryKind::Purchase => EventKind::IntentRecorded {
                    intent: intent.clone(),
                    fingerprint,
                },
                PrimaryKind::Authorization { multiple_captures } => {
                    EventKind::AuthorizationRecorded {
                        intent: intent.clone(),
                        fingerprint,
                        multiple_captures,
                    }
                }
            }));
        }
        events.push(event(EventKind::AttemptStarted {
            attempt,
            provider_reference: provider_reference.clone(),
        }));
        let append = append(entry.as_ref(), events)?;
        Ok(Admission::Appending {
            append,
            attempt: StartedAttempt {
                attempt,
                provider_reference,
            },
        })
    }

    /// The attempt's events are durable: its ticket is live from `issued`, the monotonic
    /// reading taken once they were (its lease runs from when it is handed out, however long
    /// the write took). The caller holds `key`'s lock.
    pub fn started(
        &self,
        key: &IdempotencyKey,
        attempt: StartedAttempt,
        issued: MonotonicMillis,
    ) -> Decision<StartedAttempt> {
        let ticket = LiveTicket {
            attempt: attempt.attempt,
            issued,
        };
        if let Some(previous) = lock(&self.live).insert(key.clone(), ticket) {
            // Only a ledger also written through the event-store seam (which does not know this
            // process's tickets) gets here: the new attempt is the one in flight, and the old
            // ticket releases only its own attempt.
            tracing::error!(key = %key, previous = previous.attempt.get(), attempt = attempt.attempt.get(), "a live ticket replaced: this ledger is also written through the event-store seam");
        }
        Decision::Attempt(attempt)
    }
}

/// The lock stripe of `key`.
fn stripe_of(key: &IdempotencyKey) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % STRIPES as u64).unwrap_or(0)
}

#[cfg(all(test, shuttle))]
mod shuttle_tests {
    //! Run with `RUSTFLAGS="--cfg shuttle" cargo test --lib gate`: shuttle explores the
    //! interleavings of the real gate over an in-memory store that runs the real fold.

    use std::collections::HashMap;

    use shuttle::sync::Arc;

    use super::*;
    use crate::model::Metadata;
    use crate::model::apply;
    use crate::model::{AccountId, Amount, Currency, CustomerRef};

    #[derive(Default)]
    struct MemStore(Mutex<HashMap<IdempotencyKey, PaymentState>>);

    impl GateStore for MemStore {
        type Entry = PaymentState;
        fn load(&self, key: &IdempotencyKey) -> Result<Option<PaymentState>> {
            Ok(lock(&self.0).get(key).cloned())
        }
        fn state(entry: &PaymentState) -> &PaymentState {
            entry
        }
        fn append(
            &self,
            key: &IdempotencyKey,
            before: Option<&PaymentState>,
            events: Vec<Event>,
        ) -> Result<()> {
            let mut state = before
                .cloned()
                .unwrap_or_else(|| PaymentState::new(key.clone()));
            for event in &events {
                state = apply(&state, event)?;
            }
            // Yield inside the append, where a real journal waits for its sync.
            shuttle::thread::yield_now();
            lock(&self.0).insert(key.clone(), state);
            Ok(())
        }
    }

    fn purchase(intent: &Intent) -> Request<'_> {
        Request {
            intent,
            primary: PrimaryKind::Purchase,
        }
    }

    fn intent() -> Intent {
        Intent {
            amount: Amount::new(100).unwrap(),
            currency: Currency::new("EUR").unwrap(),
            account: AccountId::new("a").unwrap(),
            customer: CustomerRef::new("c").unwrap(),
            description: None,
            metadata: Metadata::default(),
        }
    }

    fn concurrent_begins(threads: usize) {
        let gate = Arc::new(KeyGate::new());
        let store = Arc::new(MemStore::default());
        let key = IdempotencyKey::new("k").unwrap();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (gate, store, key) = (Arc::clone(&gate), Arc::clone(&store), key.clone());
                shuttle::thread::spawn(move || {
                    gate.admit(&*store, &key, &purchase(&intent()), UnixMillis(1), || {
                        MonotonicMillis(1)
                    })
                    .unwrap()
                })
            })
            .collect();
        let admissions: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let attempts = admissions
            .iter()
            .filter(|a| matches!(a, Decision::Attempt(_)))
            .count();
        assert_eq!(attempts, 1, "{admissions:?}");
        for other in admissions
            .iter()
            .filter(|a| !matches!(a, Decision::Attempt(_)))
        {
            assert_eq!(
                other,
                &Decision::InFlight {
                    attempt: AttemptNumber::FIRST
                }
            );
        }
    }

    #[test]
    fn two_simultaneous_begins_yield_one_attempt_in_every_interleaving() {
        shuttle::check_dfs(|| concurrent_begins(2), None);
    }

    #[test]
    fn many_simultaneous_begins_yield_one_attempt() {
        shuttle::check_pct(|| concurrent_begins(4), 2_000, 3);
    }

    #[test]
    fn a_dropped_ticket_racing_a_begin_never_yields_a_second_attempt() {
        shuttle::check_dfs(
            || {
                let gate = Arc::new(KeyGate::new());
                let store = Arc::new(MemStore::default());
                let key = IdempotencyKey::new("k").unwrap();
                let first = gate
                    .admit(&*store, &key, &purchase(&intent()), UnixMillis(1), || {
                        MonotonicMillis(1)
                    })
                    .unwrap();
                assert!(matches!(first, Decision::Attempt(_)));
                let dropper = {
                    let (gate, key) = (Arc::clone(&gate), key.clone());
                    shuttle::thread::spawn(move || {
                        let _guard = gate.lock(&key);
                        gate.release(&key, AttemptNumber::FIRST);
                    })
                };
                let racer = {
                    let (gate, store, key) = (Arc::clone(&gate), Arc::clone(&store), key.clone());
                    shuttle::thread::spawn(move || {
                        gate.admit(&*store, &key, &purchase(&intent()), UnixMillis(2), || {
                            MonotonicMillis(2)
                        })
                        .unwrap()
                    })
                };
                dropper.join().unwrap();
                let second = racer.join().unwrap();
                assert!(
                    matches!(
                        second,
                        Decision::InFlight { .. } | Decision::AwaitingReconciliation { .. }
                    ),
                    "{second:?}"
                );
            },
            None,
        );
    }
}
