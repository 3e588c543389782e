//! What the CLI tests share: running the binary, ledgers in every condition the runbook names,
//! and a snapshot of a directory to prove a command changed nothing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use payledger::*;

pub fn payledger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payledger"))
        .args(args)
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file and directory under `dir`: its bytes' hash (files) and modification time.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let meta = std::fs::metadata(&at).unwrap();
        files.insert(at.clone(), (String::new(), meta.modified().unwrap()));
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let hash = blake3::hash(&std::fs::read(&path).unwrap())
                    .to_hex()
                    .to_string();
                files.insert(path, (hash, meta.modified().unwrap()));
            }
        }
    }
    files
}

/// Makes every file and directory under `dir` read-only (or writable again).
pub fn set_read_only(dir: &Path, read_only: bool) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let mut perms = std::fs::metadata(&at).unwrap().permissions();
        perms.set_readonly(read_only);
        if at.is_dir() {
            for entry in std::fs::read_dir(&at).unwrap() {
                stack.push(entry.unwrap().path());
            }
            use std::os::unix::fs::PermissionsExt;
            perms.set_mode(if read_only { 0o555 } else { 0o755 });
        }
        std::fs::set_permissions(&at, perms).unwrap();
    }
}

pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

pub fn intent(amount: u64) -> Intent {
    Intent {
        amount: Amount::new(amount).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: None,
        metadata: Metadata::default(),
    }
}

/// A provider that charges, times out, or loses replies as told, and answers queries with
/// "pending" (so unknowns stay unknown) unless told the truth.
pub struct ScriptedProvider {
    pub reply: std::sync::Mutex<ChargeReply>,
    pub query: std::sync::Mutex<QueryReply>,
}

impl ScriptedProvider {
    pub fn new() -> Self {
        Self {
            reply: std::sync::Mutex::new(ChargeReply::Timeout),
            query: std::sync::Mutex::new(QueryReply::Pending),
        }
    }
}

impl Provider for ScriptedProvider {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        match &*self.reply.lock().unwrap() {
            ChargeReply::Charged { transaction_id, .. } => ChargeReply::Charged {
                transaction_id: transaction_id.clone(),
                amount_minor: request.amount.minor(),
            },
            other => other.clone(),
        }
    }
    fn query(&self, _: &ProviderReference) -> QueryReply {
        self.query.lock().unwrap().clone()
    }
}

/// The conditions the runbook is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Charges whose outcome is unknown, hours old.
    UnknownsPilingUp,
    /// Keys escalated to manual review.
    ReviewGrowing,
    /// A key in conflict.
    Conflict,
    /// A damaged record in the middle of the journal.
    CorruptSegment,
    /// The disk filled during an append: a torn tail at the end of the journal.
    DiskFull,
    /// Another process holds the ledger.
    Locked,
    /// The index directory is gone.
    IndexLost,
    /// The index reflects records the journal does not have.
    IndexAhead,
    /// A provider call in flight for hours (the service holds its ticket).
    HungCall,
    /// An event the fold refuses, written into the journal by something else.
    Inconsistent,
    /// A refund whose reply was lost, unknown for hours.
    RefundUnknown,
    /// Everything settled.
    Healthy,
}

/// What a condition keeps alive: the service's ledger and its tickets.
pub struct Held {
    pub ledger: Option<Ledger>,
    pub tickets: Vec<Ticket>,
    /// The sequence of the event the fold refuses (`Inconsistent`).
    pub bad_sequence: Option<u64>,
}

/// A ledger in `condition` under `tmp`; its directory, a key worth inspecting, and what must
/// stay alive. The clock is three hours behind the system's, so that what happened looks old.
pub fn ledger_in(tmp: &Path, condition: Condition) -> (PathBuf, String, Held) {
    let dir = tmp.join("ledger");
    let clock = Arc::new(ManualClock::new(UnixMillis(
        SystemClock.now().0.saturating_sub(3 * 3_600_000),
    )));
    let config = || LedgerConfig {
        segment_len: 1 << 20,
        clock: Arc::clone(&clock) as Arc<dyn Clock>,
        reconcile: ReconcileConfig::new(
            NotFoundPolicy::new(60_000, 5_000, 3).unwrap(),
            3,
            1_000,
            10_000,
            100,
        )
        .unwrap(),
        ..LedgerConfig::default()
    };
    let provider = ScriptedProvider::new();
    let deadline = Duration::from_secs(1);
    let (ledger, _) = Ledger::open(&dir, config()).unwrap();
    *provider.reply.lock().unwrap() = ChargeReply::Charged {
        transaction_id: "ch_ok".into(),
        amount_minor: 0,
    };
    for i in 0..6 {
        ledger
            .charge_once(
                &key(&format!("paid-{i}")),
                &intent(100 + i),
                &provider,
                deadline,
            )
            .unwrap();
    }
    let mut inspect = "paid-0".to_string();
    match condition {
        Condition::UnknownsPilingUp | Condition::ReviewGrowing => {
            *provider.reply.lock().unwrap() = ChargeReply::Timeout;
            for i in 0..4 {
                ledger
                    .charge_once(
                        &key(&format!("doubt-{i}")),
                        &intent(200 + i),
                        &provider,
                        deadline,
                    )
                    .unwrap();
            }
            inspect = "doubt-0".into();
            if condition == Condition::ReviewGrowing {
                let reconciler = Reconciler::new(ledger.clone(), &provider);
                for _ in 0..20 {
                    clock.advance(20_000);
                    reconciler.run_once().unwrap();
                }
            }
        }
        Condition::RefundUnknown => {
            let k = key("paid-0");
            let id = RequestId::new("refund-77").unwrap();
            let Decision::Attempt(ticket) = ledger
                .begin_operation(&k, OperationKind::Refund, &id, Amount::new(50).unwrap())
                .unwrap()
            else {
                panic!("a refund attempt");
            };
            let timeout = Outcome::Unknown {
                reason: UnknownReason::Timeout,
            };
            ledger.record_operation(ticket, timeout).unwrap();
        }
        Condition::Conflict => {
            *provider.reply.lock().unwrap() = ChargeReply::Charged {
                transaction_id: "ch_first".into(),
                amount_minor: 0,
            };
            let k = key("double-1");
            ledger
                .charge_once(&k, &intent(300), &provider, deadline)
                .unwrap();
            let finding = Finding::Charged {
                transaction_id: TransactionId::new("ch_second").unwrap(),
                amount: Amount::new(300).unwrap(),
            };
            let reference = ProviderReference::derive(&k, AttemptNumber::FIRST);
            ledger
                .record_evidence(&reference, EvidenceSource::Settlement, finding)
                .unwrap();
            inspect = "double-1".into();
        }
        _ => {}
    }
    drop(ledger);
    let segment = dir.join("00000000000000000000.seg");
    let mut held = Held {
        ledger: None,
        tickets: Vec::new(),
        bad_sequence: None,
    };
    match condition {
        Condition::CorruptSegment => {
            let mut bytes = std::fs::read(&segment).unwrap();
            bytes[64 + 200] ^= 0x40;
            std::fs::write(&segment, bytes).unwrap();
        }
        Condition::DiskFull => {
            let bytes = std::fs::read(&segment).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, b"PLCF\x10\x00\x00", end as u64)
                .unwrap();
        }
        Condition::Locked => held.ledger = Some(Ledger::open(&dir, config()).unwrap().0),
        Condition::HungCall => {
            let (ledger, _) = Ledger::open(&dir, config()).unwrap();
            if let Begin::Attempt(ticket) = ledger.begin(&key("hung-1"), &intent(77)).unwrap() {
                held.tickets.push(ticket);
            }
            inspect = "hung-1".into();
            held.ledger = Some(ledger);
        }
        Condition::Inconsistent => {
            let (journal, _) = payledger::journal::Journal::open(
                &dir,
                payledger::journal::JournalConfig {
                    segment_len: 1 << 20,
                    create_if_missing: false,
                },
            )
            .unwrap();
            let bad = Event {
                key: key("stranger"),
                at: clock.now(),
                kind: EventKind::OutcomeReported {
                    attempt: AttemptNumber::FIRST,
                    outcome: Outcome::Unknown {
                        reason: UnknownReason::Timeout,
                    },
                },
            };
            let payload = payledger::journal::codec::encode_event(&bad).unwrap();
            let sequences = journal.append(vec![payload]).unwrap();
            held.bad_sequence = Some(sequences.start().0);
        }
        Condition::IndexLost => std::fs::remove_dir_all(dir.join("index")).unwrap(),
        Condition::IndexAhead => {
            // An index copied from a later copy of the ledger.
            let later = tmp.join("later");
            copy_dir(&dir, &later);
            let (ledger, _) = Ledger::open(&later, config()).unwrap();
            ledger
                .charge_once(&key("later-1"), &intent(999), &provider, deadline)
                .unwrap();
            drop(ledger);
            std::fs::remove_dir_all(dir.join("index")).unwrap();
            copy_dir(&later.join("index"), &dir.join("index"));
            std::fs::remove_dir_all(&later).unwrap();
        }
        _ => {}
    }
    (dir, inspect, held)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
