//! Unit tests of the replica's internals.

//! Overflow cannot be reached through validated inputs (amounts are at most 10^12 and a
//! sum needs about 10^16 of them), so these tests inject crafted events below the
//! validation layer, as a corrupted peer or disk would.
use super::*;
use crate::event::{Body, CompKind, Kind};
use crate::id::AccountId;
use crate::money::Currency;

fn region(n: &str) -> RegionId {
    RegionId::new(n).unwrap()
}

/// A deposit on `account` with any amount, validation bypassed.
fn crafted(origin: &str, seq: u64, ms: u64, account: &str, amount: &str) -> Event {
    let json = serde_json::json!({
        "id": { "origin": region(origin), "seq": seq },
        "hlc": Hlc::from_millis(ms),
        "body": { "Tx": {
            "account": account, "kind": "Deposit", "amount": amount,
            "currency": Currency::USD, "idempotency_key": null, "reference": null,
        } },
        "sig": [],
    });
    serde_json::from_value(json).unwrap()
}

fn replica(me: &str) -> Replica {
    let names = vec![region("eu"), region("us")];
    Replica::new(Config::new(region(me), names, Policy::zero()), Hlc::ZERO)
}

fn settle_everything(r: &mut Replica) -> Vec<Report> {
    r.settle.watermark = Hlc(u64::MAX >> 1);
    r.settle_now();
    let mut reports = Vec::new();
    while let Some(o) = r.poll_output() {
        if let Output::Report(x) = o {
            reports.push(x);
        }
    }
    reports
}

#[test]
fn key_index_keeps_keys_with_one_code_apart() {
    // Events holding keys "a", "b", "c" and "k1", in the log of "us".
    let mut r = replica("eu");
    for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "k1")] {
        let mut e = crafted("us", seq, 1_000 + seq, "alice", "1");
        if let Body::Tx(tx) = &mut e.body {
            tx.idempotency_key = Some(key.into());
        }
        r.insert(e);
    }
    let id = |seq| EventId {
        origin: region("us"),
        seq,
    };
    let m = &r.logs.members;
    let mut idx = keys::KeyIndex::default();
    idx.insert(m, "k1", id(4));
    // Three distinct keys forced under one code.
    idx.insert_at(m, 7, "a", id(1));
    idx.insert_at(m, 7, "b", id(2));
    idx.insert_at(m, 7, "c", id(3));
    assert_eq!(idx.get(m, "k1"), Some(id(4)));
    assert_eq!(idx.get(m, "k2"), None);
    assert_eq!(idx.get_at(m, 7, "a"), Some(id(1)));
    assert_eq!(idx.get_at(m, 7, "b"), Some(id(2)));
    assert_eq!(idx.get_at(m, 7, "c"), Some(id(3)));
    assert_eq!(idx.get_at(m, 7, "d"), None);
    assert_ne!(keys::KeyIndex::code("k1"), keys::KeyIndex::code("k2"));
    let mut idx = keys::KeyIndex::default();
    assert_eq!(idx.holder_or_insert(m, "a", id(1)), None);
    assert_eq!(idx.holder_or_insert(m, "a", id(2)).copied(), Some(id(1)));
    assert_eq!(idx.holder_or_insert(m, "k1", id(4)), None);
    assert_eq!(idx.get(m, "k1"), Some(id(4)));
    // The replica's own index finds every key.
    let alice = AccountId::new("alice").unwrap();
    for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "k1")] {
        assert_eq!(r.find_key(&alice, key), Some(id(seq)));
    }
    assert_eq!(r.find_key(&alice, "z"), None);
}

const MAX: &str = "79228162514264337593543950335";

#[test]
fn settled_overflow_freezes_the_pair_the_same_way_on_every_region() {
    let events = [
        crafted("eu", 1, 1_000, "alice", MAX),
        crafted("us", 1, 1_001, "alice", MAX),
        crafted("eu", 2, 1_002, "alice", "1"),
        crafted("us", 2, 1_003, "bob", "7"),
    ];
    // Two regions receive them in different orders (gap-free per origin).
    let mut a = replica("eu");
    for i in [0, 2, 1, 3] {
        a.insert(events[i].clone());
    }
    let mut b = replica("us");
    for i in [1, 3, 0, 2] {
        b.insert(events[i].clone());
    }
    let (ra, rb) = (settle_everything(&mut a), settle_everything(&mut b));
    let alice = AccountId::new("alice").unwrap();
    let want = vec![Report::Overflow {
        account: alice.clone(),
        currency: Currency::USD,
        at: EventId {
            origin: region("us"),
            seq: 1,
        },
    }];
    assert_eq!(ra, want);
    assert_eq!(rb, want);
    for r in [&a, &b] {
        let bal = r.balance(&alice, Currency::USD);
        // Frozen at the last representable settled sum; later events are not folded.
        assert_eq!(bal.settled.to_string(), MAX);
        let st = &r.accounts.map[&alice].balances[&Currency::USD];
        assert!(st.frozen);
        // Other pairs are untouched.
        let bob = AccountId::new("bob").unwrap();
        assert_eq!(r.balance(&bob, Currency::USD).settled.to_string(), "7");
        assert_eq!(r.stats().settled, 4);
        r.check_invariants().unwrap();
    }
    // The local side refuses new transactions on the frozen pair.
    let req = TxRequest {
        account: alice.clone(),
        kind: Kind::Deposit,
        amount: Amount::parse("1", Currency::USD).unwrap(),
        currency: Currency::USD,
        idempotency_key: None,
        reference: None,
    };
    assert_eq!(
        a.submit(2_000, req).unwrap_err(),
        SubmitError::Frozen {
            account: alice,
            currency: Currency::USD
        }
    );
}

#[test]
fn provisional_overflow_is_refused_and_never_freezes_the_settled_fold() {
    let mut r = replica("eu");
    r.insert(crafted(
        "us",
        1,
        1_000,
        "alice",
        "79228162514264337593543950285",
    ));
    let alice = AccountId::new("alice").unwrap();
    let req = TxRequest {
        account: alice.clone(),
        kind: Kind::Deposit,
        amount: Amount::parse("100", Currency::USD).unwrap(),
        currency: Currency::USD,
        idempotency_key: None,
        reference: None,
    };
    assert_eq!(r.submit(2_000, req).unwrap_err(), SubmitError::Overflow);
    // A remote event that overflows the provisional sum freezes only the local view.
    r.insert(crafted("us", 2, 1_001, "alice", "100"));
    let st = &r.accounts.map[&alice].balances[&Currency::USD];
    assert!(st.provisional_frozen && !st.frozen);
}

/// A keyed deposit of `amount` on alice at `ms` (HLC milliseconds), validation bypassed.
fn keyed_at(origin: &str, seq: u64, ms: u64, key: &str, amount: &str) -> Event {
    let mut e = crafted(origin, seq, ms, "alice", amount);
    if let Body::Tx(tx) = &mut e.body {
        tx.idempotency_key = Some(key.into());
    }
    e
}

fn with_retention(me: &str, retention_ms: u64) -> Replica {
    let names = vec![region("eu"), region("us")];
    let mut cfg = Config::new(region(me), names, Policy::zero());
    cfg.idempotency_retention_ms = retention_ms;
    Replica::new(cfg, Hlc::ZERO)
}

/// Every key holder indexed, per account, sorted: what expiry left.
fn key_holders(r: &Replica) -> Vec<(AccountId, Vec<EventId>)> {
    r.accounts
        .map
        .iter()
        .map(|(a, st)| {
            let mut v = st.keys.holders();
            v.extend(st.more_keys.values().flatten().copied());
            v.sort();
            (a.clone(), v)
        })
        .collect()
}

fn settle_to(r: &mut Replica, ms: u64) {
    let w = Hlc::from_millis(ms);
    if w > r.settle.watermark {
        r.settle.watermark = w;
        r.settle_now();
    }
    while r.poll_output().is_some() {}
}

#[test]
fn a_key_expires_at_the_watermark_and_a_retry_after_retention_is_new() {
    let mut r = with_retention("eu", 1_000);
    let alice = AccountId::new("alice").unwrap();
    r.insert(keyed_at("us", 1, 10_000, "k", "5"));
    let req = TxRequest {
        account: alice.clone(),
        kind: Kind::Deposit,
        amount: Amount::parse("5", Currency::USD).unwrap(),
        currency: Currency::USD,
        idempotency_key: Some("k".into()),
        reference: None,
    };
    let us1 = EventId {
        origin: region("us"),
        seq: 1,
    };
    // Within retention (999 ms later): the retry finds the original.
    assert_eq!(r.submit(10_999, req.clone()), Ok(Submitted::Existing(us1)));
    // Settled, but the watermark is still within retention: the key stays.
    settle_to(&mut r, 10_999);
    assert_eq!(r.find_key(&alice, "k"), Some(us1));
    assert_eq!(r.idempotency_keys_held(), 1);
    // The watermark reaches 10 000 + 1 000: dropped from the index.
    settle_to(&mut r, 11_000);
    assert_eq!(r.find_key(&alice, "k"), None);
    assert_eq!(r.idempotency_keys_held(), 0);
    assert_eq!(r.stats().keys_expired, 1);
    // A retry at the edge is a new transaction, and it holds the key again.
    let Ok(Submitted::New(id)) = r.submit(11_000, req.clone()) else {
        panic!("a retry after retention is new");
    };
    assert_eq!(r.find_key(&alice, "k"), Some(id));
    assert_eq!(r.submit(11_500, req), Ok(Submitted::Existing(id)));
    // Settled, it is no duplicate of the expired original.
    settle_to(&mut r, 11_500);
    assert!(r.feed(0, 10).is_empty());
    assert_eq!(
        r.balance(&alice, Currency::USD).settled.to_string(),
        "10.00"
    );
    r.check_invariants().unwrap();
}

#[test]
fn an_expired_first_holder_hands_the_key_to_the_next_one() {
    // Retention 1 000: us:1 at 0, eu:1 (another body) at 500 conflicts, us:2 (the first
    // body) at 1 200 is new (us:1 is expired for it) but a conflict with eu:1 (still live).
    let mut r = with_retention("eu", 1_000);
    let alice = AccountId::new("alice").unwrap();
    r.insert(keyed_at("us", 1, 1, "k", "5"));
    r.insert(keyed_at("eu", 1, 500, "k", "6"));
    r.insert(keyed_at("us", 2, 1_200, "k", "5"));
    settle_to(&mut r, 1_200);
    let kinds: Vec<(CompKind, EventId, Option<EventId>)> = r
        .feed(0, 10)
        .iter()
        .map(|c| (c.kind, c.cause, c.related))
        .collect();
    let id = |o: &str, seq| EventId {
        origin: region(o),
        seq,
    };
    assert_eq!(
        kinds,
        vec![
            (
                CompKind::IdempotencyConflict,
                id("eu", 1),
                Some(id("us", 1))
            ),
            (
                CompKind::IdempotencyConflict,
                id("us", 2),
                Some(id("eu", 1))
            ),
        ]
    );
    // us:1 left the index at watermark 1 001: eu:1 is the first holder now.
    assert_eq!(r.find_key(&alice, "k"), Some(id("eu", 1)));
    settle_to(&mut r, 2_200);
    assert_eq!(r.find_key(&alice, "k"), None);
    assert_eq!(r.idempotency_keys_held(), 0);
    r.check_invariants().unwrap();
}

mod expiry_props {
    use super::*;
    use proptest::prelude::*;

    /// Per origin, events as (ms gap from the previous one of that origin, key, amount).
    fn origin_events() -> impl Strategy<Value = Vec<(u64, u8, u8)>> {
        prop::collection::vec((0u64..700, 0u8..4, 1u8..3), 0..25)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Expiry is a pure function of the settled history: two replicas fed the same events
        /// in different interleavings, settling by different watermark steps, hold the same
        /// keys and the same feed, and the feed is the reference model's.
        #[test]
        fn two_replicas_expire_the_same_keys_whatever_the_order(
            eu in origin_events(),
            us in origin_events(),
            interleave in prop::collection::vec(any::<bool>(), 50),
            steps_a in prop::collection::vec(1u64..3_000, 1..8),
            steps_b in prop::collection::vec(1u64..3_000, 1..8),
            retention in 1u64..2_000,
        ) {
            let build = |origin: &str, list: &[(u64, u8, u8)]| -> Vec<Event> {
                let mut ms = 1;
                list.iter().enumerate().map(|(i, (gap, k, amt))| {
                    ms += gap + 1;
                    keyed_at(origin, i as u64 + 1, ms, &format!("k{k}"), &amt.to_string())
                }).collect()
            };
            let (eu, us) = (build("eu", &eu), build("us", &us));
            let mut a = with_retention("eu", retention);
            let mut b = with_retention("us", retention);
            // a: all of eu, then all of us; b: interleaved as drawn.
            for e in eu.iter().chain(us.iter()) {
                a.insert(e.clone());
            }
            let (mut i, mut j) = (0, 0);
            for pick in interleave.iter().cycle().take(eu.len() + us.len()) {
                if (*pick && i < eu.len()) || j >= us.len() {
                    b.insert(eu[i].clone());
                    i += 1;
                } else {
                    b.insert(us[j].clone());
                    j += 1;
                }
            }
            // Different watermark steps, then one common watermark `mid`, then past it all.
            let sum = |v: &Vec<u64>| v.iter().sum::<u64>();
            let mid = sum(&steps_a).max(sum(&steps_b)) + 1;
            for (r, steps) in [(&mut a, &steps_a), (&mut b, &steps_b)] {
                let mut w = 0;
                for s in steps {
                    w += s;
                    settle_to(r, w);
                }
                settle_to(r, mid);
            }
            let all: Vec<Event> = eu.iter().chain(us.iter()).cloned().collect();
            let feed_of = |r: &Replica| -> Vec<(CompKind, EventId, Option<EventId>)> {
                r.feed(0, 1_000).iter().map(|c| (c.kind, c.cause, c.related)).collect()
            };
            let model_feed = |w: u64| -> Vec<(CompKind, EventId, Option<EventId>)> {
                let m = crate::testing::model_retained(
                    &Policy::zero(), &all, Some(Hlc::from_millis(w)), retention,
                );
                m.feed.iter().map(|c| (c.kind, c.cause, c.related)).collect()
            };
            prop_assert_eq!(key_holders(&a), key_holders(&b));
            // Exactly the holders not yet `retention` below the watermark stay.
            let live = all
                .iter()
                .filter(|e| e.hlc.millis() + retention > mid)
                .count() as u64;
            prop_assert_eq!(a.idempotency_keys_held(), live);
            prop_assert_eq!(feed_of(&a), model_feed(mid));
            prop_assert_eq!(feed_of(&b), model_feed(mid));
            let end = 60_000;
            settle_to(&mut a, end);
            settle_to(&mut b, end);
            // Every event is now more than the retention below the watermark.
            prop_assert_eq!(a.idempotency_keys_held(), 0);
            prop_assert_eq!(b.idempotency_keys_held(), 0);
            prop_assert_eq!(feed_of(&a), model_feed(end));
            prop_assert_eq!(feed_of(&b), model_feed(end));
        }
    }
}

/// Signs as "sha256(region ‖ bytes)": a toy signature that a wrong signer, a changed byte or
/// another cluster breaks.
struct HashAuth(RegionId);

impl Authenticator for HashAuth {
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        hash_sig(self.0, bytes)
    }
    fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool {
        hash_sig(origin, bytes) == sig
    }
}

fn hash_sig(r: RegionId, bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(r.as_str().as_bytes());
    h.update(bytes);
    h.finalize().to_vec()
}

/// eu with us's keyed deposits us:1 (5 at 1 000 ms) and us:2 (7 at 2 000 ms) settled at
/// 2 500 ms, retention 1 000 ms (so only us:2's key is still held).
fn settled_pair(auth: bool) -> Replica {
    let names = vec![region("eu"), region("us")];
    let mut cfg = Config::new(region("eu"), names, Policy::zero());
    cfg.idempotency_retention_ms = 1_000;
    if auth {
        cfg.auth = Box::new(HashAuth(region("eu")));
    }
    let mut r = Replica::new(cfg, Hlc::ZERO);
    r.insert(keyed_at("us", 1, 1_000, "k1", "5"));
    r.insert(keyed_at("us", 2, 2_000, "k2", "7"));
    settle_to(&mut r, 2_500);
    r
}

fn announce(r: &mut Replica, member: &str, origin: &str, seq: u64) {
    if let Some(m) = r.logs.members.get_mut(&region(member)) {
        m.vv.dots.insert(region(origin), seq);
    }
}

#[test]
fn a_snapshot_waits_until_every_member_announced_what_it_folds() {
    let mut r = settled_pair(false);
    // us has announced nothing yet: what eu settled may not be final at us.
    assert_eq!(r.compaction_point(), None);
    assert!(r.snapshot().is_none());
    announce(&mut r, "us", "us", 1);
    assert_eq!(
        r.compaction_point(),
        None,
        "us:2 is settled here, not announced by us"
    );
    announce(&mut r, "us", "us", 2);
    let at = Hlc::from_millis(2_500);
    assert_eq!(r.compaction_point(), Some(at));
    let s = r.snapshot().unwrap();
    let b = &s.body;
    assert_eq!(
        (b.at, b.format, b.settled, b.feed_len),
        (at, SNAPSHOT_FORMAT, 2, 0)
    );
    let seqs: Vec<(RegionId, u64)> = b.members.iter().map(|m| (m.region, m.seq)).collect();
    assert_eq!(seqs, vec![(region("eu"), 0), (region("us"), 2)]);
    assert_eq!(b.accounts.len(), 1);
    assert_eq!(b.accounts[0].balances[0].settled.to_string(), "12");
    // Retention 1 000 ms at 2 500: k1 (1 000 ms) has expired, k2 (2 000 ms) is held.
    let keys: Vec<&str> = b.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, vec!["k2"]);
    assert_eq!(b.policies.len(), 1);
    // An event above the point changes nothing in the body.
    r.insert(keyed_at("us", 3, 3_000, "k3", "1"));
    assert_eq!(r.snapshot().unwrap().body.to_bytes(), b.to_bytes());
}

#[test]
fn a_snapshot_verifies_only_as_its_signer_unaltered_and_in_its_cluster() {
    let mut r = settled_pair(true);
    announce(&mut r, "us", "us", 2);
    let s = r.snapshot().unwrap();
    let eu_auth = HashAuth(region("eu"));
    assert!(s.verify(&eu_auth, "default"));
    assert!(!s.verify(&eu_auth, "staging"), "another cluster");
    let mut other = s.clone();
    other.signer = region("us");
    assert!(!other.verify(&eu_auth, "default"), "another signer");
    let mut altered = s.clone();
    altered.body.accounts[0].balances[0].settled += Decimal::ONE;
    assert!(!altered.verify(&eu_auth, "default"), "an altered balance");
    // The encoding round-trips, and another format version is refused.
    let bytes = crate::wire::encode_snapshot(&s);
    assert_eq!(crate::wire::decode_snapshot(&bytes).unwrap(), s);
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert!(crate::wire::decode_snapshot(&v2).is_err());
}
