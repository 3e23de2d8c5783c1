//! Snapshots (SPEC §10, issue 13): the data a snapshot holds, its canonical bytes and its
//! signature. How a replica takes one, compacts, restores from one and sends one to a peer is
//! in `replica/snapshot.rs`; the types live here, beside `message`, which carries them.
//!
//! A snapshot is the settled state at a point every member holds, signed by the region that
//! made it. Its body is a pure function of the settled prefix and the point: two regions at the
//! same watermark produce byte-identical bodies. It is designed to be extended: new
//! per-account state goes into [`SnapshotBody::ext`] under a name of its own (today
//! [`EXT_RIGHTS`] and [`EXT_HOMES`], for the consistency modes of SPEC §8), deterministic bytes
//! that older readers carry along untouched, or into a new field with [`SNAPSHOT_FORMAT`]
//! raised.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use rust_decimal::Decimal;

use crate::auth::Authenticator;
use crate::event::{Kind, OrderKey};
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::money::{Amount, Currency};
use crate::policy::{Policy, PolicyHash};

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

    /// Its version vector: each member with the last seq it folds, in the body's order (what
    /// a chunked transfer's header carries, [`crate::message::SnapshotChunk::seqs`]).
    pub fn seqs(&self) -> impl Iterator<Item = (RegionId, u64)> + '_ {
        self.members.iter().map(|m| (m.region, m.seq))
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
        self.check(auth, cluster).is_ok()
    }

    /// [`Snapshot::verify`], saying what is wrong: format, cluster, then the signature of
    /// `signer` with its key valid at the snapshot point.
    pub fn check(&self, auth: &dyn Authenticator, cluster: &str) -> Result<(), RestoreError> {
        self.check_body(cluster)?;
        self.check_signature(auth)
    }

    /// Format and cluster of the body.
    pub fn check_body(&self, cluster: &str) -> Result<(), RestoreError> {
        if self.body.format != SNAPSHOT_FORMAT {
            return Err(RestoreError::Format(self.body.format));
        }
        if self.body.cluster != cluster {
            return Err(RestoreError::Cluster {
                ours: cluster.to_string(),
                theirs: self.body.cluster.clone(),
            });
        }
        Ok(())
    }

    /// The signature of `signer`, with its key valid at the snapshot point.
    pub fn check_signature(&self, auth: &dyn Authenticator) -> Result<(), RestoreError> {
        let bytes = Snapshot::signing_bytes(&self.body, self.signer);
        if !auth.verify_at(self.signer, self.body.at, &bytes, &self.sig) {
            return Err(RestoreError::Signature(self.signer));
        }
        Ok(())
    }
}

/// The [`SnapshotBody::ext`] section of escrow rights: a `Vec<SnapRights>`.
pub const EXT_RIGHTS: &str = "rights";
/// The [`SnapshotBody::ext`] section of home moves: a `Vec<SnapHome>`.
pub const EXT_HOMES: &str = "homes";
/// The [`SnapshotBody::ext`] section of the membership history (SPEC §10, docs/protocol.md
/// §10): a `Vec<Event>`, every membership event at or below the snapshot point (joins,
/// retires and their acknowledgements, key rotations, seals), by (origin, seq), each with its
/// origin's signature. A region restored from the snapshot applies them as it would have
/// when it folded them, so its members, cuts, key history and origin epochs are those of a
/// region that folded the whole history. Absent when there are none (a body without
/// membership history keeps the bytes it had before the section existed).
pub const EXT_MEMBERSHIP: &str = "membership";

/// Escrow spending rights (SPEC §8, docs/modes.md) of one (account, currency) over the settled
/// prefix: what the events and compensations at or below the snapshot point gave each region.
/// A pure function of the settled prefix, like the rest of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRights {
    /// The account.
    pub account: AccountId,
    /// The currency.
    pub currency: Currency,
    /// Rights transfers of this pair folded.
    pub transfers: u64,
    /// Each region's non-zero rights, by region, at the currency's scale.
    pub rights: Vec<(RegionId, Decimal)>,
}

/// A home move (SPEC §8 home mode) at or below the snapshot point: the one that counts for
/// its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapHome {
    /// The account.
    pub account: AccountId,
    /// The currency.
    pub currency: Currency,
    /// The move's epoch.
    pub epoch: u64,
    /// Its place in the total order.
    pub key: OrderKey,
    /// The new home.
    pub to: RegionId,
}

impl SnapshotBody {
    /// The extension section `name`, decoded; `Ok(None)` when the body has none.
    pub fn ext_section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, RestoreError> {
        let Some((_, bytes)) = self.ext.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        crate::wire::decode_value(bytes)
            .map(Some)
            .map_err(|e| RestoreError::Malformed(format!("ext section {name}: {e}")))
    }
}

/// Why a snapshot is refused for a restart or a bootstrap ([`crate::Replica::restore`]) or
/// when a peer sends one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A body format this release cannot read.
    #[error("snapshot format {0} is not {SNAPSHOT_FORMAT}")]
    Format(u16),
    /// Another cluster's snapshot.
    #[error("snapshot of cluster {theirs:?}, this is {ours:?}")]
    Cluster {
        /// This replica's cluster.
        ours: String,
        /// The snapshot's.
        theirs: String,
    },
    /// The signature is not the signer's (or the signer is not known).
    #[error("snapshot signature does not verify against {0}'s key")]
    Signature(RegionId),
    /// The snapshot names a member neither this replica's configuration nor the snapshot's
    /// membership history makes a member.
    #[error("snapshot member {0} is neither configured nor joined by its membership history")]
    Member(RegionId),
    /// Its seed policy is not this replica's.
    #[error("snapshot seed policy {theirs} differs from this region's {ours}")]
    Policy {
        /// This region's seed policy hash.
        ours: PolicyHash,
        /// The snapshot's.
        theirs: PolicyHash,
    },
    /// It was folded with another idempotency key retention.
    #[error("snapshot key retention {theirs} ms differs from this region's {ours} ms")]
    Retention {
        /// This region's, ms.
        ours: u64,
        /// The snapshot's, ms.
        theirs: u64,
    },
    /// A field does not hold together (a key above the folded history, a bad ext section, a
    /// membership event that does not verify or is not in the folded history).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// `restore` on a replica that already holds state.
    #[error("restore needs a fresh replica")]
    NotFresh,
    /// A retired region (or one the snapshot shows retired) does not install a peer's
    /// snapshot: it settles nothing more than it had.
    #[error("this region is retired: it installs no snapshot")]
    Retired,
}
