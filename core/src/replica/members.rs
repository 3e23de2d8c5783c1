//! Membership change (SPEC §10, docs/design/membership.md): joins, retires with their
//! acknowledgements and cuts, key rotation, and the members in force.
//!
//! | rule | where |
//! |---|---|
//! | a join adds the region with `covered` = the join's HLC; its events at or below it are refused | [`Replica::note_membership`], `merge_one` (covered) |
//! | every member of a retire's `remaining` acknowledges it with the seq it holds of each retired region (contested seqs not counted, settled ones always) | [`Replica::issue_owed_acks`] |
//! | after applying a retire (or acknowledging it), events of a retired region above the seq held are buffered, not applied | `Member::cap`, `merge_one` |
//! | the cut is the highest seq acknowledged, once every remaining member acknowledged or is retired itself with its log up to its cut held (its acknowledgement counts if at or below that cut) | [`Replica::try_cut`], [`Replica::ack_of`] |
//! | events above the cut are refused everywhere and counted; unsettled ones held here are voided | [`Replica::apply_cut`] |
//! | a retired region stops stalling the watermark once its log up to the cut is held | `compute_watermark` |
//! | a region's own rotated key verifies its events above the rotation's HLC | [`Authenticator::set_key`] |

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Body, Change};
use crate::id::{EventId, Hlc, RegionId};

use super::log::Member;
use super::{Replica, Report, SubmitError};

/// Why a membership change is refused before it is issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The region is a member already, or was one (retired names are not reused).
    #[error("region {0} is or was a member already")]
    AlreadyMember(RegionId),
    /// The region is not a member in force.
    #[error("region {0} is not a member in force")]
    NotAMember(RegionId),
    /// A region cannot retire itself: another member retires it.
    #[error("a region cannot retire itself")]
    RetireSelf,
    /// The region is named by a retire whose cut is not known yet.
    #[error("region {0} is already being retired")]
    RetirePending(RegionId),
    /// This region is retired.
    #[error("this region is retired")]
    Retired,
    /// The change does not validate (empty set, key too long, ...).
    #[error("{0}")]
    Invalid(String),
    /// A seal answer waived while this region is not sealing (not rebuilt after a lost
    /// disk, or sealed already).
    #[error("this region is not restoring after a lost disk: no seal is waiting for answers")]
    NotSealing,
}

/// A retire as this region knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetireState {
    pub(crate) hlc: Hlc,
    pub(crate) regions: BTreeSet<RegionId>,
    pub(crate) remaining: BTreeSet<RegionId>,
    pub(crate) reason: Box<str>,
    pub(crate) cut: Option<BTreeMap<RegionId, u64>>,
}

/// Membership counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Events of a retired region above its cut, refused.
    pub refused_above_cut: u64,
    /// Unsettled events held here above a cut, voided when the cut became known.
    pub voided: u64,
    /// Cuts computed here.
    pub cuts: u64,
    /// Acknowledgers a cut computed here did not wait for: retired themselves, their log up
    /// to their own cut held, with no acknowledgement at or below that cut.
    pub acks_excused: u64,
    /// Cuts of this region's own retire learned from a peer's snapshot it refused (the
    /// retire folded out of every member's log).
    pub cuts_from_snapshot: u64,
}

/// What a status page shows of a retire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireInfo {
    /// The retire event.
    pub id: EventId,
    /// Its HLC.
    pub hlc: Hlc,
    /// The regions retired.
    pub regions: Vec<RegionId>,
    /// The members that must acknowledge.
    pub remaining: Vec<RegionId>,
    /// Why.
    pub reason: String,
    /// Acknowledgements that count: acker -> (retired region -> seq held). One of an
    /// acknowledger retired with a cut below it does not.
    pub acks: BTreeMap<RegionId, BTreeMap<RegionId, u64>>,
    /// The members whose acknowledgement is still awaited (an acknowledger retired with its
    /// log up to its cut held here is not).
    pub missing: Vec<RegionId>,
    /// The cut per retired region, once every acknowledgement is held.
    pub cut: Option<BTreeMap<RegionId, u64>>,
}

/// A join this region applied: what a host needs to reach the new member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    /// The join event.
    pub id: EventId,
    /// Its HLC: the region's events are above it.
    pub hlc: Hlc,
    /// The region joined.
    pub region: RegionId,
    /// Its key at the join.
    pub key: Vec<u8>,
    /// The join's opaque metadata (walletd: peer id and addresses).
    pub meta: Vec<u8>,
}

/// An acknowledgement of a retire: the seq of the `RetireAck` event in its acknowledger's log
/// and what it held of each retired region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) seq: u64,
    pub(crate) held: BTreeMap<RegionId, u64>,
}

/// What a member of a retire's `remaining` gives its cut ([`Replica::ack_of`]).
enum AckOf<'a> {
    /// Its acknowledgement counts.
    Counted(&'a BTreeMap<RegionId, u64>),
    /// Not waited for: retired itself, its log up to its cut held here, and no
    /// acknowledgement of it at or below that cut (one above never arrives everywhere).
    Excused,
    /// Still awaited.
    Waiting,
}

/// A retire's `remaining`, by what each gives its cut ([`Replica::ack_tally`]).
struct AckTally<'a> {
    /// Acknowledgers whose acknowledgement counts, with what it held of each retired region.
    counted: BTreeMap<RegionId, &'a BTreeMap<RegionId, u64>>,
    /// How many are not waited for.
    excused: u64,
    /// Those still awaited.
    waiting: Vec<RegionId>,
}

/// The membership history this region holds.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// Joins applied, by region: the first one applied for a region (a later join of a
    /// region that is or was a member is ignored, as the join itself is).
    pub(crate) joins: BTreeMap<RegionId, JoinInfo>,
    pub(crate) retires: BTreeMap<EventId, RetireState>,
    /// Acknowledgements by retire id (held before or after the retire itself), by acker.
    /// The first one of an acker (in its log order) is kept.
    pub(crate) acks: BTreeMap<EventId, BTreeMap<RegionId, Ack>>,
    /// Inside [`Replica::load`]: state is registered, cuts wait for the end.
    pub(crate) loading: bool,
    /// This region is retired (a cut names it): it issues nothing more.
    pub(crate) retired_self: bool,
    /// A cut below an event settled here, or two cuts of one region that disagree: what was
    /// settled cannot be voided, so settlement stops and an operator acts.
    pub(crate) broken: bool,
    /// Membership events folded into a snapshot and dropped from the logs (issue 13), by
    /// (origin, seq): every later snapshot carries them ([`crate::snapshot::EXT_MEMBERSHIP`]).
    /// As many as membership changes ever made, a handful a year.
    pub(crate) folded: Vec<crate::event::Event>,
    pub(crate) stats: MembershipStats,
}

impl Member {
    /// Retired, and its log up to the cut held: it no longer counts for the watermark.
    pub(crate) fn retired_complete(&self) -> bool {
        self.cut.is_some_and(|c| self.len() >= c)
    }
}

impl Replica {
    // ---- commands ------------------------------------------------------------------------

    /// Issues a join of `region` with its public key; `meta` is opaque (walletd: peer id
    /// and addresses). The region's events must have an HLC above the join's.
    pub fn join(
        &mut self,
        now_ms: u64,
        region: RegionId,
        key: Vec<u8>,
        meta: Vec<u8>,
    ) -> Result<EventId, SubmitError> {
        self.can_issue()?;
        if self.logs.members.contains_key(&region) {
            return Err(MembershipError::AlreadyMember(region).into());
        }
        let change = Change::Join {
            region,
            key: key.into(),
            meta: meta.into(),
        };
        self.issue_change(now_ms, change)
    }

    /// Issues a retire of `regions` (other members in force). Every other member in force
    /// acknowledges it; the cut of each region is then the highest seq any of them held.
    pub fn retire(
        &mut self,
        now_ms: u64,
        regions: BTreeSet<RegionId>,
        reason: String,
    ) -> Result<EventId, SubmitError> {
        self.can_issue()?;
        let pending = self.retiring();
        for r in &regions {
            if *r == self.cfg.region {
                return Err(MembershipError::RetireSelf.into());
            }
            if pending.contains(r) {
                return Err(MembershipError::RetirePending(*r).into());
            }
            if !self.members_in_force().contains(r) {
                return Err(MembershipError::NotAMember(*r).into());
            }
        }
        let remaining: BTreeSet<RegionId> = self
            .members_in_force()
            .into_iter()
            .filter(|r| !regions.contains(r) && !pending.contains(r))
            .collect();
        let change = Change::Retire {
            regions,
            remaining,
            reason: reason.into(),
        };
        let id = self.issue_change(now_ms, change)?;
        self.issue_owed_acks(now_ms);
        Ok(id)
    }

    /// Issues a rotation of this region's own key: its events above the rotation's HLC are
    /// signed with the new key (the host's [`Authenticator`](crate::Authenticator) must sign
    /// with it from then on) and verify against it everywhere.
    pub fn rotate_key(&mut self, now_ms: u64, key: Vec<u8>) -> Result<EventId, SubmitError> {
        self.can_issue()?;
        self.issue_change(now_ms, Change::RotateKey { key: key.into() })
    }

    pub(super) fn issue_change(
        &mut self,
        now_ms: u64,
        change: Change,
    ) -> Result<EventId, SubmitError> {
        change
            .validate(self.cfg.region)
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        Ok(self.issue_own(now_ms, Body::Membership(Box::new(change))))
    }

    /// Acknowledges every retire this region must acknowledge and has not yet: called after
    /// merges and on timeouts (an acknowledgement lost in a crash is issued again). First
    /// cuts the retires that no longer wait ([`Replica::cut_waiting_retires`]: what was just
    /// merged may complete the log of a retired acknowledger).
    pub(super) fn issue_owed_acks(&mut self, now_ms: u64) {
        self.cut_waiting_retires();
        if self.restoring || self.joining || self.membership.retired_self {
            return;
        }
        let me = self.cfg.region;
        let owed: Vec<(EventId, BTreeSet<RegionId>)> = self
            .membership
            .retires
            .iter()
            .filter(|(id, st)| {
                st.cut.is_none()
                    && st.remaining.contains(&me)
                    && !self
                        .membership
                        .acks
                        .get(id)
                        .is_some_and(|a| a.contains_key(&me))
            })
            .map(|(id, st)| (*id, st.regions.clone()))
            .collect();
        for (retire, regions) in owed {
            let held: BTreeMap<RegionId, u64> =
                regions.iter().map(|r| (*r, self.ack_held(*r))).collect();
            // Cannot fail: the fields were checked when the retire was applied.
            let _ = self.issue_change(now_ms, Change::RetireAck { retire, held });
        }
    }

    /// The seq this region acknowledges of `region`: its gap-free log, less any seq that
    /// evidence contests (and what follows it), but never less than what it settled.
    pub(super) fn ack_held(&self, region: RegionId) -> u64 {
        let Some(m) = self.logs.members.get(&region) else {
            return 0;
        };
        let len = m.len();
        let contested = self
            .evidence
            .iter()
            .filter(|ev| ev.origin() == region)
            .map(|ev| ev.id().seq)
            .min();
        let uncontested = match contested {
            Some(s) => len.min(s.saturating_sub(1)),
            None => len,
        };
        let settled = m.base + m.log.partition_point(|e| self.settle.is_settled(&e.key())) as u64;
        uncontested.max(settled)
    }

    // ---- applying membership events -----------------------------------------------------

    /// A membership event just entered the log (own, remote or reloaded).
    pub(super) fn note_membership(&mut self, id: EventId, hlc: Hlc, change: Change) {
        let me = self.cfg.region;
        match change {
            Change::Join { region, key, meta } => {
                self.cfg.auth.set_key(region, hlc, &key);
                let applied = region == me
                    || self
                        .logs
                        .members
                        .get(&region)
                        .is_none_or(|m| m.joined == Some(hlc));
                if applied {
                    self.membership
                        .joins
                        .entry(region)
                        .or_insert_with(|| JoinInfo {
                            id,
                            hlc,
                            region,
                            key: key.to_vec(),
                            meta: meta.to_vec(),
                        });
                }
                if region == me {
                    if let Some(m) = self.logs.members.get_mut(&me) {
                        m.joined = Some(hlc);
                    }
                    self.clock.observe(hlc);
                    self.joining = false;
                    return;
                }
                match self.logs.members.get(&region) {
                    Some(m) if m.joined == Some(hlc) => {}
                    Some(_) => self.report(Report::Membership {
                        event: id,
                        what: format!("join of {region} ignored: it is or was a member"),
                    }),
                    None => {
                        self.logs.members.insert(
                            region,
                            Member {
                                covered: hlc,
                                joined: Some(hlc),
                                ..Member::default()
                            },
                        );
                    }
                }
            }
            Change::Retire {
                regions,
                remaining,
                reason,
            } => {
                if self.membership.retires.contains_key(&id) {
                    return;
                }
                if !remaining.contains(&me) && !self.membership.loading {
                    // Not asked to acknowledge (joined later, or retired itself): apply
                    // nothing more of the retired regions until the cut is known.
                    for r in &regions {
                        self.hold_at_log(*r);
                    }
                }
                self.membership.retires.insert(
                    id,
                    RetireState {
                        hlc,
                        regions,
                        remaining,
                        reason,
                        cut: None,
                    },
                );
                self.try_cut(id);
            }
            Change::RetireAck { retire, held } => {
                let acks = self.membership.acks.entry(retire).or_default();
                if acks.contains_key(&id.origin) {
                    return;
                }
                if id.origin == me {
                    for (r, s) in &held {
                        if let Some(m) = self.logs.members.get_mut(r) {
                            if m.cut.is_none() {
                                m.cap = Some(m.cap.map_or(*s, |c| c.min(*s)));
                            }
                        }
                    }
                }
                acks.insert(id.origin, Ack { seq: id.seq, held });
                self.try_cut(retire);
            }
            Change::RotateKey { key } => self.cfg.auth.set_key(id.origin, hlc, &key),
            Change::Seal { epoch, cut } => self.note_seal(id, hlc, epoch, cut),
        }
    }

    /// Applies nothing more of `region` than what its log holds now, until its cut is known.
    fn hold_at_log(&mut self, region: RegionId) {
        if let Some(m) = self.logs.members.get_mut(&region) {
            if m.cut.is_none() {
                let len = m.len();
                m.cap = Some(m.cap.map_or(len, |c| c.min(len)));
            }
        }
    }

    /// At the end of [`Replica::load`]: holds and cuts from the reloaded history.
    pub(super) fn membership_after_load(&mut self) {
        self.membership.loading = false;
        let me = self.cfg.region;
        let held: Vec<BTreeSet<RegionId>> = self
            .membership
            .retires
            .values()
            .filter(|st| !st.remaining.contains(&me))
            .map(|st| st.regions.clone())
            .collect();
        for r in held.iter().flatten() {
            self.hold_at_log(*r);
        }
        self.cut_waiting_retires();
    }

    /// Tries to cut every retire whose cut is not known yet (a handful at most): each cut
    /// may end another retire's wait for an acknowledger it retired.
    pub(super) fn cut_waiting_retires(&mut self) {
        if self.membership.loading {
            return;
        }
        let waiting: Vec<EventId> = self
            .membership
            .retires
            .iter()
            .filter(|(_, st)| st.cut.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.try_cut(id);
        }
    }

    /// What `acker`, a member of a retire's `remaining`, gives its cut, from its
    /// acknowledgement (`acks`, the retire's). The rule (docs/protocol.md §8): an
    /// acknowledgement counts unless its acker was retired with a cut below it (an event above
    /// a cut is refused everywhere, so only some regions ever held it); an acknowledger
    /// retired with a known cut, whose log up to it this region holds, is not waited for: an
    /// acknowledgement at or below its cut is in that log, so it is held here and counts, and
    /// none above it ever will. Every region thus counts the same acknowledgements, whatever
    /// order it learned the cuts in.
    fn ack_of<'a>(&self, acks: Option<&'a BTreeMap<RegionId, Ack>>, acker: RegionId) -> AckOf<'a> {
        let ack = acks.and_then(|a| a.get(&acker));
        let m = self.logs.members.get(&acker);
        match (ack, m.and_then(|m| m.cut)) {
            (Some(a), None) => AckOf::Counted(&a.held),
            (Some(a), Some(cut)) if a.seq <= cut => AckOf::Counted(&a.held),
            _ if m.is_some_and(Member::retired_complete) => AckOf::Excused,
            _ => AckOf::Waiting,
        }
    }

    /// A retire's `remaining` sorted by [`Replica::ack_of`]: the one tally behind its cut
    /// ([`Replica::try_cut`]) and what a status page shows of it ([`Replica::retires`]).
    fn ack_tally<'a>(
        &self,
        st: &RetireState,
        acks: Option<&'a BTreeMap<RegionId, Ack>>,
    ) -> AckTally<'a> {
        let mut tally = AckTally {
            counted: BTreeMap::new(),
            excused: 0,
            waiting: Vec::new(),
        };
        for a in &st.remaining {
            match self.ack_of(acks, *a) {
                AckOf::Counted(held) => {
                    tally.counted.insert(*a, held);
                }
                AckOf::Excused => tally.excused += 1,
                AckOf::Waiting => tally.waiting.push(*a),
            }
        }
        tally
    }

    /// Computes the cut of a retire once every remaining member acknowledged it or is no
    /// longer waited for ([`Replica::ack_of`]): per retired region, the highest seq an
    /// acknowledgement that counts held.
    fn try_cut(&mut self, retire: EventId) {
        if self.membership.loading {
            return;
        }
        let Some(st) = self.membership.retires.get(&retire) else {
            return;
        };
        if st.cut.is_some() {
            return;
        }
        let tally = self.ack_tally(st, self.membership.acks.get(&retire));
        if !tally.waiting.is_empty() {
            return;
        }
        let cut: BTreeMap<RegionId, u64> = st
            .regions
            .iter()
            .map(|r| {
                let c = tally
                    .counted
                    .values()
                    .filter_map(|h| h.get(r).copied())
                    .max()
                    .unwrap_or(0);
                (*r, c)
            })
            .collect();
        if let Some(st) = self.membership.retires.get_mut(&retire) {
            st.cut = Some(cut.clone());
        }
        self.membership.stats.cuts += 1;
        self.membership.stats.acks_excused += tally.excused;
        for (r, c) in cut {
            self.apply_cut(retire, r, c);
        }
        // A retired region's cut may excuse it from another retire's acknowledgements.
        self.cut_waiting_retires();
    }

    /// A retired region that refuses a peer's snapshot ([`Replica::install_snapshot`]) may
    /// never get the retire and acknowledgements that name it otherwise: folded into the
    /// peers' snapshots, no member serves them any longer. `fresh`, restored from that
    /// snapshot (its membership history verified), knows them: each retire whose cut names
    /// this region is taken from it with its acknowledgements and cut, and the cut applied
    /// here, so this region stops issuing as any retired region does. Nothing else of the
    /// snapshot is taken (the balances stay this region's).
    pub(super) fn learn_own_cut(&mut self, fresh: &Replica) {
        let me = self.cfg.region;
        if self.membership.retired_self || !fresh.membership.retired_self {
            return;
        }
        for (id, st) in &fresh.membership.retires {
            let Some(cut) = st.cut.clone().filter(|c| c.contains_key(&me)) else {
                continue;
            };
            if self
                .membership
                .retires
                .get(id)
                .is_some_and(|s| s.cut.is_some())
            {
                continue;
            }
            self.membership.retires.insert(*id, st.clone());
            if let Some(acks) = fresh.membership.acks.get(id) {
                let held = self.membership.acks.entry(*id).or_default();
                for (a, ack) in acks {
                    held.entry(*a).or_insert_with(|| ack.clone());
                }
            }
            self.membership.stats.cuts += 1;
            self.membership.stats.cuts_from_snapshot += 1;
            for (r, c) in cut {
                self.apply_cut(*id, r, c);
            }
        }
        // Its own cut may excuse it from another retire's acknowledgements.
        self.cut_waiting_retires();
    }

    /// The cut of `region` is `cut`: events above it are voided here (unsettled) and refused
    /// from now on; buffered ones up to it are applied.
    fn apply_cut(&mut self, retire: EventId, region: RegionId, cut: u64) {
        let me = self.cfg.region;
        let Some(m) = self.logs.members.get_mut(&region) else {
            return;
        };
        if let Some(old) = m.cut {
            if old != cut {
                self.membership.broken = true;
                self.report(Report::Membership {
                    event: retire,
                    what: format!("second cut of {region} at {cut} differs from {old}"),
                });
            }
            return;
        }
        m.cut = Some(cut);
        m.cap = Some(cut);
        // A seal query's hold ends with the cut: every remaining member agreed on the
        // region's history up to it, and a retired region seals nothing more (its seal, if
        // any, is at or below the cut and applies in order, or above it and is refused).
        m.seal_cap = None;
        self.report(Report::Membership {
            event: retire,
            what: format!("{region} retired: cut at seq {cut}"),
        });
        if region == me {
            self.membership.retired_self = true;
            return;
        }
        if !self.void_above(retire, region, cut) {
            return;
        }
        if let Some(m) = self.logs.members.get_mut(&region) {
            let dropped = m.pending.split_off(&cut.saturating_add(1));
            self.membership.stats.refused_above_cut += dropped.len() as u64;
            m.pending_hb.retain(|seq, _| *seq <= cut);
        }
        self.drain_pending(region);
    }

    /// Voids the unsettled events of `region` held here above `cut` (a retire's cut, or a
    /// seal's: docs/protocol.md §8, §12). False, with settlement stopped and a report, when
    /// one of them is settled here already (what was settled is never voided).
    pub(super) fn void_above(&mut self, cause: EventId, region: RegionId, cut: u64) -> bool {
        let len = self.logs.len_of(region);
        if len > cut {
            let settled_above = self
                .logs
                .origin_events(region, cut)
                .iter()
                .any(|e| self.settle.is_settled(&e.key()));
            if settled_above {
                self.membership.broken = true;
                self.report(Report::Membership {
                    event: cause,
                    what: format!("cut of {region} at {cut} is below an event settled here"),
                });
                return false;
            }
            let voided = self.logs.truncate(region, cut);
            for e in &voided {
                self.settle.unsettled.remove(&e.key());
                if let Some(tx) = e.tx() {
                    self.accounts.unapply(e.id, tx);
                    // A voided event holds its idempotency key no more.
                    if let (Some(k), Some(acct)) = (
                        tx.idempotency_key.as_deref(),
                        self.accounts.map.get_mut(&tx.account),
                    ) {
                        acct.forget_key(&self.logs, k, e.id);
                    }
                }
                if let Some(op) = e.account_op() {
                    self.accounts.unapply_op(e.id, op);
                    self.modes.unindex(e);
                }
                // A voided seal (of an epoch lost before its seal reached the member that
                // answered the next seal query) is no seal: the next one may reuse its id.
                if let Some(Change::Seal { .. }) = e.change() {
                    if let Some(seals) = self.sealing.seals.get_mut(&region) {
                        seals.retain(|s| s.id != e.id);
                    }
                }
                self.membership.stats.voided += 1;
            }
            for e in &voided {
                let pair = match (e.tx(), e.account_op()) {
                    (Some(tx), _) => Some((&tx.account, tx.currency)),
                    (None, Some(op)) => Some(op.pair()),
                    (None, None) => None,
                };
                if let Some((account, currency)) = pair {
                    // A pair with events dropped into a snapshot is in use.
                    if !self
                        .settle
                        .compacted_sums
                        .contains_key(&(account.clone(), currency))
                    {
                        self.accounts
                            .forget_if_unused(&self.logs, account, currency);
                    }
                }
            }
        }
        true
    }

    // ---- queries ---------------------------------------------------------------------------

    /// The members in force now: every member (this region included) whose cut is not
    /// known, joined ones once their join is applied here.
    pub fn members_in_force(&self) -> Vec<RegionId> {
        self.logs
            .members
            .iter()
            .filter(|(_, m)| m.cut.is_none())
            .map(|(r, _)| *r)
            .collect()
    }

    /// Was `region` a member in force at `hlc`, as far as this region knows: joined at or
    /// before it (founding members from the start) and not retired by a retire at or
    /// before it.
    pub fn member_at(&self, region: RegionId, hlc: Hlc) -> bool {
        let Some(m) = self.logs.members.get(&region) else {
            return false;
        };
        if m.joined.is_some_and(|j| j > hlc) {
            return false;
        }
        !self
            .membership
            .retires
            .values()
            .any(|st| st.cut.is_some() && st.hlc <= hlc && st.regions.contains(&region))
    }

    /// Regions named by a retire whose cut is not known yet.
    pub fn retiring(&self) -> BTreeSet<RegionId> {
        self.membership
            .retires
            .values()
            .filter(|st| st.cut.is_none())
            .flat_map(|st| st.regions.iter().copied())
            .collect()
    }

    /// Is `region` a member here (in force or retired): founding, or joined by an event
    /// this region applied.
    pub fn is_member(&self, region: RegionId) -> bool {
        self.logs.members.contains_key(&region)
    }

    /// The HLC of `region`'s join, if it joined by an event this region applied (`None`
    /// for a founding member or a stranger).
    pub fn joined_at(&self, region: RegionId) -> Option<Hlc> {
        self.logs.members.get(&region).and_then(|m| m.joined)
    }

    /// Every join this region applied (itself included, for a region that joined), by
    /// region: the host reads the metadata it put in (walletd: peer id and addresses) to
    /// reach a member that joined after it was configured.
    pub fn joins(&self) -> Vec<JoinInfo> {
        self.membership.joins.values().cloned().collect()
    }

    /// The cut of a retired region, once known.
    pub fn cut(&self, region: RegionId) -> Option<u64> {
        self.logs.members.get(&region).and_then(|m| m.cut)
    }

    /// Every retire held, in id order, with its acknowledgements and cut.
    pub fn retires(&self) -> Vec<RetireInfo> {
        self.membership
            .retires
            .iter()
            .map(|(id, st)| {
                let tally = self.ack_tally(st, self.membership.acks.get(id));
                let acks = tally
                    .counted
                    .into_iter()
                    .map(|(a, h)| (a, h.clone()))
                    .collect();
                let missing = tally.waiting;
                RetireInfo {
                    id: *id,
                    hlc: st.hlc,
                    regions: st.regions.iter().copied().collect(),
                    remaining: st.remaining.iter().copied().collect(),
                    reason: st.reason.to_string(),
                    missing,
                    acks,
                    cut: st.cut.clone(),
                }
            })
            .collect()
    }

    /// True once a cut names this region: it issues nothing more.
    pub fn is_retired(&self) -> bool {
        self.membership.retired_self
    }

    /// True until this joining region has applied its own join.
    pub fn is_joining(&self) -> bool {
        self.joining
    }

    /// Membership counters.
    pub fn membership_stats(&self) -> MembershipStats {
        self.membership.stats
    }
}
