//! Must not compile: the fuzzing entry points exist only with the `testing` feature.

fn main() {
    payledger::fuzzing::segment(&[]);
}
