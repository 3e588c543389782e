//! The `ledger` target: a structured sequence of API operations, provider replies, crashes with
//! page-level power loss, index losses, reopens and clock steps, against the real ledger on a
//! simulated disk, checked after every step against a small reference model kept here.
//!
//! Invariants checked: no key is ever charged twice at the provider (the simulated provider
//! never loses a charge and always answers queries truthfully, so a second charge can only come
//! from the ledger); every acknowledged event survives every crash; replaying the journal gives
//! the live state of every key; a ledger call fails only after an injected fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};

use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::journal::codec::decode_event;
use crate::journal::simdisk::{CrashMode, SimDisk};
use crate::ledger::{Begin, Ledger, LedgerConfig, Ticket};
use crate::model::{
    AccountId, Amount, AttemptNumber, Currency, CustomerRef, DeclineCode, EvidenceSource, Finding,
    IdempotencyKey, Intent, Metadata, NotFoundPolicy, NotSentReason, Note, Operator, Outcome,
    PaymentState, Phase, ProviderReference, ReconcileConfig, Resolution, Sequence, TransactionId,
    UnixMillis, UnknownReason, apply,
};
use crate::provider::{ChargeReply, ChargeRequest, Provider, QueryReply};
use crate::reconcile::Reconciler;
use crate::sync::lock;

/// Operations one input may hold at most: bounds the time of one run.
const OPS_MAX: usize = 64;
const KEYS: usize = 3;
const SLOTS: usize = 4;
const LEDGER_DIR: &str = "/fuzz/ledger";

/// One operation, chosen by the fuzzer.
#[derive(Arbitrary, Debug, Clone)]
pub enum LedgerOp {
    /// `begin` for a key; an attempt's ticket goes to a free slot.
    Begin(u8),
    /// The provider call of the ticket in a slot, and its outcome recorded.
    Call(u8, CallResult),
    /// The ticket in a slot is dropped unrecorded.
    Drop(u8),
    /// Webhooks for every charge the provider made for a key.
    Webhook(u8),
    /// An operator resolves a key in doubt with what the provider shows.
    Resolve(u8),
    /// A reconciler pass.
    Reconcile,
    /// Time passes (tenths of a second).
    Advance(u16),
    /// The wall clock steps (seconds, either way).
    StepWall(i16),
    /// The next write fails.
    FailWrite,
    /// The next sync fails.
    FailSync,
    /// The process dies: the disk loses what a crash mode says, the index may be lost.
    Crash(u8, bool),
}

/// What the provider does with a call.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum CallResult {
    /// Charges and says so.
    Charged,
    /// Charges; the reply is lost.
    ChargedReplyLost,
    /// Declines.
    Declined,
    /// Refuses the connection: nothing reached it.
    Refused,
    /// Never answers in time; nothing was processed.
    Timeout,
}

/// What the provider really did with each reference.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Truth {
    Charged(String, u64),
    Declined,
}

#[derive(Clone, Default)]
struct TruthProvider(Arc<Mutex<BTreeMap<String, Truth>>>);

impl Provider for TruthProvider {
    fn charge(&self, _: &ChargeRequest) -> ChargeReply {
        ChargeReply::Timeout
    }
    fn query(&self, reference: &ProviderReference) -> QueryReply {
        match lock(&*self.0).get(reference.as_str()) {
            Some(Truth::Charged(txn, amount)) => QueryReply::Succeeded {
                transaction_id: txn.clone(),
                amount_minor: *amount,
            },
            Some(Truth::Declined) => QueryReply::Declined {
                code: "declined".into(),
            },
            None => QueryReply::NotFound,
        }
    }
}

/// The operations `bytes` decode to (at most [`OPS_MAX`]).
pub fn ledger_ops(bytes: &[u8]) -> Vec<LedgerOp> {
    let mut u = Unstructured::new(bytes);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < OPS_MAX {
        match u.arbitrary::<LedgerOp>() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// Runs the operations `bytes` decode to and checks the invariants after each.
pub fn ledger(bytes: &[u8]) {
    let ops = ledger_ops(bytes);
    if ops.is_empty() {
        return;
    }
    let Ok(index) = tempfile::tempdir() else {
        return;
    };
    let mut run = Run::new(index.path());
    for op in ops {
        run.step(op);
        run.check();
    }
}

struct Run<'a> {
    disk: SimDisk,
    index: &'a Path,
    clock: Arc<ManualClock>,
    provider: TruthProvider,
    ledger: Option<Ledger>,
    tickets: Vec<Option<(usize, Ticket)>>,
    keys: Vec<IdempotencyKey>,
    /// A fault was injected since the ledger was last opened.
    faulted: bool,
    charges: u64,
}

fn key(i: usize) -> IdempotencyKey {
    IdempotencyKey::new(format!("fuzz-{i}")).unwrap_or_else(|_| unreachable!("a valid key"))
}

fn intent(i: usize) -> Intent {
    let valid = || -> Option<Intent> {
        Some(Intent {
            amount: Amount::new(100 + i as u64).ok()?,
            currency: Currency::new("EUR").ok()?,
            account: AccountId::new("acct").ok()?,
            customer: CustomerRef::new("cus").ok()?,
            description: None,
            metadata: Metadata::default(),
        })
    };
    valid().unwrap_or_else(|| unreachable!("valid literals"))
}

impl<'a> Run<'a> {
    fn new(index: &'a Path) -> Self {
        let mut run = Self {
            disk: SimDisk::new(0),
            index,
            clock: Arc::new(ManualClock::new(UnixMillis(1_800_000_000_000))),
            provider: TruthProvider::default(),
            ledger: None,
            tickets: (0..SLOTS).map(|_| None).collect(),
            keys: (0..KEYS).map(key).collect(),
            faulted: false,
            charges: 0,
        };
        run.open();
        run
    }

    fn config(&self) -> LedgerConfig {
        let policy = NotFoundPolicy::new(1_000, 0, 1).unwrap_or(NotFoundPolicy::DEFAULT);
        LedgerConfig {
            segment_len: 8192,
            index_dir: Some(self.index.to_path_buf()),
            reconcile: ReconcileConfig::new(policy, 4, 100, 1_000, 10).unwrap_or_default(),
            clock: Arc::clone(&self.clock) as Arc<dyn Clock>,
            storage: Arc::new(self.disk.clone()),
            ticket_lease_ms: 1_000,
            ..LedgerConfig::default()
        }
    }

    fn open(&mut self) {
        match Ledger::open(LEDGER_DIR, self.config()) {
            Ok((ledger, _)) => self.ledger = Some(ledger),
            Err(e) => panic!("the ledger does not reopen after a crash: {e}"),
        }
        self.faulted = false;
    }

    /// A ledger call failed: allowed only after an injected fault, and only with the errors a
    /// fault causes; the service restarts.
    fn failed(&mut self, error: &Error) {
        assert!(
            self.faulted,
            "a ledger call failed with no fault injected: {error:?}"
        );
        assert!(
            matches!(
                error,
                Error::AppendFailed { .. } | Error::Poisoned { .. } | Error::IndexFailed { .. }
            ),
            "unexpected error kind: {error:?}"
        );
        self.crash(CrashMode::DropUnsynced, false);
    }

    fn step(&mut self, op: LedgerOp) {
        if self.ledger.is_none() {
            return;
        }
        // A crash drops the ledger before reopening it: no clone of it may be alive then (the
        // old instance would still hold its index).
        if let LedgerOp::Crash(mode, lose_index) = op {
            let mode = match mode % 3 {
                0 => CrashMode::DropUnsynced,
                1 => CrashMode::TearUnsynced,
                _ => CrashMode::PowerLoss,
            };
            self.crash(mode, lose_index);
            return;
        }
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        let result = match op {
            LedgerOp::Begin(k) => self.begin(&ledger, usize::from(k) % KEYS),
            LedgerOp::Call(slot, result) => self.call(&ledger, usize::from(slot) % SLOTS, result),
            LedgerOp::Drop(slot) => {
                self.tickets[usize::from(slot) % SLOTS] = None;
                Ok(())
            }
            LedgerOp::Webhook(k) => self.webhooks(&ledger, usize::from(k) % KEYS),
            LedgerOp::Resolve(k) => self.resolve(&ledger, usize::from(k) % KEYS),
            LedgerOp::Reconcile => Reconciler::new(ledger.clone(), self.provider.clone())
                .run_once()
                .map(drop),
            LedgerOp::Advance(tenths) => {
                self.clock.advance(u64::from(tenths) * 100);
                Ok(())
            }
            LedgerOp::StepWall(seconds) => {
                let now = self.clock.now().0;
                let step = i64::from(seconds) * 1_000;
                self.clock.set(UnixMillis(now.saturating_add_signed(step)));
                Ok(())
            }
            LedgerOp::FailWrite => {
                self.disk.fail_next_writes(1);
                self.faulted = true;
                Ok(())
            }
            LedgerOp::FailSync => {
                self.disk.fail_next_syncs(1);
                self.faulted = true;
                Ok(())
            }
            LedgerOp::Crash(..) => Ok(()),
        };
        drop(ledger);
        if let Err(e) = result {
            self.failed(&e);
        }
    }

    fn begin(&mut self, ledger: &Ledger, k: usize) -> crate::Result<()> {
        let Some(slot) = self.tickets.iter().position(Option::is_none) else {
            return Ok(());
        };
        if let Begin::Attempt(ticket) = ledger.begin(&self.keys[k], &intent(k))? {
            self.tickets[slot] = Some((k, ticket));
        }
        Ok(())
    }

    fn call(&mut self, ledger: &Ledger, slot: usize, result: CallResult) -> crate::Result<()> {
        let Some((k, ticket)) = self.tickets[slot].take() else {
            return Ok(());
        };
        let reference = ticket.provider_reference().as_str().to_string();
        let amount = intent(k).amount;
        let mut charge = |truth: &mut BTreeMap<String, Truth>| {
            self.charges += 1;
            let txn = format!("ch_{}", self.charges);
            truth.insert(
                reference.clone(),
                Truth::Charged(txn.clone(), amount.minor()),
            );
            txn
        };
        let mut truth = lock(&*self.provider.0);
        let outcome = match result {
            CallResult::Charged => {
                let txn = charge(&mut truth);
                let Ok(transaction_id) = TransactionId::new(txn) else {
                    return Ok(());
                };
                Outcome::Succeeded {
                    transaction_id,
                    amount,
                }
            }
            CallResult::ChargedReplyLost => {
                charge(&mut truth);
                Outcome::Unknown {
                    reason: UnknownReason::ConnectionLost,
                }
            }
            CallResult::Declined => {
                truth.insert(reference, Truth::Declined);
                match DeclineCode::new("declined") {
                    Ok(code) => Outcome::Declined { code },
                    Err(_) => return Ok(()),
                }
            }
            CallResult::Refused => Outcome::NotSent {
                reason: NotSentReason::ConnectionRefused,
            },
            CallResult::Timeout => Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
        };
        drop(truth);
        ledger.record(ticket, outcome).map(drop)
    }

    fn webhooks(&mut self, ledger: &Ledger, k: usize) -> crate::Result<()> {
        for attempt in 1..=crate::limits::ATTEMPTS_MAX {
            let Ok(attempt) = AttemptNumber::new(attempt) else {
                continue;
            };
            let reference = ProviderReference::derive(&self.keys[k], attempt);
            let truth = lock(&*self.provider.0).get(reference.as_str()).cloned();
            if let Some(Truth::Charged(txn, amount)) = truth {
                let (Ok(transaction_id), Ok(amount)) =
                    (TransactionId::new(txn), Amount::new(amount))
                else {
                    continue;
                };
                let finding = Finding::Charged {
                    transaction_id,
                    amount,
                };
                ledger.record_evidence(&reference, EvidenceSource::Webhook, finding)?;
            }
        }
        Ok(())
    }

    fn resolve(&mut self, ledger: &Ledger, k: usize) -> crate::Result<()> {
        let key = &self.keys[k];
        let Some(state) = ledger.state(key)? else {
            return Ok(());
        };
        let (Phase::Unknown { attempt, .. } | Phase::InReview { attempt, .. }) = state.phase else {
            return Ok(());
        };
        let reference = ProviderReference::derive(key, attempt);
        let truth = lock(&*self.provider.0).get(reference.as_str()).cloned();
        let resolution = match truth {
            Some(Truth::Charged(txn, amount)) => {
                let (Ok(transaction_id), Ok(amount)) =
                    (TransactionId::new(txn), Amount::new(amount))
                else {
                    return Ok(());
                };
                Resolution::Charged {
                    transaction_id,
                    amount,
                }
            }
            Some(Truth::Declined) => match DeclineCode::new("declined") {
                Ok(code) => Resolution::Declined { code },
                Err(_) => return Ok(()),
            },
            None => Resolution::NotCharged,
        };
        let (Ok(operator), Ok(note)) = (Operator::new("ops"), Note::new("checked")) else {
            return Ok(());
        };
        match ledger.resolve(key, attempt, resolution, operator, note) {
            Ok(_) | Err(Error::Rejected(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The process dies and is restarted: every acknowledged record must survive.
    fn crash(&mut self, mode: CrashMode, lose_index: bool) {
        let acknowledged = self.ledger.take().and_then(|ledger| {
            let last = ledger.journal().last_sequence();
            let hash = ledger.journal().read_from(last).next()?.ok()?.hash;
            Some((last, hash))
        });
        for slot in &mut self.tickets {
            *slot = None;
        }
        self.disk.fail_next_writes(0);
        self.disk.fail_next_syncs(0);
        self.disk.crash(mode);
        if lose_index && let Ok(entries) = std::fs::read_dir(self.index) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        self.open();
        if let (Some((last, hash)), Some(ledger)) = (acknowledged, &self.ledger)
            && last > Sequence(0)
        {
            let found = ledger.journal().read_from(last).next().and_then(Result::ok);
            assert!(
                found.is_some_and(|record| record.hash == hash),
                "acknowledged records up to {last} were lost in a {mode:?} crash"
            );
        }
    }

    /// The invariants after every step.
    fn check(&self) {
        for k in 0..KEYS {
            let charged = (1..=crate::limits::ATTEMPTS_MAX)
                .filter_map(|a| AttemptNumber::new(a).ok())
                .filter(|a| {
                    let reference = ProviderReference::derive(&self.keys[k], *a);
                    matches!(
                        lock(&*self.provider.0).get(reference.as_str()),
                        Some(Truth::Charged(..))
                    )
                })
                .count();
            assert!(charged <= 1, "{} charged {charged} times", self.keys[k]);
        }
        let Some(ledger) = &self.ledger else {
            return;
        };
        let mut replayed: BTreeMap<IdempotencyKey, PaymentState> = BTreeMap::new();
        for record in ledger.journal().read_from(Sequence(1)) {
            let record = record.unwrap_or_else(|e| panic!("the journal reads back: {e}"));
            let event =
                decode_event(&record.payload).unwrap_or_else(|e| panic!("events decode: {e}"));
            let state = replayed
                .remove(&event.key)
                .unwrap_or_else(|| PaymentState::new(event.key.clone()));
            let next = apply(&state, &event).unwrap_or_else(|e| panic!("events fold: {e}"));
            replayed.insert(event.key.clone(), next);
        }
        for (key, state) in &replayed {
            let Ok(Some(live)) = ledger.state(key) else {
                // The ledger stopped (an injected fault); the next step restarts it.
                continue;
            };
            match (&state.phase, &live.phase) {
                (
                    Phase::InFlight { .. },
                    Phase::Unknown {
                        reason: UnknownReason::LocalWriteFailed,
                        ..
                    },
                ) => {}
                _ => assert_eq!(&live, state, "replaying the journal gives another state"),
            }
        }
    }
}
