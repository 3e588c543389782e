//! The event codec: the only place that names bincode. A payload is one format-version byte
//! followed by the bincode encoding of an [`Event`] under an explicit configuration.
//!
//! Invariant: every published version decodes forever. Golden fixtures in `tests/fixtures/`
//! hold the bytes of every event variant; a format change adds a version, keeps the old
//! decoder, and adds fixtures.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};

use crate::error::{CodecError, Error, Result, TooLarge};
use crate::limits::RECORD_PAYLOAD_LEN_MAX;
use crate::model::Event;

/// The event format this code writes.
pub const EVENT_FORMAT_V1: u8 = 1;

/// bincode 2 with little-endian variable-length integers and a size limit, so that a hostile
/// length prefix cannot make the decoder allocate more than a record can hold.
type V1Config = Configuration<LittleEndian, Varint, Limit<RECORD_PAYLOAD_LEN_MAX>>;

fn v1_config() -> V1Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<RECORD_PAYLOAD_LEN_MAX>()
}

/// Bytes reserved up front for an encoded event: more than a charge's events take.
const EVENT_ENCODED_TYPICAL: usize = 384;

/// Encodes an event as a record payload.
///
/// # Errors
/// [`Error::Codec`] if the event cannot be encoded, [`Error::TooLarge`] if it exceeds a record.
pub fn encode_event(event: &Event) -> Result<Vec<u8>> {
    // Room for a typical event, so that encoding does not grow the buffer field by field.
    let mut payload = Vec::with_capacity(EVENT_ENCODED_TYPICAL);
    payload.push(EVENT_FORMAT_V1);
    bincode::serde::encode_into_std_write(event, &mut payload, v1_config()).map_err(|e| {
        CodecError::Encode {
            detail: format!("{}: {e}", event.kind.name()),
        }
    })?;
    if payload.len() > RECORD_PAYLOAD_LEN_MAX {
        return Err(TooLarge::Event {
            len: payload.len(),
            max: RECORD_PAYLOAD_LEN_MAX,
        }
        .into());
    }
    debug_assert!(decode_event(&payload).is_ok_and(|decoded| decoded == *event));
    Ok(payload)
}

/// Encodes a derived value (an index entry) with the same configuration. Derived values carry
/// no version byte: the index is rebuilt when its format changes.
///
/// # Errors
/// [`Error::Codec`].
pub(crate) fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, v1_config()).map_err(|e| {
        Error::Codec(CodecError::Encode {
            detail: e.to_string(),
        })
    })
}

/// Decodes a value written by [`encode_value`].
///
/// # Errors
/// [`Error::Codec`].
pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, _): (T, usize) =
        bincode::serde::decode_from_slice(bytes, v1_config()).map_err(|e| {
            Error::Codec(CodecError::MalformedIndexValue {
                detail: e.to_string(),
            })
        })?;
    Ok(value)
}

/// Decodes a record payload. Validation of every field runs as part of decoding, so a decoded
/// event satisfies every bound a constructed one does.
///
/// # Errors
/// [`Error::Codec`] for an unknown version, malformed bytes, invalid field values or trailing
/// bytes.
pub fn decode_event(payload: &[u8]) -> Result<Event> {
    let Some((&version, body)) = payload.split_first() else {
        return Err(CodecError::Empty.into());
    };
    match version {
        EVENT_FORMAT_V1 => {
            let (event, used): (Event, usize) =
                bincode::serde::decode_from_slice(body, v1_config()).map_err(|e| {
                    CodecError::Malformed {
                        detail: e.to_string(),
                    }
                })?;
            if used != body.len() {
                return Err(CodecError::TrailingBytes {
                    count: body.len() - used,
                }
                .into());
            }
            Ok(event)
        }
        version => Err(CodecError::UnknownVersion { version }.into()),
    }
}
