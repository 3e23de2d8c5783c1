//! The region node: one actor task owns the [`Replica`]; everything else sends it messages.
//!
//! The actor's loop takes a closed set of inputs ([`Input`]): HTTP commands with a oneshot
//! reply, network events, the replica's timer, the anti-entropy tick and the storage writer's
//! durability reports. After every input it drains `poll_output()`: records go to the writer
//! (group commit), broadcasts to the transport, compensations and reports to metrics and logs.
//! A client hears `201` only once the writer reported its event durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use wallet_core::{
    AccountId, EntryKey, EventId, Message, Output, Replica, SubmitError, Submitted, TxRequest,
};
use wallet_p2p::{MemberAddr, NetConfig, NetEvent, NetHandle};

use crate::config::NodeConfig;
use crate::metrics::{Metrics, Refusal};
use crate::render;
use crate::storage::{self, DiskDone, IdemRecord, Store, WriteBatch, WriteOp};

/// Most HTTP commands the actor takes per loop iteration (one write batch).
pub const COMMANDS_PER_BATCH_MAX: usize = 1_024;
/// Capacity of the command channel from HTTP handlers to the actor.
pub const COMMAND_QUEUE_MAX: usize = 8_192;
/// How long an idempotency result is kept, by wall clock.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1_000;
/// Most expired idempotency results dropped per expiry pass (the next pass follows at once
/// when more are due, so other inputs are served in between).
pub const IDEMPOTENCY_EXPIRE_PER_PASS_MAX: usize = 10_000;
/// Most transactions per list page.
pub const PAGE_LIMIT_MAX: usize = 1_000;

const _: () = assert!(COMMANDS_PER_BATCH_MAX <= COMMAND_QUEUE_MAX);

/// The tokio instant of wall-clock time `at_ms` (now, when it is past).
fn instant_at(at_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

/// Wall-clock milliseconds since the Unix epoch (read only here, never in the core).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An HTTP answer produced by the actor.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Bytes,
    /// An idempotent retry answered with the original result.
    pub replayed: bool,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: body.into(),
            replayed: false,
        }
    }

    /// An error reply.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, render::error_body(code, message))
    }
}

/// A transaction submission.
#[derive(Debug)]
pub struct SubmitCmd {
    /// The request, validated.
    pub req: TxRequest,
    /// SHA-256 of the canonical body, for idempotency.
    pub fingerprint: [u8; 32],
    /// Where to answer.
    pub reply: oneshot::Sender<Reply>,
}

/// Commands from the HTTP layer.
#[derive(Debug)]
pub enum Command {
    /// POST a transaction.
    Submit(SubmitCmd),
    /// Balances of an account.
    Balances {
        /// Account.
        account: AccountId,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// An account's history page.
    Transactions {
        /// Account.
        account: AccountId,
        /// Cursor.
        after: Option<EntryKey>,
        /// Page size.
        limit: usize,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// One transaction (or compensation) by id.
    Transaction {
        /// The id as given.
        id: String,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// The compensation feed.
    Compensations {
        /// Feed position to start at.
        after: u64,
        /// Page size.
        limit: usize,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Region status.
    Status {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Evidence that members broke the protocol (admin).
    Evidence {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Replica-derived metrics text.
    Metrics {
        /// Answer.
        reply: oneshot::Sender<String>,
    },
    /// Fault injection: isolate regions (empty heals).
    Faults {
        /// Regions to cut off.
        isolate: BTreeSet<wallet_core::RegionId>,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
}

/// The closed set of things that make the actor work.
// One value at a time on the actor's stack, never queued: its size does not matter, and
// boxing the network event would allocate per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// HTTP commands (a batch).
    Http,
    /// A transport event.
    Net(NetEvent),
    /// The transport stopped: no more network events.
    NetClosed,
    /// The replica's timer is due (`Replica::poll_timeout`: heartbeat, periodic pull, pull
    /// time-out).
    Timer,
    /// The oldest idempotency result is due to expire (a host timer: the cache is host state).
    ExpireIdempotency,
    /// The storage writer's report.
    Disk(DiskDone),
}

/// State shared with the HTTP layer (read-only there).
#[derive(Debug, Default)]
pub struct Shared {
    /// Storage loaded and actor running.
    pub ready: AtomicBool,
    /// Restoring own history from peers.
    pub restoring: AtomicBool,
    /// Storage failed: nothing more is acknowledged.
    pub storage_failed: AtomicBool,
}

struct IdemEntry {
    rec: Arc<IdemRecord>,
    seq: u64,
}

struct Waiter {
    seq: u64,
    reply: oneshot::Sender<Reply>,
    answer: Reply,
    accepted: bool,
}

/// The actor: owns the replica and the bookkeeping around it.
pub struct Actor {
    replica: Replica,
    net: NetHandle,
    writer: Option<mpsc::Sender<WriteBatch>>,
    pending_ops: Vec<WriteOp>,
    op_seq: u64,
    durable_seq: u64,
    waiting: VecDeque<Waiter>,
    idem: BTreeMap<AccountId, BTreeMap<Box<str>, IdemEntry>>,
    idem_expiry: VecDeque<(u64, AccountId, Box<str>)>,
    idem_count: u64,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    cluster: String,
    restoring: bool,
    failed: bool,
    deferred: VecDeque<Output>,
    /// Pulls the replica sent, per member, counted as they leave (a metric: the pull rate
    /// shows a catch-up that cannot end; their sum is the core's `PullStats::sent`).
    pulls_sent: BTreeMap<wallet_core::RegionId, u64>,
}

impl Actor {
    fn push_op(&mut self, op: WriteOp) -> u64 {
        self.op_seq += 1;
        self.pending_ops.push(op);
        self.op_seq
    }

    /// Drains the replica's outputs.
    async fn drain(&mut self) {
        while let Some(out) = self
            .deferred
            .pop_front()
            .or_else(|| self.replica.poll_output())
        {
            match out {
                Output::Persist { index, record } => {
                    self.push_op(WriteOp::Record { index, record });
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
        if self.restoring && !self.replica.is_restoring() {
            self.restoring = false;
            self.shared.restoring.store(false, Ordering::Release);
            self.push_op(WriteOp::Restore(false));
            tracing::info!("restore complete: own history pulled back from every peer");
        }
    }

    /// Sends queued writes to the writer and answers whoever can be answered.
    async fn flush(&mut self) {
        self.drain().await;
        if !self.pending_ops.is_empty() {
            // The next batch starts with room for as many ops as this one had.
            let room = self.pending_ops.len();
            let ops = std::mem::replace(&mut self.pending_ops, Vec::with_capacity(room));
            let batch = WriteBatch {
                seq: self.op_seq,
                ops,
            };
            let sent = match &self.writer {
                Some(w) => w.send(batch).await.is_ok(),
                None => false,
            };
            if !sent {
                self.storage_failed();
            }
        }
        self.release();
    }

    fn release(&mut self) {
        while let Some(w) = self.waiting.front() {
            if w.seq > self.durable_seq {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                if w.accepted {
                    self.metrics.accepted();
                }
                let _ = w.reply.send(w.answer);
            }
        }
    }

    fn answer_after(
        &mut self,
        seq: u64,
        reply: oneshot::Sender<Reply>,
        answer: Reply,
        accepted: bool,
    ) {
        if seq <= self.durable_seq && self.waiting.is_empty() {
            if accepted {
                self.metrics.accepted();
            }
            let _ = reply.send(answer);
        } else {
            self.waiting.push_back(Waiter {
                seq,
                reply,
                answer,
                accepted,
            });
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
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Reply::error(
                503,
                "storage_unavailable",
                "the region could not make the request durable",
            ));
        }
        self.writer = None;
    }

    fn on_disk(&mut self, d: DiskDone) {
        match d {
            DiskDone::Committed { seq, index } => {
                self.durable_seq = self.durable_seq.max(seq);
                if index > 0 {
                    self.replica.handle_persisted(index);
                }
            }
            DiskDone::Failed => self.storage_failed(),
        }
    }

    fn store_idem(
        &mut self,
        account: &AccountId,
        key: Option<&str>,
        fingerprint: [u8; 32],
        answer: &Reply,
        now: u64,
    ) -> u64 {
        let Some(key) = key else {
            return self.op_seq;
        };
        let rec = Arc::new(IdemRecord {
            fingerprint,
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
            created_ms: now,
        });
        let key: Box<str> = key.into();
        let seq = self.push_op(WriteOp::Idem {
            account: account.clone(),
            key: key.clone(),
            rec: rec.clone(),
        });
        let prev = self
            .idem
            .entry(account.clone())
            .or_default()
            .insert(key.clone(), IdemEntry { rec, seq });
        if prev.is_none() {
            self.idem_count += 1;
        }
        self.idem_expiry.push_back((now, account.clone(), key));
        seq
    }

    fn submit(&mut self, cmd: SubmitCmd) {
        let SubmitCmd {
            req,
            fingerprint,
            reply,
        } = cmd;
        if self.failed {
            let _ = reply.send(Reply::error(
                503,
                "storage_unavailable",
                "storage failed; this region acknowledges nothing",
            ));
            return;
        }
        let now = now_ms();
        // Idempotency at the node edge: the stored result of the first request wins.
        if let Some(key) = req.idempotency_key.as_deref() {
            if let Some(e) = self.idem.get(&req.account).and_then(|m| m.get(key)) {
                if now < e.rec.created_ms.saturating_add(IDEMPOTENCY_TTL_MS) {
                    if e.rec.fingerprint == fingerprint {
                        let answer = Reply {
                            status: e.rec.status,
                            body: Bytes::from(e.rec.body.clone()),
                            replayed: true,
                        };
                        let seq = e.seq;
                        self.metrics.replayed();
                        self.answer_after(seq, reply, answer, false);
                    } else {
                        self.metrics.refused(Refusal::IdempotencyConflict);
                        let _ = reply.send(Reply::error(
                            409,
                            "idempotency_conflict",
                            "this Idempotency-Key was already used on this account with a different request body",
                        ));
                    }
                    return;
                }
            }
        }
        let account = req.account.clone();
        let currency = req.currency;
        let key = req.idempotency_key.clone();
        let result = self.replica.submit(now, req);
        match result {
            Ok(s) => {
                // Queue the event's record before the idempotency record.
                while let Some(out) = self.replica.poll_output() {
                    match out {
                        Output::Persist { index, record } => {
                            self.push_op(WriteOp::Record { index, record });
                        }
                        other => self.deferred.push_back(other),
                    }
                }
                let id = s.id();
                let bal = self.replica.balance(&account, currency);
                let body = match self.replica.event(id) {
                    Some(e) => render::created_body(e, bal),
                    None => render::error_body("internal", "event not found after submit"),
                };
                let mut answer = Reply::json(201, body);
                answer.replayed = matches!(s, Submitted::Existing(_));
                if answer.replayed {
                    self.metrics.replayed();
                }
                let seq = self.store_idem(&account, key.as_deref(), fingerprint, &answer, now);
                let new = matches!(s, Submitted::New(_));
                self.answer_after(seq, reply, answer, new);
            }
            Err(e) => {
                let (status, code, why) = match &e {
                    SubmitError::InsufficientFunds { .. } => {
                        (422, "insufficient_funds", Refusal::InsufficientFunds)
                    }
                    SubmitError::IdempotencyConflict { .. } => {
                        (409, "idempotency_conflict", Refusal::IdempotencyConflict)
                    }
                    SubmitError::Restoring => (503, "restoring", Refusal::Restoring),
                    SubmitError::Frozen { .. } => (409, "account_frozen", Refusal::Frozen),
                    _ => (409, "balance_overflow", Refusal::Overflow),
                };
                self.metrics.refused(why);
                let answer = Reply::error(status, code, &e.to_string());
                if status == 422 && key.is_some() {
                    // A refusal is a result too: a retry gets the same 422, durably.
                    let seq = self.store_idem(&account, key.as_deref(), fingerprint, &answer, now);
                    self.answer_after(seq, reply, answer, false);
                } else {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    fn balances(&self, account: &AccountId) -> Reply {
        let list: Vec<Value> = self
            .replica
            .balances(account)
            .into_iter()
            .map(|(c, b)| {
                json!({
                    "currency": c.to_string(),
                    "provisional": c.render(b.provisional),
                    "settled": c.render(b.settled),
                })
            })
            .collect();
        Reply::json(
            200,
            json!({"account": account.to_string(), "balances": list}).to_string(),
        )
    }

    fn entry_json(&self, e: &wallet_core::Entry<'_>, with_account: bool) -> Value {
        match e {
            wallet_core::Entry::Event { event, .. } => {
                render::event_json(event, self.replica.status(event.id), with_account)
            }
            wallet_core::Entry::Compensation(c) => render::comp_json(c, with_account),
        }
    }

    fn transactions(&self, account: &AccountId, after: Option<EntryKey>, limit: usize) -> Reply {
        let mut page = self
            .replica
            .entries(account, after, limit.saturating_add(1));
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more {
            page.last()
                .map(|(k, _)| Value::String(render::entry_cursor(k)))
        } else {
            None
        };
        let list: Vec<Value> = page
            .iter()
            .map(|(_, e)| self.entry_json(e, false))
            .collect();
        Reply::json(
            200,
            json!({"account": account.to_string(), "transactions": list, "next": next.unwrap_or(Value::Null)})
                .to_string(),
        )
    }

    fn transaction(&self, id: &str) -> Reply {
        let not_found = || {
            Reply::error(
                404,
                "not_found",
                &format!("no transaction {id:?} in this region"),
            )
        };
        if let Ok(eid) = EventId::parse(id) {
            return match self.replica.event(eid) {
                Some(e) => Reply::json(
                    200,
                    render::event_json(e, self.replica.status(eid), true).to_string(),
                ),
                None => not_found(),
            };
        }
        let Some((prefix, cause)) = render::parse_comp_id(id) else {
            return Reply::error(
                400,
                "invalid_transaction_id",
                "transaction ids look like <region>:<seq> (e.g. eu:12) or fee:/rev:/conflict:<region>:<seq>",
            );
        };
        let Some(ev) = self.replica.event(cause) else {
            return not_found();
        };
        let Some(tx) = ev.tx() else {
            return not_found();
        };
        let sub = if prefix == "conflict" { 2 } else { 1 };
        let key = ev.key();
        let found = self
            .replica
            .entries(&tx.account, Some((key, sub - 1)), 2)
            .into_iter()
            .find(|(k, _)| *k == (key, sub));
        match found {
            Some((_, wallet_core::Entry::Compensation(c))) if c.id() == id => {
                Reply::json(200, render::comp_json(c, true).to_string())
            }
            _ => not_found(),
        }
    }

    fn compensations(&self, after: u64, limit: usize) -> Reply {
        let list = self.replica.feed(after, limit);
        let next = after.saturating_add(list.len() as u64);
        let items: Vec<Value> = list.iter().map(|c| render::comp_json(c, true)).collect();
        Reply::json(
            200,
            json!({"compensations": items, "next": render::feed_cursor(next)}).to_string(),
        )
    }

    fn status(&self) -> Reply {
        let connected = self.net.connected();
        let me = self.replica.region();
        let members: Vec<Value> = self
            .replica
            .members()
            .into_iter()
            .map(|m| {
                json!({
                    "region": m.region.to_string(),
                    "self": m.region == me,
                    "connected": m.region == me || connected.contains(&m.region),
                    "held": m.held,
                    "watermark_contribution": m.covered.to_string(),
                    "heard": m.heard,
                    "policy_matches": m.policy_matches,
                    "equivocated": m.equivocated,
                    "pending": m.pending,
                })
            })
            .collect();
        let vv: BTreeMap<String, u64> = self
            .replica
            .members()
            .into_iter()
            .map(|m| {
                (
                    m.region.to_string(),
                    self.replica.version_vector().get(&m.region),
                )
            })
            .collect();
        Reply::json(
            200,
            json!({
                "region": me.to_string(),
                "cluster": self.cluster,
                "members": members,
                "version_vector": vv,
                "watermark": self.replica.watermark().to_string(),
                "clock": self.replica.clock().to_string(),
                "settlement_lag_ms": self.replica.settlement_lag_ms(),
                "settlement_blocked": self.replica.settlement_blocked(),
                "policy_hash": hex::encode(self.replica.policy_hash().0),
                "policy_version": self.replica.current_policy().0,
                "restoring": self.replica.is_restoring(),
                "events": self.replica.event_count(),
                "compensations": self.replica.feed_len(),
                "storage_failed": self.failed,
            })
            .to_string(),
        )
    }

    fn evidence(&self) -> Reply {
        let items: Vec<Value> = self
            .replica
            .evidence()
            .iter()
            .map(render::evidence_json)
            .collect();
        Reply::json(
            200,
            json!({
                "evidence": items,
                "settlement_blocked": self.replica.settlement_blocked(),
            })
            .to_string(),
        )
    }

    fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let r = &self.replica;
        s.push_str("# HELP walletd_events Events held, by origin.\n# TYPE walletd_events gauge\n");
        for m in r.members() {
            let _ = writeln!(s, "walletd_events{{origin=\"{}\"}} {}", m.region, m.held);
        }
        let st = r.stats();
        let conn = self.net.connected();
        s.push_str("# HELP walletd_member_connected Member connected over p2p.\n# TYPE walletd_member_connected gauge\n");
        for m in r.members() {
            if m.region != r.region() {
                let _ = writeln!(
                    s,
                    "walletd_member_connected{{region=\"{}\"}} {}",
                    m.region,
                    u8::from(conn.contains(&m.region))
                );
            }
        }
        s.push_str("# HELP walletd_pulls_sent_total Anti-entropy pulls sent, by member.\n# TYPE walletd_pulls_sent_total counter\n");
        for m in r.members() {
            if m.region != r.region() {
                let n = self.pulls_sent.get(&m.region).copied().unwrap_or(0);
                let _ = writeln!(s, "walletd_pulls_sent_total{{member=\"{}\"}} {n}", m.region);
            }
        }
        let ps = r.pull_stats();
        s.push_str("# HELP walletd_pull_scheduler_total Anti-entropy scheduler counters of the core, by event (wallet_core PullStats).\n# TYPE walletd_pull_scheduler_total counter\n");
        for (event, n) in [
            ("sent", ps.sent),
            ("answered", ps.answered),
            ("served", ps.served),
            ("on_connect", ps.on_connect),
            ("cleared_on_disconnect", ps.cleared_on_disconnect),
            ("given_up", ps.given_up),
            ("timed_out", ps.timed_out),
            ("on_heartbeat", ps.on_heartbeat),
            ("periodic", ps.periodic),
            ("backoffs", ps.backoffs),
        ] {
            let _ = writeln!(s, "walletd_pull_scheduler_total{{event=\"{event}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP walletd_watermark_lag_ms Local clock minus the settled watermark.\n# TYPE walletd_watermark_lag_ms gauge\nwalletd_watermark_lag_ms {}", r.settlement_lag_ms());
        let _ = writeln!(s, "# HELP walletd_watermark_ms Settled watermark (physical ms).\n# TYPE walletd_watermark_ms gauge\nwalletd_watermark_ms {}", r.watermark().millis());
        let _ = writeln!(s, "# HELP walletd_restoring Restoring own history from peers.\n# TYPE walletd_restoring gauge\nwalletd_restoring {}", u8::from(r.is_restoring()));
        let _ = writeln!(s, "# HELP walletd_settlement_blocked Settlement stopped (policy mismatch or equivocation).\n# TYPE walletd_settlement_blocked gauge\nwalletd_settlement_blocked {}", u8::from(r.settlement_blocked()));
        let _ = writeln!(s, "# HELP walletd_events_rejected_total Remote events rejected (invalid, forged, skewed, broken promise).\n# TYPE walletd_events_rejected_total counter\nwalletd_events_rejected_total {}", st.rejected);
        let _ = writeln!(s, "# HELP walletd_events_remote_applied_total Remote events merged.\n# TYPE walletd_events_remote_applied_total counter\nwalletd_events_remote_applied_total {}", st.remote_applied);
        let _ = writeln!(s, "# HELP walletd_events_duplicate_total Duplicate remote events dropped.\n# TYPE walletd_events_duplicate_total counter\nwalletd_events_duplicate_total {}", st.duplicates);
        let _ = writeln!(s, "# HELP walletd_events_dropped_total Out-of-order events dropped (buffer full).\n# TYPE walletd_events_dropped_total counter\nwalletd_events_dropped_total {}", st.dropped);
        let _ = writeln!(s, "# HELP walletd_events_settled_total Events settled.\n# TYPE walletd_events_settled_total counter\nwalletd_events_settled_total {}", st.settled);
        let _ = writeln!(s, "# HELP walletd_feed_length Compensation feed length.\n# TYPE walletd_feed_length gauge\nwalletd_feed_length {}", r.feed_len());
        let _ = writeln!(s, "# HELP walletd_idempotency_keys Idempotency results held.\n# TYPE walletd_idempotency_keys gauge\nwalletd_idempotency_keys {}", self.idem_count);
        let _ = writeln!(s, "# HELP walletd_requests_awaiting_durability Requests waiting for their commit.\n# TYPE walletd_requests_awaiting_durability gauge\nwalletd_requests_awaiting_durability {}", self.waiting.len());
        let ns = self.net.stats();
        let _ = writeln!(s, "# HELP walletd_replication_bytes_total Replication bytes, by direction.\n# TYPE walletd_replication_bytes_total counter\nwalletd_replication_bytes_total{{direction=\"sent\"}} {}\nwalletd_replication_bytes_total{{direction=\"received\"}} {}", ns.bytes_sent, ns.bytes_received);
        let _ = writeln!(s, "# HELP walletd_replication_messages_total Replication messages, by direction.\n# TYPE walletd_replication_messages_total counter\nwalletd_replication_messages_total{{direction=\"sent\"}} {}\nwalletd_replication_messages_total{{direction=\"received\"}} {}", ns.messages_sent, ns.messages_received);
        let _ = writeln!(s, "# HELP walletd_p2p_refused_peers_total Connections refused (not a member).\n# TYPE walletd_p2p_refused_peers_total counter\nwalletd_p2p_refused_peers_total {}", ns.refused_peers);
        let _ = writeln!(s, "# HELP walletd_p2p_dropped_messages_total Messages dropped (malformed, oversized, isolated).\n# TYPE walletd_p2p_dropped_messages_total counter\nwalletd_p2p_dropped_messages_total {}", ns.dropped_messages);
        s
    }

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Submit(cmd) => self.submit(cmd),
            Command::Balances { account, reply } => {
                let _ = reply.send(self.balances(&account));
            }
            Command::Transactions {
                account,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.transactions(&account, after, limit));
            }
            Command::Transaction { id, reply } => {
                let _ = reply.send(self.transaction(&id));
            }
            Command::Compensations {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.compensations(after, limit));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Evidence { reply } => {
                let _ = reply.send(self.evidence());
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics_text());
            }
            Command::Faults { isolate, reply } => {
                let list: Vec<String> = isolate.iter().map(|r| r.to_string()).collect();
                tracing::warn!(isolated = ?list, "fault injection: replication isolation changed");
                self.net.set_isolated(isolate).await;
                let _ = reply.send(Reply::json(200, json!({"isolated": list}).to_string()));
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
            NetEvent::Message { from, msg, .. } => self.replica.handle_message(now, from, msg),
        }
    }

    /// When the oldest idempotency result expires, if any is held.
    fn next_idem_expiry(&self) -> Option<u64> {
        self.idem_expiry
            .front()
            .map(|(created, _, _)| created.saturating_add(IDEMPOTENCY_TTL_MS))
    }

    /// Drops idempotency results older than the TTL (by wall clock, at the edge), at most
    /// [`IDEMPOTENCY_EXPIRE_PER_PASS_MAX`] per pass.
    fn expire_idempotency(&mut self) {
        let now = now_ms();
        let mut n = 0;
        while let Some((created, _, _)) = self.idem_expiry.front() {
            if n >= IDEMPOTENCY_EXPIRE_PER_PASS_MAX
                || now < created.saturating_add(IDEMPOTENCY_TTL_MS)
            {
                break;
            }
            n += 1;
            let Some((created, account, key)) = self.idem_expiry.pop_front() else {
                break;
            };
            let expired = self
                .idem
                .get(&account)
                .and_then(|m| m.get(&key))
                .is_some_and(|e| e.rec.created_ms == created);
            if expired {
                if let Some(m) = self.idem.get_mut(&account) {
                    m.remove(&key);
                    if m.is_empty() {
                        self.idem.remove(&account);
                    }
                }
                self.idem_count = self.idem_count.saturating_sub(1);
                self.push_op(WriteOp::IdemDelete { account, key });
            }
        }
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.pending_ops.is_empty() && self.durable_seq >= self.op_seq
    }
}

/// Handles to a running actor.
pub struct ActorHandles {
    /// Commands.
    pub commands: mpsc::Sender<Command>,
    /// Signal to stop: finish in-flight commits, then exit.
    pub shutdown: oneshot::Sender<()>,
    /// The actor task.
    pub task: tokio::task::JoinHandle<()>,
}

async fn actor_loop(
    mut a: Actor,
    mut cmd_rx: mpsc::Receiver<Command>,
    mut net_rx: mpsc::Receiver<NetEvent>,
    mut disk_rx: mpsc::UnboundedReceiver<DiskDone>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut cmds: Vec<Command> = Vec::with_capacity(COMMANDS_PER_BATCH_MAX);
    let mut net_open = true;
    let mut cmds_open = true;
    let mut stopping = false;
    let mut disk_open = true;
    // The replica's timer: armed for `poll_timeout()` (wall-clock ms).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_at = u64::MAX;
    // The idempotency cache's expiry: armed for its oldest result.
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut expiry_at = None;
    a.flush().await;
    loop {
        let due = a.replica.poll_timeout();
        if due != timer_at {
            timer_at = due;
            timer.as_mut().reset(instant_at(due));
        }
        let next_expiry = a.next_idem_expiry();
        if next_expiry != expiry_at {
            expiry_at = next_expiry;
            if let Some(at) = next_expiry {
                expiry.as_mut().reset(instant_at(at));
            }
        }
        let input = tokio::select! {
            biased;
            d = disk_rx.recv(), if disk_open => match d {
                Some(d) => Input::Disk(d),
                None => { disk_open = false; Input::Disk(DiskDone::Failed) }
            },
            n = cmd_rx.recv_many(&mut cmds, COMMANDS_PER_BATCH_MAX), if cmds_open => {
                if n == 0 { cmds_open = false; }
                Input::Http
            }
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                cmd_rx.close();
                Input::Http
            }
            ev = net_rx.recv(), if net_open => match ev {
                Some(ev) => Input::Net(ev),
                None => { net_open = false; Input::NetClosed }
            },
            _ = &mut timer => { timer_at = u64::MAX; Input::Timer }
            _ = &mut expiry, if expiry_at.is_some() => {
                expiry_at = None;
                Input::ExpireIdempotency
            }
        };
        match input {
            Input::Http => {
                for c in cmds.drain(..) {
                    a.on_command(c).await;
                }
            }
            Input::Net(ev) => a.on_net(ev),
            Input::NetClosed => {
                tracing::error!("the transport stopped: this region no longer replicates");
            }
            Input::Timer => a.replica.handle_timeout(now_ms()),
            Input::ExpireIdempotency => a.expire_idempotency(),
            Input::Disk(d) => a.on_disk(d),
        }
        a.flush().await;
        if a.failed {
            // Crash-only: nothing unacknowledged is lost by exiting, and a restart re-reads
            // what is durable. Give the 503 answers a moment to leave.
            tracing::error!("exiting after a storage failure");
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::process::exit(70);
        }
        if (stopping || !cmds_open) && a.idle() {
            break;
        }
    }
    // Dropping the writer sender lets the writer thread finish its queue and stop.
    a.writer = None;
    tracing::info!("actor stopped");
}

/// Start-up failures of the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad configuration (field and reason).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Storage cannot be opened or is corrupt.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// Key or transport problems.
    #[error("{0}")]
    Net(String),
    /// HTTP listener.
    #[error("http listen {addr}: {reason}")]
    Http {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// A node built and loaded, ready to serve.
pub struct Started {
    /// Actor handles.
    pub actor: ActorHandles,
    /// Writer thread.
    pub writer: std::thread::JoinHandle<()>,
    /// Shared flags.
    pub shared: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Transport handle.
    pub net: NetHandle,
}

/// Opens storage, rebuilds the replica, starts the writer, the transport and the actor.
pub fn start(cfg: &NodeConfig) -> Result<Started, NodeError> {
    let keypair = wallet_p2p::load_or_create_keypair(&cfg.identity_key)
        .map_err(|e| NodeError::Net(format!("config error: identity_key: {e}")))?;
    let my_peer = wallet_p2p::peer_id_of(&keypair);
    for (i, m) in cfg.members.iter().enumerate() {
        if m.region == cfg.region && m.peer_id != my_peer {
            return Err(crate::config::ConfigError::Invalid {
                field: format!("members[{i}].peer_id"),
                reason: format!(
                    "{} does not match the identity key {} (its peer id is {my_peer})",
                    m.peer_id,
                    cfg.identity_key.display()
                ),
            }
            .into());
        }
    }
    storage::check_data_dir(
        &cfg.data_dir,
        &format!("region={} cluster={}", cfg.region, cfg.cluster),
    )?;
    let (store, loaded) = Store::open(&cfg.data_dir)?;
    let seed = cfg.policy.hash();
    if loaded.recorded_policy.is_none() {
        store.record_policy(&cfg.policy)?;
    }
    let restore = if loaded.fresh {
        cfg.restore
    } else {
        if cfg.restore && !loaded.restore_pending {
            tracing::info!(
                "restore = true ignored: the data dir already holds this region's state"
            );
        }
        loaded.restore_pending
    };
    let member_ids: Vec<(wallet_core::RegionId, libp2p::PeerId)> =
        cfg.members.iter().map(|m| (m.region, m.peer_id)).collect();
    let auth = wallet_p2p::Ed25519Auth::new(keypair.clone(), &member_ids)
        .map_err(|e| NodeError::Net(format!("config error: members: {e}")))?;
    // Anti-entropy settings (periodic pull, pull batch) are the core's defaults: the scheduler
    // is the core's, and walletd only moves its messages, time and connection events.
    let rcfg = wallet_core::Config {
        cluster: cfg.cluster.clone(),
        max_clock_skew_ms: cfg.max_clock_skew_ms,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        auth: Box::new(auth),
        recorded_policy: loaded.recorded_policy,
        restore,
        ..wallet_core::Config::new(
            cfg.region,
            cfg.members.iter().map(|m| m.region).collect(),
            cfg.policy.clone(),
        )
    };
    let n_events = loaded.events.len();
    let mut replica = Replica::new(rcfg, loaded.ceiling);
    // Evidence first: its origins stay frozen, so nothing of theirs settles on load.
    let n_evidence = loaded.evidence.len();
    let restored = replica.restore_evidence(loaded.evidence);
    if restored != n_evidence {
        tracing::warn!(
            stored = n_evidence,
            restored,
            "some stored evidence no longer proves anything (origin no longer a member?)"
        );
    }
    if restored > 0 {
        tracing::error!(
            evidence = restored,
            "this region holds evidence that a member broke the protocol: settlement stays \
             stopped until an operator acts (GET /v1/admin/evidence)"
        );
    }
    if let Some(doc) = loaded.recorded_policy_doc {
        if replica.adopt_recorded_policy(doc) {
            tracing::error!(
                file = %seed,
                "the policy file differs from the policy recorded in this region's history: \
                 the settled history keeps the recorded policy; nothing new settles until the \
                 file is restored"
            );
        }
    }
    replica.load(loaded.events);
    replica.restore_watermark(loaded.watermark);
    if replica.event_count() != n_events as u64 {
        tracing::warn!(
            stored = n_events,
            loaded = replica.event_count(),
            "some stored events were not loaded (origin no longer a member?)"
        );
    }
    tracing::info!(events = n_events, watermark = %loaded.watermark, ceiling = %loaded.ceiling,
        restoring = replica.is_restoring(), policy = %seed, "storage loaded");

    let metrics = Arc::new(Metrics::new());
    // The feed rebuilt from storage was settled (and counted) before the restart; the replica
    // does not emit it again, so the counters start from it. Only compensations settled from
    // now on are counted as they are emitted.
    let mut restored_comps: BTreeMap<&'static str, u64> = BTreeMap::new();
    for c in replica.feed(0, usize::MAX) {
        *restored_comps.entry(c.kind.as_str()).or_insert(0) += 1;
    }
    for (kind, n) in restored_comps {
        metrics.compensations_settled(kind, n);
    }
    let shared = Arc::new(Shared::default());
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (writer_tx, writer) = storage::spawn_writer(
        store,
        cfg.group_commit,
        cfg.commit_batch_records_max,
        metrics.clone(),
        done_tx,
    )?;
    let net_cfg = NetConfig {
        region: cfg.region,
        keypair,
        listen: cfg.p2p_listen.clone(),
        members: cfg
            .members
            .iter()
            .map(|m| MemberAddr {
                region: m.region,
                peer_id: m.peer_id,
                addrs: m.addrs.clone(),
            })
            .collect(),
        cluster: cfg.cluster.clone(),
    };
    let (net, net_rx) = wallet_p2p::spawn(net_cfg).map_err(|e| NodeError::Net(e.to_string()))?;
    let restoring = replica.is_restoring();
    shared.restoring.store(restoring, Ordering::Release);
    let mut actor = Actor {
        replica,
        net: net.clone(),
        writer: Some(writer_tx),
        pending_ops: Vec::new(),
        op_seq: 0,
        durable_seq: 0,
        waiting: VecDeque::new(),
        idem: BTreeMap::new(),
        idem_expiry: VecDeque::new(),
        idem_count: 0,
        metrics: metrics.clone(),
        shared: shared.clone(),
        cluster: cfg.cluster.clone(),
        restoring,
        failed: false,
        deferred: VecDeque::new(),
        pulls_sent: BTreeMap::new(),
    };
    if restoring && loaded.fresh {
        actor.push_op(WriteOp::Restore(true));
    }
    let mut idem = loaded.idem;
    idem.sort_by_key(|(_, _, r)| r.created_ms);
    for (account, key, rec) in idem {
        let key: Box<str> = key.into();
        actor
            .idem_expiry
            .push_back((rec.created_ms, account.clone(), key.clone()));
        actor.idem.entry(account).or_default().insert(
            key,
            IdemEntry {
                rec: Arc::new(rec),
                seq: 0,
            },
        );
        actor.idem_count += 1;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(actor_loop(actor, cmd_rx, net_rx, done_rx, stop_rx));
    shared.ready.store(true, Ordering::Release);
    Ok(Started {
        actor: ActorHandles {
            commands: cmd_tx,
            shutdown: stop_tx,
            task,
        },
        writer,
        shared,
        metrics,
        net,
    })
}

/// Runs a region until SIGTERM/SIGINT: start, serve HTTP, then shut down gracefully
/// (stop accepting, finish in-flight commits, stop the writer).
pub async fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| NodeError::Http {
            addr: cfg.http_listen.to_string(),
            reason: e.to_string(),
        })?;
    let http_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| cfg.http_listen.to_string());
    let started = start(&cfg)?;
    let app = crate::http::router(crate::http::AppState::new(
        &cfg,
        started.actor.commands.clone(),
        started.shared.clone(),
        started.metrics.clone(),
    ));
    let p2p: Vec<String> = cfg.p2p_listen.iter().map(|a| a.to_string()).collect();
    println!(
        "walletd {} ready http={} p2p={}",
        cfg.region,
        http_addr,
        p2p.join(",")
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tracing::info!(region = %cfg.region, http = %http_addr, "ready");

    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "http server error");
    }
    tracing::info!("shutting down: finishing in-flight commits");
    let Started { actor, writer, .. } = started;
    let _ = actor.shutdown.send(());
    drop(actor.commands);
    let _ = actor.task.await;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received");
}

/// Runs a region on a new multi-threaded runtime until it shuts down, and returns the process
/// exit code: 0 after a clean shutdown, 2 for a configuration error found at start, 1 when it
/// could not start otherwise. `walletd run` and the benchmarks' embedded regions share it.
pub fn run_blocking(cfg: NodeConfig) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walletd: {e}");
            tracing::error!(error = %e, "walletd failed to start");
            if matches!(e, NodeError::Config(_)) {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
