//! Property tests for the laws and invariants of SPEC §9, on a deterministic multi-replica
//! harness driven by proptest: random submits across regions and accounts, partitions and
//! heals, delivery in any order, duplicates, drops, partial persistence and crashes.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use wallet_core::*;

const ACCOUNTS: [&str; 3] = ["alice", "bob", "vip-carol"];
const CURRENCIES: [Currency; 2] = [Currency::USD, Currency::JPY];

/// Seed policies the tests draw from: every action, fee mode, line and tier, and wildcard
/// amounts finer than a currency's minor units (flat added exactly, then one rounding).
const POLICIES: [&str; 7] = [
    "[default]\naction = \"fee\"\nfee = { flat = \"5.00\", percent = \"10\", cap = \"35.00\" }\n",
    "[default]\naction = \"fee\"\nfee = { flat = \"1\", percent = \"5\", minimum = \"2\", grace = \"10\", per = \"episode\" }\n",
    "[default]\naction = \"reverse\"\n",
    "[default]\naction = \"reverse\"\noverdraft_line = \"50\"\nfee = { flat = \"3\" }\n",
    "[default]\naction = \"fee\"\nfee = { flat = \"2\", percent = \"1.5\" }\n[tiers]\nvip = [\"vip-\"]\n[[rule]]\ntier = \"vip\"\naction = \"reverse\"\noverdraft_line = \"100\"\n[[rule]]\ncurrency = \"JPY\"\nfee = { flat = \"500\", cap = \"900\", per = \"episode\" }\n",
    "[default]\naction = \"fee\"\nfee = { flat = \"1.004\", percent = \"0.3\" }\n",
    "[default]\naction = \"fee\"\nbeyond_line = \"fee\"\noverdraft_line = \"0.5\"\nfee = { flat = \"2.4\", percent = \"1\", grace = \"0.5\", minimum = \"0.995\" }\n",
];

/// Case counts keep `cargo test` fast; `CORE_PROPTEST_CASES=N` runs more (a soak).
fn cases(default: u32) -> u32 {
    std::env::var("CORE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn policy(i: usize) -> Policy {
    Policy::from_toml(POLICIES[i % POLICIES.len()]).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        region: u8,
        account: u8,
        currency: u8,
        kind: u8,
        cents: u32,
        key: Option<u8>,
    },
    Retry {
        region: u8,
        nth: u8,
    },
    Deliver {
        nth: u16,
    },
    DeliverAll,
    Duplicate {
        nth: u16,
    },
    Tick {
        ms: u16,
    },
    Persist {
        region: u8,
        count: u8,
    },
    Partition {
        mask: u8,
    },
    Heal,
    AntiEntropy {
        from: u8,
        to: u8,
    },
    Crash {
        region: u8,
    },
    PolicyChange {
        region: u8,
        which: u8,
    },
    /// Every region at once submits a request with the same idempotency key on one account,
    /// each with one of two bodies (bit i of `bodies` for region i): a retry sent to several
    /// regions during a partition, mixed with a reuse of the key for another request.
    KeyedSpend {
        account: u8,
        key: u8,
        bodies: u8,
    },
    /// Every region at once debits `pct` % of the balance it sees (a concurrent spend).
    Spend {
        account: u8,
        pct: u8,
        withdrawal: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 1u32..15_000, prop::option::weighted(0.25, 0u8..6))
            .prop_map(|(region, account, currency, kind, cents, key)| Op::Submit {
                region, account, currency, kind, cents, key
            }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(region, nth)| Op::Retry { region, nth }),
        6 => any::<u16>().prop_map(|nth| Op::Deliver { nth }),
        2 => Just(Op::DeliverAll),
        1 => any::<u16>().prop_map(|nth| Op::Duplicate { nth }),
        3 => (1u16..700).prop_map(|ms| Op::Tick { ms }),
        3 => (any::<u8>(), 0u8..8).prop_map(|(region, count)| Op::Persist { region, count }),
        2 => (1u8..7).prop_map(|mask| Op::Partition { mask }),
        1 => Just(Op::Heal),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(from, to)| Op::AntiEntropy { from, to }),
        1 => any::<u8>().prop_map(|region| Op::Crash { region }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(region, which)| Op::PolicyChange { region, which }),
        3 => (any::<u8>(), 0u8..4, any::<u8>())
            .prop_map(|(account, key, bodies)| Op::KeyedSpend { account, key, bodies }),
        5 => (any::<u8>(), 30u8..=100, prop::bool::weighted(0.3))
            .prop_map(|(account, pct, withdrawal)| Op::Spend { account, pct, withdrawal }),
    ]
}

/// The body a key stands for. Keys 0 to 3 always carry the same body on an account, so a
/// reuse is a duplicate; keys 4 and 5 carry a body that depends on the region, so reuses in
/// two regions are conflicts.
fn keyed_request(account: usize, key: u8, region: usize) -> TxRequest {
    let kind = [Kind::Purchase, Kind::Deposit, Kind::Withdrawal][key as usize % 3];
    let varies = if key >= 4 { region as u32 } else { 0 };
    let amount = format!("{}", 30 + 7 * u32::from(key) + varies);
    keyed(
        req(ACCOUNTS[account], kind, &amount, Currency::USD),
        &format!("k{key}"),
    )
}

fn amount_text(cents: u32, currency: Currency) -> String {
    if currency.minor_units() == 0 {
        format!("{}", cents / 100 + 1)
    } else {
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

fn apply(c: &mut Cluster, op: &Op) -> Result<(), TestCaseError> {
    let n = c.nodes.len();
    match *op {
        Op::Submit {
            region,
            account,
            currency,
            kind,
            cents,
            key,
        } => {
            let i = region as usize % n;
            let a = account as usize % ACCOUNTS.len();
            let r = match key {
                Some(k) => keyed_request(a, k, i),
                None => {
                    // Mostly USD, mostly deposits and purchases, so pairs collide and debits
                    // find money to overdraw.
                    let cur = CURRENCIES[usize::from(currency % 4 == 3)];
                    let kind = match kind % 20 {
                        0..=7 => Kind::Deposit,
                        8..=14 => Kind::Purchase,
                        15..=17 => Kind::Withdrawal,
                        _ => Kind::Refund,
                    };
                    let cents = cents.max(1);
                    req(ACCOUNTS[a], kind, &amount_text(cents, cur), cur)
                }
            };
            let before = c.nodes[i].replica.event_count();
            match c.submit(i, r) {
                Ok(Submitted::New(_)) => {
                    prop_assert_eq!(c.nodes[i].replica.event_count(), before + 1)
                }
                Ok(Submitted::Existing(_)) => {
                    prop_assert_eq!(c.nodes[i].replica.event_count(), before)
                }
                Ok(Submitted::Pending { .. }) => prop_assert!(false, "optimistic never waits"),
                Err(SubmitError::InsufficientFunds { .. }) => {}
                // The region already knows the key with another region's body.
                Err(SubmitError::IdempotencyConflict { .. }) if key.is_some_and(|k| k >= 4) => {}
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
        }
        Op::Retry { region, nth } => {
            let i = region as usize % n;
            let acked = &c.nodes[i].acked_requests;
            if !acked.is_empty() {
                let (r, _) = acked[nth as usize % acked.len()].clone();
                let before = c.nodes[i].replica.event_count();
                let out = c.submit(i, r);
                // A retry at the same region never creates a second event.
                prop_assert!(matches!(out, Ok(Submitted::Existing(_))), "{:?}", out);
                prop_assert_eq!(c.nodes[i].replica.event_count(), before);
            }
        }
        Op::Deliver { nth } => c.deliver(nth as usize),
        Op::DeliverAll => c.deliver_all(),
        Op::Duplicate { nth } => c.duplicate(nth as usize),
        Op::Tick { ms } => c.tick(u64::from(ms)),
        Op::Persist { region, count } => c.persist(region as usize % n, count as usize),
        Op::Partition { mask } => c.partition(mask),
        Op::Heal => c.heal(),
        Op::AntiEntropy { from, to } => c.anti_entropy(from as usize % n, to as usize % n),
        Op::Crash { region } => c.crash(region as usize % n),
        Op::Spend {
            account,
            pct,
            withdrawal,
        } => {
            let a = ACCOUNTS[account as usize % ACCOUNTS.len()];
            let kind = if withdrawal {
                Kind::Withdrawal
            } else {
                Kind::Purchase
            };
            for i in 0..n {
                let seen = c.nodes[i]
                    .replica
                    .balance(&acct(a), Currency::USD)
                    .provisional;
                let want = (seen * rust_decimal::Decimal::from(pct)
                    / rust_decimal::Decimal::from(100))
                .round_dp(2);
                if want > rust_decimal::Decimal::ZERO {
                    let out = c.submit(i, req(a, kind, &want.to_string(), Currency::USD));
                    prop_assert!(out.is_ok(), "{:?}", out);
                }
            }
        }
        Op::KeyedSpend {
            account,
            key,
            bodies,
        } => {
            let a = ACCOUNTS[account as usize % ACCOUNTS.len()];
            for i in 0..n {
                // Purchases of 20.00 or 10.00 (body 1 also carries a reference), so both
                // duplicates and conflicts come with money to overdraw.
                let other = (bodies >> i) & 1 == 1;
                let amount = if other { "10.00" } else { "20.00" };
                let mut r = keyed(
                    req(a, Kind::Purchase, amount, Currency::USD),
                    &format!("m{key}"),
                );
                if other {
                    r.reference = Some("other".into());
                }
                match c.submit(i, r) {
                    Ok(_) | Err(SubmitError::InsufficientFunds { .. }) => {}
                    // The region already holds the key with the other body.
                    Err(SubmitError::IdempotencyConflict { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                }
            }
        }
        Op::PolicyChange { region, which } => {
            let i = region as usize % n;
            let now = c.local_now(i);
            let p = policy(which as usize);
            prop_assert!(c.nodes[i].replica.submit_policy(now, p).is_ok());
            c.drain(i);
        }
    }
    Ok(())
}

fn run_and_check(
    seed: usize,
    skews: &[u64],
    ops: &[Op],
    crash_ok: bool,
) -> Result<Cluster, TestCaseError> {
    let mut c = Cluster::with(&["ap", "eu", "us"], &[], skews, policy(seed));
    for op in ops {
        if !crash_ok && matches!(op, Op::Crash { .. }) {
            continue;
        }
        apply(&mut c, op)?;
        for node in &c.nodes {
            if let Err(e) = node.replica.check_invariants() {
                prop_assert!(false, "{} after {:?}: {}", node.name, op, e);
            }
        }
        // The settled fold never retracts: the feed only grows and settled statuses stay.
        if let Err(e) = c.check_never_retracts() {
            prop_assert!(false, "after {:?}: {}", op, e);
        }
    }
    prop_assert!(c.settle_all(), "did not settle");
    if let Err(e) = c.check_never_retracts() {
        prop_assert!(false, "at the end: {}", e);
    }
    Ok(c)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    /// §9.1, 2, 3, 5, 6 on random histories with partitions, reordering, duplicates, drops,
    /// partial persistence and crashes: every region ends byte-identical, agrees with a
    /// naive recomputation, lost nothing acknowledged, compensated each cause at most once.
    #[test]
    fn regions_converge_byte_identical_and_match_the_model(
        seed in 0usize..POLICIES.len(),
        skews in prop::collection::vec(0u64..3_000, 3),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut c = run_and_check(seed, &skews, &ops, true)?;
        let first = snapshot(&c.nodes[0].replica);
        for n in &c.nodes {
            prop_assert_eq!(&snapshot(&n.replica), &first, "{} differs from {}", n.name, c.nodes[0].name);
            if let Err(e) = n.replica.check_invariants() {
                prop_assert!(false, "{}: {}", n.name, e);
            }
            if let Err(e) = check_against_model(&c.seed, &n.replica) {
                prop_assert!(false, "{}", e);
            }
            if let Err(e) = check_entries(&n.replica, 1 + skews[0] as usize % 4) {
                prop_assert!(false, "{}", e);
            }
        }
        let r = &c.nodes[0].replica;
        // No loss: every acknowledged event is everywhere.
        for n in &c.nodes {
            for id in &n.acked {
                for m in &c.nodes {
                    prop_assert!(m.replica.event(*id).is_some(), "{} lost {}", m.name, id);
                }
            }
        }
        // Exactly once: at most one compensation per cause.
        let mut per_cause = BTreeMap::new();
        for comp in r.feed(0, usize::MAX) {
            if comp.kind != CompKind::IdempotencyConflict {
                *per_cause.entry(comp.cause).or_insert(0) += 1;
            }
        }
        prop_assert!(per_cause.values().all(|n| *n == 1));
        // Idempotency across regions: at most one event per (account, key, body) stands
        // (the same key with different bodies is a reported conflict, not reversed).
        let mut standing: BTreeMap<(AccountId, String, String), u32> = BTreeMap::new();
        for e in all_events(r) {
            let Some(tx) = e.tx() else { continue };
            let Some(k) = &tx.idempotency_key else { continue };
            if r.status(e.id).unwrap().0 != Status::Reversed {
                let body = format!("{:?} {} {}", tx.kind, tx.amount, tx.currency);
                *standing.entry((tx.account.clone(), k.to_string(), body)).or_default() += 1;
            }
        }
        prop_assert!(standing.values().all(|n| *n <= 1), "{:?}", standing);
        // Snapshots (issue 13): at one watermark, every region makes the same body.
        if let Err(e) = check_snapshots_agree(&mut c) {
            prop_assert!(false, "{}", e);
        }
    }

    /// §9.4 with `reverse`: walking the settled order with the actual feed, no reversible
    /// debit that stands leaves the settled balance below the floor.
    #[test]
    fn reverse_leaves_no_reversible_debit_below_the_floor(
        seed in prop::sample::select(vec![2usize, 3, 4]),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::PolicyChange { .. })).collect();
        let c = run_and_check(seed, &[0, 0, 0], &ops, false)?;
        let r = &c.nodes[0].replica;
        let comps: BTreeMap<EventId, Compensation> = r
            .feed(0, usize::MAX)
            .iter()
            .filter(|x| x.kind != CompKind::IdempotencyConflict)
            .map(|x| (x.cause, x.clone()))
            .collect();
        let mut bal: BTreeMap<(AccountId, Currency), rust_decimal::Decimal> = BTreeMap::new();
        let mut checked = 0;
        for e in all_events(r) {
            let Some(tx) = e.tx() else { continue };
            let b = bal.entry((tx.account.clone(), tx.currency)).or_default();
            *b += tx.delta();
            let comp = comps.get(&e.id);
            if let Some(x) = comp {
                *b += x.delta;
            }
            let rule = c.seed.applied(tx.account.as_str(), tx.currency);
            let reversed = comp.is_some_and(|x| x.kind == CompKind::Reversal);
            if rule.action == Action::Reverse && rule.reversible.contains(&tx.kind) && !reversed {
                checked += 1;
                prop_assert!(*b >= rule.floor, "{} left {} {} at {}", e.id, tx.account, tx.currency, b);
            }
        }
        let _ = checked;
    }
}

/// Events and final heartbeats of a random history among ap/eu/us, with `obs` configured as
/// a member that never speaks (so the source itself settles nothing).
fn history(
    seed: usize,
    ops: &[Op],
) -> Result<(Vec<Event>, Vec<SignedHeartbeat>, u64), TestCaseError> {
    let mut c = Cluster::with(&["ap", "eu", "us"], &["obs"], &[0, 0, 0], policy(seed));
    for op in ops {
        if matches!(op, Op::Crash { .. }) {
            continue;
        }
        apply(&mut c, op)?;
    }
    c.heal();
    for _ in 0..3 {
        c.persist_all();
        c.deliver_all();
    }
    c.inflight.clear();
    c.tick(1_000);
    c.persist_all();
    c.tick(1_000);
    let mut hbs: BTreeMap<RegionId, SignedHeartbeat> = BTreeMap::new();
    for (_, _, m) in &c.inflight {
        if let Message::SignedHeartbeat(h) = m {
            hbs.insert(h.hb.origin, h.clone());
        }
    }
    let mut events: BTreeMap<EventId, Event> = BTreeMap::new();
    for n in &c.nodes {
        // Only durable own events have left a region.
        for e in &n.disk_events {
            events.insert(e.id, e.clone());
        }
    }
    Ok((
        events.into_values().collect(),
        hbs.into_values().collect(),
        c.now + 60_000,
    ))
}

enum Item {
    Events(Vec<Event>, RegionId),
    Heartbeat(SignedHeartbeat),
    Timeout,
}

/// Feeds a fresh `obs` replica the items in the given order; returns its snapshot bytes.
fn observe(seed: usize, items: Vec<Item>, now: u64) -> Result<Replica, TestCaseError> {
    let names: Vec<RegionId> = ["ap", "eu", "us", "obs"]
        .iter()
        .map(|n| region(n))
        .collect();
    let mut r = Replica::new(Config::new(region("obs"), names, policy(seed)), Hlc::ZERO);
    let mut t = now;
    let drain = |r: &mut Replica| {
        while let Some(o) = r.poll_output() {
            if let Output::Persist { index, .. } = o {
                r.handle_persisted(index);
            }
        }
    };
    for item in items {
        t += 1;
        match item {
            Item::Events(ev, from) => r.handle_events(t, from, ev),
            Item::Heartbeat(h) => {
                let from = h.hb.origin;
                r.handle_heartbeat(t, from, h)
            }
            Item::Timeout => r.handle_timeout(t),
        }
        drain(&mut r);
        if let Err(e) = r.check_invariants() {
            prop_assert!(false, "{}", e);
        }
    }
    for _ in 0..3 {
        t += 1_000;
        r.handle_timeout(t);
        drain(&mut r);
    }
    Ok(r)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), max_shrink_iters: 1_000, ..ProptestConfig::default() })]

    /// Merge is commutative, associative and idempotent: the same event set delivered in
    /// different orders, groupings, relays and with duplicates (plus the heartbeats that
    /// let it settle) gives byte-identical ledgers, equal to the model.
    #[test]
    fn merge_is_commutative_associative_idempotent(
        seed in 0usize..POLICIES.len(),
        ops in prop::collection::vec(op(), 1..120),
        orders in prop::collection::vec(
            (prop::collection::vec(any::<u32>(), 0..200), prop::collection::vec(1usize..6, 1..50),
             prop::collection::vec(any::<bool>(), 0..60), any::<u8>()),
            2..4),
    ) {
        let (events, hbs, now) = history(seed, &ops)?;
        let peers = [region("ap"), region("eu"), region("us")];
        let mut reference: Option<Vec<u8>> = None;
        for (shuffle, batches, dups, relay) in orders {
            // Duplicate some events, shuffle everything, group into batches.
            let mut evs: Vec<Event> = events.clone();
            for (i, d) in dups.iter().enumerate() {
                if *d && !events.is_empty() {
                    evs.push(events[i % events.len()].clone());
                }
            }
            let mut keyed: Vec<(u32, usize)> = (0..evs.len())
                .map(|i| (shuffle.get(i).copied().unwrap_or(i as u32), i))
                .collect();
            keyed.sort();
            let order: Vec<Event> = keyed.iter().map(|(_, i)| evs[*i].clone()).collect();
            let mut items = Vec::new();
            let mut rest = order.as_slice();
            let mut b = 0;
            while !rest.is_empty() {
                let size = batches[b % batches.len()].min(rest.len());
                let (head, tail) = rest.split_at(size);
                let from = peers[(b + relay as usize) % peers.len()];
                items.push(Item::Events(head.to_vec(), from));
                if b % 3 == 1 {
                    items.push(Item::Timeout);
                }
                rest = tail;
                b += 1;
            }
            // Heartbeats anywhere in the stream (before or after the events they cover).
            for (k, h) in hbs.iter().enumerate() {
                let at = (relay as usize * 7 + k * 13) % (items.len() + 1);
                items.insert(at, Item::Heartbeat(h.clone()));
            }
            let r = observe(seed, items, now)?;
            prop_assert_eq!(r.event_count(), events.len() as u64);
            prop_assert!(r.watermark() >= events.iter().map(|e| e.hlc).max().unwrap_or(Hlc::ZERO));
            if let Err(e) = check_against_model(&policy(seed), &r) {
                prop_assert!(false, "{}", e);
            }
            let bytes = snapshot(&r);
            match &reference {
                None => reference = Some(bytes),
                Some(want) => prop_assert_eq!(&bytes, want),
            }
        }
    }
}
