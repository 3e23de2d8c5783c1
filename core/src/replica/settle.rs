//! Settlement (SPEC §5, §6): the stability watermark's effect, the incremental settled fold in
//! total order, the compensation feed, and the policy history the fold applies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rust_decimal::Decimal;

use crate::event::{Body, CompKind, Compensation, OrderKey};
use crate::id::{AccountId, EventId, Hlc};
use crate::money::Currency;
use crate::policy::{Action, Applied, FeePer, Policy, PolicyHash};

use super::accounts::Accounts;
use super::log::Logs;
use super::{Output, Report};

#[derive(Debug, Clone)]
pub(crate) struct PolicyVersion {
    pub(crate) version: u32,
    pub(crate) policy: Policy,
    pub(crate) hash: PolicyHash,
    /// The policy event and its HLC; `None` for version 1, the seed.
    pub(crate) event: Option<(EventId, Hlc)>,
}

impl PolicyVersion {
    pub(crate) fn seed(policy: Policy) -> PolicyVersion {
        PolicyVersion {
            version: 1,
            hash: policy.hash(),
            policy,
            event: None,
        }
    }
}

/// The settled prefix and what the fold derived from it.
#[derive(Debug)]
pub(crate) struct Settlement {
    /// Events not yet settled, by order key.
    pub(crate) unsettled: BTreeSet<OrderKey>,
    /// The last settled order key.
    pub(crate) settled_upto: Option<OrderKey>,
    /// Everything at or below it is settled.
    pub(crate) watermark: Hlc,
    /// The highest watermark asked to be persisted.
    pub(crate) persisted_watermark: Hlc,
    /// Compensations and conflict reports, in settled order, from position `feed_base`.
    pub(crate) feed: Vec<Compensation>,
    /// Feed entries before `feed`: those of a snapshot this replica was restored from.
    pub(crate) feed_base: u64,
    pub(crate) comp_by_cause: BTreeMap<EventId, u64>,
    pub(crate) conflict_by_cause: BTreeMap<EventId, u64>,
    /// Version 1 is the seed policy; each policy event folded adds the next.
    pub(crate) policies: Vec<PolicyVersion>,
    /// The rule of the policy in force per (tier position, currency), as
    /// [`Policy::applied`] computes it: emptied whenever the policy in force changes.
    pub(crate) applied_cache: BTreeMap<(Option<usize>, Currency), Applied>,
    /// Re-folding the settled prefix after a restart: what it derives was emitted before.
    pub(crate) replaying: bool,
    /// Events settled.
    pub(crate) settled_count: u64,
    /// Feed entries emitted.
    pub(crate) compensations_count: u64,
    /// How long an idempotency key is held, in HLC milliseconds ([`key_live`]).
    pub(crate) retention_ms: u64,
    /// Settled events holding an idempotency key, in settled order (so by HLC): (HLC ms,
    /// account, event). Each leaves the key index once the watermark is `retention_ms`
    /// past it ([`Settlement::expire_keys`]).
    pub(crate) key_expiry: VecDeque<(u64, AccountId, EventId)>,
    /// Keys dropped from the index by expiry.
    pub(crate) keys_expired: u64,
    /// Per (account, currency), the signed sum of the events dropped into snapshots (for the
    /// conservation self-check, which can no longer read them).
    pub(crate) compacted_sums: BTreeMap<(AccountId, Currency), Decimal>,
}

/// True when a key held by an event at `holder` still counts for an event at `later`
/// (SPEC §5, issue 13): their HLC milliseconds differ by less than the retention. A pure
/// function of the two events, so every region decides it alike.
pub(crate) fn key_live(holder: Hlc, later: Hlc, retention_ms: u64) -> bool {
    later.millis() < holder.millis().saturating_add(retention_ms)
}

impl Settlement {
    pub(crate) fn new(seed: Policy, retention_ms: u64) -> Settlement {
        Settlement {
            unsettled: BTreeSet::new(),
            settled_upto: None,
            watermark: Hlc::ZERO,
            persisted_watermark: Hlc::ZERO,
            feed: Vec::new(),
            feed_base: 0,
            comp_by_cause: BTreeMap::new(),
            conflict_by_cause: BTreeMap::new(),
            policies: vec![PolicyVersion::seed(seed)],
            applied_cache: BTreeMap::new(),
            replaying: false,
            settled_count: 0,
            compensations_count: 0,
            retention_ms,
            key_expiry: VecDeque::new(),
            keys_expired: 0,
            compacted_sums: BTreeMap::new(),
        }
    }

    /// The policy in force at the end of the settled prefix, and its version.
    pub(crate) fn current_policy(&self) -> (u32, &Policy) {
        let p = self.policies.last().unwrap_or_else(|| unreachable_policy());
        (p.version, &p.policy)
    }

    /// The feed entry at `position`, if held (those before a restore's snapshot are not).
    pub(crate) fn comp_at(&self, position: u64) -> Option<&Compensation> {
        self.feed
            .get(usize::try_from(position.checked_sub(self.feed_base)?).ok()?)
    }

    /// Feed entries, held or not: the next entry's position.
    pub(crate) fn feed_end(&self) -> u64 {
        self.feed_base + self.feed.len() as u64
    }

    /// Is the event at this order key settled?
    pub(crate) fn is_settled(&self, key: &OrderKey) -> bool {
        matches!(&self.settled_upto, Some(s) if key <= s)
    }

    /// Folds every unsettled event at or below the watermark, in total order, exactly once.
    pub(crate) fn settle(
        &mut self,
        logs: &Logs,
        accounts: &mut Accounts,
        out: &mut VecDeque<Output>,
    ) {
        while let Some(first) = self.unsettled.first().copied() {
            if first.0 > self.watermark {
                break;
            }
            self.unsettled.pop_first();
            // The settled prefix only grows, in total order.
            // The settled prefix only grows, in total order: a settled status never changes.
            // Cheap, so checked in production: a region that breaks it stops, not diverges.
            assert!(
                self.settled_upto.is_none_or(|s| s < first),
                "settled prefix would go back to {first:?}"
            );
            self.settled_upto = Some(first);
            self.settled_count += 1;
            self.fold(first, logs, accounts, out);
        }
        self.expire_keys(logs, accounts);
    }

    /// Drops from the key index every settled holder whose retention ended at the watermark:
    /// any event not settled yet is above the watermark, so no later event can find it live
    /// ([`key_live`]). A pure function of the settled prefix and the watermark; O(expired).
    fn expire_keys(&mut self, logs: &Logs, accounts: &mut Accounts) {
        let now = self.watermark;
        while let Some((ms, _, _)) = self.key_expiry.front() {
            if key_live(Hlc::from_millis(*ms), now, self.retention_ms) {
                break;
            }
            let Some((_, account, id)) = self.key_expiry.pop_front() else {
                break;
            };
            let Some(key) = super::keys::key_of(&logs.members, id) else {
                continue;
            };
            if let Some(acct) = accounts.map.get_mut(&account) {
                acct.forget_key(logs, key, id);
                self.keys_expired += 1;
            }
        }
    }

    /// The rule of the policy in force for an (account, currency), from the cache.
    pub(crate) fn applied(&mut self, account: &AccountId, currency: Currency) -> &Applied {
        let policy = match self.policies.last() {
            Some(p) => &p.policy,
            None => &unreachable_policy().policy,
        };
        self.applied_cache
            .entry((policy.tier_index(account.as_str()), currency))
            .or_insert_with(|| policy.applied(account.as_str(), currency))
    }

    fn fold(
        &mut self,
        key: OrderKey,
        logs: &Logs,
        accounts: &mut Accounts,
        out: &mut VecDeque<Output>,
    ) {
        let id = EventId {
            origin: key.1,
            seq: key.2,
        };
        let Some(event) = logs.event(id) else {
            return;
        };
        let hlc = event.hlc;
        let tx = match &event.body {
            Body::Policy(p) => {
                let version = u32::try_from(self.policies.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let policy = (**p).clone();
                self.policies.push(PolicyVersion {
                    version,
                    hash: policy.hash(),
                    policy,
                    event: Some((id, hlc)),
                });
                self.applied_cache.clear();
                return;
            }
            // Membership changes took effect when they were applied (members, cuts, keys);
            // the fold has nothing to do with them.
            Body::Membership(_) | Body::Account(_) => return,
            Body::Tx(tx) => tx,
        };
        if tx.idempotency_key.is_some() {
            self.key_expiry
                .push_back((hlc.millis(), tx.account.clone(), id));
        }
        // An account always exists once an event of it is held.
        let Some(acct) = accounts.map.get(&tx.account) else {
            return;
        };
        if acct.balances.get(&tx.currency).is_some_and(|st| st.frozen) {
            return;
        }
        // Duplicate check before the floor check. Every event with this key that is earlier
        // in the total order is settled already (it is below the watermark and held). The
        // event is a duplicate when ANY of them has the same body (a retry of B at a third
        // region after A took the key with another body is a duplicate of B, not a conflict
        // with A); otherwise, when one exists, a conflict with the first of them.
        let mut conflict_with = None;
        let mut duplicate = false;
        if let Some(k) = &tx.idempotency_key {
            let first = acct.keys.get(&logs.members, k);
            let others = acct.more_keys.get(&**k).map(Vec::as_slice).unwrap_or(&[]);
            let mut earliest: Option<(OrderKey, EventId)> = None;
            for other in first.into_iter().chain(others.iter().copied()) {
                if other == id {
                    continue;
                }
                let Some(o) = logs.event(other) else {
                    continue;
                };
                if o.key() >= key {
                    continue; // later in the total order: not settled yet
                }
                if !key_live(o.hlc, hlc, self.retention_ms) {
                    continue; // retention over: the key is free again
                }
                if o.tx().is_some_and(|t| t.same_body(tx)) {
                    duplicate = true;
                    break;
                }
                if earliest.is_none_or(|(ek, _)| o.key() < ek) {
                    earliest = Some((o.key(), other));
                }
            }
            if !duplicate {
                conflict_with = earliest.map(|(_, other)| other);
            }
        }
        let account = tx.account.clone();
        let keyed = tx.idempotency_key.is_some();
        let (kind, amount, currency, delta) = (tx.kind, tx.amount.value(), tx.currency, tx.delta());
        let version = self.current_policy().0;
        self.applied(&account, currency);
        let policy = match self.policies.last() {
            Some(p) => &p.policy,
            None => &unreachable_policy().policy,
        };
        let Some(applied) = self
            .applied_cache
            .get(&(policy.tier_index(account.as_str()), currency))
        else {
            return;
        };
        let Some(acct) = accounts.map.get_mut(&account) else {
            return;
        };
        let st = acct.balances.entry(currency).or_default();
        let before = st.bal.settled;
        // Some(compensation) or None on an overflow.
        let step: Option<Option<(CompKind, Decimal)>> = 'step: {
            let Some(after) = before.checked_add(delta) else {
                st.frozen = true;
                break 'step None;
            };
            st.bal.settled = after;
            let mut comp: Option<(CompKind, Decimal)> = None;
            if duplicate {
                // A reversed duplicate does not count against the floor, opens no episode.
                comp = Some((CompKind::Reversal, -delta));
            } else if kind.is_debit() && after < applied.floor {
                let Some(below) = applied.floor.checked_sub(after) else {
                    st.frozen = true;
                    break 'step None;
                };
                let overdrawn = below.min(amount);
                let reversible = applied.reversible.contains(&kind);
                if applied.action == Action::Reverse && reversible {
                    comp = Some((CompKind::Reversal, amount));
                } else {
                    if !st.in_episode {
                        st.in_episode = true;
                        st.episode_fee_charged = false;
                        st.episode_fees = Decimal::ZERO;
                    }
                    let charge = overdrawn > applied.fee.grace
                        && match applied.fee.per {
                            FeePer::Debit => true,
                            FeePer::Episode => !st.episode_fee_charged,
                        };
                    if charge {
                        match applied.fee_for(overdrawn) {
                            Some(fee) if fee > Decimal::ZERO => {
                                st.episode_fee_charged = true;
                                st.episode_fees = st.episode_fees.checked_add(fee).unwrap_or(fee);
                                comp = Some((CompKind::OverdraftFee, -fee));
                            }
                            Some(_) => {}
                            None => {
                                st.frozen = true;
                                break 'step None;
                            }
                        }
                    }
                }
            } else if st.in_episode {
                // Fees never extend an episode: it closes once the balance without them is
                // back at or above the floor.
                let without_fees = after.checked_add(st.episode_fees);
                if without_fees.is_none_or(|b| b >= applied.floor) {
                    st.in_episode = false;
                    st.episode_fee_charged = false;
                    st.episode_fees = Decimal::ZERO;
                }
            }
            Some(comp)
        };
        let Some(comp) = step else {
            out.push_back(Output::Report(Report::Overflow {
                account,
                currency,
                at: id,
            }));
            return;
        };
        let comp_delta = comp.map(|(_, d)| d).unwrap_or_default();
        let keyed_credit = !kind.is_debit() && keyed;
        if keyed_credit {
            // Escrow rights: a keyed credit grants its origin rights once settled, unless it
            // is reversed as a duplicate (docs/modes.md).
            if let Some(st) = accounts
                .map
                .get_mut(&account)
                .and_then(|a| a.balances.get_mut(&currency))
            {
                st.unspendable = st.unspendable.checked_sub(amount).unwrap_or(st.unspendable);
                if !duplicate {
                    st.add_rights(id.origin, amount);
                }
            }
        }
        if let Some((kind, delta)) = comp {
            let applied = self.emit(
                accounts, out, id, hlc, &account, currency, version, kind, delta, None,
            );
            // A fee or a reversal of a debit moves the rights of the debit's origin.
            if applied && !keyed_credit {
                if let Some(st) = accounts
                    .map
                    .get_mut(&account)
                    .and_then(|a| a.balances.get_mut(&currency))
                {
                    let mut d = delta;
                    d.rescale(currency.minor_units());
                    st.add_rights(id.origin, d);
                }
            }
        }
        if let Some(first) = conflict_with {
            self.emit(
                accounts,
                out,
                id,
                hlc,
                &account,
                currency,
                version,
                CompKind::IdempotencyConflict,
                Decimal::ZERO,
                Some(first),
            );
        }
        // Conservation: the settled balance moved by exactly the event and its compensation.
        // Conservation, checked in production (one map lookup): the settled balance moved by
        // exactly the event and its compensation.
        if let Some(st) = accounts
            .map
            .get(&account)
            .and_then(|a| a.balances.get(&currency))
        {
            assert!(
                st.frozen
                    || Some(st.bal.settled)
                        == before
                            .checked_add(delta)
                            .and_then(|b| b.checked_add(comp_delta)),
                "settled fold does not conserve money at {id}"
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        accounts: &mut Accounts,
        out: &mut VecDeque<Output>,
        cause: EventId,
        hlc: Hlc,
        account: &AccountId,
        currency: Currency,
        version: u32,
        kind: CompKind,
        delta: Decimal,
        related: Option<EventId>,
    ) -> bool {
        // Every compensation is at the currency's scale, so that adding it to a balance gives
        // the same bytes whatever that balance is (Decimal's sum of a zero and a value keeps the
        // value's scale: `0.00 + 0` would be `0` on a region whose provisional balance happened
        // to be zero, `5.00` elsewhere).
        let mut delta = delta;
        delta.rescale(currency.minor_units());
        // Exactly once per cause. A conflict report and a compensation may share a cause:
        // the report is keyed apart, by sub-position 2.
        let conflict = kind == CompKind::IdempotencyConflict;
        let by_cause = if conflict {
            &self.conflict_by_cause
        } else {
            &self.comp_by_cause
        };
        if by_cause.contains_key(&cause) {
            return false;
        }
        let position = self.feed_end();
        let comp = Compensation {
            kind,
            cause,
            hlc,
            account: account.clone(),
            currency,
            delta,
            policy_version: version,
            related,
            position,
        };
        let Some(acct) = accounts.map.get_mut(account) else {
            return false;
        };
        let st = acct.balances.entry(currency).or_default();
        let Some(settled) = st.bal.settled.checked_add(delta) else {
            st.frozen = true;
            out.push_back(Output::Report(Report::Overflow {
                account: account.clone(),
                currency,
                at: cause,
            }));
            return false;
        };
        st.bal.settled = settled;
        if !st.provisional_frozen {
            match st.bal.provisional.checked_add(delta) {
                Some(p) => st.bal.provisional = p,
                None => st.provisional_frozen = true,
            }
        }
        acct.comps.push(position);
        if conflict {
            self.conflict_by_cause.insert(cause, position);
        } else {
            self.comp_by_cause.insert(cause, position);
        }
        self.compensations_count += 1;
        if self.replaying {
            self.feed.push(comp);
        } else {
            self.feed.push(comp.clone());
            out.push_back(Output::Compensation(comp));
        }
        true
    }
}

pub(crate) fn unreachable_policy() -> &'static PolicyVersion {
    // `policies` always holds version 1; this exists only to avoid a panic path.
    static ZERO: std::sync::OnceLock<PolicyVersion> = std::sync::OnceLock::new();
    ZERO.get_or_init(|| PolicyVersion::seed(Policy::zero()))
}
