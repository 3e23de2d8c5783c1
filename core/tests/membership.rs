//! Membership change (SPEC §10, docs/design/membership.md): joins, retires and their cuts,
//! key rotation, and resolving an equivocation by a retire. Unit tests on the multi-replica
//! harness, and property tests: a retire while partitioned never unsettles a settled event;
//! the cut is the same on every replica whatever the delivery order; a retired region never
//! stalls the watermark after its cut; events verify against the key valid at their HLC.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use wallet_core::*;

fn fee_policy() -> Policy {
    Policy::from_toml("[default]\naction = \"fee\"\nfee = { flat = \"5.00\" }\n").unwrap()
}

fn set(names: &[&str]) -> BTreeSet<RegionId> {
    names.iter().map(|n| region(n)).collect()
}

/// Highest HLC of any event held by the regions of `live`.
fn max_hlc_of(c: &Cluster, live: &[usize]) -> Hlc {
    live.iter()
        .flat_map(|&i| all_events(&c.nodes[i].replica))
        .map(|e| e.hlc)
        .max()
        .unwrap_or(Hlc::ZERO)
}

/// Cuts `out` off from everyone else (side 1).
fn isolate(c: &mut Cluster, out: usize) {
    c.partition(1u8 << out);
}

fn deposit(c: &mut Cluster, i: usize, account: &str, amount: &str) {
    c.submit(i, req(account, Kind::Deposit, amount, Currency::USD))
        .unwrap();
}

fn purchase(c: &mut Cluster, i: usize, account: &str, amount: &str) -> Option<EventId> {
    c.submit(i, req(account, Kind::Purchase, amount, Currency::USD))
        .ok()
        .and_then(Submitted::id)
}

/// An unsigned deposit of 1.00 USD to alice, as `origin`'s event `seq` at `hlc`.
fn unsigned_deposit(origin: &str, seq: u64, hlc: Hlc) -> Event {
    Event {
        id: EventId {
            origin: region(origin),
            seq,
        },
        hlc,
        body: Body::Tx(Tx {
            account: acct("alice"),
            kind: Kind::Deposit,
            amount: Amount::parse("1", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        }),
        sig: Box::new([]),
    }
}

/// Regions `a` and `b` hold byte-identical ledgers.
fn same(c: &Cluster, a: usize, b: usize) {
    assert_eq!(
        snapshot(&c.nodes[a].replica),
        snapshot(&c.nodes[b].replica),
        "{} and {} differ",
        c.names[a],
        c.names[b]
    );
}

/// eu, us and ap, with ap's deposit of 50 to bob settled everywhere.
fn three_settled() -> Cluster {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    deposit(&mut c, 2, "bob", "50");
    assert!(c.settle_all());
    c
}

fn replica_of(c: &mut Cluster, i: usize) -> &mut Replica {
    &mut c.nodes[i].replica
}

/// Region `i` retires `names`; its outputs are drained.
fn retire_by(c: &mut Cluster, i: usize, names: &[&str], why: &str) -> EventId {
    let now = c.local_now(i);
    let id = replica_of(c, i)
        .retire(now, set(names), why.into())
        .unwrap();
    c.drain(i);
    id
}

/// eu, us, ap (0, 1, 2): deposits settled everywhere, then ap cut off, taking three
/// payments nobody else will hold.
fn settled_then_ap_cut_off_taking_payments(c: &mut Cluster) {
    deposit(c, 0, "alice", "100");
    deposit(c, 2, "bob", "50");
    assert!(c.settle_all());
    isolate(c, 2);
    for _ in 0..3 {
        purchase(c, 2, "bob", "1").unwrap();
    }
}

#[test]
fn retiring_a_partitioned_region_lets_settlement_resume_without_it() {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    settled_then_ap_cut_off_taking_payments(&mut c);
    purchase(&mut c, eu, "alice", "10").unwrap();
    c.run_among(&[eu, us], 3);
    // Stalled on ap.
    let target = max_hlc_of(&c, &[eu, us]);
    assert!(c.nodes[eu].replica.watermark() < target);
    let ap_held = c.nodes[eu].replica.version_vector().get(&region("ap"));
    let retire = retire_by(&mut c, eu, &["ap"], "partitioned for good");
    c.run_among(&[eu, us], 4);
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        assert_eq!(r.cut(region("ap")), Some(ap_held), "{}", c.names[i]);
        assert!(!r.settlement_blocked());
        assert!(r.watermark() >= max_hlc_of(&c, &[eu, us]), "{}", c.names[i]);
        assert!(!r.members_in_force().contains(&region("ap")));
        let info = &r.retires()[0];
        assert_eq!(info.id, retire);
        assert!(info.missing.is_empty());
        r.check_invariants().unwrap();
    }
    // New traffic settles without ap.
    purchase(&mut c, us, "alice", "5").unwrap();
    c.run_among(&[eu, us], 3);
    assert!(c.nodes[eu].replica.watermark() >= max_hlc_of(&c, &[eu, us]));
    same(&c, eu, us);
    // ap comes back: its events above the cut are refused everywhere and counted; it
    // learns it is retired and takes nothing more.
    c.heal();
    c.run_among(&[eu, us, ap], 4);
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        assert_eq!(r.version_vector().get(&region("ap")), ap_held);
        assert!(r.membership_stats().refused_above_cut > 0);
    }
    same(&c, eu, us);
    assert!(c.nodes[ap].replica.is_retired());
    assert!(matches!(
        c.submit(ap, req("bob", Kind::Deposit, "1", Currency::USD)),
        Err(SubmitError::Membership(MembershipError::Retired))
    ));
}

#[test]
fn the_cut_is_the_highest_seq_any_remaining_member_held() {
    // us holds more of ap than eu does; eu retires ap; the cut is us's, and eu fetches the
    // rest from us (relayed, signed by ap).
    let mut c = three_settled();
    let (eu, us, ap) = (0, 1, 2);
    // ap and us together, eu alone.
    isolate(&mut c, eu);
    for _ in 0..4 {
        purchase(&mut c, ap, "bob", "1").unwrap();
    }
    c.run_among(&[us, ap], 2);
    let us_held = c.nodes[us].replica.version_vector().get(&region("ap"));
    assert_eq!(us_held, 5);
    // Now ap is cut off, eu and us talk again.
    isolate(&mut c, ap);
    retire_by(&mut c, eu, &["ap"], "gone");
    c.run_among(&[eu, us], 4);
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        assert_eq!(r.cut(region("ap")), Some(us_held));
        assert_eq!(r.version_vector().get(&region("ap")), us_held);
        assert!(r.watermark() >= max_hlc_of(&c, &[eu, us]));
    }
    same(&c, eu, us);
}

#[test]
fn a_region_that_joins_catches_up_and_takes_traffic() {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    // eu and us are the founding members; ap's own configuration names all three and
    // waits for its join.
    for i in [eu, us] {
        let cfg = Config::new(c.names[i], vec![region("eu"), region("us")], fee_policy());
        c.nodes[i].replica = Replica::new(cfg, Hlc::ZERO);
    }
    let mut cfg = c.config(region("ap"));
    cfg.joining = true;
    c.nodes[ap].replica = Replica::new(cfg, Hlc::ZERO);
    c.connect_all(None);
    deposit(&mut c, eu, "alice", "100");
    c.run_among(&[eu, us, ap], 2);
    purchase(&mut c, us, "alice", "30").unwrap();
    c.run_among(&[eu, us, ap], 2);
    assert!(c.nodes[ap].replica.is_joining());
    assert!(matches!(
        c.submit(ap, req("alice", Kind::Deposit, "1", Currency::USD)),
        Err(SubmitError::Restoring)
    ));
    let now = c.local_now(eu);
    let join = replica_of(&mut c, eu)
        .join(now, region("ap"), b"ap-key".to_vec(), b"meta".to_vec())
        .unwrap();
    c.drain(eu);
    let join_hlc = c.nodes[eu].replica.event(join).unwrap().hlc;
    c.run_among(&[eu, us, ap], 4);
    assert!(!c.nodes[ap].replica.is_joining());
    // ap takes traffic; everything settles everywhere, ap included.
    purchase(&mut c, ap, "alice", "20").unwrap();
    deposit(&mut c, ap, "carol", "7");
    c.run_among(&[eu, us, ap], 4);
    let target = max_hlc_of(&c, &[eu, us, ap]);
    for i in [eu, us, ap] {
        let r = &c.nodes[i].replica;
        assert!(r.watermark() >= target, "{}", c.names[i]);
        assert_eq!(r.members_in_force().len(), 3);
        assert!(r.member_at(region("ap"), join_hlc));
        assert!(!r.member_at(region("ap"), Hlc(join_hlc.0 - 1)));
        // Every region (ap too) knows the join's metadata, for its host to reach ap.
        let joins = r.joins();
        assert_eq!(joins.len(), 1, "{}", c.names[i]);
        assert_eq!(
            (joins[0].id, joins[0].hlc, joins[0].region),
            (join, join_hlc, region("ap"))
        );
        assert_eq!(
            (&joins[0].key[..], &joins[0].meta[..]),
            (&b"ap-key"[..], &b"meta"[..])
        );
        r.check_invariants().unwrap();
        check_against_model(&fee_policy(), r).unwrap();
    }
    same(&c, eu, ap);
    same(&c, us, ap);
    // An event of ap at or below its join HLC is refused.
    let early = unsigned_deposit(
        "ap",
        c.nodes[us].replica.version_vector().get(&region("ap")) + 1,
        join_hlc,
    );
    let before = c.nodes[us].replica.stats().rejected;
    let now = c.local_now(us);
    replica_of(&mut c, us).handle_events(now, region("ap"), vec![early]);
    c.drain(us);
    assert_eq!(c.nodes[us].replica.stats().rejected, before + 1);
    // Joining twice, or a retired name, is refused at the issuer.
    let now = c.local_now(us);
    assert!(matches!(
        replica_of(&mut c, us).join(now, region("ap"), b"k".to_vec(), vec![]),
        Err(SubmitError::Membership(MembershipError::AlreadyMember(_)))
    ));
}

#[test]
fn a_retire_survives_a_crash_of_every_member() {
    let mut c = three_settled();
    let (eu, us, ap) = (0, 1, 2);
    isolate(&mut c, ap);
    purchase(&mut c, ap, "bob", "1").unwrap();
    let now = c.local_now(us);
    replica_of(&mut c, us)
        .retire(now, set(&["ap"]), "gone".into())
        .unwrap();
    c.drain(us);
    c.run_among(&[eu, us], 3);
    let cut = c.nodes[eu].replica.cut(region("ap"));
    assert!(cut.is_some());
    c.crash(eu);
    c.crash(us);
    isolate(&mut c, ap);
    c.run_among(&[eu, us], 3);
    for i in [eu, us] {
        assert_eq!(c.nodes[i].replica.cut(region("ap")), cut);
        assert!(!c.nodes[i].replica.settlement_blocked());
        c.nodes[i].replica.check_invariants().unwrap();
    }
    purchase(&mut c, eu, "bob", "2").unwrap();
    c.run_among(&[eu, us], 3);
    assert!(c.nodes[us].replica.watermark() >= max_hlc_of(&c, &[eu, us]));
}

#[test]
fn retire_refuses_self_unknown_and_pending() {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    let now = c.local_now(0);
    let r = replica_of(&mut c, 0);
    assert!(matches!(
        r.retire(now, set(&["eu"]), String::new()),
        Err(SubmitError::Membership(MembershipError::RetireSelf))
    ));
    assert!(matches!(
        r.retire(now, set(&["xx"]), String::new()),
        Err(SubmitError::Membership(MembershipError::NotAMember(_)))
    ));
    r.retire(now, set(&["ap"]), String::new()).unwrap();
    assert!(matches!(
        r.retire(now + 1, set(&["ap"]), String::new()),
        Err(SubmitError::Membership(MembershipError::RetirePending(_)))
    ));
    assert_eq!(r.retiring(), set(&["ap"]));
}

/// A toy signer: a "signature" is an FNV-1a hash of the key and the bytes (the secret is
/// the public key). Keeps the key history like a real one must.
struct ToyAuth {
    me: RegionId,
    keys: KeyHistory,
}

fn toy_sig(key: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain([0u8].iter()).chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

impl Authenticator for ToyAuth {
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        // Snapshots: signed with the newest key.
        let key = self.keys.at(self.me, Hlc(u64::MAX)).unwrap_or_default();
        toy_sig(key, bytes)
    }
    fn verify(&self, _: RegionId, _: &[u8], _: &[u8]) -> bool {
        false
    }
    fn verify_at(&self, origin: RegionId, hlc: Hlc, bytes: &[u8], sig: &[u8]) -> bool {
        self.keys
            .at(origin, hlc)
            .is_some_and(|k| toy_sig(k, bytes) == sig)
    }
    fn set_key(&mut self, region: RegionId, from: Hlc, key: &[u8]) {
        self.keys.set(region, from, key);
    }
    fn sign_event(&self, event: &Event, cluster: &str) -> Vec<u8> {
        let key = self.keys.at(self.me, event.hlc).unwrap_or_default();
        toy_sig(key, &event.signing_bytes(cluster))
    }
    fn sign_heartbeat(&self, hb: &Heartbeat, cluster: &str) -> Vec<u8> {
        let key = self.keys.at(self.me, hb.hlc).unwrap_or_default();
        toy_sig(key, &hb.signing_bytes(cluster))
    }
}

/// A [`ToyAuth`] for `me` that knows every member's founding key.
fn toy_auth(me: RegionId, names: &[RegionId]) -> Box<dyn Authenticator> {
    let mut keys = KeyHistory::new();
    for n in names {
        keys.set(*n, Hlc::ZERO, format!("{n}-key-1").as_bytes());
    }
    Box::new(ToyAuth { me, keys })
}

/// A cluster whose regions sign with [`ToyAuth`], also after a crash, a wipe or a lost disk.
fn toy_cluster(names: &[&str]) -> Cluster {
    let mut c = Cluster::new(names, fee_policy());
    c.auth = Some(toy_auth);
    for i in 0..c.nodes.len() {
        c.nodes[i].replica = Replica::new(c.config(c.names[i]), Hlc::ZERO);
    }
    c.inflight.clear();
    c.connect_all(None);
    c
}

/// eu (region 0) rotates its key to `eu-key-2`; the rotation's HLC.
fn rotate_eu(c: &mut Cluster) -> Hlc {
    let now = c.local_now(0);
    let rot = replica_of(c, 0)
        .rotate_key(now, b"eu-key-2".to_vec())
        .unwrap();
    c.drain(0);
    c.nodes[0].replica.event(rot).unwrap().hlc
}

fn toy_replica(me: &str) -> Replica {
    let mut keys = KeyHistory::new();
    for n in ["eu", "us"] {
        keys.set(region(n), Hlc::ZERO, format!("{n}-key-1").as_bytes());
    }
    let mut cfg = Config::new(region(me), vec![region("eu"), region("us")], fee_policy());
    cfg.auth = Box::new(ToyAuth {
        me: region(me),
        keys,
    });
    Replica::new(cfg, Hlc::ZERO)
}

fn signed_with(key: &[u8], mut e: Event) -> Event {
    e.sig = toy_sig(key, &e.signing_bytes("default")).into();
    e
}

#[test]
fn after_a_rotation_events_verify_against_the_new_key_only() {
    let mut c = toy_cluster(&["eu", "us"]);
    let (eu, us) = (0, 1);
    deposit(&mut c, eu, "alice", "100");
    c.run_among(&[eu, us], 2);
    let rot_hlc = rotate_eu(&mut c);
    // eu, signing with the new key from then on (its authenticator learnt it when the
    // rotation applied), keeps settling with us.
    purchase(&mut c, eu, "alice", "10").unwrap();
    c.run_among(&[eu, us], 3);
    let target = max_hlc_of(&c, &[eu, us]);
    assert!(c.nodes[us].replica.watermark() >= target);
    assert_eq!(c.nodes[us].replica.stats().rejected, 0);
    same(&c, eu, us);
    // A forgery above the rotation signed with the old (compromised) key is refused; the
    // same event signed with the new key is accepted.
    let next = c.nodes[us].replica.version_vector().get(&region("eu")) + 1;
    let e = unsigned_deposit("eu", next, Hlc::from_millis(c.local_now(us) + 1_000));
    assert!(e.hlc > rot_hlc);
    let now = c.local_now(us);
    let forged = signed_with(b"eu-key-1", e.clone());
    replica_of(&mut c, us).handle_events(now, region("eu"), vec![forged]);
    c.drain(us);
    assert_eq!(c.nodes[us].replica.stats().rejected, 1);
    assert_eq!(
        c.nodes[us].replica.version_vector().get(&region("eu")),
        next - 1
    );
    let genuine = signed_with(b"eu-key-2", e);
    replica_of(&mut c, us).handle_events(now, region("eu"), vec![genuine]);
    c.drain(us);
    assert_eq!(
        c.nodes[us].replica.version_vector().get(&region("eu")),
        next
    );
}

#[test]
fn a_restarted_region_verifies_with_the_key_history_it_reloads() {
    let mut c = toy_cluster(&["eu", "us"]);
    let (eu, us) = (0, 1);
    rotate_eu(&mut c);
    deposit(&mut c, eu, "alice", "3");
    c.run_among(&[eu, us], 2);
    // us restarts with only the founding keys: the rotation in its reloaded log binds the
    // new one again, so eu's later events still verify.
    let mut keys = KeyHistory::new();
    for n in ["eu", "us"] {
        keys.set(region(n), Hlc::ZERO, format!("{n}-key-1").as_bytes());
    }
    let n = &c.nodes[us];
    let mut cfg = c.config(region("us"));
    cfg.auth = Box::new(ToyAuth {
        me: region("us"),
        keys,
    });
    let mut r = Replica::new(cfg, n.disk_ceiling);
    r.load(n.disk_events.clone());
    r.restore_watermark(n.disk_watermark);
    c.nodes[us].replica = r;
    c.connect_all(None);
    deposit(&mut c, eu, "alice", "4");
    c.run_among(&[eu, us], 3);
    assert_eq!(c.nodes[us].replica.stats().rejected, 0);
    same(&c, eu, us);
}

/// A snapshot signed after its signer rotated its key restores on a region that knows
/// only the founding keys: the rotation it carries (issue 13, `EXT_MEMBERSHIP`) verifies
/// against the old key and binds the new one, which then verifies the snapshot. A
/// membership section altered after signing is refused.
#[test]
fn a_snapshot_carries_the_key_rotations_its_signature_needs() {
    let mut c = toy_cluster(&["eu", "us"]);
    let (eu, us) = (0, 1);
    rotate_eu(&mut c);
    deposit(&mut c, eu, "alice", "3");
    c.run_among(&[eu, us], 4);
    let snap = replica_of(&mut c, eu)
        .compact()
        .expect("a compaction point");
    assert!(snap
        .body
        .ext
        .iter()
        .any(|(n, _)| n == wallet_core::replica::EXT_MEMBERSHIP));
    let fresh = || {
        let mut keys = KeyHistory::new();
        for n in ["eu", "us"] {
            keys.set(region(n), Hlc::ZERO, format!("{n}-key-1").as_bytes());
        }
        let mut cfg = c.config(region("us"));
        cfg.auth = Box::new(ToyAuth {
            me: region("us"),
            keys,
        });
        Replica::new(cfg, Hlc::ZERO)
    };
    let mut r = fresh();
    r.restore(&snap, Vec::new()).unwrap();
    assert_eq!(
        r.balance(&acct("alice"), Currency::USD).settled,
        dec("3.00")
    );
    // The rotation's key replaced by another: the event no longer verifies.
    let mut forged = snap.clone();
    let (_, bytes) = forged
        .body
        .ext
        .iter_mut()
        .find(|(n, _)| n == wallet_core::replica::EXT_MEMBERSHIP)
        .unwrap();
    let mut events: Vec<Event> = wire::decode_value(bytes).unwrap();
    if let Body::Membership(ch) = &mut events[0].body {
        **ch = Change::RotateKey {
            key: b"mallory".to_vec().into(),
        };
    }
    *bytes = wire::encode_value(&events);
    assert!(matches!(
        fresh().restore(&forged, Vec::new()),
        Err(RestoreError::Malformed(_))
    ));
}

/// Runs until region `i` installed a snapshot, with `out` cut off (so it comes from the
/// others), then heals and settles everything: `i` has its history back and every region
/// holds the same balances.
fn restore_without(c: &mut Cluster, i: usize, out: usize) {
    isolate(c, out);
    for _ in 0..100 {
        c.persist_all();
        c.deliver_all();
        c.tick(300);
        if c.nodes[i].replica.stats().restores > 0 {
            break;
        }
    }
    assert_eq!(
        c.nodes[i].replica.stats().restores,
        1,
        "{i} restored from a snapshot"
    );
    assert!(c.settle_all());
    assert!(!c.nodes[i].replica.is_restoring(), "{i} still restoring");
    for n in &c.nodes {
        for a in ["alice", "bob", "carol"] {
            let (x, y) = (
                n.replica.balance(&acct(a), Currency::USD),
                c.nodes[0].replica.balance(&acct(a), Currency::USD),
            );
            assert_eq!(
                (x.settled, x.provisional),
                (y.settled, y.provisional),
                "{a}"
            );
        }
        assert_eq!(
            n.replica.version_vector(),
            c.nodes[0].replica.version_vector()
        );
    }
    assert_eq!(
        c.nodes[i]
            .replica
            .balance(&acct("alice"), Currency::USD)
            .settled,
        dec("90.00")
    );
    c.nodes[i].replica.check_invariants().unwrap();
}

/// A snapshot verifies against its signer's key valid at its point, and its signer signs
/// with the key it holds now (docs/protocol.md §11): the two agree only while no rotation
/// of the signer's own lies at or above the point, so the signer does not compact then.
/// A snapshot made before the rotation still bootstraps a fresh region after it; the next
/// one, once the watermark passed the rotation, is signed with the new key and restores a
/// region that lost its disk and knows only the founding keys.
#[test]
fn a_rotation_above_the_snapshot_point_defers_compaction_and_restores_still_verify() {
    let mut c = toy_cluster(&["eu", "us", "ap"]);
    let (eu, us, ap) = (0, 1, 2);
    deposit(&mut c, eu, "alice", "100");
    deposit(&mut c, us, "bob", "40");
    assert!(c.settle_all());
    for i in 0..3 {
        assert!(replica_of(&mut c, i).compact().is_some(), "{i} compacts");
        c.drain(i);
    }
    deposit(&mut c, ap, "carol", "7");
    purchase(&mut c, eu, "alice", "10").unwrap();
    assert!(c.settle_all());
    let rot_hlc = rotate_eu(&mut c);
    // Settled below the rotation, held everywhere: a point to compact at.
    let point = c.nodes[eu].replica.compaction_point().unwrap();
    assert!(point < rot_hlc);
    // eu signs with eu-key-2 now, but eu-key-1 is the key valid at the point.
    assert!(!c.nodes[eu].replica.compaction_allowed());
    assert!(replica_of(&mut c, eu).compact().is_none());
    for i in [us, ap] {
        assert!(replica_of(&mut c, i).compact().is_some(), "{i} compacts");
        c.drain(i);
    }
    c.persist_all();
    let first = c.nodes[eu].replica.last_snapshot().unwrap().body.at;
    assert!(first < point);
    // A fresh ap, able to pull only from eu, bootstraps from eu's snapshot made before the
    // rotation and pulls the rotation after it.
    c.wipe(ap);
    restore_without(&mut c, ap, us);
    // The watermark passed the rotation: eu compacts, signing with its new key.
    assert!(c.nodes[eu].replica.watermark() > rot_hlc);
    assert!(c.nodes[eu].replica.compaction_allowed());
    let snap = replica_of(&mut c, eu)
        .compact()
        .expect("a compaction point");
    c.drain(eu);
    for i in [us, ap] {
        assert!(replica_of(&mut c, i).compact().is_some(), "{i} compacts");
        c.drain(i);
    }
    c.persist_all();
    assert!(snap.body.at > rot_hlc);
    // It restores on a region that knows only the founding keys (the rotation it carries
    // binds eu-key-2).
    let mut fresh = Replica::new(c.config(region("us")), Hlc::ZERO);
    fresh.restore(&snap, Vec::new()).unwrap();
    // us loses its disk and, able to pull only from eu, restores from that snapshot.
    c.lose_disk(us);
    restore_without(&mut c, us, ap);
}

#[test]
fn an_equivocating_region_is_resolved_by_retiring_it() {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    deposit(&mut c, ap, "bob", "50");
    deposit(&mut c, eu, "bob", "5");
    assert!(c.settle_all());
    // ap signs two different events under one id, one to eu and one to us.
    isolate(&mut c, ap);
    // Each version opens an account nobody else has: once both are voided, neither may
    // be left behind (a balance of zero on one region and none on the other would differ).
    deposit(&mut c, ap, "zed", "1");
    c.persist_all();
    let mut a = c.nodes[ap].replica.origin_events(region("ap"), 1)[0].clone();
    // Both versions hold an idempotency key: a voided event holds none after the cut, also
    // in an account that stays (bob).
    if let Body::Tx(tx) = &mut a.body {
        tx.idempotency_key = Some("zk".into());
        tx.account = acct("bob");
    }
    let mut b = a.clone();
    if let Body::Tx(tx) = &mut b.body {
        tx.account = acct("yan");
    }
    // eu gets both (and proves it); us gets the second only.
    for (i, e) in [(eu, a.clone()), (eu, b.clone()), (us, b)] {
        let now = c.local_now(i);
        replica_of(&mut c, i).handle_events(now, region("ap"), vec![e]);
        c.drain(i);
    }
    c.run_among(&[eu, us], 3);
    for i in [eu, us] {
        assert!(c.nodes[i].replica.settlement_blocked(), "{}", c.names[i]);
    }
    purchase(&mut c, eu, "bob", "2").unwrap();
    retire_by(&mut c, eu, &["ap"], "equivocated");
    c.run_among(&[eu, us], 4);
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        // The contested seq is not counted: the cut is the seq below it.
        assert_eq!(r.cut(region("ap")), Some(a.id.seq - 1), "{}", c.names[i]);
        assert!(!r.settlement_blocked(), "{}", c.names[i]);
        assert!(r.watermark() >= max_hlc_of(&c, &[eu, us]));
        assert!(!r.evidence().is_empty(), "the evidence stays readable");
        assert_eq!(r.idempotency_keys_held(), 0, "{}: a voided key", c.names[i]);
        r.check_invariants().unwrap();
    }
    same(&c, eu, us);
}

#[test]
fn membership_events_round_trip_and_old_variants_keep_their_bytes() {
    let e = Event {
        id: EventId {
            origin: region("eu"),
            seq: 3,
        },
        hlc: Hlc(7),
        body: Body::Membership(Box::new(Change::RetireAck {
            retire: EventId {
                origin: region("us"),
                seq: 2,
            },
            held: BTreeMap::from([(region("ap"), 9)]),
        })),
        sig: Box::new([]),
    };
    let bytes = postcard::to_stdvec(&e).unwrap();
    assert_eq!(postcard::from_bytes::<Event>(&bytes).unwrap(), e);
    // Body's variant tags: Tx 0, Policy 1, Membership 2 (appended).
    let tag = |b: &Body| postcard::to_stdvec(b).unwrap()[0];
    assert_eq!(tag(&Body::Policy(Box::new(Policy::zero()))), 1);
    assert_eq!(tag(&e.body), 2);
}

// ---- properties ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Submit {
        region: u8,
        account: u8,
        debit: bool,
        cents: u16,
    },
    Deliver {
        nth: u16,
    },
    Partition {
        mask: u8,
    },
    Heal,
    Persist {
        region: u8,
    },
    Tick,
    AntiEntropy {
        from: u8,
        to: u8,
    },
    Crash {
        region: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..2, any::<bool>(), 1u16..3000)
            .prop_map(|(region, account, debit, cents)| Op::Submit { region, account, debit, cents }),
        6 => any::<u16>().prop_map(|nth| Op::Deliver { nth }),
        1 => (1u8..15).prop_map(|mask| Op::Partition { mask }),
        1 => Just(Op::Heal),
        2 => (0u8..4).prop_map(|region| Op::Persist { region }),
        2 => Just(Op::Tick),
        1 => (0u8..4, 0u8..4).prop_map(|(from, to)| Op::AntiEntropy { from, to }),
        1 => (0u8..4).prop_map(|region| Op::Crash { region }),
    ]
}

fn apply(c: &mut Cluster, op: &Op) {
    let n = c.nodes.len();
    match op {
        Op::Submit {
            region,
            account,
            debit,
            cents,
        } => {
            let i = *region as usize % n;
            let kind = if *debit {
                Kind::Purchase
            } else {
                Kind::Deposit
            };
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let account = ["alice", "bob"][*account as usize % 2];
            let _ = c.submit(i, req(account, kind, &amount, Currency::USD));
        }
        Op::Deliver { nth } => c.deliver(*nth as usize),
        Op::Partition { mask } => c.partition(*mask),
        Op::Heal => c.heal(),
        Op::Persist { region } => c.persist(*region as usize % n, usize::MAX),
        Op::Tick => c.tick(100),
        Op::AntiEntropy { from, to } => c.anti_entropy(*from as usize % n, *to as usize % n),
        Op::Crash { region } => c.crash(*region as usize % n),
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("CORE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// A retire issued at any point of a random run (partitions, any delivery order,
    /// partial persistence) never unsettles a settled event, the cut is the same on every
    /// remaining replica, and once the rest heals the retired region never stalls the
    /// watermark: everything the remaining regions hold settles, identically.
    #[test]
    fn a_retire_never_unsettles_and_its_cut_agrees(
        before in prop::collection::vec(op(), 0..60),
        after in prop::collection::vec(op(), 0..60),
        retired in 0usize..4,
        issuer_offset in 1usize..4,
        two in any::<bool>(),
    ) {
        let mut c = Cluster::new(&["eu", "us", "ap", "sa"], fee_policy());
        let issuer = (retired + issuer_offset) % 4;
        // Sometimes a second region (neither the first nor the issuer) is retired with it.
        let second = (0..4).find(|i| *i != retired && *i != issuer).filter(|_| two);
        for o in &before {
            apply(&mut c, o);
            c.check_never_retracts().map_err(TestCaseError::fail)?;
        }
        let now = c.local_now(issuer);
        let retired_name = c.names[retired];
        let mut names = BTreeSet::from([retired_name]);
        names.extend(second.map(|s| c.names[s]));
        c.nodes[issuer]
            .replica
            .retire(now, names, "property".into())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        c.drain(issuer);
        // Answered (like any admin call) once durable: a crash does not take it back.
        c.persist(issuer, usize::MAX);
        for o in &after {
            apply(&mut c, o);
            c.check_never_retracts().map_err(TestCaseError::fail)?;
        }
        // The retired regions are gone for good; the others heal.
        let gone: u8 = (1u8 << retired) | second.map_or(0, |s| 1u8 << s);
        c.partition(gone);
        let live: Vec<usize> = (0..4).filter(|i| gone & (1u8 << i) == 0).collect();
        for _ in 0..8 {
            c.run_among(&live, 1);
            c.check_never_retracts().map_err(TestCaseError::fail)?;
        }
        if let Some(s) = second {
            let other = c.names[s];
            let cuts: Vec<Option<u64>> =
                live.iter().map(|&i| c.nodes[i].replica.cut(other)).collect();
            prop_assert!(cuts[0].is_some() && cuts.iter().all(|k| *k == cuts[0]), "{cuts:?}");
        }
        let cuts: Vec<Option<u64>> =
            live.iter().map(|&i| c.nodes[i].replica.cut(retired_name)).collect();
        prop_assert!(cuts[0].is_some(), "no cut: {:?}", c.nodes[live[0]].replica.retires());
        prop_assert!(cuts.iter().all(|k| *k == cuts[0]), "cuts differ: {cuts:?}");
        let target = max_hlc_of(&c, &live);
        for &i in &live {
            let r = &c.nodes[i].replica;
            prop_assert!(!r.settlement_blocked(), "{} blocked", c.names[i]);
            prop_assert!(r.watermark() >= target, "{} stalled after the cut", c.names[i]);
            prop_assert_eq!(r.version_vector().get(&retired_name), cuts[0].unwrap_or(0));
            r.check_invariants().map_err(TestCaseError::fail)?;
            check_against_model(&fee_policy(), r).map_err(TestCaseError::fail)?;
        }
        let first = snapshot(&c.nodes[live[0]].replica);
        for &i in &live[1..] {
            prop_assert!(snapshot(&c.nodes[i].replica) == first, "{} differs", c.names[i]);
        }
        // Nothing a remaining region acknowledged to a client is lost (the retired region's
        // own acknowledgements above the cut are what a retire gives up).
        for &i in &live {
            for id in c.nodes[i].acked.clone() {
                prop_assert!(c.nodes[live[0]].replica.event(id).is_some(), "lost {id}");
            }
        }
    }

    /// The key valid at an HLC is the one set at the highest point below it, whatever the
    /// order the points were set in.
    #[test]
    fn the_key_at_an_hlc_is_the_last_one_set_below_it(
        points in prop::collection::btree_set(1u64..1000, 0..8),
        order in any::<u64>(),
        probes in prop::collection::vec(1u64..1100, 1..20),
    ) {
        let eu = region("eu");
        let mut pts: Vec<u64> = points.iter().copied().collect();
        // Set in a shuffled order (the replica sets them in log order; the history must
        // not care).
        let len = pts.len().max(1);
        pts.rotate_left((order as usize) % len);
        let mut h = KeyHistory::new();
        h.set(eu, Hlc::ZERO, b"k0");
        for p in &pts {
            h.set(eu, Hlc(*p), format!("k{p}").as_bytes());
        }
        for probe in probes {
            let model = points.iter().copied().filter(|p| *p < probe).max();
            let want = match model {
                Some(p) => format!("k{p}"),
                None => "k0".to_string(),
            };
            prop_assert_eq!(h.at(eu, Hlc(probe)), Some(want.as_bytes()));
        }
    }

    /// Through replicas: after random rotations by eu, every event eu issued verifies at us
    /// (against the key valid at its HLC), and an event re-signed with any other key of the
    /// history does not.
    #[test]
    fn events_verify_against_the_key_valid_at_their_hlc(
        steps in prop::collection::vec(any::<bool>(), 1..20),
    ) {
        let mut c = toy_cluster(&["eu", "us"]);
        let (eu, us) = (0, 1);
        let mut keys: Vec<(Hlc, Vec<u8>)> = vec![(Hlc::ZERO, b"eu-key-1".to_vec())];
        for (k, rotate) in steps.iter().enumerate() {
            c.tick(5);
            if *rotate {
                let key = format!("eu-key-r{k}").into_bytes();
                let now = c.local_now(eu);
                let id = c.nodes[eu].replica.rotate_key(now, key.clone()).unwrap();
                c.drain(eu);
                keys.push((c.nodes[eu].replica.event(id).unwrap().hlc, key));
            } else {
                deposit(&mut c, eu, "alice", "1");
            }
        }
        c.run_among(&[eu, us], 2);
        prop_assert_eq!(c.nodes[us].replica.stats().rejected, 0);
        let held = c.nodes[us].replica.origin_events(region("eu"), 0).to_vec();
        prop_assert_eq!(held.len(), steps.len());
        // A fresh replica given eu's log with event j re-signed by another key of the
        // history refuses exactly that event (and so holds j events).
        for j in 0..held.len() {
            let valid = keys.iter().rfind(|(h, _)| *h < held[j].hlc).unwrap();
            for (_, k) in keys.iter().filter(|(_, k)| *k != valid.1) {
                let mut fresh = toy_replica("us");
                let mut batch = held[..j].to_vec();
                batch.push(signed_with(k, held[j].clone()));
                fresh.handle_events(u64::MAX / 4, region("eu"), batch);
                prop_assert_eq!(fresh.stats().rejected, 1);
                prop_assert_eq!(fresh.version_vector().get(&region("eu")), j as u64);
            }
        }
    }
}

/// The cut of `region` known to every region of `at`, the same everywhere.
fn cut_everywhere(c: &Cluster, at: &[usize], region_name: &str) -> Option<u64> {
    let cuts: BTreeSet<Option<u64>> = at
        .iter()
        .map(|&i| c.nodes[i].replica.cut(region(region_name)))
        .collect();
    assert_eq!(cuts.len(), 1, "cuts of {region_name} differ: {cuts:?}");
    cuts.into_iter().next().flatten()
}

/// Every region of `live` settled everything it holds, agrees with the first, and with the
/// reference model.
fn settled_and_agree(c: &Cluster, live: &[usize]) {
    let top = max_hlc_of(c, live);
    for &i in live {
        let r = &c.nodes[i].replica;
        assert!(!r.settlement_blocked(), "{} blocked", c.names[i]);
        assert!(r.watermark() >= top, "{} lags", c.names[i]);
        check_against_model(&c.seed, r).unwrap();
        r.check_invariants().unwrap();
        same(c, live[0], i);
    }
}

/// sa is retired while ap, which must acknowledge it, is cut off with it; then ap is retired
/// too. ap, retired with its log up to its cut held by eu and us, is no longer waited for:
/// the retire of sa cuts from eu's and us's acknowledgements, settlement goes on, and
/// compaction with it; a restart from the snapshot agrees (docs/protocol.md §8, §11). Before
/// the rule, the retire of sa waited for ap for good and held the watermark at it.
#[test]
fn a_retire_whose_acknowledger_is_retired_after_it_cuts_without_it() {
    let mut c = Cluster::new(&["eu", "us", "ap", "sa"], fee_policy());
    let (eu, us, ap, sa) = (0, 1, 2, 3);
    deposit(&mut c, eu, "alice", "100");
    deposit(&mut c, ap, "carol", "20");
    deposit(&mut c, sa, "bob", "50");
    assert!(c.settle_all());
    c.partition(0b1100);
    purchase(&mut c, eu, "alice", "10").unwrap();
    purchase(&mut c, sa, "bob", "1").unwrap();
    c.run_among(&[eu, us], 3);
    for (gone, why) in [("sa", "gone"), ("ap", "gone too")] {
        retire_by(&mut c, eu, &[gone], why);
        c.run_among(&[eu, us], 4);
    }
    assert_eq!(cut_everywhere(&c, &[eu, us], "sa"), Some(1));
    assert_eq!(cut_everywhere(&c, &[eu, us], "ap"), Some(1));
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        let retires = r.retires();
        assert!(retires[0].missing.is_empty(), "{:?}", retires[0]);
        assert_eq!(
            retires[0].acks.keys().copied().collect::<Vec<_>>(),
            vec![region("eu"), region("us")]
        );
        assert_eq!(r.membership_stats().acks_excused, 1);
    }
    settled_and_agree(&c, &[eu, us]);
    // Settlement goes on without them.
    purchase(&mut c, us, "alice", "5").unwrap();
    c.run_among(&[eu, us], 3);
    settled_and_agree(&c, &[eu, us]);
    assert_eq!(
        c.nodes[eu]
            .replica
            .balance(&acct("alice"), Currency::USD)
            .settled,
        dec("85.00")
    );
    // Compaction folds past the retires; a restart from the snapshot agrees.
    for i in [eu, us] {
        assert!(replica_of(&mut c, i).compact().is_some(), "{i} compacts");
        c.drain(i);
    }
    c.run_among(&[eu, us], 2);
    c.crash(us);
    c.run_among(&[eu, us], 2);
    let (a, b) = (&c.nodes[eu].replica, &c.nodes[us].replica);
    assert_eq!(b.stats().restores, 1);
    assert_eq!(a.retires(), b.retires());
    assert_eq!(a.version_vector(), b.version_vector());
    same(&c, eu, us);
    b.check_invariants().unwrap();
    // ap and sa come back: what either acknowledges now is above its cut and refused, the
    // cuts stand; each learns its own cut from a snapshot it refuses (eu and us folded the
    // retires).
    c.heal();
    c.run_among(&[eu, us, ap, sa], 4);
    assert_eq!(cut_everywhere(&c, &[eu, us], "sa"), Some(1));
    assert_eq!(cut_everywhere(&c, &[eu, us], "ap"), Some(1));
    assert_eq!(c.nodes[eu].replica.retires(), c.nodes[us].replica.retires());
    same(&c, eu, us);
    for (i, name) in [(ap, "ap"), (sa, "sa")] {
        let r = &c.nodes[i].replica;
        assert!(r.is_retired(), "{name}");
        assert_eq!(r.cut(region(name)), Some(1), "{name}");
    }
}

/// A retired region that was cut off takes payments a retire gives up; meanwhile the members
/// that remain cut it and compact past the retire and its acknowledgements, which no member
/// serves any longer. Back, it is answered with a snapshot, which it refuses (it folds its
/// own log short), but it learns its cut from the snapshot's membership history and stops
/// taking payments (docs/protocol.md §11). Before, it never learned its cut and took every
/// payment, each given up.
#[test]
fn a_retired_region_learns_its_cut_from_a_snapshot_it_refuses() {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    settled_then_ap_cut_off_taking_payments(&mut c);
    let held = c.nodes[eu].replica.version_vector().get(&region("ap"));
    let retire = retire_by(&mut c, eu, &["ap"], "partitioned for good");
    c.run_among(&[eu, us], 4);
    purchase(&mut c, us, "alice", "5").unwrap();
    c.run_among(&[eu, us], 3);
    for i in [eu, us] {
        let s = replica_of(&mut c, i).compact().expect("compacts");
        let m: Vec<Event> = s
            .body
            .ext_section(wallet_core::snapshot::EXT_MEMBERSHIP)
            .unwrap()
            .unwrap_or_default();
        assert!(m.iter().any(|e| e.id == retire), "the retire is folded");
        assert_eq!(
            m.iter()
                .filter(|e| matches!(e.change(), Some(Change::RetireAck { .. })))
                .count(),
            2
        );
        c.drain(i);
    }
    c.run_among(&[eu, us], 2);
    assert!(!c.nodes[ap].replica.is_retired());
    c.heal();
    c.run_among(&[eu, us, ap], 4);
    let r = &c.nodes[ap].replica;
    assert!(r.is_retired(), "ap learned its cut");
    assert_eq!(r.cut(region("ap")), Some(held));
    assert_eq!(r.membership_stats().cuts_from_snapshot, 1);
    assert_eq!(r.stats().restores, 0, "nothing installed");
    assert_eq!(r.retires()[0].cut, c.nodes[eu].replica.retires()[0].cut);
    assert!(matches!(
        c.submit(ap, req("bob", Kind::Deposit, "1", Currency::USD)),
        Err(SubmitError::Membership(MembershipError::Retired))
    ));
    same(&c, eu, us);
}

/// ap acknowledges the retire of sa, holding more of sa than eu and us, then is cut off and
/// retired; jp, which must acknowledge too, never does and is retired with it. ap's
/// acknowledgement lies below its cut, in the history every region holds: it counts, and the
/// cut of sa is what ap held; jp is not waited for (docs/protocol.md §8). Before the rule the
/// retire of sa waited for jp for good.
#[test]
fn an_acknowledgement_before_the_acknowledgers_own_cut_counts() {
    let mut c = Cluster::new(&["eu", "us", "ap", "sa", "jp"], fee_policy());
    let (eu, us, ap, sa, jp) = (0, 1, 2, 3, 4);
    deposit(&mut c, eu, "alice", "100");
    deposit(&mut c, ap, "carol", "20");
    deposit(&mut c, sa, "bob", "50");
    deposit(&mut c, jp, "dave", "10");
    assert!(c.settle_all());
    // ap, sa and jp apart: sa takes three payments, ap and jp hold them.
    c.partition(0b11100);
    for _ in 0..3 {
        purchase(&mut c, sa, "bob", "1").unwrap();
    }
    c.run_among(&[ap, sa, jp], 2);
    assert_eq!(c.nodes[ap].replica.version_vector().get(&region("sa")), 4);
    // eu retires sa; eu and us acknowledge what they hold of it (1).
    retire_by(&mut c, eu, &["sa"], "gone");
    c.run_among(&[eu, us], 3);
    // ap comes over and acknowledges 4; jp never does.
    c.partition(0b11000);
    c.run_among(&[eu, us, ap], 3);
    let info = &c.nodes[eu].replica.retires()[0];
    assert_eq!(info.missing, vec![region("jp")]);
    assert_eq!(
        info.acks
            .get(&region("ap"))
            .and_then(|h| h.get(&region("sa"))),
        Some(&4)
    );
    // ap is cut off again and retired with jp.
    c.partition(0b11100);
    retire_by(&mut c, eu, &["ap", "jp"], "gone too");
    c.run_among(&[eu, us], 4);
    let ap_cut = cut_everywhere(&c, &[eu, us], "ap").expect("ap's cut");
    assert_eq!(cut_everywhere(&c, &[eu, us], "jp"), Some(1));
    assert_eq!(cut_everywhere(&c, &[eu, us], "sa"), Some(4));
    for i in [eu, us] {
        let r = &c.nodes[i].replica;
        let info = &r.retires()[0];
        assert!(info.missing.is_empty());
        assert_eq!(info.acks.len(), 3, "eu, us and ap count");
        assert!(r.membership_stats().acks_excused >= 1);
    }
    // ap's acknowledgement is at or below its cut: every region holds it.
    let ack_seq = all_events(&c.nodes[eu].replica)
        .iter()
        .find(|e| {
            e.id.origin == region("ap") && matches!(e.change(), Some(Change::RetireAck { .. }))
        })
        .map(|e| e.id.seq)
        .expect("ap's acknowledgement");
    assert!(ack_seq <= ap_cut);
    // eu and us fetch sa's log up to its cut from the retired regions, and settle.
    c.heal();
    c.run_among(&[eu, us, ap, sa, jp], 4);
    for i in [eu, us] {
        assert_eq!(
            c.nodes[i].replica.version_vector().get(&region("sa")),
            4,
            "{}",
            c.names[i]
        );
    }
    assert_eq!(cut_everywhere(&c, &[eu, us, ap, sa, jp], "sa"), Some(4));
    settled_and_agree(&c, &[eu, us]);
    for i in [ap, sa, jp] {
        assert!(c.nodes[i].replica.is_retired(), "{}", c.names[i]);
    }
}

/// A retired region that lags is sent a member's snapshot whose point lies above events it
/// issued while cut off (the remaining members hold it only up to their acknowledgements),
/// taken before every acknowledgement of the retire: the retired region cannot derive its cut
/// from it. Installing it dropped those events and handed their seqs out again (simulator
/// seed 71 with --membership 100% --compact-every 50: ap reissued ap:1313, equivocation
/// reports at its peers). The region never issues a seq twice, and its own log never goes
/// back.
#[test]
fn a_retired_region_never_installs_a_snapshot_that_folds_its_own_log_short() {
    let mut c = Cluster::with(&["eu", "us", "ap"], &[], &[5_000, 5_000, 0], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    settled_then_ap_cut_off_taking_payments(&mut c);
    c.run_among(&[ap], 2);
    let held = c.nodes[ap].replica.version_vector().get(&region("ap"));
    let top = max_hlc_of(&c, &[ap]);
    retire_by(&mut c, eu, &["ap"], "partitioned for good");
    // us compacts at a point above ap's own events and below its own acknowledgement.
    let mut partial = false;
    for _ in 0..40 {
        c.run_among(&[eu, us], 1);
        let Some(s) = c.nodes[us].replica.snapshot() else {
            continue;
        };
        let m: Vec<Event> = s
            .body
            .ext_section(wallet_core::snapshot::EXT_MEMBERSHIP)
            .unwrap()
            .unwrap_or_default();
        let acks = m
            .iter()
            .filter(|e| matches!(e.change(), Some(Change::RetireAck { .. })))
            .count();
        let retire = m
            .iter()
            .any(|e| matches!(e.change(), Some(Change::Retire { .. })));
        if s.body.at >= top && retire && acks == 1 {
            assert!(replica_of(&mut c, us).compact().is_some());
            c.drain(us);
            partial = true;
            break;
        }
    }
    assert!(partial, "us never compacted between the acknowledgements");
    // ap comes back and pulls from us alone.
    c.partition(1u8 << eu);
    c.run_among(&[us, ap], 6);
    let _ = c.submit(ap, req("bob", Kind::Deposit, "1", Currency::USD));
    c.run_among(&[us, ap], 2);
    c.heal();
    c.run_among(&[eu, us, ap], 4);
    let r = &c.nodes[ap].replica;
    assert!(r.version_vector().get(&region("ap")) >= held);
    let mut seen: BTreeMap<u64, &Event> = BTreeMap::new();
    for e in &c.nodes[ap].disk_events {
        if e.id.origin == region("ap") {
            if let Some(prev) = seen.insert(e.id.seq, e) {
                assert_eq!(prev, e, "ap issued {} twice", e.id);
            }
        }
    }
    for i in [eu, us] {
        let equivocations = c.nodes[i]
            .reports
            .iter()
            .filter(|r| matches!(r, Report::Equivocation { .. }))
            .count();
        assert_eq!(equivocations, 0, "{}", c.names[i]);
    }
}
