//! Anti-entropy (SPEC §3): the pull scheduler, answering pulls, and what a peer is missing.
//!
//! Pushes carry new events promptly; pulls repair whatever a push lost. The scheduler keeps at
//! most one pull in flight (a *chain*: each answer that says more follows is followed at once
//! by the next pull), chooses whom to pull from, and decides when a pull is lost. Every rule
//! lives here, sans-IO, so walletd and the simulator run the same one:
//!
//! | rule | when |
//! |---|---|
//! | pull on connect | a member connects and no pull is busy, or the pull in flight was to it (lost with the old connection) |
//! | clear on disconnect | the member of the pull in flight disconnects |
//! | chain | an answer says more follows and brought something: pull the same member again (events of other origins; while restoring, own history too, judged by the state when the pull was sent: a seal may end the restore before the answer) |
//! | next member | an answer ends a chain: pull the member whose heartbeat shows the most events this region lacks |
//! | heartbeat pull | a member's previous heartbeat already showed a gap (a push was lost), no pull is busy and none went to it within `HEARTBEAT_PULL_SPACING_MS` |
//! | given up after heartbeats | `PULL_LOST_AFTER_HEARTBEATS` heartbeats from the member arrive while its pull has no answer: pull it again |
//! | time-out | no answer within `PULL_TIMEOUT_MS`: the pull is dropped and another chosen |
//! | periodic | every `anti_entropy_interval_ms` with no pull busy: the member furthest ahead, else round-robin (a safety net for lost heartbeats) |
//! | back-off | an answer that brought nothing applicable from a member that looked ahead (its events are refused, or its origin is frozen): no pull to it for `PULL_BACKOFF_MS_MIN`, doubling to `PULL_BACKOFF_MS_MAX`, reset by progress; a member in back-off is never "ahead", so it cannot starve the others |

use std::collections::{BTreeMap, BTreeSet};

use crdts::VClock;

use crate::event::Event;
use crate::id::RegionId;
use crate::message::Message;

use super::{Output, Replica};

/// Default period of the safety-net pull.
pub const ANTI_ENTROPY_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// Default number of events a pull asks for.
pub const PULL_BATCH_EVENTS_DEFAULT: u32 = 2_048;
/// Most events this region sends in one pull answer, whatever the pull asks for.
pub const PULL_ANSWER_EVENTS_MAX: u32 = 8_192;
/// A pull with no answer after this long is dropped.
pub const PULL_TIMEOUT_MS: u64 = 2_000;
/// A pull is given up (and sent again) after this many heartbeats from its member with no
/// answer: the member is alive, so the pull or its answer was lost.
pub const PULL_LOST_AFTER_HEARTBEATS: u32 = 2;
/// At most one heartbeat-triggered pull per member in this period.
pub const HEARTBEAT_PULL_SPACING_MS: u64 = 1_000;
/// First back-off after an answer that brought nothing applicable.
pub const PULL_BACKOFF_MS_MIN: u64 = 250;
/// Longest back-off.
pub const PULL_BACKOFF_MS_MAX: u64 = 30_000;

const _: () = assert!(PULL_BACKOFF_MS_MIN <= PULL_BACKOFF_MS_MAX);
const _: () = assert!(PULL_BATCH_EVENTS_DEFAULT <= PULL_ANSWER_EVENTS_MAX);

/// Anti-entropy counters (monotonic), to see each rule fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullStats {
    /// Pulls sent.
    pub sent: u64,
    /// Pulls answered.
    pub answered: u64,
    /// Pulls answered by this region.
    pub served: u64,
    /// Pulls sent because a member connected.
    pub on_connect: u64,
    /// Pulls in flight cleared because their member disconnected.
    pub cleared_on_disconnect: u64,
    /// Pulls given up after heartbeats from their member with no answer.
    pub given_up: u64,
    /// Pulls dropped after `PULL_TIMEOUT_MS`.
    pub timed_out: u64,
    /// Pulls sent because a heartbeat showed a gap.
    pub on_heartbeat: u64,
    /// Periodic pulls.
    pub periodic: u64,
    /// Back-offs started (answers that brought nothing applicable).
    pub backoffs: u64,
}

impl PullStats {
    /// Adds another set of counters (another region, or an earlier incarnation), saturating.
    pub fn add(&mut self, o: &PullStats) {
        let PullStats {
            sent,
            answered,
            served,
            on_connect,
            cleared_on_disconnect,
            given_up,
            timed_out,
            on_heartbeat,
            periodic,
            backoffs,
        } = *o;
        self.sent = self.sent.saturating_add(sent);
        self.answered = self.answered.saturating_add(answered);
        self.served = self.served.saturating_add(served);
        self.on_connect = self.on_connect.saturating_add(on_connect);
        self.cleared_on_disconnect = self
            .cleared_on_disconnect
            .saturating_add(cleared_on_disconnect);
        self.given_up = self.given_up.saturating_add(given_up);
        self.timed_out = self.timed_out.saturating_add(timed_out);
        self.on_heartbeat = self.on_heartbeat.saturating_add(on_heartbeat);
        self.periodic = self.periodic.saturating_add(periodic);
        self.backoffs = self.backoffs.saturating_add(backoffs);
    }
}

/// The pull in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    to: RegionId,
    sent_ms: u64,
    /// Heartbeats from `to` since it was sent.
    heartbeats: u32,
    /// Events of other origins held when it was sent: an answer that leaves this unchanged
    /// brought nothing applicable.
    held_before: u64,
    /// Own events held when it was sent, and whether the region was restoring then (its own
    /// history coming back is progress too, even if the restore ended meanwhile: a rebuilt
    /// region's seal).
    own_before: u64,
    restoring: bool,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    until_ms: u64,
    step_ms: u64,
}

/// The scheduler's state.
#[derive(Debug, Default)]
pub(crate) struct PullScheduler {
    connected: BTreeSet<RegionId>,
    in_flight: Option<InFlight>,
    last_pull_ms: BTreeMap<RegionId, u64>,
    backoff: BTreeMap<RegionId, Backoff>,
    round_robin: u64,
    next_periodic_ms: u64,
    pub(crate) stats: PullStats,
}

impl PullScheduler {
    /// The earliest deadline the scheduler has: the periodic pull, or the time-out of the
    /// pull in flight.
    pub(crate) fn deadline(&self) -> u64 {
        let timeout = self
            .in_flight
            .map(|p| p.sent_ms.saturating_add(PULL_TIMEOUT_MS));
        match timeout {
            Some(t) => t.min(self.next_periodic_ms),
            None => self.next_periodic_ms,
        }
    }

    fn busy(&self, now_ms: u64) -> bool {
        self.in_flight
            .is_some_and(|p| now_ms < p.sent_ms.saturating_add(PULL_TIMEOUT_MS))
    }

    fn in_flight_to(&self, r: RegionId) -> bool {
        self.in_flight.is_some_and(|p| p.to == r)
    }

    fn backing_off(&self, r: RegionId, now_ms: u64) -> bool {
        self.backoff.get(&r).is_some_and(|b| now_ms < b.until_ms)
    }

    /// Members currently connected.
    pub(crate) fn connected(&self) -> &BTreeSet<RegionId> {
        &self.connected
    }
}

impl Replica {
    // ---- inputs -------------------------------------------------------------------------

    /// A member connected (or reconnected): pull from it unless a pull to another member is
    /// busy. A pull in flight to it was lost with the old connection and is sent again.
    pub fn handle_connected(&mut self, now_ms: u64, member: RegionId) {
        if !self.is_peer(member) {
            return;
        }
        self.pull.connected.insert(member);
        self.announce_ack_peer(Some(member));
        let lost = self.pull.in_flight_to(member);
        if lost || !self.pull.busy(now_ms) {
            self.pull.stats.on_connect += 1;
            self.pull_from(now_ms, member);
        }
    }

    /// A member disconnected: a pull in flight to it will never be answered.
    pub fn handle_disconnected(&mut self, _now_ms: u64, member: RegionId) {
        self.pull.connected.remove(&member);
        if self.pull.in_flight_to(member) {
            self.pull.in_flight = None;
            self.pull.stats.cleared_on_disconnect += 1;
        }
    }

    /// Members this region counts as connected (as the host reported them).
    pub fn connected_members(&self) -> Vec<RegionId> {
        self.pull.connected().iter().copied().collect()
    }

    /// Anti-entropy counters.
    pub fn pull_stats(&self) -> PullStats {
        self.pull.stats
    }

    /// A pull from a member: answered at once, to that member only, with what it lacks (at
    /// most `limit`, capped by [`PULL_ANSWER_EVENTS_MAX`]) and whether more follows.
    pub(super) fn answer_pull(
        &mut self,
        from: RegionId,
        vv: &VClock<RegionId>,
        upto: &VClock<RegionId>,
        limit: u32,
    ) {
        if !self.is_peer(from) {
            return;
        }
        if self.answer_with_snapshot(from, vv) {
            self.pull.stats.served += 1;
            return;
        }
        let limit = limit.clamp(1, PULL_ANSWER_EVENTS_MAX) as usize;
        let mut events = self.missing_for_gaps(vv, upto, limit.saturating_add(1));
        let more = events.len() > limit;
        events.truncate(limit);
        self.pull.stats.served += 1;
        self.outputs.push_back(Output::Send {
            to: from,
            msg: Message::PullAnswer { events, more },
        });
    }

    /// The answer to a pull: merged like any events; then the chain goes on (more follows),
    /// moves to the member furthest ahead, or backs off from a member whose answers bring
    /// nothing applicable.
    pub(super) fn handle_pull_answer(
        &mut self,
        now_ms: u64,
        from: RegionId,
        events: Vec<Event>,
        more: bool,
    ) {
        self.handle_events(now_ms, from, events);
        let Some(p) = self.pull.in_flight.filter(|p| p.to == from) else {
            return; // late, or not ours: the events are merged all the same
        };
        self.pull.in_flight = None;
        self.pull.stats.answered += 1;
        let (others, own) = self.held();
        let progress = others > p.held_before || (p.restoring && own > p.own_before);
        if progress {
            self.pull.backoff.remove(&from);
        } else if more || self.member_lacks(from) {
            // It claims (or its heartbeat claims) events this region cannot apply: do not
            // ask again at round-trip speed.
            let step = self
                .pull
                .backoff
                .get(&from)
                .map(|b| b.step_ms.saturating_mul(2))
                .unwrap_or(PULL_BACKOFF_MS_MIN)
                .clamp(PULL_BACKOFF_MS_MIN, PULL_BACKOFF_MS_MAX);
            self.pull.backoff.insert(
                from,
                Backoff {
                    until_ms: now_ms.saturating_add(step),
                    step_ms: step,
                },
            );
            self.pull.stats.backoffs += 1;
        }
        if more && progress {
            self.pull_from(now_ms, from);
        } else if let Some(next) = self.peer_ahead(now_ms) {
            self.pull_from(now_ms, next);
        }
    }

    /// A chunk of a snapshot transfer came from `from` (replica/transfer.rs): the pull in
    /// flight to it goes on, its time-out counted again from now.
    pub(super) fn pull_goes_on(&mut self, now_ms: u64, from: RegionId) {
        if let Some(p) = self.pull.in_flight.as_mut().filter(|p| p.to == from) {
            p.sent_ms = now_ms;
            p.heartbeats = 0;
        }
    }

    /// After a heartbeat from `from` was accepted. `behind` says whether its PREVIOUS
    /// heartbeat already showed events this region lacks: what it announces now may still be
    /// in flight as pushes, and pulling it would fetch those events twice.
    pub(super) fn pull_on_heartbeat(&mut self, now_ms: u64, from: RegionId, behind: bool) {
        let mut lost = false;
        if let Some(p) = self.pull.in_flight.as_mut().filter(|p| p.to == from) {
            p.heartbeats = p.heartbeats.saturating_add(1);
            lost = p.heartbeats >= PULL_LOST_AFTER_HEARTBEATS;
        }
        if !behind || !self.pull.connected.contains(&from) || self.pull.backing_off(from, now_ms) {
            return;
        }
        let recent = self
            .pull
            .last_pull_ms
            .get(&from)
            .is_some_and(|t| now_ms < t.saturating_add(HEARTBEAT_PULL_SPACING_MS));
        if lost {
            self.pull.stats.given_up += 1;
            self.pull_from(now_ms, from);
        } else if !recent && !self.pull.busy(now_ms) {
            self.pull.stats.on_heartbeat += 1;
            self.pull_from(now_ms, from);
        }
    }

    /// Time passes: a pull with no answer times out; the periodic pull is sent when due.
    pub(super) fn pull_on_timeout(&mut self, now_ms: u64) {
        if let Some(p) = self.pull.in_flight {
            if now_ms >= p.sent_ms.saturating_add(PULL_TIMEOUT_MS) {
                self.pull.in_flight = None;
                self.pull.stats.timed_out += 1;
            }
        }
        if now_ms < self.pull.next_periodic_ms {
            return;
        }
        self.pull.next_periodic_ms = now_ms.saturating_add(self.cfg.anti_entropy_interval_ms);
        if self.pull.busy(now_ms) {
            return;
        }
        let target = self.peer_ahead(now_ms).or_else(|| {
            // Round-robin over connected members not backing off.
            let peers: Vec<RegionId> = self
                .pull
                .connected
                .iter()
                .copied()
                .filter(|r| !self.pull.backing_off(*r, now_ms))
                .collect();
            let n = u64::try_from(peers.len()).ok().filter(|n| *n > 0)?;
            self.pull.round_robin = self.pull.round_robin.wrapping_add(1);
            let i = usize::try_from(self.pull.round_robin % n).ok()?;
            peers.get(i).copied()
        });
        if let Some(r) = target {
            self.pull.stats.periodic += 1;
            self.pull_from(now_ms, r);
        }
    }

    // ---- decisions ------------------------------------------------------------------------

    fn pull_from(&mut self, now_ms: u64, to: RegionId) {
        self.pull.last_pull_ms.insert(to, now_ms);
        let (held_before, own_before) = self.held();
        self.pull.in_flight = Some(InFlight {
            to,
            sent_ms: now_ms,
            heartbeats: 0,
            held_before,
            own_before,
            restoring: self.restoring,
        });
        self.pull.stats.sent += 1;
        let msg = self.pull_request(self.cfg.pull_batch_events);
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// Events held of other origins, and own ones: what an answer can bring is the first.
    /// Own events issued while a pull is in flight (a waiting debit decided, a rights
    /// transfer) are no progress of it, unless the pull was sent while restoring (a
    /// restoring region issues nothing: its own history coming back is progress).
    fn held(&self) -> (u64, u64) {
        let own = self.own_log_len();
        (self.logs.event_count().saturating_sub(own), own)
    }

    /// True when `member`'s last heartbeat shows events this region lacks and could apply.
    fn member_lacks(&self, member: RegionId) -> bool {
        self.member_vv(member)
            .is_some_and(|vv| self.logs.events_lacking(vv) > 0)
    }

    /// The connected member, not backing off, whose last heartbeat shows the most events this
    /// region lacks (ties to the lowest region id).
    fn peer_ahead(&self, now_ms: u64) -> Option<RegionId> {
        self.pull
            .connected
            .iter()
            .filter(|r| !self.pull.backing_off(**r, now_ms))
            .filter_map(|r| Some((self.logs.events_lacking(self.member_vv(*r)?), *r)))
            .filter(|(lack, _)| *lack > 0)
            .max_by_key(|(lack, r)| (*lack, std::cmp::Reverse(*r)))
            .map(|(_, r)| r)
    }

    // ---- what a peer is missing -------------------------------------------------------------

    /// Anti-entropy: the events a peer with version vector `theirs` is missing, origin by
    /// origin, at most `limit`.
    pub fn missing_for(&self, theirs: &VClock<RegionId>, limit: usize) -> Vec<Event> {
        self.missing_for_gaps(theirs, &VClock::new(), limit)
    }

    /// Anti-entropy for [`Message::PullGaps`]: like [`Replica::missing_for`], but for each
    /// origin in `upto` only the events below that seq (the requester holds the rest). Only
    /// durable own events leave this region.
    pub fn missing_for_gaps(
        &self,
        theirs: &VClock<RegionId>,
        upto: &VClock<RegionId>,
        limit: usize,
    ) -> Vec<Event> {
        self.logs.missing_for_gaps(
            self.cfg.region,
            self.dur.own_durable_seq,
            theirs,
            upto,
            limit,
        )
    }

    /// How many events a member's version vector (from its last heartbeat) holds that this
    /// region lacks and could apply: origins that are not members, or frozen after
    /// equivocation, count nothing (a pull could never bring them). Saturating: peer-supplied
    /// counts never overflow.
    pub fn events_lacking(&self, theirs: &VClock<RegionId>) -> u64 {
        self.logs.events_lacking(theirs)
    }

    /// The version vector a member announced in its last accepted heartbeat.
    pub fn member_vv(&self, member: RegionId) -> Option<&VClock<RegionId>> {
        self.logs
            .members
            .get(&member)
            .filter(|m| m.heard)
            .map(|m| &m.vv)
    }

    /// A pull request: a [`Message::PullGaps`] when events are buffered out of order (so they
    /// are not fetched again), else a plain [`Message::Pull`].
    pub fn pull_request(&self, limit: u32) -> Message {
        let (vv, upto) = self.logs.pull_window();
        if upto.dots.is_empty() {
            Message::Pull { vv, limit }
        } else {
            Message::PullGaps { vv, upto, limit }
        }
    }
}
