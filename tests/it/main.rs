//! The one integration-test binary: each module tests one area through the public API.

mod applier;
mod asynchronous;
mod codec;
mod crash;
mod default_build;
mod fjall_index;
mod fuzz_corpus;
mod journal;
mod journal_faults;
mod journal_props;
mod journal_recovery;
mod ledger;
mod ledger_crash;
mod ledger_props;
mod model;
mod model_props;
mod operations;
mod operator;
mod power_loss;
mod promise;
mod segment_fixtures;
mod sim;
mod store;
mod support;
mod variants;
