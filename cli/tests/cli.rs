//! The `payledger` binary, run as an operator would: the simulation, every read-only command on
//! a directory nobody may write (nothing changes, not a byte, not a time), keys that look like
//! options or hold quotes, printed commands that paste back into a shell, and every error.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn simulate_reports_the_required_lines_and_is_deterministic() {
    let args = [
        "simulate",
        "--seed",
        "11",
        "--ops",
        "2000",
        "--clients",
        "4",
        "--keys",
        "80",
        "--profile",
        "hostile",
    ];
    let first = payledger(&args);
    let second = payledger(&args);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stdout));
    assert_eq!(
        first.stdout, second.stdout,
        "same seed and flags, same bytes"
    );
    let out = text(&first.stdout);
    for line in [
        "double charges: 0",
        "acknowledged events lost: 0",
        "unresolved after heal: 0",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    for prefix in [
        "operations: ",
        "crashes: ",
        "power loss: ",
        "faults: ",
        "reviews: ",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(prefix)),
            "missing {prefix:?}"
        );
    }
    assert_eq!(out.lines().last(), Some("result: ok"));
}

/// Issue 14: every operator command, on a directory made read-only, changes no file's bytes or
/// modification time and creates no file (no lock, no index).
#[test]
fn no_operator_command_changes_a_byte_of_a_read_only_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, k, _) = ledger_in(tmp.path(), Condition::UnknownsPilingUp);
    std::fs::remove_file(dir.join("LOCK")).ok();
    let d = dir.to_str().unwrap();
    set_read_only(&dir, true);
    let before = snapshot(&dir);
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", d, &k],
        vec!["list", d, "--state", "unknown", "--limit", "2"],
        vec!["verify", d],
        vec!["stats", d],
        vec!["health", d],
        vec!["health", d, "--json"],
        vec!["export", d],
        vec!["tail", d, "--from", "1", "--limit", "3"],
    ];
    for args in &commands {
        let out = payledger(args);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(snapshot(&dir), before, "{args:?} changed the directory");
    }
    assert!(!dir.join("LOCK").exists(), "no lock file was created");
    set_read_only(&dir, false);
}

#[test]
fn read_only_commands_work_while_the_service_holds_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, k, held) = ledger_in(tmp.path(), Condition::Locked);
    assert!(held.ledger.is_some());
    let d = dir.to_str().unwrap();
    for args in [vec!["stats", d], vec!["verify", d], vec!["inspect", d, &k]] {
        let out = payledger(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let rebuild = payledger(&["rebuild-index", d]);
    assert_eq!(rebuild.status.code(), Some(2));
    let err = text(&rebuild.stderr);
    assert!(
        err.contains("is locked by another process") && err.lines().count() == 1,
        "{err}"
    );
}

/// Keys may start with `-` or hold quotes; the next-page command is printed shell-quoted, and
/// pasted into `sh -c` it gives the next page.
#[test]
fn keys_are_taken_verbatim_and_printed_commands_paste_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger with space");
    let names = ["-108", "'1158", "a\"b", "--x", "z`$(date)"];
    {
        let (ledger, _) =
            payledger::Ledger::open(&dir, payledger::LedgerConfig::default()).unwrap();
        for name in names {
            let _ = ledger.begin(&key(name), &intent(100)).unwrap();
        }
    }
    let d = dir.to_str().unwrap();
    let mut sorted = names.map(str::to_string).to_vec();
    sorted.sort();
    // Page through the in-flight keys one at a time, by pasting each printed command.
    let mut seen = Vec::new();
    let mut out = payledger(&["list", d, "--state", "in-flight", "--limit", "1"]);
    loop {
        assert!(out.status.success(), "{}", text(&out.stderr));
        seen.extend(
            text(&out.stdout)
                .lines()
                .map(|l| l.split('\t').next().unwrap().to_string()),
        );
        let stderr = text(&out.stderr);
        let Some(next) = stderr.lines().find_map(|l| l.strip_prefix("next page: ")) else {
            break;
        };
        let command = next.replacen("payledger", env!("CARGO_BIN_EXE_payledger"), 1);
        out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    }
    assert_eq!(seen, sorted, "every key, in order, through pasted commands");
    for name in names {
        for args in [vec!["inspect", d, name], vec!["inspect", d, "--", name]] {
            let shown = payledger(&args);
            assert!(shown.status.success(), "{args:?}: {}", text(&shown.stderr));
            assert!(text(&shown.stdout).starts_with(&format!("key: {name}\n")));
        }
    }
    let after = payledger(&["list", d, "--state", "in-flight", "--after", "-108"]);
    assert!(after.status.success(), "{}", text(&after.stderr));
}

#[test]
fn health_alerts_with_one_line_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, _) = ledger_in(tmp.path(), Condition::Conflict);
    let d = dir.to_str().unwrap();
    let out = payledger(&["health", d]);
    assert_eq!(out.status.code(), Some(1));
    let line = text(&out.stdout);
    assert!(
        line.starts_with("ALERT: 1 key(s) in conflict") && line.lines().count() == 1,
        "{line}"
    );
    let json = payledger(&["health", d, "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["conflict"], 1);

    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, _) = ledger_in(tmp.path(), Condition::UnknownsPilingUp);
    let d = dir.to_str().unwrap();
    let old = payledger(&["health", d, "--unknown-age-max", "1h"]);
    assert_eq!(old.status.code(), Some(1), "{}", text(&old.stdout));
    assert!(text(&old.stdout).contains("unknown for"));
    let patient = payledger(&["health", d, "--unknown-age-max", "1d"]);
    assert_eq!(patient.status.code(), Some(0), "{}", text(&patient.stdout));
}

#[test]
fn tail_follows_events_appended_by_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, held) = ledger_in(tmp.path(), Condition::Locked);
    let ledger = held.ledger.unwrap();
    let tail = Command::new(env!("CARGO_BIN_EXE_payledger"))
        .args(["tail", dir.to_str().unwrap(), "--limit", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = ledger.begin(&key("live-1"), &intent(42)).unwrap();
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = text(&out.stdout);
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        lines.contains("live-1")
            && lines.contains("intent recorded")
            && lines.contains("attempt started")
    );
}

#[test]
fn a_corrupt_journal_is_reported_and_export_salvages_what_precedes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, _) = ledger_in(tmp.path(), Condition::CorruptSegment);
    let d = dir.to_str().unwrap();
    let segment = dir.join("00000000000000000000.seg");
    let bytes = std::fs::read(&segment).unwrap();
    let verify = payledger(&["verify", d]);
    assert_eq!(verify.status.code(), Some(1));
    let out = text(&verify.stdout);
    assert!(
        out.contains("journal corrupt: segment 0 at offset ") && out.contains("next: "),
        "{out}"
    );
    let export = payledger(&["export", d]);
    assert_eq!(export.status.code(), Some(3), "{}", text(&export.stderr));
    let lines: Vec<serde_json::Value> = text(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["sequence"].as_u64(), Some(i as u64 + 1));
    }
    let err = text(&export.stderr);
    assert!(
        err.contains(&format!("export stopped after {} events", lines.len()))
            && err.contains("segment 0 at offset"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "nothing is repaired silently"
    );
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["verify", m],
        vec!["stats", m],
        vec!["inspect", m, "k"],
        vec!["list", m, "--state", "unknown"],
        vec!["export", m],
        vec!["health", m],
        vec!["tail", m],
        vec!["rebuild-index", m],
    ] {
        let out = payledger(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with("error: ")
                && err.lines().count() == 1
                && err.contains("holds no payledger journal"),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "nothing was created");
    }
    let bad_args = payledger(&["list", tmp.path().to_str().unwrap(), "--state", "sideways"]);
    assert_eq!(bad_args.status.code(), Some(2));
    assert!(text(&bad_args.stderr).contains("unknown state"));
    assert_eq!(payledger(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        payledger(&["simulate", "--ops", "many"]).status.code(),
        Some(2)
    );
    let bad_key = payledger(&["inspect", tmp.path().to_str().unwrap(), "bad key"]);
    assert_eq!(bad_key.status.code(), Some(2));
}

/// `bench` measures inside a scratch directory of its own and leaves nothing behind.
#[test]
fn bench_reports_positive_figures_and_leaves_its_directory_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("disk");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("kept"), b"an operator's file").unwrap();
    let before = snapshot(&dir);
    let d = dir.to_str().unwrap();
    let out = payledger(&["bench", d, "--seconds", "0.2", "--callers", "1,2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["record_len"], 256);
    let figures = |figures: &serde_json::Value, callers: u64| {
        assert_eq!(figures["callers"], callers, "{figures}");
        assert!(figures["completed"].as_u64().unwrap() > 0, "{figures}");
        for name in ["per_s", "p50_us", "p99_us", "max_us"] {
            assert!(figures[name].as_f64().unwrap() > 0.0, "{name}: {figures}");
        }
        let (p50, p99, max) = (&figures["p50_us"], &figures["p99_us"], &figures["max_us"]);
        assert!(p50.as_f64() <= p99.as_f64() && p99.as_f64() <= max.as_f64());
    };
    figures(&report["sync"], 1);
    for part in ["journal", "ledger"] {
        let rows = report[part].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{part}");
        figures(&rows[0], 1);
        figures(&rows[1], 2);
    }
    let mut after = snapshot(&dir);
    // Creating and removing the scratch directory touches DIR's own modification time.
    after.insert(dir.clone(), before[&dir].clone());
    assert_eq!(after, before, "bench left something behind");

    let missing = tmp.path().join("nothing-here");
    let plain_file = dir.join("kept");
    for bad in [&missing, &plain_file] {
        let out = payledger(&["bench", bad.to_str().unwrap(), "--seconds", "0.1"]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.starts_with("error: bench directory ") && err.lines().count() == 1,
            "{err}"
        );
    }
    assert!(!missing.exists());
    for bad in [["--seconds", "0"], ["--callers", "0"]] {
        let out = payledger(&["bench", d, bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    assert_eq!(snapshot(&dir).len(), before.len());
}
