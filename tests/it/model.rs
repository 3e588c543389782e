//! Validation of every domain type at, just below and just above each bound, and the golden
//! vectors that freeze fingerprints and provider references.

use std::collections::BTreeMap;

use payledger::limits::*;
use payledger::*;

fn intent() -> Intent {
    Intent {
        amount: Amount::new(1999).unwrap(),
        currency: Currency::new("EUR").unwrap(),
        account: AccountId::new("acct_1").unwrap(),
        customer: CustomerRef::new("cus_1").unwrap(),
        description: Some(Description::new("Order 1842").unwrap()),
        metadata: Metadata::new(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]))
        .unwrap(),
    }
}

#[test]
fn fingerprint_golden_vectors() {
    assert_eq!(
        intent().fingerprint().to_string(),
        "f7eee3e84ad4f26d5f675a85c0c8d558c41c8eee9ebae8316b852c031ed83520"
    );
    let mut bare = intent();
    bare.description = None;
    bare.metadata = Metadata::default();
    assert_eq!(
        bare.fingerprint().to_string(),
        "88f4d60e003a2bf64845b65f7de522ca1297ac661b1c0bdf921a64140e2216d7"
    );
}

/// Rebuilds the canonical encoding exactly as documented on `Intent::fingerprint`, so the
/// documentation and the code cannot drift apart.
#[test]
fn fingerprint_follows_the_documented_encoding() {
    let mut bytes = Vec::new();
    let put_str = |bytes: &mut Vec<u8>, s: &str| {
        bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        bytes.extend_from_slice(s.as_bytes());
    };
    bytes.extend_from_slice(&1999u64.to_le_bytes());
    bytes.extend_from_slice(b"EUR");
    put_str(&mut bytes, "acct_1");
    put_str(&mut bytes, "cus_1");
    bytes.push(1);
    put_str(&mut bytes, "Order 1842");
    bytes.extend_from_slice(&2u32.to_le_bytes());
    for (k, v) in [("a", "1"), ("b", "2")] {
        put_str(&mut bytes, k);
        put_str(&mut bytes, v);
    }
    let expected = blake3::derive_key("payledger 2026-11 intent fingerprint v1", &bytes);
    assert_eq!(intent().fingerprint().0, expected);
}

#[test]
fn fingerprint_sees_every_field() {
    let base = intent().fingerprint();
    let mut changed = Vec::new();
    let mut i = intent();
    i.amount = Amount::new(2000).unwrap();
    changed.push(i);
    let mut i = intent();
    i.currency = Currency::new("USD").unwrap();
    changed.push(i);
    let mut i = intent();
    i.account = AccountId::new("acct_2").unwrap();
    changed.push(i);
    let mut i = intent();
    i.customer = CustomerRef::new("cus_2").unwrap();
    changed.push(i);
    let mut i = intent();
    i.description = None;
    changed.push(i);
    let mut i = intent();
    i.metadata = Metadata::new(BTreeMap::from([("a".to_string(), "1".to_string())])).unwrap();
    changed.push(i);
    for other in changed {
        assert_ne!(other.fingerprint(), base, "{other:?}");
    }
}

#[test]
fn provider_reference_golden_vectors() {
    let key = IdempotencyKey::new("order-1842/pay").unwrap();
    let first = ProviderReference::derive(&key, AttemptNumber::FIRST);
    assert_eq!(
        first.as_str(),
        "pl_288bc5db0c69f39ae7028c480beabde21e94f782_1"
    );
    let last = ProviderReference::derive(&key, AttemptNumber::new(ATTEMPTS_MAX).unwrap());
    assert_eq!(
        last.as_str(),
        "pl_1959780875c62e9d6ac4ea0f9bb6f1e00162942a_16"
    );
    assert_eq!(last.attempt(), Some(AttemptNumber::new(16).unwrap()));
    let longest_key = IdempotencyKey::new("~".repeat(IDEMPOTENCY_KEY_LEN_MAX)).unwrap();
    let reference =
        ProviderReference::derive(&longest_key, AttemptNumber::new(ATTEMPTS_MAX).unwrap());
    assert!(reference.as_str().len() <= PROVIDER_REFERENCE_LEN_MAX);
    assert!(reference.as_str().bytes().all(|b| b.is_ascii_graphic()));
}

#[test]
fn idempotency_key_bounds() {
    assert!(IdempotencyKey::new("k".repeat(IDEMPOTENCY_KEY_LEN_MAX)).is_ok());
    assert!(IdempotencyKey::new("k".repeat(IDEMPOTENCY_KEY_LEN_MAX - 1)).is_ok());
    assert_eq!(
        IdempotencyKey::new("k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)),
        Err(InputError::Length {
            field: "idempotency key",
            len: 256,
            min: 1,
            max: 255
        })
    );
    assert_eq!(
        IdempotencyKey::new(""),
        Err(InputError::Length {
            field: "idempotency key",
            len: 0,
            min: 1,
            max: 255
        })
    );
    assert!(IdempotencyKey::new("k").is_ok());
    for bad in ["naïve", "tab\there", "new\nline", "with space", "\u{7f}"] {
        assert!(
            matches!(
                IdempotencyKey::new(bad),
                Err(InputError::Character {
                    field: "idempotency key",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn amount_bounds() {
    assert_eq!(Amount::new(0), Err(InputError::AmountZero));
    assert_eq!(Amount::new(1).map(Amount::minor), Ok(1));
    assert_eq!(
        Amount::new(AMOUNT_MINOR_MAX - 1).map(Amount::minor),
        Ok(AMOUNT_MINOR_MAX - 1)
    );
    assert_eq!(
        Amount::new(AMOUNT_MINOR_MAX).map(Amount::minor),
        Ok(AMOUNT_MINOR_MAX)
    );
    assert_eq!(
        Amount::new(AMOUNT_MINOR_MAX + 1),
        Err(InputError::AmountTooLarge {
            amount: AMOUNT_MINOR_MAX + 1,
            max: AMOUNT_MINOR_MAX
        })
    );
}

#[test]
fn currency_shape() {
    assert_eq!(
        Currency::new("EUR").map(|c| c.to_string()),
        Ok("EUR".to_string())
    );
    assert!(matches!(
        Currency::new("eur"),
        Err(InputError::Character { index: 0, .. })
    ));
    assert!(matches!(
        Currency::new("EUr"),
        Err(InputError::Character { index: 2, .. })
    ));
    assert!(matches!(
        Currency::new("EU"),
        Err(InputError::Length { len: 2, .. })
    ));
    assert!(matches!(
        Currency::new("EURO"),
        Err(InputError::Length { len: 4, .. })
    ));
    assert!(matches!(
        Currency::new("E1R"),
        Err(InputError::Character { index: 1, .. })
    ));
    assert!(matches!(
        Currency::new("ÉU"),
        Err(InputError::Character { .. })
    ));
}

#[test]
fn identifier_and_text_bounds() {
    fn around<T: std::fmt::Debug>(max: usize, make: impl Fn(String) -> Result<T, InputError>) {
        assert!(make("x".repeat(max)).is_ok(), "at {max}");
        assert!(make("x".repeat(max - 1)).is_ok(), "below {max}");
        assert!(
            matches!(make("x".repeat(max + 1)), Err(InputError::Length { .. })),
            "above {max}"
        );
    }
    around(ACCOUNT_ID_LEN_MAX, AccountId::new);
    around(CUSTOMER_REF_LEN_MAX, CustomerRef::new);
    around(DESCRIPTION_LEN_MAX, Description::new);
    around(TRANSACTION_ID_LEN_MAX, TransactionId::new);
    around(DECLINE_CODE_LEN_MAX, DeclineCode::new);
    around(OPERATOR_LEN_MAX, Operator::new);
    around(NOTE_LEN_MAX, Note::new);
    assert!(AccountId::new("").is_err());
    assert!(Description::new("").is_err());
    assert!(Note::new("").is_ok(), "a note may be empty");
    assert!(
        Description::new("Café crème ☕").is_ok(),
        "descriptions are UTF-8 text"
    );
    assert!(matches!(
        Description::new("bell\u{7}"),
        Err(InputError::Character { index: 4, .. })
    ));
}

#[test]
fn metadata_bounds() {
    let entries = |count: usize| -> BTreeMap<String, String> {
        (0..count)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect()
    };
    assert!(Metadata::new(entries(METADATA_ENTRIES_MAX)).is_ok());
    assert!(Metadata::new(entries(METADATA_ENTRIES_MAX - 1)).is_ok());
    assert_eq!(
        Metadata::new(entries(METADATA_ENTRIES_MAX + 1)),
        Err(InputError::MetadataEntries { count: 51, max: 50 })
    );
    let one = |k: String, v: String| Metadata::new(BTreeMap::from([(k, v)]));
    assert!(one("k".repeat(METADATA_KEY_LEN_MAX), String::new()).is_ok());
    assert!(one("k".repeat(METADATA_KEY_LEN_MAX - 1), String::new()).is_ok());
    assert!(matches!(
        one("k".repeat(METADATA_KEY_LEN_MAX + 1), String::new()),
        Err(InputError::Length {
            field: "metadata key",
            ..
        })
    ));
    assert!(one("k".into(), "v".repeat(METADATA_VALUE_LEN_MAX)).is_ok());
    assert!(one("k".into(), "v".repeat(METADATA_VALUE_LEN_MAX - 1)).is_ok());
    assert!(matches!(
        one("k".into(), "v".repeat(METADATA_VALUE_LEN_MAX + 1)),
        Err(InputError::Length {
            field: "metadata value",
            ..
        })
    ));
    assert!(matches!(
        one(String::new(), "v".into()),
        Err(InputError::Length {
            field: "metadata key",
            ..
        })
    ));
    assert!(matches!(
        one("a key".into(), "v".into()),
        Err(InputError::Character { .. })
    ));
}

#[test]
fn attempt_bounds() {
    assert!(AttemptNumber::new(0).is_err());
    assert_eq!(AttemptNumber::new(1), Ok(AttemptNumber::FIRST));
    assert!(AttemptNumber::new(ATTEMPTS_MAX - 1).is_ok());
    assert!(AttemptNumber::new(ATTEMPTS_MAX).is_ok());
    assert_eq!(
        AttemptNumber::new(ATTEMPTS_MAX + 1),
        Err(InputError::AttemptOutOfRange {
            attempt: ATTEMPTS_MAX + 1,
            max: ATTEMPTS_MAX
        })
    );
    assert_eq!(AttemptNumber::new(ATTEMPTS_MAX).unwrap().next(), None);
}
