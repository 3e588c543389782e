//! Replays the checked-in fuzz corpora through the same entry points as the cargo-fuzz
//! targets, so that stable CI covers them, and checks that the corpora still mean something:
//! every file of a structured target decodes into at least one operation or event.
//!
//! Missing seeds of the structured targets are written with `PAYLEDGER_BLESS=1`.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .filter(|(name, _)| !name.rsplit('/').next().unwrap_or_default().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Seeds: deterministic pseudo-random inputs of a few lengths.
fn bless(target: &str, extra: &[(&str, Vec<u8>)]) {
    if std::env::var_os("PAYLEDGER_BLESS").is_none() {
        return;
    }
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for (i, len) in [24usize, 64, 160, 400, 1_000].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let path = dir.join(format!("seed_{i}"));
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
    for (name, bytes) in extra {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
}

#[test]
fn segment_corpus_replays_without_panic() {
    let files = corpus("segment");
    assert!(files.len() >= 8, "seed corpus is checked in");
    for (_, bytes) in files {
        payledger::fuzzing::segment(&bytes);
    }
}

#[test]
fn fold_corpus_replays_and_every_file_holds_events() {
    bless("fold", &[]);
    let files = corpus("fold");
    assert!(files.len() >= 8, "seed corpus is checked in");
    for (name, bytes) in files {
        assert!(
            !payledger::fuzzing::fold_steps(&bytes).is_empty(),
            "{name} decodes into no fold step"
        );
        payledger::fuzzing::fold(&bytes);
    }
}

#[test]
fn ledger_corpus_replays_and_every_file_holds_operations() {
    bless("ledger", &[]);
    let files = corpus("ledger");
    assert!(files.len() >= 5, "seed corpus is checked in");
    for (name, bytes) in files {
        assert!(
            !payledger::fuzzing::ledger_ops(&bytes).is_empty(),
            "{name} decodes into no operation"
        );
        payledger::fuzzing::ledger(&bytes);
    }
}

#[test]
fn index_entry_corpus_replays_without_panic() {
    bless(
        "index_entry",
        &[(
            "valid_unknown_entry",
            payledger::fuzzing::sample_index_entry(),
        )],
    );
    let files = corpus("index_entry");
    assert!(files.len() >= 5, "seed corpus is checked in");
    for (_, bytes) in files {
        payledger::fuzzing::index_entry(&bytes);
    }
}
