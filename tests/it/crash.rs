//! Crash tests with a real child process killed by SIGKILL mid-workload.
//!
//! The test binary re-executes itself: with `PAYLEDGER_CRASH_CHILD` set, the test
//! `crash_child_entry` becomes the child's workload and prints one line per acknowledged
//! append; without it, that function returns at once (it is an entry point, not a test).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use payledger::Sequence;
use payledger::journal::{Journal, JournalConfig};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "PAYLEDGER_CRASH_CHILD";
const KILLS_ENV: &str = "PAYLEDGER_CRASH_KILLS";
const CONFIG: JournalConfig = JournalConfig {
    segment_len: 256 * 1024,
    create_if_missing: true,
};

/// Spawns this test binary running only `entry`, in child mode for `dir`.
pub fn spawn_child(entry: &str, mode: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The child's mode and directory, when this process is a crash child.
pub fn child_mode() -> Option<(String, String)> {
    let value = std::env::var(CHILD_ENV).ok()?;
    let (mode, dir) = value.split_once(':')?;
    Some((mode.to_string(), dir.to_string()))
}

/// Reads the child's `ack` lines into a channel until it dies.
pub fn ack_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness prints "test name ... " without a newline, so the first ack can
            // share its line.
            if let Some(at) = line.find("ack ")
                && tx.send(line[at + 4..].to_string()).is_err()
            {
                break;
            }
        }
    });
    rx
}

#[test]
fn crash_child_entry() {
    let Some((mode, dir)) = child_mode() else {
        return;
    };
    if mode != "journal" {
        return;
    }
    let (journal, _) = Journal::open(&dir, CONFIG).unwrap();
    let journal = Arc::new(journal);
    let pid = std::process::id();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let journal = Arc::clone(&journal);
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let body = format!("{pid}-{t}-{i}");
                    // Every fourth append is an atomic pair.
                    let payloads = if i % 4 == 0 {
                        vec![body.clone().into_bytes(); 2]
                    } else {
                        vec![body.clone().into_bytes()]
                    };
                    let seqs = journal.append(payloads).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {} {} {}", seqs.start().0, seqs.end().0, body).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(20));
    drop(threads);
    std::process::exit(0);
}

#[test]
fn journal_survives_sigkill_with_every_acknowledged_record() {
    if child_mode().is_some() {
        return;
    }
    let kills: usize = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut torn_tails = 0;
    for round in 0..kills {
        let mut child = spawn_child("crash::crash_child_entry", "journal", tmp.path());
        let acks = ack_lines(&mut child);
        // Wait for the first acknowledgement, then kill at a random moment.
        let first = acks
            .recv_timeout(Duration::from_secs(30))
            .expect("child acknowledges appends");
        let deadline = Instant::now() + Duration::from_micros(rng.random_range(0..30_000));
        let mut lines = vec![first];
        while Instant::now() < deadline {
            lines.extend(acks.try_iter());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        lines.extend(acks.iter());
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (start, end, body) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            for seq in start.parse::<u64>().unwrap()..=end.parse::<u64>().unwrap() {
                assert!(
                    acked.insert(seq, body.to_string()).is_none(),
                    "sequence {seq} acknowledged twice"
                );
            }
        }
        let (journal, report) = Journal::open(tmp.path(), CONFIG).unwrap();
        torn_tails += usize::from(report.torn_tail.is_some());
        let records: Vec<_> = journal.read_from(Sequence(1)).map(|r| r.unwrap()).collect();
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.sequence.0, i as u64 + 1, "contiguous");
        }
        for (seq, body) in &acked {
            let record = records
                .get(*seq as usize - 1)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {seq} lost"));
            assert_eq!(
                record.payload,
                body.as_bytes(),
                "round {round}: sequence {seq}"
            );
        }
        journal.verify().unwrap();
    }
    eprintln!(
        "{kills} kills, {} acknowledged records checked, {torn_tails} torn tails cut",
        acked.len()
    );
    assert!(acked.len() > kills, "the children made progress");
}
