//! `InputError`: what a validated type says when it refuses a value, and the checks every
//! constructor shares.
//!
//! Invariant: every bound a check enforces comes from `limits.rs`, and every refusal names the
//! field and the bound, so a caller can fix the input without reading the code.

use std::path::PathBuf;

/// Input that a validated type refuses. Returned by every constructor that takes caller,
/// provider or disk input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A text field is shorter or longer than its bounds (in bytes).
    #[error("{field} is {len} bytes, must be {min} to {max}")]
    Length {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Smallest accepted length.
        min: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// A text field holds a byte it may not hold.
    #[error("{field} has a forbidden character at byte {index}: {expected}")]
    Character {
        /// Which field.
        field: &'static str,
        /// Byte offset of the first forbidden character.
        index: usize,
        /// What the field accepts.
        expected: &'static str,
    },
    /// Amounts are positive.
    #[error("amount must not be zero")]
    AmountZero,
    /// Amounts are bounded by [`crate::limits::AMOUNT_MINOR_MAX`].
    #[error("amount {amount} exceeds the maximum {max}")]
    AmountTooLarge {
        /// The amount given.
        amount: u64,
        /// The largest accepted amount.
        max: u64,
    },
    /// Too many metadata entries.
    #[error("metadata has {count} entries, at most {max} are allowed")]
    MetadataEntries {
        /// Entries given.
        count: usize,
        /// Entries allowed.
        max: usize,
    },
    /// Attempt numbers run from 1 to [`crate::limits::ATTEMPTS_MAX`].
    #[error("attempt {attempt} is out of range 1 to {max}")]
    AttemptOutOfRange {
        /// The attempt number given.
        attempt: u32,
        /// The largest attempt number.
        max: u32,
    },
    /// The index directory would overlap the journal: it is the ledger directory, one of its
    /// ancestors, or holds journal segments. Deleting or rebuilding the index there could
    /// destroy the journal, so the ledger refuses to open.
    #[error("index directory {} {reason}", index_dir.display())]
    IndexDir {
        /// The configured index directory.
        index_dir: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A configuration value is out of its range.
    #[error("config {field} is {value}, must be {min} to {max}")]
    Config {
        /// Which setting.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
}

/// Checks that `s` is `min..=max` bytes of visible ASCII (0x21–0x7E). Identifiers travel in
/// HTTP headers and shell arguments, where spaces and control characters cause grief.
pub(crate) fn check_identifier(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), InputError> {
    check_len(field, s, min, max)?;
    match s.bytes().position(|b| !b.is_ascii_graphic()) {
        Some(index) => Err(InputError::Character {
            field,
            index,
            expected: "printable ASCII without spaces (0x21 to 0x7E)",
        }),
        None => Ok(()),
    }
}

/// Checks that `s` is `min..=max` bytes of UTF-8 text without control characters.
pub(crate) fn check_text(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), InputError> {
    check_len(field, s, min, max)?;
    match s.char_indices().find(|(_, c)| c.is_control()) {
        Some((index, _)) => Err(InputError::Character {
            field,
            index,
            expected: "text without control characters",
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_len(
    field: &'static str,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), InputError> {
    if (min..=max).contains(&s.len()) {
        Ok(())
    } else {
        Err(InputError::Length {
            field,
            len: s.len(),
            min,
            max,
        })
    }
}

/// `value` within `min..=max`, else a typed configuration error naming `field`.
pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), InputError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InputError::Config {
            field,
            value,
            min,
            max,
        })
    }
}
