//! Opens arbitrary bytes as a journal segment and decodes arbitrary records.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| payledger::fuzzing::segment(bytes));
