//! Compaction (issue 13): a region that drops settled history into snapshots behaves exactly
//! like one that never compacted. Two clusters get the same inputs; in the first, regions
//! compact whenever the ops say so; the second never compacts. Every region must then hold
//! the same balances, feed, watermark, version vector, key index and statuses as its twin, and
//! pass its own self-check, while holding fewer events in memory.

mod common;

use common::*;
use proptest::prelude::*;
use wallet_core::*;

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        region: u8,
        account: u8,
        kind: u8,
        cents: u32,
        key: Option<u8>,
    },
    DeliverAll,
    Tick {
        ms: u16,
    },
    Persist {
        region: u8,
    },
    Partition {
        mask: u8,
    },
    Heal,
    Crash {
        region: u8,
    },
    Compact {
        region: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (any::<u8>(), any::<u8>(), any::<u8>(), 1u32..9_000, prop::option::weighted(0.5, 0u8..6))
            .prop_map(|(region, account, kind, cents, key)| Op::Submit { region, account, kind, cents, key }),
        4 => Just(Op::DeliverAll),
        4 => (1u16..700).prop_map(|ms| Op::Tick { ms }),
        3 => any::<u8>().prop_map(|region| Op::Persist { region }),
        1 => (1u8..7).prop_map(|mask| Op::Partition { mask }),
        1 => Just(Op::Heal),
        1 => any::<u8>().prop_map(|region| Op::Crash { region }),
        4 => any::<u8>().prop_map(|region| Op::Compact { region }),
    ]
}

fn fee_policy() -> Policy {
    Policy::from_toml("[default]\naction = \"fee\"\nfee = { flat = \"2.5\" }\n").unwrap()
}

/// A cluster with a 1 s key retention (so keys expire within the runs).
fn cluster() -> Cluster {
    let mut c = Cluster::new(&["eu", "us", "ap"], fee_policy());
    c.retention_ms = 1_000;
    // Small chunks: a bootstrap from a peer's snapshot takes several (replica/transfer.rs).
    c.snapshot_chunk_bytes = 97;
    for i in 0..c.nodes.len() {
        c.nodes[i].replica = Replica::new(c.config(c.names[i]), Hlc::ZERO);
    }
    c.connect_all(None);
    c
}

/// What [`apply`] did besides the op: a compaction, or a restart from a snapshot.
const COMPACTED: u64 = 1;
const RESTORED: u64 = 1 << 32;

fn apply(c: &mut Cluster, op: &Op, compact: bool) -> u64 {
    let n = c.nodes.len();
    match *op {
        Op::Submit {
            region,
            account,
            kind,
            cents,
            key,
        } => {
            let kind = [Kind::Deposit, Kind::Purchase, Kind::Withdrawal][kind as usize % 3];
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let mut r = req(ACCOUNTS[account as usize % 3], kind, &amount, Currency::USD);
            if let Some(k) = key {
                // Keys 0..2 always carry one body: reuses are duplicates or retries.
                r = keyed(
                    req(
                        ACCOUNTS[account as usize % 3],
                        Kind::Deposit,
                        "3.00",
                        Currency::USD,
                    ),
                    &format!("k{k}"),
                );
                if k >= 3 {
                    r.amount = Amount::parse(&amount, Currency::USD).unwrap();
                }
            }
            let _ = c.submit(region as usize % n, r);
        }
        Op::DeliverAll => c.deliver_all(),
        Op::Tick { ms } => c.tick(u64::from(ms)),
        Op::Persist { region } => c.persist(region as usize % n, usize::MAX),
        Op::Partition { mask } => c.partition(mask),
        Op::Heal => c.heal(),
        Op::Crash { region } => {
            let i = region as usize % n;
            let from_snapshot = c.nodes[i].disk_snapshot.is_some();
            c.crash(i);
            if from_snapshot {
                assert_eq!(c.nodes[i].replica.stats().restores, 1);
                return RESTORED;
            }
        }
        Op::Compact { region } => {
            if compact {
                let i = region as usize % n;
                if let Some(s) = c.nodes[i].replica.compact() {
                    c.drain(i);
                    assert!(s.verify(&NoAuth, "default"));
                    return COMPACTED;
                }
            }
        }
    }
    0
}

/// What must be the same in a compacted region and its never-compacted twin: balances (a
/// region restored from a snapshot holds no (account, currency) whose balances are both
/// zero), the feed from `feed_from` (one restored from a snapshot holds only what follows
/// it) and its length, the watermark, the version vector, the keys held, the settled count
/// and the policy history.
fn view(r: &Replica, feed_from: u64) -> String {
    let balances: Vec<_> = r
        .all_balances()
        .into_iter()
        .filter(|(_, _, b)| !b.provisional.is_zero() || !b.settled.is_zero())
        .collect();
    let policies: Vec<_> = r
        .policy_history()
        .iter()
        .map(|p| (p.version, p.hash, p.event))
        .collect();
    format!(
        "{balances:?}\n{:?}\n{}\n{:?}\n{:?}\n{:?}\n{:?}\n{policies:?}",
        r.feed(feed_from, usize::MAX),
        r.feed_len(),
        r.watermark(),
        r.version_vector(),
        r.idempotency_keys_held(),
        r.stats().settled,
    )
}

/// The first feed position a region holds (above zero once restored from a snapshot).
fn feed_start(r: &Replica) -> u64 {
    r.feed_len() - r.feed(0, usize::MAX).len() as u64
}

/// The views of a compacted region and its twin, from the compacted region's feed start.
fn views(a: &Replica, b: &Replica) -> (String, String) {
    let from = feed_start(a);
    (view(a, from), view(b, from))
}

/// Runs `ops` on both clusters, settles them, compares; returns the compactions made and the
/// events held in memory by each cluster.
fn run(ops: &[Op]) -> Result<(u64, u64, u64), String> {
    let (mut a, mut b) = (cluster(), cluster());
    let mut compactions = 0;
    for op in ops {
        compactions += apply(&mut a, op, true);
        apply(&mut b, op, false);
        for (x, y) in a.nodes.iter().zip(&b.nodes) {
            let (va, vb) = views(&x.replica, &y.replica);
            if va != vb {
                return Err(format!(
                    "{} differs from its twin after {op:?}:\n{va}\ntwin\n{vb}",
                    x.name
                ));
            }
        }
    }
    // Settle, then compact once more everywhere: history folds away, nothing else changes.
    if !a.settle_all() || !b.settle_all() {
        return Err("did not settle".into());
    }
    check_snapshots_agree(&mut a)?;
    check_snapshots_agree(&mut b)?;
    for n in &mut a.nodes {
        if n.replica.compact().is_some() {
            compactions += 1;
        }
    }
    let (mut mem_a, mut mem_b) = (0, 0);
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        let (ra, rb) = (&x.replica, &y.replica);
        let (va, vb) = views(ra, rb);
        if va != vb {
            return Err(format!(
                "{}: compacted\n{va}\nnever compacted\n{vb}",
                x.name
            ));
        }
        ra.check_invariants()
            .map_err(|e| format!("{}: {e}", x.name))?;
        for e in all_events(ra) {
            let (sa, ca) = ra
                .status(e.id)
                .ok_or(format!("{}: no status for {}", x.name, e.id))?;
            let (sb, cb) = rb
                .status(e.id)
                .ok_or(format!("{}: twin lacks {}", x.name, e.id))?;
            if (sa, ca.map(Compensation::id)) != (sb, cb.map(Compensation::id)) {
                return Err(format!("{}: status of {} differs", x.name, e.id));
            }
        }
        mem_a += ra.events_in_memory();
        mem_b += rb.events_in_memory();
    }
    Ok((compactions, mem_a, mem_b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_compacted_region_agrees_with_one_that_never_compacted(
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let (n, mem_a, mem_b) = run(&ops).map_err(TestCaseError::fail)?;
        let (compactions, _) = counts(n);
        // After the final settle, every region may compact: it holds at most what its twin does.
        prop_assert!(compactions > 0);
        prop_assert!(mem_a <= mem_b, "{mem_a} > {mem_b}");
    }
}

/// The `i`th submit of a scripted run: regions, accounts and kinds in turn.
fn scripted_submit(i: u8, cents_step: u32, key: Option<u8>) -> Op {
    Op::Submit {
        region: i % 3,
        account: i,
        kind: i,
        cents: 100 + u32::from(i) * cents_step,
        key,
    }
}

#[test]
fn compaction_drops_settled_history_from_memory() {
    let mut ops = Vec::new();
    for i in 0..60u8 {
        ops.push(scripted_submit(i, 37, (i % 4 == 0).then_some(i % 6)));
        if i % 7 == 0 {
            ops.push(Op::DeliverAll);
            ops.push(Op::Tick { ms: 300 });
            ops.push(Op::Persist { region: i });
            ops.push(Op::Compact { region: i });
        }
    }
    let (n, mem_a, mem_b) = run(&ops).unwrap();
    let (compactions, _) = counts(n);
    assert!(compactions >= 3, "{compactions} compactions");
    // Everything is settled and every key older than the retention: nearly nothing is left.
    assert!(
        mem_b >= 30 && mem_a * 4 < mem_b,
        "{mem_a} events in memory, twin {mem_b}"
    );
}

/// Splits the counts [`run`] returns: (compactions, restarts from a snapshot).
fn counts(n: u64) -> (u64, u64) {
    (n & (RESTORED - 1), n >> 32)
}

#[test]
fn a_region_restarted_from_its_snapshot_agrees_with_its_twin() {
    let mut ops = Vec::new();
    for i in 0..48u8 {
        ops.push(scripted_submit(i, 53, (i % 3 == 0).then_some(i % 6)));
        if i % 6 == 5 {
            for _ in 0..3 {
                ops.extend([Op::DeliverAll, Op::Tick { ms: 300 }]);
                ops.extend((0..3).map(|region| Op::Persist { region }));
            }
            let region = i / 6;
            ops.extend([
                Op::DeliverAll,
                Op::Compact { region },
                Op::Persist { region },
                Op::Crash { region },
            ]);
        }
    }
    let (n, _, _) = run(&ops).unwrap();
    let (compactions, restores) = counts(n);
    assert!(
        compactions >= 3 && restores >= 3,
        "{compactions} compactions, {restores} restarts from a snapshot"
    );
}

/// Runs `ops` on both clusters, settles and compacts them, then region `lost` loses its disk
/// in both: in the compacted cluster it can only get the history back as a peer's snapshot
/// (`Message::Snapshot`) and the events after it. It must end exactly as its twin, which
/// pulled every event.
fn bootstrap(ops: &[Op], lost: usize) -> Result<u64, String> {
    let (mut a, mut b) = (cluster(), cluster());
    for op in ops {
        apply(&mut a, op, true);
        apply(&mut b, op, false);
    }
    if !a.settle_all() || !b.settle_all() {
        return Err("did not settle".into());
    }
    let mut compacted = false;
    for n in &mut a.nodes {
        if let Some(s) = n.replica.compact() {
            compacted |= s.body.members.iter().any(|m| m.seq > 0);
        }
    }
    for i in 0..a.nodes.len() {
        a.drain(i);
    }
    a.persist_all();
    a.wipe(lost);
    b.wipe(lost);
    // A few more transactions while it restores, then everything settles.
    for (i, cents) in [(1usize, 250u32), (2, 1_700)] {
        for c in [&mut a, &mut b] {
            let j = (lost + i) % 3;
            let _ = c.submit(
                j,
                req(
                    "alice",
                    Kind::Purchase,
                    &format!("{}.00", cents / 100),
                    Currency::USD,
                ),
            );
        }
    }
    for c in [&mut a, &mut b] {
        for _ in 0..6 {
            c.persist_all();
            c.deliver_all();
            c.tick(300);
        }
    }
    if !a.settle_all() || !b.settle_all() {
        return Err("did not settle after the lost disk".into());
    }
    let (ra, rb) = (&a.nodes[lost].replica, &b.nodes[lost].replica);
    let (va, vb) = views(ra, rb);
    if va != vb {
        return Err(format!("bootstrapped\n{va}\ntwin\n{vb}"));
    }
    ra.check_invariants()?;
    if ra.is_restoring() {
        return Err("still restoring".into());
    }
    let restores = ra.stats().restores;
    check_snapshots_agree(&mut a)?;
    Ok(if compacted { restores } else { u64::MAX })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 500, ..ProptestConfig::default() })]

    #[test]
    fn a_region_that_lost_its_disk_bootstraps_from_a_peer_snapshot(
        ops in prop::collection::vec(op(), 1..80),
        lost in 0usize..3,
    ) {
        let restores = bootstrap(&ops, lost).map_err(TestCaseError::fail)?;
        // When its peers compacted anything, it came back through their snapshot.
        prop_assert!(restores >= 1, "{restores}");
    }
}

#[test]
fn restore_refuses_a_snapshot_that_does_not_match() {
    let mut c = cluster();
    let _ = c.submit(0, req("alice", Kind::Deposit, "10.00", Currency::USD));
    assert!(c.settle_all());
    check_snapshots_agree(&mut c).unwrap();
    let snap = c.nodes[0].replica.compact().expect("a compaction point");
    // The same body, signed by its signer for real.
    let signed = |s: &Snapshot| {
        let mut s = s.clone();
        s.sig = tag(s.signer, &Snapshot::signing_bytes(&s.body, s.signer)).into();
        s
    };
    let fresh = |retention: u64, cluster: &str| {
        let mut cfg = c.config(c.names[1]);
        cfg.idempotency_retention_ms = retention;
        cfg.cluster = cluster.into();
        cfg.auth = Box::new(Tag(c.names[1]));
        Replica::new(cfg, Hlc::ZERO)
    };
    let good = signed(&snap);
    let err = |mut r: Replica, s: &Snapshot| r.restore(s, Vec::new()).unwrap_err();
    // The right one restores, once.
    let mut ok = fresh(1_000, "default");
    ok.restore(&good, Vec::new()).unwrap();
    assert_eq!(
        ok.balance(&acct("alice"), Currency::USD).settled,
        dec("10.00")
    );
    assert_eq!(ok.restore(&good, Vec::new()), Err(RestoreError::NotFresh));
    // A forged balance, another signer, another cluster, another retention, another seed
    // policy, a member this configuration does not have.
    let mut forged = good.clone();
    forged.body.accounts[0].balances[0].settled = dec("1000000.00");
    assert!(matches!(
        err(fresh(1_000, "default"), &forged),
        RestoreError::Signature(_)
    ));
    let mut other_signer = good.clone();
    other_signer.signer = c.names[2];
    assert!(matches!(
        err(fresh(1_000, "default"), &other_signer),
        RestoreError::Signature(_)
    ));
    assert!(matches!(
        err(fresh(1_000, "other"), &good),
        RestoreError::Cluster { .. }
    ));
    assert!(matches!(
        err(fresh(2_000, "default"), &good),
        RestoreError::Retention { .. }
    ));
    let mut other_policy = good.clone();
    other_policy.body.policies[0].hash = Policy::zero().hash();
    assert!(matches!(
        err(fresh(1_000, "default"), &signed(&other_policy)),
        RestoreError::Policy { .. }
    ));
    let mut unknown = good.clone();
    unknown.body.members[0].region = region("zz");
    assert!(matches!(
        err(fresh(1_000, "default"), &signed(&unknown)),
        RestoreError::Member(_)
    ));
}

/// A host that signs own transactions in batches (walletd) may compact while one is held
/// unsigned: it is above the snapshot (not durable, so never announced), and signing it
/// afterwards must still persist it. (Found by tests/compaction.rs against walletd: the held
/// event was looked up by its seq as a position in the compacted log, never written, and
/// lost at the next restart.)
#[test]
fn an_event_held_unsigned_across_a_compaction_is_still_persisted() {
    let eu = region("eu");
    let mut r = Replica::new(Config::new(eu, vec![eu], Policy::zero()), Hlc::ZERO);
    let pump = |r: &mut Replica| {
        let mut events = Vec::new();
        while let Some(o) = r.poll_output() {
            if let Output::Persist { index, record } = o {
                if let Record::Event(e) = record {
                    events.push(e.id.seq);
                }
                r.handle_persisted(index);
            }
        }
        events
    };
    for (i, amount) in ["1.00", "2.00", "3.00"].iter().enumerate() {
        r.submit(
            1_000 + i as u64,
            req("alice", Kind::Deposit, amount, Currency::USD),
        )
        .unwrap();
        pump(&mut r);
    }
    for now in [2_000, 3_000, 4_000] {
        r.handle_timeout(now);
        pump(&mut r);
    }
    r.hold_signing(true);
    r.submit(5_000, req("alice", Kind::Deposit, "4.00", Currency::USD))
        .unwrap();
    assert!(pump(&mut r).is_empty(), "held unsigned: not written yet");
    let snap = r.compact().expect("the three settled deposits fold");
    assert_eq!(snap.body.members[0].seq, 3);
    r.sign_pending();
    assert_eq!(
        pump(&mut r),
        vec![4],
        "the held event is written once signed"
    );
}

#[test]
fn a_snapshot_from_a_peer_that_does_not_verify_is_refused_and_reported() {
    let mut c = cluster();
    let _ = c.submit(0, req("alice", Kind::Deposit, "10.00", Currency::USD));
    assert!(c.settle_all());
    check_snapshots_agree(&mut c).unwrap();
    let mut snap = c.nodes[0].replica.compact().expect("a compaction point");
    snap.body.cluster = "other".into();
    let mut fresh = Replica::new(c.config(c.names[1]), Hlc::ZERO);
    fresh.handle_message(10_000, c.names[0], Message::Snapshot(Box::new(snap)));
    let mut reported = false;
    while let Some(o) = fresh.poll_output() {
        reported |= matches!(o, Output::Report(Report::Snapshot { .. }));
    }
    assert!(reported, "a refused snapshot is reported");
    assert_eq!(fresh.event_count(), 0);
    assert_eq!(fresh.stats().restores, 0);
}
