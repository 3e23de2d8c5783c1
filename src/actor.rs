//! The actor: one task owns the [`Replica`]; everything else sends it messages.
//!
//! Its loop takes a closed set of inputs ([`Input`]): commands ([`Command`], the HTTP layer's
//! requests and the process's `Shutdown`), transport events, the replica's timer
//! (`poll_timeout`: heartbeat, periodic pull, pull time-out), the idempotency cache's expiry
//! and the storage writer's durability reports. After every input it drains `poll_output()`:
//! records go to the writer (group commit), messages to the transport, compensations and
//! reports to metrics and logs. The actor decides nothing about replication: connection
//! events, messages and time go to the replica, and what it emits goes out.
//! A client hears `201` only once the writer reported its event durable ([`Waiters`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Shortest period between two metrics snapshots.
const METRICS_PUBLISH_MIN: Duration = Duration::from_millis(5);

use tokio::sync::{mpsc, oneshot};
use wallet_core::{EventId, Message, Output, Replica, SubmitError, Submitted};
use wallet_p2p::{NetEvent, NetHandle};

use crate::archiver::Archiver;
use crate::clock::{instant_at, now_ms};
use crate::command::{Command, PolicyFileIgnored, Reply, Shared, SubmitCmd};
use crate::defects::{self, Defect};
use crate::history;
use crate::idempotency::{IdemCache, Lookup};
use crate::metrics::{Metrics, NodeGauges, NodeSnapshot, Refusal};
use crate::render;
use crate::storage::{DiskDone, WriteBatch, WriteOp};
use crate::waiters::Waiters;

/// Most commands the actor takes per loop iteration (one write batch).
pub const COMMANDS_PER_BATCH_MAX: usize = 1_024;
/// How long the actor lets the 503 answers leave before it exits after a storage failure.
pub const STORAGE_FAILURE_EXIT_DELAY_MS: u64 = 200;
/// How long after learning a member's cut this region keeps talking to it (so that a
/// retired region that is alive learns its cut too) before taking it off the allowlist.
pub const RETIRED_MEMBER_GRACE_MS: u64 = 5_000;
/// Exit code after a storage failure (EX_SOFTWARE).
pub const STORAGE_FAILURE_EXIT_CODE: i32 = 70;

const _: () = assert!(COMMANDS_PER_BATCH_MAX <= crate::command::COMMAND_QUEUE_MAX);

/// The closed set of things that make the actor work.
// One value at a time on the actor's stack, never queued: its size does not matter, and
// boxing the network event would allocate per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// A batch of commands (in the loop's buffer).
    Commands,
    /// Every command sender is gone (or the channel was closed for shutdown and drained).
    CommandsClosed,
    /// A transport event.
    Net(NetEvent),
    /// The transport stopped: no more network events.
    NetClosed,
    /// The replica's timer is due.
    Timer,
    /// The oldest idempotency result is due to expire (a host timer: the cache is host state).
    ExpireIdempotency,
    /// Time to publish the metrics snapshot (`/metrics` reads it without asking the actor).
    PublishMetrics,
    /// The storage writer's report.
    Disk(DiskDone),
    /// The storage writer is gone.
    DiskClosed,
    /// The archive's thread reports an append.
    Archive(crate::archiver::Done),
}

/// The next value of an optional receiver (never, without one or once it is closed).
async fn recv_some<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The actor: owns the replica and the host state around it.
pub struct Actor {
    replica: Replica,
    net: NetHandle,
    writer: Option<mpsc::Sender<WriteBatch>>,
    pending_ops: Vec<WriteOp>,
    op_seq: u64,
    waiters: Waiters,
    idem: IdemCache,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    cluster: String,
    restoring: bool,
    failed: bool,
    stopping: bool,
    /// Outputs drained early (during a policy or membership submit) and not acted on yet.
    deferred: VecDeque<Output>,
    /// Answers to accepted transactions whose events the replica holds unsigned: they wait
    /// for the write batch that carries those events (signed together, one batch signature)
    /// and their idempotency records.
    turn_answers: Vec<(oneshot::Sender<Reply>, Reply, bool)>,
    /// `ack = "peer"`: the turn's new events' answers, with their own seq, wait for another
    /// member's durability too, at most this long (ms).
    peer_ack_ms: Option<u64>,
    turn_peer_answers: Vec<(oneshot::Sender<Reply>, Reply, u64)>,
    /// A write batch is at the writer and not yet reported durable (redb) or appended (the
    /// log, whose syncs are pipelined): the next one (and the signing of the transactions it
    /// carries) waits for it, and grows meanwhile.
    in_flight: bool,
    /// Pulls the replica sent, per member, counted as they leave (a metric: the pull rate
    /// shows a catch-up that cannot end; their sum is the core's `PullStats::sent`).
    pulls_sent: BTreeMap<wallet_core::RegionId, u64>,
    /// The policy file was ignored in favour of the recorded seed (shown in the status).
    policy_file_ignored: Option<PolicyFileIgnored>,
    /// Transactions seen, for the `spurious_503` chaos defect ([`crate::defects`]).
    spurious: u64,
    /// Retired members (cut known) taken off the transport's allowlist.
    removed: std::collections::BTreeSet<wallet_core::RegionId>,
    /// Members in force when the allowlist was last brought up to date.
    in_force: Vec<wallet_core::RegionId>,
    /// Every member's peer id the transport knows (configured, then joined): a join must
    /// not reuse one.
    peers: BTreeMap<wallet_core::RegionId, libp2p::PeerId>,
    /// Waiting for its own join event (readiness says `joining`).
    joining: bool,
    /// Retired members (cut known) to take off the allowlist, with when (wall-clock ms).
    retiring: BTreeMap<wallet_core::RegionId, u64>,
    /// Where a rotated signing key goes to the authenticator.
    key_stage: wallet_p2p::KeyStage,
    /// The rotated signing key's file.
    rotated_key: std::path::PathBuf,
    /// `compact_every_events` (0: never) and the settled count at the last compaction.
    compact_every_events: u64,
    /// `forward_timeout_ms`: how long a forwarded debit waits for its home (`Retry-After`).
    forward_timeout_ms: u64,
    compacted_at: u64,
    /// The archive of folded history, on its own thread (None: compaction off), and its
    /// reports (taken by the loop).
    archiver: Option<Archiver>,
    archive_done: Option<mpsc::UnboundedReceiver<crate::archiver::Done>>,
    backfill: Option<crate::backfill::Host>,
    /// Client requests the core answered `Submitted::Pending` (a debit forwarded to its
    /// home, or waiting for escrow rights), by the core's request id: answered from
    /// `Output::Decided`. Bounded by the core (`PENDING_REQUESTS_MAX`), which owns their
    /// time-outs, so every one is decided.
    parked: BTreeMap<u64, Parked>,
    /// Debits the home accepted whose event this region does not hold yet (it comes with
    /// the home's replication, just before the answer): answered once held, or dropped when
    /// the client is gone (the HTTP request time-out answered it).
    awaiting_event: Vec<(EventId, bool, Parked)>,
}

/// A client's transaction request, kept until it is answered.
#[derive(Debug)]
struct Parked {
    reply: oneshot::Sender<Reply>,
    account: wallet_core::AccountId,
    currency: wallet_core::Currency,
    key: Option<String>,
    fingerprint: [u8; 32],
}

/// `Retry-After` of a `home_unreachable` answer: the forward time-out (`forward_timeout_ms`),
/// in whole seconds, at least 1.
fn home_unreachable_retry_after_s(forward_timeout_ms: u64) -> u64 {
    forward_timeout_ms.div_ceil(1_000).max(1)
}

/// True for a batch of events holding a rights transfer.
fn carries_transfer(m: &Message) -> bool {
    let Message::Events(evs) = m else {
        return false;
    };
    evs.iter().any(|e| {
        matches!(&e.body, wallet_core::Body::Account(op)
            if matches!(**op, wallet_core::event::AccountOp::RightsTransfer { .. }))
    })
}

/// The HTTP status, code and metric reason of a refused transaction (`joining`: the region
/// waits for its own join event).
fn refusal(e: &SubmitError, joining: bool) -> (u16, &'static str, Refusal) {
    match e {
        SubmitError::InsufficientFunds { .. } => {
            (422, "insufficient_funds", Refusal::InsufficientFunds)
        }
        SubmitError::InsufficientRights { .. } => {
            (422, "insufficient_rights", Refusal::InsufficientRights)
        }
        SubmitError::HomeUnreachable { .. } => (503, "home_unreachable", Refusal::HomeUnreachable),
        SubmitError::NotHome { .. } => (409, "not_home", Refusal::NotHome),
        SubmitError::NotHomeMode => (409, "not_home_mode", Refusal::NotHome),
        SubmitError::IdempotencyConflict { .. } => {
            (409, "idempotency_conflict", Refusal::IdempotencyConflict)
        }
        SubmitError::Restoring if joining => (503, "joining", Refusal::Restoring),
        SubmitError::Restoring => (503, "restoring", Refusal::Restoring),
        SubmitError::Frozen { .. } => (409, "account_frozen", Refusal::Frozen),
        SubmitError::Membership(wallet_core::MembershipError::Retired) => {
            (409, "region_retired", Refusal::Retired)
        }
        _ => (409, "balance_overflow", Refusal::Overflow),
    }
}

/// What the actor starts from.
pub struct ActorParts {
    /// The replica, loaded from storage.
    pub replica: Replica,
    /// The transport.
    pub net: NetHandle,
    /// The storage writer's queue.
    pub writer: mpsc::Sender<WriteBatch>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flags shared with the HTTP layer.
    pub shared: Arc<Shared>,
    /// Cluster id (shown in the status).
    pub cluster: String,
    /// Idempotency results read back from storage.
    pub idem: IdemCache,
    /// A restore from peers starts now on an empty disk: record that it is pending.
    pub record_restore: bool,
    /// The config's policy file differs from the recorded seed policy (which is in force).
    pub policy_file_ignored: Option<PolicyFileIgnored>,
    /// Where a rotated signing key goes to the authenticator.
    pub key_stage: wallet_p2p::KeyStage,
    /// The rotated signing key's file (0600, next to the identity key).
    pub rotated_key: std::path::PathBuf,
    /// The configured members' peer ids.
    pub peers: BTreeMap<wallet_core::RegionId, libp2p::PeerId>,
    /// Compact after this many more events settled (0: never): `compact_every_events`.
    pub compact_every_events: u64,
    /// The archive's thread compaction writes to before it folds (None: compaction off),
    /// and its reports.
    pub archive: Option<(Archiver, mpsc::UnboundedReceiver<crate::archiver::Done>)>,
    /// The core's forward time-out (`forward_timeout_ms`), for `Retry-After`.
    pub forward_timeout_ms: u64,
    /// `ack = "peer"`: its timeout (ms); `None` for `ack = "local"`.
    pub peer_ack_ms: Option<u64>,
    /// The archive backfill after a bootstrap from a peer's snapshot ([`crate::backfill`]).
    pub backfill: Option<crate::backfill::Host>,
}

impl Actor {
    /// An actor over a loaded replica.
    pub fn new(mut p: ActorParts) -> Actor {
        // Own transactions are signed per write batch (`flush`), not one by one.
        p.replica.hold_signing(true);
        let restoring = p.replica.is_restoring();
        p.shared.restoring.store(restoring, Ordering::Release);
        let joining = p.replica.is_joining();
        p.shared.joining.store(joining, Ordering::Release);
        let (archiver, archive_done) = p.archive.take().unzip();
        let mut a = Actor {
            replica: p.replica,
            net: p.net,
            writer: Some(p.writer),
            pending_ops: Vec::new(),
            op_seq: 0,
            waiters: Waiters::new(p.metrics.clone()),
            idem: p.idem,
            metrics: p.metrics,
            shared: p.shared,
            cluster: p.cluster,
            restoring,
            failed: false,
            stopping: false,
            deferred: VecDeque::new(),
            turn_answers: Vec::new(),
            peer_ack_ms: p.peer_ack_ms,
            turn_peer_answers: Vec::new(),
            in_flight: false,
            pulls_sent: BTreeMap::new(),
            policy_file_ignored: p.policy_file_ignored,
            spurious: 0,
            removed: std::collections::BTreeSet::new(),
            in_force: Vec::new(),
            peers: p.peers,
            joining,
            retiring: BTreeMap::new(),
            key_stage: p.key_stage,
            rotated_key: p.rotated_key,
            compact_every_events: p.compact_every_events,
            forward_timeout_ms: p.forward_timeout_ms,
            compacted_at: 0,
            archiver,
            archive_done,
            backfill: p.backfill,
            parked: BTreeMap::new(),
            awaiting_event: Vec::new(),
        };
        if restoring && p.record_restore {
            a.push_op(WriteOp::Restore(true));
        }
        a
    }

    /// `reply`, to answer a write with, unless storage has failed: then the write is answered
    /// 503 `storage_unavailable` here (this region acknowledges nothing) and `None` returned.
    fn unless_failed(&self, reply: oneshot::Sender<Reply>) -> Option<oneshot::Sender<Reply>> {
        if self.failed {
            let _ = reply.send(Reply::error(
                503,
                "storage_unavailable",
                "storage failed; this region acknowledges nothing",
            ));
            return None;
        }
        Some(reply)
    }

    /// Queues the records the replica just produced for a local submission (its event, in
    /// order) for the writer; every other output waits in `deferred` for the main loop.
    fn queue_own_records(&mut self) {
        while let Some(out) = self.replica.poll_output() {
            match out {
                Output::Persist { index, record } => {
                    self.push_op(WriteOp::Record { index, record });
                }
                other => self.deferred.push_back(other),
            }
        }
    }

    fn push_op(&mut self, op: WriteOp) -> u64 {
        self.op_seq += 1;
        self.pending_ops.push(op);
        self.op_seq
    }

    /// Acts on the replica's outputs.
    async fn drain(&mut self) {
        while let Some(out) = self
            .deferred
            .pop_front()
            .or_else(|| self.replica.poll_output())
        {
            match out {
                Output::Persist { index, record } => {
                    if let (wallet_core::Record::Snapshot(s), Some(b)) =
                        (&record, self.backfill.as_mut())
                    {
                        b.on_snapshot(s, &mut self.archiver);
                    }
                    self.push_op(WriteOp::Record { index, record });
                }
                // The consistency modes' messages a client waits for skip the replication
                // queue (their order does not matter: an answer that overtakes the home's event
                // waits for it in `awaiting_event`).
                Output::Broadcast(m @ Message::RightsRequest { .. }) => {
                    self.net.broadcast_now(m).await
                }
                // Own events carrying a rights transfer (the answer to a member's request),
                // and with `ack = "peer"` every own event (its client waits for a member's
                // `Durable`): out of the queue too; a receiver that misses an earlier event
                // buffers them until replication brings it.
                Output::Broadcast(m @ Message::Events(_))
                    if self.peer_ack_ms.is_some() || carries_transfer(&m) =>
                {
                    self.net.broadcast_now(m).await
                }
                // How far this region holds an origin's log durably: a client of that origin
                // may wait for it (`ack = "peer"`); a maximum, so its order does not matter.
                Output::Send {
                    to,
                    msg: msg @ Message::Durable { .. },
                } => self.net.send_now(to, msg).await,
                Output::Send {
                    to,
                    msg: msg @ (Message::Forward { .. } | Message::ForwardAnswer { .. }),
                } => {
                    // An accepted forward is answered once its event is durable here: that
                    // event goes with the answer (a copy of what replication sends anyway;
                    // the requester drops the duplicate), so the requester need not wait for
                    // this region's replication queue to answer its client.
                    if let Message::ForwardAnswer {
                        result: wallet_core::message::ForwardResult::Accepted { id, .. },
                        ..
                    } = &msg
                    {
                        if let Some(e) = self.replica.event(*id) {
                            let events = Message::Events(vec![e.clone()]);
                            self.net.send_now(to, events).await;
                        }
                    }
                    self.net.send_now(to, msg).await
                }
                Output::Broadcast(m) => self.net.broadcast(m).await,
                Output::Send { to, msg } => {
                    if matches!(msg, Message::Pull { .. } | Message::PullGaps { .. }) {
                        let n = self.pulls_sent.entry(to).or_insert(0);
                        *n = n.saturating_add(1);
                    }
                    self.net.send(to, msg).await;
                }
                Output::Compensation(c) => {
                    self.metrics.compensation(c.kind.as_str());
                    tracing::info!(id = %c.id(), account = %c.account, currency = %c.currency,
                        delta = %c.currency.render(c.delta), policy_version = c.policy_version,
                        position = c.position, "compensation settled");
                }
                // A parked client request is decided: answered like one decided at once (an
                // event issued here waits for its batch, as in `submit`).
                Output::Decided {
                    request, result, ..
                } => match self.parked.remove(&request) {
                    Some(p) => self.answer(p, result, now_ms()),
                    None => tracing::warn!(request, "a decision for no parked request"),
                },
                Output::Report(r) => {
                    self.metrics.report(r.kind());
                    if r.is_severe() {
                        tracing::error!(report = ?r, "replica report");
                    } else {
                        tracing::warn!(report = ?r, "replica report");
                    }
                }
            }
        }
        self.answer_held();
        self.sync_allowlist().await;
        if self.peer_ack_ms.is_some() {
            self.waiters
                .peer_durable(self.replica.peer_durable_seq(), now_ms());
        }
        if self.joining && !self.replica.is_joining() {
            self.joining = false;
            self.shared.joining.store(false, Ordering::Release);
            tracing::warn!("own join event applied: this region is a member and takes traffic");
        }
        if self.restoring && !self.replica.is_restoring() {
            self.restoring = false;
            self.shared.restoring.store(false, Ordering::Release);
            self.push_op(WriteOp::Restore(false));
            tracing::warn!(
                epoch = self.replica.epoch(),
                "restore complete: own history pulled back, old epoch sealed"
            );
        }
    }

    /// Takes the members whose cut the replica knows off the transport's allowlist, a grace
    /// period ([`RETIRED_MEMBER_GRACE_MS`]) after this region learnt the cut: the core
    /// decides who is retired; the node only follows its applied membership. The grace lets
    /// the acknowledgements in flight reach the retired region, so that, if it is alive, it
    /// learns its cut and answers `region_retired` (its events above the cut are refused by
    /// the core whatever it sends meanwhile).
    async fn sync_allowlist(&mut self) {
        let in_force = self.replica.members_in_force();
        if in_force != self.in_force {
            self.in_force = in_force;
            self.add_joined().await;
            let me = self.replica.region();
            let due = now_ms().saturating_add(RETIRED_MEMBER_GRACE_MS);
            for m in self.replica.members() {
                if m.region != me
                    && !self.removed.contains(&m.region)
                    && self.replica.cut(m.region).is_some()
                {
                    self.retiring.entry(m.region).or_insert(due);
                }
            }
        }
        if self.retiring.is_empty() {
            return;
        }
        let now = now_ms();
        let due: Vec<wallet_core::RegionId> = self
            .retiring
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(r, _)| *r)
            .collect();
        for r in due {
            self.retiring.remove(&r);
            tracing::warn!(region = %r, "member retired (cut known): no longer dialed, its connections refused");
            self.net.remove_member(r).await;
            self.removed.insert(r);
        }
    }

    /// Adds the members that joined (a join the replica applied, this region's own
    /// excepted) to the transport: allowed and dialed at the addresses the join names.
    async fn add_joined(&mut self) {
        let me = self.replica.region();
        for j in self.replica.joins() {
            if j.region == me || self.peers.contains_key(&j.region) {
                continue;
            }
            let Some(m) = crate::join::JoinMeta::member(j.region, &j.meta) else {
                tracing::error!(region = %j.region, id = %j.id,
                    "join without a peer id walletd can read: the region is not dialed");
                continue;
            };
            tracing::warn!(region = %j.region, peer = %m.peer_id, id = %j.id,
                "member joined: allowed and dialed");
            self.peers.insert(j.region, m.peer_id);
            self.net.add_member(m).await;
        }
    }

    /// Acts on the outputs and sends the queued writes to the writer.
    async fn flush(&mut self) {
        // One batch at the writer at a time: while it commits, records (and the held
        // transactions, unsigned) gather for the next, which is signed and sent as a whole.
        if !self.in_flight {
            self.replica.sign_pending();
        }
        self.drain().await;
        if self.failed {
            let peer = self
                .turn_peer_answers
                .drain(..)
                .map(|(r, a, _)| (r, a, true));
            for (reply, _, _) in self.turn_answers.drain(..).chain(peer) {
                let _ = reply.send(Reply::error(
                    503,
                    "storage_unavailable",
                    "the region could not make the request durable",
                ));
            }
            return;
        }
        // While the archive makes the fold's last batch durable, the `Record::Snapshot` that
        // lets the store drop the folded events waits here, and every write after it.
        if self.in_flight || self.archiver.as_ref().is_some_and(Archiver::holds_writes) {
            return;
        }
        // Every held event is signed and queued now: its answer waits for this batch.
        let seq = self.op_seq;
        for (reply, answer, new) in self.turn_answers.drain(..) {
            self.waiters.answer_after(seq, reply, answer, new);
        }
        let deadline = now_ms().saturating_add(self.peer_ack_ms.unwrap_or(0));
        for (reply, answer, event) in self.turn_peer_answers.drain(..) {
            self.waiters
                .answer_after_peer(seq, (event, deadline), reply, answer);
        }
        if !self.pending_ops.is_empty() {
            // The next batch starts with room for as many ops as this one had.
            let room = self.pending_ops.len();
            let ops = std::mem::replace(&mut self.pending_ops, Vec::with_capacity(room));
            let batch = WriteBatch {
                seq: self.op_seq,
                ops,
            };
            if defects::is(Defect::AckBeforeFsync) && !self.waiters.is_empty() {
                self.waiters.durable(self.op_seq);
                tokio::time::sleep(Duration::from_millis(defects::ACK_BEFORE_FSYNC_DELAY_MS)).await;
            }
            let sent = match &self.writer {
                Some(w) => w.send(batch).await.is_ok(),
                None => false,
            };
            if sent {
                self.in_flight = true;
            } else {
                self.storage_failed();
            }
        }
    }

    fn storage_failed(&mut self) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.shared.storage_failed.store(true, Ordering::Release);
        self.shared.ready.store(false, Ordering::Release);
        tracing::error!("storage failed: answering 503 to every pending request and stopping");
        if defects::is(Defect::AckOnStorageFailure) {
            self.waiters.durable(self.op_seq);
        }
        let failed = Reply::error(
            503,
            "storage_unavailable",
            "the region could not make the request durable",
        );
        self.waiters.fail_all(&failed);
        let parked = std::mem::take(&mut self.parked).into_values();
        let awaiting = std::mem::take(&mut self.awaiting_event).into_iter();
        for p in parked.chain(awaiting.map(|(_, _, p)| p)) {
            let _ = p.reply.send(failed.clone());
        }
        self.writer = None;
    }

    async fn on_disk(&mut self, d: DiskDone) {
        match d {
            DiskDone::Committed { seq, index } => {
                self.in_flight = false;
                if index > 0 {
                    self.replica.handle_persisted(index);
                }
                // The next batch leaves for the writer before the answers to this one: the
                // disk does not wait for them.
                self.flush().await;
                self.waiters.durable(seq);
            }
            DiskDone::Appended => self.in_flight = false,
            DiskDone::Failed => self.storage_failed(),
        }
    }

    /// Queues the idempotency record of `answer` (when the request had a key); returns the
    /// write sequence number the answer must wait for.
    fn store_idem(
        &mut self,
        account: &wallet_core::AccountId,
        key: Option<&str>,
        fingerprint: [u8; 32],
        answer: &Reply,
        now: u64,
    ) -> u64 {
        let Some(key) = key else {
            return self.op_seq;
        };
        // Every result due goes first, on every insert, so expiry keeps up with any accept
        // rate; deleted before the new record is written (the key may be one that expired).
        self.expire_idempotency_at(now);
        let rec = IdemCache::record(fingerprint, answer, now);
        let key: Box<str> = key.into();
        let seq = self.push_op(WriteOp::Idem {
            account: account.clone(),
            key: key.clone(),
            rec: rec.clone(),
        });
        self.idem.insert(account.clone(), key, rec, seq);
        seq
    }

    fn submit(&mut self, cmd: SubmitCmd) {
        let SubmitCmd {
            req,
            fingerprint,
            reply,
        } = cmd;
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        if defects::is(Defect::Spurious503) {
            self.spurious = self.spurious.wrapping_add(1);
            if self.spurious.is_multiple_of(defects::SPURIOUS_503_EVERY) {
                let _ = reply.send(Reply::error(503, "chaos_defect", "spurious_503"));
                return;
            }
        }
        let now = now_ms();
        // Idempotency at the node edge: the stored result of the first request wins.
        if let Some(key) = req.idempotency_key.as_deref() {
            match self.idem.lookup(&req.account, key, &fingerprint, now) {
                Lookup::Miss => {}
                Lookup::Replay { answer, seq } => {
                    self.metrics.replayed();
                    self.waiters.answer_after(seq, reply, answer, false);
                    return;
                }
                Lookup::Conflict => {
                    self.metrics.refused(Refusal::IdempotencyConflict);
                    let _ = reply.send(Reply::error(
                        409,
                        "idempotency_conflict",
                        "this Idempotency-Key was already used on this account with a different request body",
                    ));
                    return;
                }
            }
        }
        let p = Parked {
            reply,
            account: req.account.clone(),
            currency: req.currency,
            key: req.idempotency_key.clone(),
            fingerprint,
        };
        match self.replica.submit(now, req) {
            // Forwarded to the account's home, or waiting for escrow rights: the core decides
            // it later (or times it out) as `Output::Decided`.
            Ok(Submitted::Pending { request }) => {
                self.queue_own_records();
                self.parked.insert(request, p);
            }
            result => self.answer(p, result, now),
        }
    }

    /// Answers a client's transaction request from the core's decision.
    fn answer(&mut self, p: Parked, result: Result<Submitted, SubmitError>, now: u64) {
        match result {
            Ok(Submitted::Pending { request }) => {
                // The core never decides a request as pending; keep waiting if it did.
                tracing::error!(request, "a decision that is still pending");
                self.parked.insert(request, p);
            }
            Ok(s) => match s.id() {
                Some(id) if self.replica.event(id).is_some() => self.accept(p, s, id, now),
                // Decided at the home: its event comes with the home's replication.
                Some(id) => self
                    .awaiting_event
                    .push((id, matches!(s, Submitted::Existing(_)), p)),
                None => {}
            },
            Err(e) => self.refuse(p, &e, now),
        }
    }

    /// An accepted (or replayed) transaction whose event this region holds: answered 201
    /// with the event once the turn's batch (its record, the idempotency record) is durable.
    fn accept(&mut self, p: Parked, s: Submitted, id: EventId, now: u64) {
        let bal = self.replica.balance(&p.account, p.currency);
        let body = match self.replica.event(id) {
            Some(e) => render::created_body(e, bal),
            None => render::error_body("internal", "event not found after submit"),
        };
        let mut answer = Reply::json(201, body);
        answer.replayed = matches!(s, Submitted::Existing(_));
        if answer.replayed {
            self.metrics.replayed();
        }
        self.store_idem(&p.account, p.key.as_deref(), p.fingerprint, &answer, now);
        match (s, self.peer_ack_ms) {
            // `ack = "peer"`: a new own event waits for another member's durability too.
            (Submitted::New(id), Some(_)) if id.origin == self.replica.region() => {
                self.turn_peer_answers.push((p.reply, answer, id.seq))
            }
            (s, _) => {
                let new = matches!(s, Submitted::New(_));
                self.turn_answers.push((p.reply, answer, new));
            }
        }
    }

    /// Answers the debits accepted at their home whose events arrived.
    fn answer_held(&mut self) {
        if self.awaiting_event.is_empty() {
            return;
        }
        let now = now_ms();
        for (id, existing, p) in std::mem::take(&mut self.awaiting_event) {
            if p.reply.is_closed() {
                continue;
            }
            if self.replica.event(id).is_some() {
                let s = if existing {
                    Submitted::Existing(id)
                } else {
                    Submitted::New(id)
                };
                self.accept(p, s, id, now);
            } else {
                self.awaiting_event.push((id, existing, p));
            }
        }
    }

    /// A refused transaction: its own code and metric; a 422 is a result (kept for retries
    /// with the same key), a 503 is not (a retry must be decided again).
    fn refuse(&mut self, p: Parked, e: &SubmitError, now: u64) {
        let (status, code, why) = refusal(e, self.joining);
        self.metrics.refused(why);
        let message = match why {
            Refusal::Retired => "this region has been retired from the cluster and accepts \
                no more transactions: send them to another region"
                .to_string(),
            _ if code == "joining" => "this region is joining the cluster: it takes \
                transactions once a member has issued its join (POST /v1/admin/members) \
                and it has pulled it"
                .to_string(),
            _ => e.to_string(),
        };
        let mut answer = Reply::error(status, code, &message);
        if why == Refusal::HomeUnreachable {
            answer.retry_after = Some(home_unreachable_retry_after_s(self.forward_timeout_ms));
        }
        if status == 422 && p.key.is_some() {
            // A refusal is a result too: a retry gets the same 422, durably.
            let seq = self.store_idem(&p.account, p.key.as_deref(), p.fingerprint, &answer, now);
            self.waiters.answer_after(seq, p.reply, answer, false);
        } else {
            let _ = p.reply.send(answer);
        }
    }

    /// A policy change: a replicated policy event, answered once it is durable here (like a
    /// transaction). It applies from its place in the total order once settled.
    fn submit_policy(&mut self, policy: wallet_core::Policy, reply: oneshot::Sender<Reply>) {
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        let members = self.replica.members_in_force();
        if let Err(m) = crate::config::homes_are_members(&policy, |h| members.contains(&h)) {
            let _ = reply.send(Reply::error(400, "invalid_policy", &m));
            return;
        }
        let hash = policy.hash();
        match self.replica.submit_policy(now_ms(), policy) {
            Ok(id) => {
                self.queue_own_records();
                let hlc = self.replica.event(id).map(|e| e.hlc);
                tracing::info!(id = %id, hash = %hex::encode(hash.0), "policy change submitted");
                let answer = Reply::json(201, render::policy_submitted_body(id, hash, hlc));
                self.waiters.answer_after(self.op_seq, reply, answer, false);
            }
            Err(SubmitError::Policy(e)) => {
                let _ = reply.send(Reply::error(400, "invalid_policy", &e.to_string()));
            }
            Err(SubmitError::Restoring) => {
                let _ = reply.send(Reply::error(
                    503,
                    "restoring",
                    "restoring this region's history from its peers",
                ));
            }
            Err(e) => {
                let _ = reply.send(Reply::error(409, "policy_refused", &e.to_string()));
            }
        }
    }

    /// A join of a new region issued here: a replicated event, answered once durable here.
    /// Every region that applies it allows and dials the new region ([`Self::add_joined`]).
    /// The rules are the core's (`Replica::join`); a peer id another member uses is refused
    /// here (the transport authenticates a region by it).
    fn join_member(&mut self, req: crate::join::JoinRequest, reply: oneshot::Sender<Reply>) {
        use wallet_core::MembershipError as M;
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        let in_use = self
            .peers
            .iter()
            .find(|(r, p)| **p == req.peer_id && **r != req.region);
        if let Some((r, _)) = in_use {
            let _ = reply.send(Reply::error(
                409,
                "peer_id_in_use",
                &format!("peer id {} is member {r}'s", req.peer_id),
            ));
            return;
        }
        let meta = req.meta();
        match self
            .replica
            .join(now_ms(), req.region, req.key.clone(), meta.encode())
        {
            Ok(id) => {
                self.queue_own_records();
                let hlc = self.replica.event(id).map(|e| e.hlc);
                tracing::warn!(id = %id, joined = %req.region, peer = %req.peer_id, "join submitted");
                let answer = Reply::json(201, render::join_submitted_body(id, hlc, &req));
                self.waiters.answer_after(self.op_seq, reply, answer, false);
            }
            Err(e) => {
                let (status, code) = match &e {
                    SubmitError::Restoring => (503, "restoring"),
                    SubmitError::Membership(M::AlreadyMember(r))
                        if self.replica.cut(*r).is_some()
                            || self.replica.retiring().contains(r) =>
                    {
                        (409, "region_was_retired")
                    }
                    SubmitError::Membership(M::AlreadyMember(_)) => (409, "already_member"),
                    SubmitError::Membership(M::Retired) => (409, "region_retired"),
                    // Lengths are checked before (parse_join_request): not reached.
                    SubmitError::Membership(M::Invalid(_)) => (400, "invalid_address"),
                    _ => (409, "membership_refused"),
                };
                let _ = reply.send(Reply::error(status, code, &e.to_string()));
            }
        }
    }

    /// A retire of `regions` issued here: a replicated event, answered once durable here
    /// with the acknowledgements it waits for. The rules are the core's (`Replica::retire`).
    fn retire_member(
        &mut self,
        regions: std::collections::BTreeSet<wallet_core::RegionId>,
        reason: String,
        reply: oneshot::Sender<Reply>,
    ) {
        use wallet_core::MembershipError as M;
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        match self.replica.retire(now_ms(), regions.clone(), reason) {
            Ok(id) => {
                self.queue_own_records();
                tracing::warn!(id = %id, retired = ?regions, "retire submitted");
                let answer = Reply::json(201, render::retire_submitted_body(&self.replica, id));
                self.waiters.answer_after(self.op_seq, reply, answer, false);
            }
            Err(e) => {
                let (status, code) = match &e {
                    SubmitError::Restoring => (503, "restoring"),
                    SubmitError::Membership(M::NotAMember(_)) => (404, "not_a_member"),
                    SubmitError::Membership(M::Retired) => (409, "region_retired"),
                    SubmitError::Membership(M::Invalid(_)) => (400, "invalid_region"),
                    _ => (409, "membership_refused"),
                };
                let _ = reply.send(Reply::error(status, code, &e.to_string()));
            }
        }
    }

    /// An operator waives a member's seal answer (a member down for good while this region
    /// is rebuilt after a lost disk): the seal goes ahead without it (`Replica::waive_seal_answer`:
    /// the rules are the core's).
    fn waive_seal(&mut self, region: wallet_core::RegionId, reply: oneshot::Sender<Reply>) {
        use wallet_core::MembershipError as M;
        match self.replica.waive_seal_answer(now_ms(), region) {
            Ok(()) => {
                self.queue_own_records();
                tracing::warn!(%region, "seal answer waived by an operator");
                let body = render::seal_waived_body(&self.replica, region);
                let _ = reply.send(Reply::json(200, body));
            }
            Err(e) => {
                let (status, code) = match &e {
                    SubmitError::Membership(M::NotAMember(_)) => (404, "not_a_member"),
                    SubmitError::Membership(M::NotSealing) => (409, "not_sealing"),
                    _ => (409, "membership_refused"),
                };
                let _ = reply.send(Reply::error(status, code, &e.to_string()));
            }
        }
    }

    /// Rotates this region's signing key: a new ed25519 key, written (0600, atomically) before
    /// the rotation event is issued, staged in the authenticator, which signs with it from
    /// the rotation on (`Replica::rotate_key`: the rules are the core's).
    fn rotate_key(&mut self, reply: oneshot::Sender<Reply>) {
        use wallet_core::MembershipError as M;
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let old = match wallet_p2p::replace_key_file(&self.rotated_key, &kp) {
            Ok(old) => old,
            Err(e) => {
                tracing::error!(error = %e, "could not write the rotated key");
                let _ = reply.send(Reply::error(
                    503,
                    "storage_unavailable",
                    &format!("could not write the rotated key: {e}"),
                ));
                return;
            }
        };
        let public = wallet_p2p::membership_key_of(&kp);
        self.key_stage.stage(kp);
        match self.replica.rotate_key(now_ms(), public.clone()) {
            Ok(id) => {
                self.queue_own_records();
                let hlc = self.replica.event(id).map(|e| e.hlc);
                tracing::warn!(id = %id, key = %hex::encode(&public), "signing key rotated");
                let answer = Reply::json(201, render::key_rotated_body(id, hlc, &public));
                self.waiters.answer_after(self.op_seq, reply, answer, false);
            }
            Err(e) => {
                if let Err(re) = wallet_p2p::restore_key_file(&self.rotated_key, old.as_deref()) {
                    tracing::error!(error = %re, "could not put the previous rotated key back");
                }
                let (status, code) = match &e {
                    SubmitError::Restoring => (503, "restoring"),
                    SubmitError::Membership(M::Retired) => (409, "region_retired"),
                    _ => (409, "membership_refused"),
                };
                let _ = reply.send(Reply::error(status, code, &e.to_string()));
            }
        }
    }

    /// An admin home move: the core's `HomeMove` event, issued here (the current home only:
    /// elsewhere 409 `not_home` names the home), answered once durable here.
    fn move_home(
        &mut self,
        account: wallet_core::AccountId,
        currency: wallet_core::Currency,
        to: wallet_core::RegionId,
        reply: oneshot::Sender<Reply>,
    ) {
        let Some(reply) = self.unless_failed(reply) else {
            return;
        };
        match self
            .replica
            .move_home(now_ms(), account.clone(), currency, to)
        {
            Ok(id) => {
                self.queue_own_records();
                let hlc = self.replica.event(id).map(|e| e.hlc.to_string());
                let epoch = self.replica.home(&account, currency).map_or(0, |h| h.1);
                tracing::warn!(id = %id, account = %account, currency = %currency, to = %to, epoch,
                    "home moved");
                let body = render::HomeMoved {
                    id: id.to_string(),
                    hlc,
                    account: account.to_string(),
                    currency: currency.to_string(),
                    home: to.to_string(),
                    epoch,
                };
                let answer = Reply::json(201, render::to_json(&body));
                self.waiters.answer_after(self.op_seq, reply, answer, false);
            }
            Err(e) => {
                let (status, code) = match &e {
                    SubmitError::Invalid(_) => (400, "invalid_region"),
                    _ => {
                        let (status, code, _) = refusal(&e, self.joining);
                        (status, code)
                    }
                };
                let _ = reply.send(Reply::error(status, code, &e.to_string()));
            }
        }
    }

    /// Compacts once `compact_every_events` more events settled since the last compaction
    /// (docs/protocol.md §11): the settled history every member holds is folded into a
    /// snapshot, dropped from memory, and (its `Record::Snapshot`) from the database.
    fn maybe_compact(&mut self) {
        let settled = self.replica.stats().settled;
        if self.compact_every_events == 0
            || settled < self.compacted_at.saturating_add(self.compact_every_events)
        {
            return;
        }
        // The archive first (durable, on its thread), then the fold (`crate::archiver`).
        match self.archiver.as_mut() {
            Some(a) => {
                a.start(&self.replica, now_ms());
            }
            None => {
                if let Some(s) = self.replica.compact() {
                    self.compacted(&s);
                }
            }
        }
    }

    fn compacted(&mut self, s: &wallet_core::Snapshot) {
        self.compacted_at = self.replica.stats().settled;
        tracing::info!(at = ?s.body.at, accounts = s.body.accounts.len(),
            events_in_memory = self.replica.events_in_memory(), "compacted");
    }

    /// The archive's thread reports an append: the fold's first step is durable (the fold
    /// runs now), or its last (the held writes go), or it failed.
    fn on_archive(&mut self, d: crate::archiver::Done) {
        let Some(a) = self.archiver.as_mut() else {
            return;
        };
        match a.on_done(d, &mut self.replica, now_ms()) {
            Ok(Some(s)) => self.compacted(&s),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "archive write failed after the fold: the folded \
                    events are not in the archive, so the store must keep them");
                self.storage_failed();
            }
        }
    }

    /// Answers a read of the history: now, or once the archive's thread has read its part.
    fn answer_read(&self, reply: oneshot::Sender<Reply>, read: history::Read) {
        match (read, &self.archiver) {
            (history::Read::Archive(f), Some(a)) => a.read(f, reply),
            (read, _) => {
                let _ = reply.send(read.answer(None));
            }
        }
    }

    fn metrics_snapshot(&self) -> NodeSnapshot {
        NodeSnapshot::new(
            &self.replica,
            &NodeGauges {
                connected: &self.net.connected(),
                net: self.net.stats(),
                pulls_sent: &self.pulls_sent,
                idempotency_keys: self.idem.len(),
                awaiting_durability: self.waiters.len(),
                storage_failed: self.failed,
                policy_file_ignored: self.policy_file_ignored.is_some(),
                parked: self.parked.len() + self.awaiting_event.len(),
                archive_bytes: self.archiver.as_ref().map_or(0, Archiver::bytes),
                archive_failed: self.archiver.as_ref().is_some_and(Archiver::failed),
                backfill: self
                    .backfill
                    .as_ref()
                    .map(crate::backfill::Host::gauges)
                    .unwrap_or_default(),
            },
        )
    }

    async fn on_command(&mut self, c: Command) {
        let r = &self.replica;
        match c {
            Command::Submit(cmd) => self.submit(cmd),
            Command::Balances { account, reply } => {
                let body = render::balances_body(&mut self.replica, &account);
                let _ = reply.send(Reply::json(200, body));
            }
            Command::Transactions {
                account,
                after,
                limit,
                reply,
            } => {
                let known = self.archiver.as_ref().map(Archiver::known);
                let read = history::transactions(r, known, &account, after, limit);
                self.answer_read(reply, read);
            }
            Command::Transaction { id, reply } => {
                let known = self.archiver.as_ref().map(Archiver::known);
                let read = history::transaction(r, known, &id);
                self.answer_read(reply, read);
            }
            Command::Compensations {
                after,
                limit,
                reply,
            } => {
                let known = self.archiver.as_ref().map(Archiver::known);
                let read = history::compensations(r, known, after, limit);
                self.answer_read(reply, read);
            }
            Command::Status { reply } => {
                let body = render::status_body(
                    r,
                    &self.cluster,
                    &self.net.connected(),
                    self.failed,
                    self.policy_file_ignored
                        .map(|p| (p.file_hash, p.recorded_hash)),
                    self.parked.len() + self.awaiting_event.len(),
                );
                let _ = reply.send(Reply::json(200, body));
            }
            Command::Evidence { reply } => {
                let _ = reply.send(Reply::json(200, render::evidence_body(r)));
            }
            Command::SubmitPolicy { policy, reply } => self.submit_policy(policy, reply),
            Command::Policy { reply } => {
                let body = render::policy_body(
                    r,
                    self.policy_file_ignored
                        .map(|p| (p.file_hash, p.recorded_hash)),
                );
                let _ = reply.send(Reply::json(200, body));
            }
            Command::JoinMember { req, reply } => self.join_member(req, reply),
            Command::RetireMember {
                regions,
                reason,
                reply,
            } => self.retire_member(regions, reason, reply),
            Command::RotateKey { reply } => self.rotate_key(reply),
            Command::WaiveSeal { region, reply } => self.waive_seal(region, reply),
            Command::MoveHome {
                account,
                currency,
                to,
                reply,
            } => self.move_home(account, currency, to, reply),
            Command::Members { reply } => {
                let _ = reply.send(Reply::json(200, render::members_body(r)));
            }
            Command::Faults { isolate, reply } => {
                let list: Vec<String> = isolate.iter().map(|r| r.to_string()).collect();
                tracing::warn!(isolated = ?list, "fault injection: replication isolation changed");
                self.net.set_isolated(isolate).await;
                let _ = reply.send(Reply::json(200, render::faults_body(&list)));
            }
            Command::Shutdown => {
                tracing::info!("shutting down: finishing in-flight commits");
                self.stopping = true;
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        let now = now_ms();
        match ev {
            NetEvent::Connected(r) => {
                tracing::info!(region = %r, "member connected");
                self.replica.handle_connected(now, r);
            }
            NetEvent::Disconnected(r) => {
                tracing::info!(region = %r, "member disconnected");
                self.replica.handle_disconnected(now, r);
            }
            NetEvent::Message {
                from,
                msg: Message::Archive(bytes),
                ..
            } => {
                if let Some(b) = &self.backfill {
                    b.on_message(from, &bytes, self.archiver.as_ref());
                }
            }
            NetEvent::Message { from, msg, .. } => {
                if defects::is(Defect::DropPullAnswers) && matches!(msg, Message::PullAnswer { .. })
                {
                    return;
                }
                let mut msg = msg;
                if defects::is(Defect::DropLateEvents) {
                    let late = |e: &wallet_core::Event| {
                        now.saturating_sub(e.hlc.millis()) > defects::LATE_EVENT_MS
                    };
                    match &mut msg {
                        Message::Events(evs) | Message::PullAnswer { events: evs, .. } => {
                            evs.retain(|e| !late(e));
                        }
                        _ => {}
                    }
                }
                let now = if defects::is(Defect::IgnoreClockSkew) {
                    now.saturating_add(86_400_000)
                } else if defects::is(Defect::StrictClock) {
                    let bound = crate::chaos::CHAOS_MAX_CLOCK_SKEW_MS;
                    now.saturating_sub(bound.saturating_sub(defects::STRICT_SKEW_MS))
                } else {
                    now
                };
                self.replica.handle_message(now, from, msg)
            }
        }
    }

    fn expire_idempotency(&mut self) {
        self.expire_idempotency_at(now_ms());
    }

    fn expire_idempotency_at(&mut self, now: u64) {
        for (account, key) in self.idem.expire(now) {
            self.push_op(WriteOp::IdemDelete { account, key });
        }
    }

    /// Nothing queued, in flight or held.
    fn idle(&self) -> bool {
        self.waiters.is_empty()
            && self.pending_ops.is_empty()
            && self.waiters.durable_seq() >= self.op_seq
    }
}

/// Handles to a running actor.
pub struct ActorHandle {
    /// Commands (the HTTP layer holds clones).
    pub commands: mpsc::Sender<Command>,
    /// The actor task.
    pub task: tokio::task::JoinHandle<()>,
}

impl ActorHandle {
    /// Asks the actor to stop (behind the commands already queued) and waits until it has
    /// finished the commits in flight and answered their waiters.
    pub async fn shutdown(self) {
        let ActorHandle { commands, task } = self;
        // A closed channel means the actor has stopped already.
        let _ = commands.send(Command::Shutdown).await;
        drop(commands);
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the actor task failed");
        }
    }
}

/// Runs `actor` on its own task.
pub fn spawn(
    actor: Actor,
    net_rx: mpsc::Receiver<NetEvent>,
    disk_rx: mpsc::UnboundedReceiver<DiskDone>,
) -> ActorHandle {
    let (commands, cmd_rx) = mpsc::channel(crate::command::COMMAND_QUEUE_MAX);
    let task = tokio::spawn(run(actor, cmd_rx, net_rx, disk_rx));
    ActorHandle { commands, task }
}

async fn run(
    mut a: Actor,
    mut cmd_rx: mpsc::Receiver<Command>,
    mut net_rx: mpsc::Receiver<NetEvent>,
    mut disk_rx: mpsc::UnboundedReceiver<DiskDone>,
) {
    let mut cmds: Vec<Command> = Vec::with_capacity(COMMANDS_PER_BATCH_MAX);
    let (mut cmds_open, mut net_open, mut disk_open) = (true, true, true);
    // The replica's timer, armed for `poll_timeout()` (wall-clock ms).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_at = u64::MAX;
    // The gauges `/metrics` serves, published after inputs at most every
    // METRICS_PUBLISH_MIN_MS, and once more when the actor goes quiet.
    let mut metrics_dirty = true;
    let mut metrics_at = tokio::time::Instant::now();
    // The idempotency cache's expiry, armed for its oldest result.
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut expiry_at = None;
    let mut archive_rx = a.archive_done.take();
    a.flush().await;
    loop {
        let due = a.replica.poll_timeout();
        if due != timer_at {
            timer_at = due;
            timer.as_mut().reset(instant_at(due));
        }
        let next_expiry = a.idem.next_expiry();
        if next_expiry != expiry_at {
            expiry_at = next_expiry;
            if let Some(at) = next_expiry {
                expiry.as_mut().reset(instant_at(at));
            }
        }
        let input = tokio::select! {
            biased;
            d = disk_rx.recv(), if disk_open => d.map_or(Input::DiskClosed, Input::Disk),
            n = cmd_rx.recv_many(&mut cmds, COMMANDS_PER_BATCH_MAX), if cmds_open => {
                if n == 0 { Input::CommandsClosed } else { Input::Commands }
            }
            ev = net_rx.recv(), if net_open => ev.map_or(Input::NetClosed, Input::Net),
            Some(d) = recv_some(&mut archive_rx) => Input::Archive(d),
            _ = &mut timer => Input::Timer,
            _ = &mut expiry, if expiry_at.is_some() => Input::ExpireIdempotency,
            _ = tokio::time::sleep_until(metrics_at + METRICS_PUBLISH_MIN), if metrics_dirty => {
                Input::PublishMetrics
            }
        };
        let publish = matches!(input, Input::PublishMetrics);
        match input {
            Input::Commands => {
                for c in cmds.drain(..) {
                    a.on_command(c).await;
                }
                if a.stopping {
                    // Commands already queued are still taken; no new ones are accepted.
                    cmd_rx.close();
                }
            }
            Input::CommandsClosed => cmds_open = false,
            Input::Net(ev) => a.on_net(ev),
            Input::NetClosed => {
                net_open = false;
                tracing::error!("the transport stopped: this region no longer replicates");
            }
            Input::Timer => {
                timer_at = u64::MAX;
                a.replica.handle_timeout(now_ms());
                a.maybe_compact();
                if let Some(b) = a.backfill.as_mut() {
                    b.poll(&mut a.archiver);
                }
            }
            Input::ExpireIdempotency => {
                expiry_at = None;
                a.expire_idempotency();
            }
            Input::PublishMetrics => {}
            Input::Disk(d) => a.on_disk(d).await,
            Input::Archive(d) => a.on_archive(d),
            Input::DiskClosed => {
                disk_open = false;
                a.on_disk(DiskDone::Failed).await;
            }
        }
        a.flush().await;
        if !publish {
            metrics_dirty = true;
        }
        let now = tokio::time::Instant::now();
        // A storage failure is published at once: the process exits below.
        if metrics_dirty && (now >= metrics_at + METRICS_PUBLISH_MIN || a.failed) {
            a.metrics.publish_node(a.metrics_snapshot());
            metrics_dirty = false;
            metrics_at = now;
        }
        if a.failed {
            // Crash-only: nothing unacknowledged is lost by exiting, and a restart re-reads
            // what is durable. Give the 503 answers a moment to leave.
            tracing::error!("exiting after a storage failure");
            tokio::time::sleep(Duration::from_millis(STORAGE_FAILURE_EXIT_DELAY_MS)).await;
            std::process::exit(STORAGE_FAILURE_EXIT_CODE);
        }
        if (a.stopping || !cmds_open) && a.idle() {
            break;
        }
    }
    // Dropping the writer sender lets the writer thread finish its queue and stop.
    a.writer = None;
    tracing::info!("actor stopped");
}

#[cfg(test)]
mod tests {
    //! The actor's write hold during the archive's batches (docs/operations.md, "The archive
    //! of compacted history"): the real actor over a real store and a real archive in a
    //! temporary data dir, driven input by input (never through [`run`], which exits the
    //! process after a storage failure). Its write batches pass through the test on their
    //! way to the real writer, and the archive's thread asks the test for each batch's fate.

    use super::*;
    use crate::archive::{Archive, ArchiveError};
    use crate::storage::{Backend, Storage};
    use tokio::sync::oneshot::error::TryRecvError;
    use wallet_core::{AccountId, Amount, Config, Currency, Hlc, Kind, Policy, Record, RegionId};

    const POLICY: &str = "[default]\naction = \"reverse\"\noverdraft_line = \"0\"\n\
        reversible = [\"purchase\"]\n";
    /// Compaction starts once this many events settled.
    const COMPACT_EVERY_EVENTS: u64 = 10;

    /// What the archive's thread is told to do with one batch.
    type Verdict = Result<(), ArchiveError>;

    fn disk_full() -> Verdict {
        Err(ArchiveError::Io {
            path: "archive".into(),
            reason: "No space left on device (test)".into(),
        })
    }

    struct Rig {
        /// The fate of each batch the archive's thread takes (it waits for one). Dropped
        /// first: the thread then ends, and the actor's archiver, dropped next, joins it.
        verdicts: std::sync::mpsc::Sender<Verdict>,
        actor: Actor,
        dir: tempfile::TempDir,
        /// The actor's write batches, on their way to `store` (the real writer).
        to_store: mpsc::Receiver<WriteBatch>,
        store: Option<mpsc::Sender<WriteBatch>>,
        writer: Option<std::thread::JoinHandle<()>>,
        disk: mpsc::UnboundedReceiver<DiskDone>,
        archived: mpsc::UnboundedReceiver<crate::archiver::Done>,
        /// Highest write sequence number sent to the writer.
        sent_seq: u64,
        /// `Record::Snapshot`s that reached the writer (each deletes the events it folds).
        snapshots: usize,
        deposits: u32,
    }

    impl Rig {
        async fn new() -> Rig {
            let dir = tempfile::tempdir().expect("tempdir");
            let eu = RegionId::new("eu").expect("region");
            let policy = Policy::from_toml(POLICY).expect("policy");
            let replica = Replica::new(Config::new(eu, vec![eu], policy), Hlc::ZERO);
            let (storage, loaded) = Storage::open(dir.path(), Backend::Log).expect("store");
            assert!(loaded.events.is_empty());
            let metrics = Arc::new(Metrics::new());
            let (done_tx, disk) = mpsc::unbounded_channel();
            let (store, writer) =
                crate::storage::spawn_writer(storage, true, 1_024, metrics.clone(), done_tx)
                    .expect("writer");
            let (proxy, to_store) = mpsc::channel(crate::storage::WRITER_QUEUE_BATCHES_MAX);
            let (net, _net_rx) = wallet_p2p::spawn(wallet_p2p::NetConfig {
                region: eu,
                keypair: libp2p::identity::Keypair::generate_ed25519(),
                listen: Vec::new(),
                members: Vec::new(),
                cluster: "test".into(),
                peer_inbound_bytes_max: wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
            })
            .expect("net");
            let archive = Archive::open(dir.path(), 1 << 20, None, now_ms()).expect("archive");
            let (verdicts, verdict_rx) = std::sync::mpsc::channel::<Verdict>();
            let fault = Box::new(move |_fold: bool| verdict_rx.recv().unwrap_or(Ok(())));
            let (archiver, archived) =
                Archiver::spawn_faulty(archive, fault).expect("archive thread");
            let actor = Actor::new(ActorParts {
                replica,
                net,
                writer: proxy,
                metrics,
                shared: Arc::new(Shared::default()),
                cluster: "test".into(),
                idem: IdemCache::new(60_000),
                record_restore: false,
                policy_file_ignored: None,
                key_stage: wallet_p2p::KeyStage::default(),
                rotated_key: dir.path().join("rotated.key"),
                peers: BTreeMap::new(),
                compact_every_events: COMPACT_EVERY_EVENTS,
                archive: None,
                backfill: None,
                forward_timeout_ms: 1_000,
                peer_ack_ms: None,
            });
            let mut rig = Rig {
                actor,
                dir,
                to_store,
                store: Some(store),
                writer: Some(writer),
                disk,
                archived,
                verdicts,
                sent_seq: 0,
                snapshots: 0,
                deposits: 0,
            };
            rig.actor.archiver = Some(archiver);
            rig
        }

        /// Flushes the actor's writes and feeds it the writer's reports until everything it
        /// sent is durable (writes the archive holds stay with the actor).
        async fn pump(&mut self) {
            loop {
                self.actor.flush().await;
                while let Ok(b) = self.to_store.try_recv() {
                    self.snapshots += b
                        .ops
                        .iter()
                        .filter(|op| {
                            matches!(
                                op,
                                WriteOp::Record {
                                    record: Record::Snapshot(_),
                                    ..
                                }
                            )
                        })
                        .count();
                    self.sent_seq = b.seq;
                    if let Some(s) = &self.store {
                        s.send(b).await.expect("writer");
                    }
                }
                let durable = self.actor.waiters.durable_seq() >= self.sent_seq;
                if self.actor.failed || (!self.actor.in_flight && durable) {
                    return;
                }
                let d = self.disk.recv().await.expect("writer report");
                self.actor.on_disk(d).await;
            }
        }

        /// A USD deposit of 1.00 to `acct0`, submitted and pumped: where its answer comes.
        async fn deposit(&mut self) -> oneshot::Receiver<Reply> {
            self.deposits += 1;
            let (reply, rx) = oneshot::channel();
            let req = wallet_core::TxRequest {
                account: AccountId::new("acct0").expect("account"),
                kind: Kind::Deposit,
                amount: Amount::parse("1.00", Currency::USD).expect("amount"),
                currency: Currency::USD,
                // Unkeyed: a keyed event within retention stays in memory after the fold.
                idempotency_key: None,
                reference: None,
            };
            let fingerprint = [0; 32];
            self.actor
                .on_command(Command::Submit(SubmitCmd {
                    req,
                    fingerprint,
                    reply,
                }))
                .await;
            self.pump().await;
            rx
        }

        /// `n` deposits, each answered 201 once durable.
        async fn deposits_ok(&mut self, n: u32) {
            for _ in 0..n {
                let mut rx = self.deposit().await;
                let r = rx.try_recv().expect("answered once durable");
                assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
            }
        }

        /// Runs the replica's timer until every event it holds is settled (one region: its
        /// own heartbeats settle them), then lets the actor start a compaction if it is due.
        async fn settle(&mut self) {
            for _ in 0..100 {
                if self.actor.replica.stats().settled >= self.actor.replica.event_count() {
                    break;
                }
                let due = self.actor.replica.poll_timeout().max(now_ms());
                self.actor.replica.handle_timeout(due);
                self.pump().await;
            }
            assert_eq!(
                self.actor.replica.stats().settled,
                self.actor.replica.event_count(),
                "everything settles"
            );
            self.actor.maybe_compact();
            self.pump().await;
        }

        /// Decides the batch the archive's thread waits with, and hands its report to the
        /// actor.
        async fn archive_answers(&mut self, v: Verdict) {
            self.verdicts.send(v).expect("archive thread");
            let d = self.archived.recv().await.expect("archive report");
            self.actor.on_archive(d);
            self.pump().await;
        }

        fn archiver(&self) -> &Archiver {
            self.actor.archiver.as_ref().expect("archiver")
        }

        /// Stops the writer (after what it was sent) and reads the store back from disk:
        /// (events held, a snapshot recorded).
        fn reopen(mut self) -> (u64, bool) {
            self.actor.writer = None;
            self.store = None;
            if let Some(w) = self.writer.take() {
                w.join().expect("writer thread");
            }
            let dir = self.dir.path().to_path_buf();
            drop(self.actor);
            let (_, loaded) = Storage::open(&dir, Backend::Log).expect("reopen");
            (loaded.events.len() as u64, loaded.snapshot.is_some())
        }
    }

    /// Step 1's batch is at the archive's thread: a compaction is under way, the region goes
    /// on (`more` deposits answered 201, settled), nothing is folded or held yet.
    async fn step_one_in_flight(rig: &mut Rig, more: u32) {
        rig.deposits_ok(COMPACT_EVERY_EVENTS as u32).await;
        rig.settle().await;
        assert!(rig.archiver().busy(), "a compaction started");
        assert!(!rig.archiver().holds_writes());
        rig.deposits_ok(more).await;
        rig.settle().await;
        assert_eq!(rig.snapshots, 0);
    }

    #[tokio::test]
    async fn the_fold_s_snapshot_and_later_writes_wait_for_the_archive_s_last_batch() {
        let mut rig = Rig::new().await;
        step_one_in_flight(&mut rig, 5).await;
        let in_memory = rig.actor.replica.events_in_memory();
        // Step 1 durable: step 2's batch goes to the thread (and stays there) and the
        // replica folds at once.
        rig.archive_answers(Ok(())).await;
        assert!(rig.actor.replica.events_in_memory() < in_memory, "folded");
        assert!(rig.archiver().holds_writes());
        // Meanwhile: the snapshot record does not reach the store, nor a write after it, and
        // a deposit accepted now is not acknowledged.
        let mut held = rig.deposit().await;
        assert_eq!(
            rig.snapshots, 0,
            "the snapshot reached the store before the archive"
        );
        assert_eq!(held.try_recv().err(), Some(TryRecvError::Empty));
        assert!(!rig.actor.pending_ops.is_empty(), "writes are held");
        // Step 2 durable: the held writes go, the snapshot first among them.
        rig.archive_answers(Ok(())).await;
        assert!(!rig.archiver().busy() && !rig.archiver().failed());
        assert_eq!(rig.snapshots, 1);
        assert_eq!(held.try_recv().expect("answered").status, 201);
        let total = rig.actor.replica.event_count();
        let (events, snapshot) = rig.reopen();
        assert!(snapshot, "the snapshot is stored");
        assert!(
            events < total,
            "the folded events left the store: {events} of {total}"
        );
    }

    #[tokio::test]
    async fn a_failed_first_archive_batch_stops_compaction_and_deletes_nothing() {
        let mut rig = Rig::new().await;
        step_one_in_flight(&mut rig, 5).await;
        let in_memory = rig.actor.replica.events_in_memory();
        rig.archive_answers(disk_full()).await;
        assert!(rig.archiver().failed() && !rig.archiver().busy());
        assert!(!rig.archiver().holds_writes());
        assert_eq!(
            rig.actor.replica.events_in_memory(),
            in_memory,
            "nothing folded"
        );
        // The region goes on, and never compacts again.
        rig.deposits_ok(2 * COMPACT_EVERY_EVENTS as u32).await;
        rig.settle().await;
        assert!(
            !rig.archiver().busy(),
            "no compaction starts after a failure"
        );
        assert_eq!(rig.snapshots, 0);
        assert!(!rig.actor.failed);
        let total = rig.actor.replica.event_count();
        assert_eq!(
            rig.reopen(),
            (total, false),
            "every event stays in the store"
        );
    }

    #[tokio::test]
    async fn a_failed_last_archive_batch_answers_503_and_drops_nothing_from_the_store() {
        let mut rig = Rig::new().await;
        step_one_in_flight(&mut rig, 5).await;
        rig.archive_answers(Ok(())).await;
        assert!(rig.archiver().holds_writes());
        let mut held = rig.deposit().await;
        assert_eq!(held.try_recv().err(), Some(TryRecvError::Empty));
        let held_events = rig.actor.replica.event_count();
        rig.archive_answers(disk_full()).await;
        assert!(rig.actor.failed, "a storage failure");
        let code = |r: Reply| -> (u16, String) {
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            (
                r.status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        };
        let unavailable = (503, "storage_unavailable".to_string());
        assert_eq!(code(held.try_recv().expect("answered")), unavailable);
        let mut after = rig.deposit().await;
        assert_eq!(code(after.try_recv().expect("answered")), unavailable);
        assert_eq!(rig.snapshots, 0, "the snapshot reached the store");
        // Everything acknowledged is in the store (the held deposit's event was never
        // written), and no snapshot deleted any of it.
        assert_eq!(rig.reopen(), (held_events - 1, false));
    }
}
