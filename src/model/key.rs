//! Validated newtypes for everything the ledger is keyed or measured by.
//!
//! Invariant: a value of any type here satisfies its documented bounds. Constructors and serde
//! deserialisation both go through the same validation, so bytes from disk and input from a
//! caller or a provider are checked alike and a bad value is an [`InputError`], never a panic.

use std::fmt;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use super::input::{InputError, check_identifier, check_len, check_text};
use crate::limits::{
    ACCOUNT_ID_LEN_MAX, AMOUNT_MINOR_MAX, ATTEMPTS_MAX, CURRENCY_LEN, CUSTOMER_REF_LEN_MAX,
    DECLINE_CODE_LEN_MAX, DESCRIPTION_LEN_MAX, IDEMPOTENCY_KEY_LEN_MAX, NOTE_LEN_MAX,
    OPERATOR_LEN_MAX, PROVIDER_REFERENCE_LEN_MAX, REQUEST_ID_LEN_MAX, TRANSACTION_ID_LEN_MAX,
};

/// Serialises a value as its text, borrowed: the same bytes as serde's `into = "String"`,
/// without the copy that attribute makes of every value it writes.
macro_rules! serialize_as_str {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

/// Declares a validated string newtype: constructor, accessors, `Display`, and serde through
/// the same validation.
///
/// The text is shared (`Arc<str>`): a clone, made for every state the fold produces and every
/// update handed to the index, is a count, not an allocation freed later by another thread.
/// Comparisons, hashes and the serialized bytes are those of the text. Making one copies the
/// text once more than a `String` would (into the shared allocation): values are made once and
/// cloned many times.
macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:ident, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        serialize_as_str!($name);

        /// Reads the text (a string, or bytes that are UTF-8, as a `String` would) and validates
        /// it as [`Self::new`] does.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a valid {}", $field)
                    }
                    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<$name, E> {
                        $check($field, value, $min, $max).map_err(E::custom)?;
                        Ok($name(Arc::from(value)))
                    }
                    fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<$name, E> {
                        let text = std::str::from_utf8(value).map_err(|_| {
                            E::invalid_value(serde::de::Unexpected::Bytes(value), &self)
                        })?;
                        self.visit_str(text)
                    }
                }
                deserializer.deserialize_str(Text)
            }
        }

        impl $name {
            #[doc = concat!("Validates and wraps a ", $field, ".")]
            ///
            /// # Errors
            /// [`InputError::Length`] or [`InputError::Character`] when the bounds are not met.
            pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
                let value = value.into();
                $check($field, &value, $min, $max)?;
                Ok(Self(Arc::from(value)))
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InputError;
            fn try_from(value: String) -> Result<Self, InputError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                String::from(&*value.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_newtype!(
    /// The caller's idempotency key: 1 to 255 bytes of visible ASCII. One key is one payment
    /// intent, forever; it is never reusable.
    ///
    /// ```
    /// use payledger::IdempotencyKey;
    /// assert!(IdempotencyKey::new("order-1842/pay").is_ok());
    /// assert!(IdempotencyKey::new("").is_err());
    /// assert!(IdempotencyKey::new("café").is_err());
    /// ```
    IdempotencyKey, "idempotency key", check_identifier, 1, IDEMPOTENCY_KEY_LEN_MAX
);
string_newtype!(
    /// The merchant or account a payment is for: 1 to 64 bytes of visible ASCII.
    AccountId, "account id", check_identifier, 1, ACCOUNT_ID_LEN_MAX
);
string_newtype!(
    /// The service's reference for the paying customer: 1 to 128 bytes of visible ASCII.
    CustomerRef, "customer reference", check_identifier, 1, CUSTOMER_REF_LEN_MAX
);
string_newtype!(
    /// A free-text description: 1 to 500 bytes of UTF-8 without control characters.
    Description, "description", check_text, 1, DESCRIPTION_LEN_MAX
);
string_newtype!(
    /// The provider's id for a transaction: 1 to 128 bytes of visible ASCII.
    TransactionId, "transaction id", check_identifier, 1, TRANSACTION_ID_LEN_MAX
);
string_newtype!(
    /// A provider's decline or error code: 1 to 64 bytes of visible ASCII.
    DeclineCode, "decline code", check_identifier, 1, DECLINE_CODE_LEN_MAX
);
string_newtype!(
    /// Who resolved a review: 1 to 64 bytes of visible ASCII (a login or e-mail address).
    Operator, "operator", check_identifier, 1, OPERATOR_LEN_MAX
);
string_newtype!(
    /// Why an operator resolved a review as they did: up to 1000 bytes of text.
    Note, "note", check_text, 0, NOTE_LEN_MAX
);
string_newtype!(
    /// The caller's id for one capture, void or refund of a key (a merchant's refund id, say):
    /// it names exactly one operation of the key forever. 1 to 128 bytes of visible ASCII.
    RequestId, "request id", check_identifier, 1, REQUEST_ID_LEN_MAX
);
string_newtype!(
    /// The reference sent to the provider for one attempt, usable as the provider's own
    /// idempotency key. Derived by [`ProviderReference::derive`]; at most 64 characters.
    ProviderReference, "provider reference", check_identifier, 1, PROVIDER_REFERENCE_LEN_MAX
);

impl ProviderReference {
    /// Derives the provider reference of `attempt` for `key`: `pl_` + 40 hex digits of a
    /// blake3 keyed derivation over (key, attempt) + `_` + the attempt number. The same inputs
    /// always give the same reference, so the reference sent before a crash is known after it.
    ///
    /// ```
    /// use payledger::{AttemptNumber, IdempotencyKey, ProviderReference};
    /// let key = IdempotencyKey::new("order-1")?;
    /// let first = ProviderReference::derive(&key, AttemptNumber::FIRST);
    /// assert_eq!(first, ProviderReference::derive(&key, AttemptNumber::FIRST));
    /// assert!(first.as_str().len() <= 64);
    /// # Ok::<(), payledger::InputError>(())
    /// ```
    pub fn derive(key: &IdempotencyKey, attempt: AttemptNumber) -> Self {
        static CONTEXT: LazyLock<blake3::Hasher> = LazyLock::new(|| {
            blake3::Hasher::new_derive_key("payledger 2026-11 provider reference v1")
        });
        let mut hasher = CONTEXT.clone();
        let key_len = u32::try_from(key.as_str().len()).unwrap_or(u32::MAX);
        hasher.update(&key_len.to_le_bytes());
        hasher.update(key.as_str().as_bytes());
        hasher.update(&attempt.get().to_le_bytes());
        let hex = hasher.finalize().to_hex();
        let text = reference_text(None, &hex[..40], attempt);
        debug_assert!(text.len() <= PROVIDER_REFERENCE_LEN_MAX);
        Self(Arc::from(text))
    }

    /// Derives the provider reference of `attempt` of operation `ordinal` (a capture, void or
    /// refund) of `key`: `pl` + the kind's letter (`c`, `v`, `r`) + `_` + 36 hex digits of a
    /// blake3 keyed derivation over (key, kind, ordinal, attempt) + `_` + the attempt. Distinct
    /// from every charge reference and every other operation's.
    ///
    /// ```
    /// use payledger::{AttemptNumber, IdempotencyKey, OperationKind, ProviderReference};
    /// let key = IdempotencyKey::new("order-1")?;
    /// let refund = ProviderReference::derive_operation(&key, OperationKind::Refund, 1, AttemptNumber::FIRST);
    /// assert!(refund.as_str().starts_with("plr_"));
    /// assert_ne!(refund, ProviderReference::derive(&key, AttemptNumber::FIRST));
    /// assert_eq!(refund.attempt(), Some(AttemptNumber::FIRST));
    /// # Ok::<(), payledger::InputError>(())
    /// ```
    pub fn derive_operation(
        key: &IdempotencyKey,
        kind: super::operation::OperationKind,
        ordinal: u32,
        attempt: AttemptNumber,
    ) -> Self {
        static CONTEXT: LazyLock<blake3::Hasher> = LazyLock::new(|| {
            blake3::Hasher::new_derive_key("payledger 2026-11 operation provider reference v1")
        });
        let mut hasher = CONTEXT.clone();
        let key_len = u32::try_from(key.as_str().len()).unwrap_or(u32::MAX);
        hasher.update(&key_len.to_le_bytes());
        hasher.update(key.as_str().as_bytes());
        hasher.update(&[kind.tag()]);
        hasher.update(&ordinal.to_le_bytes());
        hasher.update(&attempt.get().to_le_bytes());
        let hex = hasher.finalize().to_hex();
        let text = reference_text(Some(kind.letter()), &hex[..36], attempt);
        debug_assert!(text.len() <= PROVIDER_REFERENCE_LEN_MAX);
        Self(Arc::from(text))
    }

    /// The attempt number encoded at the end of a derived reference, if it has that shape.
    pub fn attempt(&self) -> Option<AttemptNumber> {
        let (_, number) = self.0.rsplit_once('_')?;
        AttemptNumber::new(number.parse().ok()?).ok()
    }
}

/// A derived reference's text: `pl`, the operation's letter (none for the charge), `_`, `hex`,
/// `_` and the attempt, written into a string of its final capacity (`format!` grew its buffer
/// on the way).
fn reference_text(letter: Option<char>, hex: &str, attempt: AttemptNumber) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(PROVIDER_REFERENCE_LEN_MAX);
    text.push_str("pl");
    text.extend(letter);
    text.push('_');
    text.push_str(hex);
    text.push('_');
    // Writing into a `String` cannot fail.
    let _ = write!(text, "{}", attempt.get());
    text
}

/// An amount in the currency's minor units (cents for EUR): 1 to
/// [`AMOUNT_MINOR_MAX`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

impl Amount {
    /// Validates an amount in minor units.
    ///
    /// # Errors
    /// [`InputError::AmountZero`] or [`InputError::AmountTooLarge`].
    pub fn new(minor: u64) -> Result<Self, InputError> {
        if minor == 0 {
            Err(InputError::AmountZero)
        } else if minor > AMOUNT_MINOR_MAX {
            Err(InputError::AmountTooLarge {
                amount: minor,
                max: AMOUNT_MINOR_MAX,
            })
        } else {
            Ok(Self(minor))
        }
    }

    /// The amount in minor units.
    pub fn minor(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for Amount {
    type Error = InputError;
    fn try_from(minor: u64) -> Result<Self, InputError> {
        Self::new(minor)
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> u64 {
        amount.0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ISO-4217 alphabetic currency code: exactly three upper-case ASCII letters. The shape is
/// checked, not membership in the current ISO list, which changes over time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Currency([u8; CURRENCY_LEN]);

serialize_as_str!(Currency);

impl Currency {
    /// Validates a currency code such as `"EUR"`.
    ///
    /// # Errors
    /// [`InputError::Length`] or [`InputError::Character`] (lower case is refused).
    pub fn new(code: &str) -> Result<Self, InputError> {
        check_len("currency", code, CURRENCY_LEN, CURRENCY_LEN)?;
        let bytes = code.as_bytes();
        if let Some(index) = bytes.iter().position(|b| !b.is_ascii_uppercase()) {
            return Err(InputError::Character {
                field: "currency",
                index,
                expected: "upper-case ASCII letters",
            });
        }
        Ok(Self([bytes[0], bytes[1], bytes[2]]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only upper-case ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = InputError;
    fn try_from(code: String) -> Result<Self, InputError> {
        Self::new(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_owned()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The number of one provider call for a key, from 1 to
/// [`ATTEMPTS_MAX`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct AttemptNumber(u32);

impl AttemptNumber {
    /// The first attempt.
    pub const FIRST: AttemptNumber = AttemptNumber(1);

    /// Validates an attempt number.
    ///
    /// # Errors
    /// [`InputError::AttemptOutOfRange`] outside `1..=ATTEMPTS_MAX`.
    pub fn new(number: u32) -> Result<Self, InputError> {
        if (1..=ATTEMPTS_MAX).contains(&number) {
            Ok(Self(number))
        } else {
            Err(InputError::AttemptOutOfRange {
                attempt: number,
                max: ATTEMPTS_MAX,
            })
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one, or `None` when this is the last one allowed.
    pub fn next(self) -> Option<AttemptNumber> {
        AttemptNumber::new(self.0 + 1).ok()
    }
}

impl TryFrom<u32> for AttemptNumber {
    type Error = InputError;
    fn try_from(number: u32) -> Result<Self, InputError> {
        Self::new(number)
    }
}

impl From<AttemptNumber> for u32 {
    fn from(attempt: AttemptNumber) -> u32 {
        attempt.0
    }
}

impl fmt::Debug for AttemptNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attempt({})", self.0)
    }
}

impl fmt::Display for AttemptNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in time as milliseconds since the Unix epoch. Events carry their time; the fold
/// never reads a clock.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This time plus `ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(ms))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of a record in the journal, from 1, without gaps.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Sequence(pub u64);

impl Sequence {
    /// The sequence after this one. Sequences stay below 2^62 (`limits::SEQUENCE_MAX`), so this
    /// never overflows.
    pub fn next(self) -> Sequence {
        Sequence(self.0.saturating_add(1))
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::value::{BytesDeserializer, Error as ValueError, StrDeserializer};

    /// A string newtype reads from a string or from UTF-8 bytes (as a `String` does, for formats
    /// that hand text over as bytes), and validates either as `new` does.
    #[test]
    fn a_newtype_reads_text_or_utf8_bytes_and_validates_both() {
        let from_str =
            IdempotencyKey::deserialize(StrDeserializer::<ValueError>::new("order-1")).unwrap();
        let from_bytes =
            IdempotencyKey::deserialize(BytesDeserializer::<ValueError>::new(b"order-1")).unwrap();
        assert_eq!(from_str, IdempotencyKey::new("order-1").unwrap());
        assert_eq!(from_bytes, from_str);
        let spaced = IdempotencyKey::deserialize(StrDeserializer::<ValueError>::new("order 1"));
        assert!(spaced.is_err(), "a space is not visible ASCII");
        let not_utf8 =
            IdempotencyKey::deserialize(BytesDeserializer::<ValueError>::new(&[0x6f, 0xff]));
        let message = not_utf8.unwrap_err().to_string();
        assert!(message.contains("a valid idempotency key"), "{message}");
    }

    /// Shared text changes nothing a caller sees: equality, order and hashes are the text's,
    /// and a clone is the same text.
    #[test]
    fn a_clone_is_the_same_text_and_compares_as_text() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let hash = |value: &dyn Fn(&mut DefaultHasher)| {
            let mut hasher = DefaultHasher::new();
            value(&mut hasher);
            hasher.finish()
        };
        let a = IdempotencyKey::new("order-a").unwrap();
        let b = IdempotencyKey::new("order-b").unwrap();
        assert_eq!(a.clone(), a);
        assert!(a < b);
        assert_eq!(hash(&|h| a.hash(h)), hash(&|h| "order-a".hash(h)));
        assert_eq!(String::from(a.clone()), "order-a");
        assert_eq!(format!("{a:?}"), "IdempotencyKey(\"order-a\")");
    }
}
