//! The `payledger` binary, run as a user would: the simulation, the operator commands on the
//! ledger it leaves, and every error case.

use std::path::Path;
use std::process::{Command, Output};

fn payledger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payledger"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Each segment file with a digest of its bytes.
fn segments(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            (
                p.display().to_string(),
                blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A ledger left by a short simulation.
fn simulated(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("ledger");
    let out = payledger(&[
        "simulate",
        "--seed",
        "3",
        "--ops",
        "3000",
        "--keys",
        "120",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    dir
}

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
    assert_eq!(first.status.code(), Some(0));
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
        "faults: ",
        "unknowns resolved: ",
        "reviews: ",
        "conflicts: ",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(prefix)),
            "missing {prefix:?} in\n{out}"
        );
    }
    assert!(out.contains(
        "replay: payledger simulate --seed 11 --ops 2000 --clients 4 --keys 80 --profile hostile"
    ));
    assert_eq!(out.lines().last(), Some("result: ok"));
}

#[test]
fn operator_commands_read_the_simulated_ledger_without_modifying_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = simulated(tmp.path());
    let d = dir.to_str().unwrap();
    let before = segments(&dir);

    let verify = payledger(&["verify", d]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    assert!(text(&verify.stdout).starts_with("journal sound: "));

    let list = payledger(&["list", d, "--state", "succeeded", "--limit", "5"]);
    assert!(list.status.success());
    let keys: Vec<String> = text(&list.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 5);
    assert!(text(&list.stderr).contains("next page: payledger list"));
    let next = payledger(&[
        "list",
        d,
        "--state",
        "succeeded",
        "--after",
        &keys[4],
        "--limit",
        "5",
    ]);
    let next_keys: Vec<String> = text(&next.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert!(
        next_keys.iter().all(|k| k > &keys[4]),
        "pages follow the key order"
    );

    let inspect = payledger(&["inspect", d, &keys[0]]);
    assert!(inspect.status.success());
    let shown = text(&inspect.stdout);
    assert!(
        shown.contains("state: succeeded")
            && shown.contains("attempt started")
            && shown.contains("pl_"),
        "{shown}"
    );

    let stats = payledger(&["stats", d]);
    let shown = text(&stats.stdout);
    assert!(
        stats.status.success()
            && shown.contains("succeeded")
            && shown.contains("index watermark: "),
        "{shown}"
    );

    let export = payledger(&["export", d, "--format", "jsonl"]);
    assert!(export.status.success());
    let lines: Vec<serde_json::Value> = text(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["sequence"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["chain_hash"].as_str().map(str::len), Some(64));
        assert!(line["event"]["key"].is_string());
    }

    let rebuild = payledger(&["rebuild-index", d]);
    assert!(rebuild.status.success(), "{}", text(&rebuild.stderr));
    assert!(text(&rebuild.stderr).contains("index rebuilt from"));
    let again = payledger(&["list", d, "--state", "succeeded", "--limit", "5"]);
    assert_eq!(again.stdout, list.stdout, "same answers after a rebuild");

    assert_eq!(segments(&dir), before, "no command modified the journal");
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    for args in [
        vec!["verify", missing.to_str().unwrap()],
        vec!["stats", missing.to_str().unwrap()],
        vec!["inspect", missing.to_str().unwrap(), "k"],
        vec!["list", missing.to_str().unwrap(), "--state", "unknown"],
        vec!["export", missing.to_str().unwrap()],
        vec!["rebuild-index", missing.to_str().unwrap()],
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

#[test]
fn a_locked_directory_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = simulated(tmp.path());
    let (_held, _) = payledger::Ledger::open(&dir, payledger::LedgerConfig::default()).unwrap();
    for args in [
        vec!["verify", dir.to_str().unwrap()],
        vec!["stats", dir.to_str().unwrap()],
    ] {
        let out = payledger(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains("is locked by another process") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn a_corrupt_journal_is_reported_with_segment_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = simulated(tmp.path());
    let first = dir.join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[64 + 30] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let verify = payledger(&["verify", dir.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1));
    let out = text(&verify.stdout);
    assert!(
        out.contains("journal corrupt: segment 0 at offset 64") && out.contains("next: "),
        "{out}"
    );
    let export = payledger(&["export", dir.to_str().unwrap()]);
    assert_eq!(export.status.code(), Some(2));
    assert!(text(&export.stderr).contains("journal corrupt in segment 0 at offset 64"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        bytes,
        "corruption is never repaired silently"
    );
}
