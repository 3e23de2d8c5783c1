//! The replica state machine (SPEC §3–§6).
//!
//! Inputs: client commands ([`Replica::submit`]), peer messages ([`Replica::handle_message`]),
//! durability acknowledgements ([`Replica::handle_persisted`]) and time
//! ([`Replica::handle_timeout`]). Outputs are drained with [`Replica::poll_output`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crdts::{CmRDT, Dot, VClock};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

mod accounts;
mod durability;
mod keys;
mod log;
mod settle;

pub use accounts::Balance;
use accounts::Accounts;
use durability::{Awaiting, Durability};
use log::Logs;
use settle::{unreachable_policy, Settlement};

pub use crate::auth::{Authenticator, NoAuth};
use crate::event::{Body, CompKind, Compensation, Event, Kind, OrderKey, Tx};
pub use crate::message::{Evidence, Heartbeat, Message, SignedHeartbeat};
use crate::id::{AccountId, Clock, EventId, Hlc, RegionId};
use crate::money::{Amount, Currency};
use crate::policy::{Action, Applied, FeePer, Policy, PolicyHash};

/// Most out-of-order events buffered per origin; beyond it they are dropped and fetched
/// again by anti-entropy.
pub const PENDING_PER_ORIGIN_MAX: usize = 100_000;
/// Most own events in one push batch.
pub const GOSSIP_BATCH_EVENTS_MAX: usize = 1024;
/// Default heartbeat period.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 250;
/// How far ahead of the announced HLC the durable clock ceiling is placed.
pub const CEILING_MARGIN_MS: u64 = 2_000;
/// Most equivocation evidence pairs kept.
pub const EVIDENCE_MAX: usize = 64;
/// Most heartbeats per member remembered while the log has not reached their seq.
pub const PENDING_HEARTBEATS_MAX: usize = 32;
/// Evidence held is sent to peers again every this many heartbeats.
pub const EVIDENCE_RESEND_HEARTBEATS: u32 = 8;

/// Static configuration of a replica.
pub struct Config {
    /// This region.
    pub region: RegionId,
    /// Every member, this region included.
    pub members: Vec<RegionId>,
    /// Cluster id, covered by every signature.
    pub cluster: String,
    /// The policy file: version 1 of the policy history.
    pub policy: Policy,
    /// Largest tolerated lead of a remote HLC over local physical time.
    pub max_clock_skew_ms: u64,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Signer/verifier.
    pub auth: Box<dyn Authenticator>,
    /// The seed policy hash recorded in this region's storage, if any. A different file
    /// is reported and nothing settles.
    pub recorded_policy: Option<PolicyHash>,
    /// Started on an empty disk in an existing cluster: accept nothing until this region's
    /// own history has been pulled back from every peer.
    pub restore: bool,
}

impl Config {
    /// A configuration with defaults and no signatures.
    pub fn new(region: RegionId, members: Vec<RegionId>, policy: Policy) -> Config {
        Config {
            region,
            members,
            cluster: "default".into(),
            policy,
            max_clock_skew_ms: 60_000,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            auth: Box::new(NoAuth),
            recorded_policy: None,
            restore: false,
        }
    }
}

/// Things the host must write durably, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An event (own or remote).
    Event(Event),
    /// The clock ceiling: after a restart no HLC at or below it is issued.
    Ceiling(Hlc),
    /// Everything at or below this HLC is settled (written after the events it covers).
    Watermark(Hlc),
    /// Equivocation evidence: after a restart, hand every one back with
    /// [`Replica::restore_evidence`] so the origin stays frozen.
    Evidence(Evidence),
}

/// Outputs, drained with [`Replica::poll_output`] after every input.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Output {
    /// Write this record durably, then call [`Replica::handle_persisted`] with its index.
    Persist {
        /// Monotonic persistence index.
        index: u64,
        /// What to write.
        record: Record,
    },
    /// Send this message to every connected member.
    Broadcast(Message),
    /// A compensation settled (in feed order).
    Compensation(Compensation),
    /// Something an operator must hear about.
    Report(Report),
}

/// Reports of peer misbehaviour, conflicts and stalls. Never panics, never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// An event failed validation or its signature.
    Rejected {
        /// The event.
        id: EventId,
        /// Who sent it.
        from: RegionId,
        /// Why.
        reason: String,
    },
    /// A remote HLC too far in the future.
    ClockSkew {
        /// Who.
        from: RegionId,
        /// Its HLC, in ms.
        remote_ms: u64,
        /// Local physical time, in ms.
        local_ms: u64,
    },
    /// Two different events under one id: the origin is frozen.
    Equivocation {
        /// The id.
        id: EventId,
    },
    /// A peer's seed policy differs from ours: nothing settles.
    PolicyMismatch {
        /// The peer (or this region, against its recorded history).
        region: RegionId,
        /// Its hash.
        theirs: PolicyHash,
        /// Ours.
        ours: PolicyHash,
    },
    /// A settled sum overflowed: that (account, currency) is frozen.
    Overflow {
        /// Account.
        account: AccountId,
        /// Currency.
        currency: Currency,
        /// The event that would overflow.
        at: EventId,
    },
    /// A message from a non-member.
    UnknownMember {
        /// Who.
        from: RegionId,
    },
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The debit would take the provisional balance below the floor.
    #[error("insufficient funds: available {available} {currency}, requested {requested}")]
    InsufficientFunds {
        /// Provisional balance minus floor, rendered.
        available: String,
        /// The amount asked for, rendered.
        requested: String,
        /// Currency.
        currency: Currency,
    },
    /// The idempotency key was used with a different body.
    #[error("idempotency key already used for {existing} with a different request body")]
    IdempotencyConflict {
        /// The event holding the key.
        existing: EventId,
    },
    /// The region is restoring its own history from peers.
    #[error("region is restoring its history from peers and accepts nothing yet")]
    Restoring,
    /// The (account, currency) is frozen after an overflow.
    #[error("account {account} in {currency} is frozen after an arithmetic overflow")]
    Frozen {
        /// Account.
        account: AccountId,
        /// Currency.
        currency: Currency,
    },
    /// The balance would overflow.
    #[error("the balance would overflow")]
    Overflow,
    /// The amount is not valid for the currency (scale, sign or limit): peers would refuse
    /// the event, so it is never issued.
    #[error("invalid amount: {0}")]
    Amount(#[from] crate::money::AmountError),
    /// The idempotency key or the reference is malformed.
    #[error("invalid request: {0}")]
    Invalid(#[from] crate::id::IdError),
    /// A policy change that does not validate.
    #[error("invalid policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

/// The result of an accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new event.
    New(EventId),
    /// A retry of an event already known (maybe from another region).
    Existing(EventId),
}

impl Submitted {
    /// The event id either way.
    pub fn id(self) -> EventId {
        match self {
            Submitted::New(i) | Submitted::Existing(i) => i,
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    /// Account.
    pub account: AccountId,
    /// Kind.
    pub kind: Kind,
    /// Amount (already scale-checked for `currency`).
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Reference.
    pub reference: Option<String>,
}

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
}

/// The replica: one region's entire ledger state, as parts with one job each.
pub struct Replica {
    cfg: Config,
    seed_hash: PolicyHash,
    clock: Clock,
    /// Per-origin logs, out-of-order buffers, what each member announced.
    logs: Logs,
    /// Balances, per-account histories and idempotency keys.
    accounts: Accounts,
    /// Watermark, settled fold, feed, policy history.
    settle: Settlement,
    /// Persist indexes, durable own events, clock ceilings, heartbeats.
    dur: Durability,
    outputs: VecDeque<Output>,
    restoring: bool,
    policy_broken: bool,
    history_policy_adopted: bool,
    evidence: Vec<Evidence>,
    /// Heartbeats issued since evidence was last sent to peers.
    evidence_resend_heartbeats: u32,
    stats: Stats,
}

impl Replica {
    /// A replica with empty state. `ceiling` is the durable clock ceiling recovered from
    /// storage (zero on a new disk): no HLC at or below it will be issued.
    pub fn new(cfg: Config, ceiling: Hlc) -> Replica {
        let seed_hash = cfg.policy.hash();
        let policy_broken = matches!(cfg.recorded_policy, Some(h) if h != seed_hash);
        let has_peers = cfg.members.iter().any(|m| *m != cfg.region);
        let mut r = Replica {
            restoring: cfg.restore && has_peers,
            settle: Settlement::new(cfg.policy.clone()),
            seed_hash,
            clock: Clock::new(ceiling),
            logs: Logs::new(cfg.region, &cfg.members),
            accounts: Accounts::default(),
            outputs: VecDeque::new(),
            dur: Durability::new(ceiling),
            policy_broken,
            history_policy_adopted: false,
            evidence: Vec::new(),
            evidence_resend_heartbeats: 0,
            stats: Stats::default(),
            cfg,
        };
        if let Some(h) = r.cfg.recorded_policy {
            if h != r.seed_hash {
                let region = r.cfg.region;
                r.report(Report::PolicyMismatch {
                    region,
                    theirs: h,
                    ours: r.seed_hash,
                });
            }
        }
        r
    }

    // ---- getters ------------------------------------------------------------------------

    /// This region.
    pub fn region(&self) -> RegionId {
        self.cfg.region
    }

    /// Hash of the seed policy (the file).
    pub fn policy_hash(&self) -> PolicyHash {
        self.seed_hash
    }

    /// The policy in force at the end of the settled prefix, and its version.
    pub fn current_policy(&self) -> (u32, &Policy) {
        self.settle.current_policy()
    }

    /// The version vector: per origin, the highest seq held without gaps.
    pub fn version_vector(&self) -> &VClock<RegionId> {
        &self.logs.vv
    }

    /// The stability watermark: every event at or below it is settled.
    pub fn watermark(&self) -> Hlc {
        self.settle.watermark
    }

    /// The last HLC issued or observed.
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }

    /// Settlement lag: local clock minus watermark, in ms.
    pub fn settlement_lag_ms(&self) -> u64 {
        self.clock
            .last()
            .millis()
            .saturating_sub(self.settle.watermark.millis())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            settled: self.settle.settled_count,
            compensations: self.settle.compensations_count,
            ..self.stats
        }
    }

    /// True while restoring own history from peers.
    pub fn is_restoring(&self) -> bool {
        self.restoring
    }

    /// True if a policy mismatch or an equivocation stops settlement.
    pub fn settlement_blocked(&self) -> bool {
        self.policy_broken
            || self
                .logs.members
                .values()
                .any(|m| m.equivocated || m.policy.is_some_and(|p| p != self.seed_hash))
    }

    /// After a restart whose policy file differs from the recorded history
    /// (`Config::recorded_policy`): folds the history with the recorded seed policy instead of
    /// the file, so what was settled before stays exactly as it was. Settlement still does not
    /// advance until the file matches again. Ignored unless `recorded` hashes to the recorded
    /// hash. Call before [`Replica::load`].
    pub fn adopt_recorded_policy(&mut self, recorded: Policy) -> bool {
        if !self.policy_broken || self.cfg.recorded_policy != Some(recorded.hash()) {
            return false;
        }
        if let Some(first) = self.settle.policies.first_mut() {
            first.policy = recorded;
        }
        self.settle.applied_cache.clear();
        self.history_policy_adopted = true;
        true
    }

    /// Equivocation evidence held (durable or about to be).
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    /// After a restart, before [`Replica::load`]: the evidence records found in storage. Each
    /// one that still proves misbehaviour freezes its origin again, silently (it was reported
    /// before the crash). Returns how many were restored.
    pub fn restore_evidence(&mut self, list: Vec<Evidence>) -> usize {
        let mut n = 0;
        for ev in list {
            if self.evidence.len() >= EVIDENCE_MAX || self.evidence.contains(&ev) {
                continue;
            }
            if !self.logs.members.contains_key(&ev.origin())
                || !self.cfg.auth.verify_evidence(&ev, &self.cfg.cluster)
            {
                continue;
            }
            if let Some(m) = self.logs.members.get_mut(&ev.origin()) {
                m.equivocated = true;
            }
            self.evidence.push(ev);
            n += 1;
        }
        n
    }

    /// Number of events held (all origins, gap-free).
    pub fn event_count(&self) -> u64 {
        self.logs.members.values().map(|m| m.log.len() as u64).sum()
    }

    /// Balance of one (account, currency). O(log accounts), independent of history length.
    pub fn balance(&self, account: &AccountId, currency: Currency) -> Balance {
        self.accounts.map
            .get(account)
            .and_then(|a| a.balances.get(&currency))
            .map(|b| b.bal)
            .unwrap_or_default()
    }

    /// Every currency balance of an account, by currency code.
    pub fn balances(&self, account: &AccountId) -> Vec<(Currency, Balance)> {
        self.accounts.map
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
        let Some(m) = self.logs.members.get(&origin) else {
            return &[];
        };
        let from = usize::try_from(after_seq)
            .unwrap_or(usize::MAX)
            .min(m.log.len());
        &m.log[from..]
    }

    /// Consumes the replica and hands back its logs, origin by origin (by region id), each in
    /// seq order: for a host that keeps a crashed replica's events in memory and reloads a
    /// prefix of them with [`Replica::load`], without copying them.
    pub fn into_logs(self) -> Vec<(RegionId, Vec<Event>)> {
        self.logs.members.into_iter().map(|(r, m)| (r, m.log)).collect()
    }

    /// Is the event at this order key settled?
    pub fn is_settled(&self, key: &OrderKey) -> bool {
        self.settle.is_settled(key)
    }

    /// Status of an event by id.
    pub fn status(&self, id: EventId) -> Option<(Status, Option<&Compensation>)> {
        let e = self.event(id)?;
        let comp = self
            .settle.comp_by_cause
            .get(&id)
            .and_then(|i| self.settle.feed.get(usize::try_from(*i).ok()?));
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
        self.accounts.map.get(account)?.keys.get(&self.logs.members, key)
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
            let c = self.settle.feed.get(usize::try_from(position).ok()?)?;
            let sub = if c.kind == CompKind::IdempotencyConflict {
                2
            } else {
                1
            };
            Some(((c.hlc, c.cause.origin, c.cause.seq), sub))
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
                    if let Some(c) = usize::try_from(p).ok().and_then(|p| self.settle.feed.get(p)) {
                        out.push((k, Entry::Compensation(c)));
                    }
                }
            }
        }
        out
    }

    /// The compensation feed from position `after` (exclusive), in settled order.
    pub fn feed(&self, from: u64, limit: usize) -> &[Compensation] {
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.settle.feed.len());
        let end = start.saturating_add(limit).min(self.settle.feed.len());
        &self.settle.feed[start..end]
    }

    /// Length of the feed.
    pub fn feed_len(&self) -> u64 {
        self.settle.feed.len() as u64
    }

    /// Per-member status.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.logs.members
            .iter()
            .map(|(r, m)| MemberStatus {
                region: *r,
                held: m.log.len() as u64,
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
            })
            .collect()
    }

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
        let mut unsettled = 0usize;
        for (r, m) in &self.logs.members {
            let mut prev: Option<Hlc> = None;
            for (i, e) in m.log.iter().enumerate() {
                if e.id.origin != *r || e.id.seq != i as u64 + 1 {
                    return Err(format!("log of {r} has {} at position {}", e.id, i + 1));
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
            if self.logs.vv.get(r) != m.log.len() as u64 {
                return Err(format!("version vector of {r} differs from its log"));
            }
        }
        if unsettled != self.settle.unsettled.len() {
            return Err("unsettled index differs from the logs".into());
        }
        for (i, c) in self.settle.feed.iter().enumerate() {
            if c.position != i as u64 {
                return Err(format!("feed entry {i} has position {}", c.position));
            }
            let map = if c.kind == CompKind::IdempotencyConflict {
                &self.settle.conflict_by_cause
            } else {
                &self.settle.comp_by_cause
            };
            if map.get(&c.cause) != Some(&(i as u64)) {
                return Err(format!("{} is not indexed by its cause", c.id()));
            }
            add(&mut sums, &c.account, c.currency, c.delta, true);
        }
        if self.settle.comp_by_cause.len() + self.settle.conflict_by_cause.len() != self.settle.feed.len() {
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
        }
        Ok(())
    }

    /// Anti-entropy: the events a peer with version vector `theirs` is missing, origin by
    /// origin, at most `limit`.
    pub fn missing_for(&self, theirs: &VClock<RegionId>, limit: usize) -> Vec<Event> {
        self.missing_for_gaps(theirs, &VClock::new(), limit)
    }

    /// Anti-entropy for [`Message::PullGaps`]: like [`Replica::missing_for`], but for each
    /// origin in `upto` only the events below that seq (the requester holds the rest).
    pub fn missing_for_gaps(
        &self,
        theirs: &VClock<RegionId>,
        upto: &VClock<RegionId>,
        limit: usize,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (r, m) in &self.logs.members {
            if out.len() >= limit {
                break;
            }
            // Only durable own events leave this region.
            let held = if *r == self.cfg.region {
                self.dur.own_durable_seq.min(m.log.len() as u64)
            } else {
                m.log.len() as u64
            };
            let held = match upto.get(r) {
                0 => held,
                first_buffered => held.min(first_buffered - 1),
            };
            let have = theirs.get(r);
            if have >= held {
                continue;
            }
            let from = usize::try_from(have).unwrap_or(usize::MAX);
            let to = usize::try_from(held).unwrap_or(usize::MAX);
            let room = limit.saturating_sub(out.len());
            if let Some(slice) = m.log.get(from..to) {
                out.extend(slice.iter().take(room).cloned());
            }
        }
        out
    }

    /// How many events a member's version vector (from its last heartbeat) holds that this
    /// region lacks and could apply: origins that are not members, or frozen after
    /// equivocation, count nothing (a pull could never bring them). Saturating: peer-supplied
    /// counts never overflow.
    pub fn events_lacking(&self, theirs: &VClock<RegionId>) -> u64 {
        theirs
            .dots
            .iter()
            .filter(|(o, _)| self.logs.members.get(o).is_some_and(|m| !m.equivocated))
            .map(|(o, s)| s.saturating_sub(self.logs.vv.get(o)))
            .fold(0u64, u64::saturating_add)
    }

    /// The version vector a member announced in its last accepted heartbeat.
    pub fn member_vv(&self, member: RegionId) -> Option<&VClock<RegionId>> {
        self.logs.members.get(&member).filter(|m| m.heard).map(|m| &m.vv)
    }

    /// Builds a pull request for the peers: a [`Message::PullGaps`] when events are buffered
    /// out of order (so they are not fetched again), else a plain [`Message::Pull`].
    pub fn pull_request(&self, limit: u32) -> Message {
        let mut upto = VClock::new();
        for (r, m) in &self.logs.members {
            if let Some((&first, _)) = m.pending.first_key_value() {
                upto.dots.insert(*r, first);
            }
        }
        if upto.dots.is_empty() {
            Message::Pull {
                vv: self.logs.vv.clone(),
                limit,
            }
        } else {
            Message::PullGaps {
                vv: self.logs.vv.clone(),
                upto,
                limit,
            }
        }
    }

    // ---- outputs and timers ------------------------------------------------------------

    /// The next output, if any. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Replica::handle_timeout`] next, in physical ms.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        self.dur.next_heartbeat_ms
    }

    /// Time passes: issues a heartbeat when one is due (and the clock ceiling allows).
    /// A spurious call does nothing harmful.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms < self.dur.next_heartbeat_ms {
            return;
        }
        self.dur.next_heartbeat_ms = now_ms.saturating_add(self.cfg.heartbeat_interval_ms);
        self.heartbeat(now_ms);
    }

    fn heartbeat(&mut self, now_ms: u64) {
        // A region restoring its history from peers promises nothing: its clock may still
        // be below HLCs its previous incarnation issued.
        if self.restoring {
            return;
        }
        let own_seq = self.own_log_len();
        // A heartbeat (h, seq) promises that every own event at or below h is durable and
        // has a seq at or below `seq`. With writes in flight, announce just below the first
        // event that is not durable yet, so a busy region still advances the watermark.
        let durable = self.dur.own_durable_seq.min(own_seq);
        let h = if durable == own_seq {
            self.clock.tick(now_ms)
        } else {
            let next = self.event(EventId {
                origin: self.cfg.region,
                seq: durable + 1,
            });
            match next {
                Some(e) if e.hlc.0 > 0 => Hlc(e.hlc.0 - 1),
                _ => return,
            }
        };
        if h <= self.dur.announced {
            return;
        }
        let own_seq = durable;
        let wanted = Hlc::from_millis(h.millis().saturating_add(CEILING_MARGIN_MS));
        if h.millis().saturating_add(CEILING_MARGIN_MS / 2) > self.dur.ceiling_requested.millis() {
            self.dur.ceiling_requested = wanted;
            let idx = self.persist(Record::Ceiling(wanted));
            self.dur.awaiting.push_back((idx, Awaiting::Ceiling(wanted)));
        }
        if h > self.dur.ceiling_durable {
            return; // retried once the ceiling is durable
        }
        self.dur.announced = h;
        // Own events leave this region only once durable: the announced version vector says
        // so too, so peers do not pull what they cannot get yet.
        let mut vv = self.logs.vv.clone();
        if own_seq == 0 {
            vv.dots.remove(&self.cfg.region);
        } else {
            vv.dots.insert(self.cfg.region, own_seq);
        }
        let hb = Heartbeat {
            origin: self.cfg.region,
            hlc: h,
            seq: own_seq,
            vv,
            policy: self.seed_hash,
        };
        let sig = self.cfg.auth.sign_heartbeat(&hb, &self.cfg.cluster).into();
        self.outputs
            .push_back(Output::Broadcast(Message::SignedHeartbeat(
                SignedHeartbeat { hb, sig },
            )));
        // Evidence travels again now and then: a peer that was away when it was first sent
        // (or a crash between making it durable and sending it) still learns of it.
        if !self.evidence.is_empty() {
            self.evidence_resend_heartbeats += 1;
            if self.evidence_resend_heartbeats >= EVIDENCE_RESEND_HEARTBEATS {
                self.evidence_resend_heartbeats = 0;
                for ev in self.evidence.clone() {
                    self.outputs
                        .push_back(Output::Broadcast(Message::Evidence(ev)));
                }
            }
        }
        self.advance();
    }

    /// The host made every record with index `<= index` durable.
    pub fn handle_persisted(&mut self, index: u64) {
        let ceiling_before = self.dur.ceiling_durable;
        let mut settle_to = None;
        for what in self.dur.acknowledge(index) {
            match what {
                Awaiting::Own(_) | Awaiting::Ceiling(_) => {}
                Awaiting::Watermark(w) => settle_to = Some(w),
                Awaiting::Evidence(i) => {
                    // Durable: now it may be reported and shown to peers.
                    if let Some(ev) = self.evidence.get(i).cloned() {
                        self.report(Report::Equivocation { id: ev.id() });
                        self.outputs
                            .push_back(Output::Broadcast(Message::Evidence(ev)));
                    }
                }
            }
        }
        let ceiling_moved = self.dur.ceiling_durable > ceiling_before;
        self.push_own();
        // Settle only once the watermark record is durable (it is written after the events it
        // covers): a crash can then never take back a settled event or a compensation.
        if let Some(w) = settle_to {
            if w > self.settle.watermark {
                self.settle.watermark = w;
                self.settle_now();
            }
        }
        if ceiling_moved && self.dur.announced == Hlc::ZERO {
            // First ceiling after start: announce at once rather than a period later.
            self.dur.next_heartbeat_ms = 0;
        }
    }

    fn push_own(&mut self) {
        while self.dur.own_gossiped_seq < self.dur.own_durable_seq {
            let me = self.cfg.region;
            let from = self.dur.own_gossiped_seq;
            let to = self
                .dur.own_durable_seq
                .min(from.saturating_add(GOSSIP_BATCH_EVENTS_MAX as u64));
            let batch: Vec<Event> = self
                .logs.members
                .get(&me)
                .and_then(|m| {
                    let a = usize::try_from(from).ok()?;
                    let b = usize::try_from(to).ok()?;
                    m.log.get(a..b).map(<[Event]>::to_vec)
                })
                .unwrap_or_default();
            self.dur.own_gossiped_seq = to;
            self.outputs
                .push_back(Output::Broadcast(Message::Events(batch)));
        }
    }

    fn persist(&mut self, record: Record) -> u64 {
        self.dur.persist(&mut self.outputs, record)
    }

    /// Settles everything up to the watermark (which the caller just raised).
    fn settle_now(&mut self) {
        self.settle
            .settle(&self.logs, &mut self.accounts, &mut self.outputs);
    }

    fn report(&mut self, r: Report) {
        self.outputs.push_back(Output::Report(r));
    }

    fn own_log_len(&self) -> u64 {
        self.logs.members
            .get(&self.cfg.region)
            .map(|m| m.log.len() as u64)
            .unwrap_or(0)
    }

    // ---- commands --------------------------------------------------------------------------

    /// Accepts or refuses a client transaction against the local provisional balance.
    ///
    /// A retry (same account and key, same body) returns the event already known, wherever
    /// it was issued. A new event is emitted as [`Output::Persist`]; acknowledge the client
    /// only after [`Replica::handle_persisted`] covers it.
    pub fn submit(&mut self, now_ms: u64, req: TxRequest) -> Result<Submitted, SubmitError> {
        if self.restoring {
            return Err(SubmitError::Restoring);
        }
        // Everything a peer checks in `Event::validate`, checked before anything is issued;
        // the event carries the amount at the currency's scale (`100` parsed without minor
        // units becomes `100.00` in USD), as peers require.
        let canonical = Amount::new(req.amount.value(), req.currency)?;
        if let Some(k) = &req.idempotency_key {
            crate::id::check_idempotency_key(k)?;
        }
        if let Some(r) = &req.reference {
            crate::id::check_reference(r)?;
        }
        let floor = self.settle.applied(&req.account, req.currency).floor;
        if let (Some(key), Some(acct)) = (&req.idempotency_key, self.accounts.map.get(&req.account)) {
            if let Some(first) = acct.keys.get(&self.logs.members, key.as_str()) {
                let same = |id: &EventId| {
                    self.event(*id).and_then(Event::tx).is_some_and(|t| {
                        t.kind == req.kind
                            && t.amount == req.amount
                            && t.currency == req.currency
                            && t.reference.as_deref() == req.reference.as_deref()
                    })
                };
                // The first holder in total order, else (after a cross-region conflict) any
                // other holder with this very body: a retry gets its own original back.
                let hit = std::iter::once(first)
                    .chain(
                        acct.more_keys
                            .get(key.as_str())
                            .into_iter()
                            .flatten()
                            .copied(),
                    )
                    .find(same);
                return match hit {
                    Some(id) => Ok(Submitted::Existing(id)),
                    None => Err(SubmitError::IdempotencyConflict { existing: first }),
                };
            }
        }
        let state = self
            .accounts.map
            .get(&req.account)
            .and_then(|a| a.balances.get(&req.currency));
        if state.is_some_and(|s| s.frozen || s.provisional_frozen) {
            return Err(SubmitError::Frozen {
                account: req.account,
                currency: req.currency,
            });
        }
        let provisional = state.map(|s| s.bal.provisional).unwrap_or_default();
        let after = provisional
            .checked_add(req.kind.signed(req.amount.value()))
            .ok_or(SubmitError::Overflow)?;
        if req.kind.is_debit() && after < floor {
            let available = provisional
                .checked_sub(floor)
                .unwrap_or(Decimal::ZERO)
                .max(Decimal::ZERO);
            return Err(SubmitError::InsufficientFunds {
                available: req.currency.render(available),
                requested: req.currency.render(req.amount.value()),
                currency: req.currency,
            });
        }
        let hlc = self.clock.tick(now_ms);
        let id = EventId {
            origin: self.cfg.region,
            seq: self.own_log_len() + 1,
        };
        let account = self.intern(req.account);
        let mut event = Event {
            id,
            hlc,
            body: Body::Tx(Tx {
                account,
                kind: req.kind,
                amount: canonical,
                currency: req.currency,
                idempotency_key: req.idempotency_key.map(Into::into),
                reference: req.reference.map(Into::into),
            }),
            sig: Box::new([]),
        };
        event.sig = self.cfg.auth.sign_event(&event, &self.cfg.cluster).into();
        self.apply_own(event);
        Ok(Submitted::New(id))
    }

    /// Issues a policy change: it applies to events after it in the total order, once settled.
    pub fn submit_policy(&mut self, now_ms: u64, policy: Policy) -> Result<EventId, SubmitError> {
        if self.restoring {
            return Err(SubmitError::Restoring);
        }
        policy.validate()?;
        let hlc = self.clock.tick(now_ms);
        let id = EventId {
            origin: self.cfg.region,
            seq: self.own_log_len() + 1,
        };
        let mut event = Event {
            id,
            hlc,
            body: Body::Policy(Box::new(policy)),
            sig: Box::new([]),
        };
        event.sig = self.cfg.auth.sign_event(&event, &self.cfg.cluster).into();
        self.apply_own(event);
        Ok(id)
    }

    fn apply_own(&mut self, event: Event) {
        let seq = event.id.seq;
        let idx = self.persist(Record::Event(event.clone()));
        self.dur.awaiting.push_back((idx, Awaiting::Own(seq)));
        self.insert(event);
    }

    /// Reloads durable events from storage after a restart (own and remote, any order).
    /// Own events are durable by definition. Call it once, on a fresh replica, before any
    /// other input. Events that do not validate, duplicates and anything after a gap are
    /// skipped (a second check of what was checked before it was persisted).
    pub fn load(&mut self, events: Vec<Event>) {
        let mut sorted = events;
        sorted.sort_by_key(|e| (e.id.origin, e.id.seq));
        // The order keys go into the unsettled index at the end, in one sorted bulk build,
        // rather than one tree insert per event.
        let mut keys = Vec::with_capacity(sorted.len());
        // Each log grows once, not by doublings.
        for (r, m) in self.logs.members.iter_mut() {
            let from = sorted.partition_point(|e| e.id.origin < *r);
            let to = sorted.partition_point(|e| e.id.origin <= *r);
            m.log.reserve(to.saturating_sub(from));
        }
        for e in sorted {
            let origin = e.id.origin;
            let Some(m) = self.logs.members.get(&origin) else {
                continue;
            };
            if e.id.seq != m.log.len() as u64 + 1 || e.validate().is_err() {
                continue;
            }
            if let Some(prev) = m.log.last() {
                if e.hlc <= prev.hlc {
                    continue;
                }
            }
            self.clock.observe(e.hlc);
            if let Some(m) = self.logs.members.get_mut(&origin) {
                m.covered = m.covered.max(e.hlc);
            }
            let key = e.key();
            if self.insert_unindexed(e) {
                keys.push(key);
            }
        }
        if self.settle.unsettled.is_empty() {
            self.settle.unsettled = keys.into_iter().collect();
        } else {
            self.settle.unsettled.extend(keys);
        }
        self.dur.own_durable_seq = self.own_log_len();
        self.dur.own_gossiped_seq = self.dur.own_durable_seq;
    }

    /// After [`Replica::load`]: settles up to the watermark recorded before the restart, so
    /// nothing settled is ever shown as unsettled again.
    pub fn restore_watermark(&mut self, watermark: Hlc) {
        self.settle.persisted_watermark = self.settle.persisted_watermark.max(watermark);
        // A region whose policy file disagrees with its recorded history settles nothing,
        // not even what it had settled before, unless it folds with the recorded policy
        // (`adopt_recorded_policy`): with the file the fold would rewrite history.
        if self.policy_broken && !self.history_policy_adopted {
            return;
        }
        if watermark > self.settle.watermark {
            self.settle.watermark = watermark;
            self.clock.observe(watermark);
            // Every event at or below the watermark of every member was held (and made
            // durable before the watermark record): nothing may arrive at or below it.
            for m in self.logs.members.values_mut() {
                m.covered = m.covered.max(watermark);
            }
            // Everything up to a durable watermark was settled, and its compensations emitted,
            // before the restart: rebuild the feed without emitting them again.
            self.settle.replaying = true;
            self.settle_now();
            self.settle.replaying = false;
        }
    }

    fn intern(&mut self, account: AccountId) -> AccountId {
        match self.accounts.map.get_key_value(&account) {
            Some((k, _)) => k.clone(),
            None => {
                self.accounts.map
                    .insert(account.clone(), accounts::AccountState::default());
                account
            }
        }
    }

    /// Adds an event to the log and indexes (already validated, gap-free).
    fn insert(&mut self, event: Event) {
        let key = event.key();
        if self.insert_unindexed(event) {
            self.settle.unsettled.insert(key);
        }
    }

    /// [`Replica::insert`] but for the unsettled index, which the caller updates: true if
    /// the event was added.
    fn insert_unindexed(&mut self, mut event: Event) -> bool {
        let key = event.key();
        let origin = event.id.origin;
        let Some(held) = self.logs.members.get(&origin).map(|m| m.log.len() as u64) else {
            return false;
        };
        // Gap-free per origin: a bug, not an input, if it does not hold.
        debug_assert_eq!(event.id.seq, held + 1, "gap in the log of {origin}");
        if event.id.seq != held + 1 {
            return false;
        }
        if let Body::Tx(tx) = &mut event.body {
            let members = &self.logs.members;
            // One lookup of the account: its state, and the map's own handle of the id (one
            // shared allocation per account).
            let acct = match self.accounts.map.entry(tx.account.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => {
                    tx.account = o.key().clone();
                    o.into_mut()
                }
                std::collections::btree_map::Entry::Vacant(v) => v.insert(accounts::AccountState::default()),
            };
            let seqs = acct.events.entry(origin).or_default();
            debug_assert!(seqs.last().is_none_or(|&q| q < event.id.seq));
            seqs.push(event.id.seq);
            if let Some(k) = &tx.idempotency_key {
                // The key maps to the first event holding it in the total order, so a retry
                // finds the same event on every region once both are known. The first holder
                // goes to `keys`, any other to `more_keys` (only duplicates and conflicts,
                // which are rare).
                let other = match acct.keys.holder_or_insert(members, k, event.id) {
                    None => None,
                    Some(have) => match log::log_event(members, *have).map(|e| e.key() < key) {
                        Some(true) => Some(event.id),
                        Some(false) => Some(std::mem::replace(have, event.id)),
                        None => {
                            *have = event.id;
                            None
                        }
                    },
                };
                if let Some(other) = other {
                    acct.more_keys.entry(k.clone()).or_default().push(other);
                }
            }
            let st = acct.balances.entry(tx.currency).or_default();
            if !st.provisional_frozen {
                match st.bal.provisional.checked_add(tx.delta()) {
                    Some(v) => st.bal.provisional = v,
                    None => st.provisional_frozen = true,
                }
            }
        }
        let before = self.logs.vv.get(&origin);
        self.logs.vv.apply(Dot::new(origin, event.id.seq));
        // The version vector never goes down, and moves by exactly one.
        debug_assert_eq!(self.logs.vv.get(&origin), before.max(event.id.seq));
        if let Some(m) = self.logs.members.get_mut(&origin) {
            m.log.push(event);
        }
        true
    }

    // ---- merge ---------------------------------------------------------------------------

    /// A message from peer `from`, at local physical time `now_ms`.
    pub fn handle_message(&mut self, now_ms: u64, from: RegionId, msg: Message) {
        match msg {
            Message::Events(events) => self.handle_events(now_ms, from, events),
            Message::Heartbeat(hb) => self.handle_heartbeat(
                now_ms,
                from,
                SignedHeartbeat {
                    hb,
                    sig: Box::new([]),
                },
            ),
            Message::SignedHeartbeat(shb) => self.handle_heartbeat(now_ms, from, shb),
            Message::Evidence(ev) => self.handle_evidence(from, ev),
            // Answered by the host with `missing_for` / `missing_for_gaps`.
            Message::Pull { .. } | Message::PullGaps { .. } => {}
        }
    }

    /// Merges a batch of events (push or anti-entropy answer).
    pub fn handle_events(&mut self, now_ms: u64, from: RegionId, events: Vec<Event>) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        for e in events {
            self.merge_one(now_ms, from, e);
        }
        self.advance();
    }

    /// A configured member other than this region.
    fn is_peer(&self, from: RegionId) -> bool {
        from != self.cfg.region && self.logs.members.contains_key(&from)
    }

    fn reject(&mut self, id: EventId, from: RegionId, reason: String) {
        self.stats.rejected += 1;
        self.report(Report::Rejected { id, from, reason });
    }

    fn merge_one(&mut self, now_ms: u64, from: RegionId, e: Event) {
        let id = e.id;
        let origin = id.origin;
        if !self.logs.members.contains_key(&origin) {
            self.reject(id, from, "origin is not a member".into());
            return;
        }
        // The common case first: an exact copy of an event of another origin already held,
        // which was checked when it was accepted, so the copy checks too (the signature and
        // validation read only the id, the HLC and the body). Own events were never checked
        // as remote ones: their copies take the full path below.
        if origin != self.cfg.region {
            if let Some(held) = self.event(id) {
                if held.hlc == e.hlc && held.body == e.body && held.sig == e.sig {
                    self.stats.duplicates += 1;
                    return;
                }
            }
        }
        // The signature first: validation of a forged event (a policy with many rules, say)
        // must cost nothing beyond the signature check.
        if !self.cfg.auth.verify_event(origin, &e, &self.cfg.cluster) {
            self.reject(id, from, "bad signature".into());
            return;
        }
        if let Err(err) = e.validate() {
            self.reject(id, from, err.to_string());
            return;
        }
        // Already held: a duplicate, or two events under one id.
        if let Some(held) = self.event(id) {
            if held.hlc == e.hlc && held.body == e.body {
                self.stats.duplicates += 1;
                return;
            }
            let held = held.clone();
            self.equivocation(Evidence::Conflicting(held, e));
            return;
        }
        if e.hlc.millis() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.stats.rejected += 1;
            self.report(Report::ClockSkew {
                from,
                remote_ms: e.hlc.millis(),
                local_ms: now_ms,
            });
            return;
        }
        let Some(m) = self.logs.members.get_mut(&origin) else {
            return;
        };
        let next = m.log.len() as u64 + 1;
        if id.seq > next {
            if let Some(p) = m.pending.get(&id.seq) {
                if p.hlc == e.hlc && p.body == e.body {
                    self.stats.duplicates += 1;
                    return;
                }
                // Two different events buffered under one id: keep the first as pending,
                // report the second; the gap-free apply checks it again.
                let p = p.clone();
                self.equivocation(Evidence::Conflicting(p, e));
                return;
            }
            // A buffered event that breaks a promise already held is evidence now.
            if let Some(shb) = m.promise.as_ref() {
                if id.seq > shb.hb.seq && e.hlc <= shb.hb.hlc {
                    let heartbeat = shb.clone();
                    self.equivocation(Evidence::BrokenPromise {
                        heartbeat,
                        event: e,
                    });
                    return;
                }
            }
            if m.pending.len() >= PENDING_PER_ORIGIN_MAX {
                self.stats.dropped += 1;
                return;
            }
            m.pending.insert(id.seq, e);
            return;
        }
        self.apply_remote(from, e);
        // Drain whatever the gap was holding back.
        while let Some(p) = self.logs.members.get_mut(&origin).and_then(|m| {
            let next = m.log.len() as u64 + 1;
            m.pending.remove(&next)
        }) {
            if !self.apply_remote(from, p) {
                break;
            }
        }
    }

    /// Applies the next gap-free event of an origin, checking its HLC against the origin's
    /// previous event and last heartbeat promise. Returns false if refused.
    fn apply_remote(&mut self, from: RegionId, e: Event) -> bool {
        let origin = e.id.origin;
        let Some(m) = self.logs.members.get(&origin) else {
            return false;
        };
        if m.equivocated {
            return false;
        }
        if let Some(prev) = m.log.last() {
            if e.hlc <= prev.hlc {
                self.reject(e.id, from, "HLC does not increase with seq".into());
                return false;
            }
        }
        // A signed heartbeat promised that no event above its seq has an HLC at or below
        // its HLC: the two signed items prove the origin lied, to this region and to any
        // other, whatever order they arrived in (`handle_heartbeat` checks the other order).
        if let Some(shb) = &m.promise {
            if e.id.seq > shb.hb.seq && e.hlc <= shb.hb.hlc {
                let heartbeat = shb.clone();
                self.equivocation(Evidence::BrokenPromise {
                    heartbeat,
                    event: e,
                });
                return false;
            }
        }
        // Never below what this region already counts as complete for the origin: it may
        // be settled here already.
        if e.hlc <= m.covered {
            let covered = m.covered;
            self.reject(
                e.id,
                from,
                format!(
                    "HLC {:?} at or below {:?}, which a heartbeat already covered",
                    e.hlc, covered
                ),
            );
            return false;
        }
        if origin == self.cfg.region {
            // Our own history coming back after a disk loss.
            self.dur.own_durable_seq = self.dur.own_durable_seq.max(e.id.seq);
            self.dur.own_gossiped_seq = self.dur.own_durable_seq;
        }
        self.clock.observe(e.hlc);
        let seq = e.id.seq;
        let hlc = e.hlc;
        self.persist(Record::Event(e.clone()));
        self.insert(e);
        self.stats.remote_applied += 1;
        if let Some(m) = self.logs.members.get_mut(&origin) {
            m.covered = m.covered.max(hlc);
            while let Some(entry) = m.pending_hb.first_entry() {
                if *entry.key() > seq {
                    break;
                }
                let h = entry.remove();
                m.covered = m.covered.max(h);
            }
        }
        true
    }

    /// Records proof that an origin broke the protocol: the origin is frozen at once (nothing
    /// more of it is applied, nothing more settles), the evidence is persisted, and only once
    /// it is durable is it reported and sent to peers ([`Replica::handle_persisted`]), so a
    /// restart finds the block again ([`Replica::restore_evidence`]).
    fn equivocation(&mut self, ev: Evidence) {
        self.stats.rejected += 1;
        if let Some(m) = self.logs.members.get_mut(&ev.origin()) {
            m.equivocated = true;
        }
        if self.evidence.contains(&ev) {
            return;
        }
        // Evidence that restates a pair already held (the same two items, the other way
        // round) adds nothing.
        if let Evidence::Conflicting(a, b) = &ev {
            let swapped = Evidence::Conflicting(b.clone(), a.clone());
            if self.evidence.contains(&swapped) {
                return;
            }
        }
        if self.evidence.len() >= EVIDENCE_MAX {
            // The origin is frozen all the same; only the proof is not kept.
            self.report(Report::Equivocation { id: ev.id() });
            return;
        }
        let at = self.evidence.len();
        self.evidence.push(ev.clone());
        let idx = self.persist(Record::Evidence(ev));
        self.dur.awaiting.push_back((idx, Awaiting::Evidence(at)));
    }

    /// Evidence sent by a peer: checked (both items signed by the origin, and contradicting
    /// each other), then handled as if caught here.
    pub fn handle_evidence(&mut self, from: RegionId, ev: Evidence) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        if !self.logs.members.contains_key(&ev.origin())
            || !self.cfg.auth.verify_evidence(&ev, &self.cfg.cluster)
        {
            self.reject(ev.id(), from, "evidence that proves nothing".into());
            return;
        }
        self.equivocation(ev);
    }

    /// A heartbeat from a peer.
    pub fn handle_heartbeat(&mut self, now_ms: u64, from: RegionId, shb: SignedHeartbeat) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        let hb = &shb.hb;
        if hb.origin != from {
            self.reject(
                EventId {
                    origin: hb.origin,
                    seq: hb.seq.max(1),
                },
                from,
                "heartbeat relayed for another region".into(),
            );
            return;
        }
        let hb_id = EventId {
            origin: from,
            seq: hb.seq.max(1),
        };
        if !self.cfg.auth.verify_heartbeat(&shb, &self.cfg.cluster) {
            self.reject(hb_id, from, "heartbeat with a bad signature".into());
            return;
        }
        // A version vector naming a non-member would make that member look ahead forever.
        if let Some(o) = hb.vv.dots.keys().find(|o| !self.logs.members.contains_key(o)) {
            let reason = format!("heartbeat names {o}, which is not a member");
            self.reject(hb_id, from, reason);
            return;
        }
        if hb.hlc.millis() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.report(Report::ClockSkew {
                from,
                remote_ms: hb.hlc.millis(),
                local_ms: now_ms,
            });
            return;
        }
        let ours = self.seed_hash;
        let Some(m) = self.logs.members.get_mut(&from) else {
            return;
        };
        m.heard = true;
        let first_policy = m.policy.is_none() || m.policy != Some(hb.policy);
        m.policy = Some(hb.policy);
        if hb.policy != ours && first_policy {
            self.report(Report::PolicyMismatch {
                region: from,
                theirs: hb.policy,
                ours,
            });
        }
        // An event already held (in the log or buffered) above the heartbeat's seq with an
        // HLC at or below it: the promise is broken, whichever came first.
        let broken = {
            let Some(m) = self.logs.members.get(&from) else {
                return;
            };
            let after = usize::try_from(hb.seq).unwrap_or(usize::MAX);
            m.log
                .get(after..)
                .and_then(|rest| rest.first())
                .or_else(|| {
                    m.pending
                        .range(hb.seq.saturating_add(1)..)
                        .next()
                        .map(|(_, e)| e)
                })
                .filter(|e| e.hlc <= hb.hlc)
                .cloned()
        };
        if let Some(event) = broken {
            self.equivocation(Evidence::BrokenPromise {
                heartbeat: shb,
                event,
            });
            return;
        }
        let Some(m) = self.logs.members.get_mut(&from) else {
            return;
        };
        let hb_hlc = shb.hb.hlc;
        let hb_seq = shb.hb.seq;
        m.vv = shb.hb.vv.clone();
        if m.promise.as_ref().is_none_or(|p| hb_hlc > p.hb.hlc) {
            m.promise = Some(shb);
        }
        if (m.log.len() as u64) >= hb_seq {
            m.covered = m.covered.max(hb_hlc);
        } else {
            let slot = m.pending_hb.entry(hb_seq).or_insert(hb_hlc);
            *slot = (*slot).max(hb_hlc);
            if m.pending_hb.len() > PENDING_HEARTBEATS_MAX {
                m.pending_hb.pop_first();
            }
        }
        self.clock.observe(hb_hlc);
        if self.restoring {
            self.check_restored();
        }
        self.advance();
    }

    fn check_restored(&mut self) {
        let me = self.cfg.region;
        let mine = self.logs.vv.get(&me);
        let done = self
            .logs.members
            .iter()
            .filter(|(r, _)| **r != me)
            .all(|(_, m)| m.heard && m.vv.get(&me) <= mine);
        if done {
            self.restoring = false;
        }
    }

    // ---- watermark and settled fold --------------------------------------------------------

    fn compute_watermark(&self) -> Hlc {
        if self.settlement_blocked() {
            return self.settle.watermark;
        }
        let mut w = self.dur.announced;
        for (r, m) in &self.logs.members {
            if *r == self.cfg.region {
                continue;
            }
            if m.policy != Some(self.seed_hash) {
                return self.settle.watermark;
            }
            w = w.min(m.covered);
        }
        w.max(self.settle.watermark)
    }

    /// Computes the watermark and asks the host to persist it; settlement follows in
    /// [`Replica::handle_persisted`] once that record is durable.
    fn advance(&mut self) {
        let w = self.compute_watermark();
        if w > self.settle.persisted_watermark {
            self.settle.persisted_watermark = w;
            let idx = self.persist(Record::Watermark(w));
            self.dur.awaiting.push_back((idx, Awaiting::Watermark(w)));
        }
    }

}

#[cfg(test)]
mod tests {
    //! Overflow cannot be reached through validated inputs (amounts are at most 10^12 and a
    //! sum needs about 10^16 of them), so these tests inject crafted events below the
    //! validation layer, as a corrupted peer or disk would.
    use super::*;

    fn region(n: &str) -> RegionId {
        RegionId::new(n).unwrap()
    }

    /// A deposit on `account` with any amount, validation bypassed.
    fn crafted(origin: &str, seq: u64, ms: u64, account: &str, amount: &str) -> Event {
        let json = serde_json::json!({
            "id": { "origin": region(origin), "seq": seq },
            "hlc": Hlc::from_millis(ms),
            "body": { "Tx": {
                "account": account, "kind": "Deposit", "amount": amount,
                "currency": Currency::USD, "idempotency_key": null, "reference": null,
            } },
            "sig": [],
        });
        serde_json::from_value(json).unwrap()
    }

    fn replica(me: &str) -> Replica {
        let names = vec![region("eu"), region("us")];
        Replica::new(Config::new(region(me), names, Policy::zero()), Hlc::ZERO)
    }

    fn settle_everything(r: &mut Replica) -> Vec<Report> {
        r.settle.watermark = Hlc(u64::MAX >> 1);
        r.settle_now();
        let mut reports = Vec::new();
        while let Some(o) = r.poll_output() {
            if let Output::Report(x) = o {
                reports.push(x);
            }
        }
        reports
    }

    #[test]
    fn key_index_keeps_keys_with_one_code_apart() {
        // Events holding keys "a", "b", "c" and "k1", in the log of "us".
        let mut r = replica("eu");
        for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "k1")] {
            let mut e = crafted("us", seq, 1_000 + seq, "alice", "1");
            if let Body::Tx(tx) = &mut e.body {
                tx.idempotency_key = Some(key.into());
            }
            r.insert(e);
        }
        let id = |seq| EventId {
            origin: region("us"),
            seq,
        };
        let m = &r.logs.members;
        let mut idx = keys::KeyIndex::default();
        idx.insert(m, "k1", id(4));
        // Three distinct keys forced under one code.
        idx.insert_at(m, 7, "a", id(1));
        idx.insert_at(m, 7, "b", id(2));
        idx.insert_at(m, 7, "c", id(3));
        assert_eq!(idx.get(m, "k1"), Some(id(4)));
        assert_eq!(idx.get(m, "k2"), None);
        assert_eq!(idx.get_at(m, 7, "a"), Some(id(1)));
        assert_eq!(idx.get_at(m, 7, "b"), Some(id(2)));
        assert_eq!(idx.get_at(m, 7, "c"), Some(id(3)));
        assert_eq!(idx.get_at(m, 7, "d"), None);
        assert_ne!(keys::KeyIndex::code("k1"), keys::KeyIndex::code("k2"));
        let mut idx = keys::KeyIndex::default();
        assert_eq!(idx.holder_or_insert(m, "a", id(1)), None);
        assert_eq!(idx.holder_or_insert(m, "a", id(2)).copied(), Some(id(1)));
        assert_eq!(idx.holder_or_insert(m, "k1", id(4)), None);
        assert_eq!(idx.get(m, "k1"), Some(id(4)));
        // The replica's own index finds every key.
        let alice = AccountId::new("alice").unwrap();
        for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "k1")] {
            assert_eq!(r.find_key(&alice, key), Some(id(seq)));
        }
        assert_eq!(r.find_key(&alice, "z"), None);
    }

    const MAX: &str = "79228162514264337593543950335";

    #[test]
    fn settled_overflow_freezes_the_pair_the_same_way_on_every_region() {
        let events = [
            crafted("eu", 1, 1_000, "alice", MAX),
            crafted("us", 1, 1_001, "alice", MAX),
            crafted("eu", 2, 1_002, "alice", "1"),
            crafted("us", 2, 1_003, "bob", "7"),
        ];
        // Two regions receive them in different orders (gap-free per origin).
        let mut a = replica("eu");
        for i in [0, 2, 1, 3] {
            a.insert(events[i].clone());
        }
        let mut b = replica("us");
        for i in [1, 3, 0, 2] {
            b.insert(events[i].clone());
        }
        let (ra, rb) = (settle_everything(&mut a), settle_everything(&mut b));
        let alice = AccountId::new("alice").unwrap();
        let want = vec![Report::Overflow {
            account: alice.clone(),
            currency: Currency::USD,
            at: EventId {
                origin: region("us"),
                seq: 1,
            },
        }];
        assert_eq!(ra, want);
        assert_eq!(rb, want);
        for r in [&a, &b] {
            let bal = r.balance(&alice, Currency::USD);
            // Frozen at the last representable settled sum; later events are not folded.
            assert_eq!(bal.settled.to_string(), MAX);
            let st = &r.accounts.map[&alice].balances[&Currency::USD];
            assert!(st.frozen);
            // Other pairs are untouched.
            let bob = AccountId::new("bob").unwrap();
            assert_eq!(r.balance(&bob, Currency::USD).settled.to_string(), "7");
            assert_eq!(r.stats().settled, 4);
            r.check_invariants().unwrap();
        }
        // The local side refuses new transactions on the frozen pair.
        let req = TxRequest {
            account: alice.clone(),
            kind: Kind::Deposit,
            amount: Amount::parse("1", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        };
        assert_eq!(
            a.submit(2_000, req).unwrap_err(),
            SubmitError::Frozen {
                account: alice,
                currency: Currency::USD
            }
        );
    }

    #[test]
    fn provisional_overflow_is_refused_and_never_freezes_the_settled_fold() {
        let mut r = replica("eu");
        r.insert(crafted(
            "us",
            1,
            1_000,
            "alice",
            "79228162514264337593543950285",
        ));
        let alice = AccountId::new("alice").unwrap();
        let req = TxRequest {
            account: alice.clone(),
            kind: Kind::Deposit,
            amount: Amount::parse("100", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        };
        assert_eq!(r.submit(2_000, req).unwrap_err(), SubmitError::Overflow);
        // A remote event that overflows the provisional sum freezes only the local view.
        r.insert(crafted("us", 2, 1_001, "alice", "100"));
        let st = &r.accounts.map[&alice].balances[&Currency::USD];
        assert!(st.provisional_frozen && !st.frozen);
    }
}
