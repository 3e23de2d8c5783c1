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

use serde::{Deserialize, Serialize};

use rust_decimal::Decimal;

use crate::auth::Authenticator;
use crate::event::Kind;
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::money::{Amount, Currency};
use crate::policy::{Policy, PolicyHash};

use super::Replica;

/// The snapshot body's format; raised when a field is added.
pub const SNAPSHOT_FORMAT: u16 = 1;

/// The settled fold state of one (account, currency) at the snapshot point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapBalance {
    /// The currency.
    pub currency: Currency,
    /// Settled balance, compensations included.
    pub settled: Decimal,
    /// An overdraft episode is open.
    pub in_episode: bool,
    /// The open episode's fee was charged.
    pub episode_fee_charged: bool,
    /// Fees charged in the open episode.
    pub episode_fees: Decimal,
    /// The settled sum overflowed: frozen.
    pub frozen: bool,
}

/// One account at the snapshot point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapAccount {
    /// The account.
    pub account: AccountId,
    /// Its (account, currency) pairs, by currency.
    pub balances: Vec<SnapBalance>,
}

/// An idempotency key still within retention at the snapshot point: the settled event that
/// holds it and the body a later copy is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapKey {
    /// The account.
    pub account: AccountId,
    /// The key.
    pub key: String,
    /// The event holding it.
    pub id: EventId,
    /// That event's HLC (its retention runs from here).
    pub hlc: Hlc,
    /// Its kind.
    pub kind: Kind,
    /// Its amount.
    pub amount: Amount,
    /// Its currency.
    pub currency: Currency,
    /// Its reference.
    pub reference: Option<String>,
}

/// A version of the policy history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapPolicy {
    /// Version (1 is the seed policy).
    pub version: u32,
    /// Its hash.
    pub hash: PolicyHash,
    /// The policy event and its HLC (`None` for the seed).
    pub event: Option<(EventId, Hlc)>,
    /// The policy.
    pub policy: Policy,
}

/// One member at the snapshot point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapMember {
    /// The region.
    pub region: RegionId,
    /// Its join's HLC (`None`: a founding member).
    pub joined: Option<Hlc>,
    /// The last of its events at or below the snapshot point (0: none): its part of the
    /// snapshot's version vector.
    pub seq: u64,
    /// That event's HLC ([`Hlc::ZERO`] when none): its next event must be above it.
    pub hlc: Hlc,
}

/// What a snapshot holds: the settled state at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u16,
    /// The cluster.
    pub cluster: String,
    /// The snapshot point: the settled watermark it was taken at.
    pub at: Hlc,
    /// The key retention the fold ran with (ms).
    pub retention_ms: u64,
    /// Members in force at `at` and the version vector of the history it folds, by region.
    pub members: Vec<SnapMember>,
    /// Every account's settled state, by account.
    pub accounts: Vec<SnapAccount>,
    /// The policy history, oldest first.
    pub policies: Vec<SnapPolicy>,
    /// Keys still within retention at `at`, in settled order.
    pub keys: Vec<SnapKey>,
    /// Feed entries before it (the next entry's position).
    pub feed_len: u64,
    /// Events settled before it.
    pub settled: u64,
    /// Named extensions (per-account state added later), by name.
    pub ext: Vec<(String, Vec<u8>)>,
}

/// A signed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The state.
    pub body: SnapshotBody,
    /// The region that made and signed it.
    pub signer: RegionId,
    /// Its signature over [`Snapshot::signing_bytes`].
    pub sig: Box<[u8]>,
}

impl SnapshotBody {
    /// The body's canonical bytes (versioned postcard, as on the wire).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::wire::encode_value(self)
    }
}

impl Snapshot {
    /// What the signature covers: a domain tag, the signer, and the body's bytes (which name
    /// the cluster, so a snapshot of another cluster does not verify).
    pub fn signing_bytes(body: &SnapshotBody, signer: RegionId) -> Vec<u8> {
        let mut out = b"wallet-snapshot\0".to_vec();
        out.extend_from_slice(signer.as_str().as_bytes());
        out.push(0);
        out.extend(body.to_bytes());
        out
    }

    /// True when the signature is `signer`'s (the key valid at the snapshot point) and the
    /// body is of this cluster and format.
    pub fn verify(&self, auth: &dyn Authenticator, cluster: &str) -> bool {
        self.body.format == SNAPSHOT_FORMAT
            && self.body.cluster == cluster
            && auth.verify_at(
                self.signer,
                self.body.at,
                &Snapshot::signing_bytes(&self.body, self.signer),
                &self.sig,
            )
    }
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
            feed_len: self.settle.feed.len() as u64,
            settled: self.settle.settled_count,
            ext: Vec::new(),
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
    pub fn compact(&mut self) -> Option<Snapshot> {
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
        for acct in self.accounts.map.values_mut() {
            for (r, base) in &bases {
                if let Some(seqs) = acct.events.get_mut(r) {
                    let n = seqs.partition_point(|q| q <= base);
                    seqs.drain(..n);
                }
            }
        }
        self.stats.compactions += 1;
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
}
