//! The store seam's cost and what sharding gives, side by side in one run: charges/s through
//! the embedded `Ledger` directly, through `StoreLedger` over the same kind of ledger (the
//! seam: load, decide, compare-and-append), and through `StoreLedger` over three embedded
//! ledgers behind the shard router (one disk here: sharding spreads index and lock work, not
//! syncs). Fresh keys, a provider answering at once, a closed loop per caller.
//!
//! ```text
//! cargo bench --bench store                          # 1, 8, 32 callers, 2 s, 3 rounds
//! cargo bench --bench store -- --callers 32 --seconds 3 --rounds 5
//! cargo bench --bench store -- --smoke               # CI: a fraction of a second, no figures
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use payledger::store::{EventStore, ShardMap, Sharded, StoreConfig, StoreLedger};
use payledger::*;

#[path = "common/instant.rs"]
mod instant;

use instant::{Instant0, intent};

struct Options {
    callers: Vec<usize>,
    seconds: f64,
    rounds: usize,
    smoke: bool,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let benching = args.iter().any(|a| a == "--bench");
    let smoke = !benching || args.iter().any(|a| a == "--smoke" || a == "--test");
    let mut options = Options {
        callers: vec![1, 8, 32],
        seconds: 2.0,
        rounds: 3,
        smoke,
    };
    if smoke {
        options = Options {
            callers: vec![4],
            seconds: 0.2,
            rounds: 1,
            smoke,
        };
    }
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--callers" => {
                options.callers = value()?
                    .split(',')
                    .map(|c| c.parse().map_err(|_| format!("not a number: {c}")))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => options.seconds = value()?.parse().map_err(|_| "--seconds")?,
            "--rounds" => options.rounds = value()?.parse().map_err(|_| "--rounds")?,
            "--bench" | "--smoke" | "--test" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

/// A way to charge one fresh key.
trait Contender: Send + Sync {
    fn charge(&self, key: &IdempotencyKey, intent: &Intent);
}

impl Contender for Ledger {
    fn charge(&self, key: &IdempotencyKey, intent: &Intent) {
        let report = self
            .charge_once(key, intent, &Instant0, Duration::from_secs(5))
            .unwrap();
        assert!(report.called_provider);
    }
}

impl<S: EventStore> Contender for StoreLedger<S> {
    fn charge(&self, key: &IdempotencyKey, intent: &Intent) {
        let report = self
            .charge_once(key, intent, &Instant0, Duration::from_secs(5))
            .unwrap();
        assert!(report.called_provider);
    }
}

fn rate(
    contender: &Arc<dyn Contender>,
    counter: &Arc<AtomicU64>,
    callers: usize,
    window: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let (contender, counter, stop) = (
                Arc::clone(contender),
                Arc::clone(counter),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let intent = intent();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    contender.charge(
                        &IdempotencyKey::new(format!("store-bench-{n}")).unwrap(),
                        &intent,
                    );
                    done += 1;
                }
                done
            })
        })
        .collect();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let done: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "{e}\nusage: cargo bench --bench store -- [--smoke] [--callers 1,8,32] [--seconds S] [--rounds R]"
            );
            return ExitCode::from(2);
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let open =
        |dir: &tempfile::TempDir| Ledger::open(dir.path(), LedgerConfig::default()).unwrap().0;
    let direct: Arc<dyn Contender> = Arc::new(open(&dirs[0]));
    let seam: Arc<dyn Contender> =
        Arc::new(StoreLedger::new(open(&dirs[1]), StoreConfig::default()));
    let shards = Sharded::new(
        ShardMap::spread(1_024, 3).unwrap(),
        dirs[2..].iter().map(open).collect(),
    )
    .unwrap();
    let sharded: Arc<dyn Contender> = Arc::new(StoreLedger::new(shards, StoreConfig::default()));
    let contenders = [
        ("Ledger", &direct),
        ("StoreLedger<Ledger>", &seam),
        ("StoreLedger<Sharded<3 × Ledger>>", &sharded),
    ];
    let counter = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs_f64(options.seconds);
    let mut ok = true;
    for &callers in &options.callers {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        for round in 0..options.rounds {
            // Rotate who goes first: the ledgers grow as they run.
            for i in 0..contenders.len() {
                let c = (i + round) % contenders.len();
                rates[c].push(rate(contenders[c].1, &counter, callers, window));
            }
        }
        if options.smoke {
            ok &= rates.iter().flatten().all(|r| *r > 0.0);
            continue;
        }
        let base = median(rates[0].clone());
        println!(
            "{callers} caller(s), medians of {} rounds of {:.1} s:",
            options.rounds, options.seconds
        );
        for (i, (name, _)) in contenders.iter().enumerate() {
            let m = median(rates[i].clone());
            println!("  {name:<34} {m:>9.0} charges/s  {:.2}× Ledger", m / base);
        }
    }
    if options.smoke {
        println!("smoke: {}", if ok { "ok" } else { "no charges completed" });
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    ExitCode::SUCCESS
}
