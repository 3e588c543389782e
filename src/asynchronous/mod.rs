//! The async adapter (feature `async`): every blocking entry point of [`Ledger`](crate::Ledger) as a future,
//! usable from any runtime (tokio, async-std, smol, a hand-rolled executor).
//!
//! Calls are queued to a bounded pool of worker threads that run the blocking API and reply on
//! a oneshot channel (the shape of `async-sqlite`), so an async task never blocks on
//! `fdatasync`, and concurrent tasks still share group commits: the workers' appends meet in
//! the journal's commit queue as threads' do.
//!
//! Invariants:
//! - a request is queued when its method is *called*, not when its future is first polled, and
//!   once queued it runs to the end whatever happens to the future: dropping a future never
//!   cancels an append (see [`AsyncLedger`] for the state each call leaves a key in);
//! - new calls are bounded: when `AsyncConfig::queue` of them wait, the next is refused at
//!   once with [`Error::Overloaded`](crate::Error::Overloaded), having written nothing; the
//!   outcome of an admitted attempt (`record`, `record_operation`) is never refused;
//! - the adapter adds no decision of its own: every answer is the blocking API's.

mod ledger;
mod pool;
mod reconciler;

pub use ledger::{AsyncLedger, AsyncProvider};
pub use pool::{AsyncConfig, Reply};
pub use reconciler::AsyncReconciler;
