//! Snapshots (SPEC §10, issue 13): the settled state at a point every member holds, signed by
//! the region that made it, so that history below it can be folded away and a restarted or new
//! region can start from it.
//!
//! A snapshot is taken at the settled watermark `at`, and only when every member in force has
//! announced (in its signed heartbeats' version vectors) every event at or below `at`
//! ([`Replica::compaction_point`]): the history it replaces is then final on every member, and
//! no member will ever pull it again. Its body is a pure function of the settled prefix and
//! `at`: two regions at the same watermark produce byte-identical bodies (tested), whatever
//! order they received events in and whatever they hold above `at`. Local knowledge
//! (provisional balances, what each peer announced, buffers) is left out on purpose.
//!
//! The body is designed to be extended: new per-account state (for instance escrow rights or
//! a home region for the consistency modes of SPEC §8) goes into [`SnapshotBody::ext`] under a
//! name of its own, deterministic bytes that older readers carry along untouched, or into a
//! new field with [`SNAPSHOT_FORMAT`] raised.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::event::{AccountOp, Body, Change, Event, Tx};
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::money::Currency;
use crate::snapshot::{
    RestoreError, SnapAccount, SnapBalance, SnapHome, SnapKey, SnapMember, SnapPolicy, SnapRights,
    Snapshot, SnapshotBody, EXT_HOMES, EXT_MEMBERSHIP, EXT_RIGHTS, SNAPSHOT_FORMAT,
};

use super::accounts::BalanceState;
use super::durability::{Awaiting, Durability};
use super::log::Logs;
use super::settle::PolicyVersion;
use super::{Config, Record, Replica, Report, Stats};

/// What a member's snapshot is to this region ([`Replica::snapshot_fit`]), and did here
/// ([`Replica::apply_peer_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Installed (to be installed) in place of what this region folded.
    Installed,
    /// Folds events this region lacks but lies at or below its watermark: left aside.
    Below,
    /// This region holds every event it folds (a copy, or a late answer): left aside.
    NotLacking,
}

impl Replica {
    /// The point history may be folded into a snapshot at: the settled watermark, when every
    /// other member in force has announced a version vector holding every event at or below
    /// it (so it is final everywhere and no member will pull it again). None before anything
    /// settled, while settlement is blocked, or while a member lags.
    pub fn compaction_point(&self) -> Option<Hlc> {
        let at = self.settle.watermark;
        if at == Hlc::ZERO || self.settlement_blocked() {
            return None;
        }
        let upto: Vec<(RegionId, u64)> = self
            .logs
            .members
            .iter()
            .map(|(r, m)| (*r, m.seq_at(at)))
            .collect();
        for (r, m) in &self.logs.members {
            if *r == self.cfg.region || m.retired_complete() || m.joined.is_some_and(|j| j > at) {
                continue;
            }
            if upto.iter().any(|(o, seq)| m.vv.get(o) < *seq) {
                return None;
            }
        }
        Some(at)
    }

    /// A signed snapshot of the settled state at [`Replica::compaction_point`], if there is
    /// one. O(accounts + keys within retention + members × log(events)).
    pub fn snapshot(&self) -> Option<Snapshot> {
        let at = self.compaction_point()?;
        let body = self.snapshot_body(at);
        let sig = self
            .cfg
            .auth
            .sign(&Snapshot::signing_bytes(&body, self.cfg.region))
            .into();
        Some(Snapshot {
            body,
            signer: self.cfg.region,
            sig,
        })
    }

    /// The body at `at`, which must be the settled watermark.
    fn snapshot_body(&self, at: Hlc) -> SnapshotBody {
        let members = self
            .logs
            .members
            .iter()
            .filter(|(_, m)| m.joined.is_none_or(|j| j <= at))
            .map(|(r, m)| {
                let seq = m.seq_at(at);
                let hlc = match m.get(seq) {
                    Some(e) => e.hlc,
                    None if seq > 0 && seq == m.base => m.base_hlc,
                    None => Hlc::ZERO,
                };
                SnapMember {
                    region: *r,
                    joined: m.joined,
                    seq,
                    hlc,
                }
            })
            .collect();
        let accounts = self
            .accounts
            .map
            .iter()
            .filter_map(|(a, st)| {
                let balances: Vec<SnapBalance> = st
                    .balances
                    .iter()
                    .filter(|(_, b)| b.bal.settled != Decimal::ZERO || b.in_episode || b.frozen)
                    .map(|(c, b)| SnapBalance {
                        currency: *c,
                        settled: b.bal.settled,
                        in_episode: b.in_episode,
                        episode_fee_charged: b.episode_fee_charged,
                        episode_fees: b.episode_fees,
                        frozen: b.frozen,
                    })
                    .collect();
                (!balances.is_empty()).then(|| SnapAccount {
                    account: a.clone(),
                    balances,
                })
            })
            .collect();
        let policies = self
            .settle
            .policies
            .iter()
            .map(|p| SnapPolicy {
                version: p.version,
                hash: p.hash,
                event: p.event,
                policy: p.policy.clone(),
            })
            .collect();
        let keys = self
            .settle
            .key_expiry
            .iter()
            .filter_map(|(_, account, id)| {
                let e = self.logs.event(*id)?;
                let tx = e.tx()?;
                Some(SnapKey {
                    account: account.clone(),
                    key: tx.idempotency_key.as_deref()?.to_string(),
                    id: *id,
                    hlc: e.hlc,
                    kind: tx.kind,
                    amount: tx.amount,
                    currency: tx.currency,
                    reference: tx.reference.as_deref().map(str::to_string),
                })
            })
            .collect();
        SnapshotBody {
            format: SNAPSHOT_FORMAT,
            cluster: self.cfg.cluster.clone(),
            at,
            retention_ms: self.settle.retention_ms,
            members,
            accounts,
            policies,
            keys,
            feed_len: self.settle.feed_end(),
            settled: self.settle.settled_count,
            ext: self.snapshot_ext(at),
        }
    }

    /// Takes a snapshot at [`Replica::compaction_point`] and drops every event at or below
    /// it from memory: per origin, the log keeps only what follows (its base moves up),
    /// the per-account histories forget the dropped seqs, and dropped events that still hold
    /// an idempotency key within retention are kept aside for the duplicate rule until their
    /// retention ends. Balances, fold state, policy history and the feed are unchanged, so
    /// the replica settles, answers and merges exactly as one that never compacted. Returns
    /// the snapshot (the host stores it), or None when there is no compaction point.
    /// O(dropped events + accounts × origins).
    ///
    /// Refused (None) when [`Replica::compaction_allowed`] says so. Membership events dropped
    /// are kept aside (few) and carried by every later snapshot ([`EXT_MEMBERSHIP`]). The
    /// snapshot is also emitted as [`Record::Snapshot`] (store it and delete the events it
    /// folds) and kept to answer a member that lacks them.
    pub fn compact(&mut self) -> Option<Snapshot> {
        if !self.compaction_allowed() {
            return None;
        }
        let snap = self.snapshot()?;
        let at = snap.body.at;
        let retention = self.settle.retention_ms;
        let mut bases: Vec<(RegionId, u64)> = Vec::new();
        for (r, m) in self.logs.members.iter_mut() {
            // Keys whose retention ended at the watermark left the index when it settled.
            m.retained
                .retain(|_, e| super::settle::key_live(e.hlc, at, retention));
            let n = m.log.partition_point(|e| e.hlc <= at);
            if n == 0 {
                continue;
            }
            for e in m.log.drain(..n) {
                m.base += 1;
                m.base_hlc = e.hlc;
                debug_assert_eq!(e.id.seq, m.base);
                if e.change().is_some() {
                    self.membership.folded.push(e);
                    continue;
                }
                if let Some(tx) = e.tx() {
                    let sum = self
                        .settle
                        .compacted_sums
                        .entry((tx.account.clone(), tx.currency))
                        .or_default();
                    *sum = sum.checked_add(tx.delta()).unwrap_or(*sum);
                    if tx.idempotency_key.is_some() && super::settle::key_live(e.hlc, at, retention)
                    {
                        m.retained.insert(e.id.seq, e);
                    }
                }
            }
            bases.push((*r, m.base));
        }
        self.membership
            .folded
            .sort_by_key(|e| (e.id.origin, e.id.seq));
        for acct in self.accounts.map.values_mut() {
            for (r, base) in &bases {
                if let Some(seqs) = acct.events.get_mut(r) {
                    let n = seqs.partition_point(|q| q <= base);
                    seqs.drain(..n);
                }
            }
        }
        self.stats.compactions += 1;
        self.persist(Record::Snapshot(Box::new(snap.clone())));
        self.snapshot = Some(Box::new(snap.clone()));
        Some(snap)
    }

    /// Events held in memory (those dropped into snapshots are not; dropped ones kept for
    /// their keys are).
    pub fn events_in_memory(&self) -> u64 {
        self.logs
            .members
            .values()
            .map(|m| (m.log.len() + m.retained.len()) as u64)
            .sum()
    }

    /// True when event `id` was folded into a snapshot here: no longer served (its effect is
    /// in the balances). A dropped event kept for its idempotency key is still readable.
    pub fn compacted(&self, id: EventId) -> bool {
        self.logs
            .members
            .get(&id.origin)
            .is_some_and(|m| id.seq <= m.base)
            && self.logs.event(id).is_none()
    }

    /// The last snapshot made or restored from, if any.
    pub fn last_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_deref()
    }

    /// May this region compact now (docs/protocol.md §11)? Snapshots carry the membership
    /// history (joins, retires and cuts, key rotations, seals), so it is refused only while
    /// something is not final yet (a retire waiting for its cut is not refused: its cut is at
    /// or above every event the compaction point folds, since each acknowledger announced
    /// them and holds nothing of the retired region above its acknowledgement):
    /// - this region restores its own history, seals its old epoch, or waits for its own
    ///   join: what it holds is not yet what its peers hold of it;
    /// - a member's seal query answered here waits for its seal: the cut is not known, and if
    ///   it lands below an event settled here settlement stops for an operator, who needs that
    ///   history (the events, not a fold);
    /// - a rotation of this region's own key lies at or above the settled watermark: a
    ///   snapshot verifies against its signer's key valid at its point (all a region that
    ///   restores from it can know: the membership it carries ends there), but this region
    ///   signs with its newest key; they agree again once the watermark passes the rotation.
    pub fn compaction_allowed(&self) -> bool {
        !self.restoring
            && !self.joining
            && self.logs.members.values().all(|m| m.seal_cap.is_none())
            && !self.rotated_at_or_above(self.settle.watermark)
    }

    /// True when this region holds a rotation of its own key at or above `at`: it then signs
    /// with a key that is not the one valid at `at` ([`KeyHistory::at`](crate::KeyHistory)
    /// binds a rotation's key strictly above its HLC).
    fn rotated_at_or_above(&self, at: Hlc) -> bool {
        self.logs.members.get(&self.cfg.region).is_some_and(|m| {
            let from = m.log.partition_point(|e| e.hlc < at);
            m.log[from..]
                .iter()
                .any(|e| matches!(e.change(), Some(Change::RotateKey { .. })))
        })
    }

    /// The membership events at or below `at` (the settled watermark), by (origin, seq): those
    /// folded before and those still in the logs.
    fn settled_membership(&self, at: Hlc) -> Vec<Event> {
        let mut out = self.membership.folded.clone();
        for m in self.logs.members.values() {
            let n = m.log.partition_point(|e| e.hlc <= at);
            out.extend(m.log[..n].iter().filter(|e| e.change().is_some()).cloned());
        }
        out.sort_by_key(|e| (e.id.origin, e.id.seq));
        out
    }

    /// The extension sections of a body at `at` (the settled watermark): escrow rights, home
    /// moves and the membership history of the settled prefix, each only when not empty.
    fn snapshot_ext(&self, at: Hlc) -> Vec<(String, Vec<u8>)> {
        let mut ext = Vec::new();
        let membership = self.settled_membership(at);
        if !membership.is_empty() {
            ext.push((
                EXT_MEMBERSHIP.to_string(),
                crate::wire::encode_value(&membership),
            ));
        }
        let rights = self.settled_rights(at);
        if !rights.is_empty() {
            ext.push((EXT_RIGHTS.to_string(), crate::wire::encode_value(&rights)));
        }
        let homes = self.settled_homes(at);
        if !homes.is_empty() {
            ext.push((EXT_HOMES.to_string(), crate::wire::encode_value(&homes)));
        }
        ext
    }

    /// Escrow rights as the settled prefix alone gives them: the rights held (every event
    /// held counts when held) less what the events above `at` gave when they were held. The
    /// settled part of a keyed credit is in the rights already (the fold moved it there), the
    /// unsettled part is in `unspendable`, which the snapshot does not need (zero at `at`).
    fn settled_rights(&self, at: Hlc) -> Vec<SnapRights> {
        type Above = BTreeMap<(AccountId, Currency), (BTreeMap<RegionId, Decimal>, u64)>;
        let mut above: Above = BTreeMap::new();
        let give = |above: &mut Above, a: &AccountId, c: Currency, r: RegionId, d: Decimal| {
            let v = above
                .entry((a.clone(), c))
                .or_default()
                .0
                .entry(r)
                .or_default();
            *v = v.checked_add(d).unwrap_or(*v);
        };
        for (origin, m) in &self.logs.members {
            let from = m.log.partition_point(|e| e.hlc <= at);
            for e in m.log.get(from..).unwrap_or(&[]) {
                match &e.body {
                    Body::Tx(tx) if tx.kind.is_debit() || tx.idempotency_key.is_none() => {
                        give(&mut above, &tx.account, tx.currency, *origin, tx.delta());
                    }
                    Body::Account(op) => {
                        if let AccountOp::RightsTransfer {
                            account,
                            currency,
                            amount,
                            to,
                        } = &**op
                        {
                            give(&mut above, account, *currency, *origin, -amount.value());
                            give(&mut above, account, *currency, *to, amount.value());
                            above.entry((account.clone(), *currency)).or_default().1 += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        for (a, acct) in &self.accounts.map {
            for (c, st) in &acct.balances {
                let none = (BTreeMap::new(), 0);
                let (held_above, transfers_above) = above.get(&(a.clone(), *c)).unwrap_or(&none);
                let rights: Vec<(RegionId, Decimal)> = st
                    .rights
                    .iter()
                    .filter_map(|(r, v)| {
                        let mut v =
                            v.checked_sub(held_above.get(r).copied().unwrap_or_default())?;
                        v.rescale(c.minor_units());
                        (v != Decimal::ZERO).then_some((*r, v))
                    })
                    .collect();
                let transfers = st.transfers.saturating_sub(*transfers_above);
                if !rights.is_empty() || transfers > 0 {
                    out.push(SnapRights {
                        account: a.clone(),
                        currency: *c,
                        transfers,
                        rights,
                    });
                }
            }
        }
        out
    }

    /// The home moves at or below `at` (each the one that counts for its epoch).
    fn settled_homes(&self, at: Hlc) -> Vec<SnapHome> {
        let mut out = Vec::new();
        for (a, by_currency) in &self.modes.moves {
            for (c, by_epoch) in by_currency {
                for (epoch, m) in by_epoch {
                    if m.key.0 <= at {
                        out.push(SnapHome {
                            account: a.clone(),
                            currency: *c,
                            epoch: *epoch,
                            key: m.key,
                            to: m.to,
                        });
                    }
                }
            }
        }
        out
    }

    /// Restart or bootstrap from a snapshot: on a fresh replica (after
    /// [`Replica::restore_evidence`], before anything else), installs the settled state of
    /// `snapshot` (its signature, cluster, members, seed policy and key retention checked
    /// first: a snapshot that does not match is refused and nothing changes), then
    /// [`Replica::load`]s `events_after` (the events stored after it; any at or below its
    /// point are skipped: folded, or voided copies that are no history). The replica then
    /// answers, settles and merges as one that folded the whole history (checked by
    /// `core/tests/compaction.rs`); feed entries before the snapshot
    /// are not held ([`Replica::feed`] starts after them). Follow with
    /// [`Replica::restore_watermark`]. O(snapshot + events after).
    pub fn restore(
        &mut self,
        snapshot: &Snapshot,
        events_after: Vec<Event>,
    ) -> Result<(), RestoreError> {
        if self.logs.event_count() > 0 || self.settle.watermark != Hlc::ZERO {
            return Err(RestoreError::NotFresh);
        }
        snapshot.check_body(&self.cfg.cluster)?;
        let b = &snapshot.body;
        let membership: Vec<Event> = b.ext_section(EXT_MEMBERSHIP)?.unwrap_or_default();
        // The key history first (the signer may have joined or rotated its key): only keys
        // bound by membership events that verify.
        self.verify_membership(b, &membership)?;
        snapshot.check_signature(&*self.cfg.auth)?;
        if b.retention_ms != self.settle.retention_ms {
            return Err(RestoreError::Retention {
                ours: self.settle.retention_ms,
                theirs: b.retention_ms,
            });
        }
        let seed = b.policies.first().map(|p| p.hash);
        if seed != Some(self.seed_hash) {
            return Err(RestoreError::Policy {
                ours: self.seed_hash,
                theirs: seed.unwrap_or(crate::policy::PolicyHash([0; 32])),
            });
        }
        for m in &b.members {
            let joined = membership.iter().any(
                |e| matches!(e.change(), Some(Change::Join { region, .. }) if *region == m.region),
            );
            if !joined && !self.logs.members.contains_key(&m.region) {
                return Err(RestoreError::Member(m.region));
            }
        }
        let base_of = |r: RegionId| b.members.iter().find(|m| m.region == r).map(|m| m.seq);
        for k in &b.keys {
            if base_of(k.id.origin).is_none_or(|base| k.id.seq > base) || k.hlc > b.at {
                return Err(RestoreError::Malformed(format!(
                    "key of {} is not in the folded history",
                    k.id
                )));
            }
        }
        let rights: Vec<SnapRights> = b.ext_section(EXT_RIGHTS)?.unwrap_or_default();
        let homes: Vec<SnapHome> = b.ext_section(EXT_HOMES)?.unwrap_or_default();
        let at = b.at;
        // The membership history, applied as `load` applies it (cuts and holds wait for the
        // end of the `load` below).
        self.apply_folded_membership(membership);
        // The logs: bases, version vector, what every member covers.
        for m in &b.members {
            if let Some(lm) = self.logs.members.get_mut(&m.region) {
                lm.base = m.seq;
                lm.base_hlc = m.hlc;
            }
            if m.seq > 0 {
                self.logs.vv.dots.insert(m.region, m.seq);
                self.clock.observe(m.hlc);
            }
        }
        for lm in self.logs.members.values_mut() {
            lm.covered = lm.covered.max(at);
        }
        self.clock.observe(at);
        // Events still holding a key, kept aside as a compacting region keeps them.
        for k in &b.keys {
            let e = Event {
                id: k.id,
                hlc: k.hlc,
                body: Body::Tx(Tx {
                    account: k.account.clone(),
                    kind: k.kind,
                    amount: k.amount,
                    currency: k.currency,
                    idempotency_key: Some(k.key.as_str().into()),
                    reference: k.reference.as_deref().map(Into::into),
                }),
                sig: Box::new([]),
            };
            if let Some(lm) = self.logs.members.get_mut(&k.id.origin) {
                lm.retained.insert(k.id.seq, e);
            }
        }
        // Balances and fold state.
        for a in &b.accounts {
            let account = self.accounts.intern(a.account.clone());
            for bal in &a.balances {
                self.settle
                    .compacted_sums
                    .insert((account.clone(), bal.currency), bal.settled);
                if let Some(acct) = self.accounts.map.get_mut(&account) {
                    let st = acct.balances.entry(bal.currency).or_default();
                    st.bal.settled = bal.settled;
                    st.bal.provisional = bal.settled;
                    st.in_episode = bal.in_episode;
                    st.episode_fee_charged = bal.episode_fee_charged;
                    st.episode_fees = bal.episode_fees;
                    st.frozen = bal.frozen;
                }
            }
        }
        for r in rights {
            let account = self.accounts.intern(r.account);
            if let Some(acct) = self.accounts.map.get_mut(&account) {
                let st: &mut BalanceState = acct.balances.entry(r.currency).or_default();
                st.transfers = r.transfers;
                st.rights = r.rights.into_iter().collect();
            }
        }
        // The key index and its expiry queue, in settled order.
        for k in &b.keys {
            let account = self.accounts.intern(k.account.clone());
            if let Some(acct) = self.accounts.map.get_mut(&account) {
                acct.index_key(&self.logs, &k.key, k.id, (k.hlc, k.id.origin, k.id.seq));
            }
            self.settle
                .key_expiry
                .push_back((k.hlc.millis(), account, k.id));
        }
        // Settlement: the policy history, the settled prefix, the feed position.
        self.settle.policies = b
            .policies
            .iter()
            .map(|p| PolicyVersion {
                version: p.version,
                policy: p.policy.clone(),
                hash: p.hash,
                event: p.event,
            })
            .collect();
        self.settle.applied_cache.clear();
        self.settle.watermark = at;
        self.settle.persisted_watermark = at;
        self.settle.settled_upto = b
            .members
            .iter()
            .filter(|m| m.seq > 0)
            .map(|m| (m.hlc, m.region, m.seq))
            .max();
        self.settle.settled_count = b.settled;
        self.settle.compensations_count = b.feed_len;
        self.settle.feed_base = b.feed_len;
        for h in homes {
            self.modes
                .moves
                .entry(h.account)
                .or_default()
                .entry(h.currency)
                .or_default()
                .insert(
                    h.epoch,
                    super::modes::Move {
                        key: h.key,
                        to: h.to,
                    },
                );
        }
        self.snapshot = Some(Box::new(snapshot.clone()));
        self.stats.restores += 1;
        // Every event at or below the snapshot point was held and folded into it: one there
        // that it does not fold is a stored copy of an event voided above a retired member's
        // cut or dropped by a seal (the disk keeps such copies), not history; skipped, or
        // its key would go back below the settled prefix (compaction proptest dbaa38ab).
        self.load(events_after.into_iter().filter(|e| e.hlc > at).collect());
        Ok(())
    }

    /// Checks a snapshot's membership history before anything is applied: each event is a
    /// valid membership event of a member, at or below the snapshot point, within what the
    /// snapshot folds of its origin, and verifies against its origin's key at its HLC (in
    /// total order, binding the keys of the joins and rotations it verified as it goes, so a
    /// key the snapshot's signer or a later event needs is known).
    fn verify_membership(
        &mut self,
        b: &SnapshotBody,
        events: &[Event],
    ) -> Result<(), RestoreError> {
        let mut order: Vec<&Event> = events.iter().collect();
        order.sort_by_key(|e| e.key());
        for e in order {
            let folded = b
                .members
                .iter()
                .find(|m| m.region == e.id.origin)
                .map_or(0, |m| m.seq);
            let bad =
                |what: &str| RestoreError::Malformed(format!("membership event {}: {what}", e.id));
            if e.change().is_none() || e.validate().is_err() {
                return Err(bad("not a valid membership event"));
            }
            if e.hlc > b.at || e.id.seq > folded {
                return Err(bad("not in the folded history"));
            }
            if !self
                .cfg
                .auth
                .verify_event(e.id.origin, e, &self.cfg.cluster)
            {
                return Err(bad("signature does not verify"));
            }
            match e.change() {
                Some(Change::Join { region, key, .. }) => {
                    self.cfg.auth.set_key(*region, e.hlc, key)
                }
                Some(Change::RotateKey { key }) => self.cfg.auth.set_key(e.id.origin, e.hlc, key),
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies a snapshot's membership history (checked by
    /// [`Replica::verify_membership`]) to a fresh replica, as [`Replica::load`] applies
    /// reloaded membership events: regions joined become members first, then each event in
    /// (origin, seq) order; cuts and holds are computed at the end of the `load` that
    /// follows. The events are kept for the next snapshot.
    fn apply_folded_membership(&mut self, events: Vec<Event>) {
        for e in &events {
            if let Some(Change::Join { region, .. }) = e.change() {
                self.logs
                    .members
                    .entry(*region)
                    .or_insert_with(|| super::log::Member {
                        covered: e.hlc,
                        joined: Some(e.hlc),
                        ..super::log::Member::default()
                    });
            }
        }
        self.membership.loading = true;
        for e in &events {
            if let Some(c) = e.change() {
                self.note_membership(e.id, e.hlc, c.clone());
            }
        }
        self.membership.folded = events;
    }

    /// The snapshot to answer a pull with instead of events: when the requester (version
    /// vector `vv`) lacks events below a log's base, which no member serves any longer.
    pub(super) fn snapshot_for(&self, vv: &crdts::VClock<RegionId>) -> Option<&Snapshot> {
        let lacks = self
            .logs
            .members
            .iter()
            .any(|(r, m)| m.base > 0 && vv.get(r) < m.base);
        if lacks {
            self.snapshot.as_deref()
        } else {
            None
        }
    }

    /// A member answered a pull with its snapshot: verified against its signer's key and,
    /// when it folds events this region lacks, installed in place of what this region folded
    /// ([`Replica::install_snapshot`]); then the pull chain goes on from the same member for
    /// the events after it. A refused snapshot is reported.
    pub(super) fn handle_snapshot(&mut self, now_ms: u64, from: RegionId, snap: Box<Snapshot>) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        match self.apply_peer_snapshot(&snap) {
            // A copy, or a late answer to an earlier pull: this region holds everything it
            // folds. It is not the answer to the pull in flight, whose answer is on its way
            // (taking it for that answer cut a chain: simulator seed 168 with --lost-disk).
            Ok(Applied::NotLacking) => return,
            Ok(Applied::Installed | Applied::Below) => {}
            Err(RestoreError::Retired) => {
                // Settles nothing more: keeps what it settled, and stops this chain.
                self.handle_pull_answer(now_ms, from, Vec::new(), false);
                return;
            }
            Err(e) => self.report(Report::Snapshot {
                from,
                reason: e.to_string(),
            }),
        }
        self.handle_pull_answer(now_ms, from, Vec::new(), true);
    }

    /// What a member's snapshot at `at`, folding each member's events up to `seqs`, is to
    /// this region: the one rule for a whole snapshot ([`Replica::apply_peer_snapshot`]) and
    /// for a chunked one, judged on chunk 0's header before any byte is assembled
    /// (replica/transfer.rs; the body must match that header). `Installed`: it folds events
    /// this region lacks above its watermark, so it is to be installed. `NotLacking` is no
    /// answer to the pull in flight (a copy, or a late answer to an earlier pull: taking it
    /// for the answer cut a chain, simulator seed 168); the other two are.
    pub(super) fn snapshot_fit(
        &self,
        at: Hlc,
        seqs: impl IntoIterator<Item = (RegionId, u64)>,
    ) -> Applied {
        if !seqs.into_iter().any(|(r, s)| self.logs.len_of(r) < s) {
            Applied::NotLacking
        } else if at <= self.settle.watermark {
            Applied::Below
        } else {
            Applied::Installed
        }
    }

    /// A member's snapshot (whole, or reassembled from chunks): installed when
    /// [`Replica::snapshot_fit`] says so, else left aside.
    pub(super) fn apply_peer_snapshot(&mut self, snap: &Snapshot) -> Result<Applied, RestoreError> {
        let fit = self.snapshot_fit(snap.body.at, snap.body.seqs());
        if fit == Applied::Installed {
            self.install_snapshot(snap)?;
        }
        Ok(fit)
    }

    /// Replaces this replica's folded state by `snap`'s, keeping the events it holds after
    /// the snapshot and everything local (persist indexes and what waits for them, own
    /// events' durability, the pull scheduler, what each member announced, pending outputs,
    /// counters). Feed entries between this region's feed and the snapshot's are skipped:
    /// this region never emits them. Emits [`Record::Snapshot`]; the events it folds count
    /// as durable here once that record is. Refused while own transactions wait to be
    /// signed, and for a snapshot [`Replica::restore`] refuses (nothing changes then).
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        if self.unsigned_from != 0 {
            return Err(RestoreError::NotFresh);
        }
        if self.membership.retired_self {
            return Err(RestoreError::Retired);
        }
        snap.check_body(&self.cfg.cluster)?;
        let seq_of = |r: &RegionId| {
            snap.body
                .members
                .iter()
                .find(|m| m.region == *r)
                .map_or(0, |m| m.seq)
        };
        // A snapshot that folds this region's own log below events it issued at or before the
        // point would drop them (`restore` loads only what lies above it) and hand their seqs
        // out again. Only a retire does that: a remaining member that acknowledged it applies
        // nothing of this region above its acknowledgement (`cap`), so its watermark passes
        // them. Refused as from a retired region (simulator seed 71, docs/protocol.md §11).
        let own = seq_of(&self.cfg.region);
        let folds_own_short = self.logs.members.get(&self.cfg.region).is_some_and(|m| {
            m.slice(own, u64::MAX)
                .first()
                .is_some_and(|e| e.hlc <= snap.body.at)
        });
        let mut after = Vec::new();
        if !folds_own_short {
            for (r, m) in &self.logs.members {
                after.extend(m.slice(seq_of(r), u64::MAX).iter().cloned());
            }
        }
        let region = self.cfg.region;
        let placeholder = || Config::new(region, Vec::new(), crate::policy::Policy::zero());
        let cfg = std::mem::replace(&mut self.cfg, placeholder());
        let mut fresh = Replica::new(cfg, self.clock.last());
        fresh.restore_evidence(self.evidence.clone());
        // A snapshot that shows this region retired is not installed either: a retired
        // region settles nothing more than it had (docs/protocol.md §11). Its membership
        // history, verified by `restore`, still tells this region its cut, which may be
        // folded out of every member's log: it learns it from there.
        let restored = fresh.restore(snap, after);
        let verified = restored.is_ok();
        let refused = if folds_own_short || (verified && fresh.membership.retired_self) {
            Err(RestoreError::Retired)
        } else {
            restored
        };
        if let Err(e) = refused {
            self.cfg = std::mem::replace(&mut fresh.cfg, placeholder());
            if verified {
                self.learn_own_cut(&fresh);
            }
            return Err(e);
        }
        // Local state carries over.
        fresh.dur = std::mem::replace(&mut self.dur, Durability::new(Hlc::ZERO));
        fresh.pull = std::mem::take(&mut self.pull);
        fresh.outputs = std::mem::take(&mut self.outputs);
        fresh.stats = Stats {
            restores: self.stats.restores + 1,
            ..self.stats
        };
        let moves = std::mem::take(&mut fresh.modes.moves);
        fresh.modes = std::mem::take(&mut self.modes);
        fresh.modes.moves = moves;
        fresh.hold_signing = self.hold_signing;
        fresh.restoring = self.restoring;
        // A snapshot that holds this region's own join ends its wait for it.
        fresh.joining = self.joining && fresh.joining;
        // What this region asked and heard while sealing, and what peers hold durably of it,
        // is local; the seals themselves come from the snapshot and the events after it.
        let seals = std::mem::take(&mut fresh.sealing.seals);
        fresh.sealing = std::mem::take(&mut self.sealing);
        fresh.sealing.seals = seals;
        fresh.membership.stats = self.membership.stats;
        fresh.evidence_resend_heartbeats = self.evidence_resend_heartbeats;
        announced_carry_over(&mut self.logs, &mut fresh.logs);
        *self = fresh;
        let idx = self.persist(Record::Snapshot(Box::new(snap.clone())));
        for m in snap.body.members.iter().filter(|m| m.seq > 0) {
            let what = if m.region == region {
                Awaiting::Own(m.seq)
            } else {
                Awaiting::Remote(m.region, m.seq)
            };
            self.dur.awaiting.push_back((idx, what));
        }
        let origins: Vec<RegionId> = self.logs.members.keys().copied().collect();
        for origin in origins {
            self.drain_pending(origin);
        }
        Ok(())
    }

    /// Answers a pull with (the first chunk of) the last snapshot when the requester lacks
    /// what it folds; true if it did.
    pub(super) fn answer_with_snapshot(
        &mut self,
        from: RegionId,
        vv: &crdts::VClock<RegionId>,
    ) -> bool {
        if self.snapshot_for(vv).is_none() {
            return false;
        }
        self.stats.snapshots_sent += 1;
        // In chunks (replica/transfer.rs): a snapshot may exceed one message.
        self.send_snapshot_chunk(from, None, 0)
    }
}

/// What each member announced (promises, version vectors, seed policy) and the events
/// buffered out of order are local knowledge a snapshot leaves out: they carry over to the
/// replica that installs one.
fn announced_carry_over(old: &mut Logs, fresh: &mut Logs) {
    for (r, o) in old.members.iter_mut() {
        if let Some(f) = fresh.members.get_mut(r) {
            f.promise = o.promise.take();
            f.pending_hb = std::mem::take(&mut o.pending_hb);
            f.covering = o.covering.take();
            f.vv = std::mem::take(&mut o.vv);
            f.policy = o.policy;
            f.heard = o.heard;
            f.covered = f.covered.max(o.covered);
            f.seal_cap = f.seal_cap.or(o.seal_cap);
            // Events buffered above a gap stay buffered (the snapshot may close the gap).
            let held = f.len();
            f.pending = std::mem::take(&mut o.pending);
            f.pending.retain(|seq, _| *seq > held);
        }
    }
}
