//! The one integration-test binary: each module tests one area through the public API.

mod cli;
mod codec;
mod crash;
mod fuzz_corpus;
mod journal;
mod journal_props;
mod ledger;
mod ledger_crash;
mod ledger_props;
mod model;
mod model_props;
mod sim;
mod support;
