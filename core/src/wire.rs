//! The versioned wire and disk encoding (postcard). Every encoded value starts with a format
//! version byte; a later release adds a decoder for its own version and keeps the old ones, so
//! bytes written today stay readable.

use serde::{de::DeserializeOwned, Serialize};

use crate::event::Event;
use crate::replica::Message;

/// The format version this release writes.
pub const WIRE_VERSION: u8 = 1;
/// Largest message accepted from a peer, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Decoding failures: corrupt, truncated, oversized or from an unknown future version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// No bytes.
    #[error("empty input")]
    Empty,
    /// A version this release cannot read.
    #[error("unsupported format version {0} (this release reads version {WIRE_VERSION})")]
    Version(u8),
    /// Too large.
    #[error("message of {0} bytes exceeds the limit of {MESSAGE_BYTES_MAX}")]
    TooLarge(usize),
    /// Postcard failed, or bytes were left over.
    #[error("malformed bytes: {0}")]
    Malformed(String),
    /// Decoded, but a field is invalid.
    #[error("invalid event: {0}")]
    Invalid(String),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Encoding plain owned data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(v).unwrap_or_default());
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode_limited(bytes, MESSAGE_BYTES_MAX)
}

fn decode_limited<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    match version {
        1 => {
            let (v, left) =
                postcard::take_from_bytes(rest).map_err(|e| WireError::Malformed(e.to_string()))?;
            if !left.is_empty() {
                return Err(WireError::Malformed(format!(
                    "{} trailing bytes",
                    left.len()
                )));
            }
            Ok(v)
        }
        v => Err(WireError::Version(v)),
    }
}

/// Encodes one event (disk record and wire).
pub fn encode_event(e: &Event) -> Vec<u8> {
    encode(e)
}

/// Decodes and validates one event.
pub fn decode_event(bytes: &[u8]) -> Result<Event, WireError> {
    let e: Event = decode(bytes)?;
    e.validate()
        .map_err(|err| WireError::Invalid(err.to_string()))?;
    Ok(e)
}

/// Encodes a peer message.
pub fn encode_message(m: &Message) -> Vec<u8> {
    encode(m)
}

/// The length of [`encode_message`]'s output, counted without building it.
pub fn encoded_message_len(m: &Message) -> usize {
    1 + postcard::experimental::serialized_size(m).unwrap_or(0)
}

/// Decodes a peer message. Events inside are validated by the replica on merge.
pub fn decode_message(bytes: &[u8]) -> Result<Message, WireError> {
    decode(bytes)
}

/// Largest encoded snapshot accepted: a snapshot holds every account, so it is allowed to be
/// much larger than a message (a host streams it in chunks of at most [`MESSAGE_BYTES_MAX`]).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;

/// Encodes a signed snapshot (disk record and wire), versioned like every record.
pub fn encode_snapshot(s: &crate::replica::Snapshot) -> Vec<u8> {
    encode(s)
}

/// Decodes a signed snapshot (at most [`SNAPSHOT_BYTES_MAX`]); the caller verifies it
/// ([`crate::replica::Snapshot::verify`]).
pub fn decode_snapshot(bytes: &[u8]) -> Result<crate::replica::Snapshot, WireError> {
    decode_limited(bytes, SNAPSHOT_BYTES_MAX)
}

/// Encodes any serializable value in the versioned format (host-side records).
pub fn encode_value<T: Serialize>(v: &T) -> Vec<u8> {
    encode(v)
}

/// Decodes any value in the versioned format.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Kind, Tx};
    use crate::id::{AccountId, EventId, Hlc, RegionId};
    use crate::money::{Amount, Currency};
    use crate::policy::Policy;
    use crate::replica::Heartbeat;
    use crdts::VClock;

    #[test]
    fn encoded_message_len_is_the_encoding_length() {
        let eu = RegionId::new("eu").unwrap();
        let mut vv = VClock::new();
        vv.dots.insert(eu, 300);
        let tx = |seq: u64, key: Option<&str>| Event {
            id: EventId { origin: eu, seq },
            hlc: Hlc::from_millis(1_000 + seq),
            body: Body::Tx(Tx {
                account: AccountId::new("acct-0001").unwrap(),
                kind: Kind::Purchase,
                amount: Amount::parse("12.34", Currency::USD).unwrap(),
                currency: Currency::USD,
                idempotency_key: key.map(Into::into),
                reference: Some("order 7".into()),
            }),
            sig: vec![9u8; 64].into(),
        };
        let policy = Event {
            id: EventId { origin: eu, seq: 3 },
            hlc: Hlc::from_millis(2_000),
            body: Body::Policy(Box::new(Policy::zero())),
            sig: Box::new([]),
        };
        let messages = [
            Message::Events(Vec::new()),
            Message::Events(vec![tx(1, Some("k1")), tx(2, None), policy]),
            Message::Events((1..300).map(|q| tx(q, Some("key"))).collect()),
            Message::Heartbeat(Heartbeat {
                origin: eu,
                hlc: Hlc::from_millis(5_000),
                seq: 300,
                vv: vv.clone(),
                policy: Policy::zero().hash(),
            }),
            Message::Pull { vv, limit: 4096 },
        ];
        for m in &messages {
            assert_eq!(encoded_message_len(m), encode_message(m).len());
        }
    }
}
