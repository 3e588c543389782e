//! The gate's pure decision: what a request with a given intent may do, given a key's state.
//!
//! Invariant: the decision is a function of the state and the requested fingerprint only; an
//! attempt is possible only from `Ready` (or `Vacant`), and a key with a recorded contradiction
//! sends nobody to the provider.

use std::convert::Infallible;
use std::fmt;

use super::intent::Fingerprint;
use super::key::{Amount, AttemptNumber, DeclineCode, TransactionId};
use super::state::{PaymentState, Phase};

/// An attempt the gate may start: its number, and whether the key's intent must be recorded
/// with it (a new key).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AttemptPlan {
    /// The attempt to start.
    pub attempt: AttemptNumber,
    /// The key has no intent yet.
    pub record_intent: bool,
}

/// What the gate answers a request with a given fingerprint: the one answer type from the pure
/// decision to the caller. Every variant is a normal outcome the caller must handle. `A` is what
/// an attempt comes with: the pure decision carries an [`AttemptPlan`]; the ledger's `begin`
/// carries a durable attempt's ticket (its [`Begin`](crate::Begin) is `Decision<Ticket>`).
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "every answer of the gate must be relayed to the client"]
pub enum Decision<A = AttemptPlan> {
    /// Call the provider now: the attempt this carries.
    Attempt(A),
    /// The key charged: replay this result.
    AlreadySucceeded {
        /// The attempt that charged.
        attempt: AttemptNumber,
        /// The provider's id.
        transaction_id: TransactionId,
        /// The amount charged.
        amount: Amount,
    },
    /// The key was declined: replay the decline.
    AlreadyDeclined {
        /// The declined attempt.
        attempt: AttemptNumber,
        /// The provider's code.
        code: DeclineCode,
    },
    /// Every allowed attempt failed without charging.
    AttemptsExhausted {
        /// The last attempt.
        attempt: AttemptNumber,
    },
    /// Another caller holds the attempt right now.
    InFlight {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// The outcome is unknown; the reconciler will settle it.
    AwaitingReconciliation {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// A human is settling the key.
    InReview {
        /// The attempt.
        attempt: AttemptNumber,
    },
    /// Evidence contradicts the ledger; a human must act.
    InConflict {
        /// The attempt the evidence is about.
        attempt: AttemptNumber,
    },
    /// The key was used for a different intent. Nothing may be appended.
    KeyReused {
        /// The fingerprint on record.
        recorded: Fingerprint,
        /// The fingerprint requested.
        requested: Fingerprint,
    },
}

impl<A> Decision<A> {
    /// Splits off the attempt: `Ok` with it, or `Err` with an answer that provably holds none
    /// (its attempt type is uninhabited), so callers never have to claim a case is impossible.
    pub fn into_attempt(self) -> Result<A, Decision<Infallible>> {
        Err(match self {
            Decision::Attempt(a) => return Ok(a),
            Decision::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Decision::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            },
            Decision::AlreadyDeclined { attempt, code } => {
                Decision::AlreadyDeclined { attempt, code }
            }
            Decision::AttemptsExhausted { attempt } => Decision::AttemptsExhausted { attempt },
            Decision::InFlight { attempt } => Decision::InFlight { attempt },
            Decision::AwaitingReconciliation { attempt } => {
                Decision::AwaitingReconciliation { attempt }
            }
            Decision::InReview { attempt } => Decision::InReview { attempt },
            Decision::InConflict { attempt } => Decision::InConflict { attempt },
            Decision::KeyReused {
                recorded,
                requested,
            } => Decision::KeyReused {
                recorded,
                requested,
            },
        })
    }

    /// The same answer with its attempt (if it is one) turned into `B`; every other variant is
    /// carried over unchanged.
    pub fn map_attempt<B>(self, f: impl FnOnce(A) -> B) -> Decision<B> {
        match self.into_attempt() {
            Ok(a) => Decision::Attempt(f(a)),
            Err(other) => other.widen(),
        }
    }

    /// The same answer, borrowing its attempt.
    pub fn as_ref(&self) -> Decision<&A> {
        match self {
            Decision::Attempt(a) => Decision::Attempt(a),
            Decision::AlreadySucceeded {
                attempt,
                transaction_id,
                amount,
            } => Decision::AlreadySucceeded {
                attempt: *attempt,
                transaction_id: transaction_id.clone(),
                amount: *amount,
            },
            Decision::AlreadyDeclined { attempt, code } => Decision::AlreadyDeclined {
                attempt: *attempt,
                code: code.clone(),
            },
            Decision::AttemptsExhausted { attempt } => {
                Decision::AttemptsExhausted { attempt: *attempt }
            }
            Decision::InFlight { attempt } => Decision::InFlight { attempt: *attempt },
            Decision::AwaitingReconciliation { attempt } => {
                Decision::AwaitingReconciliation { attempt: *attempt }
            }
            Decision::InReview { attempt } => Decision::InReview { attempt: *attempt },
            Decision::InConflict { attempt } => Decision::InConflict { attempt: *attempt },
            Decision::KeyReused {
                recorded,
                requested,
            } => Decision::KeyReused {
                recorded: *recorded,
                requested: *requested,
            },
        }
    }

    /// The answer's name, for logs and metrics: the one table of answer names.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Attempt(_) => "attempt",
            Decision::AlreadySucceeded { .. } => "already-succeeded",
            Decision::AlreadyDeclined { .. } => "already-declined",
            Decision::AttemptsExhausted { .. } => "attempts-exhausted",
            Decision::InFlight { .. } => "in-flight",
            Decision::AwaitingReconciliation { .. } => "awaiting-reconciliation",
            Decision::InReview { .. } => "in-review",
            Decision::InConflict { .. } => "in-conflict",
            Decision::KeyReused { .. } => "key-reused",
        }
    }
}

impl Decision<Infallible> {
    /// An answer without an attempt, as an answer of any attempt type.
    pub fn widen<B>(self) -> Decision<B> {
        match self.into_attempt() {
            Ok(never) => match never {},
            Err(other) => {
                // Every variant but `Attempt` has the same fields whatever the attempt type.
                match other {
                    Decision::Attempt(never) => match never {},
                    Decision::AlreadySucceeded {
                        attempt,
                        transaction_id,
                        amount,
                    } => Decision::AlreadySucceeded {
                        attempt,
                        transaction_id,
                        amount,
                    },
                    Decision::AlreadyDeclined { attempt, code } => {
                        Decision::AlreadyDeclined { attempt, code }
                    }
                    Decision::AttemptsExhausted { attempt } => {
                        Decision::AttemptsExhausted { attempt }
                    }
                    Decision::InFlight { attempt } => Decision::InFlight { attempt },
                    Decision::AwaitingReconciliation { attempt } => {
                        Decision::AwaitingReconciliation { attempt }
                    }
                    Decision::InReview { attempt } => Decision::InReview { attempt },
                    Decision::InConflict { attempt } => Decision::InConflict { attempt },
                    Decision::KeyReused {
                        recorded,
                        requested,
                    } => Decision::KeyReused {
                        recorded,
                        requested,
                    },
                }
            }
        }
    }
}

impl<A> fmt::Display for Decision<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Attempt(_) => f.write_str("call the provider"),
            Decision::AlreadySucceeded { transaction_id, .. } => {
                write!(f, "already succeeded ({transaction_id})")
            }
            Decision::AlreadyDeclined { code, .. } => write!(f, "already declined ({code})"),
            Decision::AttemptsExhausted { attempt } => {
                write!(f, "attempts exhausted after attempt {attempt}")
            }
            Decision::InFlight { attempt } => write!(f, "attempt {attempt} in flight"),
            Decision::AwaitingReconciliation { attempt } => {
                write!(f, "attempt {attempt} awaiting reconciliation")
            }
            Decision::InReview { attempt } => write!(f, "attempt {attempt} in review"),
            Decision::InConflict { attempt } => write!(f, "conflict on attempt {attempt}"),
            Decision::KeyReused { .. } => write!(f, "key reused with a different intent"),
        }
    }
}

impl PaymentState {
    /// The gate's decision for a request whose intent has fingerprint `requested`.
    /// Pure: the ledger turns `Attempt` into a durable attempt and a ticket.
    pub fn decide(&self, requested: &Fingerprint) -> Decision {
        if let Some(intent) = &self.intent
            && intent.fingerprint != *requested
        {
            return Decision::KeyReused {
                recorded: intent.fingerprint,
                requested: *requested,
            };
        }
        if let Some(conflict) = &self.conflict {
            return Decision::InConflict {
                attempt: conflict.attempt,
            };
        }
        decide_phase(&self.phase, |attempt| AttemptPlan {
            attempt,
            record_intent: matches!(self.phase, Phase::Vacant),
        })
    }
}

/// What a track in `phase` answers a caller: an attempt (`plan` of the attempt to start, the
/// first for a vacant track, the next for a ready one), or the answer its phase stands for.
pub(super) fn decide_phase<P>(phase: &Phase, plan: impl FnOnce(AttemptNumber) -> P) -> Decision<P> {
    match phase {
        Phase::Vacant => Decision::Attempt(plan(AttemptNumber::FIRST)),
        Phase::Ready { next_attempt } => Decision::Attempt(plan(*next_attempt)),
        Phase::InFlight { attempt, .. } => Decision::InFlight { attempt: *attempt },
        Phase::Unknown { attempt, .. } => Decision::AwaitingReconciliation { attempt: *attempt },
        Phase::InReview { attempt, .. } => Decision::InReview { attempt: *attempt },
        Phase::Succeeded {
            attempt,
            transaction_id,
            amount,
        } => Decision::AlreadySucceeded {
            attempt: *attempt,
            transaction_id: transaction_id.clone(),
            amount: *amount,
        },
        Phase::Declined { attempt, code } => Decision::AlreadyDeclined {
            attempt: *attempt,
            code: code.clone(),
        },
        Phase::Exhausted { attempt } => Decision::AttemptsExhausted { attempt: *attempt },
        Phase::Conflict { attempt, .. } => Decision::InConflict { attempt: *attempt },
    }
}
