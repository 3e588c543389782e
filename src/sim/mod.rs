//! The deterministic chaos simulation behind `payledger simulate`: the real [`Ledger`], the
//! real journal on a [`SimDisk`] and the real [`Reconciler`], driven by logical clients against
//! a simulated provider, with crashes, disk faults and clock drift, all from one seed.
//!
//! Invariants checked: no order is charged twice at the provider unless the provider lost a
//! charge, and each such order ends in conflict; every acknowledged event survives every crash;
//! replaying the journal reproduces the live states; after a heal phase every key is settled
//! (succeeded, declined, exhausted), in review or in conflict; nothing panics.
//!
//! Everything runs on one thread in an order the seed decides, so the same seed and
//! configuration always give byte-identical reports.

mod provider;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::{Clock, ManualClock};
use crate::error::{Error, Result};
use crate::journal::codec::decode_event;
use crate::journal::simdisk::{CrashMode, SimDisk};
use crate::ledger::{Begin, Ledger, LedgerConfig, Ticket};
use crate::limits::VISIBILITY_DELAY_MS_MIN;
use crate::model::InputError;
use crate::model::ReconcileConfig;
use crate::model::{
    AccountId, Amount, Currency, CustomerRef, IdempotencyKey, ProviderReference, Sequence,
    TransactionId, UnixMillis,
};
use crate::model::{EvidenceSource, Finding, NotFoundPolicy};
use crate::model::{Intent, Metadata};
use crate::model::{PaymentState, Phase, PhaseKind, apply};
use crate::provider::{ChargeReply, ChargeRequest, Provider};
use crate::reconcile::Reconciler;
use provider::{Pending, ProviderPanic, ProviderState, SimProvider, Truth};

/// How hostile the simulated world is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    /// Rare faults.
    Calm,
    /// Frequent faults of every kind (the default).
    #[default]
    Stormy,
    /// Faults everywhere, often.
    Hostile,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "calm" => Ok(Profile::Calm),
            "stormy" => Ok(Profile::Stormy),
            "hostile" => Ok(Profile::Hostile),
            other => Err(format!(
                "unknown profile {other:?}; one of calm, stormy, hostile"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Calm => "calm",
            Profile::Stormy => "stormy",
            Profile::Hostile => "hostile",
        })
    }
}

/// Fault probabilities of a profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    pub refused: f64,
    pub server_error_unprocessed: f64,
    pub decline: f64,
    pub lose_charge: f64,
    pub webhook: f64,
    pub reply_lost: f64,
    pub reply_late: f64,
    pub server_error_processed: f64,
    pub malformed: f64,
    pub slow_reply: f64,
    pub query_outage: f64,
    /// Per provider call: the client code around the call panics.
    pub provider_panic: f64,
    /// Per provider call: the call hangs far beyond the ticket lease.
    pub hung_call: f64,
    /// Per step.
    pub crash: f64,
    pub disk_fault: f64,
    /// Per step: the wall clock steps, by more than the skew margin, either way.
    pub wall_step: f64,
    pub double_click: f64,
    /// Per reopen: an operator first points `index_dir` at the ledger directory.
    pub misplaced_index: f64,
}

impl Profile {
    pub(crate) fn rates(self) -> Rates {
        let scale = match self {
            Profile::Calm => 0.2,
            Profile::Stormy => 1.0,
            Profile::Hostile => 2.5,
        };
        Rates {
            refused: 0.04 * scale,
            server_error_unprocessed: 0.03 * scale,
            decline: 0.08,
            lose_charge: 0.01 * scale,
            webhook: 0.5,
            reply_lost: 0.05 * scale,
            reply_late: 0.05 * scale,
            server_error_processed: 0.03 * scale,
            malformed: 0.02 * scale,
            slow_reply: 0.05 * scale,
            query_outage: 0.1 * scale,
            provider_panic: 0.01 * scale,
            hung_call: 0.01 * scale,
            crash: 0.004 * scale,
            disk_fault: 0.002 * scale,
            wall_step: 0.01 * scale,
            double_click: 0.1,
            misplaced_index: 0.1,
        }
    }
}

/// A deliberately broken behaviour, for testing that the simulator catches it. Exists only
/// with the `testing` feature.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The client retries a timed-out charge with a new idempotency key.
    RetryWithNewKey,
    /// The reconciler trusts the first "not found" at once, ignoring the visibility delay.
    TrustNotFoundAtOnce,
    /// Reopening forgets that orphaned attempts may have charged (marks them not sent).
    ForgetUnknownOnReplay,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed every random choice follows.
    pub seed: u64,
    /// Scheduler steps before the heal phase.
    pub ops: u64,
    /// Logical clients.
    pub clients: usize,
    /// Orders (one idempotency key each, unless a broken client makes more).
    pub keys: usize,
    /// Fault profile.
    pub profile: Profile,
    /// Write the resulting ledger here (real file system) for inspection.
    pub dir: Option<PathBuf>,
    /// A deliberately broken behaviour (tests only).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub broken: Option<Broken>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            ops: 20_000,
            clients: 16,
            keys: 1_000,
            profile: Profile::Stormy,
            dir: None,
            #[cfg(feature = "testing")]
            broken: None,
        }
    }
}

/// The broken behaviours switched on for a run: all off unless the `testing` feature sets one.
#[derive(Clone, Copy, Debug, Default)]
struct Sabotage {
    retry_with_new_key: bool,
    trust_not_found_at_once: bool,
    #[cfg(feature = "testing")]
    forget_unknown_on_replay: bool,
}

impl SimConfig {
    fn sabotage(&self) -> Sabotage {
        #[cfg(feature = "testing")]
        if let Some(broken) = self.broken {
            return Sabotage {
                retry_with_new_key: broken == Broken::RetryWithNewKey,
                trust_not_found_at_once: broken == Broken::TrustNotFoundAtOnce,
                forget_unknown_on_replay: broken == Broken::ForgetUnknownOnReplay,
            };
        }
        Sabotage::default()
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "payledger simulate --seed {} --ops {} --clients {} --keys {} --profile {}",
            self.seed, self.ops, self.clients, self.keys, self.profile
        );
        if let Some(dir) = &self.dir {
            let _ = write!(command, " --dir {}", dir.display());
        }
        command
    }
}

/// What a simulation did and found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Count of each operation.
    pub operations: BTreeMap<&'static str, u64>,
    /// Simulated crashes (each followed by reopen and recovery).
    pub crashes: u64,
    /// Torn tails cut by recovery.
    pub torn_tails: u64,
    /// Faults injected, by type.
    pub faults: BTreeMap<&'static str, u64>,
    /// Unknown outcomes settled by the reconciler.
    pub unknowns_resolved: u64,
    /// Keys per final phase.
    pub final_phases: BTreeMap<&'static str, u64>,
    /// Orders the provider charged twice without having lost a charge, or whose lost charge
    /// did not end in conflict.
    pub double_charges: u64,
    /// Orders charged twice because the provider lost a charge, each a conflict in the ledger.
    pub explained_double_charges: u64,
    /// Acknowledged journal records missing after a crash.
    pub acknowledged_lost: u64,
    /// Keys neither settled, in review nor in conflict after healing.
    pub unresolved_after_heal: u64,
    /// The first violation found.
    pub violation: Option<String>,
    /// The command that replays this run.
    pub replay: String,
}

impl SimReport {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |map: &BTreeMap<&'static str, u64>| {
            if map.is_empty() {
                return "none".to_string();
            }
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "operations: {}", join(&self.operations))?;
        writeln!(
            f,
            "crashes: {} (torn tails cut: {})",
            self.crashes, self.torn_tails
        )?;
        writeln!(f, "faults: {}", join(&self.faults))?;
        writeln!(f, "unknowns resolved: {}", self.unknowns_resolved)?;
        writeln!(
            f,
            "reviews: {}",
            self.final_phases.get("in-review").copied().unwrap_or(0)
        )?;
        writeln!(
            f,
            "conflicts: {} (orders charged twice because the provider lost a charge: {})",
            self.final_phases.get("conflict").copied().unwrap_or(0),
            self.explained_double_charges
        )?;
        writeln!(f, "final states: {}", join(&self.final_phases))?;
        writeln!(f, "double charges: {}", self.double_charges)?;
        writeln!(f, "acknowledged events lost: {}", self.acknowledged_lost)?;
        writeln!(f, "unresolved after heal: {}", self.unresolved_after_heal)?;
        writeln!(f, "replay: {}", self.replay)?;
        match &self.violation {
            None => write!(f, "result: ok"),
            Some(what) => write!(f, "result: VIOLATION {what} (replay: {})", self.replay),
        }
    }
}

/// One payment the clients must get done.
#[derive(Debug)]
struct Order {
    keys: Vec<IdempotencyKey>,
    intent: Intent,
    done: bool,
}

enum ClientState {
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
}

const LEDGER_DIR: &str = "/sim/ledger";
const DEADLINE: Duration = Duration::from_secs(10);
/// Ticket lease in the simulation: a hung call is taken over after a minute.
const TICKET_LEASE_MS: u64 = 60_000;

struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    disk: SimDisk,
    index_dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    /// True time; the ledger's wall clock is this plus `wall_offset_ms`, which steps by more
    /// than the skew margin either way. Its monotonic clock follows true time.
    now: UnixMillis,
    wall_offset_ms: i64,
    provider: SimProvider,
    ledger: Option<Ledger>,
    orders: Vec<Order>,
    clients: Vec<ClientState>,
    report: SimReport,
    reconcile: ReconcileConfig,
    restart_needed: bool,
}

fn order_intent(i: usize) -> Result<Intent> {
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
    fn new(config: SimConfig) -> Result<Self> {
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
        })));
        let orders = (0..config.keys.max(1))
            .map(|i| {
                Ok(Order {
                    keys: vec![IdempotencyKey::new(format!("order-{i:05}"))?],
                    intent: order_intent(i)?,
                    done: false,
                })
            })
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

    fn ledger_config(&self) -> LedgerConfig {
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

    fn open(&mut self) -> Result<()> {
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
    fn open_with_misplaced_index(&mut self) {
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

    fn count(&mut self, what: &'static str) {
        *self.report.operations.entry(what).or_default() += 1;
    }

    fn fault(&mut self, what: &'static str) {
        *self.report.faults.entry(what).or_default() += 1;
    }

    fn ledger(&self) -> Result<&Ledger> {
        self.ledger.as_ref().ok_or(Error::SimulationStopped)
    }

    /// `ms` of real time pass: the provider's clock and both of the ledger's clocks move.
    fn pass_time(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        self.clock.advance(ms);
        self.provider.state().now = self.now;
    }

    /// The ledger's wall clock steps to `offset_ms` from true time (NTP, a VM resume); its
    /// monotonic clock does not move.
    fn step_wall(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
        self.clock
            .set(UnixMillis(self.now.0.saturating_add_signed(offset_ms)));
    }

    /// The process dies: tickets vanish with it, unsynced writes are dropped or torn, and the
    /// ledger is reopened. Checks that every durable record survived.
    fn crash(&mut self) -> Result<()> {
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
        let mode = if self.rng.random_bool(0.5) {
            CrashMode::TearUnsynced
        } else {
            CrashMode::DropUnsynced
        };
        self.disk.crash(mode);
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

    fn client_step(&mut self, c: usize) -> Result<()> {
        match std::mem::replace(&mut self.clients[c], ClientState::Idle) {
            ClientState::Idle => self.client_begin(c),
            ClientState::Holding { order, ticket } => {
                let request = ChargeRequest::new(
                    &self.orders[order].intent,
                    ticket.attempt(),
                    ticket.provider_reference().clone(),
                    DEADLINE,
                );
                self.count("provider calls");
                let provider = self.provider.clone();
                let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    provider.charge(&request)
                }));
                let reply = match call {
                    Ok(reply) => reply,
                    Err(panic) if panic.is::<ProviderPanic>() => {
                        // The ticket unwinds with the caller: dropped, never recorded.
                        drop(ticket);
                        return Ok(());
                    }
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                // A slow call takes simulated time, during which the world moves on.
                let (took, hang) = {
                    let state = self.provider.state();
                    (state.last_call_ms, state.hang_ms)
                };
                self.pass_time(took);
                self.clients[c] = match hang {
                    Some(hang) => ClientState::Hung {
                        order,
                        ticket,
                        reply,
                        until: self.now.plus_ms(hang),
                    },
                    None => ClientState::Replied {
                        order,
                        ticket,
                        reply,
                    },
                };
                Ok(())
            }
            ClientState::Hung {
                order,
                ticket,
                reply,
                until,
            } => {
                self.clients[c] = if self.now >= until {
                    ClientState::Replied {
                        order,
                        ticket,
                        reply,
                    }
                } else {
                    ClientState::Hung {
                        order,
                        ticket,
                        reply,
                        until,
                    }
                };
                Ok(())
            }
            ClientState::Replied {
                order,
                ticket,
                reply,
            } => {
                self.count("records");
                let outcome = reply.classify();
                let unknown = matches!(outcome, crate::model::Outcome::Unknown { .. });
                if let Err(e) = self.ledger()?.record(ticket, outcome) {
                    self.ledger_failed(e);
                } else if unknown && self.config.sabotage().retry_with_new_key {
                    self.retry_with_new_key(order)?;
                }
                Ok(())
            }
        }
    }

    /// The broken client's "fix" for a timeout: a fresh key for the same order.
    fn retry_with_new_key(&mut self, order: usize) -> Result<()> {
        let n = self.orders[order].keys.len();
        let key = IdempotencyKey::new(format!("order-{order:05}-retry{n}"))?;
        self.orders[order].keys.push(key);
        Ok(())
    }

    fn client_begin(&mut self, c: usize) -> Result<()> {
        let clients = self.clients.len();
        let mine: Vec<usize> = (c..self.orders.len())
            .step_by(clients)
            .filter(|&o| !self.orders[o].done)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let order = mine[self.rng.random_range(0..mine.len())];
        let key = self.orders[order]
            .keys
            .last()
            .cloned()
            .ok_or(Error::SimulationStopped)?;
        let intent = self.orders[order].intent.clone();
        self.count("begins");
        let first = match self.ledger()?.begin(&key, &intent) {
            Ok(first) => first,
            Err(e) => {
                self.ledger_failed(e);
                return Ok(());
            }
        };
        if self
            .rng
            .random_bool(self.config.profile.rates().double_click)
        {
            self.fault("double click");
            self.count("begins");
            match self.ledger()?.begin(&key, &intent) {
                Ok(Begin::Attempt(second)) => {
                    self.report
                        .violate(format!("two tickets at once for {key}"));
                    drop(second);
                }
                Ok(_) => {}
                Err(e) => self.ledger_failed(e),
            }
        }
        match first {
            Begin::Attempt(ticket) => self.clients[c] = ClientState::Holding { order, ticket },
            Begin::AlreadySucceeded { .. }
            | Begin::AlreadyDeclined { .. }
            | Begin::AttemptsExhausted { .. }
            | Begin::InConflict { .. }
            | Begin::InReview { .. } => {
                self.orders[order].done = true;
            }
            Begin::AwaitingReconciliation { .. } if self.config.sabotage().retry_with_new_key => {
                self.retry_with_new_key(order)?;
            }
            Begin::InFlight { .. } | Begin::AwaitingReconciliation { .. } => {}
            Begin::KeyReused { .. } => self
                .report
                .violate(format!("{key} reported reused with its own intent")),
        }
        Ok(())
    }

    /// A ledger call failed (poisoned journal, failed index): the service restarts.
    fn ledger_failed(&mut self, error: Error) {
        tracing::debug!(%error, "ledger call failed; the simulated service restarts");
        self.restart_needed = true;
    }

    fn reconcile(&mut self) -> Result<()> {
        self.count("reconcile passes");
        let reconciler = Reconciler::new(self.ledger()?.clone(), self.provider.clone());
        match reconciler.run_once() {
            Ok(report) => self.report.unknowns_resolved += report.resolved as u64,
            Err(e) => self.ledger_failed(e),
        }
        Ok(())
    }

    fn deliver_evidence(&mut self, everything: bool) -> Result<()> {
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

    fn step(&mut self) -> Result<()> {
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
    fn heal(&mut self) -> Result<()> {
        self.provider.state().faults_on = false;
        if self.restart_needed {
            self.crash()?;
        }
        self.step_wall(0);
        for round in 0..400 {
            self.pass_time(20_000);
            self.deliver_evidence(round > 20)?;
            self.reconcile()?;
            for c in 0..self.clients.len() {
                for _ in 0..3 {
                    self.client_step(c)?;
                }
            }
            if self.restart_needed {
                self.crash()?;
            }
            if round > 25
                && self.orders.iter().all(|o| o.done)
                && self.provider.state().pending.is_empty()
            {
                break;
            }
        }
        Ok(())
    }

    fn check_end(&mut self) -> Result<()> {
        let ledger = self.ledger()?.clone();
        // Replaying the journal reproduces the live states.
        let mut replayed: BTreeMap<IdempotencyKey, PaymentState> = BTreeMap::new();
        for record in ledger.journal().read_from(Sequence(1)) {
            let record = record?;
            let event = decode_event(&record.payload)?;
            let state = replayed
                .remove(&event.key)
                .unwrap_or_else(|| PaymentState::new(event.key.clone()));
            let next = apply(&state, &event)?;
            replayed.insert(event.key.clone(), next);
        }
        // Charges per order at the provider.
        let truth = self.provider.state().truth.clone();
        for order in &self.orders {
            let mut charged = 0;
            let mut lost = false;
            for key in &order.keys {
                let Some(state) = replayed.get(key) else {
                    continue;
                };
                for attempt in 1..=state.attempts_started {
                    let Ok(attempt) = crate::model::AttemptNumber::new(attempt) else {
                        continue;
                    };
                    match truth.get(ProviderReference::derive(key, attempt).as_str()) {
                        Some(Truth::Charged { .. }) => charged += 1,
                        Some(Truth::Lost { .. }) => {
                            charged += 1;
                            lost = true;
                        }
                        _ => {}
                    }
                }
            }
            if charged > 1 {
                let in_conflict = order.keys.iter().any(|k| {
                    replayed
                        .get(k)
                        .is_some_and(|s| matches!(s.phase, Phase::Conflict { .. }))
                });
                if lost && in_conflict {
                    self.report.explained_double_charges += 1;
                } else {
                    self.report.double_charges += 1;
                    let keys: Vec<String> = order.keys.iter().map(ToString::to_string).collect();
                    self.report.violate(format!(
                        "order charged {charged} times under {}",
                        keys.join(", ")
                    ));
                }
            }
        }
        for (key, state) in &replayed {
            if ledger.state(key)?.as_ref() != Some(state) {
                self.report.violate(format!(
                    "replaying the journal gives another state for {key}"
                ));
            }
            let phase = state.phase.name();
            *self.report.final_phases.entry(phase).or_default() += 1;
            if !matches!(
                state.phase.kind(),
                PhaseKind::Succeeded
                    | PhaseKind::Declined
                    | PhaseKind::Exhausted
                    | PhaseKind::InReview
                    | PhaseKind::Conflict
            ) {
                self.report.unresolved_after_heal += 1;
                self.report
                    .violate(format!("{key} is {phase} after healing"));
            }
        }
        Ok(())
    }

    /// Writes the durable journal to `dir` on the real file system and builds its index there.
    fn export(&self, dir: &Path) -> Result<()> {
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
        let config = LedgerConfig {
            segment_len: 256 * 1024,
            read_only: true,
            reconcile: self.reconcile,
            ..LedgerConfig::default()
        };
        drop(Ledger::open(dir, config)?);
        Ok(())
    }
}

/// The chain hash of the record at `sequence`: it commits to every record up to it, so equal
/// hashes before and after a crash mean nothing durable was lost.
fn chain_hash_at(ledger: &Ledger, sequence: Sequence) -> Result<Option<[u8; 32]>> {
    Ok(ledger
        .journal()
        .read_from(sequence)
        .next()
        .transpose()?
        .map(|r| r.hash))
}

/// Runs a simulation. `progress` is called after each step with (steps done, steps total).
///
/// # Errors
/// Only for failures of the simulation itself (e.g. its temporary index directory); every
/// violation of a payledger invariant is reported in the [`SimReport`].
pub fn run(config: SimConfig, mut progress: impl FnMut(u64, u64)) -> Result<SimReport> {
    if let Some(dir) = &config.dir
        && dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Io {
            context: format!("--dir {} must be a new or empty directory", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let mut world = World::new(config)?;
    let ops = world.config.ops;
    for step in 0..ops {
        world.step()?;
        progress(step + 1, ops);
    }
    world.heal()?;
    world.check_end()?;
    let faults = world.provider.state().faults.clone();
    for (name, count) in faults {
        *world.report.faults.entry(name).or_default() += count;
    }
    if let Some(dir) = world.config.dir.clone() {
        world.ledger = None;
        world.export(&dir)?;
    }
    Ok(world.report)
}
