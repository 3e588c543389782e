//! The simulated world: the ledger on a simulated disk, the provider, the clients' orders, time
//! (true time, and the ledger's wall clock that steps), crashes, and the scheduler's steps.
//!
//! Invariant: every random choice comes from the world's seeded generator, in an order fixed
//! by the seed, on one thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checks::chain_hash_at;
use super::config::SimConfig;
use super::provider::{Pending, ProviderState, SimProvider};
use super::report::SimReport;
use crate::clock::{Clock, ManualClock};
use crate::error::{Error, Result};
use crate::journal::simdisk::{CrashMode, SimDisk};
use crate::ledger::{Ledger, LedgerConfig, OperationTicket, Ticket};
use crate::limits::VISIBILITY_DELAY_MS_MIN;
use crate::model::InputError;
use crate::model::ReconcileConfig;
use crate::model::{
    AccountId, Amount, Currency, CustomerRef, IdempotencyKey, OperationKind, ProviderReference,
    RequestId, TransactionId, UnixMillis,
};
use crate::model::{EvidenceSource, Finding, NotFoundPolicy};
use crate::model::{Intent, Metadata};
use crate::provider::ChargeReply;
use crate::reconcile::Reconciler;

/// One payment the clients must get done, and what they do with it afterwards.
#[derive(Debug)]
pub(super) struct Order {
    pub(super) keys: Vec<IdempotencyKey>,
    pub(super) intent: Intent,
    /// The primary (charge or authorisation) is settled one way or another.
    pub(super) done: bool,
    /// An authorisation (captured or voided later), not a purchase.
    pub(super) authorization: bool,
    /// The primary succeeded: follow-ups may run.
    pub(super) succeeded: bool,
    /// Captures, voids and refunds to make once the primary succeeded, in order.
    pub(super) follow_ups: Vec<FollowUp>,
}

/// A capture, void or refund a client means to make once.
#[derive(Debug)]
pub(super) struct FollowUp {
    pub(super) kind: OperationKind,
    pub(super) amount: Amount,
    /// The request id the client uses (a broken client changes it on a timeout).
    pub(super) request_id: RequestId,
    /// Request ids used so far (a correct client uses one).
    pub(super) ids_used: u32,
    pub(super) done: bool,
}

impl Order {
    /// The next follow-up to make, once the primary succeeded.
    pub(super) fn next_follow_up(&self) -> Option<usize> {
        if !self.succeeded {
            return None;
        }
        self.follow_ups.iter().position(|f| !f.done)
    }

    /// Nothing is left to do for this order.
    pub(super) fn finished(&self) -> bool {
        self.done && (!self.succeeded || self.follow_ups.iter().all(|f| f.done))
    }
}

pub(super) enum ClientState {
    Idle,
    Holding {
        order: usize,
        ticket: Ticket,
    },
    Replied {
        order: usize,
        ticket: Ticket,
        reply: ChargeReply,
    },
    /// The provider call hangs; its reply arrives at `until` (true time).
    Hung {
        order: usize,
        ticket: Ticket,
        reply: ChargeReply,
        until: UnixMillis,
    },
    /// Holds a ticket for a follow-up's attempt.
    Operating {
        order: usize,
        follow: usize,
        ticket: OperationTicket,
    },
    /// The follow-up's provider call replied.
    OperationReplied {
        order: usize,
        follow: usize,
        ticket: OperationTicket,
        reply: ChargeReply,
    },
}

pub(super) const LEDGER_DIR: &str = "/sim/ledger";
pub(super) const DEADLINE: Duration = Duration::from_secs(10);
/// Ticket lease in the simulation: a hung call is taken over after a minute.
pub(super) const TICKET_LEASE_MS: u64 = 60_000;

pub(super) struct World {
    pub(super) config: SimConfig,
    pub(super) rng: ChaCha8Rng,
    pub(super) disk: SimDisk,
    pub(super) index_dir: tempfile::TempDir,
    /// A copy of the index taken at an earlier crash, for rolling it back.
    pub(super) index_snapshot: Option<tempfile::TempDir>,
    pub(super) clock: Arc<ManualClock>,
    /// True time; the ledger's wall clock is this plus `wall_offset_ms`, which steps by more
    /// than the skew margin either way. Its monotonic clock follows true time.
    pub(super) now: UnixMillis,
    pub(super) wall_offset_ms: i64,
    pub(super) provider: SimProvider,
    pub(super) ledger: Option<Ledger>,
    pub(super) orders: Vec<Order>,
    pub(super) clients: Vec<ClientState>,
    pub(super) report: SimReport,
    pub(super) reconcile: ReconcileConfig,
    pub(super) restart_needed: bool,
}

/// Order `i`: a purchase, or (one in four) an authorisation; what the client will do with it
/// once it succeeds: refund part or all of a purchase (some), capture or void an authorisation,
/// and refund part of a capture (some).
fn plan_order(i: usize, rng: &mut ChaCha8Rng) -> Result<Order> {
    let intent = order_intent(i)?;
    let authorization = i % 4 == 3;
    let total = intent.amount.minor();
    let mut plans: Vec<(OperationKind, u64)> = Vec::new();
    if authorization {
        if rng.random_bool(0.2) {
            plans.push((OperationKind::Void, total));
        } else {
            let captured = if rng.random_bool(0.3) {
                total / 2
            } else {
                total
            };
            plans.push((OperationKind::Capture, captured));
            if rng.random_bool(0.3) {
                plans.push((OperationKind::Refund, captured / 2));
            }
        }
    } else if rng.random_bool(0.3) {
        let refund = if rng.random_bool(0.5) {
            total / 2
        } else {
            total
        };
        plans.push((OperationKind::Refund, refund));
    }
    let follow_ups = plans
        .into_iter()
        .enumerate()
        .map(|(n, (kind, amount))| {
            Ok(FollowUp {
                kind,
                amount: Amount::new(amount.max(1))?,
                request_id: RequestId::new(format!("{}-{i:05}-{n}", kind.name()))?,
                ids_used: 1,
                done: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Order {
        keys: vec![IdempotencyKey::new(format!("order-{i:05}"))?],
        intent,
        done: false,
        authorization,
        succeeded: false,
        follow_ups,
    })
}

pub(super) fn order_intent(i: usize) -> Result<Intent> {
    Ok(Intent {
        amount: Amount::new(100 + (i as u64 % 50) * 37)?,
        currency: Currency::new("EUR")?,
        account: AccountId::new("acct_sim")?,
        customer: CustomerRef::new(format!("cus_{i}"))?,
        description: None,
        metadata: Metadata::default(),
    })
}

impl World {
    pub(super) fn new(config: SimConfig) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let disk = SimDisk::new(rng.random());
        let index_dir = tempfile::tempdir()
            .map_err(|e| Error::io("creating the simulation's index directory", e))?;
        let now = UnixMillis(1_800_000_000_000);
        let not_found = if config.sabotage().trust_not_found_at_once {
            // As close to "at once" as a valid policy gets: far below the provider's lag.
            NotFoundPolicy::new(VISIBILITY_DELAY_MS_MIN, 0, 1)?
        } else {
            NotFoundPolicy::new(30_000, 4_000, 2)?
        };
        let reconcile = ReconcileConfig::new(not_found, 10, 1_000, 60_000, 50)?;
        let provider = SimProvider(Arc::new(Mutex::new(ProviderState {
            rng: ChaCha8Rng::seed_from_u64(rng.random()),
            now,
            profile: config.profile,
            faults_on: true,
            truth: BTreeMap::new(),
            pending: Vec::new(),
            charges: 0,
            faults: BTreeMap::new(),
            visibility_lag_max_ms: 30_000,
            last_call_ms: 0,
            hang_ms: None,
            expected: BTreeMap::new(),
            executions: BTreeMap::new(),
        })));
        let orders = (0..config.keys.max(1))
            .map(|i| plan_order(i, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let clients = (0..config.clients.max(1))
            .map(|_| ClientState::Idle)
            .collect();
        let mut world = Self {
            report: SimReport {
                replay: config.replay_command(),
                ..SimReport::default()
            },
            config,
            rng,
            disk,
            index_dir,
            index_snapshot: None,
            clock: Arc::new(ManualClock::new(now)),
            now,
            wall_offset_ms: 0,
            provider,
            ledger: None,
            orders,
            clients,
            reconcile,
            restart_needed: false,
        };
        world.open()?;
        Ok(world)
    }

    pub(super) fn ledger_config(&self) -> LedgerConfig {
        LedgerConfig {
            segment_len: 256 * 1024,
            index_dir: Some(self.index_dir.path().to_path_buf()),
            reconcile: self.reconcile,
            clock: Arc::clone(&self.clock) as Arc<dyn Clock>,
            storage: Arc::new(self.disk.clone()),
            ticket_lease_ms: TICKET_LEASE_MS,
            #[cfg(feature = "testing")]
            sabotage_forget_unknown_on_replay: self.config.sabotage().forget_unknown_on_replay,
            ..LedgerConfig::default()
        }
    }

    pub(super) fn open(&mut self) -> Result<()> {
        if self
            .rng
            .random_bool(self.config.profile.rates().misplaced_index)
        {
            self.open_with_misplaced_index();
        }
        let (ledger, report) = Ledger::open(LEDGER_DIR, self.ledger_config())?;
        if report.journal.torn_tail.is_some() {
            self.report.torn_tails += 1;
        }
        self.ledger = Some(ledger);
        Ok(())
    }

    /// An operator points `index_dir` at the ledger directory (or its parent): the open must be
    /// refused before anything is touched.
    pub(super) fn open_with_misplaced_index(&mut self) {
        self.fault("index_dir pointing at the ledger");
        let ledger_dir = Path::new(LEDGER_DIR);
        let index_dir = if self.rng.random_bool(0.5) {
            ledger_dir
        } else {
            ledger_dir.parent().unwrap_or(ledger_dir)
        };
        let config = LedgerConfig {
            index_dir: Some(index_dir.to_path_buf()),
            ..self.ledger_config()
        };
        match Ledger::open(LEDGER_DIR, config) {
            Err(Error::Input(InputError::IndexDir { .. })) => {}
            Err(other) => self.report.violate(format!(
                "misplaced index_dir: expected a refusal, got {other}"
            )),
            Ok(_) => self
                .report
                .violate("a ledger opened with its index in the ledger directory".into()),
        }
    }

    pub(super) fn count(&mut self, what: &'static str) {
        *self.report.operations.entry(what).or_default() += 1;
    }

    pub(super) fn fault(&mut self, what: &'static str) {
        *self.report.faults.entry(what).or_default() += 1;
    }

    pub(super) fn ledger(&self) -> Result<&Ledger> {
        self.ledger.as_ref().ok_or(Error::SimulationStopped)
    }

    /// `ms` of real time pass: the provider's clock and both of the ledger's clocks move.
    pub(super) fn pass_time(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        self.clock.advance(ms);
        self.provider.state().now = self.now;
    }

    /// The ledger's wall clock steps to `offset_ms` from true time (NTP, a VM resume); its
    /// monotonic clock does not move.
    pub(super) fn step_wall(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
        self.clock
            .set(UnixMillis(self.now.0.saturating_add_signed(offset_ms)));
    }

    /// The process dies: tickets vanish with it, unsynced writes are dropped or torn, and the
    /// ledger is reopened. Checks that every durable record survived.
    pub(super) fn crash(&mut self) -> Result<()> {
        self.report.crashes += 1;
        let durable = match &self.ledger {
            Some(ledger) => {
                let last = ledger.journal().last_sequence();
                Some((last, chain_hash_at(ledger, last)?))
            }
            None => None,
        };
        for client in &mut self.clients {
            *client = ClientState::Idle;
        }
        self.ledger = None;
        self.disk.fail_next_writes(0);
        self.disk.fail_next_syncs(0);
        let mode = match self.rng.random_range(0..4) {
            0 => CrashMode::TearUnsynced,
            1 => CrashMode::DropUnsynced,
            _ => CrashMode::PowerLoss,
        };
        self.disk.crash(mode);
        self.crash_index()?;
        self.open()?;
        if let Some((last, hash)) = durable
            && last.0 > 0
        {
            let ledger = self.ledger()?;
            let after = ledger.journal().last_sequence();
            let found = chain_hash_at(ledger, last)?;
            if after < last || found != hash {
                let lost = last.0.saturating_sub(after.0).max(1);
                self.report.acknowledged_lost += lost;
                self.report.violate(format!(
                    "{lost} acknowledged journal records lost in crash {}",
                    self.report.crashes
                ));
            }
        }
        self.restart_needed = false;
        Ok(())
    }

    /// What the crash does to the index (on the real file system, closed by now): usually
    /// nothing; sometimes it is lost, or rolled back to an older snapshot, as the engine's own
    /// recovery may leave it after a power cut. Snapshots are taken of the closed index.
    pub(super) fn crash_index(&mut self) -> Result<()> {
        let index = self.index_dir.path().to_path_buf();
        match self.rng.random_range(0..10) {
            0 => {
                self.report.index_losses += 1;
                clear_dir(&index)?;
            }
            1 if self.index_snapshot.is_some() => {
                self.report.index_rollbacks += 1;
                clear_dir(&index)?;
                if let Some(snapshot) = &self.index_snapshot {
                    copy_dir(snapshot.path(), &index)?;
                }
            }
            _ => {}
        }
        if self.rng.random_bool(0.1) {
            let snapshot = tempfile::tempdir()
                .map_err(|e| Error::io("creating an index snapshot directory", e))?;
            copy_dir(&index, snapshot.path())?;
            self.index_snapshot = Some(snapshot);
        }
        Ok(())
    }

    pub(super) fn reconcile(&mut self) -> Result<()> {
        self.count("reconcile passes");
        // The reconciler's schedule is read from the applied index: wait for the applier, so
        // that which keys a pass sees depends on the seed alone, not on thread timing.
        if let Err(e) = self.ledger()?.wait_indexed() {
            self.ledger_failed(e);
            return Ok(());
        }
        let reconciler = Reconciler::new(self.ledger()?.clone(), self.provider.clone());
        match reconciler.run_once() {
            Ok(report) => self.report.unknowns_resolved += report.resolved as u64,
            Err(e) => self.ledger_failed(e),
        }
        Ok(())
    }

    pub(super) fn deliver_evidence(&mut self, everything: bool) -> Result<()> {
        let now = self.now;
        let due: Vec<Pending> = {
            let mut state = self.provider.state();
            let (due, later): (Vec<_>, Vec<_>) = state
                .pending
                .drain(..)
                .partition(|p| everything || p.due <= now);
            state.pending = later;
            due
        };
        for pending in due {
            self.count(if pending.settlement {
                "settlement lines"
            } else {
                "webhooks"
            });
            let source = if pending.settlement {
                EvidenceSource::Settlement
            } else {
                EvidenceSource::Webhook
            };
            let finding = Finding::Charged {
                transaction_id: TransactionId::new(pending.transaction_id.clone())?,
                amount: Amount::new(pending.amount)?,
            };
            let reference = ProviderReference::new(pending.reference.clone())?;
            if let Err(e) = self.ledger()?.record_evidence(&reference, source, finding) {
                self.ledger_failed(e);
                // Undelivered evidence is retried later, as a webhook sender would.
                self.provider.state().pending.push(pending);
            }
        }
        Ok(())
    }

    pub(super) fn step(&mut self) -> Result<()> {
        let rates = self.config.profile.rates();
        let advance = self.rng.random_range(1..400);
        self.pass_time(advance);
        if self.restart_needed || self.rng.random_bool(rates.crash) {
            if !self.restart_needed {
                self.fault("process crash");
            }
            return self.crash();
        }
        if self.rng.random_bool(rates.disk_fault) {
            if self.rng.random_bool(0.5) {
                self.fault("failed write");
                self.disk.fail_next_writes(1);
            } else {
                self.fault("failed fdatasync");
                self.disk.fail_next_syncs(1);
            }
        }
        if self.rng.random_bool(rates.wall_step) {
            self.fault("wall clock step beyond the skew margin");
            // Up to ten minutes either way, always more than the skew margin: no safety
            // decision may depend on the wall clock.
            let margin = i64::try_from(self.reconcile.not_found().clock_skew_margin_ms())
                .unwrap_or(i64::MAX);
            let size = self.rng.random_range(margin + 1..=margin.max(600_000));
            let offset = if self.rng.random_bool(0.5) {
                size
            } else {
                -size
            };
            self.step_wall(offset);
        }
        match self.rng.random_range(0..100) {
            0..80 => {
                let c = self.rng.random_range(0..self.clients.len());
                self.client_step(c)
            }
            80..95 => self.reconcile(),
            _ => self.deliver_evidence(false),
        }
    }

    /// Faults off; time passes; the reconciler, evidence and clients run until every order is
    /// settled or the bound is reached.
    pub(super) fn heal(&mut self) -> Result<()> {
        self.provider.state().faults_on = false;
        if self.restart_needed {
            self.crash()?;
        }
        self.step_wall(0);
        for round in 0..400 {
            self.pass_time(20_000);
            self.deliver_evidence(round > 20)?;
            self.reconcile()?;
            self.settle_conflicts()?;
            for c in 0..self.clients.len() {
                for _ in 0..3 {
                    self.client_step(c)?;
                }
            }
            if self.restart_needed {
                self.crash()?;
            }
            if round > 25
                && self.orders.iter().all(Order::finished)
                && self.provider.state().pending.is_empty()
            {
                break;
            }
        }
        Ok(())
    }

    /// The operator's pass over conflicts that surfaced after their order was finished (a lost
    /// charge found by a settlement line): the duplicate is refunded through the ledger, under the
    /// discipline of any refund.
    fn settle_conflicts(&mut self) -> Result<()> {
        for order in 0..self.orders.len() {
            if !self.orders[order].finished() {
                continue;
            }
            let Some(key) = self.orders[order].keys.last().cloned() else {
                continue;
            };
            let in_conflict = self
                .ledger()?
                .state(&key)?
                .is_some_and(|s| matches!(s.phase, crate::model::Phase::Conflict { .. }));
            if in_conflict {
                self.plan_duplicate_refund(order, &key)?;
            }
        }
        Ok(())
    }

    /// Writes the durable journal to `dir` on the real file system and builds its index there.
    pub(super) fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut segment = 0u64;
        loop {
            let name = format!("{segment:020}.seg");
            let Some(bytes) = self.disk.durable_bytes(&Path::new(LEDGER_DIR).join(&name)) else {
                break;
            };
            std::fs::write(dir.join(&name), bytes)
                .map_err(|e| Error::io(format!("writing {}", dir.join(&name).display()), e))?;
            segment += 1;
        }
        // Opened for writing once, so that the index is built beside the journal.
        let config = LedgerConfig {
            segment_len: 256 * 1024,
            reconcile: self.reconcile,
            ..LedgerConfig::default()
        };
        drop(Ledger::open(dir, config)?);
        Ok(())
    }
}

/// Removes everything in `dir` (the simulation's own index directory).
fn clear_dir(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// Copies the files under `from` into `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| Error::io(format!("listing {}", from.display()), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("listing {}", from.display()), e))?
            .path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)
                .map_err(|e| Error::io(format!("copying {}", path.display()), e))?;
        }
    }
    Ok(())
}
