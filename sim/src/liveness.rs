//! Liveness and efficiency of anti-entropy, checked while the run goes on.
//!
//! The safety invariants ([`crate::check`]) hold as long as anti-entropy converges
//! *eventually*: a replica that drops an out-of-order event, never continues a catch-up
//! chain, pulls a useless member at round-trip speed, or waits out the 2 s time-out for a
//! lost pull still converges, only later or with more traffic. These checks bound that.
//!
//! They watch the messages and connection events the engine hands the replicas (never the
//! replica's private scheduler state) and hold each region to what SPEC §3 and the core's
//! published constants (`wallet_core::replica::pull`) promise. Each one fires only where the
//! engine can be *sure* the promise applies: when the engine's view is ambiguous (a pull
//! whose time-out is due, a message the replica refused, a pull sent on reconnect), it checks
//! nothing, so an honest replica can never fail them whatever the draws:
//!
//! | invariant | bound |
//! |---|---|
//! | `no_refetch` | a pull never asks for an event this incarnation of the region was already handed and kept (buffered out of order): the request's range per origin, `(vv, upto)`, contains no such event. Bound: zero events fetched twice by design |
//! | `pull_chain` | an answer that says more follows and brought events is followed, in the same step, by the next pull to the same member: a backlog of `B` events is fetched in `ceil(B / pull_limit)` round trips, not one per heartbeat or periodic pull |
//! | `pull_backoff` | after an answer that brought nothing from a member that still looks ahead (or said more follows), no pull to that member for [`PULL_BACKOFF_MS_MIN`] (a reconnect excepted: the core pulls a member that connects whatever its back-off) |
//! | `pull_given_up` | a pull that the network lost (the request, or its answer) while its member keeps showing events this region lacks is replaced by the time `2 × PULL_LOST_AFTER_HEARTBEATS` heartbeats of that member have arrived: about 1 s at the 250 ms heartbeat, half the [`PULL_TIMEOUT_MS`] time-out |
//!
//! The engine's view of "the pull in flight" of a region is the last pull it sent, until an
//! answer from that member arrives, the member disconnects, the region crashes, or
//! [`PULL_TIMEOUT_MS`] of its local clock pass (from then on the replica may have dropped it,
//! so nothing is checked against it).

use std::collections::{BTreeMap, BTreeSet};

use wallet_core::replica::pull::{
    PULL_BACKOFF_MS_MIN, PULL_LOST_AFTER_HEARTBEATS, PULL_TIMEOUT_MS,
};
use wallet_core::{Message, RegionId, Replica};

use crate::engine::Sim;

/// Heartbeats of a member, each showing events the region lacks, after which a lost pull to
/// it must have been replaced (the core gives it up after `PULL_LOST_AFTER_HEARTBEATS`; the
/// factor two is margin for heartbeats the engine counts and the replica may not).
pub const GIVE_UP_HEARTBEATS: u32 = 2 * PULL_LOST_AFTER_HEARTBEATS;

/// The pull of a region the engine saw it send last.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    to: usize,
    /// Local time of the sender when it was sent.
    sent_local: u64,
    /// The request or its answer was lost by the network.
    lost: bool,
    /// Sent while the region was told a member connected (exempt from the back-off and
    /// give-up checks: the core pulls a member that connects whatever its back-off).
    on_connect: bool,
    /// Events the region held when it sent it (the core sends a pull as the last step of
    /// an input: no input merges events after sending one, so this is the count once the
    /// input is handled).
    held: u64,
    /// Heartbeats of `to` the region accepted since.
    heartbeats: u32,
}

/// State of the liveness checks (one per run).
#[derive(Debug, Default)]
pub struct PullWatch {
    inflight: Vec<Option<Tracked>>,
    /// Pulls each region sent (to see whether an input produced one).
    pulls: Vec<u64>,
    /// Per region and member: local time until which the region is surely backing off.
    backoff_until: Vec<Vec<u64>>,
    /// Per region and origin: seqs this incarnation was handed and did not hold after
    /// handling them (buffered out of order, as far as the engine can tell).
    received: Vec<BTreeMap<RegionId, BTreeSet<u64>>>,
    /// Per region: events rejected or dropped by the replica when last looked at.
    discarded: Vec<u64>,
    /// A region is being told that a member connected.
    in_connect: bool,
    scratch: Vec<(RegionId, u64)>,
    /// Events of other origins the last answer brought (lacking before it, held after it):
    /// an own event the replica issued while handling it (an escrow debit its rights let go
    /// ahead) is not something the answer brought.
    brought: u64,
}

/// How many liveness checks ran (part of the JSON `checks_during_run` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LivenessCounts {
    /// Pull requests checked against the events their region was handed (`no_refetch`).
    pub pull_requests: u64,
    /// Events handed to a region that it buffered out of order.
    pub events_buffered: u64,
    /// Answers that said more follows and brought events (`pull_chain`).
    pub chain_answers: u64,
    /// Answers after which the region surely backs off (`pull_backoff`).
    pub backoffs: u64,
    /// Pulls the network lost (request or answer).
    pub lost_pulls: u64,
    /// Heartbeats showing a gap that arrived while a lost pull to their sender was out
    /// (`pull_given_up`).
    pub lost_pull_heartbeats: u64,
}

impl PullWatch {
    /// For a run of `n` regions.
    pub fn new(n: usize) -> PullWatch {
        PullWatch {
            inflight: vec![None; n],
            pulls: vec![0; n],
            backoff_until: vec![vec![0; n]; n],
            received: vec![BTreeMap::new(); n],
            discarded: vec![0; n],
            ..PullWatch::default()
        }
    }
}

fn discarded(r: &Replica) -> u64 {
    let s = r.stats();
    // Events of a retired region above its cut are refused, dropped from the buffer or
    // voided: gone legitimately, like a rejected event. So are events of an origin's old
    // epoch, dropped from the buffer (or voided) when its seal arrives (docs/protocol.md §12):
    // the seq is asked for again, for the new epoch's event.
    let m = r.membership_stats();
    s.rejected
        .saturating_add(s.dropped)
        .saturating_add(m.refused_above_cut)
        .saturating_add(m.voided)
        .saturating_add(r.seal_stats().old_epoch_dropped)
}

fn lacks_from(r: &Replica, member: RegionId) -> bool {
    r.member_vv(member)
        .is_some_and(|vv| r.events_lacking(vv) > 0)
}

/// A region crashed or restarted: its pull, back-offs and buffered events are gone.
pub fn reset(sim: &mut Sim, i: usize) {
    let w = &mut sim.watch;
    if let Some(x) = w.inflight.get_mut(i) {
        *x = None;
    }
    if let Some(b) = w.backoff_until.get_mut(i) {
        b.iter_mut().for_each(|t| *t = 0);
    }
    if let Some(m) = w.received.get_mut(i) {
        m.clear();
    }
    sim.watch.discarded[i] = discarded(&sim.nodes[i].replica);
}

/// Region `i` is told about a connection (`handle_connected`): pulls it sends meanwhile are
/// exempt from the back-off and give-up checks.
pub fn connecting(sim: &mut Sim, on: bool) {
    sim.watch.in_connect = on;
}

/// Region `i` is told that member `j` disconnected: its pull to `j` is cleared.
pub fn disconnected(sim: &mut Sim, i: usize, j: usize) {
    if let Some(x) = sim.watch.inflight.get_mut(i) {
        if x.is_some_and(|t| t.to == j) {
            *x = None;
        }
    }
}

/// Region `i` sends a pull request to `j` (before the network takes it): checked against the
/// events it was handed (`no_refetch`) and its back-offs (`pull_backoff`), then tracked.
pub fn pull_sent(sim: &mut Sim, i: usize, j: usize, msg: &Message) {
    let (vv, upto) = match msg {
        Message::Pull { vv, .. } => (vv, None),
        Message::PullGaps { vv, upto, .. } => (vv, Some(upto)),
        _ => return,
    };
    let now_l = sim.local_time(i);
    let (now, me, to) = (sim.now, sim.cfg.regions[i], sim.cfg.regions[j]);
    let d = discarded(&sim.nodes[i].replica);
    let held = sim.nodes[i].replica.event_count();
    // The Byzantine member's events (in a Byzantine seed) are exempt: a region that holds
    // evidence against it keeps what it was handed of it unapplied, and may ask again.
    let exempt = sim.byz.as_ref().map(|b| sim.cfg.regions[b.plan.region]);
    let w = &mut sim.watch;
    // Something was refused or dropped since: what it was handed may be gone legitimately.
    if d != w.discarded[i] {
        w.discarded[i] = d;
        w.received[i].clear();
    }
    sim.during.counts.liveness.pull_requests += 1;
    let mut refetch = None;
    for (origin, seqs) in w.received[i].iter_mut() {
        if Some(*origin) == exempt {
            continue;
        }
        let have = vv.get(origin);
        // Held now: nothing to check.
        *seqs = seqs.split_off(&have.saturating_add(1));
        let below = upto.and_then(|u| u.dots.get(origin).copied());
        if let Some(s) = seqs.iter().next() {
            if below.is_none_or(|b| *s < b) && refetch.is_none() {
                refetch = Some((*origin, *s, below));
            }
        }
    }
    let backing_off = !w.in_connect && now_l < w.backoff_until[i][j];
    let until = w.backoff_until[i][j];
    w.pulls[i] += 1;
    w.inflight[i] = Some(Tracked {
        to: j,
        sent_local: now_l,
        lost: false,
        on_connect: w.in_connect,
        held,
        heartbeats: 0,
    });
    if let Some((origin, s, below)) = refetch {
        let upto = below.map_or("no gap bound".to_string(), |b| format!("upto {b}"));
        sim.during.fail(
            "no_refetch",
            now,
            format!(
                "{me} pulls {to} for {origin}:{s} again (its request asks {origin} above {} with {upto}), although it was handed that event and kept it",
                vv.get(&origin)
            ),
        );
    }
    if backing_off {
        sim.during.fail(
            "pull_backoff",
            now,
            format!(
                "{me} pulls {to} at local {now_l} ms, {} ms after an answer of {to} that brought nothing (back-off at least {PULL_BACKOFF_MS_MIN} ms)",
                PULL_BACKOFF_MS_MIN.saturating_sub(until.saturating_sub(now_l))
            ),
        );
    }
}

/// The network lost region `i`'s pull request (or the answer to it, sent by `from`).
pub fn pull_lost(sim: &mut Sim, i: usize, from: usize) {
    if let Some(Some(t)) = sim.watch.inflight.get_mut(i) {
        if t.to == from && !t.lost {
            t.lost = true;
            sim.during.counts.liveness.lost_pulls += 1;
        }
    }
}

/// What a delivery looked like before the replica handled it.
#[derive(Debug)]
pub struct Before {
    discarded: u64,
    reports: u64,
    pulls: u64,
    tracked: Option<Tracked>,
    kind: Kind,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Events,
    Answer { more: bool },
    Heartbeat { behind: bool },
    Other,
}

/// Before region `to` handles `msg` from `from`.
pub fn before_delivery(sim: &mut Sim, to: usize, from: usize, msg: &Message) -> Before {
    let r = &sim.nodes[to].replica;
    let from_id = sim.cfg.regions[from];
    let me = sim.cfg.regions[to];
    let kind = match msg {
        Message::Events(_) => Kind::Events,
        Message::PullAnswer { more, .. } => Kind::Answer { more: *more },
        Message::Heartbeat(_) | Message::SignedHeartbeat(_) => Kind::Heartbeat {
            behind: lacks_from(r, from_id),
        },
        _ => Kind::Other,
    };
    if let Message::Events(events) | Message::PullAnswer { events, .. } = msg {
        let vv = r.version_vector();
        let w = &mut sim.watch;
        w.scratch.clear();
        w.scratch.extend(
            events
                .iter()
                .filter(|e| e.id.origin != me && e.id.seq > vv.get(&e.id.origin))
                .map(|e| (e.id.origin, e.id.seq)),
        );
    }
    Before {
        discarded: discarded(r),
        reports: sim.counters.reports.iter().sum(),
        pulls: sim.watch.pulls[to],
        tracked: sim.watch.inflight[to].filter(|t| t.to == from),
        kind,
    }
}

/// After region `to` handled the message, before its outputs are drained: records what it
/// kept out of order and whether it surely backs off from `from`.
pub fn after_handling(sim: &mut Sim, to: usize, from: usize, b: &Before) {
    let r = &sim.nodes[to].replica;
    let now_l = sim.local_time(to);
    let held = r.event_count();
    let clean = discarded(r) == b.discarded;
    if let Kind::Answer { .. } = b.kind {
        let vv = r.version_vector();
        let brought = sim.watch.scratch.iter().filter(|(o, q)| *q <= vv.get(o));
        sim.watch.brought = brought.count() as u64;
    }
    if matches!(b.kind, Kind::Events | Kind::Answer { .. }) && clean {
        let vv = r.version_vector();
        let w = &mut sim.watch;
        for (origin, seq) in w.scratch.drain(..) {
            if seq > vv.get(&origin) && w.received[to].entry(origin).or_default().insert(seq) {
                sim.during.counts.liveness.events_buffered += 1;
            }
        }
    }
    if let Kind::Answer { more } = b.kind {
        let from_id = sim.cfg.regions[from];
        let sure = b.tracked.and_then(|t| {
            let live = now_l < t.sent_local.saturating_add(PULL_TIMEOUT_MS);
            (live && held == t.held && (more || lacks_from(r, from_id))).then_some(())
        });
        let w = &mut sim.watch;
        if b.tracked.is_some() {
            w.inflight[to] = None;
        }
        w.backoff_until[to][from] = match sure {
            Some(()) => {
                sim.during.counts.liveness.backoffs += 1;
                now_l.saturating_add(PULL_BACKOFF_MS_MIN)
            }
            None => 0,
        };
    }
}

/// After region `to`'s outputs for the message were drained: the chain went on
/// (`pull_chain`), a lost pull was given up (`pull_given_up`).
pub fn after_drain(sim: &mut Sim, to: usize, from: usize, b: &Before, connected: bool) {
    let now_l = sim.local_time(to);
    let (now, me, them) = (sim.now, sim.cfg.regions[to], sim.cfg.regions[from]);
    let r = &sim.nodes[to].replica;
    let pulled_from = |sim: &Sim| {
        sim.watch.pulls[to] > b.pulls && sim.watch.inflight[to].is_some_and(|t| t.to == from)
    };
    match b.kind {
        Kind::Answer { more: true } => {
            let Some(t) = b.tracked else { return };
            let live = now_l < t.sent_local.saturating_add(PULL_TIMEOUT_MS);
            let n = sim.watch.brought;
            if !live || n == 0 {
                return;
            }
            sim.during.counts.liveness.chain_answers += 1;
            if !pulled_from(sim) {
                sim.during.fail(
                    "pull_chain",
                    now,
                    format!("{me} applied {n} events of an answer of {them} that says more follows, and did not pull {them} again"),
                );
            }
        }
        Kind::Heartbeat { behind } => {
            let Some(t) = b.tracked else { return };
            let accepted = discarded(r) == b.discarded
                && sim.counters.reports.iter().sum::<u64>() == b.reports;
            if !accepted {
                return;
            }
            // Counted on the pull it was sent for, unless another pull replaced it.
            if sim.watch.pulls[to] == b.pulls {
                if let Some(Some(x)) = sim.watch.inflight.get_mut(to) {
                    x.heartbeats = x.heartbeats.saturating_add(1);
                }
            }
            let heartbeats = t.heartbeats.saturating_add(1);
            let live = now_l < t.sent_local.saturating_add(PULL_TIMEOUT_MS);
            if !t.lost || t.on_connect || !behind || !live || !connected {
                return;
            }
            sim.during.counts.liveness.lost_pull_heartbeats += 1;
            if heartbeats >= GIVE_UP_HEARTBEATS && sim.watch.pulls[to] == b.pulls {
                sim.during.fail(
                    "pull_given_up",
                    now,
                    format!(
                        "{me}'s pull to {them} was lost {} ms ago (local), {heartbeats} heartbeats of {them} showing a gap have arrived since, and {me} has not pulled again",
                        now_l.saturating_sub(t.sent_local)
                    ),
                );
            }
        }
        _ => {}
    }
}
