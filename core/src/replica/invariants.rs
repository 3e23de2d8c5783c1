//! The whole-state self-check: everything derived is recomputed from the logs and the feed and
//! compared with the incremental state. O(history): for tests and the simulator's checker.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::event::CompKind;
use crate::id::{AccountId, Hlc};
use crate::money::Currency;

use super::Replica;

impl Replica {
    /// Recomputes everything derived from the logs and the feed and compares it with the
    /// incremental state: gap-free logs with strictly increasing HLCs, the version vector,
    /// provisional and settled balances (conservation), feed positions and the
    /// one-compensation-per-cause index. O(history): for tests and the simulator's checker,
    /// never for the hot path. `Err` names the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        type Sums = BTreeMap<(AccountId, Currency), (Decimal, Decimal)>;
        let mut sums: Sums = BTreeMap::new();
        let add = |sums: &mut Sums, a: &AccountId, c: Currency, d: Decimal, settled: bool| {
            let e = sums.entry((a.clone(), c)).or_default();
            e.0 = e.0.checked_add(d).unwrap_or(Decimal::MAX);
            if settled {
                e.1 = e.1.checked_add(d).unwrap_or(Decimal::MAX);
            }
        };
        // Events dropped into a snapshot count by their sums (settled, so in both).
        for ((a, c), d) in &self.settle.compacted_sums {
            add(&mut sums, a, *c, *d, true);
        }
        let mut unsettled = 0usize;
        for (r, m) in &self.logs.members {
            let mut prev: Option<Hlc> = None;
            for (i, e) in m.log.iter().enumerate() {
                let seq = m.base + i as u64 + 1;
                if e.id.origin != *r || e.id.seq != seq {
                    return Err(format!("log of {r} has {} at position {seq}", e.id));
                }
                if prev.is_some_and(|p| e.hlc <= p) {
                    return Err(format!("HLC of {} does not increase with seq", e.id));
                }
                prev = Some(e.hlc);
                let settled = self.is_settled(&e.key());
                if !settled {
                    unsettled += 1;
                    if !self.settle.unsettled.contains(&e.key()) {
                        return Err(format!("{} is neither settled nor pending", e.id));
                    }
                }
                if settled && e.hlc > self.settle.watermark {
                    return Err(format!("{} is settled above the watermark", e.id));
                }
                if let Some(tx) = e.tx() {
                    add(&mut sums, &tx.account, tx.currency, tx.delta(), settled);
                }
            }
            if self.logs.vv.get(r) != m.len() {
                return Err(format!("version vector of {r} differs from its log"));
            }
        }
        if unsettled != self.settle.unsettled.len() {
            return Err("unsettled index differs from the logs".into());
        }
        for (i, c) in self.settle.feed.iter().enumerate() {
            let i = self.settle.feed_base + i as u64;
            if c.position != i {
                return Err(format!("feed entry {i} has position {}", c.position));
            }
            let map = if c.kind == CompKind::IdempotencyConflict {
                &self.settle.conflict_by_cause
            } else {
                &self.settle.comp_by_cause
            };
            if map.get(&c.cause) != Some(&i) {
                return Err(format!("{} is not indexed by its cause", c.id()));
            }
            add(&mut sums, &c.account, c.currency, c.delta, true);
        }
        if self.settle.comp_by_cause.len() + self.settle.conflict_by_cause.len()
            != self.settle.feed.len()
        {
            return Err("more compensations indexed than in the feed".into());
        }
        for ((a, c), (prov, settled)) in &sums {
            let Some(st) = self.accounts.map.get(a).and_then(|s| s.balances.get(c)) else {
                return Err(format!("no balance for {a} {c}"));
            };
            if !st.provisional_frozen && st.bal.provisional != *prov {
                return Err(format!(
                    "provisional balance of {a} {c} is {} but its events sum to {prov}",
                    st.bal.provisional
                ));
            }
            if !st.frozen && st.bal.settled != *settled {
                return Err(format!(
                    "settled balance of {a} {c} is {} but its settled events sum to {settled}",
                    st.bal.settled
                ));
            }
            // Escrow rights conservation (SPEC §9.4): every region's rights plus the keyed
            // credits not settled yet make the provisional balance.
            let rights = st
                .rights
                .values()
                .try_fold(st.unspendable, |acc, r| acc.checked_add(*r));
            if !st.frozen && !st.provisional_frozen && rights != Some(st.bal.provisional) {
                return Err(format!(
                    "rights of {a} {c} sum to {rights:?} with the unsettled keyed credits, but \
                     the provisional balance is {}",
                    st.bal.provisional
                ));
            }
        }
        Ok(())
    }
}
