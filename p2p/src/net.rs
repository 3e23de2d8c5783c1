//! The swarm task: one tokio task owns the libp2p swarm and every piece of transport state;
//! the [`crate::NetHandle`] talks to it through a bounded command channel and reads counters
//! and the connected set from [`Shared`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::metrics::{Metrics as Libp2pMetrics, Recorder as _, Registry};
use libp2p::request_response::ProtocolSupport;
use libp2p::request_response::{self, InboundFailure, OutboundFailure, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionError, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wallet_core::wire::{decode_message, MESSAGE_BYTES_MAX};
use wallet_core::RegionId;

use crate::codec::{Frame, MsgCodec, ACK_DROPPED, ACK_OK, BATCH_MESSAGES_MAX};
use crate::{MemberAddr, NetConfig, NetError, NetEvent, NetHandle, NetStats};

/// First redial delay after a member went away or a dial failed.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Redial delays double up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages queued per peer while the previous batch is in flight; the oldest are dropped.
pub const QUEUE_MESSAGES_MAX: usize = 4096;
/// Bytes queued per peer; the oldest messages are dropped beyond it.
pub const QUEUE_BYTES_MAX: usize = 4 * MESSAGE_BYTES_MAX;
/// Fast-lane requests (`NetHandle::send_now`) in flight per member. Each is a request of its
/// own, not behind the replication batch; beyond this, fast-lane messages wait (are held) and
/// go together as the next batch. Without a bound a burst opened more streams than a
/// connection takes ([`STREAMS_PER_CONNECTION_MAX`]) and libp2p dropped the extra ones.
pub const FAST_IN_FLIGHT_MAX: usize = 4;
/// Fast-lane messages held per member (not connected, or its fast lane full); the oldest
/// are dropped beyond it.
pub const HELD_MESSAGES_MAX: usize = QUEUE_MESSAGES_MAX;
/// Bytes of fast-lane messages held per member; the oldest are dropped beyond it.
pub const HELD_BYTES_MAX: usize = MESSAGE_BYTES_MAX;
/// A held message older than this when it could go is dropped, not sent: the client that
/// waited for it has had its answer (a forward times out well before).
pub const HELD_AGE_MAX: Duration = Duration::from_secs(30);
/// Events waiting for the node before the swarm stops being polled (back-pressure).
const PENDING_EVENTS_MAX: usize = 1024;
/// A batch (up to `MESSAGE_BYTES_MAX`) must be read and acknowledged within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams per connection, both directions together (libp2p drops a stream beyond
/// it). A member has one replication batch and [`FAST_IN_FLIGHT_MAX`] fast-lane requests in
/// flight, all of which may be on one connection, each way; and a spare. Memory is bounded
/// by the inbound budget ([`crate::NetConfig::peer_inbound_bytes_max`]), not by this.
pub const STREAMS_PER_CONNECTION_MAX: usize = 2 * (1 + FAST_IN_FLIGHT_MAX) + 1;
/// Connections in handshake (noise) at once, all peers together; more are refused before
/// any cryptography.
pub const PENDING_INCOMING_MAX: u32 = 16;
/// Established connections per peer (two when both sides dial at once).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 2;
/// The largest inbound budget a configuration may set
/// ([`crate::NetConfig::peer_inbound_bytes_max`]): six of the largest batches. Without a
/// budget, a peer could make this region hold its connections times their streams times the
/// largest batch.
pub const PEER_INBOUND_BYTES_MAX: usize = 6 * MESSAGE_BYTES_MAX;
/// Default inbound budget of a peer: a member sends one batch (at most `MESSAGE_BYTES_MAX`)
/// at a time, so each of its connections can always take its largest batch.
pub const PEER_INBOUND_BYTES_DEFAULT: usize = CONNECTIONS_PER_PEER_MAX as usize * MESSAGE_BYTES_MAX;
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const TICK: Duration = Duration::from_millis(50);

/// Commands from the handle.
pub(crate) enum Command {
    Broadcast(Arc<Vec<u8>>),
    Send(RegionId, Arc<Vec<u8>>),
    Isolate(BTreeSet<RegionId>),
    Remove(RegionId),
    Add(MemberAddr),
    Raw(RegionId, Vec<u8>),
    /// Out of the per-peer queue (`NetHandle::send_now`): to one member, or (None) to all.
    Now(Option<RegionId>, Arc<Vec<u8>>),
    Shutdown,
}

/// State shared with the handles.
#[derive(Default)]
pub(crate) struct Shared {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub refused_peers: AtomicU64,
    pub limited_connections: AtomicU64,
    pub dropped_messages: Arc<AtomicU64>,
    pub over_budget: Arc<AtomicU64>,
    pub connected: Mutex<BTreeSet<RegionId>>,
    pub listen: Mutex<Vec<Multiaddr>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn stats(&self) -> NetStats {
        NetStats {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            refused_peers: self.refused_peers.load(Ordering::Relaxed),
            limited_connections: self.limited_connections.load(Ordering::Relaxed),
            dropped_messages: self.dropped_messages.load(Ordering::Relaxed),
            over_budget_batches: self.over_budget.load(Ordering::Relaxed),
        }
    }

    pub fn connected(&self) -> BTreeSet<RegionId> {
        lock(&self.connected).clone()
    }

    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.listen).clone()
    }

    pub fn dropped(&self, n: usize) {
        self.dropped_messages.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An acknowledged batch: its messages and bytes count as sent.
    fn sent(&self, f: &InFlight) {
        self.messages_sent
            .fetch_add(f.messages as u64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(f.bytes as u64, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.refused_peers.fetch_add(1, Ordering::Relaxed);
    }

    fn limited(&self) {
        self.limited_connections.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Pending and established connection limits: checked before the noise handshake for
    /// pending connections (the earliest point: a peer id is only known after it).
    limits: connection_limits::Behaviour,
    /// Members only: a connection from any other peer id is denied as soon as the handshake
    /// has authenticated it, before any protocol stream is opened.
    allow: allow_block_list::Behaviour<AllowedPeers>,
    ping: ping::Behaviour,
    msg: request_response::Behaviour<MsgCodec>,
}

struct InFlight {
    id: OutboundRequestId,
    messages: usize,
    bytes: usize,
    sent_at: Instant,
}

/// Bucket bounds (seconds) of the batch round trip: sent until acknowledged.
const BATCH_DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Labels of `walletd_p2p_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    outcome: &'static str,
}

/// The transport's metrics, in the node's registry: libp2p's own (libp2p-metrics: swarm
/// connections and errors, ping round trips) and the request-response outcomes, which
/// libp2p-metrics does not record.
struct NetMetrics {
    libp2p: Libp2pMetrics,
    requests: Family<RequestLabels, Counter>,
    batch_duration: Histogram,
}

impl NetMetrics {
    fn new(registry: &mut Registry) -> NetMetrics {
        let libp2p = Libp2pMetrics::new(registry);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "walletd_p2p_requests",
            "Replication requests (message batches) on the request-response protocol, by \
             direction and outcome",
            requests.clone(),
        );
        let batch_duration = Histogram::new(BATCH_DURATION_BUCKETS);
        registry.register(
            "walletd_p2p_batch_duration_seconds",
            "Round trip of a replication batch: sent until the member acknowledged it",
            batch_duration.clone(),
        );
        // Every outcome from the start (at 0), so rates and alerts see the first one.
        for (direction, outcome) in REQUEST_OUTCOMES {
            let _ = requests.get_or_create(&RequestLabels { direction, outcome });
        }
        NetMetrics {
            libp2p,
            requests,
            batch_duration,
        }
    }

    fn request(&self, direction: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { direction, outcome })
            .inc();
    }
}

/// Every (direction, outcome) of `walletd_p2p_requests_total`.
const REQUEST_OUTCOMES: [(&str, &str); 12] = [
    ("outbound", "acknowledged"),
    ("outbound", "dropped_by_peer"),
    ("outbound", "dial_failure"),
    ("outbound", "timeout"),
    ("outbound", "connection_closed"),
    ("outbound", "unsupported_protocols"),
    ("outbound", "io"),
    ("inbound", "received"),
    ("inbound", "timeout"),
    ("inbound", "connection_closed"),
    ("inbound", "unsupported_protocols"),
    ("inbound", "io"),
];

fn outbound_outcome(e: &OutboundFailure) -> &'static str {
    match e {
        OutboundFailure::DialFailure => "dial_failure",
        OutboundFailure::Timeout => "timeout",
        OutboundFailure::ConnectionClosed => "connection_closed",
        OutboundFailure::UnsupportedProtocols => "unsupported_protocols",
        OutboundFailure::Io(_) => "io",
    }
}

fn inbound_outcome(e: &InboundFailure) -> &'static str {
    match e {
        InboundFailure::Timeout => "timeout",
        InboundFailure::ConnectionClosed => "connection_closed",
        InboundFailure::UnsupportedProtocols => "unsupported_protocols",
        // We always answer (an ack byte): an omission means the connection went first.
        InboundFailure::ResponseOmission => "connection_closed",
        InboundFailure::Io(_) => "io",
    }
}

/// One member as the transport sees it.
struct Peer {
    region: RegionId,
    addrs: Vec<Multiaddr>,
    /// Established connections.
    conns: u32,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
    queue: VecDeque<Arc<Vec<u8>>>,
    queued_bytes: usize,
    in_flight: Option<InFlight>,
    /// Fast-lane messages waiting for a connection or a free fast-lane slot, with when they
    /// were held.
    held: VecDeque<(Instant, Arc<Vec<u8>>)>,
    held_bytes: usize,
    /// Fast-lane requests in flight (at most [`FAST_IN_FLIGHT_MAX`]).
    fast_in_flight: Vec<InFlight>,
}

struct Task {
    swarm: Swarm<Behaviour>,
    region: RegionId,
    peers: BTreeMap<PeerId, Peer>,
    by_region: BTreeMap<RegionId, PeerId>,
    /// As last set by `set_isolated`.
    isolated: BTreeSet<RegionId>,
    shared: Arc<Shared>,
    pending: VecDeque<NetEvent>,
    events_open: bool,
    metrics: NetMetrics,
}

/// Whether a message of `len` bytes fits a batch holding `messages` messages of `bytes`.
fn fits(messages: usize, bytes: usize, len: usize) -> bool {
    messages < BATCH_MESSAGES_MAX && (messages == 0 || bytes + len <= MESSAGE_BYTES_MAX)
}

/// The connection limits for `members` peers (recomputed when a member joins).
fn limits_for(members: usize) -> ConnectionLimits {
    let members = u32::try_from(members).unwrap_or(u32::MAX);
    ConnectionLimits::default()
        .with_max_pending_incoming(Some(PENDING_INCOMING_MAX))
        .with_max_pending_outgoing(Some(members.saturating_mul(2).max(2)))
        .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
        .with_max_established_incoming(Some(
            members.saturating_mul(CONNECTIONS_PER_PEER_MAX).max(1),
        ))
        .with_max_established(Some(
            members.saturating_mul(2 * CONNECTIONS_PER_PEER_MAX).max(2),
        ))
}

impl Peer {
    fn new(m: &MemberAddr) -> Peer {
        Peer {
            region: m.region,
            addrs: m.addrs.clone(),
            conns: 0,
            dialing: false,
            next_dial: None,
            backoff: BACKOFF_INITIAL,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: None,
            held: VecDeque::new(),
            held_bytes: 0,
            fast_in_flight: Vec::new(),
        }
    }
}

/// Builds the swarm, starts listening and dialing, and spawns the task.
pub(crate) fn start(
    cfg: NetConfig,
    registry: &mut Registry,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let terr = |e: String| NetError::Transport(e);
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| terr(format!("spawn needs a tokio runtime: {e}")))?;
    let local = cfg.keypair.public().to_peer_id();
    let protocol = StreamProtocol::try_from_owned(format!("/wallet/{}/msg/1", cfg.cluster))
        .map_err(|e| terr(format!("cluster id {:?}: {e}", cfg.cluster)))?;

    let mut peers = BTreeMap::new();
    let mut by_region = BTreeMap::new();
    for m in &cfg.members {
        if m.region == cfg.region || m.peer_id == local {
            continue;
        }
        if by_region.insert(m.region, m.peer_id).is_some() {
            return Err(terr(format!("region {} is listed twice", m.region)));
        }
        if peers.insert(m.peer_id, Peer::new(m)).is_some() {
            return Err(terr(format!(
                "peer id {} is listed for two regions",
                m.peer_id
            )));
        }
    }

    let mut allow = allow_block_list::Behaviour::<AllowedPeers>::default();
    for p in peers.keys() {
        allow.allow_peer(*p);
    }
    let limits = connection_limits::Behaviour::new(limits_for(peers.len()));
    let shared = Arc::new(Shared::default());
    let msg = request_response::Behaviour::with_codec(
        MsgCodec::new(
            shared.dropped_messages.clone(),
            shared.over_budget.clone(),
            // Per connection: a peer has at most CONNECTIONS_PER_PEER_MAX.
            (cfg.peer_inbound_bytes_max / CONNECTIONS_PER_PEER_MAX as usize).max(1),
        ),
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(STREAMS_PER_CONNECTION_MAX),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(PING_INTERVAL)
            .with_timeout(PING_TIMEOUT),
    );

    let mut swarm = {
        let _guard = rt.enter();
        libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| terr(format!("tcp transport: {e}")))?
            .with_quic()
            // Members may be named by host name (`/dns/eu.example/tcp/4001`), resolved by
            // the system resolver at each dial.
            .with_dns()
            .map_err(|e| terr(format!("dns resolver: {e}")))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|_| Behaviour {
                limits,
                allow,
                ping,
                msg,
            })
            .map_err(|e| terr(format!("behaviour: {e}")))?
            // Substreams carry one protocol each, which every member supports: `V1Lazy`
            // sends the request with the protocol proposal instead of a round trip later (the
            // same bytes on the wire as `V1`). A batch then costs one round trip, not two.
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                    .with_substream_upgrade_protocol_override(
                        libp2p::core::upgrade::Version::V1Lazy,
                    )
            })
            .build()
    };
    for a in &cfg.listen {
        swarm
            .listen_on(a.clone())
            .map_err(|e| terr(format!("listen on {a}: {e}")))?;
    }

    let (ctx, crx) = mpsc::channel(1024);
    let (etx, erx) = mpsc::channel(1024);
    let mut task = Task {
        swarm,
        region: cfg.region,
        peers,
        by_region,
        isolated: BTreeSet::new(),
        shared: shared.clone(),
        pending: VecDeque::new(),
        events_open: true,
        metrics: NetMetrics::new(registry),
    };
    let now = Instant::now();
    for p in task.peers.values_mut() {
        p.next_dial = Some(now);
    }
    task.redial();
    rt.spawn(task.run(crx, etx));
    Ok((NetHandle { tx: ctx, shared }, erx))
}

impl Task {
    async fn run(mut self, mut crx: mpsc::Receiver<Command>, etx: mpsc::Sender<NetEvent>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = crx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(c) => self.on_command(c),
                },
                ev = self.swarm.select_next_some(), if self.pending.len() < PENDING_EVENTS_MAX => {
                    self.on_swarm(ev);
                }
                permit = etx.reserve(), if !self.pending.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(e) = self.pending.pop_front() {
                            permit.send(e);
                        }
                    }
                    Err(_) => {
                        // The node dropped its receiver: keep serving, tell nobody.
                        self.events_open = false;
                        self.pending.clear();
                    }
                },
                _ = tick.tick() => self.redial(),
            }
        }
        tracing::debug!(region = %self.region, "p2p transport stopped");
    }

    fn emit(&mut self, e: NetEvent) {
        if self.events_open {
            self.pending.push_back(e);
        }
    }

    fn self_isolated(&self) -> bool {
        self.isolated.contains(&self.region)
    }

    fn is_isolated(&self, r: RegionId) -> bool {
        self.self_isolated() || self.isolated.contains(&r)
    }

    /// Members connected and not isolated.
    fn visible(&self) -> BTreeSet<RegionId> {
        self.peers
            .values()
            .filter(|p| p.conns > 0 && !self.is_isolated(p.region))
            .map(|p| p.region)
            .collect()
    }

    fn publish_connected(&self) {
        *lock(&self.shared.connected) = self.visible();
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Broadcast(bytes) => {
                let targets: Vec<PeerId> = self.peers.keys().copied().collect();
                for p in targets {
                    self.enqueue(p, bytes.clone(), false);
                }
            }
            Command::Send(to, bytes) => match self.by_region.get(&to).copied() {
                Some(p) => self.enqueue(p, bytes, true),
                None => {
                    tracing::warn!(%to, "send to a region that is not a member: dropped");
                    self.shared.dropped(1);
                }
            },
            Command::Isolate(set) => self.isolate(set),
            Command::Remove(r) => self.remove(r),
            Command::Add(m) => self.add(&m),
            Command::Raw(to, bytes) => {
                if let Some(p) = self.by_region.get(&to) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .msg
                        .send_request(p, Frame::Raw(bytes));
                }
            }
            Command::Now(to, bytes) => {
                let targets: Vec<PeerId> = match to {
                    Some(r) => self.by_region.get(&r).copied().into_iter().collect(),
                    None => self.peers.keys().copied().collect(),
                };
                for pid in targets {
                    self.send_now(pid, bytes.clone());
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Sends one message on the fast lane: as a request of its own, not behind the
    /// replication batch in flight, up to [`FAST_IN_FLIGHT_MAX`] at once; beyond that, and to
    /// a member not connected (just after start, during a reconnect), it is held, bounded,
    /// and goes with the next fast-lane batch: the core sends a forward or a `Durable` once,
    /// and a client waits for its answer. Counted as sent when acknowledged; dropped (and
    /// counted) while isolated, on overflow, when older than [`HELD_AGE_MAX`] before it
    /// could go, or when its request fails.
    fn send_now(&mut self, pid: PeerId, bytes: Arc<Vec<u8>>) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        if self.is_isolated(p.region) {
            self.shared.dropped(1);
            return;
        }
        self.hold(pid, bytes);
        self.pump_fast(pid);
    }

    /// Holds a fast-lane message; the oldest go beyond the bounds.
    fn hold(&mut self, pid: PeerId, bytes: Arc<Vec<u8>>) {
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        p.held_bytes += bytes.len();
        p.held.push_back((Instant::now(), bytes));
        let mut overflow = 0;
        while p.held.len() > HELD_MESSAGES_MAX || p.held_bytes > HELD_BYTES_MAX {
            let Some((_, old)) = p.held.pop_front() else {
                break;
            };
            p.held_bytes -= old.len();
            overflow += 1;
        }
        if overflow > 0 {
            tracing::warn!(to = %p.region, overflow, "fast lane full: oldest held messages dropped");
            self.shared.dropped(overflow);
        }
    }

    /// Sends held fast-lane messages as batches, in the order they were held, while the
    /// member is connected and visible and its fast lane has a free slot; those held longer
    /// than [`HELD_AGE_MAX`] are dropped.
    fn pump_fast(&mut self, pid: PeerId) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        if p.conns == 0 || self.is_isolated(p.region) {
            return;
        }
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut stale = 0;
        let mut batches = Vec::new();
        while p.fast_in_flight.len() + batches.len() < FAST_IN_FLIGHT_MAX {
            let (mut batch, mut bytes) = (Vec::new(), 0);
            while let Some((at, m)) = p.held.front() {
                if !fits(batch.len(), bytes, m.len()) {
                    break;
                }
                let stale_one = at.elapsed() > HELD_AGE_MAX;
                let Some((_, m)) = p.held.pop_front() else {
                    break;
                };
                p.held_bytes -= m.len();
                if stale_one {
                    stale += 1;
                } else {
                    bytes += m.len();
                    batch.push(m);
                }
            }
            if batch.is_empty() {
                break;
            }
            batches.push((batch, bytes));
        }
        self.shared.dropped(stale);
        for (batch, bytes) in batches {
            let f = self.send_batch(pid, batch, bytes);
            if let Some(p) = self.peers.get_mut(&pid) {
                p.fast_in_flight.push(f);
            }
        }
    }

    /// Queues one message for a member; `counted` says whether a message that cannot go
    /// (not connected, isolated) counts as dropped (a broadcast only reaches who is there).
    fn enqueue(&mut self, pid: PeerId, bytes: Arc<Vec<u8>>, counted: bool) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        let isolated = self.is_isolated(p.region);
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        if isolated || p.conns == 0 {
            if counted || isolated {
                self.shared.dropped(1);
            }
            return;
        }
        p.queued_bytes += bytes.len();
        p.queue.push_back(bytes);
        let mut overflow = 0;
        while p.queue.len() > QUEUE_MESSAGES_MAX || p.queued_bytes > QUEUE_BYTES_MAX {
            match p.queue.pop_front() {
                Some(old) => {
                    p.queued_bytes -= old.len();
                    overflow += 1;
                }
                None => break,
            }
        }
        if overflow > 0 {
            tracing::warn!(to = %p.region, overflow, "slow peer: oldest queued messages dropped");
            self.shared.dropped(overflow);
        }
        self.pump(pid);
    }

    /// Sends the next batch to a member if nothing is in flight (one batch at a time keeps
    /// per-peer order).
    fn pump(&mut self, pid: PeerId) {
        let Some(p) = self.peers.get(&pid) else {
            return;
        };
        if p.in_flight.is_some() || p.queue.is_empty() || p.conns == 0 {
            return;
        }
        if self.is_isolated(p.region) {
            return;
        }
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(m) = p.queue.front() {
            if !fits(batch.len(), bytes, m.len()) {
                break;
            }
            let Some(m) = p.queue.pop_front() else { break };
            bytes += m.len();
            batch.push(m);
        }
        p.queued_bytes -= bytes;
        let f = self.send_batch(pid, batch, bytes);
        if let Some(p) = self.peers.get_mut(&pid) {
            p.in_flight = Some(f);
        }
    }

    /// Sends `batch` (`bytes` in all) to a member as one request: what is now in flight.
    fn send_batch(&mut self, pid: PeerId, batch: Vec<Arc<Vec<u8>>>, bytes: usize) -> InFlight {
        let messages = batch.len();
        let id = self
            .swarm
            .behaviour_mut()
            .msg
            .send_request(&pid, Frame::Batch(batch));
        InFlight {
            id,
            messages,
            bytes,
            sent_at: Instant::now(),
        }
    }

    /// Drops what waits for a member: its replication queue, and with `fast` its held
    /// fast-lane messages too (kept across a reconnect, not across isolation or removal).
    fn drop_queue(&mut self, pid: PeerId, fast: bool) {
        if let Some(p) = self.peers.get_mut(&pid) {
            let mut n = p.queue.len();
            p.queue.clear();
            p.queued_bytes = 0;
            if fast {
                n += p.held.len();
                p.held.clear();
                p.held_bytes = 0;
            }
            self.shared.dropped(n);
        }
    }

    fn isolate(&mut self, set: BTreeSet<RegionId>) {
        let before = self.visible();
        self.isolated = set;
        let after = self.visible();
        tracing::info!(region = %self.region, isolated = ?self.isolated, "fault injection: isolation set");
        let cut: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| self.is_isolated(p.region))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in cut {
            self.drop_queue(pid, true);
        }
        for r in before.difference(&after) {
            self.emit(NetEvent::Disconnected(*r));
        }
        for r in after.difference(&before) {
            self.emit(NetEvent::Connected(*r));
        }
        let healed: Vec<PeerId> = after
            .iter()
            .filter_map(|r| self.by_region.get(r).copied())
            .collect();
        for pid in healed {
            self.pump_fast(pid);
        }
        self.publish_connected();
    }

    /// A retired member: taken off the allowlist and the peer table (never dialed again,
    /// its connections refused), its queue dropped, its connections closed.
    fn remove(&mut self, region: RegionId) {
        let Some(pid) = self.by_region.remove(&region) else {
            return;
        };
        let was_visible = self.visible().contains(&region);
        self.drop_queue(pid, true);
        self.peers.remove(&pid);
        self.swarm.behaviour_mut().allow.disallow_peer(pid);
        let _ = self.swarm.disconnect_peer_id(pid);
        tracing::info!(region = %self.region, removed = %region, "member removed from the allowlist");
        if was_visible {
            self.emit(NetEvent::Disconnected(region));
        }
        self.publish_connected();
    }

    /// A member that joined after this transport started: allowed (its connections are
    /// accepted), dialed now, and counted in the connection limits. A region already in the
    /// table, this region itself, or a peer id already used by another region is left alone.
    fn add(&mut self, m: &MemberAddr) {
        if m.region == self.region
            || m.peer_id == *self.swarm.local_peer_id()
            || self.by_region.contains_key(&m.region)
            || self.peers.contains_key(&m.peer_id)
        {
            return;
        }
        let mut peer = Peer::new(m);
        peer.next_dial = Some(Instant::now());
        self.peers.insert(m.peer_id, peer);
        self.by_region.insert(m.region, m.peer_id);
        let b = self.swarm.behaviour_mut();
        b.allow.allow_peer(m.peer_id);
        *b.limits.limits_mut() = limits_for(self.peers.len());
        tracing::info!(region = %self.region, added = %m.region, peer = %m.peer_id,
            "member added to the allowlist");
        self.redial();
    }

    fn schedule_redial(&mut self, pid: PeerId) {
        if let Some(p) = self.peers.get_mut(&pid) {
            p.next_dial = Some(Instant::now() + p.backoff);
            p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials every member that is down and whose backoff has expired.
    fn redial(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conns == 0 && !p.dialing && p.next_dial.is_some_and(|t| t <= now))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            let Some(p) = self.peers.get_mut(&pid) else {
                continue;
            };
            p.next_dial = None;
            if p.addrs.is_empty() {
                // Nowhere to dial: it dials us.
                continue;
            }
            let opts = DialOpts::peer_id(pid)
                .addresses(p.addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    if let Some(p) = self.peers.get_mut(&pid) {
                        p.dialing = true;
                    }
                }
                Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => {
                    tracing::debug!(peer = %pid, error = %e, "dial failed");
                    self.schedule_redial(pid);
                }
            }
        }
    }

    fn region_of(&self, pid: &PeerId) -> Option<RegionId> {
        self.peers.get(pid).map(|p| p.region)
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&ev);
        if let SwarmEvent::Behaviour(BehaviourEvent::Ping(p)) = &ev {
            self.metrics.libp2p.record(p);
        }
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(region = %self.region, %address, "p2p listening");
                lock(&self.shared.listen).push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.shared.listen).retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let Some(p) = self.peers.get_mut(&peer_id) else {
                    // The allowlist refuses these; never talk to one that slipped through.
                    tracing::warn!(peer = %peer_id, "connection from a non-member: closed");
                    self.shared.refused();
                    let _ = self.swarm.close_connection(connection_id);
                    return;
                };
                let was_down = p.conns == 0;
                p.conns = num_established.get();
                p.backoff = BACKOFF_INITIAL;
                p.next_dial = None;
                if endpoint.is_dialer() {
                    p.dialing = false;
                }
                let region = p.region;
                if was_down {
                    tracing::info!(region = %self.region, peer = %region, "member connected");
                    if !self.is_isolated(region) {
                        self.emit(NetEvent::Connected(region));
                    }
                    self.publish_connected();
                }
                self.pump(peer_id);
                self.pump_fast(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                let Some(p) = self.peers.get_mut(&peer_id) else {
                    return;
                };
                p.conns = num_established;
                if num_established > 0 {
                    return;
                }
                let region = p.region;
                let why = cause.as_ref().map(ConnectionError::to_string);
                tracing::info!(region = %self.region, peer = %region, cause = ?why, "member disconnected");
                self.drop_queue(peer_id, false);
                self.schedule_redial(peer_id);
                if !self.is_isolated(region) {
                    self.emit(NetEvent::Disconnected(region));
                }
                self.publish_connected();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let DialError::WrongPeerId { obtained, .. } = &error {
                    tracing::warn!(expected = ?peer_id, %obtained, "dialed address answered with another key: refused");
                    self.shared.refused();
                }
                if let Some(pid) = peer_id {
                    if let Some(p) = self.peers.get_mut(&pid) {
                        p.dialing = false;
                        if p.conns == 0 {
                            tracing::debug!(peer = %p.region, %error, "dial failed, backing off");
                            self.schedule_redial(pid);
                        }
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                peer_id,
                send_back_addr,
                ..
            } => match error {
                ListenError::Denied { cause } => {
                    if cause
                        .downcast_ref::<connection_limits::Exceeded>()
                        .is_some()
                    {
                        // A flood of handshakes: refused before any cryptography; debug only,
                        // the count is in the stats.
                        tracing::debug!(from = %send_back_addr, %cause, "connection over the limits refused");
                        self.shared.limited();
                    } else {
                        tracing::warn!(peer = ?peer_id, from = %send_back_addr, %cause, "connection from a non-member refused");
                        self.shared.refused();
                    }
                }
                ListenError::WrongPeerId { obtained, .. } => {
                    tracing::warn!(%obtained, from = %send_back_addr, "connection refused: unexpected peer id");
                    self.shared.refused();
                }
                other => {
                    tracing::debug!(from = %send_back_addr, error = %other, "incoming connection failed");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                tracing::info!(peer = %peer, error = %e, "ping failed: closing the connection");
                let _ = self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Msg(ev)) => self.on_msg(ev),
            _ => {}
        }
    }

    fn on_msg(&mut self, ev: request_response::Event<Frame, u8>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.metrics.request("inbound", "received");
                let ack = self.on_batch(peer, request);
                let _ = self.swarm.behaviour_mut().msg.send_response(channel, ack);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.metrics.request(
                    "outbound",
                    if response == ACK_OK {
                        "acknowledged"
                    } else {
                        "dropped_by_peer"
                    },
                );
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if let Some(i) = p.fast_in_flight.iter().position(|f| f.id == request_id) {
                    let f = p.fast_in_flight.swap_remove(i);
                    self.shared.sent(&f);
                    self.pump_fast(peer);
                    return;
                }
                if p.in_flight.as_ref().is_some_and(|f| f.id == request_id) {
                    if let Some(f) = p.in_flight.take() {
                        self.metrics
                            .batch_duration
                            .observe(f.sent_at.elapsed().as_secs_f64());
                        self.shared.sent(&f);
                    }
                    if response != ACK_OK {
                        tracing::debug!(peer = %p.region, "peer dropped (part of) a batch");
                    }
                    self.pump(peer);
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.metrics.request("outbound", outbound_outcome(&error));
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if let Some(i) = p.fast_in_flight.iter().position(|f| f.id == request_id) {
                    let f = p.fast_in_flight.swap_remove(i);
                    tracing::info!(peer = %p.region, %error, messages = f.messages, "fast-lane batch not delivered");
                    self.shared.dropped(f.messages);
                    self.pump_fast(peer);
                    return;
                }
                if p.in_flight.as_ref().is_some_and(|f| f.id == request_id) {
                    if let Some(f) = p.in_flight.take() {
                        tracing::info!(peer = %p.region, %error, messages = f.messages, "batch not delivered");
                        self.shared.dropped(f.messages);
                    }
                    self.pump(peer);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.metrics.request("inbound", inbound_outcome(&error));
                // Framing violations are counted by the codec (libp2p does not report them).
                tracing::debug!(peer = ?self.region_of(&peer), %error, "inbound stream failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Hands a received batch to the node; returns the acknowledgement.
    fn on_batch(&mut self, peer: PeerId, frame: Frame) -> u8 {
        // The reservation is held until the batch is decoded (end of this function).
        let (msgs, _held) = match frame {
            Frame::Received(msgs, held) => (msgs, held),
            // Never produced by the decoder.
            Frame::Batch(_) | Frame::Raw(_) => return ACK_DROPPED,
        };
        let Some(from) = self.region_of(&peer) else {
            self.shared.dropped(msgs.len());
            return ACK_DROPPED;
        };
        if self.is_isolated(from) {
            self.shared.dropped(msgs.len());
            return ACK_DROPPED;
        }
        let mut ack = ACK_OK;
        for raw in msgs {
            match decode_message(&raw) {
                Ok(msg) => {
                    self.shared
                        .messages_received
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .bytes_received
                        .fetch_add(raw.len() as u64, Ordering::Relaxed);
                    self.emit(NetEvent::Message {
                        from,
                        msg,
                        bytes: raw.len(),
                    });
                }
                Err(e) => {
                    tracing::warn!(%from, error = %e, bytes = raw.len(), "malformed message dropped");
                    self.shared.dropped(1);
                    ack = ACK_DROPPED;
                }
            }
        }
        ack
    }
}
