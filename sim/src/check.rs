//! The SPEC §9 invariants, checked on the final state of every region, with the reference
//! model of the settled fold (`wallet_core::testing`: a naive re-fold written from the SPEC,
//! not from the core's code, shared with the core's property tests) to cross-check the
//! compensations and the settled balances.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;
use wallet_core::testing::{self, ModelFold, ModelRule};
use wallet_core::{
    AccountId, Action, Body, CompKind, Compensation, Currency, Entry, Event, EventId, Policy,
    RegionId, Replica, Status,
};

use crate::engine::{Node, Sim};

/// The six invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Invariants {
    /// Identical events, balances and feed everywhere.
    pub convergence: bool,
    /// Every acknowledged event in every region's log.
    pub no_loss: bool,
    /// One compensation per cause, the expected ones, the same everywhere.
    pub exactly_once: bool,
    /// The policy's arithmetic and `reverse` guarantee hold on the settled fold.
    pub policy_holds: bool,
    /// Every balance is the signed sum of its events and compensations.
    pub conservation: bool,
    /// No second event per key at one region; at most one survives unreversed.
    pub idempotency: bool,
}

impl Invariants {
    /// All hold.
    pub fn all(&self) -> bool {
        self.convergence
            && self.no_loss
            && self.exactly_once
            && self.policy_holds
            && self.conservation
            && self.idempotency
    }
}

/// Outcome figures of the settled fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Non-duplicate debits that took the settled balance below the floor.
    pub overdrafts: u64,
    /// Overdraft fees charged.
    pub fees: u64,
    /// Sum of the fees.
    pub fee_total: Decimal,
    /// Overdrawing debits reversed.
    pub reversals: u64,
    /// Duplicates (same key, same body, two regions) reversed.
    pub duplicate_reversals: u64,
    /// Same key, different body: reported, both stand.
    pub conflicts: u64,
    /// Sum of negative settled balances (money customers owe).
    pub debt: Decimal,
    /// Accounts with a negative settled balance.
    pub debt_accounts: u64,
}

/// What the checker found.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The invariants.
    pub invariants: Invariants,
    /// Failures: (invariant, detail).
    pub failures: Vec<(&'static str, String)>,
    /// Outcome figures.
    pub outcome: Outcome,
}

fn all_events<'a>(r: &'a Replica, regions: &[wallet_core::RegionId]) -> Vec<&'a Event> {
    let mut v = Vec::new();
    for o in regions {
        v.extend(r.origin_events(*o, 0).iter());
    }
    v
}

#[derive(Serialize)]
struct Snapshot<'a> {
    events: Vec<&'a Event>,
    balances: Vec<(AccountId, Currency, Decimal, Decimal)>,
    feed: &'a [Compensation],
}

fn snapshot_bytes(r: &Replica, regions: &[wallet_core::RegionId]) -> Vec<u8> {
    let snap = Snapshot {
        events: all_events(r, regions),
        balances: r
            .all_balances()
            .into_iter()
            .map(|(a, c, b)| (a, c, b.provisional, b.settled))
            .collect(),
        feed: r.feed(0, usize::MAX),
    };
    wallet_core::wire::encode_value(&snap)
}

/// True if two replicas' snapshots are the same values down to every decimal's internal
/// representation, so that [`snapshot_bytes`] of both would be the same bytes (the encoding is a
/// function of those values). False does not prove the bytes differ: the caller compares the
/// bytes then. Much cheaper than encoding every region's whole history.
fn same_snapshot(a: &Replica, b: &Replica, regions: &[wallet_core::RegionId]) -> bool {
    let raw = |x: &Decimal, y: &Decimal| x.serialize() == y.serialize();
    let same_body = |x: &Body, y: &Body| match (x, y) {
        (Body::Tx(x), Body::Tx(y)) => {
            x.account == y.account
                && x.kind == y.kind
                && raw(&x.amount.value(), &y.amount.value())
                && x.currency == y.currency
                && x.idempotency_key == y.idempotency_key
                && x.reference == y.reference
        }
        (Body::Policy(x), Body::Policy(y)) => {
            wallet_core::wire::encode_value(x) == wallet_core::wire::encode_value(y)
        }
        _ => false,
    };
    let same_event = |x: &Event, y: &Event| {
        x.id == y.id && x.hlc == y.hlc && x.sig == y.sig && same_body(&x.body, &y.body)
    };
    let same_comp = |x: &Compensation, y: &Compensation| {
        x.kind == y.kind
            && x.cause == y.cause
            && x.hlc == y.hlc
            && x.account == y.account
            && x.currency == y.currency
            && raw(&x.delta, &y.delta)
            && x.policy_version == y.policy_version
            && x.related == y.related
            && x.position == y.position
    };
    let (ea, eb) = (all_events(a, regions), all_events(b, regions));
    let (ba, bb) = (a.all_balances(), b.all_balances());
    let (fa, fb) = (a.feed(0, usize::MAX), b.feed(0, usize::MAX));
    ea.len() == eb.len()
        && ea.iter().zip(&eb).all(|(x, y)| same_event(x, y))
        && ba.len() == bb.len()
        && ba.iter().zip(&bb).all(|((a1, c1, b1), (a2, c2, b2))| {
            a1 == a2
                && c1 == c2
                && raw(&b1.provisional, &b2.provisional)
                && raw(&b1.settled, &b2.settled)
        })
        && fa.len() == fb.len()
        && fa.iter().zip(fb).all(|(x, y)| same_comp(x, y))
}

struct Failures {
    list: Vec<(&'static str, String)>,
}

impl Failures {
    fn new() -> Failures {
        Failures { list: Vec::new() }
    }
    fn extend(&mut self, other: Failures) {
        for (n, d) in other.list {
            self.add(n, d);
        }
    }
    fn add(&mut self, name: &'static str, detail: String) {
        // Keep the first few per invariant.
        if self.list.iter().filter(|(n, _)| *n == name).count() < 5 {
            self.list.push((name, detail));
        } else if self.list.iter().filter(|(n, _)| *n == name).count() == 5 {
            self.list.push((name, "(more failures not shown)".into()));
        }
    }
    fn ok(&self, name: &str) -> bool {
        !self.list.iter().any(|(n, _)| *n == name)
    }
}

/// What the checks of one region need from the run (shared, read-only, across threads).
struct Ctx<'a> {
    regions: &'a [RegionId],
    acked: &'a [(EventId, u32)],
    keys: &'a [Option<Box<str>>],
    policy: &'a Policy,
}

/// Per-region checks: durable-prefix order, no loss, conservation, one compensation per
/// cause.
fn node_checks(n: &Node, ctx: &Ctx<'_>) -> Failures {
    let mut f = Failures::new();
    let r = &n.replica;
    if n.disk.out_of_order > 0 {
        f.add(
            "no_loss",
            format!(
                "{}: {} persisted events broke per-origin order (durable prefix assumption)",
                n.id, n.disk.out_of_order
            ),
        );
    }
    // No loss.
    for (id, logical) in ctx.acked {
        let key = ctx.keys.get(*logical as usize).and_then(|k| k.as_deref());
        match r.event(*id).and_then(Event::tx) {
            None => f.add(
                "no_loss",
                format!(
                    "acknowledged {id} (request {logical}) is missing at {}",
                    n.id
                ),
            ),
            Some(tx) if tx.idempotency_key.as_deref() != key => f.add(
                "no_loss",
                format!(
                    "acknowledged {id} (request {logical}) was replaced at {} by another event",
                    n.id
                ),
            ),
            Some(_) => {}
        }
    }
    // At most one compensation per cause.
    let mut per_cause: BTreeMap<(EventId, bool), u32> = BTreeMap::new();
    for c in r.feed(0, usize::MAX) {
        let e = per_cause
            .entry((c.cause, c.kind == CompKind::IdempotencyConflict))
            .or_default();
        *e += 1;
        if *e > 1 {
            f.add(
                "exactly_once",
                format!("{}: two compensations for cause {}", n.id, c.cause),
            );
        }
    }
    // Conservation.
    let mut sums: BTreeMap<(AccountId, Currency), (Decimal, Decimal)> = BTreeMap::new();
    for e in all_events(r, ctx.regions) {
        if let Some(tx) = e.tx() {
            let s = sums.entry((tx.account.clone(), tx.currency)).or_default();
            s.0 += tx.delta();
            if r.is_settled(&e.key()) {
                s.1 += tx.delta();
            }
        }
    }
    for c in r.feed(0, usize::MAX) {
        let s = sums.entry((c.account.clone(), c.currency)).or_default();
        s.0 += c.delta;
        s.1 += c.delta;
    }
    let mut held: BTreeMap<(AccountId, Currency), (Decimal, Decimal)> = BTreeMap::new();
    for (a, c, b) in r.all_balances() {
        held.insert((a, c), (b.provisional, b.settled));
    }
    let keys: BTreeSet<_> = sums.keys().chain(held.keys()).cloned().collect();
    for k in keys {
        let s = sums.get(&k).copied().unwrap_or_default();
        let h = held.get(&k).copied().unwrap_or_default();
        if s != h {
            f.add(
                "conservation",
                format!(
                    "{}: {} {} balance provisional {} settled {}, its events and compensations sum to {} / {}",
                    n.id, k.0, k.1.as_str(), h.0, h.1, s.0, s.1
                ),
            );
        }
    }
    f
}

/// The reference model's re-fold of one region's history.
fn fold_check(n: &Node, ctx: &Ctx<'_>) -> ModelFold {
    testing::model(ctx.policy, all_events(&n.replica, ctx.regions))
}

/// Checks on one region's history that need no comparison (the regions are compared byte
/// for byte elsewhere): the `reverse` guarantee on the core's ordered entries, idempotency.
fn history_checks(n: &Node, ctx: &Ctx<'_>) -> Failures {
    let mut f = Failures::new();
    let r0 = &n.replica;
    let events0 = all_events(r0, ctx.regions);
    // The `reverse` guarantee, on the core's own ordered history.
    // (The simulator issues no policy events, so the policy in force is the seed policy.)
    let (_, policy) = r0.current_policy();
    let mut accounts: Vec<AccountId> = r0.all_balances().into_iter().map(|(a, _, _)| a).collect();
    accounts.dedup();
    if !policy.rules.iter().any(|r| r.action == Action::Reverse) {
        accounts.clear();
    }
    for acct in &accounts {
        let entries = r0.entries(acct, None, usize::MAX);
        let mut bal: BTreeMap<Currency, Decimal> = BTreeMap::new();
        // The rule by the model's own resolution (not the core's `Policy::applied`).
        let mut rules: BTreeMap<Currency, ModelRule<'_>> = BTreeMap::new();
        for (k, (_, e)) in entries.iter().enumerate() {
            match e {
                Entry::Event { event, settled } => {
                    let Some(tx) = event.tx() else { continue };
                    let b = bal.entry(tx.currency).or_default();
                    *b += tx.delta();
                    if !*settled {
                        continue;
                    }
                    let a = rules
                        .entry(tx.currency)
                        .or_insert_with(|| testing::model_rule(policy, acct.as_str(), tx.currency));
                    let reversible = a.action == Action::Reverse && a.reversible.contains(&tx.kind);
                    if tx.kind.is_debit() && reversible && *b < a.floor {
                        let reversed = matches!(
                            entries.get(k + 1),
                            Some((_, Entry::Compensation(c)))
                                if c.kind == CompKind::Reversal && c.cause == event.id
                        );
                        if !reversed {
                            f.add(
                                "policy_holds",
                                format!(
                                    "{} {} left the settled balance of {acct} at {} below the floor {} without a reversal",
                                    tx.kind.as_str(),
                                    event.id,
                                    b,
                                    a.floor
                                ),
                            );
                        }
                    }
                }
                Entry::Compensation(c) => {
                    *bal.entry(c.currency).or_default() += c.delta;
                }
            }
        }
    }
    // Idempotency.
    let mut by_key: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for e in &events0 {
        if let Some(tx) = e.tx() {
            if let Some(k) = &tx.idempotency_key {
                by_key.entry((tx.account.as_str(), k)).or_default().push(e);
            }
        }
    }
    for ((acct, key), evs) in &by_key {
        if evs.len() < 2 {
            continue;
        }
        let mut origins: Vec<_> = evs.iter().map(|e| e.id.origin).collect();
        origins.sort();
        if origins.windows(2).any(|w| w[0] == w[1]) {
            let ids: Vec<String> = evs.iter().map(|e| e.id.to_string()).collect();
            f.add(
                "idempotency",
                format!(
                    "key {key:?} of {acct} has two events at one region: {}",
                    ids.join(", ")
                ),
            );
        }
        // Per body (events with this key and the same body as an earlier one), at most one
        // stands unreversed, whatever other bodies took the key before it.
        let standing: Vec<&&Event> = evs
            .iter()
            .filter(|e| !matches!(r0.status(e.id), Some((Status::Reversed, _))))
            .collect();
        let mut done = vec![false; standing.len()];
        for i in 0..standing.len() {
            if done[i] {
                continue;
            }
            let same: Vec<usize> = (i..standing.len())
                .filter(|j| match (standing[i].tx(), standing[*j].tx()) {
                    (Some(a), Some(b)) => a.same_body(b),
                    _ => false,
                })
                .collect();
            for j in &same {
                done[*j] = true;
            }
            if same.len() > 1 {
                let ids: Vec<String> = same.iter().map(|j| standing[*j].id.to_string()).collect();
                f.add(
                    "idempotency",
                    format!(
                        "key {key:?} of {acct}: {} events with the same body stand unreversed ({})",
                        same.len(),
                        ids.join(", ")
                    ),
                );
            }
        }
    }
    f
}

/// Checks every invariant on the final state of a finished run. The per-region work runs
/// on two threads (the regions are moved out of the simulator for it and put back).
pub fn check(sim: &mut Sim) -> CheckResult {
    let mut nodes = std::mem::take(&mut sim.nodes);
    if nodes.is_empty() {
        return CheckResult {
            invariants: Invariants {
                convergence: true,
                no_loss: true,
                exactly_once: true,
                policy_holds: true,
                conservation: true,
                idempotency: true,
            },
            failures: Vec::new(),
            outcome: Outcome::default(),
        };
    }
    // Two threads, each owning every other region (a replica may move between threads but
    // not be shared). Thread 1 (even regions) also runs the reference model on the first
    // region; thread 2 (odd regions) the history checks on the second region.
    let n_nodes = nodes.len();
    let mut even: Vec<(usize, Node)> = Vec::new();
    let mut odd: Vec<(usize, Node)> = Vec::new();
    for (i, n) in nodes.drain(..).enumerate() {
        if i % 2 == 0 {
            even.push((i, n));
        } else {
            odd.push((i, n));
        }
    }
    let ctx = Ctx {
        regions: &sim.cfg.regions,
        acked: &sim.acked,
        keys: &sim.workload.keys,
        policy: &sim.cfg.policy,
    };
    type PerNode = Vec<(usize, Failures)>;
    let (even, odd, per_even, per_odd, folded, history) = std::thread::scope(|s| {
        let ctx = &ctx;
        let h = s.spawn(move || {
            let per: PerNode = odd.iter().map(|(i, n)| (*i, node_checks(n, ctx))).collect();
            let history = odd.first().map(|(_, n)| history_checks(n, ctx));
            (odd, per, history)
        });
        let per: PerNode = even
            .iter()
            .map(|(i, n)| (*i, node_checks(n, ctx)))
            .collect();
        let first = &even[0].1;
        let folded = fold_check(first, ctx);
        match h.join() {
            Ok((odd, per_odd, history)) => {
                let history = history.unwrap_or_else(|| history_checks(first, ctx));
                (even, odd, per, Some(per_odd), folded, history)
            }
            // A panic in a checker is a bug; report it as a failed check, never hang.
            Err(_) => (even, Vec::new(), per, None, folded, Failures::new()),
        }
    });
    let mut slots: Vec<Option<Node>> = (0..n_nodes).map(|_| None).collect();
    for (i, n) in even.into_iter().chain(odd) {
        slots[i] = Some(n);
    }
    sim.nodes = slots.into_iter().flatten().collect();
    let mut f = Failures::new();
    let Some(per_odd) = per_odd else {
        f.add("convergence", "the checker thread panicked".into());
        return finish(sim, f, &ModelFold::default());
    };
    let mut per: PerNode = per_even.into_iter().chain(per_odd).collect();
    per.sort_by_key(|(i, _)| *i);
    let mut per = per.into_iter().map(|(_, r)| r);
    let Some(f0) = per.next() else {
        return finish(sim, f, &ModelFold::default());
    };
    f.extend(f0);
    let expected = &folded.feed;
    f.extend(history);
    let per_rest: Vec<Failures> = per.collect();

    // 1. Convergence.
    if sim.converged_at.is_none() {
        let wm: Vec<String> = sim
            .nodes
            .iter()
            .map(|n| format!("{}={:?}/up={}", n.id, n.replica.watermark(), n.up))
            .collect();
        f.add(
            "convergence",
            format!(
                "regions did not converge within {} s of healing (watermarks {})",
                crate::engine::QUIESCE_MAX_MS / 1000,
                wm.join(" ")
            ),
        );
    }
    let r0 = &sim.nodes[0].replica;
    for (n, fi) in sim.nodes[1..].iter().zip(per_rest) {
        f.extend(fi);
        if same_snapshot(&n.replica, r0, &sim.cfg.regions) {
            continue;
        }
        let base = snapshot_bytes(r0, &sim.cfg.regions);
        let bytes = snapshot_bytes(&n.replica, &sim.cfg.regions);
        if bytes != base {
            f.add(
                "convergence",
                format!(
                    "{} differs from {}: {} vs {} events, {} vs {} feed entries, snapshot {} vs {} bytes",
                    n.id,
                    sim.nodes[0].id,
                    n.replica.event_count(),
                    r0.event_count(),
                    n.replica.feed_len(),
                    r0.feed_len(),
                    bytes.len(),
                    base.len()
                ),
            );
        }
    }

    // 3 and 4. The feed against the reference model, and the same ids everywhere.
    let feed0 = r0.feed(0, usize::MAX);
    let ids0: Vec<String> = feed0.iter().map(Compensation::id).collect();
    for n in &sim.nodes {
        let feed = n.replica.feed(0, usize::MAX);
        let ids: Vec<String> = feed.iter().map(Compensation::id).collect();
        if ids != ids0 {
            f.add(
                "exactly_once",
                format!(
                    "{} has compensation ids different from {} ({} vs {})",
                    n.id,
                    sim.nodes[0].id,
                    ids.len(),
                    ids0.len()
                ),
            );
        }
        if feed.len() != expected.len() {
            f.add(
                "exactly_once",
                format!(
                    "{}: {} feed entries, the reference model expects {}",
                    n.id,
                    feed.len(),
                    expected.len()
                ),
            );
        }
        for (i, (c, x)) in feed.iter().zip(expected).enumerate() {
            if c.kind != x.kind || c.cause != x.cause || c.related != x.related {
                f.add(
                    "exactly_once",
                    format!(
                        "{}: feed[{i}] is {} ({:?}), the reference model expects {}:{} ({:?})",
                        n.id,
                        c.id(),
                        c.kind,
                        x.kind.id_prefix(),
                        x.cause,
                        x.kind
                    ),
                );
                break;
            }
            if c.delta != x.delta
                || c.account != x.account
                || c.currency != x.currency
                || c.policy_version != x.version
                || c.position != i as u64
            {
                f.add(
                    "policy_holds",
                    format!(
                        "{}: {} changes the balance by {} (policy v{}), the policy says {} (v{})",
                        n.id,
                        c.id(),
                        c.delta,
                        c.policy_version,
                        x.delta,
                        x.version
                    ),
                );
            }
        }
        // 5. Once every event is settled, each settled balance is the model's (its events
        // plus the compensations the SPEC derives). Before that the two differ by design and
        // convergence already failed.
        if sim.converged_at.is_some() {
            for ((a, c), bal) in &folded.balances {
                let settled = n.replica.balance(a, *c).settled;
                if settled != *bal {
                    f.add(
                        "conservation",
                        format!(
                            "{}: settled balance of {a} {} is {settled}, the reference model says {bal}",
                            n.id,
                            c.as_str()
                        ),
                    );
                }
            }
        }
    }
    finish(sim, f, &folded)
}

fn finish(sim: &Sim, f: Failures, model: &ModelFold) -> CheckResult {
    let mut out = Outcome {
        overdrafts: model.overdrafts,
        ..Outcome::default()
    };
    if let Some(first) = sim.nodes.first() {
        let r0 = &first.replica;
        let dup_causes: BTreeSet<EventId> = model
            .feed
            .iter()
            .filter(|x| x.duplicate)
            .map(|x| x.cause)
            .collect();
        for c in r0.feed(0, usize::MAX) {
            match c.kind {
                CompKind::OverdraftFee => {
                    out.fees += 1;
                    out.fee_total += -c.delta;
                }
                CompKind::Reversal if dup_causes.contains(&c.cause) => out.duplicate_reversals += 1,
                CompKind::Reversal => out.reversals += 1,
                CompKind::IdempotencyConflict => out.conflicts += 1,
            }
        }
        for (_, _, b) in r0.all_balances() {
            if b.settled < Decimal::ZERO {
                out.debt -= b.settled;
                out.debt_accounts += 1;
            }
        }
    }
    let invariants = Invariants {
        convergence: f.ok("convergence"),
        no_loss: f.ok("no_loss"),
        exactly_once: f.ok("exactly_once"),
        policy_holds: f.ok("policy_holds"),
        conservation: f.ok("conservation"),
        idempotency: f.ok("idempotency"),
    };
    CheckResult {
        invariants,
        failures: f.list,
        outcome: out,
    }
}
