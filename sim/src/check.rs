//! The SPEC §9 invariants, checked on the final state of every region against the reference
//! model of the settled fold (`wallet_core::testing`: a re-fold written from the SPEC, not from
//! the core's code, with its own total order, fee arithmetic and duplicate rule, shared with
//! the core's property tests): the feed (ids, kinds, amounts, policy versions, related ids,
//! order), every event's status, and the settled and provisional balances. And checks made
//! while the run goes on ([`DuringRun`]): after every restart, after every watermark advance
//! and heartbeat, and the replica's own self-check every N inputs.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;
use wallet_core::testing::{self, ModelFold, ModelRule, ModelStatus};
use wallet_core::{
    AccountId, Action, Body, CompKind, Compensation, Currency, Entry, Event, EventId, Heartbeat,
    Hlc, Policy, RegionId, Replica, Status, SubmitError, Submitted, TxRequest,
};

use crate::engine::{Node, Sim};

/// The invariants (SPEC §9, and the liveness of anti-entropy).
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
    /// Every event's status (provisional, settled, reversed with the reversal's id) on every
    /// region is the one the reference model derives.
    pub statuses: bool,
    /// Across every crash and restart: nothing settled before is unsettled after, with the
    /// same status; the feed never shrinks or changes; the watermark never goes back.
    pub restart_monotonic: bool,
    /// The replica's own `check_invariants()` passed every time it ran (every N inputs,
    /// after every restart, at the end).
    pub replica_self_check: bool,
    /// Every heartbeat was a durable promise (at or below the durable ceiling, own events up
    /// to its seq durable), and no region's watermark ever passed what every member had
    /// durably promised.
    pub watermark_promised: bool,
    /// No region's watermark ever passed an event of a member it did not hold.
    pub watermark_complete: bool,
    /// Every drawn policy file parses to the policy the generator meant (its own resolution
    /// of defaults and inheritance, docs/reconciliation.md §5), for the seed and every change.
    pub policy_file: bool,
    /// Every local decision on a client request is the one SPEC §4 and §2 prescribe, judged
    /// from the region's provisional balance and the model's floor: a debit is refused for
    /// funds exactly when it would land below the floor; an amount is refused exactly when
    /// it has more places than the currency's minor units; an accepted event carries the
    /// requested amount at the currency's scale.
    pub acceptance: bool,
    /// Byzantine seeds: every honest region that was handed a forged item (or evidence)
    /// ends holding evidence against the Byzantine member, and none holds a forged event or
    /// an event its forged promise denied.
    pub detection: bool,
    /// A region that reported equivocation of an origin (or sent evidence against it) still
    /// holds that evidence after every later restart.
    pub evidence_durable: bool,
    /// No pull asked for an event its region had been handed and kept (buffered out of
    /// order) in the same incarnation ([`crate::liveness`]).
    pub no_refetch: bool,
    /// Every answer that said more follows and brought events was followed at once by the
    /// next pull to the same member.
    pub pull_chain: bool,
    /// No pull went to a member within `PULL_BACKOFF_MS_MIN` of an answer of it that brought
    /// nothing while it still looked ahead (reconnects excepted).
    pub pull_backoff: bool,
    /// Every pull the network lost was replaced by the time `2 × PULL_LOST_AFTER_HEARTBEATS`
    /// heartbeats of its member showing a gap had arrived.
    pub pull_given_up: bool,
    /// Membership (docs/design/membership.md): every remaining region holds the cut of every
    /// retired region that the design's rule derives from the acknowledgements in its log
    /// (the highest seq acknowledged by every member the retire names), and exactly that
    /// region's log up to it; no region ever settled an event of a retired region above its
    /// cut; and a retired region never stalls settlement after its cut.
    pub membership: bool,
    /// Consistency modes (SPEC §8, §9.4, the reference model's `model_modes`): under home and
    /// escrow with `refuse`, no client debit takes the settled balance below the floor; a
    /// home-mode debit is decided only by the home of its time.
    pub modes: bool,
    /// Snapshots (issue 13), checked whenever a region takes one during the run: every
    /// region that snapshots at one point makes the byte-identical body, it verifies as its
    /// signer's, and it holds what the reference model folds from that region's history up to
    /// the point (every non-zero settled balance, the feed length, the settled count).
    pub snapshots: bool,
    /// Restores (issue 13), checked at every snapshot a region takes: a copy of the region
    /// restored from that snapshot plus the events it holds after it agrees with the region,
    /// which never compacted ([`restore_agrees`]).
    pub restore: bool,
    /// Compaction during the run (issue 13): every region that compacted, or restarted or
    /// bootstrapped from a snapshot, agrees at the end with a never-compacted shadow of it (a
    /// replica that loads its whole history, the folded events the checker kept
    /// included, [`crate::history`]): watermark, version vector, balances, rights, keys,
    /// settled count, policy history, feed, the status of every event it holds, membership,
    /// and its own self-check; the folded events were the same at every region that folded
    /// them, and a region's own snapshot restores. Every other invariant is then checked on
    /// the shadows, that is, over the whole history.
    pub compaction: bool,
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
            && self.statuses
            && self.restart_monotonic
            && self.replica_self_check
            && self.watermark_promised
            && self.watermark_complete
            && self.policy_file
            && self.acceptance
            && self.detection
            && self.evidence_durable
            && self.no_refetch
            && self.pull_chain
            && self.pull_backoff
            && self.pull_given_up
            && self.membership
            && self.modes
            && self.snapshots
            && self.restore
            && self.compaction
    }

    /// Every invariant by name, in JSON order.
    pub fn named(&self) -> [(&'static str, bool); 24] {
        [
            ("convergence", self.convergence),
            ("no_loss", self.no_loss),
            ("exactly_once", self.exactly_once),
            ("policy_holds", self.policy_holds),
            ("conservation", self.conservation),
            ("idempotency", self.idempotency),
            ("statuses", self.statuses),
            ("restart_monotonic", self.restart_monotonic),
            ("replica_self_check", self.replica_self_check),
            ("watermark_promised", self.watermark_promised),
            ("watermark_complete", self.watermark_complete),
            ("policy_file", self.policy_file),
            ("acceptance", self.acceptance),
            ("detection", self.detection),
            ("evidence_durable", self.evidence_durable),
            ("no_refetch", self.no_refetch),
            ("pull_chain", self.pull_chain),
            ("pull_backoff", self.pull_backoff),
            ("pull_given_up", self.pull_given_up),
            ("membership", self.membership),
            ("modes", self.modes),
            ("snapshots", self.snapshots),
            ("restore", self.restore),
            ("compaction", self.compaction),
        ]
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
    /// Overdraft episodes that closed on a balance without their fees exactly at the floor.
    pub closed_at_floor: u64,
    /// Money at risk: the largest settled overdraft (floor minus the balance right after a
    /// client debit) in the workload's main currency (USD).
    pub max_overdraft: Decimal,
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

/// Two decimals with the same internal representation (so the same encoded bytes).
fn raw(x: &Decimal, y: &Decimal) -> bool {
    x.serialize() == y.serialize()
}

/// Two events are the same values (see [`same_snapshot`]).
fn same_event(x: &Event, y: &Event) -> bool {
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
        (Body::Membership(x), Body::Membership(y)) => x == y,
        (Body::Account(x), Body::Account(y)) => {
            wallet_core::wire::encode_value(x) == wallet_core::wire::encode_value(y)
        }
        _ => false,
    };
    x.id == y.id && x.hlc == y.hlc && x.sig == y.sig && same_body(&x.body, &y.body)
}

/// Two compensations are the same values (see [`same_snapshot`]).
fn same_comp(x: &Compensation, y: &Compensation) -> bool {
    x.kind == y.kind
        && x.cause == y.cause
        && x.hlc == y.hlc
        && x.account == y.account
        && x.currency == y.currency
        && raw(&x.delta, &y.delta)
        && x.policy_version == y.policy_version
        && x.related == y.related
        && x.position == y.position
}

/// True if two replicas' snapshots are the same values down to every decimal's internal
/// representation, so that [`snapshot_bytes`] of both would be the same bytes (the encoding is a
/// function of those values). False does not prove the bytes differ: the caller compares the
/// bytes then. Much cheaper than encoding every region's whole history.
fn same_snapshot(a: &Replica, b: &Replica, regions: &[wallet_core::RegionId]) -> bool {
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
    /// In a Byzantine seed once its lie reached an honest region: the member (its acknowledged
    /// events need not reach honest regions, which froze it; idempotency judges settled
    /// events only, as settlement is frozen).
    byzantine: Option<RegionId>,
    /// Retired regions and their cuts, by the reference rule ([`reference_cuts`]): their
    /// acknowledged events above the cut are what a retire gives up, and the retired
    /// regions' own replicas are out of the comparisons.
    retired: BTreeMap<RegionId, u64>,
    /// The idempotency key retention (HLC ms): copies further apart are distinct transactions.
    retention_ms: u64,
    /// Entries of `acked` lost with their origin's disk: acknowledged in an epoch that a seal
    /// later ended below their seq ([`lost_with_disk`]).
    lost_with_disk: BTreeSet<usize>,
    /// `--ack peer`: no acknowledged event may be lost with a disk.
    ack_peer: bool,
}

/// The entries of `acked` lost with a disk (docs/protocol.md §12), by the seals the history
/// holds: an event its origin acknowledged before a lost disk (`wipes`) and above the cut of
/// the first seal issued after that loss is not part of the history.
fn lost_with_disk(
    r: &Replica,
    regions: &[RegionId],
    acked: &[(EventId, u32)],
    wipes: &[(usize, usize, usize)],
) -> BTreeSet<usize> {
    use wallet_core::Change;
    let mut cuts: BTreeMap<RegionId, Vec<u64>> = BTreeMap::new();
    for e in all_events(r, regions) {
        if let Some(Change::Seal { cut, .. }) = e.change() {
            cuts.entry(e.id.origin).or_default().push(*cut);
        }
    }
    cuts.values_mut().for_each(|v| v.sort_unstable());
    let mut lost = BTreeSet::new();
    let mut from: BTreeMap<usize, usize> = BTreeMap::new();
    for &(w, len, seals_before) in wipes {
        let Some(origin) = regions.get(w).copied() else {
            continue;
        };
        let start = from.insert(w, len).unwrap_or(0);
        let cut = cuts
            .get(&origin)
            .and_then(|v| v.get(seals_before))
            .copied()
            .unwrap_or(u64::MAX);
        for (k, (id, _)) in acked.iter().enumerate().take(len).skip(start) {
            if id.origin == origin && id.seq > cut {
                lost.insert(k);
            }
        }
    }
    lost
}

/// The cut of every retired region, by the rule of docs/design/membership.md and
/// docs/protocol.md §8 applied to the events one region holds: a retire `(regions,
/// remaining)` is complete once every member of `remaining` either holds an acknowledgement of
/// it in its log (its first one counts) or is retired itself, by a complete retire, with its
/// log held up to that cut and no acknowledgement at or below it (one above the cut is no
/// acknowledgement: the region refuses it). The cut of each retired region is then the
/// highest seq acknowledged. The first complete retire of a region in total order sets its
/// cut; a retire completed by another's cut is looked at again until nothing changes.
pub fn reference_cuts(r: &Replica, regions: &[RegionId]) -> BTreeMap<RegionId, u64> {
    use wallet_core::Change;
    let mut retires: Vec<&Event> = all_events(r, regions)
        .into_iter()
        .filter(|e| matches!(e.change(), Some(Change::Retire { .. })))
        .collect();
    retires.sort_by(|a, b| testing::model_order(a, b));
    let mut cuts: BTreeMap<RegionId, u64> = BTreeMap::new();
    let mut open: Vec<&Event> = retires;
    loop {
        let before = open.len();
        open.retain(|e| {
            let Some(Change::Retire {
                regions: retired,
                remaining,
                ..
            }) = e.change()
            else {
                return false;
            };
            let mut acks = Vec::new();
            for a in remaining {
                let first = r
                    .origin_events(*a, 0)
                    .iter()
                    .find_map(|x| match x.change() {
                        Some(Change::RetireAck { retire, held }) if *retire == e.id => {
                            Some((x.id.seq, held))
                        }
                        _ => None,
                    });
                let cut = cuts.get(a).copied();
                match (first, cut) {
                    (Some((_, held)), None) => acks.push(held),
                    (Some((seq, held)), Some(c)) if seq <= c => acks.push(held),
                    (_, Some(c)) if r.version_vector().get(a) >= c => {}
                    _ => return true,
                }
            }
            for g in retired {
                let cut = acks
                    .iter()
                    .map(|h| h.get(g).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                cuts.entry(*g).or_insert(cut);
            }
            false
        });
        if open.len() == before {
            return cuts;
        }
    }
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
    // No loss (a retired region's own log is not checked: it is out of the cluster).
    let retired_node = ctx.retired.contains_key(&n.id);
    for (k, (id, logical)) in ctx.acked.iter().enumerate() {
        if retired_node {
            break;
        }
        if ctx.lost_with_disk.contains(&k) {
            // With ack = "local", what a lost disk takes (its seq is issued again in the new
            // epoch); with ack = "peer", a loss.
            if ctx.ack_peer {
                f.add(
                    "no_loss",
                    format!("{id} acknowledged with ack = peer was lost with its origin's disk"),
                );
            }
            continue;
        }
        if ctx.byzantine.is_some_and(|b| b == id.origin && b != n.id) {
            continue;
        }
        // Acknowledged by a retired region above its cut: what the retire gives up.
        if ctx.retired.get(&id.origin).is_some_and(|c| id.seq > *c) {
            continue;
        }
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
    // The replica's own whole-state self-check.
    if let Err(e) = r.check_invariants() {
        f.add("replica_self_check", format!("{} at the end: {e}", n.id));
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

/// One region's view as the oracle sees it: its watermark and version vector. Regions with
/// the same view hold the same events and settled prefix, so one fold serves them all.
type View = (Hlc, Vec<u64>);

fn view(n: &Node, ctx: &Ctx<'_>) -> View {
    let vv = n.replica.version_vector();
    (
        n.replica.watermark(),
        ctx.regions.iter().map(|r| vv.get(r)).collect(),
    )
}

/// The reference model's re-fold of one region's view: the events it holds, settled up to
/// its watermark.
fn fold_check(n: &Node, ctx: &Ctx<'_>) -> ModelFold {
    testing::model_retained(
        ctx.policy,
        all_events(&n.replica, ctx.regions),
        Some(n.replica.watermark()),
        ctx.retention_ms,
    )
}

/// One region against the oracle's fold of its own view (`shared` when the view is the
/// first region's, else folded here): the feed entry by entry (kind, cause, id, amount,
/// account, currency, policy version, related id, HLC, position), every event's status, and
/// every settled and provisional balance.
fn oracle_checks(n: &Node, ctx: &Ctx<'_>, shared: &ModelFold, shared_view: &View) -> Failures {
    let own;
    let model = if view(n, ctx) == *shared_view {
        shared
    } else {
        own = fold_check(n, ctx);
        &own
    };
    let mut f = Failures::new();
    let r = &n.replica;
    let feed = r.feed(0, usize::MAX);
    if feed.len() != model.feed.len() {
        f.add(
            "exactly_once",
            format!(
                "{}: {} feed entries, the reference model expects {}",
                n.id,
                feed.len(),
                model.feed.len()
            ),
        );
    }
    for (i, (c, x)) in feed.iter().zip(&model.feed).enumerate() {
        if c.kind != x.kind || c.cause != x.cause || c.related != x.related || c.id() != x.id() {
            f.add(
                "exactly_once",
                format!(
                    "{}: feed[{i}] is {} ({:?}, related {:?}), the reference model expects {} ({:?}, related {:?})",
                    n.id,
                    c.id(),
                    c.kind,
                    c.related,
                    x.id(),
                    x.kind,
                    x.related
                ),
            );
            break;
        }
        if c.delta != x.delta
            || c.account != x.account
            || c.currency != x.currency
            || c.policy_version != x.version
            || c.hlc != x.hlc
            || c.position != i as u64
        {
            f.add(
                "policy_holds",
                format!(
                    "{}: {} changes {} {} by {} (policy v{}, position {}), the policy says {} {} by {} (v{}, position {i})",
                    n.id,
                    c.id(),
                    c.account,
                    c.currency.as_str(),
                    c.delta,
                    c.policy_version,
                    c.position,
                    x.account,
                    x.currency.as_str(),
                    x.delta,
                    x.version
                ),
            );
        }
    }
    // Statuses.
    let mut held = 0usize;
    for e in all_events(r, ctx.regions) {
        held += 1;
        let want = model.statuses.get(&e.id);
        let got = r.status(e.id);
        let ok = match (want, got) {
            (Some(ModelStatus::Provisional), Some((Status::Provisional, None))) => true,
            (Some(ModelStatus::Settled { fee }), Some((Status::Settled, c))) => {
                c.map(Compensation::id) == *fee
            }
            (Some(ModelStatus::Reversed { reversal }), Some((Status::Reversed, Some(c)))) => {
                c.id() == *reversal
            }
            _ => false,
        };
        if !ok {
            f.add(
                "statuses",
                format!(
                    "{}: {} is {:?}, the reference model says {:?}",
                    n.id,
                    e.id,
                    got.map(|(s, c)| (s, c.map(Compensation::id))),
                    want
                ),
            );
        }
    }
    if held != model.statuses.len() {
        f.add(
            "statuses",
            format!(
                "{}: {held} events, the reference model has statuses for {}",
                n.id,
                model.statuses.len()
            ),
        );
    }
    // Balances: settled (events at or below the watermark plus the compensations the SPEC
    // derives) and provisional (plus every event above it).
    for ((a, c), bal) in &model.balances {
        let b = r.balance(a, *c);
        let prov = model.provisional.get(&(a.clone(), *c)).copied();
        if b.settled != *bal || Some(b.provisional) != prov {
            f.add(
                "conservation",
                format!(
                    "{}: balance of {a} {} is settled {} provisional {}, the reference model says {bal} / {}",
                    n.id,
                    c.as_str(),
                    b.settled,
                    b.provisional,
                    prov.map(|p| p.to_string()).unwrap_or_default()
                ),
            );
        }
    }
    f
}

/// Checks on one region's history that need no comparison (the regions are compared byte
/// for byte elsewhere): the `reverse` guarantee on the core's ordered entries, idempotency.
fn history_checks(n: &Node, ctx: &Ctx<'_>) -> Failures {
    let mut f = Failures::new();
    let r0 = &n.replica;
    let events0 = all_events(r0, ctx.regions);
    // The `reverse` guarantee, on the core's own ordered history. The policy in force at an
    // event is the seed, or the last settled policy event before it in the total order (the
    // model's order, not the core's).
    let mut changes: Vec<&Event> = events0
        .iter()
        .copied()
        .filter(|e| matches!(e.body, Body::Policy(_)) && r0.is_settled(&e.key()))
        .collect();
    changes.sort_by(|a, b| testing::model_order(a, b));
    let policy_at = |e: &Event| -> (usize, &Policy) {
        let v = changes.partition_point(|p| testing::model_order(p, e).is_lt());
        match v
            .checked_sub(1)
            .and_then(|k| changes.get(k))
            .map(|p| &p.body)
        {
            Some(Body::Policy(p)) => (v, &**p),
            _ => (0, ctx.policy),
        }
    };
    let any_reverse = std::iter::once(ctx.policy)
        .chain(changes.iter().filter_map(|e| match &e.body {
            Body::Policy(p) => Some(&**p),
            Body::Tx(_) | Body::Membership(_) | Body::Account(_) => None,
        }))
        .any(|p| p.rules.iter().any(|r| r.action == Action::Reverse));
    let mut accounts: Vec<AccountId> = r0.all_balances().into_iter().map(|(a, _, _)| a).collect();
    accounts.dedup();
    if !any_reverse {
        accounts.clear();
    }
    for acct in &accounts {
        let entries = r0.entries(acct, None, usize::MAX);
        let mut bal: BTreeMap<Currency, Decimal> = BTreeMap::new();
        // The rule by the model's own resolution (not the core's `Policy::applied`), per
        // policy version and currency.
        let mut rules: BTreeMap<(usize, Currency), ModelRule<'_>> = BTreeMap::new();
        for (k, (_, e)) in entries.iter().enumerate() {
            match e {
                Entry::Event { event, settled } => {
                    let Some(tx) = event.tx() else { continue };
                    let debit = testing::model_is_debit(tx.kind);
                    let b = bal.entry(tx.currency).or_default();
                    if debit {
                        *b -= tx.amount.value();
                    } else {
                        *b += tx.amount.value();
                    }
                    if !*settled {
                        continue;
                    }
                    let (v, policy) = policy_at(event);
                    let a = rules
                        .entry((v, tx.currency))
                        .or_insert_with(|| testing::model_rule(policy, acct.as_str(), tx.currency));
                    let reversible = a.action == Action::Reverse && a.reversible.contains(&tx.kind);
                    if debit && reversible && *b < a.floor {
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
        // Two events `near` each other: their HLC milliseconds differ by less than the key
        // retention (issue 13: only then is the later one a copy of the earlier).
        let near = |a: &Event, b: &Event| {
            let (x, y) = (a.hlc.millis(), b.hlc.millis());
            x.abs_diff(y) < ctx.retention_ms
        };
        // One region issues a key again only once the retention of its previous use ended.
        let mut by_origin: Vec<&&Event> = evs.iter().collect();
        by_origin.sort_by_key(|e| (e.id.origin, e.hlc));
        for w in by_origin.windows(2) {
            if w[0].id.origin == w[1].id.origin && near(w[0], w[1]) {
                f.add(
                    "idempotency",
                    format!(
                        "key {key:?} of {acct} has two events at one region within the \
                         retention of {} ms: {}, {}",
                        ctx.retention_ms, w[0].id, w[1].id
                    ),
                );
            }
        }
        // Per body (events with this key and the same body as an earlier one), at most one
        // stands unreversed within any retention window, whatever other bodies took the key
        // before it.
        let standing: Vec<&&Event> = evs
            .iter()
            .filter(|e| match r0.status(e.id) {
                Some((Status::Reversed, _)) => false,
                // Frozen settlement (Byzantine seeds): provisional events are not judged.
                Some((Status::Provisional, _)) => ctx.byzantine.is_none(),
                _ => true,
            })
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
            let mut same: Vec<&Event> = same.iter().map(|j| *standing[*j]).collect();
            same.sort_by_key(|e| e.hlc);
            if let Some(w) = same.windows(2).find(|w| near(w[0], w[1])) {
                f.add(
                    "idempotency",
                    format!(
                        "key {key:?} of {acct}: {} and {} have the same body, are less than \
                         the retention of {} ms apart, and both stand unreversed",
                        w[0].id, w[1].id, ctx.retention_ms
                    ),
                );
            }
        }
    }
    f
}

/// Checks every invariant on the final state of a finished run, and gathers what the checks
/// during the run found. The per-region work runs on two threads (the regions are moved out
/// of the simulator for it and put back).
pub fn check(sim: &mut Sim) -> CheckResult {
    compacted_regions_agree(sim);
    // Asks the replicas which retires survived: before they are moved out.
    let retired_idx = sim.retired_regions();
    let mut nodes = std::mem::take(&mut sim.nodes);
    if nodes.is_empty() {
        let mut f = Failures::new();
        for (n, d) in std::mem::take(&mut sim.during.failures) {
            f.add(n, d);
        }
        return finish(sim, f, &ModelFold::default());
    }
    // Two threads, each owning every other region (a replica may move between threads but
    // not be shared). Thread 1 (even regions) folds the reference model of the first region's
    // view first, then checks its regions against it; thread 2 (odd regions) runs the checks
    // that need no model and the history checks on the second region; its regions are
    // checked against the model after it joins.
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
    let active = sim.byzantine_active();
    // The reference cuts, from the first region that is not retired.
    let live0 = (0..n_nodes).find(|i| !retired_idx.contains(i)).unwrap_or(0);
    let live0_node = if live0 % 2 == 0 {
        &even[live0 / 2].1
    } else {
        &odd[live0 / 2].1
    };
    let retired: BTreeMap<RegionId, u64> = {
        let cuts = reference_cuts(&live0_node.replica, &sim.cfg.regions);
        retired_idx
            .iter()
            .map(|i| {
                let id = sim.cfg.regions[*i];
                (id, cuts.get(&id).copied().unwrap_or(u64::MAX))
            })
            .collect()
    };
    let lost = lost_with_disk(
        &live0_node.replica,
        &sim.cfg.regions,
        &sim.acked,
        &sim.wipes,
    );
    let ctx = Ctx {
        lost_with_disk: lost,
        ack_peer: sim.cfg.ack_peer,
        regions: &sim.cfg.regions,
        acked: &sim.acked,
        keys: &sim.workload.keys,
        policy: &sim.cfg.policy,
        byzantine: active.map(|b| sim.cfg.regions[b]),
        retired: retired.clone(),
        retention_ms: sim.cfg.retention_ms(),
    };
    // The history checks run on the second region, or the first honest one that is not
    // retired.
    let hist = if active == Some(1) || n_nodes < 2 {
        usize::from(active == Some(0))
    } else {
        1
    };
    let hist = if retired_idx.contains(&hist) {
        live0
    } else {
        hist
    };
    type PerNode = Vec<(usize, Failures)>;
    let (even, odd, per_even, per_odd, folded, view0, history) = std::thread::scope(|s| {
        let ctx = &ctx;
        let h = s.spawn(move || {
            let per: PerNode = odd.iter().map(|(i, n)| (*i, node_checks(n, ctx))).collect();
            let history = odd
                .iter()
                .find(|(i, _)| *i == hist)
                .map(|(_, n)| history_checks(n, ctx));
            (odd, per, history)
        });
        let first = &even[0].1;
        let folded = fold_check(first, ctx);
        let view0 = view(first, ctx);
        let per: PerNode = even
            .iter()
            .map(|(i, n)| {
                let mut f = node_checks(n, ctx);
                f.extend(oracle_checks(n, ctx, &folded, &view0));
                (*i, f)
            })
            .collect();
        match h.join() {
            Ok((odd, per_odd, history)) => {
                let history = history.unwrap_or_else(|| {
                    let n = even
                        .iter()
                        .find(|(i, _)| *i == hist)
                        .map_or(first, |(_, n)| n);
                    history_checks(n, ctx)
                });
                (even, odd, per, Some(per_odd), folded, view0, history)
            }
            // A panic in a checker is a bug; report it as a failed check, never hang.
            Err(_) => (even, Vec::new(), per, None, folded, view0, Failures::new()),
        }
    });
    let per_odd = per_odd.map(|v| {
        v.into_iter()
            .zip(&odd)
            .map(|((i, mut f), (_, n))| {
                f.extend(oracle_checks(n, &ctx, &folded, &view0));
                (i, f)
            })
            .collect::<PerNode>()
    });
    let mut slots: Vec<Option<Node>> = (0..n_nodes).map(|_| None).collect();
    for (i, n) in even.into_iter().chain(odd) {
        slots[i] = Some(n);
    }
    sim.nodes = slots.into_iter().flatten().collect();
    let mut f = Failures::new();
    // What the checks during the run found, first.
    for (n, d) in std::mem::take(&mut sim.during.failures) {
        f.add(n, d);
    }
    let Some(per_odd) = per_odd else {
        f.add("convergence", "the checker thread panicked".into());
        return finish(sim, f, &folded);
    };
    let mut per: PerNode = per_even.into_iter().chain(per_odd).collect();
    per.sort_by_key(|(i, _)| *i);
    let mut per = per.into_iter().map(|(_, r)| r);
    let Some(f0) = per.next() else {
        return finish(sim, f, &folded);
    };
    f.extend(f0);
    f.extend(history);
    let per_rest: Vec<Failures> = per.collect();

    // The drawn policy files against what the generator meant.
    let drawn = sim
        .cfg
        .policy_meant
        .iter()
        .map(|m| ("the seed policy", &sim.cfg.policy, m));
    let changes = sim
        .policy_plan
        .iter()
        .filter_map(|c| Some(("a policy change", c.policy.as_ref()?, c.meant.as_ref()?)));
    for (what, parsed, meant) in drawn.chain(changes) {
        if parsed != meant {
            f.add(
                "policy_file",
                format!("{what}'s file parsed to {parsed:?}, the generator meant {meant:?}"),
            );
        }
    }

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
    for fi in per_rest {
        f.extend(fi);
    }
    byzantine_checks(sim, &mut f);
    membership_checks(sim, &retired, &mut f);
    if let Some(b) = active.filter(|b| !retired_idx.contains(b)) {
        settled_prefixes_agree(sim, b, &mut f);
        return finish(sim, f, &folded);
    }
    // Retired regions are out of the cluster: the others are compared.
    let live: Vec<&Node> = (0..sim.nodes.len())
        .filter(|i| !retired_idx.contains(i))
        .map(|i| &sim.nodes[i])
        .collect();
    let Some((first_live, rest_live)) = live.split_first() else {
        return finish(sim, f, &folded);
    };
    let r0 = &first_live.replica;
    for n in rest_live.iter().copied() {
        if same_snapshot(&n.replica, r0, &sim.cfg.regions) {
            continue;
        }
        let base = snapshot_bytes(r0, &sim.cfg.regions);
        let bytes = snapshot_bytes(&n.replica, &sim.cfg.regions);
        if bytes != base {
            let (mine, theirs) = (n.replica.all_balances(), r0.all_balances());
            let first_diff = mine
                .iter()
                .zip(&theirs)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("; first different balance {a:?} vs {b:?}"))
                .unwrap_or_else(|| format!("; {} vs {} balances", mine.len(), theirs.len()));
            f.add(
                "convergence",
                format!(
                    "{} differs from {}: {} vs {} events, {} vs {} feed entries, snapshot {} vs {} bytes{first_diff}",
                    n.id,
                    first_live.id,
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

    // SPEC §8, §9.4: the consistency modes' promises, on the whole settled history. Not in
    // a Byzantine seed: a strict mode counts credits and transfers its members signed, and
    // a member that equivocates can have the version a home or a giver relied on dropped.
    if sim.converged_at.is_some() && sim.byz.is_none() {
        let events = all_events(r0, &sim.cfg.regions);
        let modes = testing::model_modes_retained(&sim.cfg.policy, events, sim.cfg.retention_ms());
        for v in modes.violations.into_iter().take(5) {
            f.add("modes", v);
        }
        // The replica's rights (derived incrementally) against the model's, per region.
        for ((a, c), want) in &modes.rights {
            let (have, unspendable) = r0.all_rights(a, *c);
            let have: BTreeMap<RegionId, Decimal> =
                have.into_iter().filter(|(_, d)| !d.is_zero()).collect();
            let want: BTreeMap<RegionId, Decimal> = want
                .iter()
                .filter(|(_, d)| !d.is_zero())
                .map(|(r, d)| (*r, *d))
                .collect();
            if have != want || !unspendable.is_zero() {
                f.add(
                    "modes",
                    format!(
                        "{} holds rights {have:?} (unsettled keyed credits {unspendable}) of {a} {c:?}, the model derives {want:?}",
                        first_live.id
                    ),
                );
                break;
            }
        }
    }

    // 3. The same compensation ids everywhere (each region was compared with the model of
    // its own view above).
    let ids0: Vec<String> = r0
        .feed(0, usize::MAX)
        .iter()
        .map(Compensation::id)
        .collect();
    for n in &live {
        let feed = n.replica.feed(0, usize::MAX);
        let ids: Vec<String> = feed.iter().map(Compensation::id).collect();
        if ids != ids0 {
            f.add(
                "exactly_once",
                format!(
                    "{} has compensation ids different from {} ({} vs {})",
                    n.id,
                    first_live.id,
                    ids.len(),
                    ids0.len()
                ),
            );
        }
    }
    finish(sim, f, &folded)
}

/// `membership`: for every retired region, every remaining region knows the reference cut
/// (the rule applied to its own log agrees with the first remaining region's), holds exactly
/// the retired region's log up to it, never settled an event of it above it (over the whole
/// run, `Sim::max_settled`), and settles everything it holds (a retired region never stalls
/// settlement after its cut).
fn membership_checks(sim: &Sim, retired: &BTreeMap<RegionId, u64>, f: &mut Failures) {
    if retired.is_empty() {
        return;
    }
    let ids = &sim.cfg.regions;
    for (i, n) in sim.nodes.iter().enumerate() {
        if retired.contains_key(&n.id) {
            continue;
        }
        let r = &n.replica;
        let own = reference_cuts(r, ids);
        for (g, cut) in retired {
            if *cut == u64::MAX {
                f.add(
                    "membership",
                    format!("the retire of {g} never completed (an acknowledgement is missing)"),
                );
                continue;
            }
            if own.get(g) != Some(cut) || r.cut(*g) != Some(*cut) {
                f.add(
                    "membership",
                    format!(
                        "{}: cut of {g} is {:?} (by the rule on its log: {:?}), the reference says {cut}",
                        n.id,
                        r.cut(*g),
                        own.get(g)
                    ),
                );
            }
            if r.version_vector().get(g) != *cut {
                f.add(
                    "membership",
                    format!(
                        "{} holds {g}'s log up to {}, its cut is {cut}",
                        n.id,
                        r.version_vector().get(g)
                    ),
                );
            }
            let gi = ids.iter().position(|x| x == g).unwrap_or(0);
            let settled = sim
                .max_settled
                .get(i)
                .and_then(|m| m.get(gi))
                .copied()
                .unwrap_or(0);
            if settled > *cut {
                f.add(
                    "membership",
                    format!(
                        "{} settled {g}:{settled}, above the cut {cut}: the cut voided a settled event",
                        n.id
                    ),
                );
            }
        }
        if r.settlement_blocked() {
            f.add(
                "membership",
                format!("{}: settlement blocked at the end", n.id),
            );
        }
        let max = all_events(r, ids).iter().map(|e| e.hlc).max();
        if max.is_some_and(|m| r.watermark() < m) {
            f.add(
                "membership",
                format!(
                    "{}: watermark {:?} below its last event {:?} at the end",
                    n.id,
                    r.watermark(),
                    max
                ),
            );
        }
    }
}

/// `detection` (Byzantine seeds): every honest region that was handed a forged item or
/// evidence against the member holds evidence against it at the end, and no honest region
/// holds the forged second version or an event the forged promise denied.
fn byzantine_checks(sim: &Sim, f: &mut Failures) {
    let Some(byz) = &sim.byz else {
        return;
    };
    let b = byz.plan.region;
    let bid = sim.cfg.regions[b];
    for (i, n) in sim.nodes.iter().enumerate() {
        if i == b {
            continue;
        }
        if byz.handed[i] && !sim.holds_evidence(i, b) {
            f.add(
                "detection",
                format!(
                    "{} was handed a forged item of {bid} (or evidence against it) and holds no evidence against it",
                    n.id
                ),
            );
        }
        if let Some((_, forged)) = &byz.forged_event {
            if n.replica.event(forged.id) == Some(forged) {
                f.add(
                    "detection",
                    format!(
                        "{} holds {bid}'s forged second version of {}",
                        n.id, forged.id
                    ),
                );
            }
        }
        if let Some((hb, _)) = &byz.forged_promise {
            let denied = n
                .replica
                .origin_events(bid, hb.hb.seq)
                .iter()
                .find(|e| e.hlc <= hb.hb.hlc);
            if let Some(e) = denied {
                f.add(
                    "detection",
                    format!(
                        "{} holds {} at {:?}, which {bid}'s signed promise ({:?}, seq {}) denied",
                        n.id, e.id, e.hlc, hb.hb.hlc, hb.hb.seq
                    ),
                );
            }
        }
    }
}

/// Byzantine seeds, once the lie reached an honest region (settlement of the member is then
/// frozen, at a different point on each region): every pair of honest regions holds the same
/// events of every honest origin and logs of the member one of which extends the other
/// (`convergence`), the same settled events up to the lower of their watermarks
/// (`convergence`), and feeds one of which extends the other (`exactly_once`). Each region
/// was compared with the oracle's fold of its own view.
fn settled_prefixes_agree(sim: &Sim, b: usize, f: &mut Failures) {
    let regions = &sim.cfg.regions;
    let bid = regions[b];
    let honest: Vec<&Node> = (0..sim.nodes.len())
        .filter(|i| *i != b)
        .map(|i| &sim.nodes[i])
        .collect();
    let Some((h0, rest)) = honest.split_first() else {
        return;
    };
    let r0 = &h0.replica;
    for n in rest {
        let r = &n.replica;
        for o in regions {
            let (x, y) = (r0.origin_events(*o, 0), r.origin_events(*o, 0));
            // The member's logs are frozen at different points: one extends the other.
            let differ = (*o != bid && x.len() != y.len())
                || x.iter().zip(y).any(|(a, c)| !same_event(a, c));
            if differ {
                f.add(
                    "convergence",
                    format!(
                        "{} and {} hold different events of {o} ({} vs {})",
                        n.id,
                        h0.id,
                        y.len(),
                        x.len()
                    ),
                );
            }
        }
        let w = r0.watermark().min(r.watermark());
        let settled = |r: &Replica| -> Vec<EventId> {
            all_events(r, regions)
                .into_iter()
                .filter(|e| e.hlc <= w && r.is_settled(&e.key()))
                .map(|e| e.id)
                .collect()
        };
        let (s0, s1) = (settled(r0), settled(r));
        if s0 != s1 {
            f.add(
                "convergence",
                format!(
                    "{} and {} settled different events up to {w:?} ({} vs {})",
                    n.id,
                    h0.id,
                    s1.len(),
                    s0.len()
                ),
            );
        }
        let (fa, fb) = (r0.feed(0, usize::MAX), r.feed(0, usize::MAX));
        if let Some((k, (x, _))) = fa
            .iter()
            .zip(fb)
            .enumerate()
            .find(|(_, (x, y))| !same_comp(x, y))
        {
            f.add(
                "exactly_once",
                format!(
                    "the feeds of {} and {} differ at [{k}] ({} there), so neither extends the other",
                    n.id,
                    h0.id,
                    x.id()
                ),
            );
        }
    }
}

fn finish(sim: &Sim, f: Failures, model: &ModelFold) -> CheckResult {
    let mut out = Outcome {
        overdrafts: model.overdrafts,
        closed_at_floor: model.closed_at_floor,
        max_overdraft: model
            .overdrawn
            .iter()
            .filter(|(id, _)| {
                sim.nodes.first().is_some_and(|n| {
                    n.replica
                        .event(*id)
                        .and_then(Event::tx)
                        .is_some_and(|t| t.currency == crate::workload::CURRENCY)
                })
            })
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default(),
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
        statuses: f.ok("statuses"),
        restart_monotonic: f.ok("restart_monotonic"),
        replica_self_check: f.ok("replica_self_check"),
        watermark_promised: f.ok("watermark_promised"),
        watermark_complete: f.ok("watermark_complete"),
        policy_file: f.ok("policy_file"),
        acceptance: f.ok("acceptance"),
        detection: f.ok("detection"),
        evidence_durable: f.ok("evidence_durable"),
        no_refetch: f.ok("no_refetch"),
        pull_chain: f.ok("pull_chain"),
        pull_backoff: f.ok("pull_backoff"),
        pull_given_up: f.ok("pull_given_up"),
        membership: f.ok("membership"),
        modes: f.ok("modes"),
        snapshots: f.ok("snapshots"),
        restore: f.ok("restore"),
        compaction: f.ok("compaction"),
    };
    CheckResult {
        invariants,
        failures: f.list,
        outcome: out,
    }
}

// ---- checks during the run -------------------------------------------------------------

/// Default of `--self-check-every`: the replica's own `check_invariants()` runs on the region
/// that just handled an input every this many inputs (O(history) each), and no sooner than a
/// quarter of that region's history (in inputs) after the previous check.
pub const SELF_CHECK_EVERY_DEFAULT: u64 = 2_000;

/// What a region showed before a crash: checked against what it shows after the restart.
pub struct RestartView {
    /// Watermark before the crash.
    watermark: Hlc,
    /// Every settled event: its id, status and the feed position of its compensation.
    settled: Vec<(EventId, Status, Option<u64>)>,
    /// The feed it held (all of it, unless it started from a snapshot: from `feed_from`).
    feed: Vec<Compensation>,
    /// The position of `feed[0]`.
    feed_from: u64,
}

impl RestartView {
    /// The crashed replica's image (what the region showed when it went down).
    pub fn capture(old: &Replica, regions: &[RegionId]) -> RestartView {
        let mut settled = Vec::new();
        for o in regions {
            for e in old.origin_events(*o, 0) {
                if let Some((st, c)) = old.status(e.id) {
                    if st != Status::Provisional {
                        settled.push((e.id, st, c.map(|c| c.position)));
                    }
                }
            }
        }
        let feed = old.feed(0, usize::MAX).to_vec();
        RestartView {
            watermark: old.watermark(),
            settled,
            feed_from: old.feed_len() - feed.len() as u64,
            feed,
        }
    }
}

/// The checks made while a run goes on (each a named invariant of the JSON): the restart
/// check (`restart_monotonic`), the replicas' own self-check every N inputs
/// (`replica_self_check`), and the watermark bounds (`watermark_promised`,
/// `watermark_complete`).
#[derive(Debug, Default)]
pub struct DuringRun {
    /// Failures found so far: (invariant, detail).
    pub failures: Vec<(&'static str, String)>,
    /// No replica self-check before this input count: the checks are spaced by at least a
    /// quarter of the history held, so that their O(history) cost stays O(1) per input
    /// (every `--self-check-every` inputs alone made a long run quadratic).
    next_self_check: u64,
    /// Per region: the highest HLC it announced in a heartbeat (over every incarnation).
    announced: Vec<Hlc>,
    /// Per region: the highest HLC of an own event that was durable on its disk (kept when
    /// the disk is lost later: what peers hold of it stays a promise).
    durable_event: Vec<Hlc>,
    /// Per region: its watermark when the bounds were last checked.
    checked_wm: Vec<Hlc>,
    /// Per region: every compensation it emitted (`Output::Compensation`), over every
    /// incarnation: each must be emitted once per region lifetime (a restart rebuilds the
    /// feed without emitting it again).
    emitted: Vec<BTreeSet<(EventId, CompKind)>>,
    /// Per region: the origins it reported equivocation of (`Report::Equivocation`) or sent
    /// evidence against (`Message::Evidence`), over every incarnation since its disk was
    /// last lost: it must hold that evidence after every restart.
    evidence_announced: Vec<BTreeSet<RegionId>>,
    /// Per region: the forged promises it made (the Byzantine member's: seq, HLC); its events
    /// above the seq and at or below the HLC are the ones the promise denied.
    forged_promises: Vec<Vec<(u64, Hlc)>>,
    /// The first snapshot body seen at each point, and the region that made it.
    snapshots: BTreeMap<Hlc, (RegionId, Vec<u8>)>,
    /// How many checks ran.
    pub counts: DuringCounts,
}

/// How many checks ran during a run (the JSON `checks_during_run` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DuringCounts {
    /// Inputs handled by replicas (each is followed by the watermark checks).
    pub inputs: u64,
    /// `check_invariants()` calls (every N inputs, after every restart).
    pub self_checks: u64,
    /// Restarts checked against the state before the crash.
    pub restarts: u64,
    /// Heartbeats checked against the announcing region's disk.
    pub heartbeats: u64,
    /// Watermark advances checked against the members' promises and logs.
    pub watermark_advances: u64,
    /// The anti-entropy liveness checks ([`crate::liveness`]).
    pub liveness: crate::liveness::LivenessCounts,
    /// Snapshots taken and checked.
    pub snapshots: u64,
    /// Snapshots restored from and compared with the region that took them.
    pub restores: u64,
    /// Compacted regions compared with their never-compacted shadow at the end.
    pub compaction_checks: u64,
    /// Compacted retired regions not compared with their shadow: they learned their cut from
    /// a snapshot they refused, which their history does not hold.
    pub compaction_learned_skipped: u64,
}

impl DuringRun {
    /// The highest HLC region `i` announced in a heartbeat so far (over every incarnation).
    pub fn announced(&self, i: usize) -> Hlc {
        self.announced.get(i).copied().unwrap_or(Hlc::ZERO)
    }

    /// For a run of `n` regions.
    pub fn new(n: usize) -> DuringRun {
        DuringRun {
            announced: vec![Hlc::ZERO; n],
            durable_event: vec![Hlc::ZERO; n],
            checked_wm: vec![Hlc::ZERO; n],
            emitted: vec![BTreeSet::new(); n],
            evidence_announced: vec![BTreeSet::new(); n],
            forged_promises: vec![Vec::new(); n],
            ..DuringRun::default()
        }
    }

    /// A region took snapshot `s` during the run: the same body as every other region's at
    /// that point, its signer's, and the reference model's fold of the region's events up to
    /// the point (`m`, a [`crate::prefix::PrefixFold`]'s state at the snapshot's point).
    pub fn snapshot_taken(&mut self, s: &wallet_core::Snapshot, m: &testing::ModelState) {
        self.counts.snapshots += 1;
        let b = &s.body;
        let mut fail = |d: String| self.failures.push(("snapshots", d));
        if !s.verify(&wallet_core::NoAuth, "wallet-sim") {
            fail(format!(
                "{}'s snapshot at {:?} does not verify",
                s.signer, b.at
            ));
        }
        let mut got: BTreeMap<(AccountId, Currency), Decimal> = BTreeMap::new();
        for a in &b.accounts {
            for x in &a.balances {
                got.insert((a.account.clone(), x.currency), x.settled);
            }
        }
        let want: BTreeMap<(AccountId, Currency), Decimal> =
            m.balances().filter(|(_, v)| !v.is_zero()).collect();
        if got
            .iter()
            .any(|(k, v)| !v.is_zero() && want.get(k) != Some(v))
            || want.iter().any(|(k, v)| got.get(k) != Some(v))
        {
            fail(format!(
                "{}'s snapshot at {:?}: settled balances differ from the model's fold",
                s.signer, b.at
            ));
        }
        if b.feed_len != m.feed_len() || b.settled != m.settled() {
            fail(format!(
                "{}'s snapshot at {:?}: feed {} and settled {}, the model {} and {}",
                s.signer,
                b.at,
                b.feed_len,
                b.settled,
                m.feed_len(),
                m.settled()
            ));
        }
        let bytes = b.to_bytes();
        match self.snapshots.get(&b.at) {
            Some((first, seen)) if *seen != bytes => fail(format!(
                "{} and {first} make different snapshot bodies at {:?}",
                s.signer, b.at
            )),
            Some(_) => {}
            None => {
                self.snapshots.insert(b.at, (s.signer, bytes));
            }
        }
    }

    /// Region `i` reported equivocation of `origin`, or sent evidence against it.
    pub fn evidence_announced(&mut self, i: usize, origin: RegionId) {
        if let Some(set) = self.evidence_announced.get_mut(i) {
            set.insert(origin);
        }
    }

    /// Region `i` lost its disk: what it announced before is gone with it, legitimately;
    /// and what it emitted: the rebuilt region settles the history again and emits its
    /// compensations again, which downstream deduplicates by compensation id (SPEC §5;
    /// docs/operations.md, lost disk).
    pub fn disk_lost(&mut self, i: usize) {
        if let Some(set) = self.evidence_announced.get_mut(i) {
            set.clear();
        }
        if let Some(set) = self.emitted.get_mut(i) {
            set.clear();
        }
    }

    /// The Byzantine region `i` signed a heartbeat `(seq, hlc)` that its own events
    /// contradict: it counts as announced (peers settle on it), and the events it denies are
    /// exempt from `watermark_complete` (a lie lets honest watermarks pass them).
    pub fn note_announced(&mut self, i: usize, hlc: Hlc) {
        if let Some(a) = self.announced.get_mut(i) {
            *a = (*a).max(hlc);
        }
    }

    /// Records a forged promise of region `i` (see [`DuringRun::note_announced`]).
    pub fn note_forged_promise(&mut self, i: usize, seq: u64, hlc: Hlc) {
        if let Some(v) = self.forged_promises.get_mut(i) {
            v.push((seq, hlc));
        }
    }

    /// Region `i` emitted a compensation: a second emission of the same one (same cause and
    /// kind) in its lifetime breaks exactly-once for whoever acts on the outputs.
    pub fn compensation_emitted(&mut self, i: usize, now: u64, c: &Compensation) {
        let Some(set) = self.emitted.get_mut(i) else {
            return;
        };
        if !set.insert((c.cause, c.kind)) {
            self.fail(
                "exactly_once",
                now,
                format!("region {i} emitted {} a second time", c.id()),
            );
        }
    }

    pub(crate) fn fail(&mut self, name: &'static str, now: u64, detail: String) {
        if self.failures.iter().filter(|(n, _)| *n == name).count() < 5 {
            self.failures.push((
                name,
                format!("at {}.{:03} s: {detail}", now / 1000, now % 1000),
            ));
        }
    }
}

/// What a region's state was just before it was given a client request (for the
/// `acceptance` check): its provisional balance and the floor the model derives for the
/// policy in force there.
pub struct Before {
    provisional: Decimal,
    floor: Decimal,
    /// A strict mode (SPEC §8): a debit may be refused although the provisional balance
    /// would stay at the floor (credits that may still be reversed do not count).
    strict: bool,
}

impl Before {
    /// Reads `r` before it handles `req`.
    pub fn of(r: &Replica, req: &TxRequest) -> Before {
        let rule = testing::model_rule(r.current_policy().1, req.account.as_str(), req.currency);
        Before {
            provisional: r.balance(&req.account, req.currency).provisional,
            floor: rule.floor,
            strict: rule.rule.mode.is_strict(),
        }
    }
}

/// Region `i` decided on a client request: checked against SPEC §2 (an amount has at most
/// the currency's minor units, and is carried at that scale) and §4 (a debit is accepted
/// when provisional − amount ≥ floor). Requests answered from the idempotency index, and
/// refusals for another reason (restoring, frozen, overflow), are not judged here.
pub fn submitted(
    during: &mut DuringRun,
    now: u64,
    i: usize,
    r: &Replica,
    req: &TxRequest,
    before: &Before,
    result: &Result<Submitted, SubmitError>,
) {
    // Built only for a failure: this runs at every client request.
    let what = || {
        format!(
            "region {i}: {} {} {} on {}",
            req.kind.as_str(),
            req.amount.value(),
            req.currency.as_str(),
            req.account
        )
    };
    let new = match result {
        Ok(Submitted::New(id)) => Some(*id),
        Err(SubmitError::InsufficientFunds { .. } | SubmitError::Amount(_)) => None,
        _ => return,
    };
    let v = req.amount.value();
    let units = testing::model_minor_units(req.currency);
    if v.normalize().scale() > units {
        if let Some(id) = new {
            during.fail(
                "acceptance",
                now,
                format!(
                    "{}: more places than the currency has, accepted as {id}",
                    what()
                ),
            );
        } else if !matches!(result, Err(SubmitError::Amount(_))) {
            during.fail(
                "acceptance",
                now,
                format!(
                    "{}: more places than the currency has, refused for funds",
                    what()
                ),
            );
        }
        return;
    }
    if let Err(SubmitError::Amount(e)) = result {
        during.fail(
            "acceptance",
            now,
            format!("{}: a valid amount refused ({e})", what()),
        );
        return;
    }
    let debit = testing::model_is_debit(req.kind);
    let after = if debit {
        before.provisional.checked_sub(v)
    } else {
        before.provisional.checked_add(v)
    };
    let Some(after) = after else { return };
    let short = debit && after < before.floor;
    match new {
        None if !short && !before.strict => during.fail(
            "acceptance",
            now,
            format!(
                "{}: refused for funds, but provisional {} - {v} = {after} is not below the floor {}",
                what(),
                before.provisional, before.floor
            ),
        ),
        Some(id) if short => during.fail(
            "acceptance",
            now,
            format!(
                "{}: accepted as {id}, but provisional {} - {v} = {after} is below the floor {}",
                what(),
                before.provisional, before.floor
            ),
        ),
        Some(id) => {
            let held = r.event(id).and_then(Event::tx).map(|t| t.amount.value());
            if held != Some(v) || held.is_some_and(|h| h.scale() != units) {
                during.fail(
                    "acceptance",
                    now,
                    format!("{}: accepted as {id} with amount {held:?}, not {v} at {units} places", what()),
                );
            }
        }
        None => {}
    }
}

/// Region `i` broadcasts a heartbeat (a promise, SPEC §5): checked against its simulated disk
/// (the engine's own record of what is durable, not the replica's bookkeeping): the HLC is at
/// or below the durable clock ceiling, every own event up to the heartbeat's seq is durable,
/// and the next own event, if any, is above the HLC.
pub fn heartbeat_announced(sim: &mut Sim, i: usize, hb: &Heartbeat) {
    let node = &sim.nodes[i];
    let me = node.id;
    let mut bad = Vec::new();
    if hb.origin != me {
        bad.push(format!("it names {} as its origin", hb.origin));
    }
    if hb.hlc > node.disk.ceiling {
        bad.push(format!(
            "its HLC {:?} is above the durable clock ceiling {:?}",
            hb.hlc, node.disk.ceiling
        ));
    }
    let durable = node.disk.durable.get(i).copied().unwrap_or(0);
    if hb.seq > durable {
        bad.push(format!(
            "it covers own seq {} but only {durable} are durable",
            hb.seq
        ));
    }
    if let Some(next) = node.replica.origin_events(me, hb.seq).first() {
        if next.hlc <= hb.hlc {
            bad.push(format!(
                "own event {} at {:?} is above its seq but not above its HLC",
                next.id, next.hlc
            ));
        }
    }
    let now = sim.now;
    let d = &mut sim.during;
    d.counts.heartbeats += 1;
    if let Some(a) = d.announced.get_mut(i) {
        *a = (*a).max(hb.hlc);
    }
    for b in bad {
        d.fail(
            "watermark_promised",
            now,
            format!(
                "{me} announced heartbeat ({:?}, seq {}): {b}",
                hb.hlc, hb.seq
            ),
        );
    }
}

/// The highest HLC region `x` has durably promised: the highest heartbeat it announced, and
/// the HLC of its last own event that was durable on its disk (it never issues an event at
/// or below either again, whatever crashes). Both from the engine's view.
fn promised(sim: &Sim, x: usize) -> (Hlc, Hlc) {
    (sim.during.announced[x], sim.during.durable_event[x])
}

/// Records the HLC of region `i`'s last durable own event (its disk only grows between
/// inputs; every fsync is followed by an input).
fn note_durable(sim: &mut Sim, i: usize) {
    let node = &sim.nodes[i];
    let durable = node.disk.durable.get(i).copied().unwrap_or(0);
    if let Some(before) = durable.checked_sub(1) {
        let log = sim.folded.log(&node.replica, i, node.id);
        if let Some(e) = usize::try_from(before).ok().and_then(|k| log.get(k)) {
            let h = e.hlc;
            if let Some(d) = sim.during.durable_event.get_mut(i) {
                *d = (*d).max(h);
            }
        }
    }
}

/// After every input a replica handled (`Sim::drain`): the self-check every N inputs, and the
/// watermark bounds of SPEC §5 on the region that took the input.
pub fn after_input(sim: &mut Sim, i: usize) {
    sim.during.counts.inputs += 1;
    note_durable(sim, i);
    let every = sim.cfg.self_check_every;
    if every > 0
        && sim.during.counts.inputs.is_multiple_of(every)
        && sim.during.counts.inputs >= sim.during.next_self_check
        && sim.nodes[i].up
    {
        let held = sim.nodes[i].replica.event_count();
        sim.during.next_self_check = sim.during.counts.inputs + (held / 4).max(every);
        sim.during.counts.self_checks += 1;
        if let Err(e) = sim.nodes[i].replica.check_invariants() {
            let (now, id) = (sim.now, sim.nodes[i].id);
            sim.during
                .fail("replica_self_check", now, format!("{id}: {e}"));
        }
    }
    let n = sim.nodes.len();
    // The highest seq of each origin this region ever had settled (`membership`). The
    // settled events are a prefix of each log; only a prefix longer than the highest seen
    // matters, so the scan starts there: O(new settled events) per input, not O(log).
    for o in 0..n {
        let origin = sim.cfg.regions[o];
        let r = &sim.nodes[i].replica;
        // Events folded into a snapshot were settled.
        let base = crate::history::base_of(r, origin);
        let log = r.origin_events(origin, 0);
        if let Some(m) = sim.max_settled.get_mut(i).and_then(|m| m.get_mut(o)) {
            let from = usize::try_from((*m).max(base) - base)
                .unwrap_or(usize::MAX)
                .min(log.len());
            let more = log[from..]
                .iter()
                .take_while(|e| r.is_settled(&e.key()))
                .count();
            *m = (*m).max(base + (from + more) as u64);
        }
    }
    let w = sim.nodes[i].replica.watermark();
    if w > sim.during.checked_wm[i] {
        sim.during.checked_wm[i] = w;
        sim.during.counts.watermark_advances += 1;
        // No region settles past what every member durably promised.
        for x in 0..n {
            let (hb, ev) = promised(sim, x);
            // A retired member whose log up to its cut is held counts no more; one not a
            // member here yet does not count; a joined one is complete up to its join.
            let xid = sim.nodes[x].id;
            let r = &sim.nodes[i].replica;
            if retired_and_held(sim, i, x) || !r.is_member(xid) {
                continue;
            }
            let joined = r.joined_at(xid).unwrap_or(Hlc::ZERO);
            if w > hb.max(ev).max(joined) {
                let (now, me, them) = (sim.now, sim.nodes[i].id, sim.nodes[x].id);
                sim.during.fail(
                    "watermark_promised",
                    now,
                    format!(
                        "{me}'s watermark {w:?} is above what {them} durably promised (heartbeat {hb:?}, last durable own event {ev:?})"
                    ),
                );
            }
        }
        // It holds every event of every member at or below it.
        for x in 0..n {
            if x != i {
                check_complete(sim, i, x);
            }
        }
    }
    // A new own event of `i` must not fall at or below a watermark that passed it.
    for r in 0..n {
        if r != i {
            check_complete(sim, r, i);
        }
    }
}

/// Member `x` is retired with its cut computed (by any region: the cut is one fact, the same
/// wherever it is computed, SPEC §10 "a retired region's final seq is fixed") and region `i`
/// holds `x`'s log up to it: `x` is no longer in force for `i`'s watermark. A region that
/// installed a peer's snapshot holds the signer's watermark, which the signer passed knowing
/// the cut, before the acknowledgements after the snapshot tell it the cut (sim `--membership
/// 100% --compact-every 50` seed 723: us, rebuilt after a lost disk and retired by eu with its
/// cut at us:1559, installed ap's snapshot at 38.008 s, past its own last promise at 24.925 s,
/// and learned its cut 0.2 s later).
fn retired_and_held(sim: &Sim, i: usize, x: usize) -> bool {
    let origin = sim.cfg.regions[x];
    let held = sim.nodes[i].replica.version_vector().get(&origin);
    known_cuts(sim, origin).any(|c| held >= c)
}

/// The cuts of retired `origin` the regions computed (a cut that differs between two is
/// `membership`'s failure).
fn known_cuts(sim: &Sim, origin: RegionId) -> impl Iterator<Item = u64> + '_ {
    sim.nodes.iter().filter_map(move |n| n.replica.cut(origin))
}

/// SPEC §5: region `r`'s watermark is at most the HLC of the first event of `x` it lacks.
fn check_complete(sim: &mut Sim, r: usize, x: usize) {
    let w = sim.nodes[r].replica.watermark();
    if w == Hlc::ZERO {
        return;
    }
    let origin = sim.nodes[x].id;
    let held = sim.nodes[r].replica.version_vector().get(&origin);
    let log = sim.folded.log(&sim.nodes[x].replica, x, origin);
    let Some(next) = usize::try_from(held).ok().and_then(|k| log.get(k)) else {
        return;
    };
    if next.hlc <= w {
        // An event of a retired member above its cut: refused everywhere, never of a member
        // in force (SPEC §10). The cut is taken from any region that computed it, as in
        // `retired_and_held` (seed 107 of `--membership 100% --compact-every 50 --lost-disk
        // 50%`: ap, rebuilt, installed eu's snapshot past us:294, above us's cut at 293, with
        // eu's acknowledgement still on its way). A cut that voids a settled event is
        // `membership`'s failure (`max_settled`), not this one's.
        if known_cuts(sim, origin).any(|c| next.id.seq > c) {
            return;
        }
        // An event the Byzantine member's forged promise denied: the lie, not the region.
        let denied = sim.during.forged_promises[x]
            .iter()
            .any(|(s, h)| next.id.seq > *s && next.hlc <= *h);
        if denied {
            return;
        }
        let (now, me, id, h) = (sim.now, sim.nodes[r].id, next.id, next.hlc);
        sim.during.fail(
            "watermark_complete",
            now,
            format!("{me}'s watermark {w:?} passes {id} at {h:?}, which it does not hold"),
        );
    }
}

/// After a restart (`Sim::restart`): nothing settled before the crash is unsettled after it,
/// with the same status and compensation; the feed is the same prefix or longer; the
/// watermark is not lower; and the replica's own self-check passes.
pub fn after_restart(sim: &mut Sim, r: usize, before: RestartView) {
    let now = sim.now;
    let node = &sim.nodes[r];
    let (me, rep) = (node.id, &node.replica);
    let mut bad: Vec<(&'static str, String)> = Vec::new();
    if rep.watermark() < before.watermark {
        bad.push((
            "restart_monotonic",
            format!(
                "{me} restarted with watermark {:?}, below {:?} before the crash",
                rep.watermark(),
                before.watermark
            ),
        ));
    }
    // Feed positions: a region restarted from a snapshot holds the entries after the
    // snapshot's position only (the ones before are in its fold, checked by `restore` when
    // it was taken and by `compaction` at the end).
    let feed = rep.feed(0, usize::MAX);
    let feed_from = rep.feed_len() - feed.len() as u64;
    let end_before = before.feed_from + before.feed.len() as u64;
    let at = |k: u64| {
        k.checked_sub(feed_from)
            .and_then(|j| feed.get(usize::try_from(j).ok()?))
    };
    if rep.feed_len() < end_before {
        bad.push((
            "restart_monotonic",
            format!(
                "{me}'s feed shrank from {end_before} to {} entries across a restart",
                rep.feed_len()
            ),
        ));
    } else if let Some((k, c)) = before
        .feed
        .iter()
        .enumerate()
        .map(|(k, c)| (before.feed_from + k as u64, c))
        .filter(|(k, _)| *k >= feed_from)
        .find(|(k, c)| at(*k) != Some(*c))
    {
        bad.push((
            "restart_monotonic",
            format!(
                "{me}'s feed[{k}] was {} before the crash and is {:?} after",
                c.id(),
                at(k).map(Compensation::id)
            ),
        ));
    }
    let mut unsettled = 0u64;
    let mut first: Option<String> = None;
    for (id, st, pos) in &before.settled {
        // Folded into the snapshot it restarted from: in its fold, no longer served.
        if rep.compacted(*id) {
            continue;
        }
        let now_st = rep.status(*id).map(|(s, c)| (s, c.map(|c| c.position)));
        if now_st != Some((*st, *pos)) {
            unsettled += 1;
            if first.is_none() {
                first = Some(format!(
                    "{id} was {st:?} (compensation at {pos:?}) and is {now_st:?}"
                ));
            }
        }
    }
    if let Some(f) = first {
        bad.push((
            "restart_monotonic",
            format!("{me}: {unsettled} events settled before the crash are not after it, e.g. {f}"),
        ));
    }
    if let Err(e) = rep.check_invariants() {
        bad.push(("replica_self_check", format!("{me} after its restart: {e}")));
    }
    // Evidence it announced (reported, or sent to peers) survives the crash.
    for o in &sim.during.evidence_announced[r] {
        if !rep.evidence().iter().any(|e| e.origin() == *o) {
            bad.push((
                "evidence_durable",
                format!(
                    "{me} announced evidence against {o} before its crash and holds none after its restart"
                ),
            ));
        }
    }
    let d = &mut sim.during;
    d.counts.restarts += 1;
    d.counts.self_checks += 1;
    for (n, b) in bad {
        d.fail(n, now, b);
    }
}

/// Issue 13, invariant `restore`: a region restored from the snapshot region `i` just took,
/// plus the events `i` holds after it (`Replica::restore`, then `restore_watermark` at `i`'s
/// watermark), agrees with region `i` itself, which never compacted: watermark, version
/// vector, every non-zero balance (same decimal bytes), escrow rights, keys held, settled
/// count, policy history, the feed after the snapshot's position, the status of every event
/// after it, and its own self-check. Skipped where the core refuses compaction (membership
/// history, which snapshots do not carry yet).
pub fn restore_agrees(
    sim: &mut Sim,
    i: usize,
    s: &wallet_core::Snapshot,
    cfg: wallet_core::Config,
) {
    let live = &sim.nodes[i].replica;
    if !live.compaction_allowed() {
        return;
    }
    sim.during.counts.restores += 1;
    let folded = |o: RegionId| {
        s.body
            .members
            .iter()
            .find(|m| m.region == o)
            .map_or(0, |m| m.seq)
    };
    let after: Vec<Event> = sim
        .cfg
        .regions
        .iter()
        .flat_map(|o| live.origin_events(*o, folded(*o)).iter().cloned())
        .collect();
    let ids: Vec<EventId> = after.iter().map(|e| e.id).collect();
    let mut r = Replica::new(cfg, Hlc::ZERO);
    r.restore_evidence(live.evidence().to_vec());
    let who = format!(
        "{} restored from its snapshot at {:?}",
        live.region(),
        s.body.at
    );
    let bad = match r.restore(s, after) {
        Err(e) => Some(format!("{who}: refused: {e}")),
        Ok(()) => {
            r.restore_watermark(live.watermark());
            restored_differs(live, &r, s.body.feed_len, &ids).map(|d| format!("{who}: {d}"))
        }
    };
    if let Some(d) = bad {
        sim.during.failures.push(("restore", d));
    }
}

/// Issue 13, invariant `compaction`, at the end of a run: every region whose logs start
/// above a base (it compacted, or restarted or bootstrapped from a snapshot) is compared
/// with a never-compacted shadow: a fresh replica that loads the region's whole history
/// (the folded events the checker kept, [`crate::history::Folded`], then what the region
/// holds in memory), with the region's evidence, settled up to its watermark. They must
/// agree on everything the region holds ([`restored_differs`], and the membership state);
/// the shadow then takes the region's place for every other check, so that those read
/// the whole history (the live replica's figures were gathered at the end of the run).
fn compacted_regions_agree(sim: &mut Sim) {
    for i in 0..sim.nodes.len() {
        let live = &sim.nodes[i].replica;
        let regions = &sim.cfg.regions;
        if regions
            .iter()
            .all(|o| crate::history::base_of(live, *o) == 0)
        {
            continue;
        }
        let me = live.region();
        let logs = sim.folded.logs(live, regions);
        if let Some((o, l)) = regions.iter().zip(&logs).find(|(o, l)| {
            l.len() as u64 != live.version_vector().get(o)
                || l.iter_from(0)
                    .enumerate()
                    .any(|(k, e)| e.id.seq != k as u64 + 1)
        }) {
            sim.during.failures.push((
                "compaction",
                format!("{me}'s history of {o} is not whole: {} events", l.len()),
            ));
            continue;
        }
        let events = sim.folded.all_events(live, regions);
        let mut shadow = Replica::new(crate::engine::make_config(&sim.cfg, me), Hlc::ZERO);
        shadow.restore_evidence(live.evidence().to_vec());
        shadow.load(events);
        shadow.restore_watermark(live.watermark());
        let feed_from = live.feed_len() - live.feed(0, usize::MAX).len() as u64;
        let ids: Vec<EventId> = regions
            .iter()
            .flat_map(|o| live.origin_events(*o, 0).iter().map(|e| e.id))
            .collect();
        let who = format!("{me} (compacted) against its never-compacted shadow");
        let membership = |r: &Replica| {
            let members: Vec<_> = r
                .members()
                .iter()
                .map(|m| (m.region, m.held, m.joined, m.cut))
                .collect();
            let joins: Vec<_> = r.joins().iter().map(|j| (j.id, j.hlc, j.region)).collect();
            let retires: Vec<_> = r.retires().iter().map(|x| (x.id, x.cut.clone())).collect();
            format!(
                "{members:?} {joins:?} {retires:?} {:?} {} {}",
                r.seals(),
                r.epoch(),
                r.is_retired()
            )
        };
        // A retired region is out of the cluster, and two of them are not compared (their
        // shadow still takes their place): one that learned its cut from a peer's snapshot it
        // refused (docs/protocol.md §11) holds what its history does not (the retires and cuts
        // the snapshot taught, and what they caused here), and one that holds another retired
        // region's log above its cut had settled events there that the cut could not void
        // (an acknowledger excused from that retire, being retired itself, §8); its shadow,
        // which loads the history unsettled, voids them.
        let kept_above_cut = regions.iter().any(|g| {
            *g != me
                && live
                    .cut(*g)
                    .is_some_and(|c| live.version_vector().get(g) > c)
        });
        if live.is_retired() && (live.membership_stats().cuts_from_snapshot > 0 || kept_above_cut) {
            sim.during.counts.compaction_learned_skipped += 1;
            std::mem::swap(&mut sim.nodes[i].replica, &mut shadow);
            continue;
        }
        let bad = restored_differs(&shadow, live, feed_from, &ids).or_else(|| {
            let (a, b) = (membership(live), membership(&shadow));
            (a != b).then(|| format!("membership {a}, shadow {b}"))
        });
        sim.during.counts.compaction_checks += 1;
        if let Some(d) = bad {
            sim.during
                .failures
                .push(("compaction", format!("{who}: {d}")));
        }
        std::mem::swap(&mut sim.nodes[i].replica, &mut shadow);
    }
}

/// What differs between a region and its copy restored from a snapshot (see
/// [`restore_agrees`]), if anything.
fn restored_differs(
    live: &Replica,
    r: &Replica,
    feed_from: u64,
    ids: &[EventId],
) -> Option<String> {
    if r.watermark() != live.watermark() {
        return Some(format!(
            "watermark {:?}, live {:?}",
            r.watermark(),
            live.watermark()
        ));
    }
    if r.version_vector() != live.version_vector() {
        return Some("version vector differs".into());
    }
    let nonzero = |x: &Replica| -> Vec<(AccountId, Currency, Decimal, Decimal)> {
        x.all_balances()
            .into_iter()
            .filter(|(_, _, b)| !b.provisional.is_zero() || !b.settled.is_zero())
            .map(|(a, c, b)| (a, c, b.provisional, b.settled))
            .collect()
    };
    let (ba, bb) = (nonzero(r), nonzero(live));
    // A zero is a zero at any scale: a pair whose settled balance is zero is not in the
    // snapshot, so the restored copy starts it at `0` where the region may hold `0.00` (the
    // next amount added gives both the currency's scale).
    type Bal = (AccountId, Currency, Decimal, Decimal);
    let same_dec = |x: &Decimal, y: &Decimal| raw(x, y) || (x.is_zero() && y.is_zero());
    let same_bal =
        |x: &Bal, y: &Bal| x.0 == y.0 && x.1 == y.1 && same_dec(&x.2, &y.2) && same_dec(&x.3, &y.3);
    if ba.len() != bb.len() || !ba.iter().zip(&bb).all(|(x, y)| same_bal(x, y)) {
        let first = ba.iter().zip(&bb).find(|(x, y)| !same_bal(x, y));
        return Some(format!(
            "{} non-zero balances, live {} (first difference: {first:?})",
            ba.len(),
            bb.len()
        ));
    }
    for (a, c, _, _) in &bb {
        let rights = |x: &Replica| {
            let (mut v, unspendable) = x.all_rights(a, *c);
            v.retain(|(_, d)| !d.is_zero());
            (v, unspendable.normalize())
        };
        if rights(r) != rights(live) {
            return Some(format!("escrow rights of {a} {c} differ"));
        }
    }
    if r.idempotency_keys_held() != live.idempotency_keys_held() {
        return Some(format!(
            "{} keys held, live {}",
            r.idempotency_keys_held(),
            live.idempotency_keys_held()
        ));
    }
    if r.stats().settled != live.stats().settled {
        return Some(format!(
            "settled {}, live {}",
            r.stats().settled,
            live.stats().settled
        ));
    }
    let policies = |x: &Replica| -> Vec<(u32, wallet_core::PolicyHash, Option<EventId>)> {
        x.policy_history()
            .iter()
            .map(|p| (p.version, p.hash, p.event))
            .collect()
    };
    if policies(r) != policies(live) {
        return Some("policy history differs".into());
    }
    let (fa, fb) = (
        r.feed(feed_from, usize::MAX),
        live.feed(feed_from, usize::MAX),
    );
    if r.feed_len() != live.feed_len()
        || fa.len() != fb.len()
        || !fa.iter().zip(fb).all(|(x, y)| same_comp(x, y))
    {
        return Some(format!(
            "feed of {} entries, live {}",
            r.feed_len(),
            live.feed_len()
        ));
    }
    for id in ids {
        let st = |x: &Replica| x.status(*id).map(|(s, c)| (s, c.map(Compensation::id)));
        if st(r) != st(live) {
            return Some(format!("status of {id}: {:?}, live {:?}", st(r), st(live)));
        }
    }
    r.check_invariants()
        .err()
        .map(|e| format!("self-check: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_core::{Amount, Config, Kind};

    fn replica() -> Replica {
        let regions = crate::config::region_names(2);
        Replica::new(Config::new(regions[0], regions, Policy::zero()), Hlc::ZERO)
    }

    fn req(kind: Kind, amount: Amount, currency: Currency) -> TxRequest {
        TxRequest {
            account: AccountId::new("acct-0001").unwrap(),
            kind,
            amount,
            currency,
            idempotency_key: None,
            reference: None,
        }
    }

    fn judged(
        req: &TxRequest,
        provisional: &str,
        result: Result<Submitted, SubmitError>,
    ) -> Vec<String> {
        let mut d = DuringRun::new(2);
        let before = Before {
            provisional: Decimal::from_str_exact(provisional).unwrap(),
            floor: Decimal::ZERO,
            strict: false,
        };
        submitted(&mut d, 0, 0, &replica(), req, &before, &result);
        d.failures
            .into_iter()
            .map(|(n, x)| format!("{n}: {x}"))
            .collect()
    }

    fn funds() -> SubmitError {
        SubmitError::InsufficientFunds {
            available: String::new(),
            requested: String::new(),
            currency: Currency::USD,
        }
    }

    #[test]
    fn a_debit_landing_exactly_on_the_floor_must_be_accepted() {
        let usd = |s: &str| Amount::parse(s, Currency::USD).unwrap();
        let r = req(Kind::Purchase, usd("10.00"), Currency::USD);
        // Refused with 10.00 available: the off-by-one a mutant makes.
        let f = judged(&r, "10.00", Err(funds()));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("acceptance: ") && f[0].contains("not below the floor"));
        // Refused with 9.99 available: right.
        assert!(judged(&r, "9.99", Err(funds())).is_empty());
    }

    #[test]
    fn an_amount_finer_than_the_currency_must_be_refused_as_an_amount() {
        // 12.341 written for BHD, sent as USD.
        let fine = Amount::parse("12.341", Currency::BHD).unwrap();
        let r = req(Kind::Deposit, fine, Currency::USD);
        let f = judged(&r, "0", Err(funds()));
        assert!(f.len() == 1 && f[0].contains("refused for funds"), "{f:?}");
        let bad = Amount::parse("1.5", Currency::USD).unwrap();
        let e = SubmitError::Amount(Amount::new(bad.value(), Currency::JPY).unwrap_err());
        assert!(judged(&r, "0", Err(e.clone())).is_empty());
        // A valid amount refused as invalid.
        let ok = req(
            Kind::Deposit,
            Amount::parse("12.340", Currency::BHD).unwrap(),
            Currency::USD,
        );
        let f = judged(&ok, "0", Err(e));
        assert!(
            f.len() == 1 && f[0].contains("a valid amount refused"),
            "{f:?}"
        );
    }
}
