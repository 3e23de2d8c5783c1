//! The replica state machine (SPEC §3–§6).
//!
//! Inputs: client commands ([`Replica::submit`]), peer messages ([`Replica::handle_message`]),
//! durability acknowledgements ([`Replica::handle_persisted`]) and time
//! ([`Replica::handle_timeout`]). Outputs are drained with [`Replica::poll_output`].

use std::collections::VecDeque;

use crdts::VClock;
use rust_decimal::Decimal;

mod accounts;
mod durability;
mod interface;
mod invariants;
mod keys;
mod log;
mod members;
mod merge;
pub mod modes;
pub mod pull;
mod query;
mod seal;
mod settle;
mod snapshot;
#[cfg(test)]
mod tests;
mod transfer;

pub use crate::snapshot::{
    RestoreError, SnapAccount, SnapBalance, SnapHome, SnapKey, SnapMember, SnapPolicy, SnapRights,
    Snapshot, SnapshotBody, EXT_HOMES, EXT_MEMBERSHIP, EXT_RIGHTS, SNAPSHOT_FORMAT,
};
use accounts::Accounts;
pub use accounts::Balance;
use durability::{Awaiting, Durability};
pub use interface::{Output, Record, Report, SubmitError, Submitted, TxRequest};
use log::Logs;
use members::Membership;
pub use members::{JoinInfo, MembershipError, MembershipStats, RetireInfo};
use modes::{Modes, Route, Stage};
use pull::PullScheduler;
pub use query::{comp_entry_key, Entry, EntryKey, MemberStatus, PolicyVersionInfo, Stats, Status};
use seal::Sealing;
pub use seal::{SealInfo, SealStats};
use settle::Settlement;
pub use transfer::{
    transfer_id, TransferError, TransferStats, SNAPSHOT_CHUNK_BYTES_DEFAULT,
    SNAPSHOT_CHUNK_BYTES_MAX,
};

pub use crate::auth::{Authenticator, KeyHistory, NoAuth};
use crate::event::{Body, Event, Tx};
use crate::id::{Clock, EventId, Hlc, RegionId};
pub use crate::message::{Evidence, Heartbeat, Message, SignedHeartbeat};
use crate::money::Amount;
use crate::policy::{Policy, PolicyHash};

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
/// Default idempotency key retention: 24 h, as Stripe.
pub const IDEMPOTENCY_RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1_000;
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
    /// Period of the safety-net pull ([`pull`]).
    pub anti_entropy_interval_ms: u64,
    /// Events asked for in one pull.
    pub pull_batch_events: u32,
    /// Signer/verifier.
    pub auth: Box<dyn Authenticator>,
    /// The seed policy hash recorded in this region's storage, if any. A different file
    /// is reported and nothing settles.
    pub recorded_policy: Option<PolicyHash>,
    /// Started on an empty disk in an existing cluster: accept nothing until this region's
    /// own history has been pulled back from every peer.
    pub restore: bool,
    /// A new region joining an existing cluster (`members` names every region the history
    /// holds, retired ones included): it issues nothing, and announces nothing, until it has
    /// pulled and applied its own join event.
    pub joining: bool,
    /// Home mode: how long to wait for the home's answer to a forwarded debit, ms.
    pub forward_timeout_ms: u64,
    /// With `restore`: the disk was lost, so the region ends its restore by sealing its old
    /// origin epoch at the highest seq any member holds and starting a new one
    /// (docs/protocol.md §12), instead of resuming the old epoch's seqs.
    pub seal_on_restore: bool,
    /// After each persist, tell every origin that announced `ack = "peer"`
    /// (`Message::WantDurable`) and whose events became durable here how far
    /// (`Message::Durable`), so it answers its clients one round trip after its own write.
    /// Off: origins learn it from heartbeats only.
    pub durable_acks: bool,
    /// This region acknowledges with `ack = "peer"` (docs/protocol.md §12): a debit decided
    /// at its home is answered once this region holds the event durably too
    /// ([`Replica::durable_at_two`]), not on the home's answer alone.
    pub ack_peer: bool,
    /// How long an idempotency key holds, in HLC milliseconds: a copy of a keyed event whose
    /// HLC is this much or more after the first is a new transaction, not a duplicate (SPEC §5
    /// as amended by issue 13; docs/protocol.md). Part of the protocol: the same on every
    /// region, like the policy.
    pub idempotency_retention_ms: u64,
    /// Bytes of a snapshot sent in one chunk (`transfer`), at most
    /// [`SNAPSHOT_CHUNK_BYTES_MAX`]. Local: regions may differ.
    pub snapshot_chunk_bytes: usize,
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
            anti_entropy_interval_ms: pull::ANTI_ENTROPY_INTERVAL_MS_DEFAULT,
            pull_batch_events: pull::PULL_BATCH_EVENTS_DEFAULT,
            auth: Box::new(NoAuth),
            recorded_policy: None,
            restore: false,
            joining: false,
            forward_timeout_ms: modes::FORWARD_TIMEOUT_MS_DEFAULT,
            seal_on_restore: false,
            durable_acks: false,
            ack_peer: false,
            idempotency_retention_ms: IDEMPOTENCY_RETENTION_MS_DEFAULT,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
        }
    }
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
    /// Anti-entropy: whom to pull from, when, and when a pull is lost.
    pull: PullScheduler,
    outputs: VecDeque<Output>,
    /// The host signs own transactions in batches ([`Replica::hold_signing`]).
    hold_signing: bool,
    /// The first own seq issued and held unsigned (0: none), see [`Replica::sign_pending`].
    unsigned_from: u64,
    restoring: bool,
    /// Joining: waits for its own join event (`Config::joining`).
    joining: bool,
    /// Joins, retires and their acknowledgements and cuts.
    membership: Membership,
    /// Consistency modes: homes and their moves, forwarded debits (SPEC §8).
    modes: Modes,
    /// Origin epochs (seals after a lost disk) and what peers hold durably of own events.
    sealing: Sealing,
    policy_broken: bool,
    history_policy_adopted: bool,
    evidence: Vec<Evidence>,
    /// Heartbeats issued since evidence was last sent to peers.
    evidence_resend_heartbeats: u32,
    stats: Stats,
    /// The last snapshot made ([`Replica::compact`]) or restored from: what a member that
    /// lacks events below the logs' bases is sent instead (issue 13).
    snapshot: Option<Box<Snapshot>>,
    /// Snapshot transfers in chunks, both ways.
    transfer: transfer::Transfers,
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
            joining: cfg.joining,
            membership: Membership::default(),
            sealing: Sealing::default(),
            modes: Modes {
                forward_timeout_ms: cfg.forward_timeout_ms,
                ..Modes::default()
            },
            settle: Settlement::new(cfg.policy.clone(), cfg.idempotency_retention_ms),
            seed_hash,
            clock: Clock::new(ceiling),
            logs: Logs::new(cfg.region, &cfg.members),
            accounts: Accounts::default(),
            outputs: VecDeque::new(),
            hold_signing: false,
            unsigned_from: 0,
            dur: Durability::new(ceiling),
            pull: PullScheduler::default(),
            policy_broken,
            history_policy_adopted: false,
            evidence: Vec::new(),
            evidence_resend_heartbeats: 0,
            stats: Stats::default(),
            snapshot: None,
            transfer: transfer::Transfers::default(),
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
            keys_expired: self.settle.keys_expired,
            ..self.stats
        }
    }

    /// True while restoring own history from peers.
    pub fn is_restoring(&self) -> bool {
        self.restoring
    }

    /// True if a policy mismatch, an equivocation (of a region not retired), a broken cut
    /// or this region's own retirement stops settlement.
    pub fn settlement_blocked(&self) -> bool {
        self.policy_broken
            || self.membership.broken
            || self.membership.retired_self
            || self.logs.members.values().any(|m| {
                !m.retired_complete()
                    && (m.equivocated || m.policy.is_some_and(|p| p != self.seed_hash))
            })
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
            *first = settle::PolicyVersion::seed(recorded);
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

    // ---- outputs and timers ------------------------------------------------------------

    /// The next output, if any. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Holds own transactions unsigned (and unpersisted) until [`Replica::sign_pending`],
    /// which signs them together: one batch signature ([`crate::auth::BatchSig`]) over up to
    /// [`crate::auth::SIGN_BATCH_EVENTS_MAX`] events, each still verifiable on its own. The
    /// host calls `sign_pending` when it is ready to write (walletd: when no commit is in
    /// flight). Off: each event is signed alone when issued. Turning it off signs what is
    /// held.
    pub fn hold_signing(&mut self, on: bool) {
        self.hold_signing = on;
        if !on {
            self.sign_pending();
        }
    }

    /// Signs the own transactions held since the last call, and asks the host to persist
    /// them, in seq order. A held event is in the log and counts in balances, but it has no
    /// persist record yet and cannot be durable, so it does not leave the region (own events
    /// leave once durable) and no acknowledgement can wait on a record written before it.
    pub fn sign_pending(&mut self) {
        let from = std::mem::take(&mut self.unsigned_from);
        if from == 0 {
            return;
        }
        let own = self.cfg.region;
        let Some(m) = self.logs.members.get_mut(&own) else {
            return;
        };
        // The log holds seqs above its compaction base (unsigned events are never folded:
        // they are not durable, so no member announced them).
        let Some(events) = usize::try_from(from.saturating_sub(m.base + 1))
            .ok()
            .and_then(|i| m.log.get_mut(i..))
        else {
            return;
        };
        for chunk in events.chunks_mut(crate::auth::SIGN_BATCH_EVENTS_MAX) {
            let sigs = self.cfg.auth.sign_events(chunk, &self.cfg.cluster);
            for (e, sig) in chunk.iter_mut().zip(sigs) {
                e.sig = sig;
            }
        }
        for e in events.iter() {
            let idx = self
                .dur
                .persist(&mut self.outputs, Record::Event(e.clone()));
            self.dur.awaiting.push_back((idx, Awaiting::Own(e.id.seq)));
        }
    }

    /// When to call [`Replica::handle_timeout`] next, in physical ms.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        self.dur
            .next_heartbeat_ms
            .min(self.pull.deadline())
            .min(self.modes.deadline())
            .min(self.modes.rebalance_deadline())
    }

    /// Time passes: issues a heartbeat when one is due (and the clock ceiling allows).
    /// A spurious call does nothing harmful.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.issue_owed_acks(now_ms);
        self.seal_queries(now_ms);
        if now_ms >= self.dur.next_heartbeat_ms {
            self.dur.next_heartbeat_ms = now_ms.saturating_add(self.cfg.heartbeat_interval_ms);
            self.heartbeat(now_ms);
            self.announce_ack_peer(None);
        }
        self.pull_on_timeout(now_ms);
        self.forward_timeouts(now_ms);
        self.retry_waiting(now_ms);
        self.rebalance(now_ms);
    }

    fn heartbeat(&mut self, now_ms: u64) {
        // A region restoring its history from peers promises nothing: its clock may still
        // be below HLCs its previous incarnation issued. A joining region does not know its
        // join HLC yet; a retired one promises nothing more.
        if self.restoring || self.joining || self.membership.retired_self {
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
            self.dur
                .awaiting
                .push_back((idx, Awaiting::Ceiling(wanted)));
        }
        if h > self.dur.ceiling_durable {
            return; // retried once the ceiling is durable
        }
        self.dur.announced = h;
        // Own events leave this region only once durable: the announced version vector says
        // so too, so peers do not pull what they cannot get yet.
        // Of other origins, only what is durable here: a peer may drop what every member
        // announced into a snapshot (issue 13), so an announced event must survive a crash.
        let mut vv = self.logs.vv.clone();
        for (o, seq) in vv.dots.iter_mut() {
            if *o != self.cfg.region {
                *seq = (*seq).min(self.dur.remote_durable.get(o).copied().unwrap_or(0));
            }
        }
        vv.dots.retain(|_, seq| *seq > 0);
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
        let mut durable_origins = std::collections::BTreeSet::new();
        for what in self.dur.acknowledge(index) {
            match what {
                Awaiting::Own(_) | Awaiting::Ceiling(_) => {}
                Awaiting::Remote(origin, _) => {
                    durable_origins.insert(origin);
                }
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
        self.send_durable_acks(durable_origins);
        self.push_own();
        self.answer_owed();
        self.release_held(None);
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
                .dur
                .own_durable_seq
                .min(from.saturating_add(GOSSIP_BATCH_EVENTS_MAX as u64));
            let batch: Vec<Event> = self
                .logs
                .members
                .get(&me)
                .map(|m| m.slice(from, to).to_vec())
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
        self.logs.len_of(self.cfg.region)
    }

    // ---- commands --------------------------------------------------------------------------

    /// Accepts or refuses a client transaction against the local provisional balance.
    ///
    /// A retry (same account and key, same body) returns the event already known, wherever
    /// it was issued. A new event is emitted as [`Output::Persist`]; acknowledge the client
    /// only after [`Replica::handle_persisted`] covers it.
    ///
    /// Under a strict consistency mode (SPEC §8) a debit may not be decided here at once: it
    /// is then [`Submitted::Pending`], and its decision comes later as [`Output::Decided`].
    pub fn submit(&mut self, now_ms: u64, req: TxRequest) -> Result<Submitted, SubmitError> {
        self.decide(now_ms, req, Stage::Client)
    }

    /// [`Replica::submit`] at one [`Stage`] of a request: a client's, a debit a member
    /// forwarded here as the home (decided here or refused, never forwarded again), or a
    /// debit waiting for escrow rights (tried again, or its fallback applied).
    fn decide(
        &mut self,
        now_ms: u64,
        req: TxRequest,
        stage: Stage,
    ) -> Result<Submitted, SubmitError> {
        self.can_issue()?;
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
        let (mut floor, mode) = {
            let a = self.settle.applied(&req.account, req.currency);
            (a.floor, a.mode.clone())
        };
        if let (Some(key), Some(acct)) = (&req.idempotency_key, self.accounts.map.get(&req.account))
        {
            if let Some(first) = acct.keys.get(&self.logs.members, key.as_str()) {
                // The holders whose retention has not ended for an event issued now (its HLC
                // is at least `now`), in total order: the settled fold then agrees with this
                // answer (`settle::key_live`).
                let now = self.clock.last().millis().max(now_ms);
                let mut live: Vec<&Event> = std::iter::once(first)
                    .chain(
                        acct.more_keys
                            .get(key.as_str())
                            .into_iter()
                            .flatten()
                            .copied(),
                    )
                    .filter_map(|id| self.event(id))
                    .filter(|e| {
                        settle::key_live(e.hlc, Hlc::from_millis(now), self.settle.retention_ms)
                    })
                    .collect();
                live.sort_by_key(|e| e.key());
                let same = |e: &Event| {
                    e.tx().is_some_and(|t| {
                        t.kind == req.kind
                            && t.amount == req.amount
                            && t.currency == req.currency
                            && t.reference.as_deref() == req.reference.as_deref()
                    })
                };
                // The first live holder in total order, else (after a cross-region conflict)
                // any other holder with this very body: a retry gets its own original back.
                if let Some(e) = live.iter().find(|e| same(e)) {
                    return Ok(Submitted::Existing(e.id));
                }
                if let Some(e) = live.first() {
                    return Err(SubmitError::IdempotencyConflict { existing: e.id });
                }
                // Every holder's retention ended: a new transaction.
            }
        }
        let state = self
            .accounts
            .map
            .get(&req.account)
            .and_then(|a| a.balances.get(&req.currency));
        if state.is_some_and(|s| s.frozen || s.provisional_frozen) {
            return Err(SubmitError::Frozen {
                account: req.account,
                currency: req.currency,
            });
        }
        let mut provisional = state.map(|s| s.bal.provisional).unwrap_or_default();
        match self.route(&req, &mode, stage == Stage::Forwarded) {
            None => {}
            Some(Route::Escrow) => {
                if let Some(waiting) = self.escrow_check(now_ms, &req, &mode, stage, &mut floor)? {
                    return Ok(waiting);
                }
            }
            Some(Route::Strict) => {
                provisional = self.strict_provisional(&req.account, req.currency)
            }
            Some(Route::NotHome(home)) => return Err(SubmitError::NotHome { home }),
            Some(Route::Forward(home)) => {
                let tx = Tx {
                    account: req.account,
                    kind: req.kind,
                    amount: canonical,
                    currency: req.currency,
                    idempotency_key: req.idempotency_key.map(Into::into),
                    reference: req.reference.map(Into::into),
                };
                return self.forward(now_ms, home, tx);
            }
        }
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
        let account = self.accounts.intern(req.account);
        let id = self.issue_own(
            now_ms,
            Body::Tx(Tx {
                account,
                kind: req.kind,
                amount: canonical,
                currency: req.currency,
                idempotency_key: req.idempotency_key.map(Into::into),
                reference: req.reference.map(Into::into),
            }),
        );
        Ok(Submitted::New(id))
    }

    /// Issues a policy change: it applies to events after it in the total order, once settled.
    pub fn submit_policy(&mut self, now_ms: u64, policy: Policy) -> Result<EventId, SubmitError> {
        self.can_issue()?;
        policy.validate()?;
        Ok(self.issue_own(now_ms, Body::Policy(Box::new(policy))))
    }

    /// Refuses to issue anything while restoring or joining, or once retired.
    fn can_issue(&self) -> Result<(), SubmitError> {
        if self.restoring || self.joining {
            return Err(SubmitError::Restoring);
        }
        if self.membership.retired_self {
            return Err(MembershipError::Retired.into());
        }
        Ok(())
    }

    /// Issues the next own event with this body: stamped, signed, applied, to be persisted.
    /// Under [`Replica::hold_signing`] a transaction is applied now, and signed and persisted
    /// with its batch by [`Replica::sign_pending`]; a policy or membership event (which may
    /// change the signing key) is signed alone and at once, after the batch held before it.
    fn issue_own(&mut self, now_ms: u64, body: Body) -> EventId {
        let batched = self.hold_signing && matches!(body, Body::Tx(_));
        if !batched {
            self.sign_pending();
        }
        let hlc = self.clock.tick(now_ms);
        let id = EventId {
            origin: self.cfg.region,
            seq: self.own_log_len() + 1,
        };
        let mut event = Event {
            id,
            hlc,
            body,
            sig: Box::new([]),
        };
        if batched {
            if self.unsigned_from == 0 {
                self.unsigned_from = id.seq;
            }
            self.insert(event);
        } else {
            event.sig = self.cfg.auth.sign_event(&event, &self.cfg.cluster).into();
            self.apply_own(event);
        }
        id
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
        // A seal first among the events stored under its seq: the old epoch's event there
        // was voided when the seal arrived (docs/protocol.md §12), and the old epoch's events
        // above it are skipped as their HLCs are below the seal's.
        sorted.sort_by_key(|e| {
            let seal = matches!(e.change(), Some(crate::event::Change::Seal { .. }));
            (e.id.origin, e.id.seq, !seal)
        });
        // Regions joined by an event reloaded here are members before any of their events
        // is (the join's own apply below finds them and only binds their key).
        for e in &sorted {
            if let Some(crate::event::Change::Join { region, .. }) = e.change() {
                if !self.logs.members.contains_key(region) && e.validate().is_ok() {
                    self.logs.members.insert(
                        *region,
                        log::Member {
                            covered: e.hlc,
                            joined: Some(e.hlc),
                            ..log::Member::default()
                        },
                    );
                }
            }
        }
        self.membership.loading = true;
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
            if e.id.seq != m.len() + 1 || e.validate().is_err() {
                continue;
            }
            if let Some(prev) = m.last_hlc() {
                if e.hlc <= prev {
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
        // Reloaded events are durable.
        for (o, seq) in &self.logs.vv.dots {
            if *o != self.cfg.region {
                self.dur.remote_durable.insert(*o, *seq);
            }
        }
        self.membership_after_load();
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
        let origin = event.id.origin;
        if event.id.seq != self.logs.len_of(origin).saturating_add(1)
            || !self.logs.members.contains_key(&origin)
        {
            // Gap-free per origin: a bug, not an input, if it does not hold.
            debug_assert!(false, "gap in the log of {origin}");
            return false;
        }
        self.accounts.index(&self.logs, &mut event);
        self.modes.index(&event);
        let change = event.change().cloned().map(|c| (event.id, event.hlc, c));
        let pushed = self.logs.push(event);
        if let (true, Some((id, hlc, c))) = (pushed, change) {
            self.note_membership(id, hlc, c);
        }
        pushed
    }

    // ---- watermark and settled fold --------------------------------------------------------

    fn compute_watermark(&self) -> Hlc {
        if self.settlement_blocked() {
            return self.settle.watermark;
        }
        let mut w = self.dur.announced;
        for (r, m) in &self.logs.members {
            // A retired region whose log up to its cut is held no longer stalls anything.
            if *r == self.cfg.region || m.retired_complete() {
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
