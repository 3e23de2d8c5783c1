//! The reference model of the settled fold, for tests and the simulator's checker (compiled
//! only with the `testing` feature).
//!
//! [`model`] re-folds a full event set from scratch, in the total order `(hlc, origin, seq)`,
//! the plain way: no incremental state, nothing shared with the replica's fold.
//! [`model_at`] does the same for one region's view: the events it holds and its watermark
//! (SPEC §5: the events at or below the watermark are settled, the others provisional). It is
//! the one oracle of the project: the core's property tests and the simulator's checker both
//! compare the replica with it.
//!
//! # Written from the SPEC, not from the code it checks
//!
//! A model that calls the code it checks shares that code's mistakes and finds none of them.
//! So the model computes, itself, from SPEC §2, §5, §6 and docs/reconciliation.md §2, §4, §5:
//!
//! - **the total order**: it sorts by `(hlc as u64, origin region name bytes, seq)` with the
//!   standard library's integer and byte-slice comparisons, never with `Event::key`,
//!   `OrderKey` or the `Ord` of `Hlc` or `RegionId` (the core compares region ids as
//!   big-endian integers for speed: a mistake there, or a reversed tie-break in the key, would
//!   otherwise be shared and every region would still agree);
//! - **the settled prefix** of a region: every held event whose HLC is at or below the
//!   watermark ([`model_at`]), not the core's `is_settled`;
//! - **signs and minor units**: its own table of which kinds are debits (SPEC §2) and its own
//!   ISO-4217 table of minor units ([`model_minor_units`]), not `Kind::is_debit` or
//!   `Currency::minor_units`;
//! - **rule resolution**: its own tier matching ([`model_tier`]: first tier by name with a
//!   matching prefix) and most-specific-rule search ([`model_rule`]), not `Policy::applied`
//!   or `Policy::tier_of`;
//! - **fee arithmetic**: exact integer arithmetic on the decimals' mantissas ([`model_fee`]):
//!   flat + percent × overdrawn / 100 exact, one rounding half away from zero to the minor
//!   units, then the minimum, then the cap; line, minimum, cap and grace rounded half away
//!   from zero to the currency by the same integer rounding. Not `Applied::fee_for`,
//!   `Currency::round` or `rust_decimal`'s rounding;
//! - **the fold**: overdrawn = min(floor − balance after, amount); `reverse` when the rule
//!   says so and the kind is reversible, else the fee rules; episodes opened by an overdrawing
//!   non-duplicate debit and closed when the balance without the episode's fees is back at
//!   or above the floor; a policy event is the next version, in force after it;
//! - **duplicates and conflicts**: the same (account, key) with the same body (kind, amount
//!   value, currency, reference, compared field by field here, not with `Tx::same_body`) as
//!   any earlier event is a duplicate and reversed; else a conflict with the first earlier
//!   holder is reported. Only earlier holders within the key retention count (issue 13): a
//!   holder at HLC `h` counts for an event at HLC `e` when `e`'s milliseconds (the HLC's high
//!   48 bits, `hlc >> 16`) are below `h`'s plus the retention ([`model_retained`]);
//! - **ids and statuses**: compensation ids `fee:<origin>:<seq>`, `rev:..`, `conflict:..`
//!   formatted here ([`ModelComp::id`]), and each event's status ([`ModelStatus`]):
//!   provisional, settled (with the id of the fee it caused, if any), or reversed with the id
//!   of its reversal.
//!
//! What it shares with the core is data, not logic: the event types (`Event`, `Tx`, `Body`,
//! `EventId`, `Hlc`, `Kind`, `Amount`, `Currency`, `AccountId`, `CompKind`; only their
//! fields and names are read) and the **parsed** policy (`Policy`, `Rule`, `Fee`): the TOML
//! parser's resolution of a `[[rule]]` against `[default]` (inherited fields, and
//! `beyond_line` folded into `action` when a rule has an overdraft line) is not re-done
//! here. A policy reaches the replica and the model as the same parsed value (a file parsed
//! once, or a replicated policy event): a parser mistake changes what both are given, not how
//! either folds it. The parser has its own tests (core/src/policy/tests.rs), and the
//! simulator checks every drawn file against what its generator meant (`policy_file`). Everything the fold decides from that data is decided here
//! independently. `rust_decimal::Decimal` is used as a value type for inputs and outputs
//! (and for balance sums, which are exact), never for rounding.
//!
//! What it leaves out: the overflow freeze (docs/reconciliation.md §6). A settled sum that
//! would overflow panics here; the generators that feed the model stay far below it.
//!
//! Everything is deterministic: ordered maps only, exact decimals and integers, no floats.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use crate::event::{AccountOp, Body, CompKind, Event, Kind, Tx};
use crate::id::{AccountId, EventId, Hlc};
use crate::money::Currency;
use crate::policy::{Action, FeePer, Mode, Policy, Rule};

/// One feed entry as the model derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelComp {
    /// Fee, reversal or conflict report.
    pub kind: CompKind,
    /// The event that caused it.
    pub cause: EventId,
    /// The cause's HLC (a compensation sits right after its cause in the total order).
    pub hlc: Hlc,
    /// Signed effect on the settled balance (zero for a conflict report).
    pub delta: Decimal,
    /// For a conflict report: the first earlier event holding the key.
    pub related: Option<EventId>,
    /// The policy version in force at the cause (the seed is version 1).
    pub version: u32,
    /// The cause's account.
    pub account: AccountId,
    /// The cause's currency.
    pub currency: Currency,
    /// True for the reversal of a duplicate (same key, same body as an earlier event).
    pub duplicate: bool,
}

impl ModelComp {
    /// The id SPEC §5 derives from the cause: `fee:<origin>:<seq>`, `rev:<origin>:<seq>`,
    /// `conflict:<origin>:<seq>` (formatted here, not by `Compensation::id`).
    pub fn id(&self) -> String {
        model_comp_id(self.kind, self.cause)
    }
}

/// `<prefix>:<origin name>:<seq>` for a compensation kind and its cause.
pub fn model_comp_id(kind: CompKind, cause: EventId) -> String {
    let prefix = match kind {
        CompKind::OverdraftFee => "fee",
        CompKind::Reversal => "rev",
        CompKind::IdempotencyConflict => "conflict",
    };
    format!("{prefix}:{}:{}", cause.origin.as_str(), cause.seq)
}

/// An event's status as the model derives it (SPEC §5: "provisional, settled, or reversed
/// (with the id of the reversal)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// Above the watermark: not settled yet.
    Provisional,
    /// Settled and stands; `fee` is the id of the overdraft fee it caused, if any.
    Settled {
        /// `fee:<origin>:<seq>` when the fold charged a fee because of it.
        fee: Option<String>,
    },
    /// Settled and reversed by the fold.
    Reversed {
        /// `rev:<origin>:<seq>`.
        reversal: String,
    },
}

/// What the model derives from an event set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFold {
    /// The feed, in order: position `i` is `feed[i]`.
    pub feed: Vec<ModelComp>,
    /// The settled balance of every (account, currency) that has a transaction, after every
    /// settled event and compensation (zero for a pair with provisional events only).
    pub balances: BTreeMap<(AccountId, Currency), Decimal>,
    /// The provisional balance of every (account, currency) that has a transaction: the
    /// settled balance plus every provisional event (SPEC §4).
    pub provisional: BTreeMap<(AccountId, Currency), Decimal>,
    /// Every event's status, by id.
    pub statuses: BTreeMap<EventId, ModelStatus>,
    /// Non-duplicate settled debits that took the settled balance below the floor (reversed
    /// or not).
    pub overdrafts: u64,
    /// How many events are settled (at or below the watermark).
    pub settled: u64,
    /// Every (account, currency) with an open overdraft episode at the end of the settled
    /// fold, with the fees charged in it (the episode closes when the settled balance plus
    /// these fees is back at or above the floor, SPEC §6).
    pub open_episodes: BTreeMap<(AccountId, Currency), Decimal>,
    /// Episodes that closed on a balance (without their fees) exactly at the floor.
    pub closed_at_floor: u64,
    /// The causes counted in `overdrafts`, in order, each with its overdraft: the floor minus
    /// the settled balance right after it.
    pub overdrawn: Vec<(EventId, Decimal)>,
}

/// The rule in force for one (account, currency), made concrete for the currency: the line,
/// minimum, cap and grace rounded half away from zero to its minor units; `flat` and
/// `percent` exact (they enter the fee before its one rounding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRule<'p> {
    /// The rule it comes from.
    pub rule: &'p Rule,
    /// The currency it is applied to.
    pub currency: Currency,
    /// The currency's minor units, from the model's own table.
    pub minor_units: u32,
    /// `fee` or `reverse` below the floor (`beyond_line` is already folded in by the parser).
    pub action: Action,
    /// Minus the overdraft line.
    pub floor: Decimal,
    /// No fee when the overdrawn amount is at or below this.
    pub grace: Decimal,
    /// Lower bound of a charged fee.
    pub minimum: Decimal,
    /// Upper bound of a charged fee.
    pub cap: Option<Decimal>,
    /// Debit kinds `reverse` may cancel.
    pub reversible: &'p [Kind],
    /// Per debit or per episode.
    pub per: FeePer,
}

/// Minor units of an ISO-4217 currency, from the standard's list (SPEC §2 names USD 2,
/// JPY 0, BHD 3): the model's own table, not `Currency::minor_units`. Codes with other than
/// two minor units are listed; every other code has two.
pub fn model_minor_units(currency: Currency) -> u32 {
    match currency.as_str() {
        // Zero decimals.
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        // Three decimals.
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        // Four decimals.
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// SPEC §2: purchase and withdrawal take money out; deposit and refund put it in.
pub fn model_is_debit(kind: Kind) -> bool {
    match kind {
        Kind::Purchase | Kind::Withdrawal => true,
        Kind::Deposit | Kind::Refund => false,
    }
}

/// The total order of SPEC §2, `(hlc, origin, seq)`, compared the plain way: the HLC as the
/// `u64` it is, the origin by the bytes of its name, the seq as an integer.
pub fn model_order(a: &Event, b: &Event) -> Ordering {
    a.hlc
        .0
        .cmp(&b.hlc.0)
        .then_with(|| {
            a.id.origin
                .as_str()
                .as_bytes()
                .cmp(b.id.origin.as_str().as_bytes())
        })
        .then_with(|| a.id.seq.cmp(&b.id.seq))
}

/// An exact decimal as an integer count of 10^-MODEL_SCALE. Every amount the model meets has
/// at most 6 places (policy amounts and percent) or the currency's minor units; the percent
/// part of a fee at most 6 + 3 + 2 = 11.
const MODEL_SCALE: u32 = 12;

fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

fn units(d: Decimal) -> i128 {
    let (m, s) = (d.mantissa(), d.scale());
    assert!(
        s <= MODEL_SCALE,
        "model: scale {s} of {d} beyond the model's {MODEL_SCALE}"
    );
    m.checked_mul(pow10(MODEL_SCALE - s))
        .unwrap_or_else(|| panic!("model: {d} beyond i128 units"))
}

fn from_units(u: i128) -> Decimal {
    // Normalized so that equal values compare equal whatever their scale.
    Decimal::try_from_i128_with_scale(u, MODEL_SCALE)
        .unwrap_or_else(|_| panic!("model: {u} units beyond a Decimal"))
        .normalize()
}

/// Rounds an exact number of units half away from zero to `dp` decimal places.
fn round_units(u: i128, dp: u32) -> i128 {
    let step = pow10(MODEL_SCALE - dp);
    let (q, r) = (u / step, u % step);
    let q = if 2 * r.abs() >= step {
        q + u.signum()
    } else {
        q
    };
    q * step
}

/// `d` rounded half away from zero to `dp` places (by the model's integer rounding).
fn round_dp(d: Decimal, dp: u32) -> Decimal {
    from_units(round_units(units(d), dp))
}

/// The tier of an account: the first tier, by name, one of whose prefixes starts its id.
pub fn model_tier<'p>(policy: &'p Policy, account: &str) -> Option<&'p str> {
    // `tiers` is a BTreeMap of Strings: iterated in name (byte) order.
    policy
        .tiers
        .iter()
        .find(|(_, prefixes)| {
            prefixes
                .iter()
                .any(|p| account.as_bytes().starts_with(p.as_bytes()))
        })
        .map(|(name, _)| name.as_str())
}

/// The rule for an (account, currency), per SPEC §6 and docs/reconciliation.md §5: the most
/// specific rule wins: (tier, currency), then (tier, any), then (any, currency), then the
/// default (`rules[0]`).
///
/// Panics on a policy with no rules (it does not validate).
pub fn model_rule<'p>(policy: &'p Policy, account: &str, currency: Currency) -> ModelRule<'p> {
    let default = policy
        .rules
        .first()
        .expect("model: a policy without its default rule");
    let tier = model_tier(policy, account);
    let code = currency.as_str();
    let find = |t: Option<&str>, c: Option<&str>| {
        policy
            .rules
            .iter()
            .skip(1)
            .find(|r| r.tier.as_deref() == t && r.currency.as_ref().map(|x| x.as_str()) == c)
    };
    let specific = match tier {
        Some(t) => find(Some(t), Some(code)).or_else(|| find(Some(t), None)),
        None => None,
    };
    let rule = specific
        .or_else(|| find(None, Some(code)))
        .unwrap_or(default);
    let dp = model_minor_units(currency);
    ModelRule {
        rule,
        currency,
        minor_units: dp,
        action: rule.action,
        floor: -round_dp(rule.overdraft_line, dp),
        grace: round_dp(rule.fee.grace, dp),
        minimum: round_dp(rule.fee.minimum, dp),
        cap: rule.fee.cap.map(|c| round_dp(c, dp)),
        reversible: &rule.reversible,
        per: rule.fee.per,
    }
}

/// SPEC §6 fee arithmetic: flat + percent × overdrawn / 100, exact; rounded once, half away
/// from zero, to the currency's minor units; raised to the minimum, lowered to the cap. Zero
/// means no fee. (Whether a fee is due at all, the grace, is the fold's business.)
pub fn model_fee(rule: &ModelRule<'_>, overdrawn: Decimal) -> Decimal {
    let dp = rule.minor_units;
    // percent × overdrawn / 100 from the mantissas: (pm × om) × 10^-(ps + os + 2), exact.
    let percent = rule.rule.fee.percent;
    let (pm, ps) = (percent.mantissa(), percent.scale());
    let (om, os) = (overdrawn.mantissa(), overdrawn.scale());
    let scale = ps + os + 2;
    assert!(
        scale <= MODEL_SCALE,
        "model: percent {percent} of {overdrawn} has {scale} places"
    );
    let pct = pm
        .checked_mul(om)
        .and_then(|x| x.checked_mul(pow10(MODEL_SCALE - scale)))
        .unwrap_or_else(|| panic!("model: percent {percent} of {overdrawn} beyond i128"));
    let exact = units(rule.rule.fee.flat)
        .checked_add(pct)
        .unwrap_or_else(|| panic!("model: fee for {overdrawn} beyond i128"));
    let mut fee = round_units(exact, dp);
    let minimum = units(rule.minimum);
    if fee < minimum {
        fee = minimum;
    }
    if let Some(cap) = rule.cap.map(units) {
        if fee > cap {
            fee = cap;
        }
    }
    from_units(fee)
}

/// Fold state of one (account, currency).
#[derive(Clone)]
struct Pair {
    account: AccountId,
    currency: Currency,
    /// Settled balance.
    bal: Decimal,
    /// Sum of the provisional events.
    pending: Decimal,
    in_episode: bool,
    /// A fee was charged in the open episode.
    charged: bool,
    /// The fees charged in the open episode: they never extend it.
    episode_fees: Decimal,
}

fn add(a: Decimal, b: Decimal) -> Decimal {
    a.checked_add(b).unwrap_or_else(|| {
        panic!("model: {a} + {b} overflows (the overflow freeze is not modelled)")
    })
}

/// Same body for idempotency (SPEC §5): kind, amount, currency, reference, field by field.
fn same_body_parts(
    kind: Kind,
    amount: Decimal,
    currency: Currency,
    reference: Option<&str>,
    b: &Tx,
) -> bool {
    kind == b.kind
        && amount == b.amount.value()
        && currency.as_str() == b.currency.as_str()
        && reference == b.reference.as_deref()
}

/// The signed effect of a transaction on its balance.
fn signed(tx: &Tx) -> Decimal {
    let amount = tx.amount.value();
    if model_is_debit(tx.kind) {
        -amount
    } else {
        amount
    }
}

/// [`model_at`] with every event settled: the fold of a fully settled history.
pub fn model<'a, I>(seed: &Policy, events: I) -> ModelFold
where
    I: IntoIterator<Item = &'a Event>,
{
    model_at(seed, events, None)
}

/// Folds one region's view from scratch: `events` are the events it holds (any order),
/// `watermark` its stability watermark (`None`: everything is settled). The events at or
/// below the watermark are settled (SPEC §5) and folded in total order `(hlc, origin, seq)`
/// with the seed policy as version 1 (each settled policy event is the next version, in force
/// after it); the others are provisional: they count in the provisional balance only.
///
/// For each settled transaction, in order (docs/reconciliation.md §2):
/// - a **duplicate** when any earlier event of its account with the same idempotency key has
///   the same body: reversed (−delta), never counts against the floor;
/// - otherwise, if an earlier holder of the key exists, a **conflict** reported against the
///   first of them (after the event's own compensation, if any);
/// - a non-duplicate debit that takes the settled balance below the floor is an overdraft:
///   reversed when the rule says `reverse` and its kind is reversible, else fee rules with
///   episodes (opened by such a debit, closed when the balance without the episode's fees is
///   back at or above the floor);
/// - a fee is due when the overdrawn amount `min(floor − after, amount)` exceeds the grace and
///   (per debit, or no fee yet in the episode), and is charged when it is above zero.
///
/// Panics on impossible input: two events with the same id, a policy without a default.
pub fn model_at<'a, I>(seed: &Policy, events: I, watermark: Option<Hlc>) -> ModelFold
where
    I: IntoIterator<Item = &'a Event>,
{
    model_retained(seed, events, watermark, u64::MAX)
}

/// A holder of an idempotency key: its HLC milliseconds, body (what [`same_body_parts`] compares:
/// kind, amount value, currency, reference) and id.
#[derive(Clone)]
struct Holder {
    ms: u64,
    kind: Kind,
    amount: Decimal,
    currency: Currency,
    reference: Option<Box<str>>,
    id: EventId,
}

impl Holder {
    /// Same body as `tx` for idempotency (SPEC §5).
    fn same_body(&self, tx: &Tx) -> bool {
        same_body_parts(
            self.kind,
            self.amount,
            self.currency,
            self.reference.as_deref(),
            tx,
        )
    }
}

/// [`model_at`] with an idempotency key retention of `retention_ms` (issue 13): an earlier
/// holder of a key counts (as the original of a duplicate, or the first of a conflict) only
/// when the later event's HLC milliseconds are less than the holder's plus `retention_ms`.
/// A copy at or past that edge is a new transaction.
pub fn model_retained<'a, I>(
    seed: &Policy,
    events: I,
    watermark: Option<Hlc>,
    retention_ms: u64,
) -> ModelFold
where
    I: IntoIterator<Item = &'a Event>,
{
    let mut order: Vec<&Event> = events.into_iter().collect();
    order.sort_by(|a, b| model_order(a, b));
    let mut ids: BTreeSet<(&[u8], u64)> = BTreeSet::new();
    for e in &order {
        if !ids.insert((e.id.origin.as_str().as_bytes(), e.id.seq)) {
            panic!("model: event {} given twice", e.id);
        }
    }
    let settled_upto = watermark.map(|w| w.0);
    let mut state = ModelState::new(seed, retention_ms, true);
    for e in order {
        if settled_upto.is_none_or(|w| e.hlc.0 <= w) {
            state.settle(e);
        } else {
            state.pend(e);
        }
    }
    state.finish()
}

/// The value of `key` in `map`, inserted empty when missing (looked up once).
fn slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    map.entry(key.to_string()).or_default()
}

/// The settled fold of [`model_retained`] as a state that takes one event at a time: what
/// the model computes is only ever computed here, whether it refolds a whole event set or
/// is fed a growing settled prefix (the simulator keeps one per region and feeds it the
/// events a watermark passes, [`ModelState::settle`] in total order: the caller checks the
/// order with [`ModelState::follows`] and starts afresh when an event would not come last).
/// `record: false` keeps only what the balances and episodes need (no statuses, no feed
/// entries; the feed is counted).
#[derive(Clone)]
pub struct ModelState {
    /// The seed (version 1) and each settled policy event after it, in order.
    policies: Vec<Policy>,
    /// By account text, then currency code.
    pairs: BTreeMap<String, BTreeMap<String, Pair>>,
    /// Every earlier event holding each key, by account text then key, in total order: the
    /// SPEC's `earlier`.
    holders: BTreeMap<String, BTreeMap<String, Vec<Holder>>>,
    retention_ms: u64,
    record: bool,
    feed_len: u64,
    /// The last event settled: `(hlc, origin name bytes, seq)`.
    last: Option<(u64, Vec<u8>, u64)>,
    out: ModelFold,
}

impl ModelState {
    /// An empty fold under the seed policy.
    pub fn new(seed: &Policy, retention_ms: u64, record: bool) -> Self {
        ModelState {
            policies: vec![seed.clone()],
            pairs: BTreeMap::new(),
            holders: BTreeMap::new(),
            retention_ms,
            record,
            feed_len: 0,
            last: None,
            out: ModelFold::default(),
        }
    }

    /// `e` comes after every event settled so far in the total order (`model_order`).
    pub fn follows(&self, e: &Event) -> bool {
        match &self.last {
            None => true,
            Some((h, o, q)) => e
                .hlc
                .0
                .cmp(h)
                .then_with(|| e.id.origin.as_str().as_bytes().cmp(o))
                .then_with(|| e.id.seq.cmp(q))
                .is_gt(),
        }
    }

    /// Events settled so far.
    pub fn settled(&self) -> u64 {
        self.out.settled
    }

    /// Feed entries so far (fees, reversals, conflict reports).
    pub fn feed_len(&self) -> u64 {
        self.feed_len
    }

    /// The settled balance of (account, currency) and, when an overdraft episode is open,
    /// the fees charged in it (SPEC §6); `None` for a pair with no settled transaction yet
    /// or a provisional one only (balance zero).
    pub fn pair(&self, account: &str, currency: Currency) -> Option<(Decimal, Option<Decimal>)> {
        let p = self.pairs.get(account)?.get(currency.as_str())?;
        Some((p.bal, p.in_episode.then_some(p.episode_fees)))
    }

    /// The provisional balance of (account, currency) (SPEC §4): its settled balance plus
    /// every transaction of that pair in `above` (events above the watermark); `None` for a
    /// pair with no settled transaction.
    pub fn provisional<'a>(
        &self,
        account: &str,
        currency: Currency,
        above: impl IntoIterator<Item = &'a Event>,
    ) -> Option<Decimal> {
        let (bal, _) = self.pair(account, currency)?;
        Some(
            above
                .into_iter()
                .filter_map(|e| e.tx())
                .filter(|tx| {
                    tx.account.as_str() == account && tx.currency.as_str() == currency.as_str()
                })
                .fold(bal, |acc, tx| add(acc, signed(tx))),
        )
    }

    /// Every (account, currency) with a transaction and its settled balance.
    pub fn balances(&self) -> impl Iterator<Item = ((AccountId, Currency), Decimal)> + '_ {
        self.pairs
            .values()
            .flat_map(|m| m.values())
            .map(|p| ((p.account.clone(), p.currency), p.bal))
    }

    fn pair_mut(&mut self, tx: &Tx) -> &mut Pair {
        slot(&mut self.pairs, tx.account.as_str())
            .entry(tx.currency.as_str().to_string())
            .or_insert_with(|| Pair {
                account: tx.account.clone(),
                currency: tx.currency,
                bal: Decimal::ZERO,
                pending: Decimal::ZERO,
                in_episode: false,
                charged: false,
                episode_fees: Decimal::ZERO,
            })
    }

    /// A provisional event (above the watermark): it counts in the provisional balance only.
    pub fn pend(&mut self, e: &Event) {
        if self.record {
            self.out.statuses.insert(e.id, ModelStatus::Provisional);
        }
        if let Body::Tx(tx) = &e.body {
            let delta = signed(tx);
            let p = self.pair_mut(tx);
            p.pending = add(p.pending, delta);
        }
    }

    /// Settles `e`, the next event in total order (docs in [`model_at`]).
    pub fn settle(&mut self, e: &Event) {
        self.last = Some((e.hlc.0, e.id.origin.as_str().as_bytes().to_vec(), e.id.seq));
        self.out.settled += 1;
        let tx = match &e.body {
            // Policy and membership changes, home moves and rights transfers move no money;
            // they settle like any event, and a settled policy applies from its place in the
            // order.
            Body::Policy(_) | Body::Membership(_) | Body::Account(_) => {
                if let Body::Policy(p) = &e.body {
                    self.policies.push((**p).clone());
                }
                if self.record {
                    self.out
                        .statuses
                        .insert(e.id, ModelStatus::Settled { fee: None });
                }
                return;
            }
            Body::Tx(tx) => tx,
        };
        let delta = signed(tx);
        let version =
            u32::try_from(self.policies.len()).expect("model: policy versions beyond u32");
        let (duplicate, conflict) = match &tx.idempotency_key {
            Some(k) => {
                let retention_ms = self.retention_ms;
                let ms = e.hlc.0 >> 16;
                let earlier = slot(slot(&mut self.holders, tx.account.as_str()), k);
                let live = |h: &&Holder| ms < h.ms.saturating_add(retention_ms);
                let duplicate = earlier.iter().filter(live).any(|h| h.same_body(tx));
                let conflict = if duplicate {
                    None
                } else {
                    earlier.iter().find(live).map(|h| h.id)
                };
                earlier.push(Holder {
                    ms,
                    kind: tx.kind,
                    amount: tx.amount.value(),
                    currency: tx.currency,
                    reference: tx.reference.clone(),
                    id: e.id,
                });
                (duplicate, conflict)
            }
            None => (false, None),
        };
        let policy = &self.policies[self.policies.len() - 1];
        let rule = model_rule(policy, tx.account.as_str(), tx.currency);
        let (floor, grace, action, reversible, per) = (
            rule.floor,
            rule.grace,
            rule.action,
            rule.reversible.contains(&tx.kind),
            rule.per,
        );
        let amount = tx.amount.value();
        let mut overdraft = None;
        let mut comp = None;
        let mut fee_rule = None;
        {
            let p = self.pair_mut(tx);
            p.bal = add(p.bal, delta);
            if duplicate {
                comp = Some((CompKind::Reversal, -delta));
            } else if model_is_debit(tx.kind) && p.bal < floor {
                overdraft = Some(floor - p.bal);
                let overdrawn = (floor - p.bal).min(amount);
                if action == Action::Reverse && reversible {
                    comp = Some((CompKind::Reversal, amount));
                } else {
                    if !p.in_episode {
                        p.in_episode = true;
                        p.charged = false;
                        p.episode_fees = Decimal::ZERO;
                    }
                    // Nothing when the overdrawn amount is at or below the grace.
                    let due = overdrawn > grace && (per == FeePer::Debit || !p.charged);
                    if due {
                        fee_rule = Some(overdrawn);
                    }
                }
            } else if p.in_episode && add(p.bal, p.episode_fees) >= floor {
                p.in_episode = false;
                if add(p.bal, p.episode_fees) == floor {
                    self.out.closed_at_floor += 1;
                }
            }
        }
        if let Some(overdrawn) = fee_rule {
            let policy = &self.policies[self.policies.len() - 1];
            let rule = model_rule(policy, tx.account.as_str(), tx.currency);
            let fee = model_fee(&rule, overdrawn);
            if fee > Decimal::ZERO {
                let p = self.pair_mut(tx);
                p.charged = true;
                p.episode_fees = add(p.episode_fees, fee);
                comp = Some((CompKind::OverdraftFee, -fee));
            }
        }
        if let Some(o) = overdraft {
            self.out.overdrafts += 1;
            if self.record {
                self.out.overdrawn.push((e.id, o));
            }
        }
        if let Some((_, d)) = comp {
            let p = self.pair_mut(tx);
            p.bal = add(p.bal, d);
        }
        self.feed_len += u64::from(comp.is_some()) + u64::from(conflict.is_some());
        if !self.record {
            return;
        }
        let status = match comp {
            Some((CompKind::Reversal, _)) => ModelStatus::Reversed {
                reversal: model_comp_id(CompKind::Reversal, e.id),
            },
            Some((CompKind::OverdraftFee, _)) => ModelStatus::Settled {
                fee: Some(model_comp_id(CompKind::OverdraftFee, e.id)),
            },
            _ => ModelStatus::Settled { fee: None },
        };
        self.out.statuses.insert(e.id, status);
        if let Some((kind, d)) = comp {
            self.out.feed.push(ModelComp {
                kind,
                cause: e.id,
                hlc: e.hlc,
                delta: d,
                related: None,
                version,
                account: tx.account.clone(),
                currency: tx.currency,
                duplicate,
            });
        }
        if let Some(first) = conflict {
            self.out.feed.push(ModelComp {
                kind: CompKind::IdempotencyConflict,
                cause: e.id,
                hlc: e.hlc,
                delta: Decimal::ZERO,
                related: Some(first),
                version,
                account: tx.account.clone(),
                currency: tx.currency,
                duplicate: false,
            });
        }
    }

    /// The fold so far: balances, provisional balances and open episodes of every pair.
    pub fn finish(self) -> ModelFold {
        let mut out = self.out;
        for p in self.pairs.into_values().flat_map(BTreeMap::into_values) {
            let key = (p.account, p.currency);
            if p.in_episode {
                out.open_episodes.insert(key.clone(), p.episode_fees);
            }
            out.provisional.insert(key.clone(), add(p.bal, p.pending));
            out.balances.insert(key, p.bal);
        }
        out
    }
}

/// What the consistency modes promise (SPEC §8, §9.4), checked on a whole, settled history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelModes {
    /// Every broken promise, described.
    pub violations: Vec<String>,
    /// (account, currency) pairs under a strict mode (home, or escrow with `refuse`) in every
    /// policy version of the history, with the same floor: the pairs the promises cover.
    pub strict_pairs: u64,
    /// Client debits of home-mode pairs, each checked against the home's tenure.
    pub home_debits: u64,
    /// Every region's rights per pair ([`model_rights`]).
    pub rights: BTreeMap<(AccountId, Currency), BTreeMap<crate::id::RegionId, Decimal>>,
}

/// SPEC §8 and §9.4 on a whole history (every event settled), for the pairs whose rule is
/// the same strict mode, with the same floor, under the seed and every policy event (a pair
/// whose mode or floor changed is out of scope: a region may decide under the old version
/// while the fold applies the new one):
/// - **no client debit overdraws**: no non-duplicate debit takes the settled balance below
///   the floor (`overdrawn` of [`model`]), so no fee and no reversal of a debit;
/// - **home: one decider at a time**: the homes of a pair are the policy's home (epoch 0)
///   and the `to` of each home move in epoch order (1, 2, ...; a move of epoch e ≥ 2 counts
///   only if issued by the home of epoch e − 1). A debit of origin O is legitimate only in
///   O's tenure as home of some epoch e: after the move that made O home (its HLC is above
///   that move's, since O decides only once it holds the move) and before O's own move away
///   (its seq is below that move's in O's log).
pub fn model_modes<'a, I>(seed: &Policy, events: I) -> ModelModes
where
    I: IntoIterator<Item = &'a Event>,
{
    model_modes_retained(seed, events, u64::MAX)
}

/// [`model_modes`] with an idempotency key retention of `retention_ms` (issue 13; see
/// [`model_retained`]): a keyed credit copied past the retention is a new transaction, not a
/// reversed duplicate, so it grants rights like any credit.
pub fn model_modes_retained<'a, I>(seed: &Policy, events: I, retention_ms: u64) -> ModelModes
where
    I: IntoIterator<Item = &'a Event>,
{
    let mut order: Vec<&Event> = events.into_iter().collect();
    order.sort_by(|a, b| model_order(a, b));
    let mut policies: Vec<&Policy> = vec![seed];
    policies.extend(order.iter().filter_map(|e| match &e.body {
        Body::Policy(p) => Some(&**p),
        _ => None,
    }));
    let fold = model_retained(seed, order.iter().copied(), None, retention_ms);
    let overdrawn: BTreeMap<EventId, Decimal> = fold.overdrawn.iter().copied().collect();
    // Fees charged so far per pair, in order (the hybrid's bound allows for them).
    let fee_of: BTreeMap<EventId, Decimal> = fold
        .feed
        .iter()
        .filter(|c| c.kind == CompKind::OverdraftFee)
        .map(|c| (c.cause, -c.delta))
        .collect();
    let mut fees_so_far: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
    let mut out = ModelModes::default();
    // Per pair, its home moves by epoch (the first in the order for an epoch).
    let mut moves_by_pair: BTreeMap<(&str, &str), BTreeMap<u64, &Event>> = BTreeMap::new();
    for m in &order {
        if let Body::Account(op) = &m.body {
            if let AccountOp::HomeMove {
                account,
                currency,
                epoch,
                ..
            } = &**op
            {
                moves_by_pair
                    .entry((account.as_str(), currency.as_str()))
                    .or_default()
                    .entry(*epoch)
                    .or_insert(m);
            }
        }
    }
    // Per pair: the mode if the same one (and the same floor) throughout, and not
    // optimistic.
    let mut strict: BTreeMap<(&str, &str), Option<Mode>> = BTreeMap::new();
    for e in &order {
        let Body::Tx(tx) = &e.body else { continue };
        let pair = (tx.account.as_str(), tx.currency.as_str());
        let fees_before = fees_so_far.get(&pair).copied().unwrap_or_default();
        if let Some(f) = fee_of.get(&e.id) {
            *fees_so_far.entry(pair).or_default() = add(fees_before, *f);
        }
        let mode = strict.entry(pair).or_insert_with(|| {
            let rules: Vec<ModelRule<'_>> = policies
                .iter()
                .map(|p| model_rule(p, pair.0, tx.currency))
                .collect();
            let first = &rules[0];
            let same = rules
                .iter()
                .all(|r| r.rule.mode == first.rule.mode && r.floor == first.floor);
            (same && first.rule.mode != Mode::Optimistic).then(|| first.rule.mode.clone())
        });
        let Some(mode) = mode.clone() else { continue };
        if !model_is_debit(tx.kind) {
            continue;
        }
        if let (
            Mode::Escrow {
                fallback: crate::policy::Fallback::Optimistic,
                risk_limit,
                ..
            },
            Some(over),
        ) = (&mode, overdrawn.get(&e.id))
        {
            // The hybrid: the overdraft never exceeds the risk limit (plus the fees the
            // policy charged on the account before, which no region decided).
            let limit = add(
                round_dp(*risk_limit, model_minor_units(tx.currency)),
                fees_before,
            );
            if *over > limit {
                out.violations.push(format!(
                    "{} ({} {} on {}) overdrew by {over}, beyond the risk limit {risk_limit} \
                     (and fees {fees_before})",
                    e.id,
                    tx.kind.as_str(),
                    tx.amount.value(),
                    pair.0
                ));
            }
        }
        if !mode.is_strict() {
            continue;
        }
        if overdrawn.contains_key(&e.id) {
            out.violations.push(format!(
                "{} ({} {} on {}, {}) took the settled balance below the floor",
                e.id,
                tx.kind.as_str(),
                tx.amount.value(),
                pair.0,
                mode.name()
            ));
        }
        if let Mode::Home { home } = mode {
            out.home_debits += 1;
            let moves = moves_by_pair.get(&pair);
            let mut chain: Vec<(&str, Option<&Event>)> = vec![(home.as_str(), None)];
            for (epoch, m) in moves.into_iter().flatten() {
                let (prev, _) = chain[chain.len() - 1];
                if *epoch != chain.len() as u64 || (*epoch > 1 && m.id.origin.as_str() != prev) {
                    break;
                }
                let Body::Account(op) = &m.body else { break };
                let AccountOp::HomeMove { to, .. } = &**op else {
                    break;
                };
                chain.push((to.as_str(), Some(*m)));
            }
            let origin = e.id.origin.as_str();
            let legit = chain.iter().enumerate().any(|(k, (h, since))| {
                *h == origin
                    && since.is_none_or(|m| e.hlc.0 > m.hlc.0)
                    && chain.get(k + 1).is_none_or(|(_, away)| {
                        away.is_some_and(|a| a.id.origin.as_str() == origin && e.id.seq < a.id.seq)
                    })
            });
            if !legit {
                let homes: Vec<&str> = chain.iter().map(|(h, _)| *h).collect();
                out.violations.push(format!(
                    "{} (a debit on {} {}) was decided by {origin}, not by the home of its \
                     time (homes by epoch: {homes:?})",
                    e.id, pair.0, pair.1
                ));
            }
        }
    }
    out.strict_pairs = strict
        .values()
        .filter(|m| m.as_ref().is_some_and(Mode::is_strict))
        .count() as u64;
    // Rights (escrow, docs/modes.md): they sum to the settled balance of every pair; under
    // escrow with `refuse` throughout, no region's are negative.
    let rights = model_rights(&fold, order.iter().copied());
    for ((account, currency), per) in &rights {
        let sum = per.values().fold(Decimal::ZERO, |a, b| add(a, *b));
        let balance = fold
            .balances
            .get(&(account.clone(), *currency))
            .copied()
            .unwrap_or_default();
        if sum != balance {
            out.violations.push(format!(
                "rights of {account} {currency:?} sum to {sum}, the settled balance is {balance}"
            ));
        }
        let refuse = strict
            .get(&(account.as_str(), currency.as_str()))
            .and_then(Option::as_ref)
            .is_some_and(|m| matches!(m, Mode::Escrow { .. }) && m.is_strict());
        if refuse {
            if let Some((r, v)) = per.iter().find(|(_, v)| **v < Decimal::ZERO) {
                out.violations.push(format!(
                    "escrow with refuse: {r} holds {v} rights of {account} {currency:?}"
                ));
            }
        }
    }
    out.rights = rights;
    out
}

/// Every region's spending rights per (account, currency) on a whole, settled history, by the
/// rules of SPEC §8 and docs/modes.md: a debit takes them from its origin; a credit gives
/// them to its origin (a credit with an idempotency key only if not reversed as a duplicate:
/// it could have been, until settled); a fee or a reversal of a debit moves its cause's
/// origin's; a transfer moves them from its issuer to its target. `fold` is [`model`] of
/// the same events.
pub fn model_rights<'a, I>(
    fold: &ModelFold,
    events: I,
) -> BTreeMap<(AccountId, Currency), BTreeMap<crate::id::RegionId, Decimal>>
where
    I: IntoIterator<Item = &'a Event>,
{
    let comps: BTreeMap<EventId, &ModelComp> = fold
        .feed
        .iter()
        .filter(|c| c.kind != CompKind::IdempotencyConflict)
        .map(|c| (c.cause, c))
        .collect();
    let mut out: BTreeMap<(AccountId, Currency), BTreeMap<crate::id::RegionId, Decimal>> =
        BTreeMap::new();
    let mut put = |a: &AccountId, c: Currency, r: crate::id::RegionId, d: Decimal| {
        let v = out.entry((a.clone(), c)).or_default().entry(r).or_default();
        *v = add(*v, d);
    };
    for e in events {
        match &e.body {
            Body::Tx(tx) => {
                let comp = comps.get(&e.id);
                let keyed_credit = !model_is_debit(tx.kind) && tx.idempotency_key.is_some();
                if keyed_credit && comp.is_some_and(|c| c.duplicate) {
                    continue; // reversed: it never granted rights
                }
                put(&tx.account, tx.currency, e.id.origin, signed(tx));
                if let Some(c) = comp {
                    put(&tx.account, tx.currency, e.id.origin, c.delta);
                }
            }
            Body::Account(op) => {
                if let AccountOp::RightsTransfer {
                    account,
                    currency,
                    amount,
                    to,
                } = &**op
                {
                    put(account, *currency, e.id.origin, -amount.value());
                    put(account, *currency, *to, amount.value());
                }
            }
            Body::Policy(_) | Body::Membership(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RegionId;
    use crate::money::Amount;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn id(origin: &str, seq: u64) -> EventId {
        EventId {
            origin: RegionId::new(origin).unwrap(),
            seq,
        }
    }

    /// A transaction event at `hlc`.
    fn ev(
        id: EventId,
        hlc: u64,
        account: &str,
        kind: Kind,
        amount: &str,
        currency: Currency,
        key: Option<&str>,
    ) -> Event {
        Event {
            id,
            hlc: Hlc(hlc),
            body: Body::Tx(Tx {
                account: AccountId::new(account).unwrap(),
                kind,
                amount: Amount::parse(amount, currency).unwrap(),
                currency,
                idempotency_key: key.map(Into::into),
                reference: None,
            }),
            sig: Box::new([]),
        }
    }

    fn usd(origin: &str, seq: u64, hlc: u64, kind: Kind, amount: &str) -> Event {
        ev(
            id(origin, seq),
            hlc,
            "alice",
            kind,
            amount,
            Currency::USD,
            None,
        )
    }

    /// A keyed transaction of alice in USD, key "k".
    fn keyed(id: EventId, hlc: u64, kind: Kind, amount: &str) -> Event {
        ev(id, hlc, "alice", kind, amount, Currency::USD, Some("k"))
    }

    fn policy(toml: &str) -> Policy {
        Policy::from_toml(toml).unwrap()
    }

    fn comp(kind: CompKind, cause: &Event, delta: &str) -> ModelComp {
        ModelComp {
            kind,
            cause: cause.id,
            hlc: cause.hlc,
            delta: d(delta),
            related: None,
            version: 1,
            account: AccountId::new("alice").unwrap(),
            currency: Currency::USD,
            duplicate: false,
        }
    }

    fn balance(m: &ModelFold, account: &str, c: Currency) -> Decimal {
        m.balances[&(AccountId::new(account).unwrap(), c)]
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let r = |s: &str, dp| from_units(round_units(units(d(s)), dp));
        assert_eq!(r("1.005", 2), d("1.01"));
        assert_eq!(r("1.0049", 2), d("1.00"));
        assert_eq!(r("-1.005", 2), d("-1.01"));
        assert_eq!(r("2.5", 0), d("3"));
        assert_eq!(r("-2.5", 0), d("-3"));
        assert_eq!(r("2.4999", 0), d("2"));
        assert_eq!(r("0.0005", 3), d("0.001"));
    }

    #[test]
    fn three_region_duplicate_behind_a_conflict_is_reversed() {
        // docs/reconciliation.md §4: A 10.00, B 20.00, C 20.00, all key k, in that order.
        let a = keyed(id("eu", 2), 10, Kind::Purchase, "10.00");
        let b = keyed(id("us", 1), 20, Kind::Purchase, "20.00");
        let c = keyed(id("ap", 1), 30, Kind::Purchase, "20.00");
        let dep = usd("eu", 1, 5, Kind::Deposit, "100");
        // Given out of order: the model sorts.
        let m = model(&Policy::zero(), [&c, &a, &dep, &b]);
        let mut conflict = comp(CompKind::IdempotencyConflict, &b, "0");
        conflict.related = Some(a.id);
        let mut rev = comp(CompKind::Reversal, &c, "20.00");
        rev.duplicate = true;
        assert_eq!(m.feed, vec![conflict, rev]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("70"));
        assert_eq!(m.overdrafts, 0);
    }

    #[test]
    fn a_copy_at_the_retention_edge_is_a_new_transaction() {
        // Retention 1000 ms: b is 999 ms after a (a duplicate), c exactly 1000 ms after b and
        // 1999 after a (new), d another body 1 ms after c (a conflict with c, not with a).
        let ms = |m: u64| m << 16;
        let a = keyed(id("eu", 1), ms(10), Kind::Deposit, "5");
        let b = keyed(id("us", 1), ms(1_009), Kind::Deposit, "5");
        let c = keyed(id("us", 2), ms(2_009), Kind::Deposit, "5");
        let dd = keyed(id("eu", 2), ms(2_010), Kind::Deposit, "6");
        let m = model_retained(&Policy::zero(), [&a, &b, &c, &dd], None, 1_000);
        let mut rev = comp(CompKind::Reversal, &b, "-5");
        rev.duplicate = true;
        let mut conflict = comp(CompKind::IdempotencyConflict, &dd, "0");
        conflict.related = Some(c.id);
        assert_eq!(m.feed, vec![rev, conflict]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("16"));
        // With no retention limit, c is a duplicate of a, and d conflicts with a.
        let m = model(&Policy::zero(), [&a, &b, &c, &dd]);
        assert_eq!(m.feed.len(), 3);
        assert_eq!(m.feed[2].related, Some(a.id));
    }

    #[test]
    fn a_key_on_another_account_is_no_duplicate() {
        let k = Some("k");
        let a = keyed(id("eu", 1), 10, Kind::Deposit, "5");
        let b = ev(id("us", 1), 20, "bob", Kind::Deposit, "5", Currency::USD, k);
        let m = model(&Policy::zero(), [&a, &b]);
        assert!(m.feed.is_empty());
    }

    #[test]
    fn a_duplicate_credit_is_reversed_with_a_minus() {
        let a = keyed(id("eu", 1), 10, Kind::Deposit, "5");
        let b = keyed(id("us", 1), 10, Kind::Deposit, "5.00");
        let m = model(&Policy::zero(), [&b, &a]);
        // Same HLC: eu < us by origin.
        let mut rev = comp(CompKind::Reversal, &b, "-5");
        rev.duplicate = true;
        assert_eq!(m.feed, vec![rev]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("5"));
    }

    #[test]
    fn a_reversed_duplicate_debit_does_not_count_against_the_floor() {
        let p = policy("[default]\naction = \"fee\"\nfee = { flat = \"5\" }\n");
        let dep = usd("eu", 1, 1, Kind::Deposit, "10");
        let a = keyed(id("eu", 2), 10, Kind::Purchase, "8");
        let b = keyed(id("us", 1), 20, Kind::Purchase, "8");
        let m = model(&p, [&dep, &a, &b]);
        let mut rev = comp(CompKind::Reversal, &b, "8");
        rev.duplicate = true;
        assert_eq!(m.feed, vec![rev]);
        assert_eq!(m.overdrafts, 0);
        assert_eq!(balance(&m, "alice", Currency::USD), d("2"));
    }

    #[test]
    fn wildcard_flat_is_added_exactly_then_rounded_once() {
        // docs/reconciliation.md §5: flat 1.004 + 0.3 % of 1.00 USD = 1.007 -> 1.01.
        let p =
            policy("[default]\naction = \"fee\"\nfee = { flat = \"1.004\", percent = \"0.3\" }\n");
        let r = model_rule(&p, "alice", Currency::USD);
        assert_eq!(model_fee(&r, d("1.00")), d("1.01"));
        let e = usd("eu", 1, 1, Kind::Purchase, "1.00");
        let m = model(&p, [&e]);
        assert_eq!(m.feed, vec![comp(CompKind::OverdraftFee, &e, "-1.01")]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("-2.01"));
        assert_eq!(m.overdrafts, 1);
        // flat 2.4 + 1 % of 40 JPY = 2.8 -> 3.
        let p = policy("[default]\naction = \"fee\"\nfee = { flat = \"2.4\", percent = \"1\" }\n");
        let r = model_rule(&p, "alice", Currency::JPY);
        assert_eq!(model_fee(&r, d("40")), d("3"));
        let e = ev(
            id("eu", 1),
            1,
            "alice",
            Kind::Purchase,
            "40",
            Currency::JPY,
            None,
        );
        let m = model(&p, [&e]);
        assert_eq!(m.feed.len(), 1);
        assert_eq!(m.feed[0].delta, d("-3"));
        assert_eq!(m.feed[0].currency, Currency::JPY);
        assert_eq!(balance(&m, "alice", Currency::JPY), d("-43"));
    }

    #[test]
    fn minimum_and_cap_are_rounded_to_the_currency_then_applied() {
        let p = policy(
            "[default]\naction = \"fee\"\nfee = { percent = \"10\", minimum = \"2.50\", cap = \"7.5\" }\n",
        );
        let r = model_rule(&p, "alice", Currency::JPY);
        assert_eq!(r.minimum, d("3"));
        assert_eq!(r.cap, Some(d("8")));
        assert_eq!(model_fee(&r, d("10")), d("3")); // 1 -> minimum 3
        assert_eq!(model_fee(&r, d("60")), d("6"));
        assert_eq!(model_fee(&r, d("1000")), d("8")); // 100 -> cap 8
    }

    #[test]
    fn an_overdrawn_amount_equal_to_the_grace_pays_nothing() {
        let p = policy(
            "[default]\naction = \"fee\"\nfee = { flat = \"1\", grace = \"10.00\", per = \"debit\" }\n",
        );
        let dep = usd("eu", 1, 1, Kind::Deposit, "5");
        let at = usd("eu", 2, 2, Kind::Purchase, "15.00"); // overdrawn 10.00: no fee
        let cover = usd("eu", 3, 3, Kind::Deposit, "10.00");
        let beyond = usd("eu", 4, 4, Kind::Purchase, "10.01"); // overdrawn 10.01: fee
        let m = model(&p, [&dep, &at, &cover, &beyond]);
        assert_eq!(m.feed, vec![comp(CompKind::OverdraftFee, &beyond, "-1")]);
        assert_eq!(m.overdrafts, 2);
        assert_eq!(balance(&m, "alice", Currency::USD), d("-11.01"));
    }

    #[test]
    fn overdrawn_is_capped_at_the_debit_amount() {
        // Already at -50: a debit of 1 is overdrawn by 1, not 51.
        let p = policy("[default]\naction = \"fee\"\nfee = { percent = \"100\" }\n");
        let a = usd("eu", 1, 1, Kind::Withdrawal, "50");
        let b = usd("eu", 2, 2, Kind::Withdrawal, "1");
        let m = model(&p, [&a, &b]);
        assert_eq!(
            m.feed,
            vec![
                comp(CompKind::OverdraftFee, &a, "-50"),
                comp(CompKind::OverdraftFee, &b, "-1"),
            ]
        );
    }

    #[test]
    fn reverse_cancels_reversible_debits_and_falls_back_to_a_fee() {
        let p = policy("[default]\naction = \"reverse\"\nfee = { flat = \"2\" }\n");
        let dep = usd("eu", 1, 1, Kind::Deposit, "10");
        let buy = usd("eu", 2, 2, Kind::Purchase, "15");
        let out = usd("eu", 3, 3, Kind::Withdrawal, "15");
        let m = model(&p, [&dep, &buy, &out]);
        assert_eq!(
            m.feed,
            vec![
                comp(CompKind::Reversal, &buy, "15"),
                comp(CompKind::OverdraftFee, &out, "-2"),
            ]
        );
        assert_eq!(m.overdrafts, 2);
        assert_eq!(balance(&m, "alice", Currency::USD), d("-7"));
    }

    #[test]
    fn within_the_line_nothing_happens_beyond_it_reverse_by_default() {
        let p = policy("[default]\noverdraft_line = \"20\"\n");
        let r = model_rule(&p, "alice", Currency::USD);
        assert_eq!((r.floor, r.action), (d("-20"), Action::Reverse));
        let a = usd("eu", 1, 1, Kind::Purchase, "20");
        let b = usd("eu", 2, 2, Kind::Purchase, "0.01");
        let m = model(&p, [&a, &b]);
        assert_eq!(m.feed, vec![comp(CompKind::Reversal, &b, "0.01")]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("-20"));
    }

    #[test]
    fn one_fee_per_episode_and_fees_never_extend_it() {
        let p = policy("[default]\naction = \"fee\"\nfee = { flat = \"5\", per = \"episode\" }\n");
        let e1 = usd("eu", 1, 1, Kind::Withdrawal, "10"); // opens, fee 5 -> -15
        let e2 = usd("eu", 2, 2, Kind::Withdrawal, "10"); // same episode, no fee -> -25
        let e3 = usd("eu", 3, 3, Kind::Deposit, "20"); // -5; without fees 0: closes
        let e4 = usd("eu", 4, 4, Kind::Withdrawal, "1"); // new episode, fee -> -11
        let m = model(&p, [&e1, &e2, &e3, &e4]);
        assert_eq!(
            m.feed,
            vec![
                comp(CompKind::OverdraftFee, &e1, "-5"),
                comp(CompKind::OverdraftFee, &e4, "-5"),
            ]
        );
        assert_eq!(m.overdrafts, 3);
        assert_eq!(balance(&m, "alice", Currency::USD), d("-11"));
    }

    #[test]
    fn the_most_specific_rule_wins_and_the_first_tier_by_name() {
        let p = policy(
            r#"
[default]
action = "fee"
fee = { flat = "1" }

[tiers]
gold = ["vip"]
silver = ["v"]

[[rule]]
currency = "USD"
fee = { flat = "2" }

[[rule]]
tier = "silver"
fee = { flat = "3" }

[[rule]]
tier = "gold"
currency = "USD"
fee = { flat = "4" }
"#,
        );
        assert_eq!(model_tier(&p, "vip-1"), Some("gold"));
        assert_eq!(model_tier(&p, "val"), Some("silver"));
        assert_eq!(model_tier(&p, "alice"), None);
        let flat = |a: &str, c| model_rule(&p, a, c).rule.fee.flat;
        assert_eq!(flat("vip-1", Currency::USD), d("4"));
        assert_eq!(flat("vip-1", Currency::EUR), d("1")); // gold has no (gold, any)
        assert_eq!(flat("val", Currency::USD), d("3")); // (tier, any) beats (any, currency)
        assert_eq!(flat("alice", Currency::USD), d("2"));
        assert_eq!(flat("alice", Currency::EUR), d("1"));
    }

    #[test]
    fn a_policy_event_applies_after_it_as_the_next_version() {
        let fee = |flat: &str| {
            policy(&format!(
                "[default]\naction = \"fee\"\nfee = {{ flat = \"{flat}\" }}\n"
            ))
        };
        let before = usd("eu", 1, 1, Kind::Withdrawal, "1");
        let change = Event {
            id: id("eu", 2),
            hlc: Hlc(2),
            body: Body::Policy(Box::new(fee("7"))),
            sig: Box::new([]),
        };
        let after = usd("eu", 3, 3, Kind::Withdrawal, "1");
        let m = model(&fee("3"), [&before, &change, &after]);
        let mut second = comp(CompKind::OverdraftFee, &after, "-7");
        second.version = 2;
        assert_eq!(
            m.feed,
            vec![comp(CompKind::OverdraftFee, &before, "-3"), second]
        );
    }

    #[test]
    fn the_order_is_hlc_then_origin_name_bytes_then_seq() {
        // Same HLC: "ap" < "eu" < "eu2" < "us" by the bytes of the name (a prefix first).
        let dep = usd("us", 1, 5, Kind::Deposit, "10");
        let a = usd("us", 2, 10, Kind::Purchase, "10");
        let b = usd("eu2", 1, 10, Kind::Purchase, "10");
        let c = usd("eu", 1, 10, Kind::Purchase, "10");
        let d_ = usd("ap", 1, 10, Kind::Purchase, "10");
        let mut sorted = [&a, &b, &c, &d_, &dep];
        sorted.sort_by(|x, y| model_order(x, y));
        let ids: Vec<String> = sorted.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["us:1", "ap:1", "eu:1", "eu2:1", "us:2"]);
        // Under `reverse` only the first purchase in that order stands.
        let p = policy("[default]\naction = \"reverse\"\n");
        let m = model(&p, [&a, &b, &c, &d_, &dep]);
        let reversed: Vec<String> = m.feed.iter().map(ModelComp::id).collect();
        assert_eq!(reversed, ["rev:eu:1", "rev:eu2:1", "rev:us:2"]);
        assert_eq!(m.statuses[&d_.id], ModelStatus::Settled { fee: None });
        assert_eq!(
            m.statuses[&c.id],
            ModelStatus::Reversed {
                reversal: "rev:eu:1".into()
            }
        );
    }

    #[test]
    fn seq_breaks_a_tie_of_hlc_and_origin_only_as_an_integer() {
        // Not a real history (HLCs increase with seq), but the order must still be total.
        let a = usd("eu", 10, 7, Kind::Deposit, "1");
        let b = usd("eu", 9, 7, Kind::Deposit, "1");
        assert_eq!(model_order(&b, &a), Ordering::Less);
    }

    #[test]
    fn above_the_watermark_is_provisional_and_only_in_the_provisional_balance() {
        let p = policy("[default]\naction = \"fee\"\nfee = { flat = \"1\" }\n");
        let dep = usd("eu", 1, 10, Kind::Deposit, "5");
        let buy = usd("us", 1, 20, Kind::Purchase, "8"); // overdraws once settled
        let m = model_at(&p, [&dep, &buy], Some(Hlc(10)));
        assert!(m.feed.is_empty());
        assert_eq!(m.settled, 1);
        assert_eq!(m.statuses[&buy.id], ModelStatus::Provisional);
        assert_eq!(m.statuses[&dep.id], ModelStatus::Settled { fee: None });
        let key = (AccountId::new("alice").unwrap(), Currency::USD);
        assert_eq!(m.balances[&key], d("5"));
        assert_eq!(m.provisional[&key], d("-3"));
        // At the purchase's HLC it settles (at or below the watermark) and pays its fee.
        let m = model_at(&p, [&dep, &buy], Some(Hlc(20)));
        assert_eq!(
            m.statuses[&buy.id],
            ModelStatus::Settled {
                fee: Some("fee:us:1".into())
            }
        );
        assert_eq!(m.balances[&key], d("-4"));
        assert_eq!(m.provisional[&key], d("-4"));
    }

    #[test]
    fn minor_units_come_from_the_models_own_table() {
        assert_eq!(model_minor_units(Currency::USD), 2);
        assert_eq!(model_minor_units(Currency::JPY), 0);
        assert_eq!(model_minor_units(Currency::BHD), 3);
        // 1.5 % of 0.033 BHD = 0.000495, + flat 0.0005 = 0.000995 -> 0.001 (half away).
        let p =
            policy("[default]\naction = \"fee\"\nfee = { flat = \"0.0005\", percent = \"1.5\" }\n");
        let r = model_rule(&p, "alice", Currency::BHD);
        assert_eq!(model_fee(&r, d("0.033")), d("0.001"));
        // flat 0.0004 alone: 0.0004 -> 0.000, no fee.
        let p = policy("[default]\naction = \"fee\"\nfee = { flat = \"0.0004\" }\n");
        let r = model_rule(&p, "alice", Currency::BHD);
        assert_eq!(model_fee(&r, d("1")), d("0"));
    }

    #[test]
    fn compensation_ids_are_derived_from_the_cause() {
        let cause = id("eu", 12);
        assert_eq!(model_comp_id(CompKind::OverdraftFee, cause), "fee:eu:12");
        assert_eq!(model_comp_id(CompKind::Reversal, cause), "rev:eu:12");
        assert_eq!(
            model_comp_id(CompKind::IdempotencyConflict, cause),
            "conflict:eu:12"
        );
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn the_same_event_twice_is_refused() {
        let e = usd("eu", 1, 1, Kind::Deposit, "1");
        model(&Policy::zero(), [&e, &e]);
    }
}
