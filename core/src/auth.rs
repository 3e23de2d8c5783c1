//! Signatures: who may speak for a region (SPEC §3). The replica never holds keys; the host
//! passes an [`Authenticator`] in (walletd: ed25519; the simulator: [`NoAuth`]).

use crate::event::Event;
use crate::id::{Hlc, RegionId};
use crate::message::{Evidence, Heartbeat, SignedHeartbeat};

/// Signs and verifies events. The node uses ed25519 keys; the simulator uses [`NoAuth`].
pub trait Authenticator: Send {
    /// Signs bytes as this region.
    fn sign(&self, bytes: &[u8]) -> Vec<u8>;
    /// Checks a signature by `origin` over bytes.
    fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool;
    /// Checks a signature by `origin` over bytes made at `hlc`, against the key of `origin`
    /// valid at that HLC (SPEC §10). By default the one key [`Authenticator::verify`] knows.
    fn verify_at(&self, origin: RegionId, hlc: Hlc, bytes: &[u8], sig: &[u8]) -> bool {
        let _ = hlc;
        self.verify(origin, bytes, sig)
    }
    /// A membership event applied here binds `key` to `region` for everything it signs at
    /// an HLC above `from` (a join, or a rotation by the region itself). The replica calls
    /// it for every such event it applies, in each region's log order, and again after a
    /// restart. By default ignored (an authenticator with fixed keys).
    fn set_key(&mut self, region: RegionId, from: Hlc, key: &[u8]) {
        let _ = (region, from, key);
    }
    /// Signs an event as this region: by default [`Authenticator::sign`] over
    /// [`Event::signing_bytes`]. An authenticator that ignores the bytes may skip encoding them.
    fn sign_event(&self, event: &Event, cluster: &str) -> Vec<u8> {
        self.sign(&event.signing_bytes(cluster))
    }
    /// Checks an event's signature by `origin`: by default [`Authenticator::verify`] over
    /// [`Event::signing_bytes`]. An authenticator that ignores the bytes may skip encoding
    /// them; the answer must be the same.
    fn verify_event(&self, origin: RegionId, event: &Event, cluster: &str) -> bool {
        self.verify_at(origin, event.hlc, &event.signing_bytes(cluster), &event.sig)
    }
    /// Signs a heartbeat as this region, over [`Heartbeat::signing_bytes`].
    fn sign_heartbeat(&self, hb: &Heartbeat, cluster: &str) -> Vec<u8> {
        self.sign(&hb.signing_bytes(cluster))
    }
    /// Checks a heartbeat's signature by its origin.
    fn verify_heartbeat(&self, shb: &SignedHeartbeat, cluster: &str) -> bool {
        self.verify_at(
            shb.hb.origin,
            shb.hb.hlc,
            &shb.hb.signing_bytes(cluster),
            &shb.sig,
        )
    }
    /// True when evidence proves misbehaviour: its items contradict each other
    /// ([`Evidence::contradicts`]) and each carries its origin's valid signature for this
    /// cluster.
    fn verify_evidence(&self, ev: &Evidence, cluster: &str) -> bool {
        if !ev.contradicts() {
            return false;
        }
        match ev {
            Evidence::Conflicting(a, b) => {
                self.verify_event(a.id.origin, a, cluster)
                    && self.verify_event(b.id.origin, b, cluster)
            }
            Evidence::BrokenPromise { heartbeat, event } => {
                self.verify_heartbeat(heartbeat, cluster)
                    && self.verify_event(event.id.origin, event, cluster)
            }
        }
    }
}

/// No signatures: for the simulator and tests, where peers are trusted by construction.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn sign(&self, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn verify(&self, _: RegionId, _: &[u8], sig: &[u8]) -> bool {
        sig.is_empty()
    }
    // The same answers as the defaults, without encoding the signing bytes per event.
    fn sign_event(&self, _: &Event, _: &str) -> Vec<u8> {
        Vec::new()
    }
    fn verify_event(&self, _: RegionId, event: &Event, _: &str) -> bool {
        event.sig.is_empty()
    }
    fn sign_heartbeat(&self, _: &Heartbeat, _: &str) -> Vec<u8> {
        Vec::new()
    }
    fn verify_heartbeat(&self, shb: &SignedHeartbeat, _: &str) -> bool {
        shb.sig.is_empty()
    }
}

/// Keys by region and by the HLC from which they apply (SPEC §10): what an
/// [`Authenticator`] keeps to verify an event against the key valid at its HLC. A key set
/// `from` h applies to everything signed at an HLC above h; a founding key is set from
/// [`Hlc::ZERO`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    keys: std::collections::BTreeMap<RegionId, std::collections::BTreeMap<Hlc, Box<[u8]>>>,
}

impl KeyHistory {
    /// An empty history.
    pub fn new() -> KeyHistory {
        KeyHistory::default()
    }

    /// Binds `key` to `region` above `from`. Setting the same point again keeps the first
    /// key: a replayed membership event changes nothing.
    pub fn set(&mut self, region: RegionId, from: Hlc, key: &[u8]) {
        self.keys
            .entry(region)
            .or_default()
            .entry(from)
            .or_insert_with(|| key.into());
    }

    /// The key of `region` valid at `hlc`: the one set at the highest point below it.
    pub fn at(&self, region: RegionId, hlc: Hlc) -> Option<&[u8]> {
        self.keys
            .get(&region)?
            .range(..hlc)
            .next_back()
            .map(|(_, k)| &**k)
    }

    /// Every region's keys, oldest first.
    pub fn regions(&self) -> impl Iterator<Item = (RegionId, Vec<(Hlc, &[u8])>)> {
        self.keys
            .iter()
            .map(|(r, m)| (*r, m.iter().map(|(h, k)| (*h, &**k)).collect()))
    }
}
