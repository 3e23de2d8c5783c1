//! Prometheus metrics with the `prometheus-client` crate, in one [`Registry`]: walletd's own,
//! libp2p's (registered by the transport, [`Metrics::with_registry`]), build info and process
//! metrics. `/metrics` serves it in the OpenMetrics text format.
//!
//! Counters, gauges and histograms updated by the HTTP layer and the storage writer are
//! prometheus-client metrics: each is updated and read as a whole (a histogram's buckets, sum
//! and count sit behind one lock), so a scrape never sees one half-updated. What the replica
//! and the actor hold (events by origin, watermark lag, the core's anti-entropy counters, ...)
//! is a [`NodeSnapshot`] the actor publishes after its inputs (at most every few ms); a
//! collector encodes the latest one on each scrape, so `/metrics` never waits for the actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use wallet_core::{CompKind, RegionId, Replica, Report};
use wallet_p2p::NetStats;

/// `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency bucket bounds, in seconds (100 µs to 5 s).
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Group-commit batch size bucket bounds, in records.
pub const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 8192.0,
];

/// Why a transaction was refused (label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// 422.
    InsufficientFunds,
    /// 409 key reused with another body.
    IdempotencyConflict,
    /// 503 restoring.
    Restoring,
    /// 409 frozen.
    Frozen,
    /// 409 overflow.
    Overflow,
    /// 409 this region is retired.
    Retired,
    /// 400/413 invalid request.
    Invalid,
    /// 503 home mode: the account's home did not answer in time (retryable).
    HomeUnreachable,
    /// 422 escrow: this region's spending rights stay short (fallback `refuse`).
    InsufficientRights,
    /// 409 home mode: not the home (a home move made elsewhere), or not in home mode.
    NotHome,
}

impl Refusal {
    /// Every reason, counted from 0.
    const ALL: [Refusal; 8] = [
        Refusal::InsufficientFunds,
        Refusal::IdempotencyConflict,
        Refusal::Restoring,
        Refusal::Frozen,
        Refusal::Overflow,
        Refusal::Invalid,
        Refusal::HomeUnreachable,
        Refusal::InsufficientRights,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::IdempotencyConflict => "idempotency_conflict",
            Refusal::Restoring => "restoring",
            Refusal::Frozen => "account_frozen",
            Refusal::Overflow => "balance_overflow",
            Refusal::Retired => "region_retired",
            Refusal::Invalid => "invalid_request",
            Refusal::HomeUnreachable => "home_unreachable",
            Refusal::InsufficientRights => "insufficient_rights",
            Refusal::NotHome => "not_home",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Registers `metric` and returns it (a handle to the registered one).
fn registered<M: Metric + Clone>(reg: &mut Registry, name: &str, help: &str, metric: M) -> M {
    reg.register(name, help, metric.clone());
    metric
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock cannot leave anything inconsistent that matters:
    // keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's metrics: the registry and handles to walletd's own metrics in it.
#[derive(Debug)]
pub struct Metrics {
    /// Written only while the node starts (the transport registers libp2p's metrics); read
    /// by every scrape.
    registry: RwLock<Registry>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    accepted: Counter,
    replayed: Counter,
    refused: Family<ReasonLabels, Counter>,
    commit_records: Histogram,
    commit_duration: Histogram,
    compensations: Family<KindLabels, Counter>,
    reports: Family<KindLabels, Counter>,
    http_open: Gauge,
    http_conn_refused: Counter,
    http_rate_limited: Counter,
    http_shed: Counter,
    http_timed_out: Counter,
    /// `/v1` requests being served (set by the HTTP layer's concurrency limit).
    http_in_flight: Gauge,
    /// The actor's latest snapshot, encoded by [`NodeCollector`].
    node: Arc<Mutex<Option<Arc<NodeSnapshot>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All zero; registers walletd's metrics, build info and process metrics.
    pub fn new() -> Metrics {
        let mut reg = Registry::default();
        let http_requests = registered(
            &mut reg,
            "walletd_http_requests",
            "HTTP requests by route, method and status",
            Family::<HttpLabels, Counter>::default(),
        );
        let http_duration: Family<HttpLabels, Histogram, fn() -> Histogram> = registered(
            &mut reg,
            "walletd_http_request_duration_seconds",
            "HTTP request latency by route, method and status (durability wait included)",
            Family::new_with_constructor(latency_histogram),
        );
        let http_open = registered(
            &mut reg,
            "walletd_http_connections",
            "Open HTTP connections (both listeners)",
            Gauge::default(),
        );
        let http_in_flight = registered(
            &mut reg,
            "walletd_http_requests_in_flight",
            "/v1 requests being served (at most http.concurrency_max)",
            Gauge::default(),
        );
        let [http_conn_refused, http_rate_limited, http_shed, http_timed_out, accepted, replayed] =
            [
                (
                    "walletd_http_connections_refused",
                    "HTTP connections closed at once (http.connections_max reached)",
                ),
                (
                    "walletd_http_rate_limited",
                    "Requests answered 429 (per-token rate limit)",
                ),
                (
                    "walletd_http_shed",
                    "Requests answered 503 overloaded (http.concurrency_max reached)",
                ),
                (
                    "walletd_http_timeouts",
                    "Requests answered 503 timeout (http.request_timeout_ms passed)",
                ),
                (
                    "walletd_transactions_accepted",
                    "New transactions acknowledged (durable)",
                ),
                (
                    "walletd_transactions_replayed",
                    "Idempotent retries answered with the original result",
                ),
            ]
            .map(|(name, help)| registered(&mut reg, name, help, Counter::default()));
        let refused = registered(
            &mut reg,
            "walletd_transactions_refused",
            "Transactions refused, by reason",
            Family::<ReasonLabels, Counter>::default(),
        );
        let commit_records = registered(
            &mut reg,
            "walletd_storage_commit_records",
            "Records per durable commit (group commit batch size)",
            Histogram::new(BATCH_BUCKETS),
        );
        let commit_duration = registered(
            &mut reg,
            "walletd_storage_commit_duration_seconds",
            "Duration of a durable commit (fsync included)",
            latency_histogram(),
        );
        let compensations = registered(
            &mut reg,
            "walletd_compensations",
            "Compensations settled, by kind",
            Family::<KindLabels, Counter>::default(),
        );
        let reports = registered(&mut reg, "walletd_reports", "Replica reports (rejections, skew, equivocation, policy mismatch, overflow, unknown member)", Family::<KindLabels, Counter>::default());
        // Label values known in advance start at 0: a first refusal is then an increase, and
        // alerts and dashboards find the series before anything happened.
        for r in Refusal::ALL {
            let _ = refused.get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        for k in [
            CompKind::OverdraftFee,
            CompKind::Reversal,
            CompKind::IdempotencyConflict,
        ] {
            let _ = compensations.get_or_create(&KindLabels { kind: k.as_str() });
        }
        for kind in Report::KINDS {
            let _ = reports.get_or_create(&KindLabels { kind });
        }
        reg.register(
            "walletd_build",
            "walletd's version and the git commit it was built from (WALLETD_GIT_COMMIT at build time)",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", option_env!("WALLETD_GIT_COMMIT").unwrap_or("unknown")),
            ]),
        );
        reg.register_collector(Box::new(crate::procstat::ProcessCollector));
        let node = Arc::new(Mutex::new(None));
        reg.register_collector(Box::new(NodeCollector(node.clone())));
        Metrics {
            registry: RwLock::new(reg),
            http_requests,
            http_duration,
            accepted,
            replayed,
            refused,
            commit_records,
            commit_duration,
            compensations,
            reports,
            http_open,
            http_conn_refused,
            http_rate_limited,
            http_shed,
            http_timed_out,
            http_in_flight,
            node,
        }
    }

    /// Lets the caller register more metrics (the transport's) in the registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        f(&mut reg)
    }

    /// The whole registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(32 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }

    /// An HTTP connection was accepted.
    pub fn http_connection_opened(&self) {
        self.http_open.inc();
    }

    /// An HTTP connection ended.
    pub fn http_connection_closed(&self) {
        self.http_open.dec();
    }

    /// An HTTP connection was closed at once: `connections_max` reached.
    pub fn http_connection_refused(&self) {
        self.http_conn_refused.inc();
    }

    /// A request got a 429.
    pub fn http_rate_limited(&self) {
        self.http_rate_limited.inc();
    }

    /// A `/v1` request was shed (503 `overloaded`): `concurrency_max` requests in flight.
    pub fn http_shed(&self) {
        self.http_shed.inc();
    }

    /// A `/v1` request ran past `request_timeout_ms` (503 `timeout`).
    pub fn http_timed_out(&self) {
        self.http_timed_out.inc();
    }

    /// Sets the number of `/v1` requests being served.
    pub fn set_http_in_flight(&self, n: u64) {
        self.http_in_flight
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Stores the actor's latest snapshot.
    pub fn publish_node(&self, snapshot: NodeSnapshot) {
        *lock(&self.node) = Some(Arc::new(snapshot));
    }

    /// One HTTP request served.
    pub fn observe_http(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = HttpLabels {
            route,
            method,
            status,
        };
        self.http_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.http_requests.get_or_create(&labels).inc();
    }

    /// A new transaction accepted (durable).
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// An idempotent retry answered with the original result.
    pub fn replayed(&self) {
        self.replayed.inc();
    }

    /// A transaction refused.
    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    /// One durable commit of `records` records.
    pub fn observe_commit(&self, records: usize, elapsed: Duration) {
        self.commit_records.observe(records as f64);
        self.commit_duration.observe(elapsed.as_secs_f64());
    }

    /// A compensation settled.
    pub fn compensation(&self, kind: &'static str) {
        self.compensations_settled(kind, 1);
    }

    /// `n` compensations of one kind settled: at start, those of the feed rebuilt from storage
    /// (settled before the restart, and not emitted again), so the counter continues where it
    /// was instead of starting from zero.
    pub fn compensations_settled(&self, kind: &'static str, n: u64) {
        self.compensations
            .get_or_create(&KindLabels { kind })
            .inc_by(n);
    }

    /// A replica report.
    pub fn report(&self, kind: &'static str) {
        self.reports.get_or_create(&KindLabels { kind }).inc();
    }
}

/// The consistency modes' counters (`wallet_core` `ModeStats`), by name: the label values of
/// `walletd_modes` and the keys of `/v1/status`'s `modes`.
pub fn mode_counters(s: &wallet_core::replica::modes::ModeStats) -> [(&'static str, u64); 12] {
    [
        ("forwarded", s.forwarded),
        ("forward_answers", s.forward_answers),
        ("forward_timeouts", s.forward_timeouts),
        ("forwards_decided", s.forwards_decided),
        ("home_moves", s.home_moves),
        ("escrow_local", s.escrow_local),
        ("rights_requests", s.rights_requests),
        ("rights_arrived", s.rights_arrived),
        ("fallback_refused", s.fallback_refused),
        ("fallback_accepted", s.fallback_accepted),
        ("transfers_given", s.transfers_given),
        ("transfers_rebalance", s.transfers_rebalance),
    ]
}

/// What the actor knows besides the replica, for a snapshot.
#[derive(Debug)]
pub struct NodeGauges<'a> {
    /// Members connected over the transport.
    pub connected: &'a BTreeSet<RegionId>,
    /// Transport counters.
    pub net: NetStats,
    /// Pulls sent, by member (counted as the replica's pulls leave).
    pub pulls_sent: &'a BTreeMap<RegionId, u64>,
    /// Idempotency results held.
    pub idempotency_keys: u64,
    /// Replies held until their commit is durable.
    pub awaiting_durability: usize,
    /// A commit failed (the process exits shortly).
    pub storage_failed: bool,
    /// The policy file differs from the recorded seed policy and was ignored.
    pub policy_file_ignored: bool,
    /// Client requests waiting for a decision (forwarded to a home, waiting for rights).
    pub parked: usize,
    /// Bytes of records in the archive of compacted history (0: none).
    pub archive_bytes: u64,
    /// An archive write failed: compaction stopped.
    pub archive_failed: bool,
    /// The archive backfill ([`crate::backfill::Gauges`]).
    pub backfill: crate::backfill::Gauges,
}

/// One member as a snapshot sees it.
#[derive(Debug, Clone)]
struct MemberSample {
    region: String,
    is_self: bool,
    held: u64,
    connected: bool,
    /// Heard, and its seed policy differs from ours.
    policy_mismatch: bool,
    pulls_sent: u64,
}

/// The replica-derived and actor-held values, copied by the actor; encoded on each scrape.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    members: Vec<MemberSample>,
    pull_scheduler: [(&'static str, u64); 10],
    gauges: [(&'static str, &'static str, u64); 19],
    modes: [(&'static str, u64); 12],
    counters: [(&'static str, &'static str, u64); 9],
    replication_bytes: [(&'static str, u64); 2],
    replication_messages: [(&'static str, u64); 2],
    snapshot: [(&'static str, u64); 10],
    snapshot_gauges: [(&'static str, &'static str, u64); 3],
    policy_version: u32,
    policy_hash: String,
}

impl NodeSnapshot {
    /// Copies what a scrape shows from the replica and the actor.
    pub fn new(r: &Replica, g: &NodeGauges<'_>) -> NodeSnapshot {
        let me = r.region();
        let members = r
            .members()
            .into_iter()
            .map(|m| MemberSample {
                region: m.region.to_string(),
                is_self: m.region == me,
                held: m.held,
                connected: g.connected.contains(&m.region),
                policy_mismatch: m.policy_matches == Some(false),
                pulls_sent: g.pulls_sent.get(&m.region).copied().unwrap_or(0),
            })
            .collect();
        let ps = r.pull_stats();
        let st = r.stats();
        let ns = &g.net;
        NodeSnapshot {
            members,
            pull_scheduler: [
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
            ],
            gauges: [
                (
                    "walletd_watermark_lag_ms",
                    "Local clock minus the settled watermark",
                    r.settlement_lag_ms(),
                ),
                (
                    "walletd_watermark_ms",
                    "Settled watermark (physical ms)",
                    r.watermark().millis(),
                ),
                (
                    "walletd_restoring",
                    "Restoring own history from peers (0/1)",
                    u64::from(r.is_restoring()),
                ),
                (
                    "walletd_settlement_blocked",
                    "Settlement stopped: policy mismatch or equivocation (0/1)",
                    u64::from(r.settlement_blocked()),
                ),
                (
                    "walletd_storage_failed",
                    "A durable commit failed; the process exits with code 70 (0/1)",
                    u64::from(g.storage_failed),
                ),
                (
                    "walletd_policy_file_ignored",
                    "The policy file differs from the recorded seed policy and was ignored (0/1; \
                     hashes in /v1/status)",
                    u64::from(g.policy_file_ignored),
                ),
                (
                    "walletd_policy_version",
                    "Policy version in force (1 = the seed)",
                    u64::from(r.current_policy().0),
                ),
                (
                    "walletd_feed_length",
                    "Compensation feed length",
                    r.feed_len(),
                ),
                (
                    "walletd_idempotency_keys",
                    "Idempotency results held",
                    g.idempotency_keys,
                ),
                (
                    "walletd_archive_bytes",
                    "Bytes of records in the archive of compacted history",
                    g.archive_bytes,
                ),
                (
                    "walletd_archive_failed",
                    "An archive write failed and compaction stopped (0/1)",
                    u64::from(g.archive_failed),
                ),
                (
                    "walletd_backfill_state",
                    "Archive backfill below a bootstrap snapshot: 0 none, 1 fetching, 2 complete, \
                     3 stopped on an error",
                    u64::from(g.backfill.state),
                ),
                (
                    "walletd_backfill_records",
                    "Records the archive backfill fetched and verified (this process)",
                    g.backfill.records,
                ),
                (
                    "walletd_backfill_refused_peers",
                    "Peers the archive backfill refused for a record that does not verify",
                    g.backfill.refused_peers,
                ),
                (
                    "walletd_idempotency_keys_core",
                    "Idempotency keys held by the core's index (within retention)",
                    r.idempotency_keys_held(),
                ),
                (
                    "walletd_requests_awaiting_durability",
                    "Requests waiting for their commit",
                    g.awaiting_durability as u64,
                ),
                (
                    "walletd_events_pending",
                    "Out-of-order remote events buffered, all origins",
                    r.members().iter().map(|m| m.pending).sum(),
                ),
                (
                    "walletd_members",
                    "Members of the cluster, this region included",
                    r.members().len() as u64,
                ),
                (
                    "walletd_requests_parked",
                    "Client requests waiting for a decision (forwarded to a home, waiting for \
                     escrow rights)",
                    g.parked as u64,
                ),
            ],
            modes: mode_counters(&r.mode_stats()),
            counters: [
                (
                    "walletd_events_rejected",
                    "Remote events rejected (invalid, forged, skewed, broken promise)",
                    st.rejected,
                ),
                (
                    "walletd_events_remote_applied",
                    "Remote events merged",
                    st.remote_applied,
                ),
                (
                    "walletd_events_duplicate",
                    "Duplicate remote events dropped",
                    st.duplicates,
                ),
                (
                    "walletd_events_dropped",
                    "Out-of-order events dropped (buffer full)",
                    st.dropped,
                ),
                ("walletd_events_settled", "Events settled", st.settled),
                (
                    "walletd_p2p_refused_peers",
                    "p2p connections refused (not a member)",
                    ns.refused_peers,
                ),
                (
                    "walletd_p2p_limited_connections",
                    "Inbound p2p connections refused by the connection limits (before the handshake)",
                    ns.limited_connections,
                ),
                (
                    "walletd_p2p_dropped_messages",
                    "Replication messages dropped (malformed, oversized, isolated, undeliverable)",
                    ns.dropped_messages,
                ),
                (
                    "walletd_p2p_over_budget_batches",
                    "Inbound p2p batches refused: their peer was over p2p.peer_inbound_bytes_max",
                    ns.over_budget_batches,
                ),
            ],
            replication_bytes: [("sent", ns.bytes_sent), ("received", ns.bytes_received)],
            replication_messages: [
                ("sent", ns.messages_sent),
                ("received", ns.messages_received),
            ],
            snapshot: snapshot_counters(r),
            snapshot_gauges: [
                (
                    "walletd_snapshot_at_ms",
                    "Point (physical ms) of the last snapshot made or installed (0: none)",
                    r.last_snapshot().map_or(0, |s| s.body.at.millis()),
                ),
                (
                    "walletd_events_in_memory",
                    "Events held in memory (compaction drops the folded ones)",
                    r.events_in_memory(),
                ),
                (
                    "walletd_snapshot_transfer_held_bytes",
                    "Bytes of a peer's snapshot being reassembled now",
                    r.snapshot_transfer_held(),
                ),
            ],
            policy_version: r.current_policy().0,
            policy_hash: hex::encode(r.policy_hash().0),
        }
    }
}

/// Snapshots (issue 13): compactions, restores and chunked transfers, both ways.
fn snapshot_counters(r: &Replica) -> [(&'static str, u64); 10] {
    let st = r.stats();
    let t = r.snapshot_transfer_stats();
    [
        ("compactions", st.compactions),
        ("restores", st.restores),
        ("transfers_started", st.snapshots_sent),
        ("chunks_sent", t.chunks_sent),
        ("bytes_sent", t.bytes_sent),
        ("chunks_received", t.chunks_received),
        ("bytes_received", t.bytes_received),
        ("transfers_completed", t.completed),
        ("transfers_failed", t.failed),
        ("transfers_restarted", t.restarted),
    ]
}

/// A gauge value as prometheus-client encodes it (i64: it refuses `u64::MAX`).
fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// How a collected sample is encoded.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// A family's name, help and kind.
type Desc<'a> = (&'a str, &'a str, Kind);

/// A 0/1 property of a member.
type MemberFlag = fn(&MemberSample) -> bool;

fn sample(kind: Kind, n: u64, m: MetricEncoder) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Gauge => gauge(n).encode(m),
        Kind::Counter => ConstCounter::new(n).encode(m),
    }
}

fn descriptor<'s>(
    enc: &'s mut DescriptorEncoder,
    (name, help, kind): Desc<'s>,
) -> Result<MetricEncoder<'s>, std::fmt::Error> {
    let ty = match kind {
        Kind::Gauge => MetricType::Gauge,
        Kind::Counter => MetricType::Counter,
    };
    enc.encode_descriptor(name, help, None, ty)
}

/// One unlabelled sample.
fn scalar(enc: &mut DescriptorEncoder, desc: Desc<'_>, n: u64) -> Result<(), std::fmt::Error> {
    sample(desc.2, n, descriptor(enc, desc)?)
}

/// One family of samples with one label (`label="value"`).
fn family<'a>(
    enc: &mut DescriptorEncoder,
    desc: Desc<'_>,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut f = descriptor(enc, desc)?;
    for (value, n) in samples {
        sample(desc.2, n, f.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// Encodes the latest [`NodeSnapshot`] (nothing before the actor's first).
#[derive(Debug)]
struct NodeCollector(Arc<Mutex<Option<Arc<NodeSnapshot>>>>);

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = lock(&self.0).clone() else {
            return Ok(());
        };
        let peers = || s.members.iter().filter(|m| !m.is_self);
        family(
            &mut enc,
            (
                "walletd_events",
                "Events held, by origin (the version vector)",
                Kind::Gauge,
            ),
            "origin",
            s.members.iter().map(|m| (m.region.as_str(), m.held)),
        )?;
        let member_gauges: [(Desc<'_>, MemberFlag); 2] = [
            (
                (
                    "walletd_member_connected",
                    "Member connected over p2p (0/1)",
                    Kind::Gauge,
                ),
                |m| m.connected,
            ),
            (
                (
                    "walletd_member_policy_mismatch",
                    "Member heard with a seed policy that differs from ours (0/1)",
                    Kind::Gauge,
                ),
                |m| m.policy_mismatch,
            ),
        ];
        for (desc, value) in member_gauges {
            let samples = peers().map(|m| (m.region.as_str(), u64::from(value(m))));
            family(&mut enc, desc, "region", samples)?;
        }
        family(
            &mut enc,
            (
                "walletd_pulls_sent",
                "Anti-entropy pulls sent, by member",
                Kind::Counter,
            ),
            "member",
            peers().map(|m| (m.region.as_str(), m.pulls_sent)),
        )?;
        family(
            &mut enc,
            (
                "walletd_pull_scheduler",
                "The core's anti-entropy scheduler, by event (wallet_core PullStats)",
                Kind::Counter,
            ),
            "event",
            s.pull_scheduler,
        )?;
        family(
            &mut enc,
            (
                "walletd_modes",
                "Consistency modes (wallet_core ModeStats), by event: debits forwarded to a home, \
                 answered, timed out, decided as the home; home moves; escrow debits within \
                 rights, rights requests and how they ended; rights transfers given",
                Kind::Counter,
            ),
            "event",
            s.modes,
        )?;
        for (name, help, v) in s.gauges {
            scalar(&mut enc, (name, help, Kind::Gauge), v)?;
        }
        for (name, help, v) in s.counters {
            scalar(&mut enc, (name, help, Kind::Counter), v)?;
        }
        family(
            &mut enc,
            (
                "walletd_replication_bytes",
                "Replication bytes, by direction",
                Kind::Counter,
            ),
            "direction",
            s.replication_bytes,
        )?;
        family(
            &mut enc,
            (
                "walletd_replication_messages",
                "Replication messages, by direction",
                Kind::Counter,
            ),
            "direction",
            s.replication_messages,
        )?;
        family(
            &mut enc,
            (
                "walletd_snapshot",
                "Snapshots (issue 13), by event: compactions, restores from a snapshot (at start, \
                 or a peer's installed), transfers started as a sender, chunks and bytes sent and \
                 received, transfers completed, failed and restarted as a receiver",
                Kind::Counter,
            ),
            "event",
            s.snapshot,
        )?;
        for (name, help, v) in s.snapshot_gauges {
            scalar(&mut enc, (name, help, Kind::Gauge), v)?;
        }
        let version = s.policy_version.to_string();
        Info::new([
            ("version", version.as_str()),
            ("hash", s.policy_hash.as_str()),
        ])
        .encode(enc.encode_descriptor(
            "walletd_policy",
            "The policy in force: version and hash (as in /v1/status)",
            None,
            MetricType::Info,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line.
    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
        })
    }

    #[test]
    fn histograms_render_cumulative_buckets_in_seconds() {
        let m = Metrics::new();
        m.observe_commit(1, Duration::from_micros(150));
        m.observe_commit(3, Duration::from_micros(1_500));
        m.observe_commit(100_000, Duration::from_secs(9));
        let s = m.encode().unwrap();
        let b = "walletd_storage_commit_records";
        let d = "walletd_storage_commit_duration_seconds";
        for (name, want) in [
            (format!("{b}_bucket{{le=\"1.0\"}}"), "1"),
            (format!("{b}_bucket{{le=\"4.0\"}}"), "2"),
            (format!("{b}_bucket{{le=\"+Inf\"}}"), "3"),
            (format!("{b}_sum"), "100004.0"),
            (format!("{d}_bucket{{le=\"0.0001\"}}"), "0"),
            (format!("{d}_bucket{{le=\"0.00025\"}}"), "1"),
            (format!("{d}_bucket{{le=\"0.002\"}}"), "2"),
            (format!("{d}_bucket{{le=\"5.0\"}}"), "2"),
            (format!("{d}_bucket{{le=\"+Inf\"}}"), "3"),
            (format!("{d}_count"), "3"),
        ] {
            assert_eq!(sample(&s, &name).as_deref(), Some(want), "{name}:\n{s}");
        }
        assert!(s.ends_with("# EOF\n"), "{s}");
    }

    #[test]
    fn a_scrape_never_sees_a_histogram_half_updated() {
        // Writers observe 1 ms commits of 2 records while scrapes run: in every scrape the
        // +Inf bucket equals the count, and the sums are exactly count x value (the former
        // hand-written histograms updated buckets, count and sum one after the other).
        let m = Arc::new(Metrics::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (m, stop) = (m.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        m.observe_commit(2, Duration::from_millis(1));
                    }
                })
            })
            .collect();
        let num = |s: &str, name: &str| -> f64 {
            sample(s, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{s}"))
        };
        let mut seen = 0.0;
        for _ in 0..300 {
            let s = m.encode().unwrap();
            for (h, value) in [
                ("walletd_storage_commit_records", 2.0),
                ("walletd_storage_commit_duration_seconds", 0.001),
            ] {
                let count = num(&s, &format!("{h}_count"));
                assert_eq!(num(&s, &format!("{h}_bucket{{le=\"+Inf\"}}")), count, "{h}");
                let sum = num(&s, &format!("{h}_sum"));
                assert!(
                    (sum - count * value).abs() <= 1e-9 * count.max(1.0),
                    "{h}: {sum} vs {count}"
                );
                seen = f64::max(seen, count);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(seen > 0.0, "no observation was scraped");
    }

    #[test]
    fn http_and_transaction_counters_keep_their_names() {
        let m = Metrics::new();
        m.observe_http("/v1/x", "POST", 201, Duration::from_millis(3));
        m.observe_http("/v1/x", "POST", 201, Duration::from_millis(4));
        m.accepted();
        m.refused(Refusal::Frozen);
        m.compensations_settled("reversal", 5);
        m.compensation("reversal");
        m.report("equivocation");
        m.http_connection_opened();
        m.http_connection_opened();
        m.http_connection_closed();
        m.http_rate_limited();
        let s = m.encode().unwrap();
        for (name, v) in [
            (
                "walletd_http_requests_total{route=\"/v1/x\",method=\"POST\",status=\"201\"}",
                "2",
            ),
            (
                "walletd_http_request_duration_seconds_count{route=\"/v1/x\",method=\"POST\",status=\"201\"}",
                "2",
            ),
            ("walletd_transactions_accepted_total", "1"),
            ("walletd_transactions_replayed_total", "0"),
            ("walletd_transactions_refused_total{reason=\"account_frozen\"}", "1"),
            // Known label values are there from the start.
            ("walletd_transactions_refused_total{reason=\"insufficient_funds\"}", "0"),
            ("walletd_compensations_total{kind=\"reversal\"}", "6"),
            ("walletd_compensations_total{kind=\"overdraft_fee\"}", "0"),
            ("walletd_reports_total{kind=\"equivocation\"}", "1"),
            ("walletd_reports_total{kind=\"policy_mismatch\"}", "0"),
            ("walletd_http_connections", "1"),
            ("walletd_http_rate_limited_total", "1"),
            ("walletd_http_connections_refused_total", "0"),
        ] {
            assert_eq!(sample(&s, name).as_deref(), Some(v), "{name}:\n{s}");
        }
        let build = format!(
            "walletd_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        );
        assert!(s.contains(&build), "{s}");
        // Nothing from the actor before its first snapshot.
        assert!(!s.contains("walletd_events"), "{s}");
    }

    #[test]
    fn node_samples_cover_members_policy_and_the_core_pull_counters() {
        let (eu, us): (RegionId, RegionId) = ("eu".parse().unwrap(), "us".parse().unwrap());
        let policy = wallet_core::Policy::from_toml("[default]\naction = \"fee\"\n").unwrap();
        let mut r = Replica::new(
            wallet_core::Config::new(eu, vec![eu, us], policy),
            wallet_core::Hlc(0),
        );
        r.handle_connected(1_000, us);
        let connected = BTreeSet::from([us]);
        let pulls = BTreeMap::from([(us, 3)]);
        let m = Metrics::new();
        m.publish_node(NodeSnapshot::new(
            &r,
            &NodeGauges {
                connected: &connected,
                net: NetStats {
                    bytes_sent: 7,
                    ..NetStats::default()
                },
                pulls_sent: &pulls,
                idempotency_keys: 4,
                awaiting_durability: 5,
                storage_failed: false,
                policy_file_ignored: true,
                parked: 0,
                archive_bytes: 6,
                archive_failed: false,
                backfill: crate::backfill::Gauges {
                    state: 1,
                    records: 8,
                    refused_peers: 0,
                },
            },
        ));
        let s = m.encode().unwrap();
        for (name, v) in [
            ("walletd_member_connected{region=\"us\"}", "1"),
            ("walletd_member_policy_mismatch{region=\"us\"}", "0"),
            ("walletd_pulls_sent_total{member=\"us\"}", "3"),
            // The connect made the core pull once.
            ("walletd_pull_scheduler_total{event=\"sent\"}", "1"),
            ("walletd_pull_scheduler_total{event=\"on_connect\"}", "1"),
            ("walletd_idempotency_keys", "4"),
            ("walletd_archive_bytes", "6"),
            ("walletd_archive_failed", "0"),
            ("walletd_backfill_state", "1"),
            ("walletd_backfill_records", "8"),
            ("walletd_requests_awaiting_durability", "5"),
            ("walletd_events{origin=\"eu\"}", "0"),
            ("walletd_events{origin=\"us\"}", "0"),
            ("walletd_replication_bytes_total{direction=\"sent\"}", "7"),
            ("walletd_settlement_blocked", "0"),
            ("walletd_storage_failed", "0"),
            ("walletd_policy_file_ignored", "1"),
            ("walletd_policy_version", "1"),
            ("walletd_members", "2"),
        ] {
            assert_eq!(sample(&s, name).as_deref(), Some(v), "{name}:\n{s}");
        }
        let hash = hex::encode(r.policy_hash().0);
        assert!(
            s.contains(&format!(
                "walletd_policy_info{{version=\"1\",hash=\"{hash}\"}} 1\n"
            )),
            "{s}"
        );
        // Only peers get member samples.
        assert!(!s.contains("region=\"eu\""), "{s}");
        // Every sample belongs to a family with HELP and TYPE.
        let families: BTreeSet<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in s.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            assert!(
                families.iter().any(|f| name.starts_with(f)),
                "{name} has no TYPE:\n{s}"
            );
        }
        for f in families {
            assert!(s.contains(&format!("# HELP {f} ")), "{f}");
        }
    }

    #[test]
    fn gauges_that_do_not_fit_an_i64_saturate_instead_of_failing_the_scrape() {
        let mut s = String::new();
        let mut reg = Registry::default();
        #[derive(Debug)]
        struct Big;
        impl Collector for Big {
            fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                gauge(u64::MAX).encode(enc.encode_descriptor(
                    "big",
                    "h",
                    None,
                    MetricType::Gauge,
                )?)
            }
        }
        reg.register_collector(Box::new(Big));
        prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
        assert!(s.contains(&format!("big {}\n", i64::MAX)), "{s}");
    }
}
