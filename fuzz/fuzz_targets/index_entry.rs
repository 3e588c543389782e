//! Arbitrary bytes through the index entry decoder; a decoded entry must round-trip.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| payledger::fuzzing::index_entry(bytes));
