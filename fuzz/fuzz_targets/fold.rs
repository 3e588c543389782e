//! Structured event sequences through the fold, checked against the target's own books.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| payledger::fuzzing::fold(bytes));
