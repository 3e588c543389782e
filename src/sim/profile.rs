//! How hostile the simulated world is: the profiles and their fault rates.
//!
//! Invariant: a profile's rates are constants, so a seed and a profile decide every fault.

use std::fmt;

/// How hostile the simulated world is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    /// Rare faults.
    Calm,
    /// Frequent faults of every kind (the default).
    #[default]
    Stormy,
    /// Faults everywhere, often.
    Hostile,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "calm" => Ok(Profile::Calm),
            "stormy" => Ok(Profile::Stormy),
            "hostile" => Ok(Profile::Hostile),
            other => Err(format!(
                "unknown profile {other:?}; one of calm, stormy, hostile"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Calm => "calm",
            Profile::Stormy => "stormy",
            Profile::Hostile => "hostile",
        })
    }
}

/// Fault probabilities of a profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    pub refused: f64,
    pub server_error_unprocessed: f64,
    pub decline: f64,
    pub lose_charge: f64,
    pub webhook: f64,
    pub reply_lost: f64,
    pub reply_late: f64,
    pub server_error_processed: f64,
    pub malformed: f64,
    pub slow_reply: f64,
    pub query_outage: f64,
    /// Per provider call: the client code around the call panics.
    pub provider_panic: f64,
    /// Per provider call: the call hangs far beyond the ticket lease.
    pub hung_call: f64,
    /// Per step.
    pub crash: f64,
    pub disk_fault: f64,
    /// Per step: the wall clock steps, by more than the skew margin, either way.
    pub wall_step: f64,
    pub double_click: f64,
    /// Per reopen: an operator first points `index_dir` at the ledger directory.
    pub misplaced_index: f64,
}

impl Profile {
    pub(crate) fn rates(self) -> Rates {
        let scale = match self {
            Profile::Calm => 0.2,
            Profile::Stormy => 1.0,
            Profile::Hostile => 2.5,
        };
        Rates {
            refused: 0.04 * scale,
            server_error_unprocessed: 0.03 * scale,
            decline: 0.08,
            lose_charge: 0.01 * scale,
            webhook: 0.5,
            reply_lost: 0.05 * scale,
            reply_late: 0.05 * scale,
            server_error_processed: 0.03 * scale,
            malformed: 0.02 * scale,
            slow_reply: 0.05 * scale,
            query_outage: 0.1 * scale,
            provider_panic: 0.01 * scale,
            hung_call: 0.01 * scale,
            crash: 0.004 * scale,
            disk_fault: 0.002 * scale,
            wall_step: 0.01 * scale,
            double_click: 0.1,
            misplaced_index: 0.1,
        }
    }
}
