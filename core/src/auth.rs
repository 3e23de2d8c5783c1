//! Signatures: who may speak for a region (SPEC §3). The replica never holds keys; the host
//! passes an [`Authenticator`] in (walletd: ed25519; the simulator: [`NoAuth`]).

use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::id::{Hlc, RegionId};
use crate::message::{Evidence, Heartbeat, SignedHeartbeat};

/// Most events one batch signature covers: the proof of each is at most
/// `log2(SIGN_BATCH_EVENTS_MAX)` hashes.
pub const SIGN_BATCH_EVENTS_MAX: usize = 32;
/// First byte of a batch signature ([`BatchSig`]).
pub const BATCH_SIG_TAG: u8 = 0xB1;
/// Most hashes a batch proof may carry (a tree of up to 2^16 leaves).
pub const BATCH_PROOF_HASHES_MAX: usize = 16;

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
    /// Signs consecutive events of this region at once: one signature over the Merkle root
    /// of their leaf hashes, each event's `sig` a [`BatchSig`] (the root signature, its
    /// index, its proof), so that each still verifies on its own. One event gets a plain
    /// [`Authenticator::sign_event`] signature. Returns one signature per event, in order.
    fn sign_events(&self, events: &[Event], cluster: &str) -> Vec<Box<[u8]>> {
        if events.len() < 2 {
            return events
                .iter()
                .map(|e| self.sign_event(e, cluster).into())
                .collect();
        }
        let leaves: Vec<[u8; 32]> = events.iter().map(|e| leaf_hash(e, cluster)).collect();
        let levels = merkle_levels(leaves);
        let root = levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0; 32]);
        let origin = events[0].id.origin;
        let count = events.len() as u32;
        let root_sig = self.sign(&root_signing_bytes(cluster, origin, count, &root));
        (0..events.len())
            .map(|i| {
                BatchSig {
                    root_sig: root_sig.clone(),
                    index: i as u32,
                    count,
                    proof: proof_in(&levels, i),
                }
                .encode()
                .into()
            })
            .collect()
    }
    /// Checks a signature by `origin` over a batch root (the bytes of
    /// [`root_signing_bytes`]) for an event made at `hlc`. By default
    /// [`Authenticator::verify_at`]; an authenticator may remember roots it verified
    /// ([`VerifiedRoots`]) so that a batch costs one verification.
    fn verify_root(&self, origin: RegionId, hlc: Hlc, bytes: &[u8], sig: &[u8]) -> bool {
        self.verify_at(origin, hlc, bytes, sig)
    }
    /// Checks an event's signature by `origin`: a [`BatchSig`] through its proof and
    /// [`Authenticator::verify_root`], or else a plain signature ([`Authenticator::verify_at`]
    /// over [`Event::signing_bytes`]). An authenticator that ignores the bytes may skip
    /// encoding them; the answer must be the same.
    fn verify_event(&self, origin: RegionId, event: &Event, cluster: &str) -> bool {
        let bytes = event.signing_bytes(cluster);
        if let Some(b) = BatchSig::decode(&event.sig) {
            if let Some(root) = b.root_of(leaf_of(&bytes)) {
                let msg = root_signing_bytes(cluster, origin, b.count, &root);
                if self.verify_root(origin, event.hlc, &msg, &b.root_sig) {
                    return true;
                }
            }
        }
        // A plain signature (format 1), which a batch signature never is.
        self.verify_at(origin, event.hlc, &bytes, &event.sig)
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
    fn sign_events(&self, events: &[Event], _: &str) -> Vec<Box<[u8]>> {
        vec![Box::default(); events.len()]
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

/// A batch signature, as an event's `sig` (format 2): one signature by the origin over the
/// Merkle root of a batch of its events ([`root_signing_bytes`]), with this event's place in
/// the batch and the sibling hashes from its leaf up to the root. Encoded as
/// [`BATCH_SIG_TAG`] ‖ count (u32 LE) ‖ index (u32 LE) ‖ root signature length (u8) ‖ root
/// signature ‖ proof hashes (32 bytes each, leaf level first).
///
/// The tree: leaves are `SHA-256(0x00 ‖ Event::signing_bytes)`, an inner node is
/// `SHA-256(0x01 ‖ left ‖ right)`, and the last node of a level with an odd count moves up
/// unpaired. The root signature covers the cluster id and the origin; each leaf covers every
/// field of its event and the cluster id (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSig {
    /// The origin's signature over [`root_signing_bytes`].
    pub root_sig: Vec<u8>,
    /// This event's leaf index.
    pub index: u32,
    /// Leaves in the batch (at least 2).
    pub count: u32,
    /// Sibling hashes, leaf level first.
    pub proof: Vec<[u8; 32]>,
}

impl BatchSig {
    /// The bytes carried in an event's `sig`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.root_sig.len() + 32 * self.proof.len());
        out.push(BATCH_SIG_TAG);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        // A root signature is at most 255 bytes (ed25519: 64); `decode` refuses a mismatch.
        out.push(self.root_sig.len().min(255) as u8);
        out.extend_from_slice(&self.root_sig);
        for h in &self.proof {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses a batch signature: `None` for anything else (a plain signature, or bytes
    /// that do not frame exactly).
    pub fn decode(sig: &[u8]) -> Option<BatchSig> {
        let (&tag, rest) = sig.split_first()?;
        if tag != BATCH_SIG_TAG || rest.len() < 9 {
            return None;
        }
        let count = u32::from_le_bytes(rest[0..4].try_into().ok()?);
        let index = u32::from_le_bytes(rest[4..8].try_into().ok()?);
        let sig_len = usize::from(rest[8]);
        let rest = &rest[9..];
        if count < 2 || index >= count || rest.len() < sig_len {
            return None;
        }
        let (root_sig, hashes) = rest.split_at(sig_len);
        if hashes.len() % 32 != 0 || hashes.len() / 32 > BATCH_PROOF_HASHES_MAX {
            return None;
        }
        let proof = hashes
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        Some(BatchSig {
            root_sig: root_sig.to_vec(),
            index,
            count,
            proof,
        })
    }

    /// The root this proof leads to from `leaf`, or `None` if the proof has the wrong
    /// number of hashes for its index and count.
    pub fn root_of(&self, leaf: [u8; 32]) -> Option<[u8; 32]> {
        let (mut idx, mut size) = (self.index, self.count);
        let mut node = leaf;
        let mut proof = self.proof.iter();
        while size > 1 {
            let unpaired = idx % 2 == 0 && idx + 1 == size;
            if !unpaired {
                let sib = proof.next()?;
                node = if idx % 2 == 0 {
                    inner_hash(&node, sib)
                } else {
                    inner_hash(sib, &node)
                };
            }
            idx /= 2;
            size = size.div_ceil(2);
        }
        proof.next().is_none().then_some(node)
    }
}

/// The leaf hash of an event in a batch signature.
pub fn leaf_hash(event: &Event, cluster: &str) -> [u8; 32] {
    leaf_of(&event.signing_bytes(cluster))
}

fn leaf_of(signing_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(signing_bytes);
    h.finalize().into()
}

fn inner_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|p| match p {
            [l, r] => inner_hash(l, r),
            [l] => *l,
            _ => [0; 32],
        })
        .collect()
}

/// Every level of the Merkle tree over `leaves`, the leaves first, the root (one hash)
/// last.
pub fn merkle_levels(leaves: Vec<[u8; 32]>) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves];
    while let Some(top) = levels.last().filter(|l| l.len() > 1) {
        let next = next_level(top);
        levels.push(next);
    }
    levels
}

/// The Merkle root of leaves (at least one).
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    merkle_levels(leaves.to_vec())
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or([0; 32])
}

/// The sibling hashes from leaf `index` up to the root, leaf level first.
pub fn merkle_proof(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
    proof_in(&merkle_levels(leaves.to_vec()), index)
}

fn proof_in(levels: &[Vec<[u8; 32]>], index: usize) -> Vec<[u8; 32]> {
    let mut proof = Vec::with_capacity(levels.len());
    let mut idx = index;
    for level in levels.iter().take(levels.len().saturating_sub(1)) {
        if let Some(h) = level.get(idx ^ 1) {
            proof.push(*h);
        }
        idx /= 2;
    }
    proof
}

/// The bytes a batch's root signature covers: a domain tag, the cluster id, the origin, the
/// number of leaves and the root.
pub fn root_signing_bytes(cluster: &str, origin: RegionId, count: u32, root: &[u8; 32]) -> Vec<u8> {
    let mut out = b"wallet-batch-v1\0".to_vec();
    out.extend_from_slice(&(cluster.len() as u32).to_le_bytes());
    out.extend_from_slice(cluster.as_bytes());
    let o = origin.as_str().as_bytes();
    out.extend_from_slice(&(o.len() as u32).to_le_bytes());
    out.extend_from_slice(o);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(root);
    out
}

/// Most root verifications [`VerifiedRoots`] remembers.
pub const VERIFIED_ROOTS_MAX: usize = 256;

/// Batch roots whose signature an authenticator has verified, so that the other events of a
/// batch cost a hash path and no signature check. An entry is the SHA-256 of (the key the
/// signature was checked against, the signed root bytes, the signature): a hit means exactly
/// "this signature over this root verifies under this key". Bounded; the oldest go first.
#[derive(Debug, Default)]
pub struct VerifiedRoots {
    seen: std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>,
}

impl VerifiedRoots {
    /// An empty cache.
    pub fn new() -> VerifiedRoots {
        VerifiedRoots::default()
    }

    fn digest(key: &[u8], bytes: &[u8], sig: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [key, bytes, sig] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// True if `check` holds for (key, bytes, sig): answered from the cache when this
    /// triple was verified before, else by calling `check` (and remembering a success).
    pub fn verify(
        &self,
        key: &[u8],
        bytes: &[u8],
        sig: &[u8],
        check: impl FnOnce() -> bool,
    ) -> bool {
        let d = VerifiedRoots::digest(key, bytes, sig);
        if let Ok(seen) = self.seen.lock() {
            if seen.contains(&d) {
                return true;
            }
        }
        let ok = check();
        if ok {
            if let Ok(mut seen) = self.seen.lock() {
                if seen.len() >= VERIFIED_ROOTS_MAX {
                    seen.pop_front();
                }
                seen.push_back(d);
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Kind, Tx};
    use crate::id::{AccountId, EventId};
    use crate::money::{Amount, Currency};
    use proptest::prelude::*;

    /// A signature is a digest of the signer's name and the bytes: a region signs only as
    /// itself, and any change to the bytes breaks it.
    struct Toy(RegionId);

    fn tag(origin: RegionId, bytes: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(origin.as_str().as_bytes());
        h.update(bytes);
        h.finalize().to_vec()
    }

    impl Authenticator for Toy {
        fn sign(&self, bytes: &[u8]) -> Vec<u8> {
            tag(self.0, bytes)
        }
        fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool {
            tag(origin, bytes) == sig
        }
    }

    fn eu() -> RegionId {
        RegionId::new("eu").unwrap()
    }

    fn batch(first_seq: u64, n: usize, cents: u64) -> Vec<Event> {
        (0..n as u64)
            .map(|i| Event {
                id: EventId {
                    origin: eu(),
                    seq: first_seq + i,
                },
                hlc: Hlc::from_millis(1_000 + first_seq + i),
                body: Body::Tx(Tx {
                    account: AccountId::new(&format!("acct-{}", i % 3)).unwrap(),
                    kind: Kind::Purchase,
                    amount: Amount::parse(&format!("{}.{:02}", cents + i, i % 100), Currency::USD)
                        .unwrap(),
                    currency: Currency::USD,
                    idempotency_key: None,
                    reference: None,
                }),
                sig: Box::new([]),
            })
            .collect()
    }

    fn signed(first_seq: u64, n: usize, cents: u64) -> Vec<Event> {
        let mut events = batch(first_seq, n, cents);
        let sigs = Toy(eu()).sign_events(&events, "c1");
        for (e, s) in events.iter_mut().zip(sigs) {
            e.sig = s;
        }
        events
    }

    #[test]
    fn a_plain_signature_still_verifies_and_one_event_gets_one() {
        let auth = Toy(eu());
        let mut e = batch(1, 1, 5).remove(0);
        e.sig = auth.sign_event(&e, "c1").into();
        assert!(BatchSig::decode(&e.sig).is_none());
        assert!(auth.verify_event(eu(), &e, "c1"));
        let one = signed(1, 1, 5);
        assert_eq!(one[0].sig, e.sig);
    }

    #[test]
    fn the_root_is_signed_once_per_batch() {
        let events = signed(1, 5, 7);
        let sigs: Vec<BatchSig> = events
            .iter()
            .map(|e| BatchSig::decode(&e.sig).unwrap())
            .collect();
        assert!(sigs
            .iter()
            .all(|b| b.root_sig == sigs[0].root_sig && b.count == 5));
        // 5 leaves: indexes 0..3 have 3 siblings, the unpaired 4th moves up twice.
        assert_eq!(
            sigs.iter().map(|b| b.proof.len()).collect::<Vec<_>>(),
            [3, 3, 3, 3, 1]
        );
    }

    #[test]
    fn verified_roots_remember_only_successes() {
        let cache = VerifiedRoots::new();
        let mut calls = 0;
        assert!(!cache.verify(b"k", b"m", b"s", || {
            calls += 1;
            false
        }));
        assert!(cache.verify(b"k", b"m", b"s", || {
            calls += 1;
            true
        }));
        assert!(cache.verify(b"k", b"m", b"s", || {
            calls += 1;
            false
        }));
        // Another key, message or signature is not a hit.
        assert!(!cache.verify(b"j", b"m", b"s", || false));
        assert!(!cache.verify(b"k", b"n", b"s", || false));
        assert!(!cache.verify(b"k", b"m", b"t", || false));
        assert_eq!(calls, 2);
    }

    fn persisted_events(r: &mut crate::Replica) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(o) = r.poll_output() {
            if let crate::Output::Persist {
                record: crate::Record::Event(e),
                ..
            } = o
            {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn held_transactions_are_signed_and_persisted_together() {
        let mut cfg = crate::Config::new(eu(), vec![eu()], crate::Policy::zero());
        cfg.auth = Box::new(Toy(eu()));
        cfg.cluster = "c1".into();
        let mut r = crate::Replica::new(cfg, Hlc::ZERO);
        r.hold_signing(true);
        let deposit = |i: u64| crate::TxRequest {
            account: AccountId::new("alice").unwrap(),
            kind: Kind::Deposit,
            amount: Amount::parse(&format!("{}", i + 1), Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        };
        for i in 0..5 {
            r.submit(1_000 + i, deposit(i)).unwrap();
        }
        // Applied, not persisted, not signed.
        assert!(persisted_events(&mut r).is_empty());
        assert!(r
            .event(EventId {
                origin: eu(),
                seq: 5
            })
            .unwrap()
            .sig
            .is_empty());
        r.sign_pending();
        let events = persisted_events(&mut r);
        assert_eq!(
            events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        for e in &events {
            assert_eq!(BatchSig::decode(&e.sig).unwrap().count, 5);
            assert!(Toy(eu()).verify_event(eu(), e, "c1"));
            assert_eq!(r.event(e.id).unwrap().sig, e.sig);
        }
        // A policy change signs what is held first (one event: a plain signature), then
        // itself alone.
        r.submit(2_000, deposit(9)).unwrap();
        r.submit_policy(2_001, crate::Policy::zero()).unwrap();
        let events = persisted_events(&mut r);
        assert_eq!(events.iter().map(|e| e.id.seq).collect::<Vec<_>>(), [6, 7]);
        assert!(events
            .iter()
            .all(|e| BatchSig::decode(&e.sig).is_none() && Toy(eu()).verify_event(eu(), e, "c1")));
        // Off: each transaction signed as issued.
        r.hold_signing(false);
        r.submit(3_000, deposit(3)).unwrap();
        assert_eq!(persisted_events(&mut r).len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every event of a batch verifies on its own, under its cluster and origin only.
        #[test]
        fn every_event_of_a_batch_verifies_alone(n in 2usize..70, cents in 1u64..1_000) {
            let auth = Toy(eu());
            let events = signed(1, n, cents);
            for e in &events {
                prop_assert!(auth.verify_event(eu(), e, "c1"));
                prop_assert!(!auth.verify_event(eu(), e, "c2"));
                prop_assert!(!auth.verify_event(RegionId::new("us").unwrap(), e, "c1"));
            }
        }

        /// Changing any field, any byte of the proof, the index or the count breaks it.
        #[test]
        fn tampering_fails(n in 2usize..40, pick in 0usize..40, what in 0u8..8, flip in 0usize..400) {
            let auth = Toy(eu());
            let events = signed(1, n, 3);
            let mut e = events[pick % n].clone();
            let mut b = BatchSig::decode(&e.sig).unwrap();
            match what {
                0 => e.hlc = Hlc(e.hlc.0 + 1),
                1 => e.id.seq += 1,
                2 => {
                    if let Body::Tx(t) = &mut e.body {
                        t.kind = Kind::Deposit;
                    }
                }
                3 => {
                    if let Body::Tx(t) = &mut e.body {
                        t.reference = Some("x".into());
                    }
                }
                4 => {
                    let i = flip % b.proof.len().max(1);
                    if let Some(h) = b.proof.get_mut(i) {
                        h[flip % 32] ^= 1;
                    } else {
                        b.proof.push([0; 32]);
                    }
                    e.sig = b.encode().into();
                }
                5 => {
                    b.index = (b.index + 1 + (flip as u32 % (b.count - 1))) % b.count;
                    e.sig = b.encode().into();
                }
                6 => {
                    b.count += 1 + flip as u32 % 3;
                    e.sig = b.encode().into();
                }
                _ => {
                    // One hash more than the path needs.
                    b.proof.push([flip as u8; 32]);
                    e.sig = b.encode().into();
                }
            }
            prop_assert!(!auth.verify_event(eu(), &e, "c1"));
        }

        /// A proof from another batch does not verify an event, even at the same index.
        #[test]
        fn a_proof_from_another_batch_fails(n in 2usize..40, pick in 0usize..40) {
            let auth = Toy(eu());
            let a = signed(1, n, 3);
            let b = signed(1, n, 4);
            let i = pick % n;
            let mut e = a[i].clone();
            e.sig = b[i].sig.clone();
            prop_assert!(!auth.verify_event(eu(), &e, "c1"));
        }

        /// Decoding never panics, and what decodes re-encodes to the same bytes.
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = bytes;
            if let Some(b) = bytes.first_mut() {
                *b = BATCH_SIG_TAG;
            }
            if let Some(b) = BatchSig::decode(&bytes) {
                prop_assert_eq!(b.encode(), bytes);
            }
        }
    }
}
