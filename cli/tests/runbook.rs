//! Issue 14: every command in `docs/runbook.md` is run against a ledger in the condition its
//! section describes (`<!-- condition: … -->`), and must exit as the runbook says (`# exit N`,
//! else 0). A command the tools do not support, or that behaves otherwise, fails here, so the
//! runbook cannot drift from the tools.

mod support;

use std::process::Command;

use support::*;

/// Each condition's section and the `payledger` command lines in its `sh` blocks.
fn sections() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/runbook.md"))
        .unwrap();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        if let Some(condition) = line
            .trim()
            .strip_prefix("<!-- condition: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        {
            sections.push((condition.to_string(), Vec::new()));
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if in_sh && trimmed.contains("payledger ") {
            let Some((_, commands)) = sections.last_mut() else {
                panic!("a command before any condition: {line}");
            };
            commands.push(trimmed.to_string());
        }
    }
    sections
}

fn condition(name: &str) -> Condition {
    match name {
        "UnknownsPilingUp" => Condition::UnknownsPilingUp,
        "ReviewGrowing" => Condition::ReviewGrowing,
        "Conflict" => Condition::Conflict,
        "HungCall" => Condition::HungCall,
        "CorruptSegment" => Condition::CorruptSegment,
        "DiskFull" => Condition::DiskFull,
        "Locked" => Condition::Locked,
        "IndexLost" => Condition::IndexLost,
        "IndexAhead" => Condition::IndexAhead,
        "Inconsistent" => Condition::Inconsistent,
        "RefundUnknown" => Condition::RefundUnknown,
        other => panic!("the runbook names an unknown condition {other}"),
    }
}

#[test]
fn every_runbook_command_works_in_the_condition_it_is_written_for() {
    let sections = sections();
    assert!(sections.len() >= 10, "every symptom has a section");
    let binary = env!("CARGO_BIN_EXE_payledger");
    let mut ran = 0;
    for (name, commands) in &sections {
        assert!(!commands.is_empty(), "{name}: a section without a command");
        let tmp = tempfile::tempdir().unwrap();
        let (dir, key, held) = ledger_in(tmp.path(), condition(name));
        let quoted = format!("'{}'", dir.display());
        for line in commands {
            let (command, comment) = line.split_once(" #").unwrap_or((line.as_str(), ""));
            let expected = comment
                .trim()
                .strip_prefix("exit ")
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .map_or(0, |code| code.parse::<i32>().unwrap());
            let command = command
                .replace("DIR", &quoted)
                .replace("KEY", &key)
                .replace(
                    "\"sequence\":S,",
                    &format!("\"sequence\":{},", held.bad_sequence.unwrap_or(0)),
                )
                .replace("payledger ", &format!("{binary} "));
            let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(expected),
                "{name}: `{line}` exited {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            );
            ran += 1;
        }
        drop(held);
    }
    eprintln!(
        "ran {ran} runbook commands in {} conditions",
        sections.len()
    );
}
