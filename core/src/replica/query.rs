//! The read side: balances, statuses, histories, the feed, members. Every getter is `&self`
//! and costs no more than its answer (no pass over the history), except where noted.

use rust_decimal::Decimal;

use crate::event::{CompKind, Compensation, Event, OrderKey};
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::money::Currency;

use super::{Balance, Replica};

/// One entry of an account's history, for the transaction list.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// A client event.
    Event {
        /// The event.
        event: &'a Event,
        /// In the settled prefix.
        settled: bool,
    },
    /// A feed entry (compensation or conflict report), always settled.
    Compensation(&'a Compensation),
}

/// Cursor into an account's history: its order key and sub-position.
pub type EntryKey = (OrderKey, u8);

/// A compensation's place in its account's history: right after its cause (a fee or a
/// reversal first, then an idempotency conflict report).
pub fn comp_entry_key(c: &Compensation) -> EntryKey {
    let sub = if c.kind == CompKind::IdempotencyConflict {
        2
    } else {
        1
    };
    ((c.hlc, c.cause.origin, c.cause.seq), sub)
}

/// A transaction's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not yet settled.
    Provisional,
    /// Settled, stands.
    Settled,
    /// Settled and reversed by the fold.
    Reversed,
}

/// Per-member view for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Region.
    pub region: RegionId,
    /// Events held from it without gaps.
    pub held: u64,
    /// Its contribution to the watermark.
    pub covered: Hlc,
    /// Heard from it at all.
    pub heard: bool,
    /// Seed policy matches ours (None: not heard yet).
    pub policy_matches: Option<bool>,
    /// Caught equivocating.
    pub equivocated: bool,
    /// Buffered out-of-order events.
    pub pending: u64,
    /// The HLC of its join (`None`: a founding member).
    pub joined: Option<Hlc>,
    /// Highest seq applied for now while a retire of it waits for its cut.
    pub held_back_above: Option<u64>,
    /// Its cut, once retired.
    pub cut: Option<u64>,
}

/// One version of the policy history (SPEC §6): version 1 is the seed (the policy file
/// recorded at the first start); each later one is a settled policy event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionInfo<'a> {
    /// Version number, from 1.
    pub version: u32,
    /// Its hash.
    pub hash: crate::policy::PolicyHash,
    /// The policy event that made it (its origin is `event.origin`); `None` for the seed.
    pub event: Option<EventId>,
    /// The HLC of that event (its place in the total order); `None` for the seed.
    pub hlc: Option<Hlc>,
    /// The policy.
    pub policy: &'a crate::policy::Policy,
}

/// Counters, monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events applied from peers.
    pub remote_applied: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events rejected (invalid, forged, skewed, broken promise).
    pub rejected: u64,
    /// Events dropped because a pending buffer was full.
    pub dropped: u64,
    /// Events settled.
    pub settled: u64,
    /// Feed entries emitted (compensations and conflict reports).
    pub compensations: u64,
    /// Idempotency key holders dropped from the index once their retention ended.
    pub keys_expired: u64,
    /// Snapshots taken by [`Replica::compact`] (events dropped from memory).
    pub compactions: u64,
    /// Snapshots restored from or installed ([`Replica::restore`],
    /// [`Replica::install_snapshot`]).
    pub restores: u64,
    /// Pulls answered with a snapshot.
    pub snapshots_sent: u64,
}

impl Replica {
    /// The policy history as settled here, oldest first: the version in force is the last.
    /// The same list on every region that settled the same prefix. O(versions).
    pub fn policy_history(&self) -> Vec<PolicyVersionInfo<'_>> {
        self.settle
            .policies
            .iter()
            .map(|p| PolicyVersionInfo {
                version: p.version,
                hash: p.hash,
                event: p.event.map(|(id, _)| id),
                hlc: p.event.map(|(_, h)| h),
                policy: &p.policy,
            })
            .collect()
    }

    /// Number of events held (all origins, gap-free).
    pub fn event_count(&self) -> u64 {
        self.logs.event_count()
    }

    /// Balance of one (account, currency). O(log accounts), independent of history length.
    pub fn balance(&self, account: &AccountId, currency: Currency) -> Balance {
        self.accounts.balance(account, currency)
    }

    /// Every currency balance of an account, by currency code.
    pub fn balances(&self, account: &AccountId) -> Vec<(Currency, Balance)> {
        self.accounts
            .map
            .get(account)
            .map(|a| a.balances.iter().map(|(c, b)| (*c, b.bal)).collect())
            .unwrap_or_default()
    }

    /// Every (account, currency) balance, in order. For checkers and snapshots.
    pub fn all_balances(&self) -> Vec<(AccountId, Currency, Balance)> {
        let mut out = Vec::new();
        for (a, s) in &self.accounts.map {
            for (c, b) in &s.balances {
                out.push((a.clone(), *c, b.bal));
            }
        }
        out
    }

    /// Settled balances below the floor of the policy in force: debt left by fees or
    /// non-reversible debits.
    pub fn debts(&self) -> Vec<(AccountId, Currency, Decimal)> {
        let (_, policy) = self.current_policy();
        let mut out = Vec::new();
        for (a, s) in &self.accounts.map {
            for (c, b) in &s.balances {
                if b.bal.settled < policy.applied(a.as_str(), *c).floor {
                    out.push((a.clone(), *c, b.bal.settled));
                }
            }
        }
        out
    }

    /// An event by id.
    pub fn event(&self, id: EventId) -> Option<&Event> {
        self.logs.event(id)
    }

    /// Events of one origin after `after_seq`, in seq order.
    pub fn origin_events(&self, origin: RegionId, after_seq: u64) -> &[Event] {
        self.logs.origin_events(origin, after_seq)
    }

    /// Consumes the replica and hands back its logs, origin by origin (by region id), each in
    /// seq order: for a host that keeps a crashed replica's events in memory and reloads a
    /// prefix of them with [`Replica::load`], without copying them.
    pub fn into_logs(self) -> Vec<(RegionId, Vec<Event>)> {
        self.logs
            .members
            .into_iter()
            .map(|(r, m)| (r, m.log))
            .collect()
    }

    /// Is the event at this order key settled?
    pub fn is_settled(&self, key: &OrderKey) -> bool {
        self.settle.is_settled(key)
    }

    /// Status of an event by id.
    pub fn status(&self, id: EventId) -> Option<(Status, Option<&Compensation>)> {
        let e = self.event(id)?;
        let comp = self
            .settle
            .comp_by_cause
            .get(&id)
            .and_then(|i| self.settle.comp_at(*i));
        if !self.is_settled(&e.key()) {
            return Some((Status::Provisional, None));
        }
        match comp {
            Some(c) if c.kind == CompKind::Reversal => Some((Status::Reversed, Some(c))),
            other => Some((Status::Settled, other)),
        }
    }

    /// The event holding an idempotency key on an account, if any.
    pub fn find_key(&self, account: &AccountId, key: &str) -> Option<EventId> {
        self.accounts
            .map
            .get(account)?
            .keys
            .get(&self.logs.members, key)
    }

    /// Idempotency key holders indexed, over every account (the first holders and the
    /// others). O(accounts): for tests and metrics.
    pub fn idempotency_keys_held(&self) -> u64 {
        self.accounts
            .map
            .values()
            .map(|a| {
                a.keys.len() as u64 + a.more_keys.values().map(|v| v.len() as u64).sum::<u64>()
            })
            .sum()
    }

    /// An account's history (events and feed entries) in total order after `after`.
    /// O(origins × (log history + limit)): a merge of the account's per-origin lists.
    pub fn entries(
        &self,
        account: &AccountId,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Vec<(EntryKey, Entry<'_>)> {
        let Some(a) = self.accounts.map.get(account) else {
            return Vec::new();
        };
        let event_key = |origin: RegionId, seq: u64| -> Option<EntryKey> {
            Some((self.event(EventId { origin, seq })?.key(), 0))
        };
        let comp_key = |position: u64| -> Option<EntryKey> {
            Some(comp_entry_key(self.settle.comp_at(position)?))
        };
        let past = |k: Option<EntryKey>| match (k, after) {
            (Some(k), Some(a)) => k <= a,
            _ => false,
        };
        // One cursor per origin, and one for the feed entries.
        let mut heads: Vec<(RegionId, &[u64])> = a
            .events
            .iter()
            .map(|(r, seqs)| {
                let start = seqs.partition_point(|&q| past(event_key(*r, q)));
                (*r, seqs.get(start..).unwrap_or(&[]))
            })
            .collect();
        let start = a.comps.partition_point(|&p| past(comp_key(p)));
        let mut comps = a.comps.get(start..).unwrap_or(&[]);
        let mut out = Vec::new();
        while out.len() < limit {
            // (key, which cursor: an origin index, or None for the feed)
            let mut best: Option<(EntryKey, Option<usize>)> = None;
            for (i, (r, seqs)) in heads.iter().enumerate() {
                if let Some(k) = seqs.first().and_then(|&q| event_key(*r, q)) {
                    if best.is_none_or(|(b, _)| k < b) {
                        best = Some((k, Some(i)));
                    }
                }
            }
            if let Some(k) = comps.first().and_then(|&p| comp_key(p)) {
                if best.is_none_or(|(b, _)| k < b) {
                    best = Some((k, None));
                }
            }
            let Some((k, cursor)) = best else {
                break;
            };
            match cursor {
                Some(i) => {
                    let (r, seqs) = &mut heads[i];
                    let id = EventId {
                        origin: *r,
                        seq: seqs.first().copied().unwrap_or(0),
                    };
                    *seqs = seqs.get(1..).unwrap_or(&[]);
                    if let Some(event) = self.event(id) {
                        let settled = self.is_settled(&k.0);
                        out.push((k, Entry::Event { event, settled }));
                    }
                }
                None => {
                    let p = comps.first().copied().unwrap_or(u64::MAX);
                    comps = comps.get(1..).unwrap_or(&[]);
                    if let Some(c) = self.settle.comp_at(p) {
                        out.push((k, Entry::Compensation(c)));
                    }
                }
            }
        }
        out
    }

    /// The compensation feed from position `from`, in settled order (after a restore from a
    /// snapshot, from the first entry after it at the earliest).
    pub fn feed(&self, from: u64, limit: usize) -> &[Compensation] {
        let start = usize::try_from(from.saturating_sub(self.settle.feed_base))
            .unwrap_or(usize::MAX)
            .min(self.settle.feed.len());
        let end = start.saturating_add(limit).min(self.settle.feed.len());
        &self.settle.feed[start..end]
    }

    /// Length of the feed.
    pub fn feed_len(&self) -> u64 {
        self.settle.feed_end()
    }

    /// Per-member status.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.logs
            .members
            .iter()
            .map(|(r, m)| MemberStatus {
                region: *r,
                held: m.len(),
                covered: if *r == self.cfg.region {
                    self.dur.announced
                } else {
                    m.covered
                },
                heard: m.heard || *r == self.cfg.region,
                policy_matches: if *r == self.cfg.region {
                    Some(!self.policy_broken)
                } else {
                    m.policy.map(|p| p == self.seed_hash)
                },
                equivocated: m.equivocated,
                pending: m.pending.len() as u64,
                joined: m.joined,
                held_back_above: if m.cut.is_none() { m.cap } else { None },
                cut: m.cut,
            })
            .collect()
    }
}
