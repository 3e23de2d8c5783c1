//! Regression tests for the eight money-path findings of the independent review (issue 9),
//! one or more per finding, named `i<N>_...`. Each failed on the code before its fix.

mod common;

use common::*;
use wallet_core::*;

fn usd(account: &str, kind: Kind, amount: &str) -> TxRequest {
    req(account, kind, amount, Currency::USD)
}

/// Submits at region `i` as an isolated region: durable at once, nothing leaves it.
fn isolated_submit(c: &mut Cluster, i: usize, r: TxRequest) -> EventId {
    c.now += 10;
    let id = c.submit(i, r).expect("accepted").id().expect("decided");
    c.persist_all();
    c.inflight.clear();
    id
}

fn drain_all(r: &mut Replica) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_output() {
        out.push(o);
    }
    out
}

// ---- 1. a duplicate behind an idempotency conflict ------------------------------------------

#[test]
fn i1_duplicate_behind_an_idempotency_conflict_is_reversed() {
    const AP: usize = 0;
    const EU: usize = 1;
    const US: usize = 2;
    let policy = Policy::from_toml("[default]\nfee = { flat = \"5\" }\n").unwrap();
    let mut c = Cluster::new(&["ap", "eu", "us"], policy);
    c.tick(0);
    c.submit(EU, usd("alice", Kind::Deposit, "100")).unwrap();
    assert!(c.settle_all());
    // Three regions cut off from each other, one after the other in time (so in total
    // order): eu takes A (10.00 under key k), us takes B (20.00 under k), ap takes C, the
    // client retrying B at a third region.
    let a = isolated_submit(&mut c, EU, keyed(usd("alice", Kind::Purchase, "10"), "k"));
    let b = isolated_submit(&mut c, US, keyed(usd("alice", Kind::Purchase, "20"), "k"));
    let cc = isolated_submit(&mut c, AP, keyed(usd("alice", Kind::Purchase, "20"), "k"));
    assert_eq!(
        (a.to_string(), b.to_string(), cc.to_string()),
        ("eu:2".into(), "us:1".into(), "ap:1".into())
    );
    assert!(c.settle_all());
    for n in &c.nodes {
        let r = &n.replica;
        let feed: Vec<(String, Option<EventId>, String)> = r
            .feed(0, 10)
            .iter()
            .map(|x| (x.id(), x.related, x.amount_str()))
            .collect();
        // B stands and is a conflict with A; C is a duplicate of B and is reversed.
        assert_eq!(
            feed,
            vec![
                ("conflict:us:1".to_string(), Some(a), "0.00".to_string()),
                ("rev:ap:1".to_string(), None, "20.00".to_string()),
            ],
            "at {}",
            n.name
        );
        assert_eq!(r.status(b).unwrap().0, Status::Settled);
        assert_eq!(r.status(cc).unwrap().0, Status::Reversed);
        assert_eq!(
            r.balance(&acct("alice"), Currency::USD).settled.to_string(),
            "70.00"
        );
        check_against_model(&c.seed, r).unwrap();
    }
}

// ---- 2. a wildcard flat fee is added exactly, then rounded once ------------------------------

#[test]
fn i2_wildcard_flat_fee_is_added_exactly_then_rounded_once() {
    let d = |s: &str| rust_decimal::Decimal::from_str_exact(s).unwrap();
    let p =
        Policy::from_toml("[default]\nfee = { flat = \"1.004\", percent = \"0.3\" }\n").unwrap();
    // 1.004 + 0.3 % x 1.00 = 1.007 -> 1.01 (rounding the flat part first gave 1.00).
    assert_eq!(
        p.applied("alice", Currency::USD).fee_for(d("1.00")),
        Some(d("1.01"))
    );
    let p = Policy::from_toml("[default]\nfee = { flat = \"2.4\", percent = \"1\" }\n").unwrap();
    // 2.4 + 1 % x 40 = 2.8 -> 3 JPY (rounding the flat part first gave 2 + 0.4 -> 2).
    assert_eq!(
        p.applied("alice", Currency::JPY).fee_for(d("40")),
        Some(d("3"))
    );
    // End to end through the settled fold: 100 JPY, eu spends 100, us spends 40.
    let mut c = Cluster::new(&["eu", "us"], p);
    c.tick(0);
    let jpy = |kind, amount| req("alice", kind, amount, Currency::JPY);
    c.submit(0, jpy(Kind::Deposit, "100")).unwrap();
    assert!(c.settle_all());
    isolated_submit(&mut c, 0, jpy(Kind::Purchase, "100"));
    isolated_submit(&mut c, 1, jpy(Kind::Purchase, "40"));
    assert!(c.settle_all());
    let feed = c.nodes[0].replica.feed(0, 10);
    assert_eq!(feed.len(), 1);
    assert_eq!(
        (feed[0].id(), feed[0].amount_str()),
        ("fee:us:1".into(), "3".into())
    );
}

// ---- 3. percent rounded twice at Decimal's 28-digit limit ------------------------------------

#[test]
fn i3_percent_and_amount_scales_are_bounded_by_name() {
    let err = |t: &str| Policy::from_toml(t).unwrap_err().to_string();
    // The exact fee for 0.02 would be 0.00499..: 0.00, but the product rounds at 28 digits
    // to 0.005 and then to 0.01. Such a percent is refused, naming the field.
    let e = err("[default]\nfee = { percent = \"24.999999999999999999999999995\" }\n");
    assert!(e.contains("default.fee.percent"), "{e}");
    assert!(e.contains("6 decimal places"), "{e}");
    let e = err("[default]\nfee = { flat = \"0.0000001\" }\n");
    assert!(e.contains("default.fee.flat"), "{e}");
    let e = err("[default]\n[[rule]]\ncurrency = \"EUR\"\nfee = { percent = \"1.1234567\" }\n");
    assert!(e.contains("rule[0].fee.percent"), "{e}");
    // Six places are fine, and the fee is exact.
    let p = Policy::from_toml("[default]\nfee = { percent = \"24.999999\" }\n").unwrap();
    let d = |s: &str| rust_decimal::Decimal::from_str_exact(s).unwrap();
    assert_eq!(
        p.applied("a", Currency::USD).fee_for(d("0.02")),
        Some(d("0.00"))
    );
    // A policy event from a peer is held to the same bounds (validate, not only the parser).
    let mut q = Policy::zero();
    q.rules[0].fee.percent = d("24.999999999999999999999999995");
    assert!(q.validate().is_err());
}

// ---- 4. a restart keeps the equivocation block ---------------------------------------------

/// Two different events under one id, us:1, as a corrupt or compromised `us` would send.
fn conflicting_pair() -> (Event, Event) {
    let mk = |amount: &str| Event {
        id: EventId::parse("us:1").unwrap(),
        hlc: Hlc::from_millis(1_000),
        body: Body::Tx(Tx {
            account: acct("alice"),
            kind: Kind::Deposit,
            amount: Amount::parse(amount, Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        }),
        sig: Box::new([]),
    };
    (mk("5.00"), mk("6.00"))
}

#[test]
fn i4_evidence_survives_a_restart_and_keeps_the_block() {
    let mut c = Cluster::new(&["eu", "us"], Policy::zero());
    let (x, y) = conflicting_pair();
    let eu = region("eu");
    let us = region("us");
    c.nodes[0].replica.handle_events(2_000, us, vec![x.clone()]);
    c.nodes[0].replica.handle_events(2_000, us, vec![y.clone()]);
    // Nothing is reported before the evidence is durable.
    c.drain(0);
    assert!(c.nodes[0]
        .reports
        .iter()
        .all(|r| !matches!(r, Report::Equivocation { .. })));
    c.persist(0, usize::MAX);
    assert!(c.nodes[0]
        .reports
        .iter()
        .any(|r| matches!(r, Report::Equivocation { .. })));
    assert_eq!(c.nodes[0].disk_evidence.len(), 1);
    // The evidence went to the peer as well, which checks it and freezes us too... except
    // that here the peer is `us` itself: it learns it is on record.
    assert!(c
        .inflight
        .iter()
        .any(|(_, _, m)| matches!(m, Message::Evidence(_))));
    // Crash and restart from the disk: still blocked, same evidence, no new report.
    c.crash(0);
    let r = &c.nodes[0].replica;
    assert!(r.settlement_blocked());
    assert_eq!(r.evidence(), &[Evidence::Conflicting(x, y)]);
    let us_status = r.members().into_iter().find(|m| m.region == us).unwrap();
    assert!(us_status.equivocated);
    // Evidence that does not prove anything is not restored.
    let mut fresh = Replica::new(c.config(eu), Hlc::ZERO);
    let (a, _) = conflicting_pair();
    assert_eq!(
        fresh.restore_evidence(vec![Evidence::Conflicting(a.clone(), a)]),
        0
    );
    assert!(!fresh.settlement_blocked());
}

// ---- 5. a broken heartbeat promise, in either arrival order ---------------------------------

fn x_event(seq: u64, ms: u64) -> Event {
    Event {
        id: EventId {
            origin: region("x"),
            seq,
        },
        hlc: Hlc::from_millis(ms),
        body: Body::Tx(Tx {
            account: acct("alice"),
            kind: Kind::Deposit,
            amount: Amount::parse("5", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        }),
        sig: Box::new([]),
    }
}

#[test]
fn i5_broken_promise_blocks_the_origin_in_either_arrival_order() {
    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    // `x` is a member with no node: the test speaks for it. It promises (3.000 s, seq 1),
    // then sends x:2 at 2.000 s, which breaks the promise.
    let mut c = Cluster::with(&["a", "b", "c"], &["x"], &[], Policy::zero());
    let x = region("x");
    let hb = SignedHeartbeat {
        hb: Heartbeat {
            origin: x,
            hlc: Hlc::from_millis(3_000),
            seq: 1,
            vv: {
                let mut vv = VClock::new();
                vv.dots.insert(x, 1);
                vv
            },
            policy: Policy::zero().hash(),
        },
        sig: Box::new([]),
    };
    let (x1, x2) = (x_event(1, 1_000), x_event(2, 2_000));
    let now = 5_000;
    // A: the heartbeat, then the event.
    let ra = &mut c.nodes[A].replica;
    ra.handle_events(now, x, vec![x1.clone()]);
    ra.handle_heartbeat(now, x, hb.clone());
    ra.handle_events(now, x, vec![x2.clone()]);
    // B: the event, then the heartbeat.
    let rb = &mut c.nodes[B].replica;
    rb.handle_events(now, x, vec![x1.clone(), x2.clone()]);
    rb.handle_heartbeat(now, x, hb.clone());
    // C: only x:1; it never sees the broken promise itself.
    c.nodes[C].replica.handle_events(now, x, vec![x1.clone()]);
    let want = Evidence::BrokenPromise {
        heartbeat: hb,
        event: x2,
    };
    for i in [A, B] {
        c.drain(i);
        c.persist(i, usize::MAX);
        assert_eq!(c.nodes[i].replica.evidence(), std::slice::from_ref(&want));
        assert!(c.nodes[i]
            .reports
            .contains(&Report::Equivocation { id: want.id() }));
    }
    // The evidence travels: C checks it and freezes x as well.
    c.drain(C);
    c.persist_all();
    c.deliver_all();
    c.persist_all();
    c.deliver_all();
    for n in &c.nodes {
        assert_eq!(
            n.replica.evidence(),
            std::slice::from_ref(&want),
            "{}",
            n.name
        );
        assert!(n.replica.settlement_blocked(), "{}", n.name);
        let xs = n.replica.members().into_iter().find(|m| m.region == x);
        assert!(xs.unwrap().equivocated, "{}", n.name);
    }
    // Settlement stays stopped everywhere, whatever else happens.
    let before: Vec<Hlc> = c.nodes.iter().map(|n| n.replica.watermark()).collect();
    c.submit(A, usd("alice", Kind::Deposit, "1")).unwrap();
    for _ in 0..5 {
        c.tick(300);
        c.persist_all();
        c.deliver_all();
    }
    let after: Vec<Hlc> = c.nodes.iter().map(|n| n.replica.watermark()).collect();
    assert_eq!(before, after);
    // Heartbeats are signed: an unsigned one is refused where events are signed (see
    // rejects.rs), and a forged relay of evidence that proves nothing is refused here.
    let (e1, _) = (x_event(3, 4_000), ());
    let bogus = Evidence::Conflicting(e1.clone(), e1);
    c.nodes[C].replica.handle_evidence(region("a"), bogus);
    c.drain(C);
    assert!(c.nodes[C].reports.iter().any(
        |r| matches!(r, Report::Rejected { reason, .. } if reason.contains("proves nothing"))
    ));
}

// ---- 6. a member that always looks ahead ----------------------------------------------------

#[test]
fn i6_heartbeat_naming_a_non_member_is_kept_without_it_and_frozen_origins_count_for_nothing() {
    // Until issue 12 such a heartbeat was refused whole. Since regions join by event, a peer
    // that applied a join names the new region before this region has applied it: the
    // heartbeat is kept, without the region this region does not know, so a non-member
    // still never looks ahead (and the peer does not look silent).
    let mut c = Cluster::new(&["eu", "us"], Policy::zero());
    let us = region("us");
    let mut vv = VClock::new();
    vv.dots.insert(region("zz"), u64::MAX);
    vv.dots.insert(us, u64::MAX);
    let hb = SignedHeartbeat {
        hb: Heartbeat {
            origin: us,
            hlc: Hlc::from_millis(1_000),
            seq: 0,
            vv: vv.clone(),
            policy: Policy::zero().hash(),
        },
        sig: Box::new([]),
    };
    let r = &mut c.nodes[0].replica;
    r.handle_heartbeat(2_000, us, hb);
    let reports: Vec<Report> = drain_all(r)
        .into_iter()
        .filter_map(|o| match o {
            Output::Report(x) => Some(x),
            _ => None,
        })
        .collect();
    assert!(
        !reports.iter().any(|x| matches!(x, Report::Rejected { .. })),
        "{reports:?}"
    );
    let kept = r.member_vv(us).expect("the heartbeat is remembered");
    assert_eq!(kept.get(&region("zz")), 0, "without the non-member");
    assert_eq!(kept.get(&us), u64::MAX);
    // Counting what a member holds never overflows, and ignores non-members.
    let mut two = VClock::new();
    two.dots.insert(us, u64::MAX);
    two.dots.insert(region("eu"), u64::MAX);
    two.dots.insert(region("zz"), 7);
    assert_eq!(r.events_lacking(&two), u64::MAX);
    // An origin frozen after equivocation can never advance: it counts for nothing.
    let (x, y) = conflicting_pair();
    r.handle_events(2_000, us, vec![x]);
    r.handle_events(2_000, us, vec![y]);
    let mut only_us = VClock::new();
    only_us.dots.insert(us, 50);
    assert_eq!(r.events_lacking(&only_us), 0);
}

// ---- 7. one forged policy event must not freeze a region -------------------------------------

#[test]
fn i7_forged_policy_event_is_refused_by_signature_before_validation() {
    struct Strict;
    impl Authenticator for Strict {
        fn sign(&self, _: &[u8]) -> Vec<u8> {
            b"eu".to_vec()
        }
        fn verify(&self, origin: RegionId, _: &[u8], sig: &[u8]) -> bool {
            sig == origin.as_str().as_bytes()
        }
    }
    let mut cfg = Config::new(
        region("eu"),
        vec![region("eu"), region("us")],
        Policy::zero(),
    );
    cfg.auth = Box::new(Strict);
    let mut r = Replica::new(cfg, Hlc::ZERO);
    // A policy with 20,000 rules, far beyond the limit, not signed by us.
    let mut big = Policy::zero();
    for i in 0..20_000u32 {
        let mut rule = big.rules[0].clone();
        rule.tier = Some(format!("t{i}"));
        big.rules.push(rule);
    }
    let forged = Event {
        id: EventId::parse("us:1").unwrap(),
        hlc: Hlc::from_millis(1_000),
        body: Body::Policy(Box::new(big.clone())),
        sig: b"not us".to_vec().into(),
    };
    r.handle_events(2_000, region("us"), vec![forged]);
    let reasons: Vec<String> = drain_all(&mut r)
        .into_iter()
        .filter_map(|o| match o {
            Output::Report(Report::Rejected { reason, .. }) => Some(reason),
            _ => None,
        })
        .collect();
    // Refused for its signature: validation (quadratic in rules before) never ran.
    assert_eq!(reasons, vec!["bad signature".to_string()]);
    assert_eq!(r.event_count(), 0);
    // Signed or not, such a policy is refused, naming the limit.
    let e = big.validate().unwrap_err().to_string();
    assert!(e.contains("rule") && e.contains("at most 1000"), "{e}");
}

#[test]
fn i7_policy_limits_are_named() {
    let mut many_tiers = String::from("[default]\n[tiers]\n");
    for i in 0..1_001 {
        many_tiers.push_str(&format!("t{i} = [\"p{i}-\"]\n"));
    }
    let e = Policy::from_toml(&many_tiers).unwrap_err().to_string();
    assert!(e.contains("tiers") && e.contains("at most 1000"), "{e}");
    let mut many_prefixes = String::from("[default]\n[tiers]\nt = [");
    for i in 0..1_001 {
        many_prefixes.push_str(&format!("\"p{i}-\","));
    }
    many_prefixes.push_str("]\n");
    let e = Policy::from_toml(&many_prefixes).unwrap_err().to_string();
    assert!(e.contains("prefixes") && e.contains("at most 1000"), "{e}");
    let mut many_rules = String::from("[default]\n[tiers]\nt = [\"p-\"]\n");
    for c in ["USD", "EUR"] {
        many_rules.push_str(&format!("[[rule]]\ncurrency = \"{c}\"\n"));
    }
    assert!(Policy::from_toml(&many_rules).is_ok());
}

// ---- 8. a restart does not emit the compensations again -------------------------------------

#[test]
fn i8_restart_emits_no_compensation_again() {
    let policy = Policy::from_toml("[default]\nfee = { flat = \"5\" }\n").unwrap();
    let mut c = Cluster::new(&["eu", "us"], policy);
    c.tick(0);
    c.submit(0, usd("alice", Kind::Deposit, "100")).unwrap();
    assert!(c.settle_all());
    isolated_submit(&mut c, 0, usd("alice", Kind::Purchase, "100"));
    isolated_submit(&mut c, 1, usd("alice", Kind::Purchase, "50"));
    assert!(c.settle_all());
    let feed_before = c.nodes[0].replica.feed_len();
    assert_eq!(feed_before, 1);
    // Restart region 0 from its disk, by hand, to see every output of the restart.
    let n = &c.nodes[0];
    let mut r = Replica::new(c.config(n.name), n.disk_ceiling);
    r.restore_evidence(n.disk_evidence.clone());
    r.load(n.disk_events.clone());
    r.restore_watermark(n.disk_watermark);
    assert_eq!(r.feed_len(), feed_before, "the feed is rebuilt");
    let again = drain_all(&mut r)
        .into_iter()
        .filter(|o| matches!(o, Output::Compensation(_)))
        .count();
    assert_eq!(again, 0, "a restart emitted {again} compensations again");
}

/// Found by the simulator's Byzantine member (by reading): the replica kept only the highest
/// promise, so a promise replaced by a later one before the event it denies arrived left no
/// proof; the event was refused as "below covered" and the origin's log stuck there, silently.
/// The promise that raised `covered` is kept: the event is evidence.
#[test]
fn i9_broken_promise_is_proved_after_a_later_promise_replaced_it() {
    let mut c = Cluster::with(&["a", "b"], &["x"], &[], Policy::zero());
    let x = region("x");
    let hb = |ms: u64, seq: u64| SignedHeartbeat {
        hb: Heartbeat {
            origin: x,
            hlc: Hlc::from_millis(ms),
            seq,
            vv: {
                let mut vv = VClock::new();
                vv.dots.insert(x, seq);
                vv
            },
            policy: Policy::zero().hash(),
        },
        sig: Box::new([]),
    };
    // x:1 at 1 s; a promise (3 s, seq 1); a later promise (6 s, seq 3); then x:2 at 2 s,
    // which contradicts the first promise (a seq above 1 at or below 3 s) but not the second.
    let (p1, p2) = (hb(3_000, 1), hb(6_000, 3));
    let (x1, x2) = (x_event(1, 1_000), x_event(2, 2_000));
    let r = &mut c.nodes[0].replica;
    r.handle_events(7_000, x, vec![x1]);
    r.handle_heartbeat(7_000, x, p1.clone());
    r.handle_heartbeat(7_000, x, p2);
    r.handle_events(7_000, x, vec![x2.clone()]);
    c.drain(0);
    c.persist(0, usize::MAX);
    let want = Evidence::BrokenPromise {
        heartbeat: p1,
        event: x2,
    };
    assert_eq!(c.nodes[0].replica.evidence(), std::slice::from_ref(&want));
    assert!(c.nodes[0].replica.settlement_blocked());
}
