//! What a simulation did and found, and how it is printed.
//!
//! Invariant: the report is a function of the run alone (ordered maps, no timings), so the same
//! seed and configuration print the same bytes.

use std::collections::BTreeMap;
use std::fmt;

use crate::journal::simdisk::PowerLossCounts;

/// What a simulation did and found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Count of each operation.
    pub operations: BTreeMap<&'static str, u64>,
    /// Simulated crashes (each followed by reopen and recovery).
    pub crashes: u64,
    /// Torn tails cut by recovery.
    pub torn_tails: u64,
    /// What power losses did to unsynced pages.
    pub power_loss: PowerLossCounts,
    /// Crashes after which the index was rolled back to an older snapshot.
    pub index_rollbacks: u64,
    /// Crashes after which the index was lost.
    pub index_losses: u64,
    /// Faults injected, by type.
    pub faults: BTreeMap<&'static str, u64>,
    /// Unknown outcomes settled by the reconciler.
    pub unknowns_resolved: u64,
    /// Keys per final phase.
    pub final_phases: BTreeMap<&'static str, u64>,
    /// Orders the provider charged twice without having lost a charge, or whose lost charge
    /// did not end in conflict.
    pub double_charges: u64,
    /// Orders charged twice because the provider lost a charge, each a conflict in the ledger.
    pub explained_double_charges: u64,
    /// Conflicts settled inside the ledger by refunding the duplicate charge.
    pub conflicts_settled: u64,
    /// Refunds a client meant to make once that the provider executed more than once.
    pub double_refunds: u64,
    /// Orders the provider refunded more than it captured (or captured more than authorised).
    pub over_refunds: u64,
    /// Acknowledged journal records missing after a crash.
    pub acknowledged_lost: u64,
    /// Keys neither settled, in review nor in conflict after healing.
    pub unresolved_after_heal: u64,
    /// The first violation found.
    pub violation: Option<String>,
    /// The command that replays this run.
    pub replay: String,
}

impl SimReport {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    pub(super) fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |map: &BTreeMap<&'static str, u64>| {
            if map.is_empty() {
                return "none".to_string();
            }
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "operations: {}", join(&self.operations))?;
        writeln!(
            f,
            "crashes: {} (torn tails cut: {})",
            self.crashes, self.torn_tails
        )?;
        writeln!(
            f,
            "power loss: unsynced pages lost {}, torn {}, kept {}; index survived rollbacks {}, losses {}",
            self.power_loss.pages_lost,
            self.power_loss.pages_torn,
            self.power_loss.pages_kept,
            self.index_rollbacks,
            self.index_losses
        )?;
        writeln!(f, "faults: {}", join(&self.faults))?;
        writeln!(f, "unknowns resolved: {}", self.unknowns_resolved)?;
        writeln!(
            f,
            "reviews: {}",
            self.final_phases.get("in-review").copied().unwrap_or(0)
        )?;
        writeln!(
            f,
            "conflicts: {} (orders charged twice because the provider lost a charge: {}; settled by refunding the duplicate: {})",
            self.final_phases.get("conflict").copied().unwrap_or(0),
            self.explained_double_charges,
            self.conflicts_settled
        )?;
        writeln!(f, "final states: {}", join(&self.final_phases))?;
        writeln!(f, "double charges: {}", self.double_charges)?;
        writeln!(f, "double refunds: {}", self.double_refunds)?;
        writeln!(f, "over-refunds: {}", self.over_refunds)?;
        writeln!(f, "acknowledged events lost: {}", self.acknowledged_lost)?;
        writeln!(f, "unresolved after heal: {}", self.unresolved_after_heal)?;
        writeln!(f, "replay: {}", self.replay)?;
        match &self.violation {
            None => write!(f, "result: ok"),
            Some(what) => write!(f, "result: VIOLATION {what} (replay: {})", self.replay),
        }
    }
}
