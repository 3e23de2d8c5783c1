//! Merging what peers send (SPEC §3, §5): events (gap-free per origin, buffered out of order),
//! signed heartbeats (promises that feed the watermark) and evidence of equivocation.

use crate::event::Event;
use crate::id::{EventId, RegionId};
use crate::message::{Evidence, Message, SignedHeartbeat};

use super::durability::Awaiting;
use super::seal::rebuilding_above;
use super::{
    Record, Replica, Report, EVIDENCE_MAX, PENDING_HEARTBEATS_MAX, PENDING_PER_ORIGIN_MAX,
};

impl Replica {
    // ---- merge ---------------------------------------------------------------------------

    /// A message from peer `from`, at local physical time `now_ms`.
    pub fn handle_message(&mut self, now_ms: u64, from: RegionId, msg: Message) {
        match msg {
            Message::Events(events) => self.handle_events(now_ms, from, events),
            Message::Heartbeat(hb) => self.handle_heartbeat(
                now_ms,
                from,
                SignedHeartbeat {
                    hb,
                    sig: Box::new([]),
                },
            ),
            Message::SignedHeartbeat(shb) => self.handle_heartbeat(now_ms, from, shb),
            Message::Evidence(ev) => self.handle_evidence(from, ev),
            // Answered by the host with `missing_for` / `missing_for_gaps`.
            Message::Pull { vv, limit } => {
                self.answer_pull(from, &vv, &crdts::VClock::new(), limit)
            }
            Message::PullGaps { vv, upto, limit } => self.answer_pull(from, &vv, &upto, limit),
            Message::PullAnswer { events, more } => {
                self.handle_pull_answer(now_ms, from, events, more)
            }
            Message::Forward { request, tx } => self.handle_forward(now_ms, from, request, tx),
            Message::ForwardAnswer { request, result } => {
                self.handle_forward_answer(now_ms, from, request, result)
            }
            Message::RightsRequest {
                account,
                currency,
                amount,
            } => self.handle_rights_request(now_ms, from, account, currency, amount),
            Message::Snapshot(snap) => self.handle_snapshot(now_ms, from, snap),
            Message::SealQuery => self.handle_seal_query(from),
            Message::SealHeld { held, hlc } => self.handle_seal_held(now_ms, from, held, hlc),
            Message::Durable { seq } => self.note_peer_durable(from, seq),
            Message::SnapshotChunk(c) => self.handle_snapshot_chunk(now_ms, from, c),
            Message::SnapshotChunkRequest { transfer, index } => {
                self.handle_chunk_request(from, transfer, index)
            }
            Message::WantDurable => self.note_wants_durable(from),
            // Host traffic (walletd's archive backfill): not the replica's.
            Message::Archive(_) => {}
        }
        // Rights may have come in: a debit waiting for them may go ahead.
        self.retry_waiting(now_ms);
        // Another member's durability may release an acceptance held for `ack = "peer"`.
        self.release_held(Some(now_ms));
    }

    /// Merges a batch of events (push or anti-entropy answer).
    pub fn handle_events(&mut self, now_ms: u64, from: RegionId, events: Vec<Event>) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        for e in events {
            self.merge_one(now_ms, from, e);
        }
        self.issue_owed_acks(now_ms);
        self.advance();
    }

    /// A configured member other than this region.
    pub(super) fn is_peer(&self, from: RegionId) -> bool {
        from != self.cfg.region && self.logs.members.contains_key(&from)
    }

    pub(super) fn reject(&mut self, id: EventId, from: RegionId, reason: String) {
        self.stats.rejected += 1;
        self.report(Report::Rejected { id, from, reason });
    }

    pub(super) fn merge_one(&mut self, now_ms: u64, from: RegionId, e: Event) {
        let id = e.id;
        let origin = id.origin;
        let Some(m) = self.logs.members.get(&origin) else {
            self.reject(id, from, "origin is not a member".into());
            return;
        };
        // Above a retired region's cut: refused everywhere, counted (not reported one by
        // one: a retired region that is still up may send many).
        if m.cut.is_some_and(|c| id.seq > c) {
            self.membership.stats.refused_above_cut += 1;
            return;
        }
        // Above a seal's cut and not after the seal (applied, or buffered behind a gap): an
        // event of the sealed epoch that no member held when asked (docs/protocol.md §12):
        // dropped, counted.
        if self.of_a_sealed_epoch(m, &e) {
            self.sealing.stats.old_epoch_dropped += 1;
            return;
        }
        // Folded into a snapshot: final on every member, so a copy is a duplicate (a
        // different event under a compacted id can no longer be shown as evidence).
        if (1..=m.base).contains(&id.seq) && m.get(id.seq).is_none() {
            self.stats.duplicates += 1;
            return;
        }
        // The common case first: an exact copy of an event of another origin already held,
        // which was checked when it was accepted, so the copy checks too (the signature and
        // validation read only the id, the HLC and the body). Own events were never checked
        // as remote ones: their copies take the full path below.
        if origin != self.cfg.region {
            if let Some(held) = self.event(id) {
                if held.hlc == e.hlc && held.body == e.body && held.sig == e.sig {
                    self.stats.duplicates += 1;
                    return;
                }
            }
        }
        // The signature first: validation of a forged event (a policy with many rules, say)
        // must cost nothing beyond the signature check.
        if !self.cfg.auth.verify_event(origin, &e, &self.cfg.cluster) {
            self.reject(id, from, "bad signature".into());
            return;
        }
        if let Err(err) = e.validate() {
            self.reject(id, from, err.to_string());
            return;
        }
        // A seal: what this region holds of the old epoch above the cut is voided first
        // (unless settled: then the seal stays out), and the seal query's hold is lifted.
        if let Some(crate::event::Change::Seal { cut, .. }) = e.change() {
            if origin != self.cfg.region && !self.before_seal(&e, *cut) {
                return;
            }
        }
        // Already held: a duplicate, or two events under one id.
        if let Some(held) = self.event(id) {
            if held.hlc == e.hlc && held.body == e.body {
                self.stats.duplicates += 1;
                return;
            }
            let held = held.clone();
            self.equivocation(Evidence::Conflicting(held, e));
            return;
        }
        if e.hlc.millis() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.stats.rejected += 1;
            self.report(Report::ClockSkew {
                from,
                remote_ms: e.hlc.millis(),
                local_ms: now_ms,
            });
            return;
        }
        // A seal query that arrived after the seal it asked for (resent while the seal was in
        // flight) held the origin back again: an event above the seal held here is of the new
        // epoch, and lifts that hold.
        if let Some(s) = self
            .sealing
            .seals
            .get(&origin)
            .and_then(|s| s.last())
            .copied()
        {
            if let Some(m) = self.logs.members.get_mut(&origin) {
                if m.seal_cap.is_some() && s.id.seq <= m.len() && e.hlc > s.hlc {
                    m.seal_cap = None;
                }
            }
        }
        let Some(m) = self.logs.members.get_mut(&origin) else {
            return;
        };
        let next = m.len() + 1;
        // Of a region being retired, nothing above what this region acknowledged is applied
        // until the cut is known: buffered like an event behind a gap.
        if id.seq > next || m.applies_up_to().is_some_and(|c| id.seq > c) {
            if let Some(p) = m.pending.get(&id.seq) {
                if p.hlc == e.hlc && p.body == e.body {
                    self.stats.duplicates += 1;
                    return;
                }
                // Above a seal query's answer, with no seal of the origin here, the origin is
                // rebuilding: one of the two is of the old epoch, the other of the new, which
                // issues its events above every HLC the old one reached (docs/protocol.md
                // §12). Not evidence: the later HLC stays buffered.
                if rebuilding_above(m.seal_cap, id.seq) {
                    if e.hlc > p.hlc {
                        m.pending.insert(id.seq, e);
                    }
                    self.sealing.stats.old_epoch_dropped += 1;
                    return;
                }
                // Two different events buffered under one id: keep the first as pending,
                // report the second; the gap-free apply checks it again.
                let p = p.clone();
                self.equivocation(Evidence::Conflicting(p, e));
                return;
            }
            // A buffered event that breaks a promise already held is evidence now (while the
            // seal is awaited: the old epoch's, dropped as above).
            if let Some(shb) = m.promise.as_ref() {
                if id.seq > shb.hb.seq && e.hlc <= shb.hb.hlc {
                    if rebuilding_above(m.seal_cap, id.seq) {
                        self.sealing.stats.old_epoch_dropped += 1;
                        return;
                    }
                    let heartbeat = shb.clone();
                    self.equivocation(Evidence::BrokenPromise {
                        heartbeat,
                        event: e,
                    });
                    return;
                }
            }
            if m.pending.len() >= PENDING_PER_ORIGIN_MAX {
                self.stats.dropped += 1;
                return;
            }
            m.pending.insert(id.seq, e);
            return;
        }
        self.apply_remote(from, e);
        self.drain_pending_from(from, origin);
    }

    /// Applies whatever an origin's buffer holds that is now next (up to its cap).
    pub(super) fn drain_pending(&mut self, origin: RegionId) {
        self.drain_pending_from(origin, origin);
    }

    fn drain_pending_from(&mut self, from: RegionId, origin: RegionId) {
        while let Some(p) = self.logs.members.get_mut(&origin).and_then(|m| {
            let next = m.len() + 1;
            if m.applies_up_to().is_some_and(|c| next > c) {
                return None;
            }
            m.pending.remove(&next)
        }) {
            if !self.apply_remote(from, p) {
                break;
            }
        }
    }

    /// Applies the next gap-free event of an origin, checking its HLC against the origin's
    /// previous event and last heartbeat promise. Returns false if refused.
    pub(super) fn apply_remote(&mut self, from: RegionId, e: Event) -> bool {
        let origin = e.id.origin;
        let Some(m) = self.logs.members.get(&origin) else {
            return false;
        };
        // A frozen origin applies nothing more, except, once it is retired, its history up to
        // the cut (which counts no contested seq).
        if m.equivocated && m.cut.is_none_or(|c| e.id.seq > c) {
            return false;
        }
        if let Some(prev) = m.last_hlc() {
            if e.hlc <= prev {
                self.reject(e.id, from, "HLC does not increase with seq".into());
                return false;
            }
        }
        // A signed heartbeat promised that no event above its seq has an HLC at or below
        // its HLC: the two signed items prove the origin lied, to this region and to any
        // other, whatever order they arrived in (`handle_heartbeat` checks the other order).
        if let Some(shb) = &m.promise {
            if e.id.seq > shb.hb.seq && e.hlc <= shb.hb.hlc {
                let heartbeat = shb.clone();
                self.equivocation(Evidence::BrokenPromise {
                    heartbeat,
                    event: e,
                });
                return false;
            }
        }
        // Never below what this region already counts as complete for the origin: it may
        // be settled here already.
        if e.hlc <= m.covered {
            // Below a signed promise that it contradicts (a later seq at or below its HLC):
            // proof, whatever promise replaced that one since.
            if let Some(c) = m.covering.as_ref() {
                if e.id.seq > c.hb.seq && e.hlc <= c.hb.hlc {
                    let heartbeat = c.clone();
                    self.equivocation(Evidence::BrokenPromise {
                        heartbeat,
                        event: e,
                    });
                    return false;
                }
            }
            let covered = m.covered;
            self.reject(
                e.id,
                from,
                format!(
                    "HLC {:?} at or below {:?}, which a heartbeat already covered",
                    e.hlc, covered
                ),
            );
            return false;
        }
        self.clock.observe(e.hlc);
        let seq = e.id.seq;
        let hlc = e.hlc;
        if origin == self.cfg.region {
            // Our own history coming back after a disk loss: it counts as durable (and may
            // be announced in a heartbeat, or sent in a pull answer) only once it is on this
            // disk again, like any own event; it need not be pushed, peers hold it.
            self.dur.own_gossiped_seq = self.dur.own_gossiped_seq.max(seq);
            self.dur.persist_then(
                &mut self.outputs,
                Record::Event(e.clone()),
                Awaiting::Own(seq),
            );
        } else {
            self.dur.persist_then(
                &mut self.outputs,
                Record::Event(e.clone()),
                Awaiting::Remote(origin, e.id.seq),
            );
        }
        self.insert(e);
        self.stats.remote_applied += 1;
        if let Some(m) = self.logs.members.get_mut(&origin) {
            m.covered = m.covered.max(hlc);
            while let Some(entry) = m.pending_hb.first_entry() {
                if *entry.key() > seq {
                    break;
                }
                let h = entry.remove();
                m.covered = m.covered.max(h);
            }
        }
        true
    }

    /// Records proof that an origin broke the protocol: the origin is frozen at once (nothing
    /// more of it is applied, nothing more settles), the evidence is persisted, and only once
    /// it is durable is it reported and sent to peers ([`Replica::handle_persisted`]), so a
    /// restart finds the block again ([`Replica::restore_evidence`]).
    pub(super) fn equivocation(&mut self, ev: Evidence) {
        self.stats.rejected += 1;
        if let Some(m) = self.logs.members.get_mut(&ev.origin()) {
            m.equivocated = true;
        }
        if self.evidence.contains(&ev) {
            return;
        }
        // Evidence that restates a pair already held (the same two items, the other way
        // round) adds nothing.
        if let Evidence::Conflicting(a, b) = &ev {
            let swapped = Evidence::Conflicting(b.clone(), a.clone());
            if self.evidence.contains(&swapped) {
                return;
            }
        }
        if self.evidence.len() >= EVIDENCE_MAX {
            // The origin is frozen all the same; only the proof is not kept.
            self.report(Report::Equivocation { id: ev.id() });
            return;
        }
        let at = self.evidence.len();
        self.evidence.push(ev.clone());
        self.dur.persist_then(
            &mut self.outputs,
            Record::Evidence(ev),
            Awaiting::Evidence(at),
        );
    }

    /// Evidence sent by a peer: checked (both items signed by the origin, and contradicting
    /// each other), then handled as if caught here.
    pub fn handle_evidence(&mut self, from: RegionId, ev: Evidence) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        if !self.logs.members.contains_key(&ev.origin())
            || !self.cfg.auth.verify_evidence(&ev, &self.cfg.cluster)
        {
            self.reject(ev.id(), from, "evidence that proves nothing".into());
            return;
        }
        self.equivocation(ev);
    }

    /// A heartbeat from a peer.
    pub fn handle_heartbeat(&mut self, now_ms: u64, from: RegionId, shb: SignedHeartbeat) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        let hb = &shb.hb;
        if hb.origin != from {
            self.reject(
                EventId {
                    origin: hb.origin,
                    seq: hb.seq.max(1),
                },
                from,
                "heartbeat relayed for another region".into(),
            );
            return;
        }
        let hb_id = EventId {
            origin: from,
            seq: hb.seq.max(1),
        };
        if !self.cfg.auth.verify_heartbeat(&shb, &self.cfg.cluster) {
            self.reject(hb_id, from, "heartbeat with a bad signature".into());
            return;
        }
        // A version vector naming a region that is not a member here (yet: a join this
        // region has not applied) is kept without it: a non-member must not look ahead
        // forever, and the peer must not look silent because it knows a newer member.
        // (The signed heartbeat itself stays whole: it may become evidence.)
        let mut known_vv = hb.vv.clone();
        known_vv
            .dots
            .retain(|o, _| self.logs.members.contains_key(o));
        if hb.hlc.millis() > now_ms.saturating_add(self.cfg.max_clock_skew_ms) {
            self.report(Report::ClockSkew {
                from,
                remote_ms: hb.hlc.millis(),
                local_ms: now_ms,
            });
            return;
        }
        // Did its PREVIOUS heartbeat show events this region lacks? (For the pull scheduler.)
        let behind = self
            .member_vv(from)
            .is_some_and(|vv| self.logs.events_lacking(vv) > 0);
        let ours = self.seed_hash;
        let known_vv_me = known_vv.get(&self.cfg.region);
        let Some(m) = self.logs.members.get_mut(&from) else {
            return;
        };
        m.heard = true;
        let first_policy = m.policy.is_none() || m.policy != Some(hb.policy);
        m.policy = Some(hb.policy);
        if hb.policy != ours && first_policy {
            self.report(Report::PolicyMismatch {
                region: from,
                theirs: hb.policy,
                ours,
            });
        }
        // While the origin's seal is awaited, what is buffered of it above the answer with an
        // HLC at or below its heartbeat is its old epoch's (the new epoch's HLCs are above
        // everything the members observed, and a new heartbeat may overtake the seal):
        // dropped, like those the seal drops, not a broken promise.
        if let Some(m) = self.logs.members.get_mut(&from) {
            let cap = m.seal_cap;
            if cap.is_some() {
                let before = m.pending.len();
                m.pending.retain(|seq, e| {
                    !(rebuilding_above(cap, *seq) && *seq > hb.seq && e.hlc <= hb.hlc)
                });
                self.sealing.stats.old_epoch_dropped += (before - m.pending.len()) as u64;
            }
        }
        // An event already held (in the log or buffered) above the heartbeat's seq with an
        // HLC at or below it: the promise is broken, whichever came first.
        let broken = {
            let Some(m) = self.logs.members.get(&from) else {
                return;
            };
            m.get(hb.seq.saturating_add(1))
                .or_else(|| {
                    m.pending
                        .range(hb.seq.saturating_add(1)..)
                        .next()
                        .map(|(_, e)| e)
                })
                .filter(|e| e.hlc <= hb.hlc)
                .cloned()
        };
        if let Some(event) = broken {
            self.equivocation(Evidence::BrokenPromise {
                heartbeat: shb,
                event,
            });
            return;
        }
        let Some(m) = self.logs.members.get_mut(&from) else {
            return;
        };
        let hb_hlc = shb.hb.hlc;
        let hb_seq = shb.hb.seq;
        m.vv = known_vv;
        if m.len() >= hb_seq && hb_hlc > m.covered {
            m.covering = Some(shb.clone());
        }
        if m.promise.as_ref().is_none_or(|p| hb_hlc > p.hb.hlc) {
            m.promise = Some(shb);
        }
        if m.len() >= hb_seq {
            m.covered = m.covered.max(hb_hlc);
        } else {
            let slot = m.pending_hb.entry(hb_seq).or_insert(hb_hlc);
            *slot = (*slot).max(hb_hlc);
            if m.pending_hb.len() > PENDING_HEARTBEATS_MAX {
                m.pending_hb.pop_first();
            }
        }
        self.clock.observe(hb_hlc);
        self.note_peer_durable(from, known_vv_me);
        if self.restoring {
            self.check_restored();
            self.seal_progress(now_ms);
        }
        self.advance();
        self.pull_on_heartbeat(now_ms, from, behind);
    }

    pub(super) fn check_restored(&mut self) {
        // A rebuilt region that seals a new epoch ends its restore with the seal.
        if self.cfg.seal_on_restore {
            return;
        }
        let me = self.cfg.region;
        let mine = self.logs.vv.get(&me);
        let done = self
            .logs
            .members
            .iter()
            .filter(|(r, m)| **r != me && m.cut.is_none() && m.cap.is_none())
            .all(|(_, m)| m.heard && m.vv.get(&me) <= mine);
        if done {
            self.restoring = false;
        }
    }
}
