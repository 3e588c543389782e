//! Issue 8.8: a default build of the library ships no test-only behaviour. The tests run with
//! the `testing` feature, so this checks a separate default build of small programs.

use std::path::Path;
use std::process::Command;

fn check(bin: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("target/default-build"))
        .env_remove("RUSTFLAGS")
        .args([
            "check",
            "--offline",
            "--quiet",
            "--message-format",
            "short",
            "-p",
            "payledger-default-build",
            "--bin",
            bin,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_default_build_has_no_test_switch_no_simulator_and_no_fuzzing_entry_points() {
    let (ok, stderr) = check("api");
    assert!(ok, "the default API must compile: {stderr}");
    for (bin, expected) in [
        ("no_sabotage", "E0560"),
        ("no_fuzzing", "E0433"),
        ("no_sim", "E0433"),
        ("no_simdisk", "E0433"),
    ] {
        let (ok, stderr) = check(bin);
        assert!(!ok, "{bin} compiled against a default build");
        assert!(stderr.contains(expected), "{bin}: {stderr}");
    }
}
