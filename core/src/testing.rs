//! The reference model of the settled fold, for tests and the simulator's checker (compiled
//! only with the `testing` feature).
//!
//! [`model`] re-folds a full event set from scratch, in the total order `(hlc, origin, seq)`,
//! the plain way: no incremental state, no watermark, nothing shared with the replica's fold.
//! It is written from SPEC §5 and §6 and docs/reconciliation.md §2, §4 and §5, not from the
//! code it checks: its own rule resolution and tier matching ([`model_rule`]), its own exact
//! integer fee arithmetic ([`model_fee`], not `Applied::fee_for`), and its own duplicate rule.
//! Only the parsed policy data (`Policy`, `Rule`) and the event types are shared.
//!
//! What it leaves out: the overflow freeze (docs/reconciliation.md §6). A settled sum that
//! would overflow panics here; the generators that feed the model stay far below it.
//!
//! Everything is deterministic: ordered maps only, exact decimals and integers, no floats.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::event::{Body, CompKind, Event, Kind};
use crate::id::{AccountId, EventId};
use crate::money::Currency;
use crate::policy::{Action, FeePer, Policy, Rule};

/// One feed entry as the model derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelComp {
    /// Fee, reversal or conflict report.
    pub kind: CompKind,
    /// The event that caused it.
    pub cause: EventId,
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

/// What the model derives from a full event set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFold {
    /// The feed, in order: position `i` is `feed[i]`.
    pub feed: Vec<ModelComp>,
    /// The settled balance of every (account, currency) that has a transaction, after every
    /// event and compensation.
    pub balances: BTreeMap<(AccountId, Currency), Decimal>,
    /// Non-duplicate debits that took the settled balance below the floor (reversed or not).
    pub overdrafts: u64,
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

/// `d` rounded half away from zero to `dp` places.
fn round_dp(d: Decimal, dp: u32) -> Decimal {
    if d.scale() <= dp {
        return d; // nothing to round
    }
    from_units(round_units(units(d), dp))
}

/// The tier of an account: the first tier, by name, one of whose prefixes starts its id.
pub fn model_tier<'p>(policy: &'p Policy, account: &str) -> Option<&'p str> {
    // `tiers` is a BTreeMap: iterated in name order.
    policy
        .tiers
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| account.starts_with(p.as_str())))
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
    let find = |t: Option<&str>, c: Option<Currency>| {
        policy
            .rules
            .iter()
            .skip(1)
            .find(|r| r.tier.as_deref() == t && r.currency == c)
    };
    let specific = match tier {
        Some(t) => find(Some(t), Some(currency)).or_else(|| find(Some(t), None)),
        None => None,
    };
    let rule = specific
        .or_else(|| find(None, Some(currency)))
        .unwrap_or(default);
    let dp = currency.minor_units();
    ModelRule {
        rule,
        currency,
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
    let dp = rule.currency.minor_units();
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
    let mut fee = from_units(round_units(exact, dp));
    if fee < rule.minimum {
        fee = rule.minimum;
    }
    if let Some(cap) = rule.cap {
        if fee > cap {
            fee = cap;
        }
    }
    fee
}

/// Fold state of one (account, currency).
#[derive(Default, Clone)]
struct Pair {
    bal: Decimal,
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

/// Same body for idempotency (SPEC §5): kind, amount, currency, reference.
fn same_body(a: &crate::event::Tx, b: &crate::event::Tx) -> bool {
    a.kind == b.kind
        && a.amount.value() == b.amount.value()
        && a.currency == b.currency
        && a.reference == b.reference
}

/// Re-folds the full event set from scratch in total order `(hlc, origin, seq)` with the seed
/// policy as version 1 (each policy event is the next version, in force after it). Every
/// event is treated as settled: give it a fully settled history.
///
/// For each transaction, in order (docs/reconciliation.md §2):
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
pub fn model<'a, I>(seed: &Policy, events: I) -> ModelFold
where
    I: IntoIterator<Item = &'a Event>,
{
    let mut order: Vec<&Event> = events.into_iter().collect();
    order.sort_by_key(|e| (e.hlc, e.id.origin, e.id.seq));
    if let Some(w) = order.windows(2).find(|w| w[0].id == w[1].id) {
        panic!("model: event {} given twice", w[0].id);
    }
    let mut policies: Vec<&Policy> = vec![seed];
    let mut pairs: BTreeMap<(&AccountId, Currency), Pair> = BTreeMap::new();
    // Every earlier event holding each (account, key), in total order: the SPEC's `earlier`.
    let mut holders: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    let mut out = ModelFold::default();
    for e in order {
        let tx = match &e.body {
            Body::Policy(p) => {
                policies.push(p);
                continue;
            }
            Body::Tx(tx) => tx,
        };
        let version = u32::try_from(policies.len()).expect("model: policy versions beyond u32");
        let policy = policies[policies.len() - 1];
        let rule = model_rule(policy, tx.account.as_str(), tx.currency);
        let earlier: &[&Event] = match &tx.idempotency_key {
            Some(k) => {
                let list = holders.entry((tx.account.as_str(), k)).or_default();
                list.push(e);
                &list[..list.len() - 1]
            }
            None => &[],
        };
        let duplicate = earlier
            .iter()
            .any(|o| o.tx().is_some_and(|t| same_body(t, tx)));
        let conflict = if duplicate {
            None
        } else {
            earlier.first().map(|f| f.id)
        };
        let p = pairs.entry((&tx.account, tx.currency)).or_default();
        let amount = tx.amount.value();
        let delta = if tx.kind.is_debit() { -amount } else { amount };
        p.bal = add(p.bal, delta);
        let mut comp = None;
        if duplicate {
            comp = Some((CompKind::Reversal, -delta));
        } else if tx.kind.is_debit() && p.bal < rule.floor {
            out.overdrafts += 1;
            let overdrawn = (rule.floor - p.bal).min(amount);
            if rule.action == Action::Reverse && rule.reversible.contains(&tx.kind) {
                comp = Some((CompKind::Reversal, amount));
            } else {
                if !p.in_episode {
                    p.in_episode = true;
                    p.charged = false;
                    p.episode_fees = Decimal::ZERO;
                }
                // Nothing when the overdrawn amount is at or below the grace.
                let due = overdrawn > rule.grace && (rule.per == FeePer::Debit || !p.charged);
                if due {
                    let fee = model_fee(&rule, overdrawn);
                    if fee > Decimal::ZERO {
                        p.charged = true;
                        p.episode_fees = add(p.episode_fees, fee);
                        comp = Some((CompKind::OverdraftFee, -fee));
                    }
                }
            }
        } else if p.in_episode && add(p.bal, p.episode_fees) >= rule.floor {
            p.in_episode = false;
        }
        if let Some((kind, d)) = comp {
            p.bal = add(p.bal, d);
            out.feed.push(ModelComp {
                kind,
                cause: e.id,
                delta: d,
                related: None,
                version,
                account: tx.account.clone(),
                currency: tx.currency,
                duplicate,
            });
        }
        if let Some(first) = conflict {
            out.feed.push(ModelComp {
                kind: CompKind::IdempotencyConflict,
                cause: e.id,
                delta: Decimal::ZERO,
                related: Some(first),
                version,
                account: tx.account.clone(),
                currency: tx.currency,
                duplicate: false,
            });
        }
    }
    out.balances = pairs
        .into_iter()
        .map(|((a, c), p)| ((a.clone(), c), p.bal))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tx;
    use crate::id::{Hlc, RegionId};
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

    fn comp(kind: CompKind, cause: EventId, delta: &str) -> ModelComp {
        ModelComp {
            kind,
            cause,
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
        let mut conflict = comp(CompKind::IdempotencyConflict, b.id, "0");
        conflict.related = Some(a.id);
        let mut rev = comp(CompKind::Reversal, c.id, "20.00");
        rev.duplicate = true;
        assert_eq!(m.feed, vec![conflict, rev]);
        assert_eq!(balance(&m, "alice", Currency::USD), d("70"));
        assert_eq!(m.overdrafts, 0);
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
        let mut rev = comp(CompKind::Reversal, b.id, "-5");
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
        let mut rev = comp(CompKind::Reversal, b.id, "8");
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
        assert_eq!(m.feed, vec![comp(CompKind::OverdraftFee, e.id, "-1.01")]);
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
        assert_eq!(m.feed, vec![comp(CompKind::OverdraftFee, beyond.id, "-1")]);
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
                comp(CompKind::OverdraftFee, a.id, "-50"),
                comp(CompKind::OverdraftFee, b.id, "-1"),
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
                comp(CompKind::Reversal, buy.id, "15"),
                comp(CompKind::OverdraftFee, out.id, "-2"),
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
        assert_eq!(m.feed, vec![comp(CompKind::Reversal, b.id, "0.01")]);
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
                comp(CompKind::OverdraftFee, e1.id, "-5"),
                comp(CompKind::OverdraftFee, e4.id, "-5"),
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
        let mut second = comp(CompKind::OverdraftFee, after.id, "-7");
        second.version = 2;
        assert_eq!(
            m.feed,
            vec![comp(CompKind::OverdraftFee, before.id, "-3"), second]
        );
    }

    #[test]
    #[should_panic(expected = "given twice")]
    fn the_same_event_twice_is_refused() {
        let e = usd("eu", 1, 1, Kind::Deposit, "1");
        model(&Policy::zero(), [&e, &e]);
    }
}
