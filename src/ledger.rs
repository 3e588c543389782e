//! `Ledger`: the gate, the single writer of events, joining the fold, the journal and the index.
//!
//! Invariants:
//! - every event passes the fold before it is appended, and the index is updated only after the
//!   journal sync; requests for one key are serialised by a per-key lock, so two simultaneous
//!   `begin` calls for a key yield exactly one attempt;
//! - an attempt's `AttemptStarted` event is durable before its ticket exists, so before any
//!   provider call;
//! - an attempt with no outcome never looks retryable: a dropped ticket, a process that ended, or
//!   an outcome that could not be written all leave the key unknown for the reconciler;
//! - an index failure stops the ledger (the index could be stale, and a stale state could allow
//!   a second attempt); reopening catches the index up from the journal.
//!
//! ```
//! use payledger::*;
//!
//! let dir = tempfile::tempdir()?;
//! let (ledger, _report) = Ledger::open(dir.path(), LedgerConfig::default())?;
//! let key = IdempotencyKey::new("order-9/pay")?;
//! let intent = Intent {
//!     amount: Amount::new(1_250)?,
//!     currency: Currency::new("EUR")?,
//!     account: AccountId::new("acct_1")?,
//!     customer: CustomerRef::new("cus_1")?,
//!     description: None,
//!     metadata: Metadata::default(),
//! };
//! match ledger.begin(&key, &intent)? {
//!     Begin::Attempt(ticket) => {
//!         // Send ticket.provider_reference() to the provider as its idempotency key, then:
//!         let outcome = Outcome::Succeeded {
//!             transaction_id: TransactionId::new("ch_1")?,
//!             amount: intent.amount,
//!         };
//!         ledger.record(ticket, outcome)?;
//!     }
//!     other => panic!("a new key starts an attempt, got {other:?}"),
//! }
//! // The client retries: the stored result is replayed, nothing is sent.
//! assert!(matches!(ledger.begin(&key, &intent)?, Begin::AlreadySucceeded { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::event::{
    Event, EventKind, EvidenceSource, Finding, Outcome, QueryAnswer, Resolution, ReviewReason,
    UnknownReason,
};
use crate::gate::{Admission, GateStore, KeyGate};
use crate::index::{Index, IndexEntry};
use crate::intent::{Fingerprint, Intent};
use crate::journal::codec::{decode_event, encode_event};
use crate::journal::storage::{FsStorage, Storage};
use crate::journal::{Journal, JournalConfig, JournalStats, RecoveryReport};
use crate::key::{
    Amount, AttemptNumber, DeclineCode, IdempotencyKey, Note, Operator, ProviderReference,
    Sequence, TransactionId, UnixMillis,
};
use crate::limits::{LIST_LIMIT_MAX, SEGMENT_LEN_DEFAULT};
use crate::payment::{Decision, PaymentState, Phase, PhaseKind, Verdict, apply};
use crate::reconcile::{ChargeRequest, Provider, ReconcileConfig};

/// How a ledger is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Journal segment size.
    pub segment_len: u64,
    /// Create the ledger if the directory holds none.
    pub create_if_missing: bool,
    /// Open for inspection only: no event is appended (not even for attempts orphaned by a
    /// previous process); the index may still be caught up.
    pub read_only: bool,
    /// Where the sled index lives; `None` means `<dir>/index`. It is always on the real file
    /// system.
    pub index_dir: Option<PathBuf>,
    /// Reconciler behaviour (its schedule is part of the index).
    pub reconcile: ReconcileConfig,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where the journal's bytes go.
    pub storage: Arc<dyn Storage>,
    /// Test-only sabotage for the simulator's self-test: reopening marks orphaned attempts
    /// "not sent" instead of unknown, the bug the simulator must catch. Never set it.
    #[doc(hidden)]
    pub sabotage_forget_unknown_on_replay: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            segment_len: SEGMENT_LEN_DEFAULT,
            create_if_missing: true,
            read_only: false,
            index_dir: None,
            reconcile: ReconcileConfig::default(),
            clock: Arc::new(SystemClock),
            storage: Arc::new(FsStorage),
            sabotage_forget_unknown_on_replay: false,
        }
    }
}

/// How the index was brought up to date on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRecovery {
    /// The index was caught up by replaying these journal sequences (possibly none).
    CaughtUp {
        /// First sequence replayed.
        from: Sequence,
        /// Last sequence replayed.
        to: Sequence,
    },
    /// The index was missing, unreadable or inconsistent and was rebuilt from the journal.
    Rebuilt {
        /// Why.
        reason: String,
        /// Events replayed.
        events: u64,
    },
}

/// What opening a ledger found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The journal's recovery.
    pub journal: RecoveryReport,
    /// The index's recovery.
    pub index: IndexRecovery,
    /// Attempts a previous process started without recording an outcome, now unknown.
    pub orphaned_attempts: usize,
}

/// The gate's answer to `begin`. Every variant is a normal outcome the caller must handle.
#[derive(Debug)]
#[must_use = "an attempt ticket must be recorded; other answers must be relayed to the client"]
pub enum Begin {
    /// Call the provider now with this ticket's reference; the attempt is already durable.
    Attempt(Ticket),
    /// The key charged: reply with the stored result.
    AlreadySucceeded {
        /// The attempt that charged.
        attempt: AttemptNumber,
        /// The provider's id.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The key was declined: reply with the stored decline.
    AlreadyDeclined {
        /// The declined attempt.
        attempt: AttemptNumber,
        /// The provider's code.
        code: DeclineCode,
    },
    /// Every allowed attempt provably failed without charging.
    AttemptsExhausted {
        /// The last attempt.
        attempt: AttemptNumber,
    },
    /// Another request for this key holds the attempt right now.
    InFlight {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// The outcome is unknown; the reconciler will settle it. Do not charge.
    AwaitingReconciliation {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// A human is settling the key.
    InReview {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// Evidence contradicts the ledger (a possible double charge); a human must act.
    InConflict {
        /// The attempt the evidence is about.
        attempt: AttemptNumber,
    },
    /// The key was used for a different intent; nothing was appended.
    KeyReused {
        /// The fingerprint on record.
        recorded: Fingerprint,
        /// The fingerprint requested.
        requested: Fingerprint,
    },
}

impl Begin {
    /// The decision this answer stands for, for relaying or logging (an attempt shows as
    /// `StartAttempt`; its ticket stays with the caller).
    pub fn decision(&self) -> Decision {
        match self {
            Begin::Attempt(ticket) => Decision::StartAttempt {
                attempt: ticket.attempt,
                record_intent: false,
            },
            Begin::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Decision::AlreadySucceeded {
                attempt: *attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            },
            Begin::AlreadyDeclined { attempt, code } => Decision::AlreadyDeclined {
                attempt: *attempt,
                code: code.clone(),
            },
            Begin::AttemptsExhausted { attempt } => {
                Decision::AttemptsExhausted { attempt: *attempt }
            }
            Begin::InFlight { attempt } => Decision::InFlight { attempt: *attempt },
            Begin::AwaitingReconciliation { attempt } => {
                Decision::AwaitingReconciliation { attempt: *attempt }
            }
            Begin::InReview { attempt } => Decision::InReview { attempt: *attempt },
            Begin::InConflict { attempt } => Decision::InConflict { attempt: *attempt },
            Begin::KeyReused {
                recorded,
                requested,
            } => Decision::KeyReused {
                recorded: *recorded,
                requested: *requested,
            },
        }
    }

    fn from_decision(decision: Decision) -> Self {
        match decision {
            Decision::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Begin::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            },
            Decision::AlreadyDeclined { attempt, code } => Begin::AlreadyDeclined { attempt, code },
            Decision::AttemptsExhausted { attempt } => Begin::AttemptsExhausted { attempt },
            Decision::InFlight { attempt } => Begin::InFlight { attempt },
            Decision::AwaitingReconciliation { attempt }
            | Decision::StartAttempt { attempt, .. } => Begin::AwaitingReconciliation { attempt },
            Decision::InReview { attempt } => Begin::InReview { attempt },
            Decision::InConflict { attempt } => Begin::InConflict { attempt },
            Decision::KeyReused {
                recorded,
                requested,
            } => Begin::KeyReused {
                recorded,
                requested,
            },
        }
    }
}

/// The right to make one provider call. Its `AttemptStarted` event is durable. Record its
/// outcome with [`Ledger::record`]; dropping it unrecorded leaves the key unknown for the
/// reconciler, never retryable.
#[derive(Debug)]
#[must_use = "record the outcome of the provider call with Ledger::record"]
pub struct Ticket {
    key: IdempotencyKey,
    attempt: AttemptNumber,
    provider_reference: ProviderReference,
    ledger: std::sync::Weak<Inner>,
    recorded: bool,
}

impl Ticket {
    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
    /// The attempt number.
    pub fn attempt(&self) -> AttemptNumber {
        self.attempt
    }
    /// The reference to send to the provider (as its idempotency key).
    pub fn provider_reference(&self) -> &ProviderReference {
        &self.provider_reference
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if let Some(inner) = self.ledger.upgrade() {
            tracing::warn!(key = %self.key, attempt = self.attempt.get(), "ticket dropped without an outcome; key left for the reconciler");
            inner.gate.release(&self.key);
            lock(&inner.abandoned).push((self.key.clone(), self.attempt));
        }
    }
}

/// What `charge_once` did.
#[derive(Debug)]
pub struct ChargeReport {
    /// Whether the provider was called.
    pub called_provider: bool,
    /// The outcome recorded for the call, if one was made.
    pub outcome: Option<Outcome>,
    /// Where the key stands now.
    pub decision: Decision,
}

/// What `record_evidence` did with a webhook or settlement line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvidenceOutcome {
    /// No key in this ledger issued the reference.
    UnknownReference,
    /// Recorded; it confirmed what was held.
    Confirmed,
    /// Recorded; it settled the key into this phase.
    Settled(Phase),
    /// It contradicted the ledger; a `ConflictDetected` event was recorded and the key needs a
    /// refund or a human.
    Conflict,
}

/// One event of a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its journal sequence.
    pub sequence: Sequence,
    /// The event.
    pub event: Event,
}

/// Figures to alert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Keys whose outcome is unknown.
    pub unknown: usize,
    /// Age of the oldest unknown outcome, in milliseconds.
    pub oldest_unknown_ms: Option<u64>,
    /// Keys with an attempt in flight.
    pub in_flight: usize,
    /// Keys in manual review (the dead-letter).
    pub in_review: usize,
    /// Keys in conflict (possible double charge, needs a refund).
    pub conflict: usize,
    /// Last journal sequence.
    pub last_sequence: Sequence,
    /// Journal sync figures since open.
    pub journal: JournalStats,
}

/// Tracks the highest journal sequence up to which every record is in the index.
#[derive(Debug, Default)]
struct Watermark {
    contiguous: u64,
    done: BTreeSet<u64>,
}

impl Watermark {
    fn complete(&mut self, sequences: std::ops::RangeInclusive<u64>) -> u64 {
        self.done.extend(sequences);
        while self.done.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        self.contiguous
    }
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    index: Index,
    config: LedgerConfig,
    gate: KeyGate,
    abandoned: Mutex<Vec<(IdempotencyKey, AttemptNumber)>>,
    watermark: Mutex<Watermark>,
    index_failed: AtomicBool,
}

/// An open ledger. Clones share it; it is `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section here leaves its data consistent before anything can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`: opens the journal (recovering a torn tail), opens
    /// the index (rebuilding it if missing or unreadable, else catching it up from its
    /// watermark), and marks attempts orphaned by a previous process unknown.
    ///
    /// # Errors
    /// [`Error::Locked`], [`Error::NotFound`], [`Error::Corrupt`], [`Error::Inconsistent`],
    /// [`Error::Index`], [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, config: LedgerConfig) -> Result<(Self, OpenReport)> {
        let dir = dir.as_ref();
        let span = tracing::info_span!("open", dir = %dir.display());
        let _enter = span.enter();
        let started = Instant::now();
        let (journal, journal_report) = Journal::open_on(
            Arc::clone(&config.storage),
            dir,
            JournalConfig {
                segment_len: config.segment_len,
                create_if_missing: config.create_if_missing,
            },
        )?;
        let index_dir = config
            .index_dir
            .clone()
            .unwrap_or_else(|| dir.join("index"));
        let (index, rebuild_reason) = open_index(&index_dir, &journal)?;
        let inner = Arc::new(Inner {
            journal,
            index,
            config,
            gate: KeyGate::new(),
            abandoned: Mutex::new(Vec::new()),
            watermark: Mutex::new(Watermark::default()),
            index_failed: AtomicBool::new(false),
        });
        let ledger = Ledger { inner };
        let (from, replayed) = ledger.catch_up_index()?;
        let index_report = match rebuild_reason {
            Some(reason) => {
                tracing::warn!(%reason, events = replayed, "index rebuilt from the journal");
                IndexRecovery::Rebuilt {
                    reason,
                    events: replayed,
                }
            }
            None => IndexRecovery::CaughtUp {
                from: Sequence(from),
                to: ledger.inner.journal.last_sequence(),
            },
        };
        let orphaned_attempts = if ledger.inner.config.read_only {
            0
        } else {
            ledger.settle_orphans()?
        };
        tracing::info!(
            orphaned_attempts,
            duration_us = elapsed_us(started),
            "ledger opened"
        );
        Ok((
            ledger,
            OpenReport {
                journal: journal_report,
                index: index_report,
                orphaned_attempts,
            },
        ))
    }

    /// Replays journal records the index does not reflect yet; returns the first sequence
    /// replayed and how many events were applied.
    fn catch_up_index(&self) -> Result<(u64, u64)> {
        let inner = &self.inner;
        let from = inner.index.watermark()? + 1;
        let mut applied = 0;
        for record in inner.journal.read_from(Sequence(from)) {
            let record = record?;
            let event = decode_event(&record.payload).map_err(|e| Error::Inconsistent {
                sequence: record.sequence.0,
                what: e.to_string(),
            })?;
            let before = inner.index.get(&event.key)?;
            if before
                .as_ref()
                .is_some_and(|b| b.last_sequence >= record.sequence.0)
            {
                continue;
            }
            let state = before
                .as_ref()
                .map_or_else(|| PaymentState::new(event.key.clone()), |b| b.state.clone());
            let state = apply(&state, &event).map_err(|r| Error::Inconsistent {
                sequence: record.sequence.0,
                what: r.to_string(),
            })?;
            let after = IndexEntry {
                next_query_at: inner.config.reconcile.next_query_at(
                    &event.key,
                    &state.phase,
                    event.at,
                ),
                state,
                last_sequence: record.sequence.0,
            };
            let reference = started_reference(&event);
            inner.index.put(
                &event.key,
                before.as_ref(),
                &after,
                &[(record.sequence.0, &record.payload)],
                reference.as_ref(),
            )?;
            applied += 1;
        }
        let last = inner.journal.last_sequence().0;
        inner.index.set_watermark(last)?;
        lock(&inner.watermark).contiguous = last;
        inner.index.flush()?;
        Ok((from, applied))
    }

    /// Attempts started by a previous process with no outcome become unknown.
    fn settle_orphans(&self) -> Result<usize> {
        let now = self.now();
        let mut count = 0;
        let mut after = None;
        loop {
            let keys =
                self.inner
                    .index
                    .list(PhaseKind::InFlight, after.as_ref(), LIST_LIMIT_MAX)?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for key in keys {
                let _guard = self.lock_key(&key);
                let entry = self.inner.index.get(&key)?;
                if let Some(Phase::InFlight { attempt, .. }) =
                    entry.as_ref().map(|e| &e.state.phase)
                {
                    let outcome = if self.inner.config.sabotage_forget_unknown_on_replay {
                        Outcome::NotSent {
                            reason: crate::event::NotSentReason::ConnectionRefused,
                        }
                    } else {
                        Outcome::Unknown {
                            reason: UnknownReason::ProcessEnded,
                        }
                    };
                    let event = self.event(
                        &key,
                        now,
                        EventKind::OutcomeReported {
                            attempt: *attempt,
                            outcome,
                        },
                    );
                    self.commit(&key, entry.as_ref(), vec![event])?;
                    tracing::warn!(key = %key, attempt = attempt.get(), "attempt orphaned by a previous process is now unknown");
                    count += 1;
                }
            }
            after = Some(last);
        }
        Ok(count)
    }

    fn now(&self) -> UnixMillis {
        self.inner.config.clock.now()
    }

    fn event(&self, key: &IdempotencyKey, at: UnixMillis, kind: EventKind) -> Event {
        Event {
            key: key.clone(),
            at,
            kind,
        }
    }

    fn lock_key(&self, key: &IdempotencyKey) -> crate::sync::MutexGuard<'_, ()> {
        self.inner.gate.lock(key)
    }

    fn writable(&self) -> Result<()> {
        if self.inner.config.read_only {
            return Err(Error::ReadOnly);
        }
        if self.inner.index_failed.load(Ordering::Acquire) {
            return Err(Error::IndexFailed);
        }
        Ok(())
    }

    /// Checks `events` against the fold, appends them atomically, then updates the index.
    /// The caller holds the key's lock.
    fn commit(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
    ) -> Result<IndexEntry> {
        self.writable()?;
        let mut state = before.map_or_else(|| PaymentState::new(key.clone()), |b| b.state.clone());
        for event in &events {
            state = apply(&state, event)?;
        }
        let payloads = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>>>()?;
        let sequences = self.inner.journal.append(payloads.clone())?;
        let last_at = events.last().map_or(UnixMillis(0), |e| e.at);
        let after = IndexEntry {
            next_query_at: self
                .inner
                .config
                .reconcile
                .next_query_at(key, &state.phase, last_at),
            state,
            last_sequence: sequences.end().0,
        };
        let stored: Vec<(u64, &[u8])> = (sequences.start().0..=sequences.end().0)
            .zip(payloads.iter().map(Vec::as_slice))
            .collect();
        let reference = events.iter().find_map(started_reference);
        let indexed = self
            .inner
            .index
            .put(key, before, &after, &stored, reference.as_ref())
            .and_then(|()| {
                let watermark =
                    lock(&self.inner.watermark).complete(sequences.start().0..=sequences.end().0);
                self.inner.index.set_watermark(watermark)
            });
        if let Err(e) = indexed {
            tracing::error!(error = %e, key = %key, "index update failed after a durable append; ledger stopped until reopened");
            self.inner.index_failed.store(true, Ordering::Release);
            return Err(Error::IndexFailed);
        }
        Ok(after)
    }

    /// The gate: what to do with a request for `key` carrying `intent`. On
    /// [`Begin::Attempt`], the intent (for a new key) and the attempt are durable and the
    /// caller may call the provider once with the ticket's reference.
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::IndexFailed`], journal errors. A reused key or a key
    /// awaiting reconciliation is not an error but a [`Begin`] variant.
    pub fn begin(&self, key: &IdempotencyKey, intent: &Intent) -> Result<Begin> {
        let span = tracing::info_span!("begin", key = %key, attempt = tracing::field::Empty, provider_reference = tracing::field::Empty);
        let _enter = span.enter();
        let started = Instant::now();
        self.writable()?;
        let begin = match self.inner.gate.admit(self, key, intent, self.now())? {
            Admission::Attempt {
                attempt,
                provider_reference,
            } => {
                span.record("attempt", attempt.get());
                span.record("provider_reference", provider_reference.as_str());
                Begin::Attempt(Ticket {
                    key: key.clone(),
                    attempt,
                    provider_reference,
                    ledger: Arc::downgrade(&self.inner),
                    recorded: false,
                })
            }
            Admission::Orphaned { attempt } => Begin::AwaitingReconciliation { attempt },
            Admission::Decided(decision) => Begin::from_decision(decision),
        };
        tracing::debug!(decision = ?begin_name(&begin), duration_us = elapsed_us(started), "begin");
        Ok(begin)
    }

    /// Records the outcome of a ticket's provider call. If evidence settled the key meanwhile
    /// (a webhook arrived first), the outcome is recorded as evidence instead, and a
    /// contradiction becomes a conflict.
    ///
    /// # Errors
    /// Journal or index errors: the key is then treated as unknown in this process (never as
    /// retryable) and the error is returned. [`Error::StaleTicket`] for a ticket of another
    /// ledger.
    pub fn record(&self, mut ticket: Ticket, outcome: Outcome) -> Result<PaymentState> {
        let span = tracing::info_span!("record", key = %ticket.key, attempt = ticket.attempt.get(), provider_reference = %ticket.provider_reference);
        let _enter = span.enter();
        let started = Instant::now();
        if !std::ptr::eq(ticket.ledger.as_ptr(), Arc::as_ptr(&self.inner)) {
            return Err(Error::StaleTicket {
                key: ticket.key.to_string(),
                attempt: ticket.attempt.get(),
            });
        }
        ticket.recorded = true;
        let key = ticket.key.clone();
        let attempt = ticket.attempt;
        let _guard = self.lock_key(&key);
        self.inner.gate.release(&key);
        let result = self.record_locked(&key, attempt, outcome);
        match &result {
            Ok(state) => tracing::info!(
                phase = state.phase.name(),
                duration_us = elapsed_us(started),
                "outcome recorded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "outcome could not be recorded; key treated as unknown");
                self.inner.gate.mark_unwritten(&key);
            }
        }
        result
    }

    fn record_locked(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        outcome: Outcome,
    ) -> Result<PaymentState> {
        let entry = self.inner.index.get(key)?;
        let state = entry
            .as_ref()
            .map_or_else(|| PaymentState::new(key.clone()), |e| e.state.clone());
        let now = self.now();
        if matches!(state.phase, Phase::InFlight { attempt: a, .. } if a == attempt) {
            let event = self.event(key, now, EventKind::OutcomeReported { attempt, outcome });
            return Ok(self.commit(key, entry.as_ref(), vec![event])?.state);
        }
        // Settled meanwhile: what the reply says is evidence.
        let finding = match outcome {
            Outcome::Succeeded {
                transaction_id,
                amount,
            } => Finding::Charged {
                transaction_id,
                amount,
            },
            Outcome::Declined { code } => Finding::Declined { code },
            Outcome::NotSent { .. } | Outcome::Unknown { .. } => return Ok(state),
        };
        self.record_finding(
            key,
            entry.as_ref(),
            &state,
            attempt,
            EvidenceSource::Reply,
            finding,
            now,
        )
        .map(|(state, _)| state)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per evidence path; a struct would only rename them"
    )]
    fn record_finding(
        &self,
        key: &IdempotencyKey,
        entry: Option<&IndexEntry>,
        state: &PaymentState,
        attempt: AttemptNumber,
        source: EvidenceSource,
        finding: Finding,
        now: UnixMillis,
    ) -> Result<(PaymentState, EvidenceOutcome)> {
        let verdict =
            state
                .weigh(attempt, &finding)
                .map_err(|reason| crate::payment::Rejection {
                    phase: state.phase.name(),
                    event: "evidence received",
                    reason,
                })?;
        let (kind, outcome) = match verdict {
            Verdict::Contradicts => {
                tracing::error!(key = %key, attempt = attempt.get(), ?source, ?finding, "conflicting evidence: possible double charge");
                (
                    EventKind::ConflictDetected {
                        attempt,
                        source,
                        finding,
                    },
                    EvidenceOutcome::Conflict,
                )
            }
            Verdict::Agrees => (
                EventKind::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Confirmed,
            ),
            Verdict::Settles(phase) => (
                EventKind::EvidenceReceived {
                    attempt,
                    source,
                    finding,
                },
                EvidenceOutcome::Settled(phase),
            ),
        };
        let after = self.commit(key, entry, vec![self.event(key, now, kind)])?;
        Ok((after.state, outcome))
    }

    /// begin → charge → record, with the provider call bounded by `deadline`: a reply after
    /// the deadline is recorded as a timeout (unknown), whatever it said.
    ///
    /// # Errors
    /// As [`Ledger::begin`] and [`Ledger::record`].
    pub fn charge_once(
        &self,
        key: &IdempotencyKey,
        intent: &Intent,
        provider: &dyn Provider,
        deadline: Duration,
    ) -> Result<ChargeReport> {
        let fingerprint = intent.fingerprint();
        let ticket = match self.begin(key, intent)? {
            Begin::Attempt(ticket) => ticket,
            other => {
                return Ok(ChargeReport {
                    called_provider: false,
                    outcome: None,
                    decision: other.decision(),
                });
            }
        };
        let request = ChargeRequest::new(
            intent,
            ticket.attempt,
            ticket.provider_reference.clone(),
            deadline,
        );
        let started = Instant::now();
        let reply = provider.charge(&request);
        let outcome = if started.elapsed() > deadline {
            Outcome::Unknown {
                reason: UnknownReason::Timeout,
            }
        } else {
            reply.classify()
        };
        let state = self.record(ticket, outcome.clone())?;
        Ok(ChargeReport {
            called_provider: true,
            outcome: Some(outcome),
            decision: state.decide(&fingerprint),
        })
    }

    /// Records a webhook or settlement line about the attempt sent with `reference`.
    ///
    /// # Errors
    /// Journal or index errors; [`Error::Rejected`] for evidence about an attempt that never
    /// started.
    pub fn record_evidence(
        &self,
        reference: &ProviderReference,
        source: EvidenceSource,
        finding: Finding,
    ) -> Result<EvidenceOutcome> {
        let span = tracing::info_span!("evidence", provider_reference = %reference, ?source);
        let _enter = span.enter();
        self.writable()?;
        let (Some(key), Some(attempt)) = (
            self.inner.index.key_for_reference(reference)?,
            reference.attempt(),
        ) else {
            tracing::warn!("evidence for a reference this ledger never issued");
            return Ok(EvidenceOutcome::UnknownReference);
        };
        let _guard = self.lock_key(&key);
        let entry = self.inner.index.get(&key)?;
        let Some(state) = entry.as_ref().map(|e| e.state.clone()) else {
            return Ok(EvidenceOutcome::UnknownReference);
        };
        let (_, outcome) = self.record_finding(
            &key,
            entry.as_ref(),
            &state,
            attempt,
            source,
            finding,
            self.now(),
        )?;
        Ok(outcome)
    }

    /// An operator settles an unknown or in-review attempt.
    ///
    /// # Errors
    /// [`Error::Rejected`] if the key is not awaiting reconciliation on that attempt or the
    /// resolution's amount differs from the intent's; journal or index errors.
    pub fn resolve(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        resolution: Resolution,
        operator: Operator,
        note: Note,
    ) -> Result<PaymentState> {
        let span = tracing::info_span!("resolve", key = %key, attempt = attempt.get(), operator = %operator);
        let _enter = span.enter();
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        let event = self.event(
            key,
            self.now(),
            EventKind::ResolvedByOperator {
                attempt,
                resolution,
                operator,
                note,
            },
        );
        let after = self.commit(key, entry.as_ref(), vec![event])?;
        self.inner.gate.clear_unwritten(key);
        tracing::info!(phase = after.state.phase.name(), "resolved by operator");
        Ok(after.state)
    }

    /// Appends a query answer for `attempt` if the key still awaits it; returns the new phase,
    /// or `None` if the key moved on meanwhile.
    pub(crate) fn record_query(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        answer: QueryAnswer,
        now: UnixMillis,
    ) -> Result<Option<Phase>> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        if !matches!(entry.as_ref().map(|e| &e.state.phase), Some(Phase::Unknown { attempt: a, .. }) if *a == attempt)
        {
            return Ok(None);
        }
        let event = self.event(key, now, EventKind::ProviderQueried { attempt, answer });
        let after = self.commit(key, entry.as_ref(), vec![event])?;
        if !matches!(after.state.phase, Phase::Unknown { .. }) {
            self.inner.gate.clear_unwritten(key);
        }
        Ok(Some(after.state.phase))
    }

    /// Escalates an unknown attempt to review; `false` if the key moved on meanwhile.
    pub(crate) fn escalate(
        &self,
        key: &IdempotencyKey,
        attempt: AttemptNumber,
        queries: u32,
        now: UnixMillis,
    ) -> Result<bool> {
        let _guard = self.lock_key(key);
        let entry = self.inner.index.get(key)?;
        if !matches!(entry.as_ref().map(|e| &e.state.phase), Some(Phase::Unknown { attempt: a, .. }) if *a == attempt)
        {
            return Ok(false);
        }
        let event = self.event(
            key,
            now,
            EventKind::EscalatedToReview {
                attempt,
                reason: ReviewReason::QueriesExhausted { queries },
            },
        );
        self.commit(key, entry.as_ref(), vec![event])?;
        tracing::warn!(key = %key, attempt = attempt.get(), queries, "escalated to manual review");
        Ok(true)
    }

    /// Marks attempts whose tickets were dropped unknown; returns how many.
    pub(crate) fn settle_abandoned(&self, now: UnixMillis) -> Result<usize> {
        let abandoned = std::mem::take(&mut *lock(&self.inner.abandoned));
        let mut count = 0;
        for (key, attempt) in abandoned {
            let _guard = self.lock_key(&key);
            if self.inner.gate.is_live(&key) {
                continue;
            }
            let entry = self.inner.index.get(&key)?;
            if matches!(entry.as_ref().map(|e| &e.state.phase), Some(Phase::InFlight { attempt: a, .. }) if *a == attempt)
            {
                let event = self.event(
                    &key,
                    now,
                    EventKind::OutcomeReported {
                        attempt,
                        outcome: Outcome::Unknown {
                            reason: UnknownReason::TicketDropped,
                        },
                    },
                );
                self.commit(&key, entry.as_ref(), vec![event])?;
                count += 1;
            }
        }
        Ok(count)
    }

    pub(crate) fn due_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<IdempotencyKey>> {
        self.inner.index.due(now, limit)
    }

    pub(crate) fn reconcile_config(&self) -> &ReconcileConfig {
        &self.inner.config.reconcile
    }

    /// The state of `key`, if it has any event.
    ///
    /// # Errors
    /// Index errors.
    pub fn state(&self, key: &IdempotencyKey) -> Result<Option<PaymentState>> {
        Ok(self.inner.index.get(key)?.map(|e| e.state))
    }

    /// Every event of `key`, in journal order.
    ///
    /// # Errors
    /// Index or codec errors.
    pub fn history(&self, key: &IdempotencyKey) -> Result<Vec<HistoryEntry>> {
        self.inner
            .index
            .history(key)?
            .into_iter()
            .map(|stored| {
                Ok(HistoryEntry {
                    sequence: Sequence(stored.sequence),
                    event: decode_event(&stored.payload)?,
                })
            })
            .collect()
    }

    /// Keys in `phase` with their states, ordered by key, strictly after `after` (a stable,
    /// unique cursor), at most `limit` (capped at [`LIST_LIMIT_MAX`]).
    ///
    /// # Errors
    /// Index errors.
    pub fn list(
        &self,
        phase: PhaseKind,
        after: Option<&IdempotencyKey>,
        limit: usize,
    ) -> Result<Vec<PaymentState>> {
        let keys = self
            .inner
            .index
            .list(phase, after, limit.min(LIST_LIMIT_MAX))?;
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = self.inner.index.get(&key)? {
                states.push(entry.state);
            }
        }
        Ok(states)
    }

    /// Counts and ages to alert on.
    ///
    /// # Errors
    /// Index errors.
    pub fn health(&self) -> Result<Health> {
        let index = &self.inner.index;
        let now = self.now();
        let mut oldest: Option<UnixMillis> = None;
        let mut after = None;
        loop {
            let states = self.list(PhaseKind::Unknown, after.as_ref(), LIST_LIMIT_MAX)?;
            let Some(last) = states.last().map(|s| s.key.clone()) else {
                break;
            };
            for state in &states {
                if let Phase::Unknown { since, .. } = state.phase {
                    oldest = Some(oldest.map_or(since, |o| o.min(since)));
                }
            }
            after = Some(last);
        }
        Ok(Health {
            unknown: index.count(PhaseKind::Unknown),
            oldest_unknown_ms: oldest.map(|since| now.since(since)),
            in_flight: index.count(PhaseKind::InFlight),
            in_review: index.count(PhaseKind::InReview),
            conflict: index.count(PhaseKind::Conflict),
            last_sequence: self.inner.journal.last_sequence(),
            journal: self.inner.journal.stats(),
        })
    }

    /// Keys per phase.
    pub fn counts(&self) -> Vec<(PhaseKind, usize)> {
        PhaseKind::ALL
            .into_iter()
            .map(|kind| (kind, self.inner.index.count(kind)))
            .collect()
    }

    /// The journal, for verification, export and replay.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The index watermark: the last journal sequence it reflects.
    ///
    /// # Errors
    /// Index errors.
    pub fn index_watermark(&self) -> Result<Sequence> {
        Ok(Sequence(self.inner.index.watermark()?))
    }
}

impl GateStore for Ledger {
    type Entry = IndexEntry;

    fn load(&self, key: &IdempotencyKey) -> Result<Option<IndexEntry>> {
        self.inner.index.get(key)
    }

    fn state(entry: &IndexEntry) -> &PaymentState {
        &entry.state
    }

    fn append(
        &self,
        key: &IdempotencyKey,
        before: Option<&IndexEntry>,
        events: Vec<Event>,
    ) -> Result<()> {
        self.commit(key, before, events).map(drop)
    }
}

fn started_reference(event: &Event) -> Option<ProviderReference> {
    match &event.kind {
        EventKind::AttemptStarted {
            provider_reference, ..
        } => Some(provider_reference.clone()),
        _ => None,
    }
}

fn begin_name(begin: &Begin) -> &'static str {
    match begin {
        Begin::Attempt(_) => "attempt",
        Begin::AlreadySucceeded { .. } => "already succeeded",
        Begin::AlreadyDeclined { .. } => "already declined",
        Begin::AttemptsExhausted { .. } => "attempts exhausted",
        Begin::InFlight { .. } => "in flight",
        Begin::AwaitingReconciliation { .. } => "awaiting reconciliation",
        Begin::InReview { .. } => "in review",
        Begin::InConflict { .. } => "in conflict",
        Begin::KeyReused { .. } => "key reused",
    }
}

/// Opens the index, or makes a fresh one when it is missing, unusable or ahead of the journal;
/// returns why it must be rebuilt, if it must.
fn open_index(dir: &Path, journal: &Journal) -> Result<(Index, Option<String>)> {
    let existed = dir.exists();
    let reason = match Index::open(dir)? {
        Ok(index) => {
            let watermark = index.watermark()?;
            let last = journal.last_sequence().0;
            if watermark > last {
                index.clear()?;
                let reason = format!(
                    "index watermark {watermark} is ahead of the journal's last sequence {last}"
                );
                return Ok((index, Some(reason)));
            }
            return Ok((index, (!existed).then(|| "index missing".to_string())));
        }
        Err(reason) => reason,
    };
    std::fs::remove_dir_all(dir)
        .map_err(|e| Error::io(format!("removing unusable index {}", dir.display()), e))?;
    match Index::open(dir)? {
        Ok(index) => Ok((index, Some(reason))),
        Err(again) => Err(Error::Index {
            what: format!("fresh index unusable: {again}"),
        }),
    }
}
