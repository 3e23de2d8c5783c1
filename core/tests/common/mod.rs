//! A small deterministic multi-replica harness (the N-region version of scenario.rs) and the
//! comparison of a replica with the reference model of the settled fold
//! (`wallet_core::testing`). Shared by the test files of this directory.
//!
//! Every region has a simulated disk: records are buffered until the test persists them and
//! are lost by a crash. Links can be cut; messages can be delivered in any order, duplicated
//! or dropped. Time is a number the test advances; each region sees it shifted by its skew.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;
use wallet_core::testing;
use wallet_core::*;

pub fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

pub fn acct(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

pub fn req(account: &str, kind: Kind, amount: &str, currency: Currency) -> TxRequest {
    TxRequest {
        account: acct(account),
        kind,
        amount: Amount::parse(amount, currency).unwrap(),
        currency,
        idempotency_key: None,
        reference: None,
    }
}

pub fn keyed(mut r: TxRequest, key: &str) -> TxRequest {
    r.idempotency_key = Some(key.to_string());
    r
}

/// One region: its replica and its disk.
pub struct Node {
    pub replica: Replica,
    pub name: RegionId,
    /// Durable records.
    pub disk_events: Vec<Event>,
    pub disk_ceiling: Hlc,
    pub disk_watermark: Hlc,
    pub disk_evidence: Vec<Evidence>,
    /// The last snapshot persisted (`Record::Snapshot`): the events it folds left the disk.
    pub disk_snapshot: Option<Box<wallet_core::Snapshot>>,
    /// Records written but not yet durable: (index, record).
    pub buffered: Vec<(u64, Record)>,
    /// Own events acknowledged to the client (durable).
    pub acked: BTreeSet<EventId>,
    /// Requests acknowledged here that carry an idempotency key.
    pub acked_requests: Vec<(TxRequest, EventId)>,
    /// Own events submitted but not yet durable, with their request.
    pub unacked: BTreeMap<EventId, TxRequest>,
    pub reports: Vec<Report>,
    /// Pending requests decided (`Output::Decided`): request id and result.
    pub decided: Vec<(u64, Result<Submitted, SubmitError>)>,
    /// For each of those, in the same order: the record index the answer waits for.
    pub decided_after: Vec<Option<u64>>,
    pub skew_ms: u64,
    /// Longest feed seen, to check that the feed never retracts.
    pub feed_seen: Vec<Compensation>,
    /// Statuses of settled events seen: they must never change.
    pub settled_seen: BTreeMap<EventId, (Status, Option<String>)>,
}

impl Node {
    /// Forgets every durable record, and what the harness saw of the feed and settlement:
    /// the disk is gone.
    fn clear_disk(&mut self) {
        self.disk_events.clear();
        self.disk_ceiling = Hlc::ZERO;
        self.disk_watermark = Hlc::ZERO;
        self.disk_evidence.clear();
        self.disk_snapshot = None;
        self.feed_seen.clear();
        self.settled_seen.clear();
    }
}

/// Makes a region's authenticator from (region, members).
pub type MakeAuth = fn(RegionId, &[RegionId]) -> Box<dyn Authenticator>;

pub struct Cluster {
    pub names: Vec<RegionId>,
    pub nodes: Vec<Node>,
    pub seed: Policy,
    /// (to, from, message)
    pub inflight: Vec<(usize, usize, Message)>,
    /// side[i]: regions on different sides cannot talk.
    pub side: Vec<u8>,
    pub now: u64,
    /// Extra members that exist in the configuration but have no node (observers).
    pub extra: Vec<RegionId>,
    pub crashes: u64,
    /// Every replica's `Config::idempotency_retention_ms`.
    pub retention_ms: u64,
    /// Every replica's `Config::durable_acks`.
    pub durable_acks: bool,
    /// Every replica's `Config::snapshot_chunk_bytes`.
    pub snapshot_chunk_bytes: usize,
    /// Every replica's authenticator, made for (region, members) (None: the default).
    pub auth: Option<MakeAuth>,
}

impl Cluster {
    pub fn new(names: &[&str], seed: Policy) -> Cluster {
        Cluster::with(names, &[], &[], seed)
    }

    /// `extra` members are configured everywhere but have no node; `skews` shift each
    /// region's physical clock.
    pub fn with(names: &[&str], extra: &[&str], skews: &[u64], seed: Policy) -> Cluster {
        let ids: Vec<RegionId> = names.iter().map(|n| region(n)).collect();
        let extra: Vec<RegionId> = extra.iter().map(|n| region(n)).collect();
        let mut c = Cluster {
            names: ids.clone(),
            nodes: Vec::new(),
            seed,
            inflight: Vec::new(),
            side: vec![0; ids.len()],
            now: 1_000,
            extra,
            crashes: 0,
            retention_ms: wallet_core::replica::IDEMPOTENCY_RETENTION_MS_DEFAULT,
            durable_acks: false,
            snapshot_chunk_bytes: wallet_core::replica::SNAPSHOT_CHUNK_BYTES_DEFAULT,
            auth: None,
        };
        for (i, me) in ids.iter().enumerate() {
            let replica = Replica::new(c.config(*me), Hlc::ZERO);
            c.nodes.push(Node {
                replica,
                name: *me,
                disk_events: Vec::new(),
                disk_ceiling: Hlc::ZERO,
                disk_watermark: Hlc::ZERO,
                disk_evidence: Vec::new(),
                disk_snapshot: None,
                buffered: Vec::new(),
                acked: BTreeSet::new(),
                acked_requests: Vec::new(),
                unacked: BTreeMap::new(),
                reports: Vec::new(),
                decided: Vec::new(),
                decided_after: Vec::new(),
                skew_ms: skews.get(i).copied().unwrap_or(0),
                feed_seen: Vec::new(),
                settled_seen: BTreeMap::new(),
            });
        }
        c.connect_all(None);
        c
    }

    /// Like [`Cluster::new`], every replica sending `Message::Durable` after its persists
    /// (what an origin with `ack = "peer"` waits for) and acknowledging with `ack = "peer"`.
    pub fn with_durable_acks(names: &[&str], seed: Policy) -> Cluster {
        let mut c = Cluster::new(names, seed);
        c.durable_acks = true;
        for i in 0..c.nodes.len() {
            let cfg = c.config(c.names[i]);
            c.nodes[i].replica = Replica::new(cfg, Hlc::ZERO);
        }
        c.inflight.clear();
        c.connect_all(None);
        c
    }

    pub fn config(&self, me: RegionId) -> Config {
        let mut members = self.names.clone();
        members.extend(self.extra.iter().copied());
        let mut cfg = Config::new(me, members, self.seed.clone());
        cfg.idempotency_retention_ms = self.retention_ms;
        cfg.durable_acks = self.durable_acks;
        cfg.snapshot_chunk_bytes = self.snapshot_chunk_bytes;
        cfg.ack_peer = self.durable_acks;
        if let Some(auth) = self.auth {
            cfg.auth = auth(me, &self.names);
        }
        cfg
    }

    pub fn local_now(&self, i: usize) -> u64 {
        self.now + self.nodes[i].skew_ms
    }

    /// Drains the outputs of node `i`.
    pub fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].replica.poll_output() {
            match out {
                Output::Persist { index, record } => {
                    self.nodes[i].buffered.push((index, record));
                }
                Output::Broadcast(m) => {
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.inflight.push((j, i, m.clone()));
                        }
                    }
                }
                Output::Send { to, msg } => {
                    if let Some(j) = self.names.iter().position(|n| *n == to) {
                        self.inflight.push((j, i, msg));
                    }
                }
                Output::Compensation(_) => {}
                Output::Report(r) => self.nodes[i].reports.push(r),
                Output::Decided {
                    request,
                    result,
                    durable_after,
                } => {
                    self.nodes[i].decided.push((request, result));
                    self.nodes[i].decided_after.push(durable_after);
                }
            }
        }
    }

    /// Makes the first `count` buffered records of node `i` durable.
    pub fn persist(&mut self, i: usize, count: usize) {
        let n = &mut self.nodes[i];
        let count = count.min(n.buffered.len());
        if count == 0 {
            return;
        }
        let done: Vec<(u64, Record)> = n.buffered.drain(..count).collect();
        let mut last = 0;
        for (index, record) in done {
            last = index;
            match record {
                Record::Event(e) => {
                    if e.id.origin == n.name {
                        if let Some(r) = n.unacked.remove(&e.id) {
                            if r.idempotency_key.is_some() {
                                n.acked_requests.push((r, e.id));
                            }
                        }
                        n.acked.insert(e.id);
                    }
                    n.disk_events.push(e);
                }
                Record::Ceiling(h) => n.disk_ceiling = n.disk_ceiling.max(h),
                Record::Watermark(h) => n.disk_watermark = n.disk_watermark.max(h),
                Record::Evidence(ev) => n.disk_evidence.push(ev),
                Record::Snapshot(s) => {
                    n.disk_events.retain(|e| e.id.seq > folded(&s, e.id.origin));
                    n.disk_snapshot = Some(s);
                }
            }
        }
        n.replica.handle_persisted(last);
        self.drain(i);
    }

    pub fn persist_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.persist(i, usize::MAX);
        }
    }

    pub fn submit(&mut self, i: usize, r: TxRequest) -> Result<Submitted, SubmitError> {
        let now = self.local_now(i);
        let out = self.nodes[i].replica.submit(now, r.clone());
        if let Ok(Submitted::New(id)) = out {
            self.nodes[i].unacked.insert(id, r);
        }
        self.drain(i);
        out
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    /// Delivers in-flight message `k` (dropped if the link is cut).
    pub fn deliver(&mut self, k: usize) {
        if self.inflight.is_empty() {
            return;
        }
        let (to, from, m) = self.inflight.remove(k % self.inflight.len());
        if !self.connected(to, from) {
            return;
        }
        let now = self.local_now(to);
        let name = self.names[from];
        self.nodes[to].replica.handle_message(now, name, m);
        self.drain(to);
    }

    /// Delivers everything in flight (and what that causes), oldest first.
    pub fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            if self.inflight.is_empty() {
                return;
            }
            self.deliver(0);
        }
    }

    pub fn duplicate(&mut self, k: usize) {
        if self.inflight.is_empty() {
            return;
        }
        let m = self.inflight[k % self.inflight.len()].clone();
        self.inflight.push(m);
    }

    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..self.nodes.len() {
            let now = self.local_now(i);
            self.nodes[i].replica.handle_timeout(now);
            self.drain(i);
        }
    }

    /// `to` pulls what it misses from `from`.
    pub fn anti_entropy(&mut self, from: usize, to: usize) {
        if from == to || !self.connected(from, to) {
            return;
        }
        let vv = self.nodes[to].replica.version_vector().clone();
        let events = self.nodes[from].replica.missing_for(&vv, 10_000);
        let now = self.local_now(to);
        let name = self.names[from];
        self.nodes[to].replica.handle_events(now, name, events);
        self.drain(to);
    }

    pub fn partition(&mut self, mask: u8) {
        let before = self.side.clone();
        for i in 0..self.side.len() {
            self.side[i] = (mask >> i) & 1;
        }
        self.links_changed(&before);
    }

    pub fn heal(&mut self) {
        let before = self.side.clone();
        self.side.iter_mut().for_each(|s| *s = 0);
        self.links_changed(&before);
    }

    /// Tells both ends of every link that went down or came up.
    fn links_changed(&mut self, before: &[u8]) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a == b {
                    continue;
                }
                let was = before[a] == before[b];
                let is = self.side[a] == self.side[b];
                if was != is {
                    let now = self.local_now(a);
                    let peer = self.names[b];
                    if is {
                        self.nodes[a].replica.handle_connected(now, peer);
                    } else {
                        self.nodes[a].replica.handle_disconnected(now, peer);
                    }
                    self.drain(a);
                }
            }
        }
    }

    /// Every pair of connected regions learns of its link (at start and after a restart).
    pub fn connect_all(&mut self, only: Option<usize>) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a == b || !self.connected(a, b) {
                    continue;
                }
                if only.is_some_and(|i| a != i && b != i) {
                    continue;
                }
                let now = self.local_now(a);
                let peer = self.names[b];
                self.nodes[a].replica.handle_connected(now, peer);
                self.drain(a);
            }
        }
    }

    /// Crash and restart from the disk: buffered records and messages to it are lost.
    pub fn crash(&mut self, i: usize) {
        self.restart(i, false);
    }

    /// [`Cluster::crash`]; `restore`: with `Config::restore` (after a lost disk).
    fn restart(&mut self, i: usize, restore: bool) {
        self.crashes += 1;
        let mut cfg = self.config(self.names[i]);
        cfg.restore = restore;
        let n = &mut self.nodes[i];
        n.buffered.clear();
        n.unacked.clear();
        let mut replica = Replica::new(cfg, n.disk_ceiling);
        replica.restore_evidence(n.disk_evidence.clone());
        match &n.disk_snapshot {
            Some(s) => replica
                .restore(s.as_ref(), n.disk_events.clone())
                .expect("a region's own snapshot restores"),
            None => replica.load(n.disk_events.clone()),
        }
        replica.restore_watermark(n.disk_watermark);
        n.replica = replica;
        // A restarted region may reuse the seq of an event it never made durable.
        self.inflight.retain(|(to, _, _)| *to != i);
        self.drain(i);
        // Its peers saw the connection drop and come back.
        self.reconnect(i);
    }

    /// The region loses its disk and starts empty, restoring its own history from peers
    /// (`Config::restore`): from their events, or their snapshot once they compacted.
    pub fn wipe(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.clear_disk();
        self.restart(i, true);
    }

    /// Crash that loses the disk (docs/protocol.md §12): the region restarts empty, with
    /// `restore` and `seal_on_restore`, and rejoins under a new origin epoch. What it had not
    /// sent is lost with it.
    pub fn lose_disk(&mut self, i: usize) {
        self.crashes += 1;
        let mut cfg = self.config(self.names[i]);
        cfg.restore = true;
        cfg.seal_on_restore = true;
        let n = &mut self.nodes[i];
        n.buffered.clear();
        n.unacked.clear();
        n.clear_disk();
        n.replica = Replica::new(cfg, Hlc::ZERO);
        // What it sent before is still in flight: old-epoch events may arrive late.
        self.inflight.retain(|(to, _, _)| *to != i);
        self.reconnect(i);
    }

    /// Region `i`'s peers see its connection drop, then everything reconnects.
    fn reconnect(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i && self.connected(i, j) {
                let now = self.local_now(j);
                let peer = self.names[i];
                self.nodes[j].replica.handle_disconnected(now, peer);
                self.drain(j);
            }
        }
        self.connect_all(Some(i));
    }

    /// Persists, delivers, pulls and heartbeats among the regions of `live` only (the others
    /// are cut off), `rounds` times.
    pub fn run_among(&mut self, live: &[usize], rounds: usize) {
        for _ in 0..rounds {
            self.round_among(live);
        }
    }

    /// One round of [`Cluster::run_among`]: persist and deliver, anti-entropy between every
    /// two regions of `live`, persist and deliver, a 300 ms tick, persist and deliver.
    fn round_among(&mut self, live: &[usize]) {
        self.persist_all();
        self.deliver_all();
        for &a in live {
            for &b in live {
                self.anti_entropy(a, b);
            }
        }
        self.persist_all();
        self.deliver_all();
        self.tick(300);
        self.persist_all();
        self.deliver_all();
    }

    pub fn max_hlc(&self) -> Hlc {
        self.nodes
            .iter()
            .flat_map(|n| all_events(&n.replica))
            .map(|e| e.hlc)
            .max()
            .unwrap_or(Hlc::ZERO)
    }

    /// Heals, persists, gossips and heartbeats until every region holds and has settled
    /// every event. Returns false if that did not happen in a bounded number of rounds.
    pub fn settle_all(&mut self) -> bool {
        self.heal();
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        for _ in 0..60 {
            self.round_among(&all);
            let target = self.max_hlc();
            let count = self.nodes[0].replica.event_count();
            if self
                .nodes
                .iter()
                .all(|n| n.replica.watermark() >= target && n.replica.event_count() == count)
            {
                return true;
            }
        }
        false
    }

    /// Checks that the feed never retracted and settled statuses never changed, then
    /// remembers the current ones.
    pub fn check_never_retracts(&mut self) -> Result<(), String> {
        for n in &mut self.nodes {
            let r = &n.replica;
            let feed = r.feed(0, usize::MAX).to_vec();
            let common = feed.len().min(n.feed_seen.len());
            if feed[..common] != n.feed_seen[..common] {
                return Err(format!("{}: the feed changed an entry", n.name));
            }
            // Not even a crash may shorten it: settlement waits for the durable watermark.
            if feed.len() < n.feed_seen.len() {
                return Err(format!(
                    "{}: the feed shrank from {} to {} entries",
                    n.name,
                    n.feed_seen.len(),
                    feed.len()
                ));
            }
            if feed.len() > n.feed_seen.len() {
                n.feed_seen = feed;
            }
            for e in all_events(r) {
                let Some((status, comp)) = r.status(e.id) else {
                    return Err(format!("{}: lost {}", n.name, e.id));
                };
                if status == Status::Provisional {
                    if n.settled_seen.contains_key(&e.id) {
                        return Err(format!("{}: settled {} became provisional", n.name, e.id));
                    }
                    continue;
                }
                let now = (status, comp.map(Compensation::id));
                match n.settled_seen.get(&e.id) {
                    Some(before) if *before != now => {
                        return Err(format!(
                            "{}: settled {} went from {:?} to {:?}",
                            n.name, e.id, before, now
                        ));
                    }
                    Some(_) => {}
                    None => {
                        n.settled_seen.insert(e.id, now);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every event a replica holds, in total order.
pub fn all_events(r: &Replica) -> Vec<Event> {
    let mut v: Vec<Event> = r
        .members()
        .iter()
        .flat_map(|m| r.origin_events(m.region, 0).to_vec())
        .collect();
    v.sort_by_key(Event::key);
    v
}

#[derive(Serialize)]
struct Snapshot {
    events: Vec<Event>,
    balances: Vec<(String, String, String, String)>,
    feed: Vec<Compensation>,
    statuses: Vec<(EventId, String, Option<String>)>,
}

/// Canonical bytes of a replica's ledger: events in total order, every balance, the feed
/// and every status (postcard).
pub fn snapshot(r: &Replica) -> Vec<u8> {
    let events = all_events(r);
    let statuses = events
        .iter()
        .map(|e| {
            let (s, c) = r.status(e.id).unwrap();
            (e.id, format!("{s:?}"), c.map(Compensation::id))
        })
        .collect();
    let snap = Snapshot {
        events,
        balances: r
            .all_balances()
            .into_iter()
            .map(|(a, c, b)| {
                (
                    a.to_string(),
                    c.to_string(),
                    b.provisional.to_string(),
                    b.settled.to_string(),
                )
            })
            .collect(),
        feed: r.feed(0, usize::MAX).to_vec(),
        statuses,
    };
    postcard::to_stdvec(&snap).unwrap()
}

// ---- the reference model ------------------------------------------------------------------

// The model itself is `wallet_core::testing` (written from the SPEC, shared with the
// simulator's checker); this compares a replica with it.

/// Compares a fully settled replica with the model: the feed entry by entry (kind, cause,
/// delta, related, policy version, account, currency, position) and every balance.
pub fn check_against_model(seed: &Policy, r: &Replica) -> Result<(), String> {
    let events = all_events(r);
    let m = testing::model(seed, &events);
    type Row = (
        CompKind,
        EventId,
        Decimal,
        Option<EventId>,
        u32,
        AccountId,
        Currency,
    );
    let want: Vec<Row> = m
        .feed
        .iter()
        .map(|c| {
            (
                c.kind,
                c.cause,
                c.delta,
                c.related,
                c.version,
                c.account.clone(),
                c.currency,
            )
        })
        .collect();
    let feed = r.feed(0, usize::MAX);
    let got: Vec<Row> = feed
        .iter()
        .map(|c| {
            (
                c.kind,
                c.cause,
                c.delta,
                c.related,
                c.policy_version,
                c.account.clone(),
                c.currency,
            )
        })
        .collect();
    if got != want {
        return Err(format!(
            "{}: feed differs from the model\n got {got:?}\nwant {want:?}",
            r.region()
        ));
    }
    if let Some((i, c)) = feed
        .iter()
        .enumerate()
        .find(|(i, c)| c.position != *i as u64)
    {
        return Err(format!(
            "{}: feed[{i}] {} has position {}",
            r.region(),
            c.id(),
            c.position
        ));
    }
    for ((a, c), bal) in m.balances {
        let b = r.balance(&a, c);
        if b.settled != bal || b.provisional != bal {
            return Err(format!(
                "{}: balance of {a} {c} is {b:?}, the model says {bal}",
                r.region()
            ));
        }
    }
    // Every event's status (all settled here): settled with its fee, or reversed.
    for e in &events {
        let Some(want) = m.statuses.get(&e.id) else {
            continue; // policy events have no status in the model
        };
        let got = match r.status(e.id) {
            Some((Status::Provisional, _)) => testing::ModelStatus::Provisional,
            Some((Status::Reversed, c)) => testing::ModelStatus::Reversed {
                reversal: c.map(Compensation::id).unwrap_or_default(),
            },
            Some((Status::Settled, c)) => testing::ModelStatus::Settled {
                fee: c
                    .filter(|c| c.kind == CompKind::OverdraftFee)
                    .map(Compensation::id),
            },
            None => return Err(format!("{}: no status for {}", r.region(), e.id)),
        };
        if &got != want {
            return Err(format!(
                "{}: status of {} is {got:?}, the model says {want:?}",
                r.region(),
                e.id
            ));
        }
    }
    Ok(())
}

/// Checks `entries` for every account: the full listing equals a naive sort of the
/// account's events and feed entries, and pages of `page` concatenate to it.
pub fn check_entries(r: &Replica, page: usize) -> Result<(), String> {
    let mut accounts: BTreeSet<AccountId> = BTreeSet::new();
    for e in all_events(r) {
        if let Some(tx) = e.tx() {
            accounts.insert(tx.account.clone());
        }
    }
    for a in accounts {
        let mut want: Vec<(EntryKey, String)> = Vec::new();
        for e in all_events(r) {
            if e.tx().is_some_and(|t| t.account == a) {
                want.push(((e.key(), 0), format!("event {}", e.id)));
            }
        }
        for c in r.feed(0, usize::MAX) {
            if c.account == a {
                let sub = if c.kind == CompKind::IdempotencyConflict {
                    2
                } else {
                    1
                };
                want.push((((c.hlc, c.cause.origin, c.cause.seq), sub), c.id()));
            }
        }
        want.sort();
        let name = |e: &Entry| match e {
            Entry::Event { event, .. } => format!("event {}", event.id),
            Entry::Compensation(c) => c.id(),
        };
        let full: Vec<(EntryKey, String)> = r
            .entries(&a, None, usize::MAX)
            .iter()
            .map(|(k, e)| (*k, name(e)))
            .collect();
        if full != want {
            return Err(format!("entries of {a}: got {full:?}, want {want:?}"));
        }
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let p = r.entries(&a, after, page);
            if p.is_empty() {
                break;
            }
            after = Some(p[p.len() - 1].0);
            paged.extend(p.iter().map(|(k, e)| (*k, name(e))));
        }
        if paged != want {
            return Err(format!("paged entries of {a} differ from the full listing"));
        }
    }
    Ok(())
}

/// After convergence: two heartbeat rounds with everything delivered bring every region to
/// one watermark (the lowest heartbeat HLC) with every member's announced version vector
/// holding everything, so each may snapshot; their bodies must be byte-identical (issue 13),
/// and each must verify as its signer's.
pub fn check_snapshots_agree(c: &mut Cluster) -> Result<(), String> {
    for _ in 0..2 {
        c.tick(300);
        c.persist_all();
        c.deliver_all();
        c.persist_all();
    }
    let w = c.nodes[0].replica.watermark();
    let mut first: Option<(RegionId, Vec<u8>)> = None;
    for n in &c.nodes {
        let r = &n.replica;
        if r.watermark() != w {
            return Err(format!(
                "{} at watermark {:?}, not {:?}",
                n.name,
                r.watermark(),
                w
            ));
        }
        let Some(s) = r.snapshot() else {
            return Err(format!("{} offers no snapshot at {:?}", n.name, w));
        };
        if s.body.at != w || s.signer != n.name || !s.verify(&NoAuth, "default") {
            return Err(format!(
                "{}: snapshot at {:?} by {}",
                n.name, s.body.at, s.signer
            ));
        }
        let bytes = s.body.to_bytes();
        let back = wire::decode_snapshot(&wire::encode_snapshot(&s)).map_err(|e| e.to_string())?;
        if back != s {
            return Err(format!("{}: snapshot does not round-trip", n.name));
        }
        match &first {
            None => first = Some((n.name, bytes)),
            Some((name, b)) if *b != bytes => {
                return Err(format!(
                    "{} and {name} make different snapshot bodies at {:?}",
                    n.name, w
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The last seq of `origin` a snapshot folds (0: none).
pub fn folded(s: &wallet_core::Snapshot, origin: RegionId) -> u64 {
    s.body
        .members
        .iter()
        .find(|m| m.region == origin)
        .map_or(0, |m| m.seq)
}

/// Signs as one region with a tag (SHA-256 of the signer and the bytes): any altered byte
/// or another signer breaks it.
pub struct Tag(pub RegionId);

pub fn tag(origin: RegionId, bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(origin.as_str().as_bytes());
    h.update(bytes);
    h.finalize().to_vec()
}

impl Authenticator for Tag {
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        tag(self.0, bytes)
    }
    fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool {
        tag(origin, bytes) == sig
    }
}
