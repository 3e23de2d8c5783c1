//! Durability (SPEC §3, §5): records get a persist index; what waits for a record to be
//! durable (an own event leaving the region, a clock ceiling that lets a heartbeat promise an
//! HLC, a watermark that lets events settle, evidence that may be reported) is released when
//! the host acknowledges it.

use std::collections::{BTreeMap, VecDeque};

use crate::id::{Hlc, RegionId};

use super::{Output, Record};

/// What a persisted record unblocks once durable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Awaiting {
    /// An own event: it may leave the region.
    Own(u64),
    /// A clock ceiling: heartbeats up to it may be announced.
    Ceiling(Hlc),
    /// A watermark: events up to it may settle.
    Watermark(Hlc),
    /// Evidence (its position in `evidence`): once durable, reported and sent to peers.
    Evidence(usize),
    /// A remote event (origin, seq): once durable, heartbeats may announce it (a peer may
    /// compact history this region announced: it must survive a crash here).
    Remote(RegionId, u64),
}

/// Persist indexes and what waits for them; own events' durability; the clock ceiling; the
/// last announced HLC and the next heartbeat deadline.
#[derive(Debug)]
pub(crate) struct Durability {
    pub(crate) persist_index: u64,
    pub(crate) persist_durable: u64,
    /// Records whose durability something waits for, by persist index.
    pub(crate) awaiting: VecDeque<(u64, Awaiting)>,
    pub(crate) own_durable_seq: u64,
    pub(crate) own_gossiped_seq: u64,
    pub(crate) ceiling_requested: Hlc,
    pub(crate) ceiling_durable: Hlc,
    pub(crate) announced: Hlc,
    pub(crate) next_heartbeat_ms: u64,
    /// Per remote origin, the highest seq durable here (gap-free: persisted in order).
    pub(crate) remote_durable: BTreeMap<RegionId, u64>,
}

impl Durability {
    pub(crate) fn new(ceiling: Hlc) -> Durability {
        Durability {
            persist_index: 0,
            persist_durable: 0,
            awaiting: VecDeque::new(),
            own_durable_seq: 0,
            own_gossiped_seq: 0,
            ceiling_requested: ceiling,
            ceiling_durable: ceiling,
            announced: Hlc::ZERO,
            next_heartbeat_ms: 0,
            remote_durable: BTreeMap::new(),
        }
    }

    /// Asks the host to write `record`; returns its persist index.
    pub(crate) fn persist(&mut self, out: &mut VecDeque<Output>, record: Record) -> u64 {
        self.persist_index += 1;
        out.push_back(Output::Persist {
            index: self.persist_index,
            record,
        });
        self.persist_index
    }

    /// Asks the host to write `record`, and remembers that `what` waits for it.
    pub(crate) fn persist_then(
        &mut self,
        out: &mut VecDeque<Output>,
        record: Record,
        what: Awaiting,
    ) -> u64 {
        let idx = self.persist(out, record);
        self.awaiting.push_back((idx, what));
        idx
    }

    /// The host made every record up to `index` durable: returns what that releases, in
    /// persist order. Own events and clock ceilings are accounted for here.
    pub(crate) fn acknowledge(&mut self, index: u64) -> Vec<Awaiting> {
        if index <= self.persist_durable {
            return Vec::new();
        }
        self.persist_durable = index.min(self.persist_index);
        let mut released = Vec::new();
        while let Some(&(i, what)) = self.awaiting.front() {
            if i > self.persist_durable {
                break;
            }
            self.awaiting.pop_front();
            match what {
                Awaiting::Own(seq) => self.own_durable_seq = self.own_durable_seq.max(seq),
                Awaiting::Ceiling(h) => self.ceiling_durable = self.ceiling_durable.max(h),
                Awaiting::Remote(origin, seq) => {
                    let d = self.remote_durable.entry(origin).or_default();
                    *d = (*d).max(seq);
                }
                Awaiting::Watermark(_) | Awaiting::Evidence(_) => {}
            }
            released.push(what);
        }
        released
    }
}
