//! Decodes arbitrary bytes as events and folds them.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| payledger::fuzzing::fold(bytes));
