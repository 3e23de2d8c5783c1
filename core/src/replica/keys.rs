//! An account's idempotency keys (SPEC §5, §7): key -> the first event holding it in the total
//! order, with the key strings read from the logs rather than copied.

use std::collections::BTreeMap;

use crate::id::{EventId, RegionId};

use super::log::{log_event, Member};

/// An account's idempotency keys: key -> event, in an ordered map by a fixed 128-bit code of
/// the key: its first 8 bytes (big-endian, zero-padded), then a 64-bit hash (FNV-1a) of all
/// of it. A lookup compares integers in the map's nodes and reads one key at the end,
/// instead of comparing strings all the way down (a third of the merge time with ten thousand
/// keys per account); keys that differ early keep their order, so keys issued in sequence
/// stay near each other in the tree. The key strings are not copied: they are read from the
/// events, in the logs. Distinct keys with one code (rare) go to `collided`. Nothing iterates
/// either map.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    map: BTreeMap<u128, EventId>,
    collided: BTreeMap<u128, Vec<EventId>>,
}

/// The idempotency key of an event held in the logs.
pub(crate) fn key_of(members: &BTreeMap<RegionId, Member>, id: EventId) -> Option<&str> {
    log_event(members, id)?.tx()?.idempotency_key.as_deref()
}

impl KeyIndex {
    pub(crate) fn code(key: &str) -> u128 {
        let bytes = key.as_bytes();
        let mut prefix = [0u8; 8];
        for (i, p) in prefix.iter_mut().enumerate() {
            *p = bytes.get(i).copied().unwrap_or(0);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (u128::from(u64::from_be_bytes(prefix)) << 64) | u128::from(h)
    }

    pub(crate) fn get(&self, members: &BTreeMap<RegionId, Member>, key: &str) -> Option<EventId> {
        self.get_at(members, KeyIndex::code(key), key)
    }

    pub(crate) fn get_at(
        &self,
        members: &BTreeMap<RegionId, Member>,
        code: u128,
        key: &str,
    ) -> Option<EventId> {
        let holds = |id: &EventId| key_of(members, *id) == Some(key);
        let first = self.map.get(&code)?;
        if holds(first) {
            return Some(*first);
        }
        self.collided
            .get(&code)?
            .iter()
            .find(|id| holds(id))
            .copied()
    }

    /// The event holding `key`, or, when none does, `id` is added as its holder (for an
    /// event about to be in the logs) and None is returned. One search of the map when the
    /// code is new.
    pub(crate) fn holder_or_insert(
        &mut self,
        members: &BTreeMap<RegionId, Member>,
        key: &str,
        id: EventId,
    ) -> Option<&mut EventId> {
        let code = KeyIndex::code(key);
        let holds = |id: &EventId| key_of(members, *id) == Some(key);
        match self.map.entry(code) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(id);
                None
            }
            std::collections::btree_map::Entry::Occupied(o) => {
                let first = o.into_mut();
                if holds(first) {
                    return Some(first);
                }
                let others = self.collided.entry(code).or_default();
                match others.iter().position(holds) {
                    Some(i) => others.get_mut(i),
                    None => {
                        others.push(id);
                        None
                    }
                }
            }
        }
    }

    /// `id` no longer holds `key` (its retention ended): `next` (the next holder of the same
    /// key in total order, if any) takes its place, else the entry goes. An `id` that holds
    /// nothing here is ignored.
    pub(crate) fn replace(&mut self, key: &str, id: EventId, next: Option<EventId>) {
        let code = KeyIndex::code(key);
        if self.map.get(&code) == Some(&id) {
            match next {
                Some(n) => {
                    self.map.insert(code, n);
                }
                None => match self.collided.get_mut(&code) {
                    // Another key with this code moves up from `collided`.
                    Some(others) if !others.is_empty() => {
                        let moved = others.remove(0);
                        if others.is_empty() {
                            self.collided.remove(&code);
                        }
                        self.map.insert(code, moved);
                    }
                    _ => {
                        self.map.remove(&code);
                    }
                },
            }
            return;
        }
        let Some(others) = self.collided.get_mut(&code) else {
            return;
        };
        if let Some(i) = others.iter().position(|o| *o == id) {
            match next {
                Some(n) => others[i] = n,
                None => {
                    others.remove(i);
                    if others.is_empty() {
                        self.collided.remove(&code);
                    }
                }
            }
        }
    }

    /// Every holder, ascending (tests).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> Vec<EventId> {
        let mut v: Vec<EventId> = self.map.values().copied().collect();
        v.extend(self.collided.values().flatten().copied());
        v.sort();
        v
    }

    /// Holders held (for the `idempotency_keys_held` figure).
    pub(crate) fn len(&self) -> usize {
        self.map.len() + self.collided.values().map(Vec::len).sum::<usize>()
    }

    /// Adds a key not held yet, for an event that is, or is about to be, in the logs.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, members: &BTreeMap<RegionId, Member>, key: &str, id: EventId) {
        self.insert_at(members, KeyIndex::code(key), key, id);
    }

    #[cfg(test)]
    pub(crate) fn insert_at(
        &mut self,
        members: &BTreeMap<RegionId, Member>,
        code: u128,
        key: &str,
        id: EventId,
    ) {
        debug_assert!(self.get_at(members, code, key).is_none());
        match self.map.entry(code) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            std::collections::btree_map::Entry::Occupied(_) => {
                self.collided.entry(code).or_default().push(id);
            }
        }
    }
}
