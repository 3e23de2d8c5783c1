//! Accounts: per (account, currency) balances and fold state, each account's history (its
//! events per origin and its feed entries) and its idempotency keys (SPEC §4).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::id::{AccountId, EventId, RegionId};
use crate::money::Currency;

use crate::event::{Body, Event};

use super::keys::KeyIndex;
use super::log::Logs;

/// Provisional and settled balance of one (account, currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    /// Sum of every event known, settled compensations included.
    pub provisional: Decimal,
    /// Sum over the settled prefix, compensations included.
    pub settled: Decimal,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct BalanceState {
    pub(crate) bal: Balance,
    /// An overdraft episode is open (settled fold).
    pub(crate) in_episode: bool,
    /// The episode's fee was charged (per-episode fees).
    pub(crate) episode_fee_charged: bool,
    /// Fees charged in the open episode: they never extend it, so the episode closes when
    /// `settled + episode_fees` is back at or above the floor.
    pub(crate) episode_fees: Decimal,
    /// The settled sum overflowed: deterministic, the same on every region.
    pub(crate) frozen: bool,
    /// The provisional sum overflowed: local only, never consulted by the settled fold.
    pub(crate) provisional_frozen: bool,
    /// Escrow (SPEC §8, docs/modes.md §rights): each region's spending rights, derived from
    /// the events alone. `Σ rights + unspendable = provisional`.
    pub(crate) rights: BTreeMap<RegionId, Decimal>,
    /// Credits with an idempotency key not settled yet: they may still be reversed as
    /// duplicates, so they grant rights only once settled (and not reversed).
    pub(crate) unspendable: Decimal,
    /// Rights transfers of this pair held: a pair with one is in use even with no
    /// transaction (see [`Accounts::forget_if_unused`]).
    pub(crate) transfers: u64,
}

impl BalanceState {
    /// Moves `region`'s rights by `delta` (an overflow leaves them: the provisional sum,
    /// which is larger, froze first).
    pub(crate) fn add_rights(&mut self, region: RegionId, delta: Decimal) {
        let r = self.rights.entry(region).or_default();
        if let Some(v) = r.checked_add(delta) {
            *r = v;
        }
    }

    /// A transaction's effect on the rights when it is held (`sign` -1 takes it back).
    fn rights_on_hold(&mut self, origin: RegionId, tx: &crate::event::Tx, sign: Decimal) {
        let delta = tx.delta() * sign;
        if tx.kind.is_debit() || tx.idempotency_key.is_none() {
            self.add_rights(origin, delta);
        } else if let Some(v) = self.unspendable.checked_add(delta) {
            self.unspendable = v;
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct AccountState {
    pub(crate) balances: BTreeMap<Currency, BalanceState>,
    /// Per origin, the seqs of this account's events, ascending. Within one origin seq
    /// order is total order, so this only ever appends: 8 bytes per event, where an
    /// ordered set of order keys cost about 64. [`Replica::entries`] merges the lists.
    pub(crate) events: BTreeMap<RegionId, Vec<u64>>,
    /// Feed positions of this account's feed entries. The feed is in total order of the
    /// causes (a compensation before a conflict report of the same cause), so this is too.
    pub(crate) comps: Vec<u64>,
    /// Idempotency key -> the first event holding it in the total order, among those known.
    /// Every event below the watermark is known, so when the fold reaches an event with a
    /// key, this names the first settled event with that key: it serves both the retry
    /// lookup and the settled duplicate check.
    pub(crate) keys: KeyIndex,
    /// Other events holding a key already in `keys` (duplicates and conflicts), so that a
    /// retry finds its own original whatever the order.
    pub(crate) more_keys: BTreeMap<Box<str>, Vec<EventId>>,
}

impl AccountState {
    /// Indexes the idempotency key `k` of event `id` (at order key `key`, in `logs`). The key
    /// maps to the first event holding it in the total order, so a retry finds the same event
    /// on every region once both are known. The first holder goes to `keys`, any other to
    /// `more_keys` (only duplicates and conflicts, which are rare).
    pub(crate) fn index_key(
        &mut self,
        logs: &Logs,
        k: &str,
        id: EventId,
        key: crate::event::OrderKey,
    ) {
        let other = match self.keys.holder_or_insert(&logs.members, k, id) {
            None => None,
            Some(have) => match logs.event(*have).map(|e| e.key() < key) {
                Some(true) => Some(id),
                Some(false) => Some(std::mem::replace(have, id)),
                None => {
                    *have = id;
                    None
                }
            },
        };
        if let Some(other) = other {
            self.more_keys.entry(k.into()).or_default().push(other);
        }
    }

    /// `id` no longer holds `key` (its retention ended, SPEC §5 as amended by issue 13): the
    /// next holder of the key in total order, if any, becomes the first.
    pub(crate) fn forget_key(&mut self, logs: &Logs, key: &str, id: EventId) {
        if let Some(others) = self.more_keys.get_mut(key) {
            if let Some(i) = others.iter().position(|o| *o == id) {
                others.remove(i);
                if others.is_empty() {
                    self.more_keys.remove(key);
                }
                return;
            }
        }
        let next = self.more_keys.get(key).and_then(|others| {
            others
                .iter()
                .filter_map(|o| Some((logs.event(*o)?.key(), *o)))
                .min()
                .map(|(_, o)| o)
        });
        if let Some(n) = next {
            if let Some(others) = self.more_keys.get_mut(key) {
                others.retain(|o| *o != n);
                if others.is_empty() {
                    self.more_keys.remove(key);
                }
            }
        }
        self.keys.replace(key, id, next);
    }
}

/// Every account.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    pub(crate) map: BTreeMap<AccountId, AccountState>,
}

impl Accounts {
    /// The map's own handle of an account id (one shared allocation per account), creating
    /// the account if new.
    pub(crate) fn intern(&mut self, account: AccountId) -> AccountId {
        match self.map.get_key_value(&account) {
            Some((k, _)) => k.clone(),
            None => {
                self.map.insert(account.clone(), AccountState::default());
                account
            }
        }
    }

    /// Indexes an event about to be appended to its log (`logs` holds every earlier one):
    /// its account's history and idempotency key, and its effect on the provisional balance.
    /// The event's account id becomes the map's own handle (one allocation per account).
    pub(crate) fn index(&mut self, logs: &Logs, event: &mut Event) {
        let key = event.key();
        let id = event.id;
        if let Body::Account(op) = &event.body {
            if let crate::event::AccountOp::RightsTransfer {
                account,
                currency,
                amount,
                to,
            } = &**op
            {
                // The giver's rights drop and the receiver's rise where the event is held: the
                // union of logs applies it exactly once.
                let account = self.intern(account.clone());
                if let Some(acct) = self.map.get_mut(&account) {
                    let st = acct.balances.entry(*currency).or_default();
                    st.add_rights(id.origin, -amount.value());
                    st.add_rights(*to, amount.value());
                    st.transfers += 1;
                }
            }
            return;
        }
        let Body::Tx(tx) = &mut event.body else {
            return;
        };
        let acct = match self.map.entry(tx.account.clone()) {
            Entry::Occupied(o) => {
                tx.account = o.key().clone();
                o.into_mut()
            }
            Entry::Vacant(v) => v.insert(AccountState::default()),
        };
        let seqs = acct.events.entry(id.origin).or_default();
        debug_assert!(seqs.last().is_none_or(|&q| q < id.seq));
        seqs.push(id.seq);
        if let Some(k) = &tx.idempotency_key {
            acct.index_key(logs, k, id, key);
        }
        let st = acct.balances.entry(tx.currency).or_default();
        if !st.provisional_frozen {
            match st.bal.provisional.checked_add(tx.delta()) {
                Some(v) => st.bal.provisional = v,
                None => st.provisional_frozen = true,
            }
        }
        st.rights_on_hold(id.origin, tx, Decimal::ONE);
    }

    /// Takes back a voided event (above a retired region's cut, never settled): its effect
    /// on the provisional balance and its place in its account's history. Its idempotency
    /// key's index entry names an event no longer held, which every lookup skips.
    pub(crate) fn unapply(&mut self, id: EventId, tx: &crate::event::Tx) {
        let Some(acct) = self.map.get_mut(&tx.account) else {
            return;
        };
        if let Some(seqs) = acct.events.get_mut(&id.origin) {
            seqs.retain(|q| *q != id.seq);
        }
        if let Some(st) = acct.balances.get_mut(&tx.currency) {
            st.rights_on_hold(id.origin, tx, Decimal::NEGATIVE_ONE);
            if !st.provisional_frozen {
                match st.bal.provisional.checked_sub(tx.delta()) {
                    Some(v) => st.bal.provisional = v,
                    None => st.provisional_frozen = true,
                }
            }
        }
    }

    /// Takes back a voided rights transfer (above a retired region's cut).
    pub(crate) fn unapply_op(&mut self, id: EventId, op: &crate::event::AccountOp) {
        let crate::event::AccountOp::RightsTransfer {
            account,
            currency,
            amount,
            to,
        } = op
        else {
            return;
        };
        if let Some(st) = self
            .map
            .get_mut(account)
            .and_then(|a| a.balances.get_mut(currency))
        {
            st.add_rights(id.origin, amount.value());
            st.add_rights(*to, -amount.value());
            st.transfers = st.transfers.saturating_sub(1);
        }
    }

    /// After voiding: an (account, currency) that no event held any longer names, and an
    /// account with no event and no feed entry left, are removed, so that a region that
    /// voided events holds the same balances as one that never held them.
    pub(crate) fn forget_if_unused(
        &mut self,
        logs: &Logs,
        account: &AccountId,
        currency: Currency,
    ) {
        let Some(acct) = self.map.get(account) else {
            return;
        };
        let used = acct.events.iter().any(|(origin, seqs)| {
            seqs.iter().any(|seq| {
                logs.event(EventId {
                    origin: *origin,
                    seq: *seq,
                })
                .and_then(Event::tx)
                .is_some_and(|t| t.currency == currency)
            })
        });
        // Compensations of this pair come from its settled events, which voiding never
        // touches: with none of its events left, it has none (an account's compensations in
        // another currency do not keep it: a region that never held the voided event has no
        // such pair, found by seed 161 once keys expire, and seed 240 with modes). A pair
        // that a rights transfer moved stays.
        let transfers = acct
            .balances
            .get(&currency)
            .is_some_and(|st| st.transfers > 0);
        if used || transfers {
            return;
        }
        if let Some(acct) = self.map.get_mut(account) {
            acct.balances.remove(&currency);
            if acct.balances.is_empty()
                && acct.events.values().all(Vec::is_empty)
                && acct.comps.is_empty()
            {
                self.map.remove(account);
            }
        }
    }

    /// The state of one (account, currency), if any.
    pub(crate) fn state(&self, account: &AccountId, currency: Currency) -> Option<&BalanceState> {
        self.map.get(account)?.balances.get(&currency)
    }

    /// Balance of one (account, currency). O(log accounts).
    pub(crate) fn balance(&self, account: &AccountId, currency: Currency) -> Balance {
        self.state(account, currency)
            .map(|b| b.bal)
            .unwrap_or_default()
    }
}
