//! Replays the checked-in fuzz corpora through the same entry points as the cargo-fuzz
//! targets, so that stable CI covers them.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
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
fn fold_corpus_replays_without_panic() {
    let files = corpus("fold");
    assert!(files.len() >= 8, "seed corpus is checked in");
    for (_, bytes) in files {
        payledger::fuzzing::fold(&bytes);
    }
}
