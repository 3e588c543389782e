//! Alert rules over [`Health`]: which figures mean an operator must act. The CLI's
//! `payledger health` and a service's health endpoint apply the same rules.
//!
//! Invariant: a key or an operation in conflict and a fatal failure always alert, whatever the
//! thresholds; the other rules alert only past a threshold the caller chooses (the unknown-age
//! and review thresholds apply to captures, voids and refunds as to charges).

use std::fmt;

use super::Health;
use crate::model::OperationKind;

/// When [`Health::alerts`] reports a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertThresholds {
    /// Alert when an outcome has been unknown longer than this many milliseconds.
    pub unknown_age_ms_max: u64,
    /// Alert when a provider call has been in flight longer than this many milliseconds.
    pub in_flight_age_ms_max: u64,
    /// Alert when more keys than this wait in manual review.
    pub in_review_max: usize,
    /// Alert when the index lags the journal by more than this many events.
    pub index_lag_max: u64,
}

impl Default for AlertThresholds {
    /// An hour unknown, ten minutes in flight, any key in review, 10 000 events of index lag.
    fn default() -> Self {
        Self {
            unknown_age_ms_max: 3_600_000,
            in_flight_age_ms_max: 600_000,
            in_review_max: 0,
            index_lag_max: 10_000,
        }
    }
}

/// A condition an operator must act on; `Display` is the one-line alert text, which
/// `docs/runbook.md` uses as its section titles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alert {
    /// The ledger stopped: every call fails until it is reopened.
    Stopped {
        /// The cause, as [`crate::FatalCause`] displays it.
        cause: String,
    },
    /// Keys in conflict: a possible double charge.
    Conflict {
        /// How many.
        keys: usize,
    },
    /// An outcome has been unknown too long.
    UnknownTooLong {
        /// Age of the oldest, in milliseconds.
        age_ms: u64,
        /// Keys unknown.
        keys: usize,
    },
    /// A provider call has been in flight too long (a hung call).
    InFlightTooLong {
        /// Age of the oldest, in milliseconds.
        age_ms: u64,
    },
    /// Too many keys wait in manual review.
    ReviewGrowing {
        /// How many.
        keys: usize,
    },
    /// The index lags the journal.
    IndexLagging {
        /// Events the index does not reflect yet.
        events: u64,
    },
    /// Captures, voids or refunds in conflict: the provider contradicted them, or reported more
    /// than the ledger allowed.
    OperationConflict {
        /// Their kind.
        kind: OperationKind,
        /// How many.
        operations: usize,
    },
    /// A capture, void or refund has been unknown too long.
    OperationUnknownTooLong {
        /// Their kind.
        kind: OperationKind,
        /// Age of the oldest, in milliseconds.
        age_ms: u64,
        /// How many are unknown.
        operations: usize,
    },
    /// Captures, voids or refunds wait in manual review.
    OperationReviewGrowing {
        /// Their kind.
        kind: OperationKind,
        /// How many.
        operations: usize,
    },
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped { cause } => write!(f, "the ledger stopped: {cause}"),
            Self::Conflict { keys } => write!(
                f,
                "{keys} key(s) in conflict (a possible double charge: refund or settle)"
            ),
            Self::UnknownTooLong { age_ms, keys } => write!(
                f,
                "an outcome has been unknown for {} ({keys} unknown)",
                Age(*age_ms)
            ),
            Self::InFlightTooLong { age_ms } => {
                write!(f, "a provider call has been in flight for {}", Age(*age_ms))
            }
            Self::ReviewGrowing { keys } => write!(f, "{keys} key(s) wait in manual review"),
            Self::IndexLagging { events } => {
                write!(f, "the index lags the journal by {events} events")
            }
            Self::OperationConflict { kind, operations } => {
                write!(f, "{operations} {kind}(s) in conflict")
            }
            Self::OperationUnknownTooLong {
                kind,
                age_ms,
                operations,
            } => write!(
                f,
                "a {kind} has been unknown for {} ({operations} unknown)",
                Age(*age_ms)
            ),
            Self::OperationReviewGrowing { kind, operations } => {
                write!(f, "{operations} {kind}(s) wait in manual review")
            }
        }
    }
}

/// An age in milliseconds, shown to the second: `2h 5m 3s`, `4m 0s`, `12s`.
struct Age(u64);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0 / 1000;
        let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
        match (h, m) {
            (0, 0) => write!(f, "{s}s"),
            (0, _) => write!(f, "{m}m {s}s"),
            _ => write!(f, "{h}h {m}m {s}s"),
        }
    }
}

impl Health {
    /// The alerts these figures raise under `thresholds`, most urgent first; empty when all is
    /// well.
    ///
    /// # Example
    /// ```
    /// use payledger::{AlertThresholds, Health};
    ///
    /// let health = Health { conflict: 1, ..Health::default() };
    /// let alerts = health.alerts(&AlertThresholds::default());
    /// assert_eq!(alerts.len(), 1);
    /// assert!(alerts[0].to_string().contains("conflict"));
    /// ```
    pub fn alerts(&self, thresholds: &AlertThresholds) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if let Some(fatal) = &self.fatal {
            alerts.push(Alert::Stopped {
                cause: fatal.to_string(),
            });
        }
        if self.conflict > 0 {
            alerts.push(Alert::Conflict {
                keys: self.conflict,
            });
        }
        if let Some(age_ms) = self.unknown_age_ms_max
            && age_ms > thresholds.unknown_age_ms_max
        {
            alerts.push(Alert::UnknownTooLong {
                age_ms,
                keys: self.unknown,
            });
        }
        if let Some(age_ms) = self.in_flight_age_ms_max
            && age_ms > thresholds.in_flight_age_ms_max
        {
            alerts.push(Alert::InFlightTooLong { age_ms });
        }
        if self.in_review > thresholds.in_review_max {
            alerts.push(Alert::ReviewGrowing {
                keys: self.in_review,
            });
        }
        for op in &self.operations {
            if op.conflict > 0 {
                alerts.push(Alert::OperationConflict {
                    kind: op.kind,
                    operations: op.conflict,
                });
            }
            if let Some(age_ms) = op.unknown_age_ms_max
                && age_ms > thresholds.unknown_age_ms_max
            {
                alerts.push(Alert::OperationUnknownTooLong {
                    kind: op.kind,
                    age_ms,
                    operations: op.unknown,
                });
            }
            if op.in_review > thresholds.in_review_max {
                alerts.push(Alert::OperationReviewGrowing {
                    kind: op.kind,
                    operations: op.in_review,
                });
            }
        }
        let lag = self.last_sequence.0.saturating_sub(self.index_watermark.0);
        if lag > thresholds.index_lag_max {
            alerts.push(Alert::IndexLagging { events: lag });
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sequence;

    fn strict() -> AlertThresholds {
        AlertThresholds {
            unknown_age_ms_max: 1_000,
            in_flight_age_ms_max: 1_000,
            in_review_max: 2,
            index_lag_max: 5,
        }
    }

    #[test]
    fn each_rule_alerts_past_its_threshold_and_not_at_it() {
        let at = Health {
            unknown: 1,
            unknown_age_ms_max: Some(1_000),
            in_flight: 1,
            in_flight_age_ms_max: Some(1_000),
            in_review: 2,
            last_sequence: Sequence(15),
            index_watermark: Sequence(10),
            ..Health::default()
        };
        assert_eq!(at.alerts(&strict()), vec![]);
        let past = Health {
            unknown_age_ms_max: Some(1_001),
            in_flight_age_ms_max: Some(1_001),
            in_review: 3,
            index_watermark: Sequence(9),
            ..at
        };
        assert_eq!(
            past.alerts(&strict()),
            vec![
                Alert::UnknownTooLong {
                    age_ms: 1_001,
                    keys: 1
                },
                Alert::InFlightTooLong { age_ms: 1_001 },
                Alert::ReviewGrowing { keys: 3 },
                Alert::IndexLagging { events: 6 },
            ]
        );
    }

    #[test]
    fn operations_in_doubt_alert_by_kind() {
        let health = Health {
            operations: vec![crate::ledger::OperationHealth {
                kind: OperationKind::Refund,
                unknown: 2,
                in_review: 3,
                conflict: 1,
                unknown_age_ms_max: Some(1_001),
            }],
            ..Health::default()
        };
        let alerts = health.alerts(&strict());
        assert_eq!(
            alerts,
            vec![
                Alert::OperationConflict {
                    kind: OperationKind::Refund,
                    operations: 1
                },
                Alert::OperationUnknownTooLong {
                    kind: OperationKind::Refund,
                    age_ms: 1_001,
                    operations: 2
                },
                Alert::OperationReviewGrowing {
                    kind: OperationKind::Refund,
                    operations: 3
                },
            ]
        );
        assert_eq!(
            alerts[1].to_string(),
            "a refund has been unknown for 1s (2 unknown)"
        );
    }

    #[test]
    fn ages_read_as_hours_minutes_seconds() {
        assert_eq!(Age(999).to_string(), "0s");
        assert_eq!(Age(61_000).to_string(), "1m 1s");
        assert_eq!(Age(7_503_000).to_string(), "2h 5m 3s");
    }

    #[test]
    fn a_conflict_and_a_stop_alert_whatever_the_thresholds() {
        let lax = AlertThresholds {
            unknown_age_ms_max: u64::MAX,
            in_flight_age_ms_max: u64::MAX,
            in_review_max: usize::MAX,
            index_lag_max: u64::MAX,
        };
        let health = Health {
            conflict: 1,
            fatal: Some(crate::error::FatalCause::new(
                "writing x.seg",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            )),
            ..Health::default()
        };
        let alerts = health.alerts(&lax);
        assert_eq!(alerts.len(), 2);
        assert!(matches!(alerts[0], Alert::Stopped { .. }));
        assert_eq!(alerts[1], Alert::Conflict { keys: 1 });
    }
}
