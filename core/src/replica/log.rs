//! Per-origin logs (SPEC §3): each origin's events in seq order without gaps, the events
//! buffered out of order behind a gap, and what each member last announced. The version vector
//! is derived from the logs' lengths and kept beside them.

use std::collections::BTreeMap;

use crdts::{CmRDT, Dot, VClock};

use crate::event::Event;
use crate::id::{EventId, Hlc, RegionId};
use crate::message::SignedHeartbeat;
use crate::policy::PolicyHash;

#[derive(Debug, Default)]
pub(crate) struct Member {
    /// Its events in memory: seqs `base + 1 ..`, gap-free.
    pub(crate) log: Vec<Event>,
    /// Events folded into a snapshot and dropped from memory (issue 13): seqs `1 ..= base`.
    pub(crate) base: u64,
    /// The HLC of seq `base` (its next event must be above it).
    pub(crate) base_hlc: Hlc,
    /// Dropped events that still hold an idempotency key within retention, by seq: kept for
    /// the duplicate rule only (docs/protocol.md §10, §11).
    pub(crate) retained: BTreeMap<u64, Event>,
    pub(crate) pending: BTreeMap<u64, Event>,
    /// Highest announced heartbeat, signed: the promise checked on later events, and half of
    /// the evidence when one breaks it.
    pub(crate) promise: Option<SignedHeartbeat>,
    /// Heartbeats not yet covered by the log: seq -> hlc (at most
    /// [`PENDING_HEARTBEATS_MAX`], the lowest seq evicted first).
    pub(crate) pending_hb: BTreeMap<u64, Hlc>,
    /// This member's contribution to the watermark.
    pub(crate) covered: Hlc,
    /// The signed heartbeat that raised `covered` to its HLC, kept while a later promise
    /// replaces `promise`: an event below `covered` that contradicts it is proof (a broken
    /// promise), not just a late event.
    pub(crate) covering: Option<SignedHeartbeat>,
    /// Last version vector it announced.
    pub(crate) vv: VClock<RegionId>,
    /// Its seed policy, once heard.
    pub(crate) policy: Option<PolicyHash>,
    pub(crate) heard: bool,
    pub(crate) equivocated: bool,
    /// The highest seq applied for now: while a retire of this region waits for its cut, the
    /// seq this region acknowledged (or held when it applied the retire); then the cut.
    pub(crate) cap: Option<u64>,
    /// Retired: its cut, once every remaining member acknowledged.
    pub(crate) cut: Option<u64>,
    /// Rebuilding after a lost disk: the seq this region answered its seal query with;
    /// nothing above it is applied until its seal arrives (docs/protocol.md §12).
    pub(crate) seal_cap: Option<u64>,
    /// The HLC of its join; `None` for a founding member.
    pub(crate) joined: Option<Hlc>,
}

impl Member {
    /// The highest seq applied for now: a retire's cap, or a seal query's answer.
    pub(crate) fn applies_up_to(&self) -> Option<u64> {
        match (self.cap, self.seal_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Events of this origin held without gaps, dropped ones included: the next seq is one
    /// more.
    pub(crate) fn len(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// The HLC of the last event held (in memory, or dropped into a snapshot).
    pub(crate) fn last_hlc(&self) -> Option<Hlc> {
        match self.log.last() {
            Some(e) => Some(e.hlc),
            None => (self.base > 0).then_some(self.base_hlc),
        }
    }

    /// The event with this seq: in memory, or dropped but retained for its key.
    pub(crate) fn get(&self, seq: u64) -> Option<&Event> {
        if seq <= self.base {
            return self.retained.get(&seq);
        }
        let i = usize::try_from(seq - self.base - 1).ok()?;
        self.log.get(i)
    }

    /// The events in memory with seqs in `from + 1 ..= to` (those dropped are not).
    pub(crate) fn slice(&self, from: u64, to: u64) -> &[Event] {
        let a = usize::try_from(from.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        let b = usize::try_from(to.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        self.log.get(a..b.max(a)).unwrap_or(&[])
    }

    /// Seqs up to which every event has an HLC at or below `at` (dropped ones included).
    pub(crate) fn seq_at(&self, at: Hlc) -> u64 {
        self.base + self.log.partition_point(|e| e.hlc <= at) as u64
    }
}

/// Every member's log.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    pub(crate) members: BTreeMap<RegionId, Member>,
    /// Per origin, the highest seq held without gaps.
    pub(crate) vv: VClock<RegionId>,
}

impl Logs {
    pub(crate) fn new(me: RegionId, members: &[RegionId]) -> Logs {
        let mut map = BTreeMap::new();
        for m in members {
            map.insert(*m, Member::default());
        }
        map.entry(me).or_default();
        Logs {
            members: map,
            vv: VClock::new(),
        }
    }

    /// An event by id.
    pub(crate) fn event(&self, id: EventId) -> Option<&Event> {
        log_event(&self.members, id)
    }

    /// Events held of one origin, without gaps.
    pub(crate) fn len_of(&self, origin: RegionId) -> u64 {
        self.members.get(&origin).map(Member::len).unwrap_or(0)
    }

    /// Events held, all origins.
    pub(crate) fn event_count(&self) -> u64 {
        self.members.values().map(Member::len).sum()
    }

    /// Events of one origin after `after_seq`, in seq order.
    pub(crate) fn origin_events(&self, origin: RegionId, after_seq: u64) -> &[Event] {
        let Some(m) = self.members.get(&origin) else {
            return &[];
        };
        m.slice(after_seq, u64::MAX)
    }

    /// Appends the next gap-free event of its origin and advances the version vector.
    /// False (and nothing changes) for a non-member or an event that is not the next one.
    pub(crate) fn push(&mut self, event: Event) -> bool {
        let origin = event.id.origin;
        let Some(m) = self.members.get_mut(&origin) else {
            return false;
        };
        // Gap-free per origin: a bug, not an input, if it does not hold.
        debug_assert_eq!(event.id.seq, m.len() + 1, "gap in the log of {origin}");
        if event.id.seq != m.len() + 1 {
            return false;
        }
        let before = self.vv.get(&origin);
        self.vv.apply(Dot::new(origin, event.id.seq));
        // The version vector never goes down, and moves by exactly one.
        assert_eq!(
            self.vv.get(&origin),
            before.saturating_add(1),
            "version vector of {origin} did not move by one"
        );
        m.log.push(event);
        true
    }

    /// Removes an origin's events above `keep` (a cut), newest first, and returns them;
    /// the version vector follows.
    pub(crate) fn truncate(&mut self, origin: RegionId, keep: u64) -> Vec<Event> {
        let Some(m) = self.members.get_mut(&origin) else {
            return Vec::new();
        };
        let at = usize::try_from(keep.saturating_sub(m.base))
            .unwrap_or(usize::MAX)
            .min(m.log.len());
        let removed = m.log.split_off(at);
        if m.len() == 0 {
            self.vv.dots.remove(&origin);
        } else {
            self.vv.dots.insert(origin, m.len());
        }
        removed
    }

    /// The events a peer with version vector `theirs` is missing, origin by origin, at most
    /// `limit`: for each origin in `upto` only those below that seq (the peer holds the
    /// rest), and of `me` only the first `own_durable` (only durable own events leave).
    pub(crate) fn missing_for_gaps(
        &self,
        me: RegionId,
        own_durable: u64,
        theirs: &VClock<RegionId>,
        upto: &VClock<RegionId>,
        limit: usize,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (r, m) in &self.members {
            if out.len() >= limit {
                break;
            }
            let held = if *r == me {
                own_durable.min(m.len())
            } else {
                m.len()
            };
            // Never above a cut, even where it was not truncated (this region's own log, once
            // it is retired).
            let held = held.min(m.cut.unwrap_or(u64::MAX));
            let held = match upto.get(r) {
                0 => held,
                first_buffered => held.min(first_buffered - 1),
            };
            let have = theirs.get(r);
            if have >= held {
                continue;
            }
            // Below the base the history is in a snapshot, held by every member that
            // announced it (the compaction point waits for that): not served here.
            let room = limit.saturating_sub(out.len());
            out.extend(m.slice(have, held).iter().take(room).cloned());
        }
        out
    }

    /// How many events `theirs` holds that these logs lack and could apply: origins that are
    /// not members, or frozen after equivocation (until retired), count nothing, and nothing
    /// above a retired or retiring region's cap. Saturating.
    pub(crate) fn events_lacking(&self, theirs: &VClock<RegionId>) -> u64 {
        theirs
            .dots
            .iter()
            .filter_map(|(o, s)| {
                let m = self.members.get(o)?;
                if m.equivocated && m.cut.is_none() {
                    return None;
                }
                Some(
                    (*s).min(m.cap.unwrap_or(u64::MAX))
                        .saturating_sub(self.vv.get(o)),
                )
            })
            .fold(0u64, u64::saturating_add)
    }

    /// What a pull asks for: per origin, the events held (the version vector) and the first
    /// seq buffered out of order above them (what a pull need not bring).
    ///
    /// An origin held back by a seal query's answer (rebuilding: docs/protocol.md §12) may
    /// hold a buffered run that starts at its next seq: no gap, the run waits for the seal,
    /// which lies above it. Asking below the run's start would bring nothing, for good (sim
    /// seed 366 of `--membership 100% --compact-every 50`: us held eu:1460 and eu:1461 behind
    /// its answer 1459, and every pull asked eu below 1460). The run counts as held, so the
    /// pull brings what follows it, the seal among it. A retire's hold is lifted by its cut,
    /// which comes from the other members, not by the origin's later events: unchanged.
    pub(crate) fn pull_window(&self) -> (VClock<RegionId>, VClock<RegionId>) {
        let mut vv = self.vv.clone();
        let mut upto = VClock::new();
        for (r, m) in &self.members {
            let mut held = m.len();
            if m.seal_cap.is_some() && m.cap.is_none() {
                while m.pending.contains_key(&(held + 1)) {
                    held += 1;
                }
                if held > m.len() {
                    vv.dots.insert(*r, held);
                }
            }
            if let Some((&first, _)) = m.pending.range(held + 1..).next() {
                upto.dots.insert(*r, first);
            }
        }
        (vv, upto)
    }
}

/// An event by id in the members' logs (a free function, so that it borrows only `members`).
pub(crate) fn log_event(members: &BTreeMap<RegionId, Member>, id: EventId) -> Option<&Event> {
    members.get(&id.origin)?.get(id.seq)
}
