//! What a caller asks for, and its fingerprint.
//!
//! Invariant: the fingerprint of an intent depends only on its fields, through the canonical
//! encoding documented on [`Intent::fingerprint`]; golden vectors in the tests freeze it, so the
//! same request always has the same fingerprint and a different request a different one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::input::{InputError, check_identifier, check_text};
use super::key::{AccountId, Amount, Currency, CustomerRef, Description};
use crate::limits::{METADATA_ENTRIES_MAX, METADATA_KEY_LEN_MAX, METADATA_VALUE_LEN_MAX};

/// Free-form key/value pairs attached to an intent: at most 50 entries, keys of 1 to 40 bytes
/// of visible ASCII, values of up to 500 bytes of text. Kept sorted by key.
#[derive(Clone, Default, PartialEq, Eq, Debug, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Metadata(BTreeMap<String, String>);

/// Serialised as its map, borrowed: the bytes of serde's `into = "BTreeMap<String, String>"`,
/// without the copy of every entry that attribute makes.
impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Metadata {
    /// Validates a set of entries.
    ///
    /// # Errors
    /// [`InputError::MetadataEntries`], or a length or character error naming the entry.
    pub fn new(entries: BTreeMap<String, String>) -> Result<Self, InputError> {
        if entries.len() > METADATA_ENTRIES_MAX {
            return Err(InputError::MetadataEntries {
                count: entries.len(),
                max: METADATA_ENTRIES_MAX,
            });
        }
        for (key, value) in &entries {
            check_identifier("metadata key", key, 1, METADATA_KEY_LEN_MAX)?;
            check_text("metadata value", value, 0, METADATA_VALUE_LEN_MAX)?;
        }
        Ok(Self(entries))
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = InputError;
    fn try_from(entries: BTreeMap<String, String>) -> Result<Self, InputError> {
        Self::new(entries)
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(metadata: Metadata) -> Self {
        metadata.0
    }
}

/// What the caller wants charged. One idempotency key carries one intent forever.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Intent {
    /// How much, in minor units.
    pub amount: Amount,
    /// In which currency.
    pub currency: Currency,
    /// For which merchant or account.
    pub account: AccountId,
    /// Who pays.
    pub customer: CustomerRef,
    /// Optional statement description.
    pub description: Option<Description>,
    /// Free-form metadata.
    pub metadata: Metadata,
}

/// The blake3 hash of an intent's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Intent {
    /// The intent's fingerprint: blake3 in key-derivation mode with the context string
    /// `"payledger 2026-11 intent fingerprint v1"`, over this canonical encoding (all integers
    /// little-endian, every string preceded by its byte length as u32):
    ///
    /// ```text
    /// amount       u64
    /// currency     3 bytes
    /// account      u32 len, bytes
    /// customer     u32 len, bytes
    /// description  u8 0 (absent) | u8 1, u32 len, bytes
    /// metadata     u32 count, then per entry in byte order of keys: u32 len, key, u32 len, value
    /// ```
    ///
    /// ```
    /// use payledger::{AccountId, Amount, Currency, CustomerRef, Intent, Metadata};
    /// let intent = Intent {
    ///     amount: Amount::new(1999)?,
    ///     currency: Currency::new("EUR")?,
    ///     account: AccountId::new("acct_1")?,
    ///     customer: CustomerRef::new("cus_1")?,
    ///     description: None,
    ///     metadata: Metadata::default(),
    /// };
    /// let mut dearer = intent.clone();
    /// dearer.amount = Amount::new(2999)?;
    /// assert_ne!(intent.fingerprint(), dearer.fingerprint());
    /// # Ok::<(), payledger::InputError>(())
    /// ```
    pub fn fingerprint(&self) -> Fingerprint {
        static CONTEXT: LazyLock<blake3::Hasher> = LazyLock::new(|| {
            blake3::Hasher::new_derive_key("payledger 2026-11 intent fingerprint v1")
        });
        let mut hasher = CONTEXT.clone();
        let mut put = |bytes: &[u8]| {
            hasher.update(bytes);
        };
        put(&self.amount.minor().to_le_bytes());
        put(self.currency.as_str().as_bytes());
        put_str(&mut put, self.account.as_str());
        put_str(&mut put, self.customer.as_str());
        match &self.description {
            None => put(&[0]),
            Some(description) => {
                put(&[1]);
                put_str(&mut put, description.as_str());
            }
        }
        put(&len_u32(self.metadata.entries().len()).to_le_bytes());
        for (key, value) in self.metadata.entries() {
            put_str(&mut put, key);
            put_str(&mut put, value);
        }
        Fingerprint(*hasher.finalize().as_bytes())
    }

    /// The fingerprint of this intent requested as an authorisation (a hold to capture later):
    /// distinct from [`Intent::fingerprint`], so a key recorded as a purchase is never reused for
    /// an authorisation, nor the other way round.
    pub fn authorization_fingerprint(&self) -> Fingerprint {
        static CONTEXT: LazyLock<blake3::Hasher> = LazyLock::new(|| {
            blake3::Hasher::new_derive_key("payledger 2026-11 authorization fingerprint v1")
        });
        let mut hasher = CONTEXT.clone();
        hasher.update(&self.fingerprint().0);
        Fingerprint(*hasher.finalize().as_bytes())
    }
}

fn put_str(put: &mut impl FnMut(&[u8]), s: &str) {
    put(&len_u32(s.len()).to_le_bytes());
    put(s.as_bytes());
}

/// Every length hashed here is bounded far below `u32::MAX` by the limits module.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
