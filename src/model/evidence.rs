//! Weighing evidence (a webhook, a settlement line, a late reply) against a key's state.
//!
//! Invariant: evidence either agrees, settles the attempt in doubt, or contradicts; a
//! contradiction is never absorbed, it must be recorded as a conflict. A charge the key already
//! holds (same attempt, transaction and amount) always agrees: an echo is never a new conflict.

use super::event::Finding;
use super::key::AttemptNumber;
use super::rejection::RejectionReason;
use super::state::{PaymentState, Phase};

/// What a piece of evidence means for a state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// It confirms what is held; nothing changes.
    Agrees,
    /// It settles the possibly-charged attempt into this phase.
    Settles(Phase),
    /// It contradicts what is held: record a `ConflictDetected` event.
    Contradicts,
}

impl PaymentState {
    /// What evidence about `attempt` means for this state, without changing it.
    ///
    /// # Errors
    /// [`RejectionReason::UnknownAttempt`] for an attempt that never started.
    pub fn weigh(
        &self,
        attempt: AttemptNumber,
        finding: &Finding,
    ) -> Result<Verdict, RejectionReason> {
        if attempt.get() > self.attempts_started {
            return Err(RejectionReason::UnknownAttempt {
                attempt: attempt.get(),
            });
        }
        // A charge the key already holds (an echo: a duplicate webhook, another settlement line)
        // tells nothing new, whatever the phase.
        if let Finding::Charged {
            transaction_id,
            amount,
        } = finding
            && self.charges.iter().any(|c| {
                c.attempt == attempt && c.transaction_id == *transaction_id && c.amount == *amount
            })
        {
            return Ok(Verdict::Agrees);
        }
        let current = self.phase.possibly_charged() == Some(attempt);
        let verdict = match (&self.phase, finding) {
            (Phase::Conflict { .. }, Finding::Charged { .. }) => Verdict::Contradicts,
            (Phase::Conflict { .. }, Finding::Declined { .. }) => Verdict::Agrees,
            (
                Phase::InFlight { .. } | Phase::Unknown { .. } | Phase::InReview { .. },
                Finding::Charged {
                    transaction_id,
                    amount,
                },
            ) if current => {
                if self.amount_matches(*amount) {
                    Verdict::Settles(Phase::Succeeded {
                        attempt,
                        transaction_id: transaction_id.clone(),
                        amount: *amount,
                    })
                } else {
                    Verdict::Contradicts
                }
            }
            (
                Phase::InFlight { .. } | Phase::Unknown { .. } | Phase::InReview { .. },
                Finding::Declined { code },
            ) if current => Verdict::Settles(Phase::Declined {
                attempt,
                code: code.clone(),
            }),
            (
                Phase::Succeeded {
                    transaction_id,
                    amount,
                    ..
                },
                Finding::Charged {
                    transaction_id: found_id,
                    amount: found_amount,
                },
            ) if current => {
                if transaction_id == found_id && amount == found_amount {
                    Verdict::Agrees
                } else {
                    Verdict::Contradicts
                }
            }
            (Phase::Succeeded { .. }, Finding::Declined { .. }) if current => Verdict::Contradicts,
            // Everything else is about an attempt the ledger holds as not charged: a charge
            // there is exactly the double charge this crate exists to surface.
            (_, Finding::Charged { .. }) => Verdict::Contradicts,
            (_, Finding::Declined { .. }) => Verdict::Agrees,
        };
        Ok(verdict)
    }
}
