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
    for i in 0..c.nodes.len() {
        c.nodes[i].replica = Replica::new(c.config(c.names[i]), Hlc::ZERO);
    }
    c.connect_all(None);
    c
}

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
        Op::Crash { region } => c.crash(region as usize % n),
        Op::Compact { region } => {
            if compact {
                let i = region as usize % n;
                if let Some(s) = c.nodes[i].replica.compact() {
                    assert!(s.verify(&NoAuth, "default"));
                    return 1;
                }
            }
        }
    }
    0
}

/// What must be the same in a compacted region and its never-compacted twin.
fn view(r: &Replica) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        r.all_balances(),
        r.feed(0, usize::MAX),
        r.watermark(),
        r.version_vector(),
        r.idempotency_keys_held(),
        r.stats().settled,
    )
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
            if view(&x.replica) != view(&y.replica) {
                return Err(format!("{} differs from its twin after {op:?}", x.name));
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
        if view(ra) != view(rb) {
            return Err(format!(
                "{}: compacted\n{}\nnever compacted\n{}",
                x.name,
                view(ra),
                view(rb)
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
        let (compactions, mem_a, mem_b) = run(&ops).map_err(TestCaseError::fail)?;
        // After the final settle, every region may compact: it holds at most what its twin does.
        prop_assert!(compactions > 0);
        prop_assert!(mem_a <= mem_b, "{mem_a} > {mem_b}");
    }
}

#[test]
fn compaction_drops_settled_history_from_memory() {
    let mut ops = Vec::new();
    for i in 0..60u8 {
        ops.push(Op::Submit {
            region: i % 3,
            account: i,
            kind: i,
            cents: 100 + u32::from(i) * 37,
            key: (i % 4 == 0).then_some(i % 6),
        });
        if i % 7 == 0 {
            ops.push(Op::DeliverAll);
            ops.push(Op::Tick { ms: 300 });
            ops.push(Op::Persist { region: i });
            ops.push(Op::Compact { region: i });
        }
    }
    let (compactions, mem_a, mem_b) = run(&ops).unwrap();
    assert!(compactions >= 3, "{compactions} compactions");
    // Everything is settled and every key older than the retention: nearly nothing is left.
    assert!(
        mem_b >= 30 && mem_a * 4 < mem_b,
        "{mem_a} events in memory, twin {mem_b}"
    );
}
