//! The simulation engine: real [`Replica`]s on a seeded, simulated network, disk and clock.
//!
//! One thread, one PRNG seed, one binary heap of timed events ordered by `(time, sequence)`:
//! the same seed replays the same run bit for bit. Nothing here reads the wall clock or
//! iterates a hash map.
//!
//! The engine only moves bytes, time and connection events: every protocol decision
//! (pushes, heartbeats, which member to pull from and when, answering pulls, giving a pull
//! up) is the replica's own (`wallet_core::Replica`, `replica::pull`). Links between regions
//! are connections: a partition or a crash cuts them (what is in flight on them is lost),
//! each end is told `handle_disconnected` once it notices (after a detection delay), and
//! `handle_connected` once the link is back and reconnected.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use wallet_core::replica::pull::PullStats;
use wallet_core::{
    AccountId, Amount, Authenticator, Body, CompKind, Config, Currency, Event, EventId, Heartbeat,
    Hlc, Message, Output, Record, RegionId, Replica, Report, SignedHeartbeat, SubmitError,
    Submitted, TxRequest,
};

use crate::config::{Behaviour, ByzantinePlan, Inject, SimConfig};
use crate::policygen::{ChangeOutcome, PlannedChange};
use crate::rng::Rng;
use crate::scenario::Action;
use crate::workload::{Workload, CURRENCY};

/// Random home moves tried per run (each of a random account, in the workload's currency).
pub const HOME_MOVES_PER_RUN: u32 = 6;

/// Local clocks start here so that a negative skew never goes below zero.
pub const CLOCK_BASE_MS: u64 = 1_000_000;
/// Longest the final phase may take to converge, simulated ms.
pub const QUIESCE_MAX_MS: u64 = 600_000;

/// What happens at a point in simulated time.
#[derive(Debug)]
enum Ev {
    /// A message arrives, unless its link was cut since it was sent (`epoch` changed).
    Deliver {
        to: u8,
        from: u8,
        epoch: u32,
        msg: Message,
    },
    Fsync {
        node: u8,
        inc: u32,
        upto: u64,
    },
    Timer {
        node: u8,
        inc: u32,
    },
    /// One end of a cut link notices: `handle_disconnected` (unless it crashed since).
    LinkDown {
        node: u8,
        peer: u8,
        inc: u32,
    },
    /// A link is reconnected: both ends get `handle_connected` (unless it was cut again).
    LinkUp {
        a: u8,
        b: u8,
        epoch: u32,
    },
    Fault(Action),
    /// The Byzantine member acts (starts, or sends its forged items again).
    Byz,
    /// A planned policy change (index into `Sim::policy_plan`).
    Policy(usize),
    /// A random home move (home mode, SPEC §8): the account's current home hands it to
    /// another region.
    HomeMove {
        account: u32,
        to: u8,
    },
    Sample,
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap, we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Clone)]
enum Pend {
    Event(usize, u64),
    Ceiling(Hlc),
    Watermark(Hlc),
    Evidence(Box<wallet_core::Evidence>),
    Snapshot(Box<wallet_core::Snapshot>),
}

/// The simulated disk of one region: what is durable, and what is written but not yet.
///
/// Events are persisted per origin in seq order (the replica merges gap-free), so the durable
/// events of an origin are always a prefix of the replica's log for it: the disk keeps the
/// durable count per origin instead of a second copy of every event.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Durable events per origin (index as in the region list).
    pub durable: Vec<u64>,
    written: Vec<u64>,
    /// Durable clock ceiling.
    pub ceiling: Hlc,
    /// Durable watermark.
    pub watermark: Hlc,
    /// Durable equivocation evidence (handed back to the replica on restart).
    pub evidence: Vec<wallet_core::Evidence>,
    pending: VecDeque<(u64, Pend)>,
    fsync_in_flight: bool,
    /// The disk stalls until the next crash: an fsync in flight never completes.
    stalled: bool,
    /// Persist records that broke the per-origin order (a core bug if ever non-zero).
    pub out_of_order: u64,
    /// The last durable snapshot (`Record::Snapshot`).
    pub snapshot: Option<Box<wallet_core::Snapshot>>,
}

/// One simulated region.
pub struct Node {
    /// Its name.
    pub id: RegionId,
    /// The real replica (while down: the image its disk is rebuilt from).
    pub replica: Replica,
    /// Running.
    pub up: bool,
    /// Incremented by every crash: stale timers, fsyncs and messages are dropped.
    pub inc: u32,
    /// Clock skew, ms.
    pub skew: i64,
    /// Its disk.
    pub disk: Disk,
    timer_at: Option<u64>,
    acks: VecDeque<(u64, u32, EventId)>,
    /// `ack = "peer"`: own new events durable here, waiting for another member's durability.
    peer_acks: VecDeque<(u32, EventId)>,
    lag_q: VecDeque<(u64, Hlc, u64)>,
    just_submitted: Option<(EventId, u32)>,
    /// Per peer: this incarnation's replica was told the member is connected (and not yet
    /// that it disconnected).
    pub(crate) told: Vec<bool>,
    /// A `crash-after-pull` is armed: the region crashes right after it answers a pull while
    /// own events are written but not durable.
    crash_armed: bool,
    /// Client requests the replica answered `Submitted::Pending` (a debit forwarded to its
    /// home), waiting for `Output::Decided`: request id -> logical request.
    pending: std::collections::BTreeMap<u64, u32>,
    /// Local time of its next snapshot (`SimConfig::snapshot_every_ms`).
    next_snapshot_ms: u64,
    /// This incarnation started from a durable snapshot (its replica's `restores` counts it).
    from_snapshot: bool,
    /// Events in memory after its last compaction (`SimConfig::compact_every` counts from
    /// there).
    compacted_at: u64,
}

/// The connection between two regions (one per unordered pair).
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// Incremented by every cut: a message or a reconnect from an older epoch is void.
    epoch: u32,
    /// Connected: messages can be sent.
    established: bool,
    /// The latest time an end of this link is told it was cut (a reconnect comes after it).
    notice_at: u64,
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Submissions sent (first sends, retries, second-region copies).
    pub submissions: u64,
    /// New events created.
    pub new_events: u64,
    /// Submissions answered with an existing event.
    pub existing: u64,
    /// Refused for insufficient funds.
    pub refused_funds: u64,
    /// Refused for an idempotency conflict.
    pub refused_conflict: u64,
    /// Refused otherwise (restoring, frozen, overflow).
    pub refused_other: u64,
    /// Sent to a region that was down.
    pub unavailable: u64,
    /// Created but lost in a crash before it was durable (the client saw no ack).
    pub lost_unacked: u64,
    /// Messages sent (copies per recipient, duplicates included).
    pub messages: u64,
    /// Messages lost by the network fault model.
    pub messages_lost: u64,
    /// Messages dropped by a partition or a down region.
    pub messages_cut: u64,
    /// Bytes replicated (real wire encoding, per copy sent).
    pub bytes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Crashes.
    pub crashes: u64,
    /// The replicas' anti-entropy counters, summed over regions and incarnations.
    pub pull: PullStats,
    /// Links cut (by partitions and crashes), per unordered pair.
    pub link_cuts: u64,
    /// `handle_disconnected` calls (one per end that noticed a cut).
    pub disconnects: u64,
    /// `handle_connected` calls (one per end, at start and after every reconnect).
    pub connects: u64,
    /// Reports by kind, in the order of `Report::KINDS`.
    pub reports: [u64; Report::KINDS.len()],
    /// Events delivered to replicas in `Message::Events` (every copy).
    pub events_delivered: u64,
    /// Of those, already held by the receiver (replica stats, summed over incarnations).
    pub events_duplicate: u64,
    /// Restarts after which the region's feed was shorter than before the crash.
    pub restart_feed_regressions: u64,
    /// Feed entries shown before a crash and missing right after the restart.
    pub restart_feed_entries_hidden: u64,
    /// Restarts after which the region's watermark was lower than before the crash.
    pub restart_watermark_regressions: u64,
    /// Compactions made during the run (issue 13, `SimConfig::compact_every`).
    pub compactions: u64,
    /// Events dropped from memory by those compactions.
    pub compacted_events: u64,
    /// Restarts from a durable snapshot plus the events after it.
    pub restarts_from_snapshot: u64,
    /// Snapshots a region installed from a peer (`Message::Snapshot`: a bootstrap after a
    /// lost disk, or a region far behind).
    pub snapshots_installed: u64,
    /// Snapshots sent to peers that pulled below a fold.
    pub snapshots_sent: u64,
    /// The last compaction's figures: (accounts in the snapshot, its encoded bytes, events in
    /// memory before, after).
    pub last_compaction: Option<(u64, u64, u64, u64)>,
    /// Debits sent to the floor whose amount was sized to reach it (the region had room).
    pub floor_sized: u64,
    /// Credits sent to the floor that found an account in an episode to bring back to it.
    pub floor_credits: u64,
    /// Armed crashes that fired (a pull answered while own events were not durable).
    pub crashes_after_pull: u64,
    /// Client requests the replica left pending (home mode: forwarded to the home).
    pub pending: u64,
    /// Pending requests refused because the home did not answer in time (`HomeUnreachable`).
    pub refused_home: u64,
    /// Pending requests lost with a crash of the region that held them (no answer).
    pub pending_lost: u64,
    /// Home moves issued (by the region that was the account's home).
    pub home_moves: u64,
    /// Escrow debits refused for rights (`InsufficientRights`).
    pub refused_rights: u64,
    /// Escrow debits that waited for rights (the synchronous path; the rest of the pending
    /// requests were forwarded to a home).
    pub rights_waits: u64,
    /// Of those, the ones accepted after the wait: the rights came in, or (the hybrid) the
    /// fallback accepted within the risk limit. The others were refused.
    pub rights_waits_served: u64,
    /// Client debits that reached a region that was up.
    pub debits: u64,
}

/// Per region: (provisional, settled) in cents, None while the region is down.
pub type BalanceRow = Vec<Option<(i64, i64)>>;

/// Time series for the HTML report.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// The charted account.
    pub account: Option<AccountId>,
    /// (time ms, per region (provisional, settled) in cents, None while down).
    pub balances: Vec<(u64, BalanceRow)>,
    /// Partitions: (start, end, label).
    pub partitions: Vec<(u64, u64, String)>,
    /// Crashes: (region, start, end).
    pub downtime: Vec<(usize, u64, u64)>,
    /// Compensations on the charted account: (time, region, kind, cents, id), first emission.
    pub comps: Vec<(u64, usize, CompKind, i64, String)>,
    /// Settlement lag samples: (submit time, lag ms).
    pub lags: Vec<(u64, u64)>,
    /// The charted account's floor under the policy, cents (0, or minus the overdraft line).
    pub floor_cents: i64,
}

/// What scripted disk and link steps changed (`fsync`, `hold-events`, `wipe`).
#[derive(Debug, Clone, Default)]
struct Scripted {
    /// Per region: every fsync takes this long, ms (None: drawn from `--fsync`).
    fsync_ms: Vec<Option<u64>>,
    /// Per link (from * n + to): messages carrying events are held back this long, ms.
    hold_ms: Vec<u64>,
    /// Per region: its disk was lost; the next start is a restore (`Config::restore`).
    wiped: Vec<bool>,
    /// Per region: a restore began and its seal may not be durable yet: a crash then resumes
    /// the restore (walletd records it as pending until then).
    restore_pending: Vec<bool>,
}

/// The simulator state.
pub struct Sim {
    /// Configuration.
    pub cfg: SimConfig,
    /// The workload.
    pub workload: Workload,
    /// Regions.
    pub nodes: Vec<Node>,
    /// Simulated time, ms.
    pub now: u64,
    queue: BinaryHeap<Item>,
    seq: u64,
    next_sub: usize,
    group: Vec<u32>,
    net: Rng,
    /// Draws of the connection model (detection and reconnect delays).
    link_rng: Rng,
    /// Per unordered pair (`link_index`): the connection.
    links: Vec<Link>,
    /// Per link (from * n + to): when the last in-order message arrives (links are FIFO
    /// streams, like the node's; only "reordered" messages overtake).
    link_last: Vec<u64>,
    disk_rng: Rng,
    faults_on: bool,
    /// Acknowledged events: (id, logical request).
    pub acked: Vec<(EventId, u32)>,
    /// Lost disks: (region, how many entries `acked` had then, how many seals of the region
    /// the cluster held then), for the checker's no-loss rule across epochs.
    pub wipes: Vec<(usize, usize, usize)>,
    /// Per logical request: acknowledged (new durable event or an existing one).
    pub logical_acked: Vec<bool>,
    /// Per logical request: refused by a replica at least once.
    pub logical_refused: Vec<bool>,
    /// Per logical request: when it was last sent to a region, ms.
    pub sent_at: Vec<u64>,
    /// Accept latency of every acknowledged request, ms from its send to its acknowledgement
    /// (local: the fsync; home mode elsewhere: the round trip to the home and its fsync).
    pub accept_latencies: Vec<u64>,
    /// Settlement lags (ms from submission to settled at the origin), acked events only.
    pub lags: Vec<u64>,
    /// Counters.
    pub counters: Counters,
    /// Report series (if recorded).
    pub series: Series,
    chart: Option<AccountId>,
    sample_ms: u64,
    partition_open: Option<(u64, String)>,
    down_since: Vec<Option<u64>>,
    seen_comps: Vec<std::collections::BTreeSet<String>>,
    out_buf: Vec<Output>,
    /// When the final phase began (all healed).
    pub quiesce_start: u64,
    /// When every region had converged (None: never).
    pub converged_at: Option<u64>,
    /// The checks made while the run goes on (`crate::check::DuringRun`).
    pub during: crate::check::DuringRun,
    /// What the anti-entropy liveness checks watch (`crate::liveness`).
    pub watch: crate::liveness::PullWatch,
    /// Scripted disk and link steps in force.
    script: Scripted,
    /// The policy changes of the run (scripted and random), in time order.
    pub policy_plan: Vec<PlannedChange>,
    /// What became of each.
    pub policy_outcomes: Vec<ChangeOutcome>,
    /// Per logical request sent to the floor: the amount its first send that reached a region
    /// used (retries and copies send the same body).
    pub floor_amounts: Vec<Option<Amount>>,
    /// New events of debits sent to the floor.
    pub floor_landings: Vec<FloorLanding>,
    /// Per logical credit sent to the floor: the account, currency and amount its first
    /// send that reached a region chose (retries and copies send the same body).
    pub floor_credits: Vec<Option<(AccountId, Currency, Amount)>>,
    /// Per region, the reference model folded over its settled prefix so far: a credit to
    /// the floor feeds it what the watermark passed since, instead of refolding the history.
    credit_folds: Vec<crate::prefix::PrefixFold>,
    /// Pending requests (region, request id) that wait for escrow rights, not for a home.
    rights_waiting: std::collections::BTreeSet<(usize, u64)>,
    /// The reference model folded up to the last snapshot's point, whichever region took
    /// it (the regions' logs hold the same events below a compaction point).
    snapshot_fold: crate::prefix::PrefixFold,
    /// Every event a region folded into a snapshot, per origin (the history the checker
    /// reads below a compacted region's logs, [`crate::history`]).
    pub folded: crate::history::Folded,
    /// The Byzantine member, in a Byzantine seed.
    pub byz: Option<Byz>,
    /// The membership changes issued (scripted, random, and the retire that resolves a
    /// Byzantine seed), in the order they were tried.
    pub membership: Vec<MembershipChange>,
    /// Per region and origin, the highest seq of that origin the region ever had settled (a
    /// cut must never void it: `check::membership_checks`).
    pub max_settled: Vec<Vec<u64>>,
}

/// A membership change the run tried, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// The change.
    pub action: Action,
    /// Where it came from: `scenario`, `random` or `byzantine` (the end of a Byzantine seed).
    pub source: &'static str,
    /// The event issued, or why not.
    pub outcome: Result<EventId, String>,
}

/// Share of seeds with random membership changes (a retire of a random region by another,
/// and a key rotation), ppm: drawn from the seed's own `membership` stream, only in runs with
/// random faults, no scripted faults, no Byzantine member and at least 3 regions.
pub const MEMBERSHIP_PPM_DEFAULT: u32 = 200_000;

/// The random membership changes of a seed (its own `membership` stream): maybe a retire
/// of a random region by another one, half the time cut off from the rest just before; maybe
/// a key rotation. A retire of a region cut off has, half the time (drawn from a stream of its
/// own, `membership-acker`, so the other draws stay), a member that must acknowledge it cut
/// off with the region, and retired too by the same issuer soon after, while the first retire
/// still waits for its acknowledgement (docs/protocol.md §8: the acknowledger, once retired
/// with its log up to its cut held, is no longer waited for).
pub fn membership_plan(cfg: &SimConfig, end_ms: u64, byzantine: bool) -> Vec<(u64, Action)> {
    let mut rng = Rng::new(cfg.seed, b"membership");
    let n = cfg.regions.len();
    let eligible = cfg.faults.enabled && !cfg.scenario.has_faults() && n >= 3 && !byzantine;
    let mut out = Vec::new();
    if !eligible {
        return out;
    }
    if rng.chance(cfg.membership_ppm) {
        let r = rng.below(n as u64) as usize;
        let issuer = (r + 1 + rng.below(n as u64 - 1) as usize) % n;
        let at = rng.range(end_ms / 4, end_ms * 3 / 4);
        let mut acker = None;
        if rng.below(2) == 0 {
            let mut second = Rng::new(cfg.seed, b"membership-acker");
            if second.below(2) == 0 {
                let k = second.below(n as u64 - 2) as usize;
                acker = (0..n).filter(|j| *j != r && *j != issuer).nth(k);
            }
            let gone: Vec<usize> = (0..n).filter(|j| *j == r || Some(*j) == acker).collect();
            let others: Vec<usize> = (0..n).filter(|j| !gone.contains(j)).collect();
            out.push((at.saturating_sub(1), Action::Split(vec![gone, others])));
        }
        out.push((at, Action::Retire(issuer, vec![r])));
        if let Some(a) = acker {
            out.push((at + 1_000, Action::Retire(issuer, vec![a])));
        }
    }
    if rng.chance(cfg.membership_ppm) {
        let r = rng.below(n as u64) as usize;
        out.push((rng.range(end_ms / 8, end_ms * 7 / 8), Action::RotateKey(r)));
    }
    out
}

/// A debit sent to the floor that became a new event.
#[derive(Debug, Clone)]
pub struct FloorLanding {
    /// The event.
    pub id: EventId,
    /// Its account.
    pub account: AccountId,
    /// Its currency.
    pub currency: Currency,
    /// The floor the region aimed at (its provisional balance minus the amount).
    pub floor: rust_decimal::Decimal,
}

/// Period of the Byzantine member's re-sends of a forged second version, simulated ms.
pub const BYZANTINE_RESEND_MS: u64 = 1_000;
/// Most events a promise-breaking member sends ahead of the denied one to a peer that lacks
/// them.
pub const FORGED_CATCH_UP_MAX: u64 = 1_024;
/// Most crashes the Byzantine mode adds (honest regions right after they write evidence).
pub const BYZANTINE_BIAS_CRASHES_MAX: u32 = 3;

/// The Byzantine member of a run (see `docs/simulator.md`): a real replica whose signing key
/// the simulator also uses to forge items in its name, and what became of them.
pub struct Byz {
    /// Who, how, from when.
    pub plan: ByzantinePlan,
    /// Its own stream of the seed (the crash bias).
    rng: Rng,
    /// The member's signing key (the simulator holds every region's).
    auth: Box<dyn Authenticator>,
    /// Equivocate: the event it issued and the forged second version under the same id.
    pub forged_event: Option<(Event, Event)>,
    /// Break-promise: the forged heartbeat and the event of its own that contradicts it.
    pub forged_promise: Option<(SignedHeartbeat, Event)>,
    /// Its last real heartbeat (the forged one copies its version vector and policy).
    last_hb: Option<Heartbeat>,
    /// The highest seq of its own events it ever sent (pushes and pull answers): a promise
    /// is only broken for an event no peer can hold yet.
    sent_max: u64,
    /// Per region: was handed a forged item, or evidence against the member.
    pub handed: Vec<bool>,
    /// Forged messages sent and delivered.
    pub forged_sent: u64,
    /// Of those, delivered.
    pub forged_delivered: u64,
    /// Crashes added right after an honest region wrote evidence.
    pub bias_crashes: u32,
}

/// Draws the Byzantine member of a run from the seed's own `byzantine` stream (one draw for
/// a seed without one): only with random faults and no scripted faults, unless pinned.
pub fn draw_byzantine(cfg: &SimConfig, end_ms: u64) -> (Option<ByzantinePlan>, Rng) {
    let mut rng = Rng::new(cfg.seed, b"byzantine");
    let n = cfg.regions.len();
    if let Some(p) = cfg.byzantine {
        return ((p.region < n).then_some(p), rng);
    }
    let scripted_membership = cfg.scenario.steps.iter().any(|s| s.action.is_membership());
    let eligible =
        cfg.faults.enabled && !cfg.scenario.has_faults() && !scripted_membership && n >= 2;
    if !eligible || !rng.chance(cfg.byzantine_ppm) {
        return (None, rng);
    }
    let region = rng.below(n as u64) as usize;
    let behaviour = if rng.below(2) == 0 {
        Behaviour::Equivocate
    } else {
        Behaviour::BreakPromise
    };
    let at_ms = rng.range(end_ms / 8, end_ms * 3 / 4);
    (
        Some(ByzantinePlan {
            region,
            behaviour,
            at_ms,
        }),
        rng,
    )
}

fn local(now: u64, skew: i64) -> u64 {
    let t = CLOCK_BASE_MS.saturating_add(now);
    if skew >= 0 {
        t.saturating_add(skew.unsigned_abs())
    } else {
        t.saturating_sub(skew.unsigned_abs())
    }
}

/// Decimal to cents (for charts only).
pub fn to_cents(d: Decimal) -> i64 {
    (d * Decimal::ONE_HUNDRED).trunc().to_i64().unwrap_or(0)
}

/// Regions a scenario `join` line adds: not founding members; each starts down and joining.
pub fn late_regions(cfg: &SimConfig) -> Vec<usize> {
    let mut out: Vec<usize> = cfg
        .scenario
        .steps
        .iter()
        .filter_map(|s| match s.action {
            Action::Join(_, r) => Some(r),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub(crate) fn make_config(cfg: &SimConfig, me: RegionId) -> Config {
    // The founding members leave out the regions a scenario joins later; a joining region
    // names the founding members and itself, and learns of the others from the history.
    let late: Vec<RegionId> = late_regions(cfg)
        .into_iter()
        .filter_map(|i| cfg.regions.get(i).copied())
        .collect();
    let joining = late.contains(&me);
    let members: Vec<RegionId> = cfg
        .regions
        .iter()
        .copied()
        .filter(|r| *r == me || !late.contains(r))
        .collect();
    let mut c = Config::new(me, members, cfg.policy.clone());
    c.joining = joining;
    c.cluster = "wallet-sim".into();
    c.anti_entropy_interval_ms = cfg.anti_entropy_ms;
    c.pull_batch_events = cfg.pull_limit;
    c.idempotency_retention_ms = cfg.retention_ms();
    c.durable_acks = cfg.ack_peer;
    c.ack_peer = cfg.ack_peer;
    c
}

/// Share of the random crashes that are `crash-after-pull`, ppm.
pub const CRASH_AFTER_PULL_PPM: u32 = 333_333;

/// The fault schedule (scripted steps, then random partitions, crashes and a skew change), in
/// the order the events are queued.
fn fault_schedule(cfg: &SimConfig, end_ms: u64, rng: &mut Rng) -> Vec<(u64, Action)> {
    let mut out: Vec<(u64, Action)> = cfg
        .scenario
        .steps
        .iter()
        .filter(|s| !matches!(s.action, Action::Tx { .. } | Action::Policy(..)))
        .map(|s| (s.at_ms, s.action.clone()))
        .collect();
    // Explicit --partitions/--crashes counts apply even with --faults none.
    let f = cfg.faults.clone();
    let n = cfg.regions.len();
    let dur = end_ms.max(1_000);
    let scripted = cfg.scenario.has_faults();
    let default_random = f.enabled && !scripted;
    let partitions = f.partitions.unwrap_or(if default_random {
        (dur / 40_000).max(1) as u32
    } else {
        0
    });
    if n >= 2 && partitions > 0 {
        let slot = dur / u64::from(partitions);
        for k in 0..u64::from(partitions) {
            let start = slot * k + rng.below(slot / 2 + 1);
            let len = rng.range((slot / 4).min(1_000), (slot / 2).max(1));
            let mut groups = vec![Vec::new(), Vec::new()];
            for r in 0..n {
                groups[rng.below(2) as usize].push(r);
            }
            if groups[0].is_empty() || groups[1].is_empty() {
                let lone = rng.below(n as u64) as usize;
                groups = vec![vec![lone], (0..n).filter(|r| *r != lone).collect()];
            }
            out.push((start, Action::Split(groups)));
            out.push((start + len, Action::Heal));
        }
    }
    let crashes = f.crashes.unwrap_or(if default_random {
        (dur / 60_000).clamp(1, 4) as u32
    } else {
        0
    });
    let mut armed = Rng::new(cfg.seed, b"crash-after-pull");
    // Their own stream too: with no lost disk drawn, every other draw stays.
    let mut lost = Rng::new(cfg.seed, b"lost-disk");
    if n >= 1 && crashes > 0 {
        let slot = dur / u64::from(crashes);
        for k in 0..u64::from(crashes) {
            let at = slot * k + rng.below(slot / 2 + 1);
            let down = rng.range(300.min(slot / 2), (slot / 2).clamp(1, 8_000));
            let r = rng.below(n as u64) as usize;
            // A third of the random crashes wait for the window of a pull answered while own
            // events are still being written (their own stream: the other draws stay).
            let crash = if lost.chance(f.lost_disk_ppm) {
                Action::Wipe(r)
            } else if armed.chance(CRASH_AFTER_PULL_PPM) {
                Action::CrashAfterPull(r)
            } else {
                Action::Crash(r)
            };
            out.push((at, crash));
            out.push((at + down, Action::Restart(r)));
        }
    }
    if default_random && f.max_skew_ms > 0 && n > 0 {
        let at = rng.below(dur);
        let r = rng.below(n as u64) as usize;
        let m = f.max_skew_ms;
        let s = rng.range(0, 2 * m) as i64 - m as i64;
        out.push((at, Action::Skew(r, s)));
    }
    out
}

/// Partition windows of a fault schedule: (start, end, group of each region), in time order.
/// A window still open at the end of the schedule ends at `u64::MAX`.
pub fn partition_windows(n: usize, schedule: &[(u64, Action)]) -> Vec<(u64, u64, Vec<u32>)> {
    // Queue order: by time, then by position in the schedule.
    let mut steps: Vec<&(u64, Action)> = schedule.iter().collect();
    steps.sort_by_key(|(at, _)| *at);
    let mut out = Vec::new();
    let mut group = vec![0u32; n];
    let mut open: Option<u64> = None;
    for (at, a) in steps {
        match a {
            Action::Split(groups) => {
                if let Some(s) = open.take() {
                    out.push((s, *at, group.clone()));
                }
                for (g, members) in groups.iter().enumerate() {
                    for r in members {
                        if let Some(x) = group.get_mut(*r) {
                            *x = g as u32 + 1;
                        }
                    }
                }
                open = Some(*at);
            }
            Action::Heal => {
                if let Some(s) = open.take() {
                    out.push((s, *at, group.clone()));
                }
                group.iter_mut().for_each(|g| *g = 0);
            }
            _ => {}
        }
    }
    if let Some(s) = open {
        out.push((s, u64::MAX, group));
    }
    out
}

impl Sim {
    /// Builds a run: regions, workload and fault schedule, all from the seed.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut workload = Workload::generate(&cfg);
        let n = cfg.regions.len();
        let mut fault_rng = Rng::new(cfg.seed, b"faults");
        let skews: Vec<i64> = (0..n)
            .map(|_| {
                // Random skew only when the faults are random (a scenario scripts its own).
                if cfg.faults.enabled && cfg.faults.max_skew_ms > 0 && !cfg.scenario.has_faults() {
                    let m = cfg.faults.max_skew_ms;
                    fault_rng.range(0, 2 * m) as i64 - m as i64
                } else {
                    0
                }
            })
            .collect();
        let faults = fault_schedule(&cfg, workload.end_ms, &mut fault_rng);
        // Requests that reuse a key with another body go where partitions are.
        workload.add_conflicts(&cfg, &partition_windows(n, &faults));
        let policy_plan = crate::policygen::plan_changes(&cfg, workload.end_ms);
        let (byz_plan, byz_rng) = draw_byzantine(&cfg, workload.end_ms);
        let membership = membership_plan(&cfg, workload.end_ms, byz_plan.is_some());
        let byz = byz_plan.map(|plan| Byz {
            plan,
            rng: byz_rng,
            auth: make_config(&cfg, cfg.regions[plan.region]).auth,
            forged_event: None,
            forged_promise: None,
            last_hb: None,
            sent_max: 0,
            handed: vec![false; n],
            forged_sent: 0,
            forged_delivered: 0,
            bias_crashes: 0,
        });
        let nodes: Vec<Node> = cfg
            .regions
            .iter()
            .zip(skews)
            .map(|(me, skew)| Node {
                id: *me,
                replica: Replica::new(make_config(&cfg, *me), Hlc::ZERO),
                up: true,
                inc: 0,
                skew,
                disk: Disk {
                    durable: vec![0; n],
                    written: vec![0; n],
                    ceiling: Hlc::ZERO,
                    watermark: Hlc::ZERO,
                    evidence: Vec::new(),
                    pending: VecDeque::new(),
                    fsync_in_flight: false,
                    stalled: false,
                    out_of_order: 0,
                    snapshot: None,
                },
                timer_at: None,
                acks: VecDeque::new(),
                peer_acks: VecDeque::new(),
                lag_q: VecDeque::new(),
                just_submitted: None,
                told: vec![false; n],
                crash_armed: false,
                pending: std::collections::BTreeMap::new(),
                next_snapshot_ms: 0,
                from_snapshot: false,
                compacted_at: 0,
            })
            .collect();
        let chart = if cfg.record_series {
            match &cfg.chart_account {
                Some(a) => AccountId::new(a).ok(),
                None => workload
                    .hottest()
                    .and_then(|i| workload.accounts.get(i as usize).cloned()),
            }
        } else {
            None
        };
        let logical = workload.logical as usize;
        let mut sim = Sim {
            net: Rng::new(cfg.seed, b"network"),
            link_rng: Rng::new(cfg.seed, b"links"),
            links: vec![Link::default(); n * n],
            link_last: vec![0; n * n],
            disk_rng: Rng::new(cfg.seed, b"disk"),
            faults_on: true,
            nodes,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            next_sub: 0,
            group: vec![0; n],
            acked: Vec::new(),
            wipes: Vec::new(),
            logical_acked: vec![false; logical],
            logical_refused: vec![false; logical],
            sent_at: vec![0; logical],
            accept_latencies: Vec::new(),
            lags: Vec::new(),
            counters: Counters::default(),
            series: Series {
                floor_cents: chart
                    .as_ref()
                    .map(|a| to_cents(cfg.policy.applied(a.as_str(), CURRENCY).floor))
                    .unwrap_or(0),
                account: chart.clone(),
                ..Series::default()
            },
            chart,
            sample_ms: (workload.end_ms / 600).max(50),
            partition_open: None,
            down_since: vec![None; n],
            seen_comps: vec![Default::default(); n],
            out_buf: Vec::new(),
            quiesce_start: 0,
            converged_at: None,
            during: crate::check::DuringRun::new(n),
            watch: crate::liveness::PullWatch::new(n),
            script: Scripted {
                fsync_ms: vec![None; n],
                hold_ms: vec![0; n * n],
                wiped: vec![false; n],
                restore_pending: vec![false; n],
            },
            policy_outcomes: vec![ChangeOutcome::NotYet; policy_plan.len()],
            policy_plan,
            floor_amounts: vec![None; logical],
            floor_landings: Vec::new(),
            floor_credits: vec![None; logical],
            rights_waiting: std::collections::BTreeSet::new(),
            credit_folds: (0..n)
                .map(|_| crate::prefix::PrefixFold::new(&cfg.policy, cfg.retention_ms(), n))
                .collect(),
            snapshot_fold: crate::prefix::PrefixFold::new(&cfg.policy, cfg.retention_ms(), n),
            folded: crate::history::Folded::new(n),
            byz,
            membership: Vec::new(),
            max_settled: vec![vec![0; n]; n],
            workload,
            cfg,
        };
        if let Some(at) = sim.byz.as_ref().map(|b| b.plan.at_ms) {
            sim.push(at, Ev::Byz);
        }
        for (at, a) in faults.into_iter().chain(membership) {
            sim.push(at, Ev::Fault(a));
        }
        for k in 0..sim.policy_plan.len() {
            sim.push(sim.policy_plan[k].at_ms, Ev::Policy(k));
        }
        // Home moves, from their own stream: a few per run, of random accounts (a move of an
        // account whose rule is not in home mode is refused by the core and counted).
        let mut moves = Rng::new(sim.cfg.seed, b"home-moves");
        let accounts = sim.workload.accounts.len() as u64;
        if n > 1 && accounts > 0 {
            for _ in 0..HOME_MOVES_PER_RUN {
                let at = moves.range(0, sim.workload.end_ms);
                let account = moves.below(accounts) as u32;
                let to = moves.below(n as u64) as u8;
                sim.push(at, Ev::HomeMove { account, to });
            }
        }
        // At start every pair is connected.
        for a in 0..n {
            for b in a + 1..n {
                let li = sim.link_index(a, b);
                sim.links[li].established = true;
            }
        }
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    sim.tell_connected(a, b);
                }
            }
        }
        // Regions a scenario joins later start down, their links cut (not a crash).
        for r in late_regions(&sim.cfg) {
            sim.nodes[r].up = false;
            sim.nodes[r].inc += 1;
            sim.down_since[r] = Some(0);
            for j in 0..n {
                if j != r {
                    sim.cut(r, j);
                }
            }
        }
        for i in 0..n {
            sim.arm_timer(i);
        }
        if sim.cfg.record_series {
            sim.push(0, Ev::Sample);
        }
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Whether the network lets `a` and `b` reach each other (both up, same side of every
    /// partition). The connection follows with a delay: see [`Sim::cut`] and [`Sim::restore`].
    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && self.group[a] == self.group[b]
    }

    fn link_index(&self, a: usize, b: usize) -> usize {
        a.min(b) * self.nodes.len() + a.max(b)
    }

    fn region_index(&self, r: RegionId) -> Option<usize> {
        self.cfg.regions.iter().position(|x| *x == r)
    }

    /// The link between `a` and `b` stops carrying bytes (a partition, or a crash of one
    /// end): what is in flight on it is lost, and each end still up that believes it is
    /// connected is told after its own detection delay.
    fn cut(&mut self, a: usize, b: usize) {
        let li = self.link_index(a, b);
        self.links[li].epoch = self.links[li].epoch.wrapping_add(1);
        self.links[li].established = false;
        self.counters.link_cuts += 1;
        let (dmin, dmax) = self.cfg.links.detect_ms;
        for (x, y) in [(a, b), (b, a)] {
            if self.nodes[x].up && self.nodes[x].told[y] {
                let at = self.now + self.link_rng.range(dmin, dmax);
                self.links[li].notice_at = self.links[li].notice_at.max(at);
                let inc = self.nodes[x].inc;
                self.push(
                    at,
                    Ev::LinkDown {
                        node: x as u8,
                        peer: y as u8,
                        inc,
                    },
                );
            }
        }
    }

    /// The network lets `a` and `b` reach each other again (a heal, or a restart): the
    /// connection is re-established after both ends noticed the cut and a reconnect delay.
    fn restore(&mut self, a: usize, b: usize) {
        let li = self.link_index(a, b);
        let (rmin, rmax) = self.cfg.links.reconnect_ms;
        let at = self.now.max(self.links[li].notice_at) + self.link_rng.range(rmin, rmax);
        let epoch = self.links[li].epoch;
        self.push(
            at,
            Ev::LinkUp {
                a: a as u8,
                b: b as u8,
                epoch,
            },
        );
    }

    fn link_up(&mut self, a: usize, b: usize, epoch: u32) {
        let li = self.link_index(a, b);
        let link = self.links[li];
        if link.epoch != epoch || link.established || !self.reachable(a, b) {
            return; // cut again since it was scheduled
        }
        self.links[li].established = true;
        // The Byzantine member tells its lie again first, on a new connection.
        self.byz_resend(a, b);
        self.byz_resend(b, a);
        self.tell_connected(a, b);
        self.tell_connected(b, a);
    }

    fn tell_connected(&mut self, i: usize, j: usize) {
        if !self.nodes[i].up || self.nodes[i].told[j] {
            return;
        }
        self.nodes[i].told[j] = true;
        self.counters.connects += 1;
        let now_l = self.local_now(i);
        let peer = self.cfg.regions[j];
        self.nodes[i].replica.handle_connected(now_l, peer);
        crate::liveness::connecting(self, true);
        self.drain(i);
        crate::liveness::connecting(self, false);
    }

    fn link_down(&mut self, i: usize, j: usize, inc: u32) {
        let node = &mut self.nodes[i];
        if node.inc != inc || !node.up || !node.told[j] {
            return;
        }
        node.told[j] = false;
        self.counters.disconnects += 1;
        let now_l = self.local_now(i);
        let peer = self.cfg.regions[j];
        self.nodes[i].replica.handle_disconnected(now_l, peer);
        crate::liveness::disconnected(self, i, j);
        self.drain(i);
    }

    /// Sends one copy of a message (already encoded to `bytes` long) over a link.
    fn send(&mut self, from: usize, to: usize, msg: Message, bytes: usize) {
        let li = self.link_index(from, to);
        if !self.links[li].established {
            self.counters.messages_cut += 1;
            return;
        }
        let epoch = self.links[li].epoch;
        let f = &self.cfg.faults;
        let (dmin, dmax) = f.delay_ms;
        let (loss, dup, reorder, extra, answer_loss) = if self.faults_on {
            (
                f.loss_ppm,
                f.duplicate_ppm,
                f.reorder_ppm,
                f.reorder_extra_ms,
                f.pull_answer_loss_ppm,
            )
        } else {
            (0, 0, 0, 0, 0)
        };
        self.counters.messages += 1;
        self.counters.bytes += bytes as u64;
        if self.net.chance(loss)
            || (answer_loss > 0
                && matches!(msg, Message::PullAnswer { .. })
                && self.net.chance(answer_loss))
        {
            self.counters.messages_lost += 1;
            return;
        }
        let delay = self.net.range(dmin, dmax);
        let link = from * self.nodes.len() + to;
        let hold = match msg {
            Message::Events(_) | Message::PullAnswer { .. } => self.script.hold_ms[link],
            _ => 0,
        };
        let at = if hold > 0 {
            // Held back by a scripted step: later messages on the link overtake it.
            self.now + delay + hold
        } else if self.net.chance(reorder) {
            // Held back: later messages on the link overtake it.
            self.now + delay + self.net.range(0, extra)
        } else {
            let at = (self.now + delay).max(self.link_last[link]);
            self.link_last[link] = at;
            at
        };
        if self.net.chance(dup) {
            let d2 = self.net.range(dmin, dmax);
            self.counters.messages += 1;
            self.counters.bytes += bytes as u64;
            self.push(
                self.now + d2,
                Ev::Deliver {
                    to: to as u8,
                    from: from as u8,
                    epoch,
                    msg: msg.clone(),
                },
            );
        }
        self.push(
            at,
            Ev::Deliver {
                to: to as u8,
                from: from as u8,
                epoch,
                msg,
            },
        );
    }

    /// `Output::Broadcast`: one copy to every member this region is connected to.
    fn broadcast(&mut self, from: usize, msg: Message) {
        let n = self.nodes.len();
        let connected =
            |sim: &Sim, j: usize| j != from && sim.links[sim.link_index(from, j)].established;
        let Some(last) = (0..n).rev().find(|j| connected(self, *j)) else {
            return;
        };
        let bytes = wallet_core::wire::encoded_message_len(&msg);
        for j in 0..last {
            if connected(self, j) {
                self.send(from, j, msg.clone(), bytes);
            }
        }
        self.send(from, last, msg, bytes);
    }

    fn arm_timer(&mut self, i: usize) {
        let node = &self.nodes[i];
        if !node.up {
            return;
        }
        let deadline_local = node.replica.poll_timeout();
        let base = local(0, node.skew);
        let at = deadline_local.saturating_sub(base).max(self.now);
        if node.timer_at.is_none_or(|t| at < t) {
            let inc = node.inc;
            self.nodes[i].timer_at = Some(at);
            self.push(at, Ev::Timer { node: i as u8, inc });
        }
    }

    /// Drains a replica's outputs: persist to the simulated disk, send, record.
    /// `ack = "peer"`: acknowledges the own events another member holds durably.
    fn release_peer_acks(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let upto = node.replica.peer_durable_seq();
        while let Some(&(logical, id)) = node.peer_acks.front() {
            if id.seq > upto {
                break;
            }
            node.peer_acks.pop_front();
            self.acked.push((id, logical));
            if let Some(a) = self.logical_acked.get_mut(logical as usize) {
                *a = true;
            }
            if let Some(t) = self.sent_at.get(logical as usize) {
                self.accept_latencies.push(self.now.saturating_sub(*t));
            }
        }
    }

    fn drain(&mut self, i: usize) {
        if self.cfg.ack_peer {
            self.release_peer_acks(i);
        }
        let mut crash_now = false;
        let mut outs = std::mem::take(&mut self.out_buf);
        while let Some(o) = self.nodes[i].replica.poll_output() {
            outs.push(o);
        }
        for o in outs.drain(..) {
            match o {
                Output::Persist { index, record } => {
                    let p = match record {
                        Record::Event(e) => {
                            let o = self.region_index(e.id.origin).unwrap_or(0);
                            let node = &mut self.nodes[i];
                            if e.id.seq != node.disk.written[o] + 1 {
                                node.disk.out_of_order += 1;
                            }
                            node.disk.written[o] = e.id.seq;
                            if let Some((id, logical)) = node.just_submitted {
                                if id == e.id {
                                    let ack_at = if self.cfg.inject == Some(Inject::EarlyAck) {
                                        0
                                    } else {
                                        index
                                    };
                                    node.acks.push_back((ack_at, logical, id));
                                    node.lag_q.push_back((id.seq, e.hlc, self.now));
                                    node.just_submitted = None;
                                }
                            }
                            Pend::Event(o, e.id.seq)
                        }
                        Record::Ceiling(h) => Pend::Ceiling(h),
                        Record::Watermark(h) => Pend::Watermark(h),
                        Record::Snapshot(s) => {
                            // The events it folds are on the disk in it.
                            let node = &mut self.nodes[i];
                            for m in &s.body.members {
                                if let Some(o) =
                                    self.cfg.regions.iter().position(|r| *r == m.region)
                                {
                                    node.disk.written[o] = node.disk.written[o].max(m.seq);
                                }
                            }
                            Pend::Snapshot(s)
                        }
                        Record::Evidence(ev) => {
                            self.byz_bias_crash(i);
                            Pend::Evidence(Box::new(ev))
                        }
                    };
                    self.nodes[i].disk.pending.push_back((index, p));
                }
                Output::Broadcast(m) => {
                    if let Message::SignedHeartbeat(h) = &m {
                        crate::check::heartbeat_announced(self, i, &h.hb);
                    }
                    if let Message::Evidence(ev) = &m {
                        self.during.evidence_announced(i, ev.origin());
                    }
                    if self.byz.as_ref().is_some_and(|b| b.plan.region == i)
                        && self.byz_outgoing(&m)
                    {
                        continue; // sent by the member itself, after its lie
                    }
                    self.broadcast(i, m)
                }
                Output::Send { to, msg } => {
                    let answer = matches!(msg, Message::PullAnswer { .. });
                    if self.byz.as_ref().is_some_and(|b| b.plan.region == i) {
                        let _ = self.byz_outgoing(&msg);
                    }
                    if let Some(j) = self.region_index(to) {
                        let bytes = wallet_core::wire::encoded_message_len(&msg);
                        let (pull, answer) = match msg {
                            Message::Pull { .. } | Message::PullGaps { .. } => (true, false),
                            Message::PullAnswer { .. } => (false, true),
                            _ => (false, false),
                        };
                        if pull {
                            crate::liveness::pull_sent(self, i, j, &msg);
                        }
                        let lost = self.counters.messages_lost + self.counters.messages_cut;
                        self.send(i, j, msg, bytes);
                        if self.counters.messages_lost + self.counters.messages_cut > lost {
                            if pull {
                                crate::liveness::pull_lost(self, i, j);
                            } else if answer {
                                crate::liveness::pull_lost(self, j, i);
                            }
                        }
                    }
                    let node = &self.nodes[i];
                    if answer && node.crash_armed && node.disk.written[i] > node.disk.durable[i] {
                        crash_now = true;
                    }
                }
                Output::Compensation(c) => {
                    self.during.compensation_emitted(i, self.now, &c);
                    if self.chart.as_ref() == Some(&c.account) && c.currency == CURRENCY {
                        let id = c.id();
                        if self.seen_comps[i].insert(id.clone()) {
                            self.series
                                .comps
                                .push((self.now, i, c.kind, to_cents(c.delta), id));
                        }
                    }
                }
                Output::Decided {
                    request,
                    result,
                    durable_after,
                } => self.decided(i, request, result, durable_after),
                Output::Report(r) => {
                    if let Report::Equivocation { id } = &r {
                        self.during.evidence_announced(i, id.origin);
                    }
                    let kind = r.kind();
                    if let Some(k) = Report::KINDS.iter().position(|x| *x == kind) {
                        self.counters.reports[k] += 1;
                    }
                }
            }
        }
        self.out_buf = outs;
        if crash_now {
            // The armed crash fires: the answer is on its way while own writes are not
            // durable. The disk stalls (the fsync in flight never completes: a slow disk)
            // and the region crashes once the answer has arrived (a message that left the
            // process before the crash is delivered; one still in flight when the link is
            // cut would be lost).
            self.counters.crashes_after_pull += 1;
            let node = &mut self.nodes[i];
            node.crash_armed = false;
            node.disk.stalled = true;
            let f = &self.cfg.faults;
            let after = f.delay_ms.1 + f.reorder_extra_ms + 1;
            self.push(self.now + after, Ev::Fault(Action::Crash(i)));
        }
        // (Only with --inject-bug early-ack: acknowledge before durable.)
        while let Some(&(0, logical, id)) = self.nodes[i].acks.front() {
            self.nodes[i].acks.pop_front();
            self.acked.push((id, logical));
            if let Some(a) = self.logical_acked.get_mut(logical as usize) {
                *a = true;
            }
        }
        let node = &mut self.nodes[i];
        if !node.disk.fsync_in_flight {
            if let Some(&(upto, _)) = node.disk.pending.back() {
                node.disk.fsync_in_flight = true;
                let inc = node.inc;
                let (a, b) = self.cfg.faults.fsync_ms;
                let d = self.disk_rng.range(a, b);
                let d = self.script.fsync_ms.get(i).copied().flatten().unwrap_or(d);
                self.push(
                    self.now + d,
                    Ev::Fsync {
                        node: i as u8,
                        inc,
                        upto,
                    },
                );
            }
        }
        // Settlement lag of own events now below the watermark.
        let node = &mut self.nodes[i];
        let w = node.replica.watermark();
        while let Some(&(_, h, t)) = node.lag_q.front() {
            if h > w {
                break;
            }
            node.lag_q.pop_front();
            let lag = self.now - t;
            self.lags.push(lag);
            if self.cfg.record_series {
                self.series.lags.push((t, lag));
            }
        }
        self.arm_timer(i);
        crate::check::after_input(self, i);
    }

    fn submit(&mut self, k: usize) {
        let Some(s) = self.workload.submissions.get(k) else {
            return;
        };
        let (region, logical) = (s.region, s.logical as usize);
        let (mut currency, mut amount, to_floor) = (s.currency, s.amount, s.to_floor);
        let kind = s.kind;
        self.counters.submissions += 1;
        let mut account = self.workload.accounts[s.account as usize].clone();
        if to_floor && !kind.is_debit() {
            match self.floor_credits.get(logical).cloned().flatten() {
                Some((a, c, x)) => (account, currency, amount) = (a, c, x),
                None if self.nodes[region].up => {
                    let chosen = self.credit_to_floor(region);
                    if let Some((a, c, x)) = &chosen {
                        (account, currency, amount) = (a.clone(), *c, *x);
                        self.counters.floor_credits += 1;
                    }
                    if let Some(slot) = self.floor_credits.get_mut(logical) {
                        *slot = chosen.or(Some((account.clone(), currency, amount)));
                    }
                }
                None => {}
            }
        }
        // A debit sent to the floor: the provisional balance the region sees minus its floor
        // (under the policy in force there), decided by its first send that reaches a region.
        let mut floor = None;
        if to_floor && kind.is_debit() {
            match self.floor_amounts.get(logical).copied().flatten() {
                Some(a) => amount = a,
                None if self.nodes[region].up => {
                    let r = &self.nodes[region].replica;
                    let f = r
                        .current_policy()
                        .1
                        .applied(account.as_str(), currency)
                        .floor;
                    let room = r.balance(&account, currency).provisional - f;
                    if let Ok(a) = Amount::new(room, currency) {
                        amount = a;
                        floor = Some(f);
                        self.counters.floor_sized += 1;
                    }
                    if let Some(slot) = self.floor_amounts.get_mut(logical) {
                        *slot = Some(amount);
                    }
                }
                None => {}
            }
        }
        let req = TxRequest {
            account: account.clone(),
            kind,
            amount,
            currency,
            idempotency_key: self
                .workload
                .keys
                .get(logical)
                .and_then(|k| k.as_deref().map(str::to_string)),
            reference: None,
        };
        let node = &mut self.nodes[region];
        if !node.up {
            self.counters.unavailable += 1;
            return;
        }
        let now_l = local(self.now, node.skew);
        if let Some(t) = self.sent_at.get_mut(logical) {
            *t = self.now;
        }
        let before = crate::check::Before::of(&node.replica, &req);
        let result = node.replica.submit(now_l, req.clone());
        if kind.is_debit() {
            self.counters.debits += 1;
        }
        crate::check::submitted(
            &mut self.during,
            self.now,
            region,
            &node.replica,
            &req,
            &before,
            &result,
        );
        match result {
            Ok(Submitted::New(id)) => {
                self.counters.new_events += 1;
                node.just_submitted = Some((id, logical as u32));
                if let Some(floor) = floor {
                    self.floor_landings.push(FloorLanding {
                        id,
                        account,
                        currency,
                        floor,
                    });
                }
            }
            Ok(Submitted::Existing(_)) => {
                self.counters.existing += 1;
                if let Some(a) = self.logical_acked.get_mut(logical) {
                    *a = true;
                }
                self.accept_latencies.push(0);
            }
            Ok(Submitted::Pending { request }) => {
                self.counters.pending += 1;
                let mode = node
                    .replica
                    .current_policy()
                    .1
                    .applied(req.account.as_str(), req.currency)
                    .mode;
                if matches!(mode, wallet_core::Mode::Escrow { .. }) {
                    self.counters.rights_waits += 1;
                    self.rights_waiting.insert((region, request));
                }
                node.pending.insert(request, logical as u32);
            }
            Err(e) => self.refused(logical, &e),
        }
        self.drain(region);
        self.nodes[region].just_submitted = None;
    }

    /// A home move: the up region that holds itself the home of the account (in the
    /// workload's currency) hands it to region `to`; nothing when none does (not in home
    /// mode, the home down, or `to` is the home).
    fn move_home(&mut self, account: usize, to: usize) {
        let Some(account) = self.workload.accounts.get(account).cloned() else {
            return;
        };
        let to_id = self.cfg.regions[to];
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up || i == to {
                continue;
            }
            let me = self.nodes[i].id;
            let now_l = local(self.now, self.nodes[i].skew);
            let r = &mut self.nodes[i].replica;
            if r.home(&account, CURRENCY).is_some_and(|(h, _)| h == me)
                && r.move_home(now_l, account.clone(), CURRENCY, to_id).is_ok()
            {
                self.counters.home_moves += 1;
                self.drain(i);
                return;
            }
        }
    }

    fn refused(&mut self, logical: usize, e: &SubmitError) {
        match e {
            SubmitError::InsufficientFunds { .. } => self.counters.refused_funds += 1,
            SubmitError::IdempotencyConflict { .. } => self.counters.refused_conflict += 1,
            SubmitError::HomeUnreachable { .. } => self.counters.refused_home += 1,
            SubmitError::InsufficientRights { .. } => self.counters.refused_rights += 1,
            _ => self.counters.refused_other += 1,
        }
        if let Some(a) = self.logical_refused.get_mut(logical) {
            *a = true;
        }
    }

    /// `Output::Decided`: a pending request of region `i` is decided. An event issued here is
    /// acknowledged once durable (`durable_after`), one decided by the home at once (it was
    /// durable there before the home answered).
    fn decided(
        &mut self,
        i: usize,
        request: u64,
        result: Result<Submitted, SubmitError>,
        durable_after: Option<u64>,
    ) {
        let Some(logical) = self.nodes[i].pending.remove(&request) else {
            return;
        };
        let waited_for_rights = self.rights_waiting.remove(&(i, request));
        if waited_for_rights && matches!(result, Ok(Submitted::New(_))) {
            self.counters.rights_waits_served += 1;
        }
        match result {
            Ok(Submitted::New(id) | Submitted::Existing(id)) => match durable_after {
                Some(idx) => self.nodes[i].acks.push_back((idx, logical, id)),
                None => {
                    self.acked.push((id, logical));
                    if let Some(a) = self.logical_acked.get_mut(logical as usize) {
                        *a = true;
                    }
                    if let Some(t) = self.sent_at.get(logical as usize) {
                        self.accept_latencies.push(self.now.saturating_sub(*t));
                    }
                }
            },
            Ok(Submitted::Pending { .. }) => {}
            Err(e) => self.refused(logical as usize, &e),
        }
    }

    /// A credit to the floor at `region`: the first (account, currency), in order, that its
    /// settled view (by the reference model, which tracks the episodes) has in an overdraft
    /// episode with fees charged, and the amount that brings the provisional balance without
    /// those fees exactly back to the floor of the policy in force there. None when there
    /// is none (or the amount would not be positive). The model is the region's
    /// [`crate::prefix::PrefixFold`], fed what the watermark passed since the last credit.
    fn credit_to_floor(&mut self, region: usize) -> Option<(AccountId, Currency, Amount)> {
        let r = &self.nodes[region].replica;
        let fold = self.credit_folds.get_mut(region)?;
        // The model's fold of the region's settled prefix, fed what the watermark passed
        // since the last credit (pairs fold independently: this is each pair's own fold).
        let logs = self.folded.logs(r, &self.cfg.regions);
        fold.advance_logs(&logs, r.watermark());
        let policy = r.current_policy().1;
        let mut above = None;
        // Candidates: settled below the floor (an open episode needs it).
        for (a, c, b) in r.all_balances() {
            let floor = wallet_core::testing::model_rule(policy, a.as_str(), c).floor;
            if b.settled >= floor {
                continue;
            }
            let Some((_, Some(fees))) = fold.state().pair(a.as_str(), c) else {
                continue;
            };
            if fees <= Decimal::ZERO {
                continue;
            }
            let above = above.get_or_insert_with(|| fold.above_logs(&logs));
            let provisional = fold
                .state()
                .provisional(a.as_str(), c, above.iter().copied())?;
            let want = floor.checked_sub(provisional)?.checked_sub(fees)?;
            if want > Decimal::ZERO {
                if let Ok(x) = Amount::new(want, c) {
                    return Some((a, c, x));
                }
            }
        }
        None
    }

    fn fault(&mut self, a: Action) {
        match a {
            Action::Split(groups) => {
                let mut assign = self.group.clone();
                for (g, members) in groups.iter().enumerate() {
                    for r in members {
                        if let Some(x) = assign.get_mut(*r) {
                            *x = g as u32 + 1;
                        }
                    }
                }
                self.set_groups(assign);
                let label = groups
                    .iter()
                    .map(|g| {
                        let names: Vec<&str> =
                            g.iter().map(|r| self.cfg.regions[*r].as_str()).collect();
                        format!("{{{}}}", names.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                self.counters.partitions += 1;
                if let Some((s, l)) = self.partition_open.take() {
                    self.series.partitions.push((s, self.now, l));
                }
                self.partition_open = Some((self.now, label));
            }
            Action::Heal => self.heal(),
            Action::Crash(r) => self.crash(r),
            Action::CrashAfterPull(r) => {
                if let Some(node) = self.nodes.get_mut(r).filter(|n| n.up) {
                    node.crash_armed = true;
                }
            }
            Action::Restart(r) => self.restart(r),
            Action::Skew(r, ms) => {
                if let Some(n) = self.nodes.get_mut(r) {
                    n.skew = ms;
                    n.timer_at = None;
                }
                self.arm_timer(r);
            }
            // Queued as `Ev::Policy` (see `Sim::policy_plan`).
            Action::Fsync(r, ms) => {
                if let Some(x) = self.script.fsync_ms.get_mut(r) {
                    *x = ms;
                }
            }
            Action::HoldEvents(from, to, ms) => {
                let k = from * self.nodes.len() + to;
                if let Some(x) = self.script.hold_ms.get_mut(k) {
                    *x = ms;
                }
            }
            Action::Wipe(r) => self.wipe(r),
            Action::Restore(r) => self.restart(r),
            Action::Retire(..) | Action::RotateKey(_) | Action::Join(..) => {
                let source = if self.cfg.scenario.steps.iter().any(|s| s.action == a) {
                    "scenario"
                } else {
                    "random"
                };
                self.change_membership(a, source);
            }
            Action::Tx { .. } | Action::Policy(..) => {}
        }
    }

    /// Issues a membership change at its region; it replicates like any event.
    fn change_membership(&mut self, a: Action, source: &'static str) {
        let issuer = match &a {
            Action::Retire(i, _) | Action::RotateKey(i) | Action::Join(i, _) => *i,
            _ => return,
        };
        let outcome = if self.nodes.get(issuer).is_none_or(|n| !n.up) {
            Err("region down".to_string())
        } else {
            let now_l = self.local_now(issuer);
            let regions = self.cfg.regions.clone();
            let r = &mut self.nodes[issuer].replica;
            let res = match &a {
                Action::Retire(_, rs) => r.retire(
                    now_l,
                    rs.iter().filter_map(|x| regions.get(*x).copied()).collect(),
                    format!("{source} retire"),
                ),
                Action::RotateKey(_) => {
                    let key = format!("{}-key-at-{}", regions[issuer], self.now);
                    r.rotate_key(now_l, key.into_bytes())
                }
                Action::Join(_, j) => match regions.get(*j) {
                    Some(name) => {
                        r.join(now_l, *name, format!("{name}-key").into_bytes(), Vec::new())
                    }
                    None => return,
                },
                _ => return,
            };
            res.map_err(|e| e.to_string())
        };
        if outcome.is_ok() {
            self.drain(issuer);
        }
        // The joined region starts now (joining: it pulls the history, its join included).
        if let (Ok(_), Action::Join(_, j)) = (&outcome, &a) {
            self.restart(*j);
        }
        self.membership.push(MembershipChange {
            at_ms: self.now,
            action: a,
            source,
            outcome,
        });
    }

    /// The retire that ends a Byzantine seed was tried.
    fn byzantine_retire_tried(&self) -> bool {
        self.membership.iter().any(|m| m.source == "byzantine")
    }

    /// Regions named by a retire that was issued and survived ([`Sim::retire_survived`]),
    /// whether or not its cut is known yet.
    pub fn retired_regions(&self) -> std::collections::BTreeSet<usize> {
        let held = self.held_retires();
        self.membership
            .iter()
            .filter_map(|c| match (&c.action, &c.outcome) {
                (Action::Retire(_, rs), Ok(id)) if self.retire_in(&held, *id, rs) => Some(rs),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// The retire `id` of `regions` (indexes) survived: some region holds it, a running one
    /// in its log, a crashed one on its disk. A retire lost in its issuer's crash before it
    /// was durable, and received by no peer, never happened (the issuer uses its seq again
    /// for another event), so no cut ever comes for it. The replicas are asked
    /// (`Replica::retires`: a retire enters the membership state with the log, and stays
    /// there when the log is compacted), never the issue outcome alone.
    pub fn retire_survived(&self, id: EventId, regions: &[usize]) -> bool {
        self.retire_in(&self.held_retires(), id, regions)
    }

    /// Every retire some region holds: its id and the regions it retires, sorted.
    fn held_retires(&self) -> Vec<(EventId, Vec<RegionId>)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.replica.retires().into_iter().filter(|ri| {
                    n.up || self
                        .region_index(ri.id.origin)
                        .is_some_and(|o| ri.id.seq <= n.disk.durable[o])
                })
            })
            .map(|ri| {
                let mut regions = ri.regions;
                regions.sort();
                (ri.id, regions)
            })
            .collect()
    }

    fn retire_in(&self, held: &[(EventId, Vec<RegionId>)], id: EventId, regions: &[usize]) -> bool {
        let mut want: Vec<RegionId> = regions
            .iter()
            .filter_map(|x| self.cfg.regions.get(*x))
            .copied()
            .collect();
        want.sort();
        held.iter().any(|(h, got)| *h == id && *got == want)
    }

    /// Issues a planned policy change at its region (`Replica::submit_policy`); it is
    /// replicated like any event and applies from its place in the total order.
    fn change_policy(&mut self, k: usize) {
        let Some(change) = self.policy_plan.get(k) else {
            return;
        };
        let r = change.region;
        let outcome = match (&change.policy, self.nodes.get(r)) {
            (None, _) => ChangeOutcome::NotLoaded,
            (Some(_), None) => ChangeOutcome::RegionDown,
            (Some(_), Some(node)) if !node.up => ChangeOutcome::RegionDown,
            (Some(p), Some(_)) => {
                let (p, now_l) = (p.clone(), self.local_now(r));
                match self.nodes[r].replica.submit_policy(now_l, p) {
                    Ok(id) => ChangeOutcome::Issued(id),
                    Err(e) => ChangeOutcome::Refused(e.to_string()),
                }
            }
        };
        if matches!(outcome, ChangeOutcome::Issued(_)) {
            self.drain(r);
        }
        self.policy_outcomes[k] = outcome;
    }

    fn heal(&mut self) {
        self.set_groups(vec![0; self.nodes.len()]);
        if let Some((s, l)) = self.partition_open.take() {
            self.series.partitions.push((s, self.now, l));
        }
    }

    /// Changes the partition: links it splits are cut, links it joins are restored.
    fn set_groups(&mut self, groups: Vec<u32>) {
        let n = self.nodes.len();
        let before: Vec<bool> = (0..n * n).map(|k| self.reachable(k / n, k % n)).collect();
        self.group = groups;
        for a in 0..n {
            for b in a + 1..n {
                match (before[a * n + b], self.reachable(a, b)) {
                    (true, false) => self.cut(a, b),
                    (false, true) => self.restore(a, b),
                    _ => {}
                }
            }
        }
    }

    fn local_now(&self, i: usize) -> u64 {
        local(self.now, self.nodes[i].skew)
    }

    /// Region `i`'s local clock now (what its replica is handed as `now_ms`).
    pub(crate) fn local_time(&self, i: usize) -> u64 {
        self.local_now(i)
    }

    /// Every `snapshot_every_ms` of its local time, region `i` takes a snapshot if it has a
    /// compaction point, and the checker compares it with the others' and the model's.
    fn maybe_snapshot(&mut self, i: usize, now_l: u64) {
        let every = self.cfg.snapshot_every();
        let n = &mut self.nodes[i];
        if every == 0 || now_l < n.next_snapshot_ms {
            return;
        }
        n.next_snapshot_ms = now_l.saturating_add(every);
        let n = &self.nodes[i];
        let Some(s) = n.replica.snapshot() else {
            return;
        };
        // The model's fold of the region's events up to the snapshot's point, fed what the
        // point passed since the last snapshot (afresh if the point went back, or the logs
        // differ below it).
        let fold = &mut self.snapshot_fold;
        fold.advance_logs(&self.folded.logs(&n.replica, &self.cfg.regions), s.body.at);
        self.during.snapshot_taken(&s, fold.state());
        let cfg = make_config(&self.cfg, self.nodes[i].id);
        crate::check::restore_agrees(self, i, &s, cfg);
    }

    /// Region `i` compacts (issue 13) when it holds `SimConfig::compact_every` events in memory
    /// or more and the core allows it: the events it folds are kept in the history the
    /// checker reads ([`crate::history::Folded`]) first, then `Replica::compact` drops them and
    /// emits the snapshot record (the disk drops them once it is durable).
    fn maybe_compact(&mut self, i: usize) {
        let every = self.cfg.compact_every();
        if every == 0 || self.byz.is_some() {
            return;
        }
        let r = &self.nodes[i].replica;
        let held = r.events_in_memory();
        if held < self.nodes[i].compacted_at.saturating_add(every) || !r.compaction_allowed() {
            return;
        }
        let Some(at) = r.compaction_point() else {
            return;
        };
        for (o, origin) in self.cfg.regions.iter().enumerate() {
            let mem = r.origin_events(*origin, 0);
            let n = mem.partition_point(|e| e.hlc <= at);
            if !self.folded.note(o, &mem[..n]) {
                let me = self.nodes[i].id;
                self.during.failures.push((
                    "compaction",
                    format!("{me} folds {origin}'s events that differ from what another region folded at {at:?}"),
                ));
            }
        }
        let before = r.events_in_memory();
        let Some(s) = self.nodes[i].replica.compact() else {
            return;
        };
        let after = self.nodes[i].replica.events_in_memory();
        self.nodes[i].compacted_at = after;
        let c = &mut self.counters;
        c.compactions += 1;
        c.compacted_events += before.saturating_sub(after);
        c.last_compaction = Some((
            s.body.accounts.len() as u64,
            wallet_core::wire::encode_snapshot(&s).len() as u64,
            before,
            after,
        ));
        self.drain(i);
    }

    /// A crash that also loses the disk: the next start is a restore from the peers.
    fn wipe(&mut self, r: usize) {
        if self.nodes.get(r).is_none_or(|n| !n.up) {
            return;
        }
        let me = self.cfg.regions[r];
        let seals = self
            .nodes
            .iter()
            .map(|n| {
                n.replica
                    .seals()
                    .iter()
                    .filter(|s| s.id.origin == me)
                    .count()
            })
            .max()
            .unwrap_or(0);
        self.wipes.push((r, self.acked.len(), seals));
        self.crash(r);
        let disk = &mut self.nodes[r].disk;
        disk.durable.iter_mut().for_each(|d| *d = 0);
        disk.written.iter_mut().for_each(|d| *d = 0);
        disk.ceiling = Hlc::ZERO;
        disk.watermark = Hlc::ZERO;
        disk.evidence.clear();
        disk.snapshot = None;
        self.script.wiped[r] = true;
        self.script.restore_pending[r] = true;
        self.during.disk_lost(r);
        // What the region had settled is gone with its disk (`membership` counts from here).
        if let Some(m) = self.max_settled.get_mut(r) {
            m.fill(0);
        }
    }

    fn crash(&mut self, r: usize) {
        let Some(node) = self.nodes.get_mut(r) else {
            return;
        };
        if !node.up {
            return;
        }
        node.up = false;
        node.crash_armed = false;
        node.inc += 1;
        // A crash during a restore, or before its seal is durable, resumes the restore.
        if self.script.restore_pending[r] {
            let me = node.id;
            let sealed = !node.replica.is_restoring()
                && node
                    .replica
                    .seals()
                    .iter()
                    .rev()
                    .find(|s| s.id.origin == me)
                    .is_some_and(|s| s.id.seq <= node.disk.durable[r]);
            self.script.restore_pending[r] = !sealed;
            self.script.wiped[r] = !sealed;
        }
        self.counters.events_duplicate += node.replica.stats().duplicates;
        self.counters.pull.add(&node.replica.pull_stats());
        let st = node.replica.stats();
        self.counters.snapshots_installed +=
            st.restores - u64::from(node.from_snapshot).min(st.restores);
        self.counters.snapshots_sent += st.snapshots_sent;
        node.timer_at = None;
        node.disk.pending.clear();
        node.disk.fsync_in_flight = false;
        node.disk.stalled = false;
        node.disk.written = node.disk.durable.clone();
        self.counters.lost_unacked += (node.acks.len() + node.peer_acks.len()) as u64;
        node.acks.clear();
        node.peer_acks.clear();
        self.counters.pending_lost += node.pending.len() as u64;
        node.pending.clear();
        let durable_own = node.disk.durable[r];
        node.lag_q.retain(|(seq, _, _)| *seq <= durable_own);
        // Floor debits lost before durable never happened (their seqs are issued again).
        let me = node.id;
        self.floor_landings
            .retain(|l| l.id.origin != me || l.id.seq <= durable_own);
        self.counters.crashes += 1;
        crate::liveness::reset(self, r);
        self.down_since[r] = Some(self.now);
        // Every link of the crashed region is cut: its peers notice after the detection delay.
        for j in 0..self.nodes.len() {
            if j != r && self.nodes[j].up && self.group[j] == self.group[r] {
                self.cut(r, j);
            }
        }
    }

    fn restart(&mut self, r: usize) {
        if let Some(n) = self.nodes.get_mut(r).filter(|n| n.up) {
            // A `crash-after-pull` that never found its window is disarmed.
            n.crash_armed = false;
        }
        if self.nodes.get(r).is_none_or(|n| n.up) {
            return;
        }
        let mut cfg = make_config(&self.cfg, self.cfg.regions[r]);
        // A lost disk: start empty and pull the region's own history back first.
        let wiped = std::mem::take(&mut self.script.wiped[r]);
        cfg.restore = wiped;
        cfg.seal_on_restore = wiped;
        // The image the disk is rebuilt from: its events move into the new replica (the
        // durable prefix of each origin), no copy.
        let mut replica = Replica::new(cfg, self.nodes[r].disk.ceiling);
        std::mem::swap(&mut self.nodes[r].replica, &mut replica);
        let old = replica;
        let before = (!wiped).then(|| crate::check::RestartView::capture(&old, &self.cfg.regions));
        // What the region showed before the crash and no longer shows after the restart
        // (re-derived later, with the same ids, once the watermark passes them again).
        let (feed_before, wm_before) = (old.feed_len(), old.watermark());
        let node = &self.nodes[r];
        // The disk holds its last durable snapshot, if any, and each origin's events after it
        // up to the durable count: those the image still holds in memory, and below its base
        // those it folded into a snapshot that was not durable yet (the history kept).
        let snap = node.disk.snapshot.clone();
        let bases: Vec<u64> = self
            .cfg
            .regions
            .iter()
            .map(|o| crate::history::base_of(&old, *o))
            .collect();
        let mut events = Vec::new();
        for (origin, mut log) in old.into_logs() {
            let Some(o) = self.region_index(origin) else {
                continue;
            };
            let durable = node.disk.durable[o];
            let from = snap
                .as_ref()
                .map_or(0, |s| crate::history::folded_seq(s, origin));
            events.extend(
                self.folded
                    .range(o, from, durable.min(bases[o]))
                    .iter()
                    .cloned(),
            );
            log.retain(|e| e.id.seq > from && e.id.seq <= durable);
            events.append(&mut log);
        }
        let node = &mut self.nodes[r];
        let replica = &mut node.replica;
        if self.cfg.inject != Some(Inject::ForgetEvidence) {
            replica.restore_evidence(node.disk.evidence.clone());
        }
        node.from_snapshot = snap.is_some();
        match &snap {
            Some(s) => {
                self.counters.restarts_from_snapshot += 1;
                if let Err(e) = replica.restore(s, events) {
                    let me = node.id;
                    self.during.failures.push((
                        "compaction",
                        format!("{me}'s own snapshot does not restore: {e}"),
                    ));
                }
            }
            None => replica.load(events),
        }
        replica.restore_watermark(node.disk.watermark);
        if replica.feed_len() < feed_before {
            self.counters.restart_feed_regressions += 1;
            self.counters.restart_feed_entries_hidden += feed_before - replica.feed_len();
        }
        if replica.watermark() < wm_before {
            self.counters.restart_watermark_regressions += 1;
        }
        if let Some(before) = before {
            crate::check::after_restart(self, r, before);
        }
        let node = &mut self.nodes[r];
        node.up = true;
        node.timer_at = None;
        // A new incarnation knows of no connection.
        node.told.iter_mut().for_each(|t| *t = false);
        if let Some(s) = self.down_since[r].take() {
            self.series.downtime.push((r, s, self.now));
        }
        crate::liveness::reset(self, r);
        self.drain(r);
        // Every reachable peer reconnects (after its own notice of the crash).
        for j in 0..self.nodes.len() {
            if j != r && self.reachable(r, j) {
                self.restore(r, j);
            }
        }
    }

    fn fsync(&mut self, i: usize, upto: u64) {
        let node = &mut self.nodes[i];
        node.disk.fsync_in_flight = false;
        while node
            .disk
            .pending
            .front()
            .is_some_and(|(idx, _)| *idx <= upto)
        {
            let Some((_, p)) = node.disk.pending.pop_front() else {
                break;
            };
            match p {
                Pend::Event(o, seq) => node.disk.durable[o] = node.disk.durable[o].max(seq),
                Pend::Ceiling(h) => node.disk.ceiling = node.disk.ceiling.max(h),
                Pend::Watermark(h) => node.disk.watermark = node.disk.watermark.max(h),
                Pend::Evidence(ev) => node.disk.evidence.push(*ev),
                Pend::Snapshot(s) => {
                    // The disk drops the events it folds: they are in the snapshot.
                    for m in &s.body.members {
                        if let Some(o) = self.cfg.regions.iter().position(|r| *r == m.region) {
                            node.disk.durable[o] = node.disk.durable[o].max(m.seq);
                        }
                    }
                    node.disk.snapshot = Some(s);
                }
            }
        }
        node.replica.handle_persisted(upto);
        while let Some(&(idx, logical, id)) = node.acks.front() {
            if idx > upto {
                break;
            }
            node.acks.pop_front();
            if self.cfg.ack_peer && id.origin == node.id {
                node.peer_acks.push_back((logical, id));
                continue;
            }
            self.acked.push((id, logical));
            if let Some(a) = self.logical_acked.get_mut(logical as usize) {
                *a = true;
            }
            if let Some(t) = self.sent_at.get(logical as usize) {
                self.accept_latencies.push(self.now.saturating_sub(*t));
            }
        }
        self.drain(i);
    }

    /// A message arrives: the replica handles it (pulls are answered by the replica
    /// itself, with an `Output::Send`).
    fn deliver(&mut self, to: usize, from: usize, epoch: u32, msg: Message) {
        let li = self.link_index(from, to);
        if self.links[li].epoch != epoch || !self.nodes[to].up {
            self.counters.messages_cut += 1;
            return;
        }
        match &msg {
            Message::Pull { .. } | Message::PullGaps { .. }
                if self.cfg.inject == Some(Inject::NoPullAnswers) =>
            {
                return;
            }
            Message::Events(events) | Message::PullAnswer { events, .. } => {
                self.counters.events_delivered += events.len() as u64;
            }
            _ => {}
        }
        if self.byz.is_some() {
            self.byz_delivered(to, from, &msg);
        }
        let now_l = local(self.now, self.nodes[to].skew);
        let from_id = self.cfg.regions[from];
        let before = crate::liveness::before_delivery(self, to, from, &msg);
        self.nodes[to].replica.handle_message(now_l, from_id, msg);
        crate::liveness::after_handling(self, to, from, &before);
        self.drain(to);
        let connected = self.nodes[to].told[from];
        crate::liveness::after_drain(self, to, from, &before, connected);
    }

    fn sample(&mut self) {
        let Some(acct) = self.chart.clone() else {
            return;
        };
        let row: Vec<Option<(i64, i64)>> = self
            .nodes
            .iter()
            .map(|n| {
                n.up.then(|| {
                    let b = n.replica.balance(&acct, CURRENCY);
                    (to_cents(b.provisional), to_cents(b.settled))
                })
            })
            .collect();
        self.series.balances.push((self.now, row));
    }

    fn step(&mut self, item: Item) {
        match item.ev {
            Ev::Deliver {
                to,
                from,
                epoch,
                msg,
            } => self.deliver(to as usize, from as usize, epoch, msg),
            Ev::Fsync { node, inc, upto } => {
                let i = node as usize;
                if self.nodes[i].inc == inc && self.nodes[i].up && !self.nodes[i].disk.stalled {
                    self.fsync(i, upto);
                }
            }
            Ev::Timer { node, inc } => {
                let i = node as usize;
                let n = &mut self.nodes[i];
                if n.inc == inc && n.up && n.timer_at == Some(item.at) {
                    n.timer_at = None;
                    let now_l = local(self.now, n.skew);
                    n.replica.handle_timeout(now_l);
                    self.drain(i);
                    self.maybe_snapshot(i, now_l);
                    self.maybe_compact(i);
                }
            }
            Ev::LinkDown { node, peer, inc } => self.link_down(node as usize, peer as usize, inc),
            Ev::LinkUp { a, b, epoch } => self.link_up(a as usize, b as usize, epoch),
            Ev::Fault(a) => self.fault(a),
            Ev::Byz => self.byz_tick(),
            Ev::Policy(k) => self.change_policy(k),
            Ev::HomeMove { account, to } => self.move_home(account as usize, to as usize),
            Ev::Sample => {
                self.sample();
                self.push(self.now + self.sample_ms, Ev::Sample);
            }
        }
    }

    /// Runs every event and submission up to simulated time `t` (inclusive).
    pub fn run_until(&mut self, t: u64) {
        loop {
            let next_item = self.queue.peek().map(|i| i.at);
            let next_sub = self
                .workload
                .submissions
                .get(self.next_sub)
                .map(|s| s.at_ms);
            let take_sub = match (next_item, next_sub) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b < a,
            };
            if take_sub {
                let at = next_sub.unwrap_or(u64::MAX);
                if at > t {
                    break;
                }
                self.now = self.now.max(at);
                let k = self.next_sub;
                self.next_sub += 1;
                self.submit(k);
            } else {
                match next_item {
                    Some(at) if at <= t => {
                        if let Some(item) = self.queue.pop() {
                            self.now = self.now.max(item.at);
                            self.step(item);
                        }
                    }
                    _ => break,
                }
            }
        }
        self.now = self.now.max(t);
    }

    /// True when every region is up, holds the same events, and its watermark passes every
    /// event.
    ///
    /// Retired regions are left out (a retired region issues nothing more and its events
    /// above the cut are refused): the others must hold the same events, the cut of every
    /// retired region included, and settle everything.
    pub fn converged(&self) -> bool {
        if self.nodes.iter().any(|n| !n.up) {
            return false;
        }
        let retired = self.retired_regions();
        if let Some(b) = self.byzantine_active().filter(|b| !retired.contains(b)) {
            // Not until the retire that ends the seed was tried (if it could not be issued,
            // the member stays frozen and the adapted checks apply).
            return self.byzantine_retire_tried() && self.converged_byzantine(b);
        }
        let live: Vec<&Node> = (0..self.nodes.len())
            .filter(|i| !retired.contains(i))
            .map(|i| &self.nodes[i])
            .collect();
        let Some(first) = live.first() else {
            return true;
        };
        let vv = first.replica.version_vector();
        if live.iter().any(|n| n.replica.version_vector() != vv) {
            return false;
        }
        if retired.iter().any(|r| {
            live.iter()
                .any(|n| n.replica.cut(self.cfg.regions[*r]).is_none())
        }) {
            return false;
        }
        let mut max_hlc = Hlc::ZERO;
        for o in &self.cfg.regions {
            if let Some(e) = first.replica.origin_events(*o, 0).last() {
                max_hlc = max_hlc.max(e.hlc);
            }
        }
        live.iter()
            .all(|n| n.replica.watermark() >= max_hlc && n.lag_q.is_empty() && n.acks.is_empty())
    }

    /// Runs the whole thing: workload with faults, then heal everything and quiesce until
    /// converged (or [`QUIESCE_MAX_MS`] passes).
    pub fn run(&mut self) {
        let fault_end = self
            .queue
            .iter()
            .filter(|i| matches!(i.ev, Ev::Fault(_)))
            .map(|i| i.at)
            .max()
            .unwrap_or(0);
        let end = self
            .workload
            .end_ms
            .max(self.cfg.scenario.end_ms())
            .max(fault_end)
            + 1;
        self.run_until(end);
        // Final phase: no more faults, everything heals and restarts.
        self.quiesce_start = self.now;
        self.faults_on = false;
        self.heal();
        for r in 0..self.nodes.len() {
            self.restart(r);
        }
        let deadline = self.now + QUIESCE_MAX_MS;
        while self.now < deadline {
            let t = self.now + 250;
            self.run_until(t);
            // A Byzantine seed ends the way an operator ends it: once every honest region
            // holds the evidence, an honest region retires the member, and settlement
            // resumes without it.
            if let Some(b) = self.byzantine_active() {
                if !self.byzantine_retire_tried() && self.converged_byzantine(b) {
                    if let Some(issuer) = (0..self.nodes.len()).find(|i| *i != b) {
                        self.change_membership(Action::Retire(issuer, vec![b]), "byzantine");
                    }
                    continue;
                }
            }
            if self.converged() {
                self.converged_at = Some(self.now);
                break;
            }
        }
        if self.cfg.record_series {
            self.sample();
        }
        for n in &self.nodes {
            self.counters.events_duplicate += n.replica.stats().duplicates;
            self.counters.pull.add(&n.replica.pull_stats());
            let st = n.replica.stats();
            if n.up {
                self.counters.snapshots_installed +=
                    st.restores - u64::from(n.from_snapshot).min(st.restores);
                self.counters.snapshots_sent += st.snapshots_sent;
            }
        }
    }
}

// ---- the Byzantine member ---------------------------------------------------------------

/// True if region `j` holds exactly `e`.
fn holds(node: &Node, e: &Event) -> bool {
    node.replica.event(e.id).is_some_and(|h| h == e)
}

impl Sim {
    /// The Byzantine region, once a forged item or evidence against it reached an honest
    /// region (from then on its settlement is frozen there: the checks compare settled
    /// prefixes instead of whole states).
    pub fn byzantine_active(&self) -> Option<usize> {
        self.byz
            .as_ref()
            .filter(|b| b.handed.iter().any(|h| *h))
            .map(|b| b.plan.region)
    }

    /// True when honest region `i` holds evidence against region `b`.
    pub fn holds_evidence(&self, i: usize, b: usize) -> bool {
        let o = self.cfg.regions[b];
        self.nodes[i]
            .replica
            .evidence()
            .iter()
            .any(|e| e.origin() == o)
    }

    /// Convergence in a Byzantine seed: every region holds the same events of every honest
    /// origin, no client waits for an acknowledgement, and every honest region holds
    /// evidence against the Byzantine one (settlement stays frozen at different points).
    fn converged_byzantine(&self, b: usize) -> bool {
        let Some(first) = self.nodes.first() else {
            return true;
        };
        let vv = first.replica.version_vector();
        for (o, origin) in self.cfg.regions.iter().enumerate() {
            if o != b
                && self
                    .nodes
                    .iter()
                    .any(|n| n.replica.version_vector().get(origin) != vv.get(origin))
            {
                return false;
            }
        }
        (0..self.nodes.len())
            .all(|i| self.nodes[i].acks.is_empty() && (i == b || self.holds_evidence(i, b)))
    }

    /// Sends a forged message of the Byzantine member: it makes sure its lie arrives (no loss,
    /// duplication or reordering; the link's FIFO order holds), over an established link only.
    fn send_forged(&mut self, from: usize, to: usize, msg: Message) {
        let li = self.link_index(from, to);
        if !self.links[li].established {
            return;
        }
        let Some(byz) = self.byz.as_mut() else {
            return;
        };
        // The shortest delay: nothing the member sends later can overtake it.
        let delay = self.cfg.faults.delay_ms.0;
        byz.forged_sent += 1;
        let bytes = wallet_core::wire::encoded_message_len(&msg);
        self.counters.messages += 1;
        self.counters.bytes += bytes as u64;
        let link = from * self.nodes.len() + to;
        let at = (self.now + delay).max(self.link_last[link]);
        self.link_last[link] = at;
        let epoch = self.links[li].epoch;
        self.push(
            at,
            Ev::Deliver {
                to: to as u8,
                from: from as u8,
                epoch,
                msg,
            },
        );
    }

    /// The member's forged items for honest region `j`: the forged heartbeat and the event
    /// that breaks it, and the forged second version if `j` holds the first.
    fn forged_for(&self, j: usize) -> Vec<Message> {
        let Some(byz) = &self.byz else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some((hb, e)) = &byz.forged_promise {
            out.push(Message::SignedHeartbeat(hb.clone()));
            // Then its events from the first the peer lacks up to the denied one, so that the
            // peer applies that one in order (a peer that lacks more takes it out of order).
            let b = byz.plan.region;
            let origin = self.cfg.regions[b];
            let held = self.nodes[j].replica.version_vector().get(&origin);
            let mut evs: Vec<Event> = Vec::new();
            if e.id.seq.saturating_sub(held) <= FORGED_CATCH_UP_MAX {
                evs = self.nodes[b]
                    .replica
                    .origin_events(origin, held)
                    .iter()
                    .take_while(|x| x.id.seq <= e.id.seq)
                    .cloned()
                    .collect();
            }
            if evs.last() != Some(e) {
                evs = vec![e.clone()];
            }
            out.push(Message::Events(evs));
        }
        if let Some((e, f)) = &byz.forged_event {
            if holds(&self.nodes[j], e) {
                out.push(Message::Events(vec![f.clone()]));
            }
        }
        out
    }

    /// A link from `from` to `to` is (re)connected: if `from` is the Byzantine member, it
    /// sends its forged items first (a restarted peer forgot the promise it was shown).
    fn byz_resend(&mut self, from: usize, to: usize) {
        if self.byz.as_ref().is_none_or(|b| b.plan.region != from) || from == to {
            return;
        }
        for m in self.forged_for(to) {
            self.send_forged(from, to, m);
        }
    }

    /// The member's timer: at the planned time it starts; an equivocating member takes its
    /// last durable event, forges a second version and sends it to every peer that holds
    /// the first, again every [`BYZANTINE_RESEND_MS`] (a member that breaks a promise waits
    /// for its next push, [`Sim::byz_outgoing`]).
    fn byz_tick(&mut self) {
        let Some((b, behaviour, started)) = self
            .byz
            .as_ref()
            .map(|z| (z.plan.region, z.plan.behaviour, z.forged_event.is_some()))
        else {
            return;
        };
        self.push(self.now + BYZANTINE_RESEND_MS, Ev::Byz);
        if behaviour != Behaviour::Equivocate || !self.nodes[b].up {
            return;
        }
        if !started {
            let node = &self.nodes[b];
            let durable = node.disk.durable[b];
            let Some(e) = durable
                .checked_sub(1)
                .and_then(|k| node.replica.origin_events(node.id, k).first())
                .cloned()
            else {
                return;
            };
            let mut f = e.clone();
            match &mut f.body {
                Body::Tx(tx) => tx.reference = Some("byzantine second version".into()),
                Body::Policy(_) | Body::Membership(_) | Body::Account(_) => {
                    f.hlc = Hlc(f.hlc.0 + 1)
                }
            }
            let Some(byz) = self.byz.as_mut() else {
                return;
            };
            f.sig = byz.auth.sign_event(&f, "wallet-sim").into();
            byz.forged_event = Some((e, f));
        }
        for j in 0..self.nodes.len() {
            if j != b && self.nodes[j].up {
                for m in self.forged_for(j) {
                    self.send_forged(b, j, m);
                }
            }
        }
    }

    /// A broadcast of the Byzantine member: its real heartbeats are remembered; once the
    /// plan has started, a member that breaks a promise takes the first event of its next
    /// push, signs a heartbeat that promises no new event at or below that event's HLC
    /// (above every promise it made before, so peers adopt it), and sends the heartbeat, its
    /// events up to that one, and the rest of the push to every connected peer, in that order
    /// and never reordered (returns true: the push is sent).
    fn byz_outgoing(&mut self, m: &Message) -> bool {
        let Some(byz) = self.byz.as_mut() else {
            return false;
        };
        let b = byz.plan.region;
        let origin = self.cfg.regions[b];
        let own_max = |evs: &[Event]| {
            evs.iter()
                .filter(|e| e.id.origin == origin)
                .map(|e| e.id.seq)
                .max()
                .unwrap_or(0)
        };
        match m {
            Message::SignedHeartbeat(h) => byz.last_hb = Some(h.hb.clone()),
            Message::PullAnswer { events, .. } => byz.sent_max = byz.sent_max.max(own_max(events)),
            Message::Events(evs)
                if byz.plan.behaviour != Behaviour::BreakPromise
                    || byz.forged_promise.is_some()
                    || self.now < byz.plan.at_ms
                    || evs.first().is_none_or(|e| e.id.seq <= byz.sent_max) =>
            {
                byz.sent_max = byz.sent_max.max(own_max(evs));
            }
            Message::Events(evs) => {
                byz.sent_max = byz.sent_max.max(own_max(evs));
                let (Some(e), Some(last)) = (evs.first(), byz.last_hb.as_ref()) else {
                    return false;
                };
                let above = Hlc(self.during.announced(b).0.saturating_add(1));
                let hb = Heartbeat {
                    origin: last.origin,
                    hlc: e.hlc.max(above),
                    seq: e.id.seq - 1,
                    vv: last.vv.clone(),
                    policy: last.policy,
                };
                let sig = byz.auth.sign_heartbeat(&hb, "wallet-sim").into();
                let (h, seq) = (hb.hlc, hb.seq);
                byz.forged_promise = Some((SignedHeartbeat { hb, sig }, e.clone()));
                self.during.note_announced(b, h);
                self.during.note_forged_promise(b, seq, h);
                // The lie, then the push itself (sent the same way, so it cannot overtake
                // the lie).
                let rest: Vec<Event> = evs.iter().skip(1).cloned().collect();
                for j in 0..self.nodes.len() {
                    if j != b {
                        for m in self.forged_for(j) {
                            self.send_forged(b, j, m);
                        }
                        if !rest.is_empty() {
                            self.send_forged(b, j, Message::Events(rest.clone()));
                        }
                    }
                }
                return true;
            }
            _ => {}
        }
        false
    }

    /// A message reaches region `to`: note whether it is a forged item of the member or
    /// evidence against it.
    fn byz_delivered(&mut self, to: usize, from: usize, msg: &Message) {
        let Some(byz) = self.byz.as_mut() else {
            return;
        };
        let b = byz.plan.region;
        if to == b {
            return;
        }
        let forged = from == b
            && match msg {
                Message::SignedHeartbeat(h) => {
                    byz.forged_promise.as_ref().is_some_and(|(f, _)| f == h)
                }
                Message::Events(v) => {
                    v.len() == 1 && byz.forged_event.as_ref().is_some_and(|(_, f)| *f == v[0])
                }
                _ => false,
            };
        if forged {
            byz.forged_delivered += 1;
        }
        let evidence = matches!(msg, Message::Evidence(ev) if ev.origin() == self.cfg.regions[b]);
        if forged || evidence {
            byz.handed[to] = true;
        }
    }

    /// An honest region just wrote evidence (not yet durable): in a Byzantine seed, crash it
    /// at once or within an fsync, now and then (at most [`BYZANTINE_BIAS_CRASHES_MAX`]), so
    /// that the window between writing the evidence and its fsync is hit.
    fn byz_bias_crash(&mut self, i: usize) {
        if !self.faults_on {
            return;
        }
        let Some(byz) = self.byz.as_mut() else {
            return;
        };
        if i == byz.plan.region || byz.bias_crashes >= BYZANTINE_BIAS_CRASHES_MAX {
            return;
        }
        if !byz.rng.chance(500_000) {
            return;
        }
        byz.bias_crashes += 1;
        let at = self.now + byz.rng.range(0, self.cfg.faults.fsync_ms.1);
        let down = byz.rng.range(300, 2_000);
        self.push(at, Ev::Fault(Action::Crash(i)));
        self.push(at + down, Ev::Fault(Action::Restart(i)));
    }
}
