//! Unit tests of the replica's internals.

//! Overflow cannot be reached through validated inputs (amounts are at most 10^12 and a
//! sum needs about 10^16 of them), so these tests inject crafted events below the
//! validation layer, as a corrupted peer or disk would.
use super::*;
use crate::event::{Body, Kind};
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
