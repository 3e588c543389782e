//! Must not compile: the simulator (and its broken modes) exist only with the `sim` feature.

fn main() {
    let _ = payledger::sim::SimConfig::default();
}
