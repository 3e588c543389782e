//! The simulator is tested too: deliberately broken behaviour must be caught as a violation
//! within a bounded number of seeds, and the correct system must pass many seeds.

use payledger::sim::{Broken, Profile, SimConfig, run};

fn config(seed: u64, ops: u64, broken: Option<Broken>) -> SimConfig {
    SimConfig {
        seed,
        ops,
        clients: 8,
        keys: 150,
        profile: Profile::Stormy,
        dir: None,
        broken,
    }
}

/// The first seed below `bound` whose run reports a violation.
fn caught_within(broken: Broken, bound: u64) -> Option<(u64, String)> {
    (0..bound).find_map(|seed| {
        let report = run(config(seed, 4_000, Some(broken)), |_, _| {}).unwrap();
        report.violation.map(|v| (seed, v))
    })
}

#[test]
fn retrying_a_timed_out_charge_with_a_new_key_is_caught() {
    let (seed, violation) =
        caught_within(Broken::RetryWithNewKey, 20).expect("caught within 20 seeds");
    assert!(violation.contains("charged"), "seed {seed}: {violation}");
}

#[test]
fn trusting_not_found_at_once_is_caught() {
    let (seed, violation) =
        caught_within(Broken::TrustNotFoundAtOnce, 20).expect("caught within 20 seeds");
    assert!(violation.contains("charged"), "seed {seed}: {violation}");
}

#[test]
fn forgetting_unknown_on_replay_is_caught() {
    let (seed, violation) =
        caught_within(Broken::ForgetUnknownOnReplay, 40).expect("caught within 40 seeds");
    assert!(violation.contains("charged"), "seed {seed}: {violation}");
}

#[test]
fn retrying_a_timed_out_refund_with_a_new_request_id_is_caught() {
    let (seed, violation) =
        caught_within(Broken::RetryRefundWithNewId, 20).expect("caught within 20 seeds");
    assert!(
        violation.contains("refund") && violation.contains("executed 2 times"),
        "seed {seed}: {violation}"
    );
}

#[test]
fn same_seed_same_report() {
    let a = run(config(5, 3_000, None), |_, _| {}).unwrap().to_string();
    let b = run(config(5, 3_000, None), |_, _| {}).unwrap().to_string();
    assert_eq!(a, b);
    let c = run(config(6, 3_000, None), |_, _| {}).unwrap().to_string();
    assert_ne!(a, c, "the seed matters");
}

#[test]
fn many_seeds_hold_every_invariant() {
    let seeds: u64 = std::env::var("PAYLEDGER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let (mut steps, mut crashes, mut provider_calls, mut conflicts) = (0, 0, 0, 0);
    for seed in 0..seeds {
        let profile = [Profile::Calm, Profile::Stormy, Profile::Hostile][(seed % 3) as usize];
        let cfg = SimConfig {
            profile,
            ..config(1_000 + seed, 5_000, None)
        };
        let report = run(cfg, |_, _| {}).unwrap();
        assert!(report.ok(), "seed {}: {report}", 1_000 + seed);
        assert_eq!(
            (
                report.double_charges,
                report.double_refunds,
                report.over_refunds,
                report.acknowledged_lost,
                report.unresolved_after_heal
            ),
            (0, 0, 0, 0, 0)
        );
        steps += 5_000;
        crashes += report.crashes;
        provider_calls += report
            .operations
            .get("provider calls")
            .copied()
            .unwrap_or(0);
        conflicts += report.explained_double_charges;
    }
    eprintln!(
        "{seeds} seeds: {steps} steps, {provider_calls} provider calls, {crashes} crashes, {conflicts} lost charges surfaced as conflicts"
    );
    assert!(crashes > seeds, "crashes were exercised");
}
