//! Origin epochs after a lost disk, and peer durability (SPEC §10, docs/protocol.md §12).
//!
//! | rule | where |
//! |---|---|
//! | a rebuilt region (`Config::seal_on_restore`) asks every member in force how far it holds the region's log | [`Replica::seal_queries`] |
//! | a member answers with its gap-free log less contested seqs (a retire ack's rule) and applies nothing of the asker above it until the seal | [`Replica::handle_seal_query`] |
//! | once every member answered (or was waived by an operator) and the log up to the highest answer is pulled back, the region issues `Seal { epoch, cut }` as seq `cut + 1`, its HLC above everything it observed (the answers carry the answerers' clocks) plus [`CEILING_MARGIN_MS`] | [`Replica::seal_progress`] |
//! | a member applying a seal voids its unsettled events of the region above the cut | `merge_one`, [`Replica::void_above`] |
//! | a region with `ack = "peer"` announces it (`Message::WantDurable`) on connect and every heartbeat period | [`Replica::announce_ack_peer`] |
//! | after a persist, each origin that announced `ack = "peer"` and whose events became durable here hears how far (`Message::Durable`) | [`Replica::send_durable_acks`] |
//! | own events are peer-durable up to the highest seq any other member in force reported durable (by `Durable` or a heartbeat) | [`Replica::peer_durable_seq`] |
//! | with `ack = "peer"`, a debit the home accepted is answered once durable here too (held in `Modes::held`) | [`Replica::durable_at_two`] |

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Change, Event};
use crate::id::{EventId, Hlc, RegionId};
use crate::message::Message;

use super::log::Member;
use super::{MembershipError, Output, Replica, Report, SubmitError, CEILING_MARGIN_MS};

/// A seal this region applied: one origin epoch ended, the next began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    /// The seal event (the first of the new epoch).
    pub id: EventId,
    /// Its HLC.
    pub hlc: Hlc,
    /// The epoch it starts.
    pub epoch: u32,
    /// The last seq of the epochs before it.
    pub cut: u64,
}

/// Epoch and peer-durability counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealStats {
    /// Seal queries answered here.
    pub queries_answered: u64,
    /// Events of an old epoch dropped here: buffered above a gap when the rebuilt region
    /// asked, or held above a seal's cut when it arrived.
    pub old_epoch_dropped: u64,
}

/// Seal and peer-durability state.
#[derive(Debug, Default)]
pub(crate) struct Sealing {
    /// While rebuilding: per member asked, the seq of this region's log it holds (its latest
    /// answer: a member that lost an unpersisted event in a crash answers lower next time).
    pub(crate) answers: BTreeMap<RegionId, u64>,
    /// Members an operator waived (down for good): the seal does not wait for them.
    pub(crate) waived: BTreeSet<RegionId>,
    /// When to ask again the members that have not answered.
    pub(crate) next_query_ms: u64,
    /// Seals applied, per origin, in epoch order.
    pub(crate) seals: BTreeMap<RegionId, Vec<SealInfo>>,
    /// Per other member, the highest seq of this region's log it reported durable.
    pub(crate) peer_durable: BTreeMap<RegionId, u64>,
    /// Members that announced `ack = "peer"` (`Message::WantDurable`): the origins sent
    /// `Message::Durable` after a persist.
    pub(crate) want_durable: BTreeSet<RegionId>,
    pub(crate) stats: SealStats,
}

/// Whether seq `seq` of an origin whose seal-query hold here is `seal_cap`
/// (`Member::seal_cap`) may exist twice, once in each of two epochs, with no way to tell
/// them apart yet: this region answered the origin's seal query below it (the origin is
/// rebuilding) and holds no seal of it. Two events buffered under such an id, or one that
/// breaks the new epoch's promise, are no evidence: the old epoch's are dropped. Once a seal
/// is here, applied or buffered, its cut and HLC tell ([`Replica::of_a_sealed_epoch`]).
pub(super) fn rebuilding_above(seal_cap: Option<u64>, seq: u64) -> bool {
    seal_cap.is_some_and(|c| seq > c)
}

/// Whether `e` is of an epoch that `seal` (an event `Change::Seal` with this `cut`) ended:
/// above the cut and not after the seal.
fn sealed_by(e: &Event, seal_id: EventId, seal_hlc: Hlc, cut: u64) -> bool {
    e.id.seq > cut && (e.hlc < seal_hlc || (e.hlc == seal_hlc && e.id != seal_id))
}

impl Replica {
    /// Whether `e` (of origin `m`) is of an epoch a seal ended: above the cut of the last
    /// seal applied here, or of one held buffered behind a gap, and not after it. Buffered
    /// counts: the seal's cut and HLC are known, signed by the origin, and an old-epoch
    /// event late on the way would otherwise break the new epoch's promise (a heartbeat that
    /// overtook the gap) and be taken for evidence.
    pub(super) fn of_a_sealed_epoch(&self, m: &Member, e: &Event) -> bool {
        let applied = self
            .sealing
            .seals
            .get(&e.id.origin)
            .and_then(|s| s.last())
            .is_some_and(|s| sealed_by(e, s.id, s.hlc, s.cut));
        applied
            || m.pending.values().any(|p| match p.change() {
                Some(Change::Seal { cut, .. }) => sealed_by(e, p.id, p.hlc, *cut),
                _ => false,
            })
    }

    /// Sealing: restoring after a lost disk, to rejoin under a new epoch.
    pub(super) fn sealing(&self) -> bool {
        self.restoring && self.cfg.seal_on_restore
    }

    /// The members a seal waits for: in force, not this region, not waived; a member being
    /// retired only while it is connected. Its retire waits for this region's
    /// acknowledgement, which waits for the seal, so waiting for one that is down would never
    /// end; but one that is up may alone hold this region's last peer-acknowledged events.
    fn seal_askees(&self) -> Vec<RegionId> {
        let me = self.cfg.region;
        let retiring = self.retiring();
        let connected = self.pull.connected();
        self.members_in_force()
            .into_iter()
            .filter(|r| *r != me && !self.sealing.waived.contains(r))
            .filter(|r| !retiring.contains(r) || connected.contains(r))
            .collect()
    }

    /// On timeouts while sealing: asks again every member that has not answered.
    pub(super) fn seal_queries(&mut self, now_ms: u64) {
        if !self.sealing() || now_ms < self.sealing.next_query_ms {
            return;
        }
        self.sealing.next_query_ms = now_ms.saturating_add(self.cfg.heartbeat_interval_ms);
        for to in self.seal_askees() {
            self.outputs.push_back(Output::Send {
                to,
                msg: Message::SealQuery,
            });
        }
        self.seal_progress(now_ms);
    }

    /// A rebuilt member asks how far this region holds its log: answered with the retire
    /// acknowledgement's rule; nothing more of it applies here above the answer until its
    /// seal arrives (what is buffered then with an HLC below the seal's is dropped).
    pub(super) fn handle_seal_query(&mut self, from: RegionId) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        let held = self.ack_held(from);
        if let Some(m) = self.logs.members.get_mut(&from) {
            // Old-epoch events still in flight must not apply (nor settle) here above the
            // answer: the seal's cut may be this answer. Unless its seal is here already,
            // buffered behind a gap (the query was resent while the seal was in flight): the
            // hold would then keep out the events up to the cut that the seal waits for.
            let sealed = m
                .pending
                .values()
                .any(|e| matches!(e.change(), Some(Change::Seal { .. })));
            // Nor once its retire has its cut: every remaining member agreed on its history
            // up to the cut, and the hold would keep this region below the cut for good (a
            // retired region that lost its disk asks again and again; sim seed 157 of
            // `--membership 100% --compact-every 50`).
            if !sealed && m.cut.is_none() {
                m.seal_cap = Some(held);
            }
        }
        self.sealing.stats.queries_answered += 1;
        self.outputs.push_back(Output::Send {
            to: from,
            msg: Message::SealHeld {
                held,
                hlc: self.clock.last(),
            },
        });
    }

    /// A member's answer to this region's seal query.
    pub(super) fn handle_seal_held(&mut self, now_ms: u64, from: RegionId, held: u64, hlc: Hlc) {
        if !self.is_peer(from) || !self.sealing() {
            return;
        }
        if hlc.millis() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.report(Report::ClockSkew {
                from,
                remote_ms: hlc.millis(),
                local_ms: now_ms,
            });
            return;
        }
        self.clock.observe(hlc);
        self.sealing.answers.insert(from, held);
        self.seal_progress(now_ms);
    }

    /// Seals the old epoch once every member asked has answered (with its clock) and this
    /// region holds its own log up to the highest answer: the seal is then seq `cut + 1`,
    /// and the region serves again.
    pub(super) fn seal_progress(&mut self, now_ms: u64) {
        if !self.sealing() {
            return;
        }
        let askees = self.seal_askees();
        let ready = askees.iter().all(|r| self.sealing.answers.contains_key(r));
        if !ready {
            return;
        }
        let highest = askees
            .iter()
            .filter_map(|r| self.sealing.answers.get(r).copied())
            .max()
            .unwrap_or(0);
        let cut = self.own_log_len();
        if cut < highest {
            return; // still pulling its own history back
        }
        let me = self.cfg.region;
        let epoch = self
            .sealing
            .seals
            .get(&me)
            .and_then(|s| s.last())
            .map_or(2, |s| s.epoch.saturating_add(1));
        // Above every HLC this region observed, with the margin by which a region's clock may
        // run ahead of what it announced: the new epoch's events come after the old one's.
        let above = Hlc::from_millis(
            self.clock
                .last()
                .millis()
                .max(now_ms)
                .saturating_add(CEILING_MARGIN_MS),
        );
        self.clock.observe(above);
        self.restoring = false;
        if self
            .issue_change(now_ms, Change::Seal { epoch, cut })
            .is_err()
        {
            // The epoch bound (2^20 rebuilds): stays restoring, reported.
            self.restoring = true;
            self.report(Report::Membership {
                event: EventId {
                    origin: me,
                    seq: cut + 1,
                },
                what: format!("cannot seal epoch {epoch}: too many epochs"),
            });
        }
    }

    /// An operator's override: seal without waiting for `region`'s answer (a member that is
    /// down). Its events above the cut, if it held any, are voided there when it applies the
    /// seal (docs/operations.md, lost-disk runbook).
    pub fn waive_seal_answer(&mut self, now_ms: u64, region: RegionId) -> Result<(), SubmitError> {
        if !self.sealing() {
            return Err(MembershipError::NotSealing.into());
        }
        if region == self.cfg.region || !self.members_in_force().contains(&region) {
            return Err(MembershipError::NotAMember(region).into());
        }
        self.sealing.waived.insert(region);
        self.seal_progress(now_ms);
        Ok(())
    }

    /// A seal entered the log (own, remote or reloaded).
    pub(super) fn note_seal(&mut self, id: EventId, hlc: Hlc, epoch: u32, cut: u64) {
        let seals = self.sealing.seals.entry(id.origin).or_default();
        if seals.iter().any(|s| s.id == id) {
            return;
        }
        seals.push(SealInfo {
            id,
            hlc,
            epoch,
            cut,
        });
        // What this region buffered of the origin above a gap and before the seal is of the
        // old epoch.
        if let Some(m) = self.logs.members.get_mut(&id.origin) {
            let before = m.pending.len();
            m.pending.retain(|seq, e| *seq <= cut || e.hlc > hlc);
            self.sealing.stats.old_epoch_dropped += (before - m.pending.len()) as u64;
        }
        if !self.membership.loading {
            self.report(Report::Membership {
                event: id,
                what: format!("{} sealed its epoch at seq {cut}: epoch {epoch}", id.origin),
            });
        }
    }

    /// Before a remote seal is merged: this region's events of its origin above the cut are
    /// of the old epoch (held by a member the seal did not wait for, or lost in a crash and
    /// answered lower): voided, unless settled; so are those buffered with an HLC below the
    /// seal's; the seal query's hold is lifted. False if the seal cannot apply here.
    pub(super) fn before_seal(&mut self, seal: &Event, cut: u64) -> bool {
        let origin = seal.id.origin;
        if let Some(held) = self.event(seal.id) {
            if held.hlc == seal.hlc && held.body == seal.body {
                return true; // a copy
            }
        }
        let Some(m) = self.logs.members.get_mut(&origin) else {
            return false;
        };
        m.seal_cap = None;
        let before = m.pending.len();
        m.pending.retain(|seq, e| *seq <= cut || e.hlc > seal.hlc);
        let mut dropped = (before - m.pending.len()) as u64;
        let above = m.len().saturating_sub(cut);
        if above > 0 {
            if !self.void_above(seal.id, origin, cut) {
                return false;
            }
            dropped += above;
        }
        self.sealing.stats.old_epoch_dropped += dropped;
        // The old epoch above the cut is void: the durable log of the origin ends at the cut
        // (the new epoch's events raise it again as they become durable).
        if let Some(d) = self.dur.remote_durable.get_mut(&origin) {
            *d = (*d).min(cut);
        }
        // What the seal query held back up to the cut applies now.
        self.drain_pending(origin);
        // The voided events' persisted copies stay on disk: a restart drops them again, as it
        // reloads the seal first at its seq (`load`).
        true
    }

    // ---- peer durability ---------------------------------------------------------------

    /// After a persist: tells each origin whose events it made durable how far this region
    /// now holds its log durably (one small message per origin per persist).
    pub(super) fn send_durable_acks(&mut self, origins: BTreeSet<RegionId>) {
        if !self.cfg.durable_acks {
            return;
        }
        for origin in origins {
            // Only to origins with `ack = "peer"`: a cluster with `ack = "local"` pays nothing.
            if !self.is_peer(origin) || !self.sealing.want_durable.contains(&origin) {
                continue;
            }
            let seq = self.dur.remote_durable.get(&origin).copied().unwrap_or(0);
            self.outputs.push_back(Output::Send {
                to: origin,
                msg: Message::Durable { seq },
            });
        }
    }

    /// With `ack = "peer"`, on connect (to that member) and every heartbeat period (to all):
    /// asks the members for `Message::Durable` after their persists.
    pub(super) fn announce_ack_peer(&mut self, to: Option<RegionId>) {
        if !self.cfg.ack_peer {
            return;
        }
        self.outputs.push_back(match to {
            Some(to) => Output::Send {
                to,
                msg: Message::WantDurable,
            },
            None => Output::Broadcast(Message::WantDurable),
        });
    }

    /// A member announced `ack = "peer"`: it hears `Message::Durable` from here from now on
    /// (in memory: after a restart here, from its next announcement).
    pub(super) fn note_wants_durable(&mut self, from: RegionId) {
        if self.is_peer(from) {
            self.sealing.want_durable.insert(from);
        }
    }

    /// A member holds this region's log durably up to `seq` (a `Durable` message, or the
    /// version vector of its heartbeat, which announces only durable events).
    pub(super) fn note_peer_durable(&mut self, from: RegionId, seq: u64) {
        if !self.is_peer(from) {
            return;
        }
        let d = self.sealing.peer_durable.entry(from).or_default();
        *d = (*d).max(seq);
    }

    /// The highest own seq durable here and on at least one other member in force: a host
    /// with `ack = "peer"` answers a client once its event's seq is at or below it.
    pub fn peer_durable_seq(&self) -> u64 {
        let me = self.cfg.region;
        self.members_in_force()
            .into_iter()
            .filter(|r| *r != me)
            .filter_map(|r| self.sealing.peer_durable.get(&r).copied())
            .max()
            .unwrap_or(0)
            .min(self.dur.own_durable_seq)
    }

    /// Whether event `id` is durable at two members as far as this region knows: an own event
    /// here and at another member in force ([`Replica::peer_durable_seq`]); another origin's
    /// here, in this region's gap-free durable log of it, and at its origin, which sends an
    /// event only once it is durable there. With `Config::ack_peer` a debit decided at its
    /// home is answered (`Output::Decided`) only once this holds: a lost disk at the origin
    /// then cannot take it, since this region answers the seal query with at least its seq.
    pub fn durable_at_two(&self, id: EventId) -> bool {
        if id.origin == self.cfg.region {
            return id.seq <= self.peer_durable_seq();
        }
        self.dur
            .remote_durable
            .get(&id.origin)
            .is_some_and(|d| id.seq <= *d)
    }

    /// Seals applied here, of every origin.
    pub(crate) fn seal_count(&self) -> usize {
        self.sealing.seals.values().map(Vec::len).sum()
    }

    /// This region's origin epoch: 1 until its first seal, then the epoch that seal started.
    pub fn epoch(&self) -> u32 {
        self.sealing
            .seals
            .get(&self.cfg.region)
            .and_then(|s| s.last())
            .map_or(1, |s| s.epoch)
    }

    /// Every seal applied here, per origin, in epoch order.
    pub fn seals(&self) -> Vec<SealInfo> {
        self.sealing.seals.values().flatten().copied().collect()
    }

    /// While sealing: the members whose answer is still missing (none once sealed).
    pub fn seal_missing(&self) -> Vec<RegionId> {
        if !self.sealing() {
            return Vec::new();
        }
        self.seal_askees()
            .into_iter()
            .filter(|r| !self.sealing.answers.contains_key(r))
            .collect()
    }

    /// Epoch and peer-durability counters.
    pub fn seal_stats(&self) -> SealStats {
        self.sealing.stats
    }
}
