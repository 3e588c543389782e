//! The async adapter against the blocking API, side by side in one process and one run: 32
//! concurrent async tasks (on one executor thread, the `futures` crate's, so the comparison
//! measures the adapter and not a runtime) against 32 blocking threads, each charging fresh
//! keys in a closed loop (`begin` → a provider answering at once → `record`).
//!
//! ```text
//! cargo bench --bench async                     # 32 callers, 3 s per contender, 5 rounds
//! cargo bench --bench async -- --callers 8 --seconds 1 --rounds 3
//! cargo bench --bench async -- --smoke          # CI: a fraction of a second, no figures
//! ```
//!
//! Rounds interleave the contenders on one ledger, alternating which goes first (the ledger
//! grows as it runs), so the disk's drift hits both alike; each round's ratio, the medians and
//! the median ratio are printed. Target (issue
//! 11): async within 10% of blocking at 32 callers.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::join_all;
use payledger::asynchronous::{AsyncConfig, AsyncLedger};
use payledger::*;

#[path = "common/instant.rs"]
mod instant;

use instant::{Instant0, intent};

struct Options {
    callers: usize,
    /// The async adapter's worker threads (default: one per caller).
    workers: Option<usize>,
    /// Run the async tasks on tokio's multi-threaded runtime instead of one `futures` thread.
    tokio: bool,
    seconds: f64,
    rounds: usize,
    smoke: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let benching = args.iter().any(|a| a == "--bench");
        let smoke = !benching || args.iter().any(|a| a == "--smoke" || a == "--test");
        let mut options = Options {
            callers: 32,
            workers: None,
            tokio: false,
            seconds: 3.0,
            rounds: 5,
            smoke,
        };
        if smoke {
            options.seconds = 0.3;
            options.rounds = 1;
            options.callers = 8;
        }
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = |name: &str| {
                rest.next()
                    .ok_or_else(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--callers" => options.callers = parse(&value("--callers")?)?,
                "--workers" => options.workers = Some(parse(&value("--workers")?)?),
                "--seconds" => options.seconds = parse(&value("--seconds")?)?,
                "--rounds" => options.rounds = parse(&value("--rounds")?)?,
                "--executor" => {
                    options.tokio = match value("--executor")?.as_str() {
                        "tokio" => true,
                        "futures" => false,
                        other => return Err(format!("unknown executor {other}")),
                    }
                }
                "--bench" | "--smoke" | "--test" => {}
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(options)
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

const DEADLINE: Duration = Duration::from_secs(5);

fn fresh_key(counter: &AtomicU64) -> IdempotencyKey {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    IdempotencyKey::new(format!("async-bench-{n}")).unwrap()
}

/// Charges/s of `callers` blocking threads for `window`.
fn blocking(ledger: &Ledger, counter: &Arc<AtomicU64>, callers: usize, window: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let (ledger, counter, stop) = (ledger.clone(), Arc::clone(counter), Arc::clone(&stop));
            std::thread::spawn(move || {
                let intent = intent();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let report = ledger
                        .charge_once(&fresh_key(&counter), &intent, &Instant0, DEADLINE)
                        .unwrap();
                    assert!(report.called_provider);
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

/// Charges/s of `callers` async tasks on one executor thread for `window`.
fn asynchronous(
    ledger: &AsyncLedger,
    counter: &Arc<AtomicU64>,
    callers: usize,
    window: Duration,
    tokio_runtime: bool,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(window);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let intent = intent();
    let tasks = (0..callers).map(|_| {
        let (stop, counter, intent) = (Arc::clone(&stop), Arc::clone(counter), intent.clone());
        let ledger = ledger.clone();
        async move {
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let report = ledger
                    .charge_once(&fresh_key(&counter), &intent, &Instant0, DEADLINE)
                    .await
                    .unwrap();
                assert!(report.called_provider);
                done += 1;
            }
            done
        }
    });
    let done: u64 = if tokio_runtime {
        let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        runtime.block_on(async {
            let handles: Vec<_> = tasks.map(|t| runtime.spawn(t)).collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await.unwrap();
            }
            sum
        })
    } else {
        block_on(join_all(tasks)).into_iter().sum()
    };
    let rate = done as f64 / started.elapsed().as_secs_f64();
    timer.join().unwrap();
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "{e}\nusage: cargo bench --bench async -- [--smoke] [--callers N] [--workers N] [--executor futures|tokio] [--seconds S] [--rounds R]"
            );
            return ExitCode::from(2);
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(tmp.path(), LedgerConfig::default()).unwrap();
    let adapter = AsyncLedger::new(
        ledger.clone(),
        AsyncConfig {
            workers: options.workers.unwrap_or(options.callers),
            queue: options.callers * 4,
        },
    )
    .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs_f64(options.seconds);
    let (mut b, mut a) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        // The ledger grows as it runs: who goes first alternates, so neither always meets the
        // bigger ledger.
        if round % 2 == 0 {
            b.push(blocking(&ledger, &counter, options.callers, window));
            a.push(asynchronous(
                &adapter,
                &counter,
                options.callers,
                window,
                options.tokio,
            ));
        } else {
            a.push(asynchronous(
                &adapter,
                &counter,
                options.callers,
                window,
                options.tokio,
            ));
            b.push(blocking(&ledger, &counter, options.callers, window));
        }
        if !options.smoke {
            println!(
                "round {} ({} first): blocking {:>8.0}/s  async {:>8.0}/s  ratio {:.2}",
                round + 1,
                if round % 2 == 0 { "blocking" } else { "async" },
                b[round],
                a[round],
                a[round] / b[round]
            );
        }
    }
    if options.smoke {
        let ok = b.iter().chain(&a).all(|rate| *rate > 0.0);
        println!("smoke: {}", if ok { "ok" } else { "no charges completed" });
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let ratio = median(a.iter().zip(&b).map(|(a, b)| a / b).collect());
    let (b, a) = (median(b), median(a));
    println!(
        "{} callers, medians of {} rounds of {:.1} s: blocking {:.0} charges/s, async {:.0} charges/s, median of the rounds' async/blocking {:.2} (target >= 0.90: {})",
        options.callers,
        options.rounds,
        options.seconds,
        b,
        a,
        ratio,
        if ratio >= 0.9 { "met" } else { "not met" }
    );
    ExitCode::SUCCESS
}
