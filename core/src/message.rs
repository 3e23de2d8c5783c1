//! What regions say to each other (SPEC §3, §5): events, signed heartbeats, pulls and their
//! answers, and evidence of a member breaking the protocol. Encoded by [`crate::wire`].

use crdts::VClock;
use serde::{Deserialize, Serialize};

use crate::event::{Event, Tx};
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::money::{Amount, Currency};
use crate::policy::PolicyHash;

/// A region's periodic announcement: its HLC, its version vector, its seed policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The announcing region.
    pub origin: RegionId,
    /// It will never issue an event at or below this HLC again.
    pub hlc: Hlc,
    /// Its own last seq at the time.
    pub seq: u64,
    /// What it holds from every origin.
    pub vv: VClock<RegionId>,
    /// Hash of its seed policy (version 1).
    pub policy: PolicyHash,
}

impl Heartbeat {
    /// Canonical bytes a heartbeat signature covers: a domain tag (distinct from events'),
    /// the cluster id and every field.
    pub fn signing_bytes(&self, cluster: &str) -> Vec<u8> {
        let mut out = b"wallet-heartbeat-v1\0".to_vec();
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(&(cluster, self)).unwrap_or_default());
        out
    }
}

/// A heartbeat with its origin's signature: a promise any region can hold against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeartbeat {
    /// The heartbeat.
    pub hb: Heartbeat,
    /// The origin's signature over [`Heartbeat::signing_bytes`] (empty without a signer).
    pub sig: Box<[u8]>,
}

/// Proof that a region broke the protocol, made of items it signed itself: any region can
/// check it ([`Evidence::proves`]) without trusting whoever relays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// Two different events under one id.
    Conflicting(Event, Event),
    /// A heartbeat `(h, s)` and an event of the same origin with a seq above `s` and an HLC
    /// at or below `h`: the heartbeat promised that no such event would ever exist.
    BrokenPromise {
        /// The promise.
        heartbeat: SignedHeartbeat,
        /// The event that breaks it.
        event: Event,
    },
}

impl Evidence {
    /// The region the evidence is against.
    pub fn origin(&self) -> RegionId {
        match self {
            Evidence::Conflicting(a, _) => a.id.origin,
            Evidence::BrokenPromise { heartbeat, .. } => heartbeat.hb.origin,
        }
    }

    /// The event id concerned.
    pub fn id(&self) -> EventId {
        match self {
            Evidence::Conflicting(a, _) => a.id,
            Evidence::BrokenPromise { event, .. } => event.id,
        }
    }

    /// True when the items really contradict each other (signatures aside: see
    /// [`crate::Authenticator::verify_evidence`]).
    pub fn contradicts(&self) -> bool {
        match self {
            Evidence::Conflicting(a, b) => {
                a.id == b.id
                    && (a.hlc != b.hlc || a.body != b.body)
                    && a.validate().is_ok()
                    && b.validate().is_ok()
            }
            Evidence::BrokenPromise { heartbeat, event } => {
                let hb = &heartbeat.hb;
                event.id.origin == hb.origin
                    && event.id.seq > hb.seq
                    && event.hlc <= hb.hlc
                    && event.validate().is_ok()
            }
        }
    }
}

/// Peer-to-peer messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Events, pushed or sent in answer to a pull.
    Events(Vec<Event>),
    /// A heartbeat.
    Heartbeat(Heartbeat),
    /// "Send me what I miss": the sender's version vector and a batch limit.
    Pull {
        /// What the requester holds.
        vv: VClock<RegionId>,
        /// Most events to answer with.
        limit: u32,
    },
    /// "Send me what I miss, but not what I already hold out of order": like `Pull`, and for
    /// each origin in `upto` the answer stops before that seq (the first event the requester
    /// holds beyond its gap, buffered). Added after `Pull`, so version-1 bytes of the other
    /// messages decode unchanged.
    PullGaps {
        /// What the requester holds without gaps.
        vv: VClock<RegionId>,
        /// Per origin, the first seq already held out of order.
        upto: VClock<RegionId>,
        /// Most events to answer with.
        limit: u32,
    },
    /// A signed heartbeat: what every region sends. An unsigned [`Message::Heartbeat`] is
    /// handled as one with an empty signature, which only [`NoAuth`] accepts.
    SignedHeartbeat(SignedHeartbeat),
    /// Proof that a member broke the protocol: the receiver checks it and freezes that
    /// origin as if it had caught it itself.
    Evidence(Evidence),
    /// The answer to a `Pull` or `PullGaps`, sent to the requester only: what it lacks, and
    /// whether more follows (the requester then pulls again at once). Added after
    /// `Evidence`, so earlier variants' bytes are unchanged.
    PullAnswer {
        /// Events, origin by origin, in seq order.
        events: Vec<Event>,
        /// More is missing than fitted.
        more: bool,
    },
    /// Home mode (SPEC §8): a client debit that arrived at a region that is not the
    /// account's home, sent to the home to decide. Answered with
    /// [`Message::ForwardAnswer`] once decided (and, if accepted, durable at the home). Added
    /// after `PullAnswer`.
    Forward {
        /// The sender's id of the request (unique per sender incarnation).
        request: u64,
        /// The transaction asked for (what the client sent, amount at the currency's scale).
        tx: Tx,
    },
    /// The home's decision on a [`Message::Forward`].
    ForwardAnswer {
        /// The request answered.
        request: u64,
        /// What the home decided.
        result: ForwardResult,
    },
    /// Escrow (SPEC §8): the sender is short of spending rights on (account, currency) by
    /// `amount`; a member with rights to spare answers with a `RightsTransfer` event.
    RightsRequest {
        /// The account.
        account: AccountId,
        /// The currency.
        currency: Currency,
        /// The shortfall.
        amount: Amount,
    },
    /// The answer to a `Pull` or `PullGaps` from a member that lacks events below the
    /// answerer's compaction point (issue 13): the answerer's last signed snapshot, verified
    /// against its signer's key; the requester installs it and pulls the events after it.
    /// Added after `RightsRequest`.
    Snapshot(Box<crate::snapshot::Snapshot>),
    /// Lost disk (docs/protocol.md §12): the sender, rebuilt on an empty disk, asks how far
    /// the receiver holds the sender's own log, to seal its old epoch there. Added after
    /// `RightsRequest`, like the two below.
    SealQuery,
    /// The answer to a [`Message::SealQuery`]: the seq of the asker's log the receiver holds
    /// without gaps (the same rule as a retire's acknowledgement).
    SealHeld {
        /// The seq held.
        held: u64,
        /// The answerer's clock (it observed the old epoch's events and heartbeats): the
        /// seal is stamped above it.
        hlc: Hlc,
    },
    /// Peer durability (`ack = "peer"`): every event of the receiver up to `seq` is durable
    /// at the sender. Sent to each origin after a persist that made its events durable.
    Durable {
        /// The highest seq of the receiver's log durable at the sender, gap-free.
        seq: u64,
    },
    /// One chunk of a signed snapshot's encoded bytes (docs/protocol.md §10, chunked
    /// transfer): how a pull below the answerer's compaction point is answered, and the
    /// answer to a [`Message::SnapshotChunkRequest`]. Added after `Durable`.
    SnapshotChunk(SnapshotChunk),
    /// The requester of a chunked snapshot asks for chunk `index` of `transfer`; the sender
    /// answers with it, or with chunk 0 of its current snapshot when `transfer` is no longer
    /// its snapshot. Added after `SnapshotChunk`.
    SnapshotChunkRequest {
        /// The transfer (SHA-256 of the encoded snapshot).
        transfer: [u8; 32],
        /// The chunk asked for.
        index: u32,
    },
    /// The sender acknowledges its clients with `ack = "peer"`: the receiver sends it
    /// [`Message::Durable`] after its persists (regions with `ack = "local"` never announce
    /// this, and are sent none). Sent on connect and every heartbeat period. Added after
    /// `SnapshotChunkRequest`.
    WantDurable,
    /// Host traffic the replica ignores: walletd's archive backfill (docs/protocol.md §11,
    /// *Backfill*), its own versioned encoding inside. A region bootstrapped from a peer's
    /// snapshot fetches the archived history below it with these. Added after `WantDurable`.
    Archive(Vec<u8>),
}

/// A chunk of a snapshot transfer: `bytes` are chunk `index` of `count` of the snapshot's
/// encoding ([`crate::wire::encode_snapshot`], `len` bytes in all), whose SHA-256 is
/// `transfer`. The header is the sender's word only: the receiver checks the hash and the
/// snapshot's signature once every chunk is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The transfer id: SHA-256 of the whole encoding.
    pub transfer: [u8; 32],
    /// The snapshot point (a receiver already settled there needs none of it).
    pub at: Hlc,
    /// Bytes of the whole encoding.
    pub len: u64,
    /// Chunks in all.
    pub count: u32,
    /// This chunk's place, from 0.
    pub index: u32,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The snapshot's version vector: each member of its body with the last seq it folds
    /// (`SnapMember::seq`), in the body's order. With `at`, what a receiver needs to judge
    /// the snapshot before it has the body, by the rule it applies to a whole one; the body
    /// must match it. Added after `bytes` (the chunk messages were never released).
    pub seqs: Vec<(RegionId, u64)>,
}

/// What a home decided on a forwarded debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResult {
    /// Accepted (durable at the home): the event, new or (a retry) already known.
    Accepted {
        /// The event.
        id: EventId,
        /// A retry answered with the event already known.
        existing: bool,
    },
    /// Refused for funds: the home's provisional balance minus the floor, rendered.
    InsufficientFunds {
        /// What could be spent, rendered.
        available: String,
    },
    /// The idempotency key is held by this other event with another body.
    IdempotencyConflict {
        /// The event holding the key.
        existing: EventId,
    },
    /// The receiver is not (or no longer) the home, or could not decide now (restoring,
    /// retired, frozen): the sender refuses with a retryable error.
    Unavailable {
        /// Why, for logs.
        reason: String,
    },
}
