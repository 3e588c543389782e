//! Walks one key through the pure model: a charge times out, the gate refuses to retry, the
//! reconciler's query finds the charge, and a retry by the client replays the stored success.
//!
//! Run with `cargo run --example quickstart`.

use payledger::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = IdempotencyKey::new("order-1842/pay")?;
    let intent = Intent {
        amount: Amount::new(4_999)?,
        currency: Currency::new("EUR")?,
        account: AccountId::new("acct_shop_7")?,
        customer: CustomerRef::new("cus_311")?,
        description: Some(Description::new("Order 1842")?),
        metadata: Metadata::default(),
    };
    let fingerprint = intent.fingerprint();
    let mut state = PaymentState::new(key.clone());
    let mut clock = 1_700_000_000_000;
    let mut record = |state: &mut PaymentState, kind: EventKind| -> Result<(), Rejection> {
        clock += 1_000;
        let event = Event {
            key: key.clone(),
            at: UnixMillis(clock),
            kind,
        };
        println!("  event: {}", event.kind.name());
        *state = apply(state, &event)?;
        println!("  state: {}", state.phase.name());
        Ok(())
    };

    println!("client pays: decision = {}", state.decide(&fingerprint));
    let attempt = AttemptNumber::FIRST;
    record(
        &mut state,
        EventKind::IntentRecorded {
            intent: intent.clone(),
            fingerprint,
        },
    )?;
    record(
        &mut state,
        EventKind::AttemptStarted {
            attempt,
            provider_reference: ProviderReference::derive(&key, attempt),
        },
    )?;
    println!("provider call times out");
    record(
        &mut state,
        EventKind::OutcomeReported {
            attempt,
            outcome: Outcome::Unknown {
                reason: UnknownReason::Timeout,
            },
        },
    )?;

    println!("client retries: decision = {}", state.decide(&fingerprint));
    let retry = apply(
        &state,
        &Event {
            key: key.clone(),
            at: UnixMillis(1_700_000_100_000),
            kind: EventKind::AttemptStarted {
                attempt: AttemptNumber::new(2)?,
                provider_reference: ProviderReference::derive(&key, AttemptNumber::new(2)?),
            },
        },
    );
    println!(
        "a second attempt is refused: {}",
        retry.err().map_or("?".into(), |r| r.to_string())
    );

    println!("reconciler queries the provider: found succeeded");
    record(
        &mut state,
        EventKind::ProviderQueried {
            attempt,
            answer: QueryAnswer::FoundSucceeded {
                transaction_id: TransactionId::new("ch_3PqX")?,
                amount: intent.amount,
            },
        },
    )?;
    println!("client retries: decision = {}", state.decide(&fingerprint));
    Ok(())
}
