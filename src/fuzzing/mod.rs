//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the test that replays their
//! checked-in corpora on stable (feature `testing`). Not part of the stable API.
//!
//! Invariant: every function here accepts arbitrary bytes; it panics only when an invariant of
//! payledger is broken (that is what the fuzzer looks for), never because the bytes are odd.
//!
//! Targets: `segment` (bytes as a journal segment), `fold` (a structured sequence of events
//! through the fold, checked against the target's own books), `ledger` (a structured sequence
//! of API operations, crashes and clock steps against the ledger on a simulated disk, checked
//! against a reference model), `index_entry` (the index entry decoder).

mod fold;
mod index_entry;
mod ledger;
mod segment;

pub use fold::{check_fold, fold, fold_steps};
pub use index_entry::{index_entry, sample_index_entry};
pub use ledger::{ledger, ledger_ops};
pub use segment::segment;
