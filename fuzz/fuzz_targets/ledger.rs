//! Sequences of API operations, crashes with power loss, index losses and clock steps against
//! the ledger on a simulated disk, checked against a reference model after every step.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| payledger::fuzzing::ledger(bytes));
