//! Must not compile: the simulated disk exists only with the `sim` feature.

fn main() {
    let _ = payledger::SimDisk::new(0);
}
