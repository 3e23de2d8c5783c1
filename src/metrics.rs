//! Prometheus metrics, rendered in the text exposition format by hand (no registry crate).
//!
//! Counters and histograms updated by the HTTP layer and the storage writer live in
//! [`Metrics`]; what the replica and the actor hold (events by origin, watermark lag, the
//! core's anti-entropy counters, ...) is rendered by [`render_node`] on each scrape, in the
//! actor, and appended.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wallet_core::{RegionId, Replica};
use wallet_p2p::NetStats;

/// Latency bucket bounds, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];
/// Group-commit batch size bucket bounds, in records.
pub const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 8192];

/// A fixed-bucket histogram of u64 observations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    /// Empty histogram over the given bucket bounds.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Renders `name_bucket`, `name_sum`, `name_count` lines; `scale` divides bounds and sum
    /// (1e6 turns microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: u64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cum}",
                fmt_scaled(*b, scale)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let lb = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{lb} {}",
            fmt_scaled(self.sum.load(Ordering::Relaxed), scale)
        );
        let _ = writeln!(out, "{name}_count{lb} {count}");
    }
}

fn fmt_scaled(v: u64, scale: u64) -> String {
    if scale <= 1 {
        return v.to_string();
    }
    let digits = scale.ilog10() as usize;
    format!("{}.{:0digits$}", v / scale, v % scale)
}

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
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::IdempotencyConflict => "idempotency_conflict",
            Refusal::Restoring => "restoring",
            Refusal::Frozen => "account_frozen",
            Refusal::Overflow => "balance_overflow",
            Refusal::Retired => "region_retired",
            Refusal::Invalid => "invalid_request",
        }
    }
}

/// Process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    http: Mutex<BTreeMap<(&'static str, &'static str, u16), Histogram>>,
    accepted: AtomicU64,
    replayed: AtomicU64,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    commit_batch: Histogram,
    commit_latency: Histogram,
    commits: AtomicU64,
    compensations: Mutex<BTreeMap<&'static str, u64>>,
    reports: Mutex<BTreeMap<&'static str, u64>>,
    http_open: AtomicU64,
    http_conn_refused: AtomicU64,
    http_rate_limited: AtomicU64,
    http_shed: AtomicU64,
    http_timed_out: AtomicU64,
    /// `/v1` requests being served (set by the HTTP layer's concurrency limit).
    http_in_flight: AtomicU64,
    /// The actor's gauges, rendered by the actor after its inputs (at most every few ms), so
    /// `/metrics` never waits for the actor.
    node_snapshot: Mutex<Arc<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock cannot leave counters inconsistent in a way that
    // matters: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// All zero.
    pub fn new() -> Metrics {
        Metrics {
            http: Mutex::new(BTreeMap::new()),
            accepted: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            commit_batch: Histogram::new(&BATCH_BUCKETS),
            commit_latency: Histogram::new(&LATENCY_BUCKETS_US),
            commits: AtomicU64::new(0),
            compensations: Mutex::new(BTreeMap::new()),
            reports: Mutex::new(BTreeMap::new()),
            http_open: AtomicU64::new(0),
            http_conn_refused: AtomicU64::new(0),
            http_rate_limited: AtomicU64::new(0),
            http_shed: AtomicU64::new(0),
            http_timed_out: AtomicU64::new(0),
            http_in_flight: AtomicU64::new(0),
            node_snapshot: Mutex::new(Arc::new(String::new())),
        }
    }

    /// An HTTP connection was accepted.
    pub fn http_connection_opened(&self) {
        self.http_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP connection ended.
    pub fn http_connection_closed(&self) {
        self.http_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// An HTTP connection was closed at once: `connections_max` reached.
    pub fn http_connection_refused(&self) {
        self.http_conn_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A request got a 429.
    pub fn http_rate_limited(&self) {
        self.http_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A `/v1` request was shed (503 `overloaded`): `concurrency_max` requests in flight.
    pub fn http_shed(&self) {
        self.http_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A `/v1` request ran past `request_timeout_ms` (503 `timeout`).
    pub fn http_timed_out(&self) {
        self.http_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of `/v1` requests being served.
    pub fn set_http_in_flight(&self, n: u64) {
        self.http_in_flight.store(n, Ordering::Relaxed);
    }

    /// Stores the actor's latest gauges.
    pub fn publish_node(&self, text: String) {
        *lock(&self.node_snapshot) = Arc::new(text);
    }

    /// The actor's latest gauges.
    pub fn node_snapshot(&self) -> Arc<String> {
        lock(&self.node_snapshot).clone()
    }

    /// One HTTP request served.
    pub fn observe_http(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut m = lock(&self.http);
        m.entry((route, method, status))
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS_US))
            .observe(us);
    }

    /// A new transaction accepted (durable).
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// An idempotent retry answered with the original result.
    pub fn replayed(&self) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction refused.
    pub fn refused(&self, why: Refusal) {
        *lock(&self.refused).entry(why).or_insert(0) += 1;
    }

    /// One durable commit of `records` records.
    pub fn observe_commit(&self, records: usize, elapsed: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_batch.observe(records as u64);
        self.commit_latency
            .observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// A compensation settled.
    pub fn compensation(&self, kind: &'static str) {
        self.compensations_settled(kind, 1);
    }

    /// `n` compensations of one kind settled: at start, those of the feed rebuilt from storage
    /// (settled before the restart, and not emitted again), so the counter continues where it
    /// was instead of starting from zero.
    pub fn compensations_settled(&self, kind: &'static str, n: u64) {
        let mut m = lock(&self.compensations);
        let c = m.entry(kind).or_insert(0);
        *c = c.saturating_add(n);
    }

    /// A replica report.
    pub fn report(&self, kind: &'static str) {
        *lock(&self.reports).entry(kind).or_insert(0) += 1;
    }

    /// Renders the process counters.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP walletd_http_connections Open HTTP connections.\n");
        out.push_str("# TYPE walletd_http_connections gauge\n");
        let _ = writeln!(
            out,
            "walletd_http_connections {}",
            self.http_open.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_connections_refused_total HTTP connections closed at once (http.connections_max reached).\n");
        out.push_str("# TYPE walletd_http_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "walletd_http_connections_refused_total {}",
            self.http_conn_refused.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_rate_limited_total Requests answered 429 (per-token rate limit).\n");
        out.push_str("# TYPE walletd_http_rate_limited_total counter\n");
        let _ = writeln!(
            out,
            "walletd_http_rate_limited_total {}",
            self.http_rate_limited.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_shed_total Requests answered 503 overloaded (http.concurrency_max reached).\n");
        out.push_str("# TYPE walletd_http_shed_total counter\n");
        let _ = writeln!(
            out,
            "walletd_http_shed_total {}",
            self.http_shed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_timeouts_total Requests answered 503 timeout (http.request_timeout_ms passed).\n");
        out.push_str("# TYPE walletd_http_timeouts_total counter\n");
        let _ = writeln!(
            out,
            "walletd_http_timeouts_total {}",
            self.http_timed_out.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_requests_in_flight /v1 requests being served (at most http.concurrency_max).\n");
        out.push_str("# TYPE walletd_http_requests_in_flight gauge\n");
        let _ = writeln!(
            out,
            "walletd_http_requests_in_flight {}",
            self.http_in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_http_request_duration_seconds HTTP requests by route, method and status.\n");
        out.push_str("# TYPE walletd_http_request_duration_seconds histogram\n");
        for ((route, method, status), h) in lock(&self.http).iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            h.render(
                out,
                "walletd_http_request_duration_seconds",
                &labels,
                1_000_000,
            );
        }
        out.push_str(
            "# HELP walletd_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE walletd_http_requests_total counter\n");
        for ((route, method, status), h) in lock(&self.http).iter() {
            let _ = writeln!(
                out,
                "walletd_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                h.count.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP walletd_transactions_accepted_total New transactions acknowledged (durable).\n",
        );
        out.push_str("# TYPE walletd_transactions_accepted_total counter\n");
        let _ = writeln!(
            out,
            "walletd_transactions_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        out.push_str("# HELP walletd_transactions_replayed_total Idempotent retries answered with the original result.\n");
        out.push_str("# TYPE walletd_transactions_replayed_total counter\n");
        let _ = writeln!(
            out,
            "walletd_transactions_replayed_total {}",
            self.replayed.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP walletd_transactions_refused_total Transactions refused, by reason.\n",
        );
        out.push_str("# TYPE walletd_transactions_refused_total counter\n");
        for (r, n) in lock(&self.refused).iter() {
            let _ = writeln!(
                out,
                "walletd_transactions_refused_total{{reason=\"{}\"}} {n}",
                r.as_str()
            );
        }
        out.push_str("# HELP walletd_storage_commit_records Records per durable commit (group commit batch size).\n");
        out.push_str("# TYPE walletd_storage_commit_records histogram\n");
        self.commit_batch
            .render(out, "walletd_storage_commit_records", "", 1);
        out.push_str("# HELP walletd_storage_commit_duration_seconds Duration of a durable commit (fsync included).\n");
        out.push_str("# TYPE walletd_storage_commit_duration_seconds histogram\n");
        self.commit_latency.render(
            out,
            "walletd_storage_commit_duration_seconds",
            "",
            1_000_000,
        );
        out.push_str("# HELP walletd_compensations_total Compensations settled, by kind.\n");
        out.push_str("# TYPE walletd_compensations_total counter\n");
        for (k, n) in lock(&self.compensations).iter() {
            let _ = writeln!(out, "walletd_compensations_total{{kind=\"{k}\"}} {n}");
        }
        out.push_str("# HELP walletd_reports_total Replica reports (rejections, skew, equivocation, policy mismatch, overflow).\n");
        out.push_str("# TYPE walletd_reports_total counter\n");
        for (k, n) in lock(&self.reports).iter() {
            let _ = writeln!(out, "walletd_reports_total{{kind=\"{k}\"}} {n}");
        }
    }
}

/// What the actor knows besides the replica, for a scrape.
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
}

/// One unlabelled sample with its HELP and TYPE lines.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Renders the replica-derived and actor-held samples.
pub fn render_node(out: &mut String, r: &Replica, g: &NodeGauges<'_>) {
    let me = r.region();
    let members = r.members();
    out.push_str("# HELP walletd_events Events held, by origin.\n# TYPE walletd_events gauge\n");
    for m in &members {
        let _ = writeln!(out, "walletd_events{{origin=\"{}\"}} {}", m.region, m.held);
    }
    out.push_str("# HELP walletd_member_connected Member connected over p2p.\n# TYPE walletd_member_connected gauge\n");
    for m in members.iter().filter(|m| m.region != me) {
        let up = u8::from(g.connected.contains(&m.region));
        let _ = writeln!(
            out,
            "walletd_member_connected{{region=\"{}\"}} {up}",
            m.region
        );
    }
    out.push_str("# HELP walletd_pulls_sent_total Anti-entropy pulls sent, by member.\n# TYPE walletd_pulls_sent_total counter\n");
    for m in members.iter().filter(|m| m.region != me) {
        let n = g.pulls_sent.get(&m.region).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "walletd_pulls_sent_total{{member=\"{}\"}} {n}",
            m.region
        );
    }
    let ps = r.pull_stats();
    out.push_str("# HELP walletd_pull_scheduler_total The core's anti-entropy scheduler, by event (wallet_core PullStats).\n# TYPE walletd_pull_scheduler_total counter\n");
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
        let _ = writeln!(out, "walletd_pull_scheduler_total{{event=\"{event}\"}} {n}");
    }
    let st = r.stats();
    for (name, kind, help, value) in [
        (
            "walletd_watermark_lag_ms",
            "gauge",
            "Local clock minus the settled watermark.",
            r.settlement_lag_ms(),
        ),
        (
            "walletd_watermark_ms",
            "gauge",
            "Settled watermark (physical ms).",
            r.watermark().millis(),
        ),
        (
            "walletd_restoring",
            "gauge",
            "Restoring own history from peers.",
            u64::from(r.is_restoring()),
        ),
        (
            "walletd_settlement_blocked",
            "gauge",
            "Settlement stopped (policy mismatch or equivocation).",
            u64::from(r.settlement_blocked()),
        ),
        (
            "walletd_events_rejected_total",
            "counter",
            "Remote events rejected (invalid, forged, skewed, broken promise).",
            st.rejected,
        ),
        (
            "walletd_events_remote_applied_total",
            "counter",
            "Remote events merged.",
            st.remote_applied,
        ),
        (
            "walletd_events_duplicate_total",
            "counter",
            "Duplicate remote events dropped.",
            st.duplicates,
        ),
        (
            "walletd_events_dropped_total",
            "counter",
            "Out-of-order events dropped (buffer full).",
            st.dropped,
        ),
        (
            "walletd_events_settled_total",
            "counter",
            "Events settled.",
            st.settled,
        ),
        (
            "walletd_feed_length",
            "gauge",
            "Compensation feed length.",
            r.feed_len(),
        ),
        (
            "walletd_idempotency_keys",
            "gauge",
            "Idempotency results held.",
            g.idempotency_keys,
        ),
        (
            "walletd_requests_awaiting_durability",
            "gauge",
            "Requests waiting for their commit.",
            g.awaiting_durability as u64,
        ),
    ] {
        scalar(out, name, kind, help, value);
    }
    let ns = &g.net;
    let _ = writeln!(out, "# HELP walletd_replication_bytes_total Replication bytes, by direction.\n# TYPE walletd_replication_bytes_total counter\nwalletd_replication_bytes_total{{direction=\"sent\"}} {}\nwalletd_replication_bytes_total{{direction=\"received\"}} {}", ns.bytes_sent, ns.bytes_received);
    let _ = writeln!(out, "# HELP walletd_replication_messages_total Replication messages, by direction.\n# TYPE walletd_replication_messages_total counter\nwalletd_replication_messages_total{{direction=\"sent\"}} {}\nwalletd_replication_messages_total{{direction=\"received\"}} {}", ns.messages_sent, ns.messages_received);
    scalar(
        out,
        "walletd_p2p_refused_peers_total",
        "counter",
        "Connections refused (not a member).",
        ns.refused_peers,
    );
    scalar(
        out,
        "walletd_p2p_limited_connections_total",
        "counter",
        "Inbound p2p connections refused by the connection limits (before the handshake).",
        ns.limited_connections,
    );
    scalar(
        out,
        "walletd_p2p_dropped_messages_total",
        "counter",
        "Messages dropped (malformed, oversized, isolated).",
        ns.dropped_messages,
    );
    scalar(
        out,
        "walletd_p2p_over_budget_batches_total",
        "counter",
        "Inbound p2p batches refused: their peer was over p2p.peer_inbound_bytes_max.",
        ns.over_budget_batches,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&BATCH_BUCKETS);
        h.observe(1);
        h.observe(3);
        h.observe(100_000);
        let mut s = String::new();
        h.render(&mut s, "x", "", 1);
        assert!(s.contains("x_bucket{le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"4\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_sum 100004\n"), "{s}");
        assert_eq!(fmt_scaled(1_500, 1_000_000), "0.001500");
    }

    #[test]
    fn node_samples_cover_members_and_the_core_pull_counters() {
        let (eu, us): (RegionId, RegionId) = ("eu".parse().unwrap(), "us".parse().unwrap());
        let policy = wallet_core::Policy::from_toml("[default]\naction = \"fee\"\n").unwrap();
        let mut r = Replica::new(
            wallet_core::Config::new(eu, vec![eu, us], policy),
            wallet_core::Hlc(0),
        );
        r.handle_connected(1_000, us);
        let connected = BTreeSet::from([us]);
        let pulls = BTreeMap::from([(us, 3)]);
        let mut s = String::new();
        render_node(
            &mut s,
            &r,
            &NodeGauges {
                connected: &connected,
                net: NetStats::default(),
                pulls_sent: &pulls,
                idempotency_keys: 4,
                awaiting_durability: 5,
            },
        );
        assert!(
            s.contains("walletd_member_connected{region=\"us\"} 1\n"),
            "{s}"
        );
        assert!(!s.contains("region=\"eu\""), "{s}");
        assert!(
            s.contains("walletd_pulls_sent_total{member=\"us\"} 3\n"),
            "{s}"
        );
        // The connect made the core pull once.
        assert!(
            s.contains("walletd_pull_scheduler_total{event=\"sent\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("walletd_pull_scheduler_total{event=\"on_connect\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("# TYPE walletd_idempotency_keys gauge\nwalletd_idempotency_keys 4\n"),
            "{s}"
        );
        assert!(
            s.contains("walletd_requests_awaiting_durability 5\n"),
            "{s}"
        );
        // Every sample has its HELP and TYPE.
        let families: BTreeSet<&str> = s
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        for f in families {
            assert!(s.contains(&format!("# HELP {f} ")), "{f}");
            assert!(s.contains(&format!("# TYPE {f} ")), "{f}");
        }
    }
}
