//! Identifiers: regions, events, accounts, and hybrid logical clocks (SPEC §2).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest region name, in bytes.
pub const REGION_NAME_LEN_MAX: usize = 8;
/// Longest account id, in bytes.
pub const ACCOUNT_LEN_MAX: usize = 64;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// Longest free-text reference, in bytes.
pub const REFERENCE_LEN_MAX: usize = 255;

/// Identifier errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Region names are 1 to 8 characters of `a-z 0-9 -`.
    #[error("invalid region name {0:?}: expected 1 to 8 characters of a-z, 0-9 or -")]
    Region(String),
    /// Account ids are 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
    #[error("invalid account id {0:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ : -")]
    Account(String),
    /// Event ids are `<region>:<seq>`.
    #[error("invalid event id {0:?}: expected <region>:<seq> with seq >= 1")]
    Event(String),
    /// Idempotency keys are 1 to 255 visible ASCII characters.
    #[error("invalid idempotency key: expected 1 to 255 visible ASCII characters")]
    IdempotencyKey,
    /// References are at most 255 bytes without control characters.
    #[error("invalid reference: at most 255 bytes, no control characters")]
    Reference,
}

/// A region name, stored inline: up to 8 bytes of `a-z 0-9 -`, zero padded.
///
/// Ordering is byte order of the name, which is the `origin` component of the total order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegionId([u8; REGION_NAME_LEN_MAX]);

// Byte-wise (lexicographic) order, as a derive would give, but compared as one big-endian
// integer: a derived order on `[u8; 8]` calls `memcmp`, and region ids are compared in every
// map and order-key lookup.
impl Ord for RegionId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        u64::from_be_bytes(self.0).cmp(&u64::from_be_bytes(other.0))
    }
}
impl PartialOrd for RegionId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl RegionId {
    /// Parses and checks a region name.
    pub fn new(name: &str) -> Result<RegionId, IdError> {
        let ok = !name.is_empty()
            && name.len() <= REGION_NAME_LEN_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(IdError::Region(name.to_string()));
        }
        let mut b = [0u8; REGION_NAME_LEN_MAX];
        b[..name.len()].copy_from_slice(name.as_bytes());
        Ok(RegionId(b))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..n]).unwrap_or("?")
    }

    /// True if the bytes form a valid name (used when decoding untrusted bytes).
    pub fn is_valid(&self) -> bool {
        RegionId::new(self.as_str())
            .map(|r| r == *self)
            .unwrap_or(false)
    }
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl FromStr for RegionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionId::new(s)
    }
}

/// An event id: origin region and a gap-free per-origin sequence number starting at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    /// The region that issued the event.
    pub origin: RegionId,
    /// Position in the origin's log, from 1.
    pub seq: u64,
}

impl EventId {
    /// Parses `<region>:<seq>`.
    pub fn parse(s: &str) -> Result<EventId, IdError> {
        let (r, q) = s.split_once(':').ok_or_else(|| IdError::Event(s.into()))?;
        let origin = RegionId::new(r).map_err(|_| IdError::Event(s.into()))?;
        let seq: u64 = q.parse().map_err(|_| IdError::Event(s.into()))?;
        if seq == 0 || q.starts_with('+') || q.starts_with('0') {
            return Err(IdError::Event(s.into()));
        }
        Ok(EventId { origin, seq })
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}
impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

/// An account id: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`. Cheap to clone.
#[derive(Clone, Eq, Serialize, Deserialize)]
pub struct AccountId(Arc<str>);

impl std::hash::Hash for AccountId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

// The derived comparisons, with a shortcut for two handles of one interned string (the
// replica shares one allocation per account): no byte comparison then.
impl PartialEq for AccountId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}
impl Ord for AccountId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}
impl PartialOrd for AccountId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl AccountId {
    /// Parses and checks an account id.
    pub fn new(s: &str) -> Result<AccountId, IdError> {
        if !is_valid_account(s) {
            return Err(IdError::Account(s.to_string()));
        }
        Ok(AccountId(Arc::from(s)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if the text is a valid id (used when decoding untrusted bytes).
    pub fn is_valid(&self) -> bool {
        is_valid_account(&self.0)
    }
}

fn is_valid_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ACCOUNT_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks an idempotency key.
pub fn check_idempotency_key(k: &str) -> Result<(), IdError> {
    if k.is_empty() || k.len() > IDEMPOTENCY_KEY_LEN_MAX || !k.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(IdError::IdempotencyKey);
    }
    Ok(())
}

/// Checks a free-text reference.
pub fn check_reference(r: &str) -> Result<(), IdError> {
    if r.len() > REFERENCE_LEN_MAX || r.chars().any(char::is_control) {
        return Err(IdError::Reference);
    }
    Ok(())
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bits of an [`Hlc`] that hold the logical counter.
pub const HLC_LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock timestamp: physical milliseconds in the high 48 bits, a logical
/// counter in the low 16. Compared as one `u64`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The zero timestamp, below every real one.
    pub const ZERO: Hlc = Hlc(0);

    /// The timestamp at the start of physical millisecond `ms`.
    pub fn from_millis(ms: u64) -> Hlc {
        Hlc(ms << HLC_LOGICAL_BITS)
    }

    /// Physical milliseconds.
    pub fn millis(&self) -> u64 {
        self.0 >> HLC_LOGICAL_BITS
    }

    /// Logical counter.
    pub fn logical(&self) -> u64 {
        self.0 & ((1 << HLC_LOGICAL_BITS) - 1)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.millis(), self.logical())
    }
}
impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:05}", self.millis(), self.logical())
    }
}

/// A hybrid logical clock. Time is an input: the caller passes physical milliseconds.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that never issues a timestamp at or below `floor`.
    pub fn new(floor: Hlc) -> Clock {
        Clock { last: floor }
    }

    /// Issues a new timestamp, strictly above every timestamp issued or observed.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let phys = Hlc::from_millis(now_ms);
        self.last = if phys > self.last {
            phys
        } else {
            Hlc(self.last.0.saturating_add(1))
        };
        self.last
    }

    /// Observes a remote timestamp (already checked against the skew bound).
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names() {
        assert!(RegionId::new("eu").is_ok());
        assert!(RegionId::new("us-east1").is_ok());
        for bad in ["", "EU", "toolongname", "e u", "é"] {
            assert!(RegionId::new(bad).is_err(), "{bad}");
        }
        assert!(RegionId::new("ap").unwrap() < RegionId::new("eu").unwrap());
        assert!(RegionId::new("eu").unwrap() < RegionId::new("eu2").unwrap());
    }

    #[test]
    fn account_ids() {
        assert!(AccountId::new("alice").is_ok());
        assert!(AccountId::new("A.b_c:d-9").is_ok());
        assert!(AccountId::new(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert!(AccountId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids() {
        let id = EventId::parse("eu:12").unwrap();
        assert_eq!(id.to_string(), "eu:12");
        for bad in [
            "eu", "eu:0", "eu:-1", "eu:01", "EU:1", ":1", "eu:x", "eu:+1",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clock_strictly_increases_and_observes() {
        let mut c = Clock::new(Hlc::ZERO);
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(999); // clock stepped back
        assert!(a < b && b < d);
        c.observe(Hlc::from_millis(5000));
        let e = c.tick(1001);
        assert!(e > Hlc::from_millis(5000));
        assert_eq!(a.millis(), 1000);
    }
}
