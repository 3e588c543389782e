//! Model test of the journal on the simulated disk: random appends, crashes (dropping or tearing
//! unsynced writes), clean reopens and injected write/sync failures, against a model that knows
//! which records were acknowledged.

use std::path::PathBuf;
use std::sync::Arc;

use payledger::journal::simdisk::{CrashMode, SimDisk};
use payledger::journal::{Journal, JournalConfig};
use payledger::{Error, Sequence};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append { records: usize, len: usize },
    Crash(CrashMode),
    Reopen,
    FailNextWrite,
    FailNextSync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..=3, 1usize..400).prop_map(|(records, len)| Op::Append { records, len }),
        1 => Just(Op::Crash(CrashMode::DropUnsynced)),
        1 => Just(Op::Crash(CrashMode::TearUnsynced)),
        1 => Just(Op::Reopen),
        1 => Just(Op::FailNextWrite),
        1 => Just(Op::FailNextSync),
    ]
}

fn open(disk: &SimDisk) -> Journal {
    let config = JournalConfig {
        segment_len: 4096,
        create_if_missing: true,
    };
    Journal::open_on(Arc::new(disk.clone()), PathBuf::from("/j"), config)
        .unwrap()
        .0
}

fn contents(journal: &Journal) -> Vec<Vec<u8>> {
    journal
        .read_from(Sequence(1))
        .map(|r| r.unwrap().payload)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn journal_matches_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..80)) {
        let disk = SimDisk::new(seed);
        let mut journal = Some(open(&disk));
        let mut acked: Vec<Vec<u8>> = Vec::new();
        // Appends that failed: they may or may not have reached the disk, but only whole.
        let mut maybe: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut poisoned = false;
        let mut counter = 0u32;
        let reopen = |journal: &mut Option<Journal>, acked: &mut Vec<Vec<u8>>, maybe: &mut Vec<Vec<Vec<u8>>>, crash: Option<CrashMode>| {
            drop(journal.take());
            // Injected faults target appends; one still armed would fail the reopen itself.
            disk.fail_next_writes(0);
            disk.fail_next_syncs(0);
            if let Some(mode) = crash {
                disk.crash(mode);
            }
            let reopened = open(&disk);
            let found = contents(&reopened);
            prop_assert!(found.len() >= acked.len(), "acknowledged records lost");
            prop_assert_eq!(&found[..acked.len()], &acked[..]);
            let mut rest = &found[acked.len()..];
            for group in maybe.iter() {
                if rest.is_empty() {
                    break;
                }
                prop_assert!(rest.len() >= group.len(), "a partial atomic append survived");
                prop_assert_eq!(&rest[..group.len()], &group[..]);
                rest = &rest[group.len()..];
            }
            prop_assert!(rest.is_empty(), "records nobody appended");
            *acked = found;
            maybe.clear();
            reopened.verify().unwrap();
            *journal = Some(reopened);
            Ok(())
        };
        for op in ops {
            match op {
                Op::Append { records, len } => {
                    let group: Vec<Vec<u8>> = (0..records)
                        .map(|_| {
                            counter += 1;
                            let mut body = counter.to_le_bytes().to_vec();
                            body.resize(len.max(4), 0xA5);
                            body
                        })
                        .collect();
                    let result = journal.as_ref().unwrap().append(group.clone());
                    match result {
                        Ok(seqs) => {
                            prop_assert!(!poisoned, "an append succeeded on a poisoned journal");
                            prop_assert_eq!(seqs.start().0 as usize, acked.len() + maybe.iter().map(Vec::len).sum::<usize>() + 1);
                            prop_assert!(maybe.is_empty());
                            acked.extend(group);
                        }
                        Err(Error::Poisoned { .. }) => prop_assert!(poisoned),
                        Err(Error::AppendFailed { .. }) => {
                            prop_assert!(!poisoned);
                            poisoned = true;
                            maybe.push(group);
                        }
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Op::Crash(mode) => {
                    reopen(&mut journal, &mut acked, &mut maybe, Some(mode))?;
                    poisoned = false;
                }
                Op::Reopen => {
                    reopen(&mut journal, &mut acked, &mut maybe, None)?;
                    poisoned = false;
                }
                Op::FailNextWrite => disk.fail_next_writes(1),
                Op::FailNextSync => disk.fail_next_syncs(1),
            }
        }
        reopen(&mut journal, &mut acked, &mut maybe, Some(CrashMode::TearUnsynced))?;
    }
}
