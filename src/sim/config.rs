//! What to simulate: seed, size, profile, and (with the `testing` feature only) a deliberately
//! broken behaviour for the simulator's self-test.
//!
//! Invariant: without the `testing` feature no broken behaviour can be switched on.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::profile::Profile;

/// A deliberately broken behaviour, for testing that the simulator catches it. Exists only
/// with the `testing` feature.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The client retries a timed-out charge with a new idempotency key.
    RetryWithNewKey,
    /// The reconciler trusts the first "not found" at once, ignoring the visibility delay.
    TrustNotFoundAtOnce,
    /// Reopening forgets that orphaned attempts may have charged (marks them not sent).
    ForgetUnknownOnReplay,
    /// The client retries a timed-out refund under a new request id.
    RetryRefundWithNewId,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed every random choice follows.
    pub seed: u64,
    /// Scheduler steps before the heal phase.
    pub ops: u64,
    /// Logical clients.
    pub clients: usize,
    /// Orders (one idempotency key each, unless a broken client makes more).
    pub keys: usize,
    /// Fault profile.
    pub profile: Profile,
    /// Write the resulting ledger here (real file system) for inspection.
    pub dir: Option<PathBuf>,
    /// A deliberately broken behaviour (tests only).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub broken: Option<Broken>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            ops: 20_000,
            clients: 16,
            keys: 1_000,
            profile: Profile::Stormy,
            dir: None,
            #[cfg(feature = "testing")]
            broken: None,
        }
    }
}

/// The broken behaviours switched on for a run: all off unless the `testing` feature sets one.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sabotage {
    pub(super) retry_with_new_key: bool,
    pub(super) trust_not_found_at_once: bool,
    pub(super) retry_refund_with_new_id: bool,
    #[cfg(feature = "testing")]
    pub(super) forget_unknown_on_replay: bool,
}

impl SimConfig {
    pub(super) fn sabotage(&self) -> Sabotage {
        #[cfg(feature = "testing")]
        if let Some(broken) = self.broken {
            return Sabotage {
                retry_with_new_key: broken == Broken::RetryWithNewKey,
                trust_not_found_at_once: broken == Broken::TrustNotFoundAtOnce,
                forget_unknown_on_replay: broken == Broken::ForgetUnknownOnReplay,
                retry_refund_with_new_id: broken == Broken::RetryRefundWithNewId,
            };
        }
        Sabotage::default()
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "payledger simulate --seed {} --ops {} --clients {} --keys {} --profile {}",
            self.seed, self.ops, self.clients, self.keys, self.profile
        );
        if let Some(dir) = &self.dir {
            let _ = write!(command, " --dir {}", dir.display());
        }
        command
    }
}
