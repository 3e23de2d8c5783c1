//! Figures read from a finished run's settled history, for the JSON and the tests: what the
//! fees looked like (ties at half a minor unit, minimums and caps that bound), where debits
//! sent to the floor settled, per-currency totals, and the policy versions in force.
//!
//! These are observations, not checks (the invariants are `check.rs`'s). Everything is read
//! from the first region after the run; the regions are identical when the run converged.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use wallet_core::testing::model_rule;
use wallet_core::{Body, CompKind, Currency, Entry, EventId, Policy};

use crate::engine::Sim;

/// How the overdraft fees came out (SPEC §6 arithmetic, recomputed from the history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FeeCases {
    /// Fees whose exact value `flat + percent × overdrawn / 100` lay exactly half-way between
    /// two minor units (rounded away from zero).
    pub ties: u64,
    /// Fees raised to the rule's minimum.
    pub at_minimum: u64,
    /// Fees lowered to the rule's cap.
    pub at_cap: u64,
    /// Client debits that took the settled balance below the floor by no more than the
    /// rule's grace (above zero) and were charged nothing.
    pub within_grace: u64,
}

/// Debits sent to the floor (`--floor-share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FloorDebits {
    /// Logical requests marked to go to the floor.
    pub requests: u64,
    /// Of those, sent with the amount that reaches the floor (the region saw room above it).
    pub sized: u64,
    /// New events of those (accepted by the region).
    pub events: u64,
    /// Of the events: the settled balance right after the event is exactly the floor the
    /// region aimed at.
    pub settled_at_floor: u64,
    /// Below it (something else settled before it: a concurrent debit, a fee).
    pub settled_below: u64,
    /// Above it (a credit settled before it that the region had not seen).
    pub settled_above: u64,
    /// Not settled (the run did not converge).
    pub unsettled: u64,
}

/// Per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CurrencyFigures {
    /// Overdraft fees.
    pub fees: u64,
    /// Their sum.
    pub fee_total: String,
    /// Sum of negative settled balances.
    pub debt: String,
    /// Accounts with a negative settled balance.
    pub debt_accounts: u64,
}

/// Everything this module reads.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Fee anatomy.
    pub fee_cases: FeeCases,
    /// Floor debits.
    pub floor: FloorDebits,
    /// Per currency (code order).
    pub currencies: BTreeMap<String, CurrencyFigures>,
    /// Policy versions in the settled history (1: no change settled).
    pub policy_versions: u32,
    /// Feed entries produced under a policy version above 1.
    pub compensations_after_change: u64,
}

/// Reads the figures from the first region of a finished run.
pub fn analyse(sim: &Sim) -> Analysis {
    let mut a = Analysis::default();
    let Some(node) = sim.nodes.first() else {
        return a;
    };
    let r = &node.replica;
    // The policy of every version: the seed, then each policy event in total order.
    let mut changes: Vec<(wallet_core::OrderKey, &Policy)> = Vec::new();
    for o in &sim.cfg.regions {
        for e in r.origin_events(*o, 0) {
            if let Body::Policy(p) = &e.body {
                if r.is_settled(&e.key()) {
                    changes.push((e.key(), p));
                }
            }
        }
    }
    changes.sort_by_key(|(k, _)| *k);
    let mut versions: Vec<&Policy> = vec![&sim.cfg.policy];
    versions.extend(changes.iter().map(|(_, p)| *p));
    a.policy_versions = versions.len() as u32;

    let landings: BTreeMap<EventId, Decimal> =
        sim.floor_landings.iter().map(|l| (l.id, l.floor)).collect();
    let w = &sim.workload;
    a.floor.requests = w
        .submissions
        .iter()
        .filter(|s| s.to_floor && s.kind.is_debit() && s.attempt == crate::workload::Attempt::First)
        .count() as u64;
    a.floor.sized = sim.counters.floor_sized;
    a.floor.events = landings.len() as u64;

    let mut fee_totals: BTreeMap<Currency, (u64, Decimal)> = BTreeMap::new();
    let mut accounts: Vec<_> = r.all_balances().into_iter().map(|(a, _, _)| a).collect();
    accounts.dedup();
    let mut seen_landings = 0u64;
    for acct in &accounts {
        let mut bal: BTreeMap<Currency, Decimal> = BTreeMap::new();
        // The last settled event: (id, amount, balance right after it).
        let mut last: Option<(EventId, Decimal, Decimal)> = None;
        // The last settled debit, until the next entry shows whether a compensation follows:
        // (its order key, amount, currency, balance right after it).
        let mut debit: Option<(wallet_core::OrderKey, Decimal, Currency, Decimal)> = None;
        for (_, e) in r.entries(acct, None, usize::MAX) {
            let compensated =
                matches!(&e, Entry::Compensation(c) if Some(c.cause) == last.map(|l| l.0));
            if let Some(d) = debit.take() {
                if !compensated {
                    uncompensated(&mut a.fee_cases, &changes, &versions, acct, d);
                }
            }
            match e {
                Entry::Event { event, settled } => {
                    let Some(tx) = event.tx() else { continue };
                    if !settled {
                        if landings.contains_key(&event.id) {
                            a.floor.unsettled += 1;
                            seen_landings += 1;
                        }
                        continue;
                    }
                    let b = bal.entry(tx.currency).or_default();
                    *b += tx.delta();
                    last = Some((event.id, tx.amount.value(), *b));
                    if tx.kind.is_debit() {
                        debit = Some((event.key(), tx.amount.value(), tx.currency, *b));
                    }
                    if let Some(floor) = landings.get(&event.id) {
                        seen_landings += 1;
                        match (*b).cmp(floor) {
                            std::cmp::Ordering::Equal => a.floor.settled_at_floor += 1,
                            std::cmp::Ordering::Less => a.floor.settled_below += 1,
                            std::cmp::Ordering::Greater => a.floor.settled_above += 1,
                        }
                    }
                }
                Entry::Compensation(c) => {
                    if c.policy_version > 1 {
                        a.compensations_after_change += 1;
                    }
                    if c.kind == CompKind::OverdraftFee {
                        let t = fee_totals.entry(c.currency).or_default();
                        t.0 += 1;
                        t.1 -= c.delta;
                        let policy = usize::try_from(c.policy_version)
                            .ok()
                            .and_then(|v| versions.get(v.wrapping_sub(1)));
                        if let (Some(policy), Some((cause, amount, after))) = (policy, last) {
                            if cause == c.cause {
                                fee_case(&mut a.fee_cases, policy, c, amount, after);
                            }
                        }
                    }
                    *bal.entry(c.currency).or_default() += c.delta;
                }
            }
        }
        if let Some(d) = debit.take() {
            uncompensated(&mut a.fee_cases, &changes, &versions, acct, d);
        }
    }
    // Landings whose account is unknown to the first region (it never converged).
    a.floor.unsettled += a.floor.events.saturating_sub(seen_landings);
    let mut debts: BTreeMap<Currency, (u64, Decimal)> = BTreeMap::new();
    for (_, c, b) in r.all_balances() {
        if b.settled < Decimal::ZERO {
            let d = debts.entry(c).or_default();
            d.0 += 1;
            d.1 -= b.settled;
        }
    }
    let mut codes: Vec<Currency> = sim
        .cfg
        .workload
        .currencies
        .iter()
        .map(|(c, _)| *c)
        .collect();
    codes.extend(fee_totals.keys().chain(debts.keys()).copied());
    codes.sort();
    codes.dedup();
    for c in codes {
        let (fees, total) = fee_totals.get(&c).copied().unwrap_or_default();
        let (debt_accounts, debt) = debts.get(&c).copied().unwrap_or_default();
        a.currencies.insert(
            c.as_str().to_string(),
            CurrencyFigures {
                fees,
                fee_total: c.render(total),
                debt: c.render(debt),
                debt_accounts,
            },
        );
    }
    a
}

/// A settled client debit with no compensation after it: counted when it went below the
/// floor of the rule in force (the version of its place in the order) by no more than the
/// grace.
fn uncompensated(
    cases: &mut FeeCases,
    changes: &[(wallet_core::OrderKey, &Policy)],
    versions: &[&Policy],
    account: &wallet_core::AccountId,
    (key, amount, currency, after): (wallet_core::OrderKey, Decimal, Currency, Decimal),
) {
    let v = changes.partition_point(|(k, _)| *k < key);
    let Some(policy) = versions.get(v) else {
        return;
    };
    let rule = model_rule(policy, account.as_str(), currency);
    let overdrawn = (rule.floor - after).min(amount);
    if overdrawn > Decimal::ZERO && overdrawn <= rule.grace {
        cases.within_grace += 1;
    }
}

/// Classifies one fee: `after` is the settled balance right after its cause (an `amount`
/// debit), under `policy`, the version that charged it.
fn fee_case(
    cases: &mut FeeCases,
    policy: &Policy,
    c: &wallet_core::Compensation,
    amount: Decimal,
    after: Decimal,
) {
    let rule = model_rule(policy, c.account.as_str(), c.currency);
    let overdrawn = (rule.floor - after).min(amount);
    if overdrawn <= Decimal::ZERO {
        return;
    }
    let fee = &rule.rule.fee;
    // Exact: percent (<= 6 places) × overdrawn (<= 3) × 0.01, plus flat (<= 6 places).
    let Some(exact) = fee
        .percent
        .checked_mul(overdrawn)
        .and_then(|x| x.checked_mul(Decimal::new(1, 2)))
        .and_then(|x| x.checked_add(fee.flat))
    else {
        return;
    };
    let dp = c.currency.minor_units();
    let scaled = exact * Decimal::from(10u64.pow(dp));
    if scaled.fract() == Decimal::new(5, 1) {
        cases.ties += 1;
    }
    let rounded = c.currency.round(exact);
    if rounded < rule.minimum {
        cases.at_minimum += 1;
    }
    if rule.cap.is_some_and(|cap| rounded.max(rule.minimum) > cap) {
        cases.at_cap += 1;
    }
}
