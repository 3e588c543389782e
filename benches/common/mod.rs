//! Helpers shared by the benches: running N concurrent workers and summarising latencies.

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Latency samples (microseconds) per benchmark label.
#[derive(Default)]
pub struct Latencies(Mutex<Vec<(String, Vec<u64>)>>);

impl Latencies {
    /// Adds samples under `label`.
    pub fn add(&self, label: &str, samples: Vec<u64>) {
        let mut all = self.0.lock().unwrap();
        match all.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.extend(samples),
            None => all.push((label.to_string(), samples)),
        }
    }

    /// (label, samples, p50 µs, p99 µs) for every label, in insertion order.
    pub fn summary(&self) -> Vec<(String, usize, u64, u64)> {
        let mut all = self.0.lock().unwrap();
        all.iter_mut()
            .map(|(label, v)| {
                v.sort_unstable();
                let at = |q: f64| {
                    v.get(((v.len() as f64 - 1.0) * q) as usize)
                        .copied()
                        .unwrap_or(0)
                };
                (label.clone(), v.len(), at(0.50), at(0.99))
            })
            .collect()
    }
}

/// Runs `total` operations split over `threads` workers that start together; returns the wall
/// time and the per-operation latencies in microseconds.
pub fn run_concurrent(
    threads: usize,
    total: u64,
    op: Arc<dyn Fn(usize, u64) + Send + Sync>,
) -> (Duration, Vec<u64>) {
    let per_thread = total.div_ceil(threads as u64).max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let op = Arc::clone(&op);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_thread as usize);
                barrier.wait();
                for i in 0..per_thread {
                    let started = Instant::now();
                    op(t, i);
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let latencies: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    (started.elapsed(), latencies)
}
