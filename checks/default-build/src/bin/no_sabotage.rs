//! Must not compile: the replay sabotage exists only with the `testing` feature.

fn main() {
    let _ = payledger::LedgerConfig {
        sabotage_forget_unknown_on_replay: true,
        ..payledger::LedgerConfig::default()
    };
}
