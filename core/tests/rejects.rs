//! Every rejected input: each `SubmitError`, each merge rejection (forged or altered
//! signatures, another cluster, clock skew, HLC going backwards, broken heartbeat promises,
//! equivocation, unknown members and origins, invalid content) and malformed wire bytes.
//! Nothing here may panic; every refusal is typed or reported.

mod common;

use common::*;
use crdts::CmRDT;
use sha2::{Digest, Sha256};
use wallet_core::wire::*;
use wallet_core::*;

/// A test signer: a signature is the signer's name and a digest of the bytes, so a region
/// can only sign as itself and any altered field breaks it.
struct TestAuth {
    me: RegionId,
}

fn tag(origin: RegionId, bytes: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(origin.as_str().as_bytes());
    h.update(bytes);
    h.finalize().to_vec()
}

impl Authenticator for TestAuth {
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        tag(self.me, bytes)
    }
    fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool {
        tag(origin, bytes) == sig
    }
}

const CLUSTER: &str = "prod";

fn replica(me: &str) -> Replica {
    let names = vec![region("eu"), region("us")];
    let mut cfg = Config::new(region(me), names, Policy::zero());
    cfg.auth = Box::new(TestAuth { me: region(me) });
    cfg.cluster = CLUSTER.into();
    cfg.max_clock_skew_ms = 60_000;
    Replica::new(cfg, Hlc::ZERO)
}

/// A deposit of `amount` USD on alice, issued by `origin` as `seq` at `ms`, signed by
/// `signer` for `cluster`.
fn event(origin: &str, seq: u64, ms: u64, amount: &str, signer: &str, cluster: &str) -> Event {
    let mut e = Event {
        id: EventId {
            origin: region(origin),
            seq,
        },
        hlc: Hlc::from_millis(ms),
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
    e.sig = tag(region(signer), &e.signing_bytes(cluster)).into();
    e
}

fn us_event(seq: u64, ms: u64, amount: &str) -> Event {
    event("us", seq, ms, amount, "us", CLUSTER)
}

/// Drains outputs (persisting at once) and returns the reports.
fn reports(r: &mut Replica) -> Vec<Report> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_output() {
        match o {
            Output::Persist { index, .. } => r.handle_persisted(index),
            Output::Report(x) => out.push(x),
            _ => {}
        }
    }
    out
}

fn rejected(reports: &[Report]) -> Vec<(String, String)> {
    reports
        .iter()
        .filter_map(|r| match r {
            Report::Rejected { id, reason, .. } => Some((id.to_string(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn unsigned_heartbeat(origin: &str, ms: u64, seq: u64) -> Heartbeat {
    Heartbeat {
        origin: region(origin),
        hlc: Hlc::from_millis(ms),
        seq,
        vv: VClock::new(),
        policy: Policy::zero().hash(),
    }
}

/// Signs a heartbeat as its origin.
fn sign_hb(hb: Heartbeat) -> SignedHeartbeat {
    let sig = tag(hb.origin, &hb.signing_bytes(CLUSTER)).into();
    SignedHeartbeat { hb, sig }
}

fn heartbeat(origin: &str, ms: u64, seq: u64) -> SignedHeartbeat {
    sign_hb(unsigned_heartbeat(origin, ms, seq))
}

// ---- submit ----------------------------------------------------------------------------

#[test]
fn insufficient_funds_says_what_is_available() {
    let mut r = replica("eu");
    r.submit(1_000, req("alice", Kind::Deposit, "30", Currency::USD))
        .unwrap();
    let err = r
        .submit(1_001, req("alice", Kind::Purchase, "30.01", Currency::USD))
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::InsufficientFunds {
            available: "30.00".into(),
            requested: "30.01".into(),
            currency: Currency::USD,
        }
    );
    assert_eq!(r.event_count(), 1);
    // Credits are never refused for funds.
    assert!(r
        .submit(1_002, req("bob", Kind::Refund, "1", Currency::USD))
        .is_ok());
}

#[test]
fn idempotency_key_retry_and_reuse_with_another_body() {
    let mut r = replica("eu");
    let dep = keyed(req("alice", Kind::Deposit, "30", Currency::USD), "k1");
    let first = r.submit(1_000, dep.clone()).unwrap();
    assert_eq!(first, Submitted::New(EventId::parse("eu:1").unwrap()));
    // A retry returns the original, creates nothing.
    assert_eq!(
        r.submit(1_001, dep.clone()).unwrap(),
        Submitted::Existing(first.id().unwrap())
    );
    // "30" and "30.00" are the same body.
    let same = keyed(req("alice", Kind::Deposit, "30.00", Currency::USD), "k1");
    assert_eq!(
        r.submit(1_001, same).unwrap(),
        Submitted::Existing(first.id().unwrap())
    );
    assert_eq!(r.event_count(), 1);
    // Reuse with a different body is refused.
    let other = keyed(req("alice", Kind::Deposit, "31", Currency::USD), "k1");
    assert_eq!(
        r.submit(1_002, other).unwrap_err(),
        SubmitError::IdempotencyConflict {
            existing: first.id().unwrap()
        }
    );
    let mut refd = dep.clone();
    refd.reference = Some("x".into());
    assert!(matches!(
        r.submit(1_002, refd),
        Err(SubmitError::IdempotencyConflict { .. })
    ));
    // Keys are scoped per account.
    let bob = keyed(req("bob", Kind::Deposit, "31", Currency::USD), "k1");
    assert!(matches!(r.submit(1_003, bob), Ok(Submitted::New(_))));
}

#[test]
fn malformed_requests_are_refused_before_anything_is_issued() {
    let mut r = replica("eu");
    // An amount scaled for BHD used with USD.
    let mut bad = req("alice", Kind::Deposit, "1.234", Currency::BHD);
    bad.currency = Currency::USD;
    assert!(matches!(
        r.submit(1_000, bad),
        Err(SubmitError::Amount(AmountError::ScaleExceeded {
            max: 2,
            ..
        }))
    ));
    // An amount parsed without minor units is fine in USD and is issued at scale 2.
    let mut yen = req("alice", Kind::Deposit, "100", Currency::JPY);
    yen.currency = Currency::USD;
    let id = r.submit(1_000, yen).unwrap().id().unwrap();
    assert_eq!(
        r.event(id).unwrap().tx().unwrap().amount.to_string(),
        "100.00"
    );
    let mut k = req("alice", Kind::Deposit, "1", Currency::USD);
    k.idempotency_key = Some("has space".into());
    assert_eq!(
        r.submit(1_001, k).unwrap_err(),
        SubmitError::Invalid(IdError::IdempotencyKey)
    );
    let mut k = req("alice", Kind::Deposit, "1", Currency::USD);
    k.idempotency_key = Some(String::new());
    assert!(matches!(r.submit(1_001, k), Err(SubmitError::Invalid(_))));
    let mut refr = req("alice", Kind::Deposit, "1", Currency::USD);
    refr.reference = Some("line\nbreak".into());
    assert_eq!(
        r.submit(1_001, refr).unwrap_err(),
        SubmitError::Invalid(IdError::Reference)
    );
    // A policy change that does not validate.
    let mut p = Policy::zero();
    p.rules.clear();
    assert!(matches!(
        r.submit_policy(1_002, p),
        Err(SubmitError::Policy(PolicyError::Invalid { .. }))
    ));
    let mut p = Policy::zero();
    p.rules[0].fee.flat = dec("-1");
    assert!(matches!(
        r.submit_policy(1_002, p),
        Err(SubmitError::Policy(_))
    ));
    assert_eq!(r.event_count(), 1);
}

#[test]
fn restoring_region_accepts_nothing_until_its_history_is_back() {
    // eu issued two events, us holds them; eu loses its disk.
    let mut eu = replica("eu");
    eu.submit(1_000, req("alice", Kind::Deposit, "10", Currency::USD))
        .unwrap();
    eu.submit(1_001, req("alice", Kind::Deposit, "20", Currency::USD))
        .unwrap();
    reports(&mut eu);
    let mut us = replica("us");
    let mine = eu.missing_for(&VClock::new(), 100);
    assert_eq!(mine.len(), 2);
    us.handle_events(1_002, region("eu"), mine);
    reports(&mut us);

    let names = vec![region("eu"), region("us")];
    let mut cfg = Config::new(region("eu"), names, Policy::zero());
    cfg.auth = Box::new(TestAuth { me: region("eu") });
    cfg.cluster = CLUSTER.into();
    cfg.restore = true;
    let mut fresh = Replica::new(cfg, Hlc::ZERO);
    assert!(fresh.is_restoring());
    let dep = req("alice", Kind::Deposit, "1", Currency::USD);
    assert_eq!(
        fresh.submit(2_000, dep.clone()).unwrap_err(),
        SubmitError::Restoring
    );
    assert_eq!(
        fresh.submit_policy(2_000, Policy::zero()).unwrap_err(),
        SubmitError::Restoring
    );
    // It promises nothing while restoring.
    fresh.handle_timeout(2_000);
    reports(&mut fresh);
    fresh.handle_timeout(2_001);
    while let Some(o) = fresh.poll_output() {
        assert!(!matches!(
            o,
            Output::Broadcast(Message::Heartbeat(_) | Message::SignedHeartbeat(_))
        ));
        if let Output::Persist { index, .. } = o {
            fresh.handle_persisted(index);
        }
    }
    // Its own history comes back from the peer, then the peer's heartbeat says that is all.
    let back = us.missing_for(fresh.version_vector(), 100);
    fresh.handle_events(2_002, region("us"), back);
    assert!(fresh.is_restoring());
    let mut vv = VClock::new();
    vv.apply(vv.inc(region("eu")));
    vv.apply(vv.inc(region("eu")));
    let mut hb = unsigned_heartbeat("us", 2_003, 0);
    hb.vv = vv;
    fresh.handle_heartbeat(2_003, region("us"), sign_hb(hb));
    reports(&mut fresh);
    assert!(!fresh.is_restoring());
    // The next event continues the sequence.
    assert_eq!(
        fresh.submit(2_004, dep).unwrap(),
        Submitted::New(EventId::parse("eu:3").unwrap())
    );
    assert_eq!(
        fresh
            .balance(&acct("alice"), Currency::USD)
            .provisional
            .to_string(),
        "31.00"
    );
}

// ---- merge -----------------------------------------------------------------------------

#[test]
fn a_valid_signed_event_is_merged_once() {
    let mut r = replica("eu");
    let e = us_event(1, 1_000, "5");
    r.handle_events(1_000, region("us"), vec![e.clone(), e.clone()]);
    assert!(reports(&mut r).is_empty());
    assert_eq!(r.event_count(), 1);
    assert_eq!(r.stats().duplicates, 1);
    // Relayed by another member: still the origin's event, still a duplicate.
    r.handle_message(1_001, region("us"), Message::Events(vec![e]));
    assert_eq!(r.event_count(), 1);
}

#[test]
fn forged_altered_or_foreign_cluster_events_are_refused() {
    let mut r = replica("eu");
    // Signed by eu, claiming to be us.
    let forged = event("us", 1, 1_000, "5", "eu", CLUSTER);
    // Signed by us, amount altered afterwards.
    let mut altered = us_event(1, 1_000, "5");
    if let Body::Tx(tx) = &mut altered.body {
        tx.amount = Amount::parse("500", Currency::USD).unwrap();
    }
    // Signed by us for a staging cluster with the same region names.
    let staging = event("us", 1, 1_000, "5", "us", "staging");
    // No signature at all.
    let mut unsigned = us_event(1, 1_000, "5");
    unsigned.sig = Box::new([]);
    r.handle_events(
        1_000,
        region("us"),
        vec![forged, altered, staging, unsigned],
    );
    let got = rejected(&reports(&mut r));
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got
        .iter()
        .all(|(id, why)| id == "us:1" && why == "bad signature"));
    assert_eq!(r.event_count(), 0);
    assert_eq!(r.stats().rejected, 4);
}

#[test]
fn clock_skew_beyond_the_maximum_is_refused_and_reported() {
    let mut r = replica("eu");
    // 60 s ahead is tolerated, 60.001 s is not.
    r.handle_events(1_000, region("us"), vec![us_event(1, 61_000, "5")]);
    assert!(reports(&mut r).is_empty());
    r.handle_events(1_000, region("us"), vec![us_event(2, 61_001, "5")]);
    assert_eq!(
        reports(&mut r),
        vec![Report::ClockSkew {
            from: region("us"),
            remote_ms: 61_001,
            local_ms: 1_000,
        }]
    );
    assert_eq!(r.event_count(), 1);
    // The clock was not dragged along.
    assert!(r.clock() < Hlc::from_millis(61_001));
    // Heartbeats too.
    r.handle_heartbeat(1_000, region("us"), heartbeat("us", 70_000, 1));
    assert!(matches!(
        reports(&mut r).as_slice(),
        [Report::ClockSkew { .. }]
    ));
}

#[test]
fn hlc_must_increase_with_seq() {
    let mut r = replica("eu");
    r.handle_events(
        5_000,
        region("us"),
        vec![us_event(1, 2_000, "5"), us_event(2, 1_500, "5")],
    );
    let got = rejected(&reports(&mut r));
    assert_eq!(
        got,
        vec![("us:2".into(), "HLC does not increase with seq".into())]
    );
    assert_eq!(r.event_count(), 1);
    // Equal is not an increase either.
    r.handle_events(5_000, region("us"), vec![us_event(2, 2_000, "5")]);
    assert_eq!(rejected(&reports(&mut r)).len(), 1);
}

#[test]
fn an_event_issued_after_a_heartbeat_must_be_above_it() {
    // Above the promise is fine.
    let mut r = replica("eu");
    r.handle_events(5_000, region("us"), vec![us_event(1, 2_000, "5")]);
    r.handle_heartbeat(5_000, region("us"), heartbeat("us", 3_000, 1));
    r.handle_events(5_000, region("us"), vec![us_event(2, 3_001, "5")]);
    assert!(reports(&mut r).is_empty());
    assert_eq!(r.event_count(), 2);
    // At or below it, the signed heartbeat and the signed event prove that us lied: kept as
    // evidence, us frozen.
    let mut r = replica("eu");
    r.handle_events(5_000, region("us"), vec![us_event(1, 2_000, "5")]);
    // us promised: nothing at or below 3.000 s after seq 1.
    let hb = heartbeat("us", 3_000, 1);
    r.handle_heartbeat(5_000, region("us"), hb.clone());
    let broken = us_event(2, 3_000, "5");
    r.handle_events(5_000, region("us"), vec![broken.clone()]);
    assert_eq!(
        reports(&mut r),
        vec![Report::Equivocation {
            id: EventId::parse("us:2").unwrap()
        }]
    );
    assert_eq!(r.event_count(), 1);
    assert_eq!(
        r.evidence(),
        &[Evidence::BrokenPromise {
            heartbeat: hb,
            event: broken
        }]
    );
    assert!(r.settlement_blocked());
}

#[test]
fn a_promise_that_arrives_before_the_events_it_covers_is_kept() {
    let mut r = replica("eu");
    // Heartbeat (3.000 s, seq 2) arrives first; then us:1 and us:2 (below it, covered by
    // seq), then us:3 at 2.500 s, which breaks the promise.
    r.handle_heartbeat(5_000, region("us"), heartbeat("us", 3_000, 2));
    r.handle_events(
        5_000,
        region("us"),
        vec![us_event(2, 2_000, "5"), us_event(1, 1_000, "5")],
    );
    assert!(reports(&mut r).is_empty());
    assert_eq!(r.event_count(), 2);
    // us:3 at 2.500 s breaks the promise, even arriving out of order (buffered).
    let mut r2 = replica("eu");
    r2.handle_heartbeat(5_000, region("us"), heartbeat("us", 3_000, 2));
    for r in [&mut r, &mut r2] {
        r.handle_events(5_000, region("us"), vec![us_event(3, 2_500, "5")]);
        assert_eq!(
            reports(r),
            vec![Report::Equivocation {
                id: EventId::parse("us:3").unwrap()
            }]
        );
        assert!(r.settlement_blocked());
    }
    assert_eq!(r.event_count(), 2);
    assert_eq!(r2.event_count(), 0);
}

#[test]
fn equivocation_is_kept_as_evidence_and_freezes_the_origin() {
    let mut r = replica("eu");
    let a = us_event(1, 1_000, "5");
    let b = us_event(1, 1_000, "6");
    r.handle_events(2_000, region("us"), vec![a.clone()]);
    r.handle_events(2_000, region("us"), vec![b.clone()]);
    let got = reports(&mut r);
    assert_eq!(
        got,
        vec![Report::Equivocation {
            id: EventId::parse("us:1").unwrap()
        }]
    );
    assert_eq!(r.evidence(), &[Evidence::Conflicting(a, b)]);
    assert!(r.settlement_blocked());
    let us = r.members().into_iter().find(|m| m.region == region("us"));
    assert!(us.unwrap().equivocated);
    // Nothing more of that origin is applied, nothing settles.
    r.handle_events(2_000, region("us"), vec![us_event(2, 1_500, "5")]);
    assert_eq!(r.event_count(), 1);
    r.handle_heartbeat(2_000, region("us"), heartbeat("us", 1_900, 2));
    r.handle_timeout(2_000);
    reports(&mut r);
    r.handle_timeout(2_001);
    reports(&mut r);
    assert_eq!(r.watermark(), Hlc::ZERO);
}

#[test]
fn equivocation_in_the_out_of_order_buffer_is_caught_too() {
    let mut r = replica("eu");
    r.handle_events(
        2_000,
        region("us"),
        vec![us_event(3, 1_000, "5"), us_event(3, 1_000, "7")],
    );
    assert_eq!(
        reports(&mut r),
        vec![Report::Equivocation {
            id: EventId::parse("us:3").unwrap()
        }]
    );
    assert!(r.settlement_blocked());
}

#[test]
fn unknown_members_and_non_member_origins_are_refused() {
    let mut r = replica("eu");
    // A message from a region that is not a member, or from ourselves.
    for from in ["zz", "eu"] {
        r.handle_message(
            1_000,
            region(from),
            Message::Events(vec![us_event(1, 900, "5")]),
        );
        r.handle_heartbeat(1_000, region(from), heartbeat(from, 900, 0));
        assert_eq!(
            reports(&mut r),
            vec![
                Report::UnknownMember { from: region(from) },
                Report::UnknownMember { from: region(from) }
            ]
        );
    }
    // An event whose origin is not a member, relayed by a member.
    r.handle_events(
        1_000,
        region("us"),
        vec![event("zz", 1, 900, "5", "zz", CLUSTER)],
    );
    assert_eq!(
        rejected(&reports(&mut r)),
        vec![("zz:1".into(), "origin is not a member".into())]
    );
    // A heartbeat relayed for another region.
    r.handle_heartbeat(1_000, region("us"), heartbeat("eu", 900, 0));
    assert_eq!(rejected(&reports(&mut r)).len(), 1);
    assert_eq!(r.event_count(), 0);
}

#[test]
fn events_with_invalid_content_are_refused() {
    let mut r = replica("eu");
    let good = us_event(1, 900, "5");
    let mut v = serde_json::to_value(&good).unwrap();
    // A malformed account id, a seq of 0, an over-scale amount, an unknown currency.
    let mut bad_account = v.clone();
    bad_account["body"]["Tx"]["account"] = "no spaces allowed".into();
    let mut zero_seq = v.clone();
    zero_seq["id"]["seq"] = 0.into();
    let mut scale = v.clone();
    scale["body"]["Tx"]["amount"] = "5.001".into();
    v["body"]["Tx"]["currency"] = serde_json::json!([88, 88, 88]);
    let events: Vec<Event> = [bad_account, zero_seq, scale, v]
        .into_iter()
        .map(|x| serde_json::from_value(x).unwrap())
        .collect();
    r.handle_events(1_000, region("us"), events);
    let got = rejected(&reports(&mut r));
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(r.event_count(), 0);
}

// ---- wire ------------------------------------------------------------------------------

#[test]
fn wire_round_trips_and_refuses_bad_bytes() {
    let e = us_event(1, 900, "5");
    let bytes = encode_event(&e);
    assert_eq!(bytes[0], WIRE_VERSION);
    assert_eq!(decode_event(&bytes).unwrap(), e);
    let m = Message::Events(vec![e.clone()]);
    assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);

    assert_eq!(decode_event(&[]), Err(WireError::Empty));
    let mut future = bytes.clone();
    future[0] = 2;
    assert_eq!(decode_event(&future), Err(WireError::Version(2)));
    assert_eq!(decode_message(&[0]), Err(WireError::Version(0)));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        decode_event(&trailing),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        decode_event(&bytes[..bytes.len() - 1]),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        decode_message(&[1, 0xff, 0xff, 0xff]),
        Err(WireError::Malformed(_))
    ));
    let huge = vec![1u8; MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        decode_message(&huge),
        Err(WireError::TooLarge(MESSAGE_BYTES_MAX + 1))
    );
    // A length prefix claiming a huge vector with no bytes behind it.
    assert!(decode_message(&[1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    // Decodes, but the content is invalid.
    let mut zero = e.clone();
    zero.id.seq = 0;
    assert!(matches!(
        decode_event(&encode_event(&zero)),
        Err(WireError::Invalid(_))
    ));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A deterministic sweep of short inputs and every truncation/bit flip of real bytes.
    let real = encode_message(&Message::Events(vec![us_event(1, 900, "5")]));
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for n in 0..real.len() {
        inputs.push(real[..n].to_vec());
        for bit in 0..8 {
            let mut flipped = real.clone();
            flipped[n] ^= 1 << bit;
            inputs.push(flipped);
        }
    }
    for a in 0..=255u8 {
        inputs.push(vec![1, a]);
        inputs.push(vec![1, 0, a, a]);
    }
    let mut r = replica("eu");
    for bytes in inputs {
        let _ = decode_event(&bytes);
        let _ = decode_value::<Heartbeat>(&bytes);
        if let Ok(m) = decode_message(&bytes) {
            r.handle_message(1_000, region("us"), m);
            reports(&mut r);
        }
    }
    r.check_invariants().unwrap();
}

#[test]
fn after_a_restart_nothing_lands_below_the_restored_watermark() {
    let mut r = replica("eu");
    r.load(vec![us_event(1, 1_000, "5")]);
    r.restore_watermark(Hlc::from_millis(5_000));
    assert_eq!(r.stats().settled, 1);
    // us:2 at 3.000 s is above us:1 but below what was settled before the restart.
    r.handle_events(6_000, region("us"), vec![us_event(2, 3_000, "5")]);
    let got = rejected(&reports(&mut r));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(r.event_count(), 1);
    r.handle_events(6_000, region("us"), vec![us_event(2, 5_001, "5")]);
    assert!(reports(&mut r).is_empty());
    assert_eq!(r.event_count(), 2);
    r.check_invariants().unwrap();
}

#[test]
fn load_skips_invalid_duplicate_and_gapped_events() {
    let mut r = replica("eu");
    let mut zero = us_event(1, 500, "5");
    zero.id.seq = 0;
    r.load(vec![
        us_event(2, 2_000, "5"),
        us_event(1, 1_000, "5"),
        us_event(1, 1_000, "5"),
        zero,
        us_event(4, 4_000, "5"),
        event("zz", 1, 1_000, "5", "zz", CLUSTER),
    ]);
    assert_eq!(r.event_count(), 2);
    assert_eq!(r.version_vector().get(&region("us")), 2);
    r.check_invariants().unwrap();
}
