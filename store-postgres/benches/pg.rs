//! payledger over PostgreSQL against the idempotency-key protocol on the same server, and the
//! embedded ledger for reference, in one run (issue 12, item 6).
//!
//! ```text
//! cargo bench -p payledger-postgres --bench pg                 # 1, 8, 32, 64 callers, 2 s, 3 rounds
//! cargo bench -p payledger-postgres --bench pg -- --callers 8 --seconds 1 --rounds 1
//! cargo bench -p payledger-postgres --bench pg -- --smoke      # CI: 4 callers, 0.3 s, `smoke: ok`
//! ```
//!
//! `--smoke` (also `--test`, and any run without cargo's `--bench`, as `cargo test --benches`
//! makes it) runs one round of 0.3 s at 4 callers over 100 preloaded keys, checks that every
//! contender completed charges and that the stores agree, and prints `smoke: ok`.
//!
//! ONE throwaway cluster (`tests/support`: `initdb` in a temporary directory, a Unix socket,
//! `fsync` and `synchronous_commit` on, `max_connections` 200) serves both PostgreSQL
//! contenders; without an installed server the PostgreSQL rows are skipped with one line
//! (unless `PAYLEDGER_PG_REQUIRED` is set).
//!
//! A *charge* is what a payment service does for one new idempotency key: make the request
//! durable, call the provider (here one that answers at once), make its answer durable. N
//! callers (threads) charge in a closed loop, a fresh key per charge, for a window; a charge
//! counts if it completed inside it.
//!
//! - `StoreLedger<PgStore>`: `StoreLedger::charge_once`: `begin` (one append: intent and
//!   attempt, decided for a new key without loading) and `record` (one append: the outcome, at
//!   the version `begin` wrote), each append one statement in its own transaction; the pool
//!   keeps one connection per caller.
//! - `brandur (postgres)`: Stripe's idempotency-key protocol as written up by Brandur Leach
//!   (<https://brandur.org/idempotency-keys>), `benches/common/brandur_pg.rs` (shared with the root's `benches/peers.rs`):
//!   transaction 1 inserts the key row at recovery point `started` and the pending charge,
//!   transaction 2 marks the charge succeeded and the key `finished` with its response. Read
//!   committed, one connection per caller, prepared statements, in its own schema of the same
//!   database.
//! - `Ledger (embedded)`: `Ledger::charge_once` on a temporary directory: one process, its own
//!   journal and group commit (a reference, not a peer: it cannot be shared between hosts).
//!
//! Rounds are interleaved (for each concurrency, for each round, every contender once, each
//! round starting with a different one) and each figure is the median of its rounds. Before any
//! window every store holds `--preload` finished keys. After the run, each PostgreSQL
//! contender is checked to hold exactly as many finished keys as charges completed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use payledger::store::{StoreConfig, StoreLedger};
use payledger::*;
use payledger_postgres::postgres;
use payledger_postgres::{PgOptions, PgStore};

/// The deadline every charge is given (the provider answers at once).
const DEADLINE: Duration = Duration::from_secs(5);
/// Threads that fill the stores before measuring.
const PRELOAD_THREADS: usize = 32;

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    callers: Vec<usize>,
    window: Duration,
    rounds: usize,
    preload: u64,
    smoke: bool,
    /// The arguments as given, for the header.
    args: Vec<String>,
}

const USAGE: &str = "usage: cargo bench -p payledger-postgres --bench pg -- [--smoke|--test] \
                     [--callers 1,8,32,64] [--seconds 2] [--rounds 3] [--preload 10000]";

impl Options {
    /// Like a criterion bench, only the smoke check unless cargo says `--bench`.
    fn parse(args: &[String]) -> Result<Self, String> {
        let benching = args.iter().any(|a| a == "--bench");
        let smoke = !benching || args.iter().any(|a| a == "--smoke" || a == "--test");
        let mut options = if smoke {
            Self {
                callers: vec![4],
                window: Duration::from_millis(300),
                rounds: 1,
                preload: 100,
                smoke,
                args: Vec::new(),
            }
        } else {
            Self {
                callers: vec![1, 8, 32, 64],
                window: Duration::from_secs(2),
                rounds: 3,
                preload: 10_000,
                smoke,
                args: Vec::new(),
            }
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = || rest.next().cloned().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--callers" => {
                    options.callers = value()?
                        .split(',')
                        .map(|c| match c.parse() {
                            Ok(n) if n > 0 => Ok(n),
                            _ => Err(format!("not a positive number: {c}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--seconds" => {
                    let seconds: f64 = value()?.parse().map_err(|_| "--seconds: a number")?;
                    options.window = Duration::try_from_secs_f64(seconds)
                        .map_err(|_| "--seconds: a positive number")?;
                }
                "--rounds" => {
                    options.rounds = value()?.parse().map_err(|_| "--rounds: a number")?;
                    if options.rounds == 0 {
                        return Err("--rounds: at least 1".to_string());
                    }
                }
                "--preload" => options.preload = value()?.parse().map_err(|_| "--preload")?,
                "--bench" | "--smoke" | "--test" => {}
                other => return Err(format!("unknown argument {other}")),
            }
        }
        options.args = args.iter().filter(|a| *a != "--bench").cloned().collect();
        Ok(options)
    }

    fn callers_max(&self) -> usize {
        self.callers.iter().copied().max().unwrap_or(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The request, the provider

fn intent() -> Intent {
    Intent {
        amount: Amount::new(u64::from(AMOUNT_MINOR)).unwrap(),
        currency: Currency::new(CURRENCY).unwrap(),
        account: AccountId::new(ACCOUNT).unwrap(),
        customer: CustomerRef::new(CUSTOMER).unwrap(),
        description: Some(Description::new(DESCRIPTION).unwrap()),
        metadata: Metadata::default(),
    }
}

/// The key a client sends for its `n`th order.
fn key_text(n: u64) -> String {
    format!("order-{n}")
}

/// The zero-delay provider: every charge succeeds at once.
struct Instant0;

impl Provider for Instant0 {
    fn charge(&self, request: &ChargeRequest) -> ChargeReply {
        ChargeReply::Charged {
            transaction_id: format!("ch_{}", request.provider_reference),
            amount_minor: request.amount.minor(),
        }
    }
    fn query(&self, _: &ProviderReference) -> QueryReply {
        QueryReply::NotFound
    }
}

// ---------------------------------------------------------------------------------------------
// The contenders

/// A store that charges can be made against.
trait Store: Sync {
    fn name(&self) -> &'static str;
    /// One caller's own handle (a connection), made before its window opens.
    fn session(&self) -> Box<dyn Session + '_>;
    /// After the run: `completed` charges (the preload included) finished; does the store agree?
    fn check(&self, _completed: u64) -> Result<(), String> {
        Ok(())
    }
}

/// One caller's handle.
trait Session {
    /// One charge for the fresh key number `n`: both durable steps around the provider call.
    fn charge(&mut self, n: u64);
}

/// `Ledger::charge_once` or `StoreLedger::charge_once` for a fresh key.
fn charge_report(report: Result<ChargeReport>, n: u64) {
    let report = report.unwrap_or_else(|error| panic!("charge {n}: {error}"));
    assert!(
        matches!(report.outcome, Some(Outcome::Succeeded { .. })),
        "charge {n}: {report:?}"
    );
}

// --- StoreLedger<PgStore> ---

struct PgLedger {
    ledger: StoreLedger<PgStore>,
    intent: Intent,
}

impl PgLedger {
    fn open(cluster: &support::Cluster, callers_max: usize, preload: u64) -> Self {
        let store = cluster.store_with(PgOptions {
            // One connection per caller, as the protocol below has.
            idle_max: callers_max,
            ..PgOptions::default()
        });
        let this = Self {
            ledger: StoreLedger::new(store, StoreConfig::default()),
            intent: intent(),
        };
        in_parallel(preload, |n| this.charge(n));
        let mut client = cluster.admin();
        for table in [
            "payledger_events",
            "payledger_keys",
            "payledger_key_phases",
            "payledger_references",
        ] {
            client
                .batch_execute(&format!("VACUUM ANALYZE {table}"))
                .unwrap();
        }
        this
    }

    fn charge(&self, n: u64) {
        let key = IdempotencyKey::new(key_text(n)).unwrap();
        charge_report(
            self.ledger
                .charge_once(&key, &self.intent, &Instant0, DEADLINE),
            n,
        );
    }
}

struct PgLedgerCheck<'a>(&'a PgLedger, &'a support::Cluster);

impl Store for PgLedgerCheck<'_> {
    fn name(&self) -> &'static str {
        "StoreLedger<PgStore>"
    }
    fn session(&self) -> Box<dyn Session + '_> {
        Box::new(ByRef(self.0))
    }
    fn check(&self, completed: u64) -> Result<(), String> {
        let succeeded: i64 = self
            .1
            .admin()
            .query_one(
                "SELECT count(*) FROM payledger_key_phases WHERE phase = $1",
                &[&PhaseKind::Succeeded.name()],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|error| format!("count succeeded keys: {error}"))?;
        check_finished(self.name(), succeeded, completed)
    }
}

struct ByRef<'a>(&'a PgLedger);

impl Session for ByRef<'_> {
    fn charge(&mut self, n: u64) {
        self.0.charge(n);
    }
}

// --- the embedded Ledger ---

struct Embedded {
    ledger: Ledger,
    intent: Intent,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn open(preload: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path(), LedgerConfig::default()).unwrap();
        let this = Self {
            ledger,
            intent: intent(),
            _dir: dir,
        };
        in_parallel(preload, |n| this.charge(n));
        this
    }

    fn charge(&self, n: u64) {
        let key = IdempotencyKey::new(key_text(n)).unwrap();
        charge_report(
            self.ledger
                .charge_once(&key, &self.intent, &Instant0, DEADLINE),
            n,
        );
    }
}

impl Store for Embedded {
    fn name(&self) -> &'static str {
        "Ledger (embedded)"
    }
    fn session(&self) -> Box<dyn Session + '_> {
        Box::new(EmbeddedSession(self))
    }
}

struct EmbeddedSession<'a>(&'a Embedded);

impl Session for EmbeddedSession<'_> {
    fn charge(&mut self, n: u64) {
        self.0.charge(n);
    }
}

// --- Brandur's protocol on PostgreSQL ---
//
// The protocol itself (tables, statements, the two transactions) is
// `benches/common/brandur_pg.rs`, shared with the root's `benches/peers.rs`; the order below is
// the same as there.

#[path = "../../benches/common/brandur_pg.rs"]
mod brandur_pg;

const AMOUNT_MINOR: u32 = 4_999;
const CURRENCY: &str = "EUR";
const ACCOUNT: &str = "acct_bench";
const CUSTOMER: &str = "cus_bench";
const DESCRIPTION: &str = "benchmark order";
const REQUEST_PARAMS: &str = concat!(
    r#"{"amount":4999,"currency":"EUR","account":"acct_bench","#,
    r#""customer":"cus_bench","description":"benchmark order"}"#
);
/// Brandur's keys are unique per user; every request here comes from one.
const USER_ID: i64 = 1;

fn response_body(transaction_id: &str) -> String {
    format!(
        "{{\"id\":\"{transaction_id}\",\"status\":\"succeeded\",\
         \"amount\":{AMOUNT_MINOR},\"currency\":\"{CURRENCY}\"}}"
    )
}

struct Brandur<'a> {
    cluster: &'a support::Cluster,
}

impl<'a> Brandur<'a> {
    fn open(cluster: &'a support::Cluster, preload: u64) -> Self {
        let this = Self { cluster };
        brandur_pg::create(&mut this.cluster.admin(), preload).unwrap();
        this
    }

    fn connect(&self) -> postgres::Client {
        let mut client = self.cluster.admin();
        client
            .batch_execute(&format!("SET search_path TO {}", brandur_pg::PG_SCHEMA))
            .unwrap();
        client
    }
}

impl Store for Brandur<'_> {
    fn name(&self) -> &'static str {
        "brandur (postgres)"
    }

    fn session(&self) -> Box<dyn Session + '_> {
        let mut client = self.connect();
        let statements = brandur_pg::Statements::prepare(&mut client).unwrap();
        Box::new(BrandurSession { client, statements })
    }

    fn check(&self, completed: u64) -> Result<(), String> {
        let finished = brandur_pg::finished(&mut self.connect())
            .map_err(|error| format!("count finished keys: {error}"))?;
        check_finished(self.name(), finished, completed)
    }
}

struct BrandurSession {
    client: postgres::Client,
    statements: brandur_pg::Statements,
}

impl Session for BrandurSession {
    fn charge(&mut self, n: u64) {
        let Some(key_id) = self.statements.start(&mut self.client, n).unwrap() else {
            panic!("postgres: key {n} existed before its first request")
        };
        // The provider answers at once.
        let transaction_id = format!("ch_{n}");
        self.statements
            .finish(&mut self.client, key_id, &transaction_id)
            .unwrap();
    }
}

fn check_finished(store: &str, finished: i64, completed: u64) -> Result<(), String> {
    if u64::try_from(finished) == Ok(completed) {
        Ok(())
    } else {
        Err(format!(
            "{store} holds {finished} finished keys, but {completed} charges completed"
        ))
    }
}

/// Runs `work(i)` for every `i` below `count` on `PRELOAD_THREADS` threads.
fn in_parallel(count: u64, work: impl Fn(u64) + Sync) {
    let next = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..PRELOAD_THREADS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    work(i);
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// A store and the charges made against it.
struct Contender<'a> {
    store: Box<dyn Store + 'a>,
    /// The next fresh key number.
    next_key: AtomicU64,
    /// Charges completed, inside a window or not, the preload included.
    completed: AtomicU64,
}

impl<'a> Contender<'a> {
    fn new(store: Box<dyn Store + 'a>, preload: u64) -> Self {
        Self {
            store,
            next_key: AtomicU64::new(preload),
            completed: AtomicU64::new(preload),
        }
    }
}

/// One contender at one concurrency in one round.
#[derive(Clone, Copy)]
struct Sample {
    charges_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `callers` closed-loop callers against the contender for one window.
fn measure(contender: &Contender<'_>, callers: usize, window: Duration) -> Sample {
    let barrier = Barrier::new(callers + 1);
    let logs: Vec<(Vec<u64>, u64)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut session = contender.store.session();
                    let (mut latencies, mut late) = (Vec::new(), 0);
                    barrier.wait();
                    let deadline = Instant::now() + window;
                    loop {
                        let started = Instant::now();
                        if started >= deadline {
                            return (latencies, late);
                        }
                        session.charge(contender.next_key.fetch_add(1, Ordering::Relaxed));
                        let finished = Instant::now();
                        if finished <= deadline {
                            latencies.push(micros(finished - started));
                        } else {
                            late += 1;
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut latencies: Vec<u64> = logs.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    let late: u64 = logs.iter().map(|(_, late)| late).sum();
    contender
        .completed
        .fetch_add(latencies.len() as u64 + late, Ordering::Relaxed);
    latencies.sort_unstable();
    Sample {
        charges_per_s: latencies.len() as f64 / window.as_secs_f64(),
        p50_us: percentile(&latencies, 500),
        p99_us: percentile(&latencies, 990),
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// The nearest-rank percentile of sorted samples, `per_mille` of 1000 (0 for none).
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000);
    sorted.get(rank.saturating_sub(1)).copied().unwrap_or(0)
}

/// The median; for an even count, the mean of the two middle values.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn median_of(rounds: &[Sample]) -> Sample {
    let field = |get: fn(&Sample) -> f64| median(rounds.iter().map(get).collect());
    Sample {
        charges_per_s: field(|s| s.charges_per_s),
        p50_us: field(|s| s.p50_us as f64).round() as u64,
        p99_us: field(|s| s.p99_us as f64).round() as u64,
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "n/a".to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The run

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let cluster = support::Cluster::start_with(&[("max_connections", "200")]);
    let preload = options.preload;
    let pg = cluster
        .as_ref()
        .map(|cluster| PgLedger::open(cluster, options.callers_max(), preload));
    let brandur = cluster
        .as_ref()
        .map(|cluster| Brandur::open(cluster, preload));
    let embedded = Embedded::open(preload);

    let contender = |store| Contender::new(store, preload);
    let mut contenders = Vec::new();
    if let (Some(pg), Some(cluster)) = (&pg, &cluster) {
        contenders.push(contender(Box::new(PgLedgerCheck(pg, cluster))));
    }
    if let Some(brandur) = brandur {
        contenders.push(contender(Box::new(brandur)));
    }
    contenders.push(contender(Box::new(embedded)));

    if !options.smoke {
        print_header(&options, cluster.as_ref());
    }
    // The server's WAL position around each window: the WAL each contender writes per charge
    // (the embedded ledger writes none; autovacuum's, if any, is counted in).
    let mut admin = cluster.as_ref().map(support::Cluster::admin);
    let mut wal_position = || -> i64 {
        admin.as_mut().map_or(0, |client| {
            client
                .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
                .unwrap()
                .get(0)
        })
    };
    // Per contender: WAL bytes and charges completed in the windows.
    let mut wal = vec![(0_i64, 0_u64); contenders.len()];
    let mut table = Vec::new();
    for &callers in &options.callers {
        let mut rounds: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
        for round in 0..options.rounds {
            for i in 0..contenders.len() {
                let i = (i + round) % contenders.len();
                let (position, completed) = (
                    wal_position(),
                    contenders[i].completed.load(Ordering::Relaxed),
                );
                rounds[i].push(measure(&contenders[i], callers, options.window));
                wal[i].0 += wal_position() - position;
                wal[i].1 += contenders[i].completed.load(Ordering::Relaxed) - completed;
            }
        }
        let medians: Vec<Sample> = rounds.iter().map(|r| median_of(r)).collect();
        table.push((callers, medians));
    }
    for contender in &contenders {
        let completed = contender.completed.load(Ordering::Relaxed);
        if let Err(error) = contender.store.check(completed) {
            eprintln!("check failed: {error}");
            return ExitCode::FAILURE;
        }
    }
    if options.smoke {
        for (_, medians) in &table {
            for (contender, sample) in contenders.iter().zip(medians) {
                if sample.charges_per_s <= 0.0 {
                    eprintln!("{}: no charge completed", contender.store.name());
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("smoke: ok");
        return ExitCode::SUCCESS;
    }
    print_table(&contenders, &table);
    if cluster.is_some() {
        println!();
        for (contender, (bytes, charges)) in contenders.iter().zip(&wal) {
            if contender.store.name() != "Ledger (embedded)" && *charges > 0 {
                println!(
                    "- {}: {:.0} WAL bytes per charge",
                    contender.store.name(),
                    *bytes as f64 / *charges as f64
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_header(options: &Options, cluster: Option<&support::Cluster>) {
    let command = if options.args.is_empty() {
        "cargo bench -p payledger-postgres --bench pg".to_string()
    } else {
        format!(
            "cargo bench -p payledger-postgres --bench pg -- {}",
            options.args.join(" ")
        )
    };
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("## payledger over PostgreSQL (store-postgres/benches/pg.rs)\n");
    println!("- command: `{command}`");
    println!("- machine: {cores} cores");
    match cluster {
        Some(cluster) => {
            let version: String = cluster
                .admin()
                .query_one("SHOW server_version", &[])
                .unwrap()
                .get(0);
            println!(
                "- postgres {version}: one throwaway cluster, Unix socket, fsync and \
                 synchronous_commit on, defaults otherwise"
            );
        }
        None => println!("- postgres: not run (no server installed)"),
    }
    println!(
        "- each contender {:.1} s per concurrency per round, {} round(s) interleaved, median of \
         rounds; {} finished keys preloaded per store; fresh key per charge, provider answers \
         at once",
        options.window.as_secs_f64(),
        options.rounds,
        options.preload
    );
    println!();
}

fn print_table(contenders: &[Contender<'_>], table: &[(usize, Vec<Sample>)]) {
    println!("| callers | contender | charges/s | p50 µs | p99 µs |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for (callers, medians) in table {
        for (contender, s) in contenders.iter().zip(medians) {
            println!(
                "| {callers} | {} | {:.0} | {} | {} |",
                contender.store.name(),
                s.charges_per_s,
                s.p50_us,
                s.p99_us
            );
        }
    }
    println!();
    let find = |medians: &[Sample], name: &str| {
        contenders
            .iter()
            .position(|c| c.store.name() == name)
            .map(|i| medians[i])
    };
    for (callers, medians) in table {
        let pg = find(medians, "StoreLedger<PgStore>");
        let brandur = find(medians, "brandur (postgres)");
        let embedded = find(medians, "Ledger (embedded)");
        if let (Some(pg), Some(brandur)) = (pg, brandur) {
            println!(
                "- {callers} caller(s): StoreLedger<PgStore> / brandur: {} charges/s, {} p50",
                ratio(pg.charges_per_s, brandur.charges_per_s),
                ratio(pg.p50_us as f64, brandur.p50_us as f64),
            );
        }
        if let (Some(pg), Some(embedded)) = (pg, embedded) {
            println!(
                "- {callers} caller(s): Ledger (embedded) / StoreLedger<PgStore>: {} charges/s",
                ratio(embedded.charges_per_s, pg.charges_per_s),
            );
        }
    }
}
