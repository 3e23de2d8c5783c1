//! What the host sees of a replica besides its getters: records to persist, outputs to act
//! on, reports, and the client command types with their errors.

use serde::{Deserialize, Serialize};

use crate::event::Kind;
use crate::event::{Compensation, Event};
use crate::id::{AccountId, EventId, Hlc, RegionId};
use crate::message::{Evidence, Message};
use crate::money::{Amount, Currency};
use crate::policy::PolicyHash;

/// Things the host must write durably, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An event (own or remote).
    Event(Event),
    /// The clock ceiling: after a restart no HLC at or below it is issued.
    Ceiling(Hlc),
    /// Everything at or below this HLC is settled (written after the events it covers).
    Watermark(Hlc),
    /// Equivocation evidence: after a restart, hand every one back with
    /// [`Replica::restore_evidence`] so the origin stays frozen.
    Evidence(Evidence),
    /// A snapshot that replaces every event it folds (per origin, seqs up to its members'
    /// `seq`): store it and delete those events, atomically. After a restart, hand it to
    /// [`Replica::restore`] with the events stored after it. Added after `Evidence`.
    Snapshot(Box<crate::snapshot::Snapshot>),
}

/// Outputs, drained with [`Replica::poll_output`] after every input.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Output {
    /// Write this record durably, then call [`Replica::handle_persisted`] with its index.
    Persist {
        /// Monotonic persistence index.
        index: u64,
        /// What to write.
        record: Record,
    },
    /// Send this message to every connected member.
    Broadcast(Message),
    /// Send this message to one member (a pull, or the answer to one).
    Send {
        /// The member.
        to: RegionId,
        /// What to send.
        msg: Message,
    },
    /// A compensation settled (in feed order).
    Compensation(Compensation),
    /// Something an operator must hear about.
    Report(Report),
    /// A client request that [`Replica::submit`] answered with [`Submitted::Pending`] is
    /// decided (the home answered a forwarded debit, or it timed out): answer the client with
    /// `result`, once every record up to `durable_after` (if any) is durable. Added after
    /// `Report`.
    Decided {
        /// The request, as `Submitted::Pending` named it.
        request: u64,
        /// The decision.
        result: Result<Submitted, SubmitError>,
        /// The persist index of the event, when it was issued here.
        durable_after: Option<u64>,
    },
}

/// Reports of peer misbehaviour, conflicts and stalls. Never panics, never silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// An event failed validation or its signature.
    Rejected {
        /// The event.
        id: EventId,
        /// Who sent it.
        from: RegionId,
        /// Why.
        reason: String,
    },
    /// A remote HLC too far in the future.
    ClockSkew {
        /// Who.
        from: RegionId,
        /// Its HLC, in ms.
        remote_ms: u64,
        /// Local physical time, in ms.
        local_ms: u64,
    },
    /// Two different events under one id: the origin is frozen.
    Equivocation {
        /// The id.
        id: EventId,
    },
    /// A peer's seed policy differs from ours: nothing settles.
    PolicyMismatch {
        /// The peer (or this region, against its recorded history).
        region: RegionId,
        /// Its hash.
        theirs: PolicyHash,
        /// Ours.
        ours: PolicyHash,
    },
    /// A settled sum overflowed: that (account, currency) is frozen.
    Overflow {
        /// Account.
        account: AccountId,
        /// Currency.
        currency: Currency,
        /// The event that would overflow.
        at: EventId,
    },
    /// A message from a non-member.
    UnknownMember {
        /// Who.
        from: RegionId,
    },
    /// A membership change took effect (a cut is known), or could not (a second cut that
    /// differs, a cut below a settled event: settlement stops), or was ignored. Added after
    /// `UnknownMember`.
    Membership {
        /// The membership event concerned.
        event: EventId,
        /// What happened.
        what: String,
    },
    /// A snapshot a peer sent was refused (bad signature, another cluster, not applicable).
    /// Added after `Membership`.
    Snapshot {
        /// The peer.
        from: RegionId,
        /// Why.
        reason: String,
    },
}

impl Report {
    /// Every kind, in a fixed order: for metrics that list each one, even at zero.
    pub const KINDS: [&'static str; 8] = [
        "rejected",
        "clock_skew",
        "equivocation",
        "policy_mismatch",
        "overflow",
        "unknown_member",
        "membership",
        "snapshot",
    ];

    /// A short stable name of the kind (a metric label). A new variant gets a new name here,
    /// never someone else's.
    pub fn kind(&self) -> &'static str {
        match self {
            Report::Rejected { .. } => "rejected",
            Report::ClockSkew { .. } => "clock_skew",
            Report::Equivocation { .. } => "equivocation",
            Report::PolicyMismatch { .. } => "policy_mismatch",
            Report::Overflow { .. } => "overflow",
            Report::UnknownMember { .. } => "unknown_member",
            Report::Membership { .. } => "membership",
            Report::Snapshot { .. } => "snapshot",
        }
    }

    /// True for what an operator must act on (logged as errors, alerted on).
    pub fn is_severe(&self) -> bool {
        matches!(
            self,
            Report::Equivocation { .. } | Report::PolicyMismatch { .. } | Report::Overflow { .. }
        )
    }
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The debit would take the provisional balance below the floor.
    #[error("insufficient funds: available {available} {currency}, requested {requested}")]
    InsufficientFunds {
        /// Provisional balance minus floor, rendered.
        available: String,
        /// The amount asked for, rendered.
        requested: String,
        /// Currency.
        currency: Currency,
    },
    /// The idempotency key was used with a different body.
    #[error("idempotency key already used for {existing} with a different request body")]
    IdempotencyConflict {
        /// The event holding the key.
        existing: EventId,
    },
    /// The region is restoring its own history from peers.
    #[error("region is restoring its history from peers and accepts nothing yet")]
    Restoring,
    /// The (account, currency) is frozen after an overflow.
    #[error("account {account} in {currency} is frozen after an arithmetic overflow")]
    Frozen {
        /// Account.
        account: AccountId,
        /// Currency.
        currency: Currency,
    },
    /// The balance would overflow.
    #[error("the balance would overflow")]
    Overflow,
    /// The amount is not valid for the currency (scale, sign or limit): peers would refuse
    /// the event, so it is never issued.
    #[error("invalid amount: {0}")]
    Amount(#[from] crate::money::AmountError),
    /// The idempotency key or the reference is malformed.
    #[error("invalid request: {0}")]
    Invalid(#[from] crate::id::IdError),
    /// A policy change that does not validate.
    #[error("invalid policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// A membership change refused, or this region is retired.
    #[error("membership: {0}")]
    Membership(#[from] super::members::MembershipError),
    /// Home mode: the home did not answer a forwarded debit in time (or could not decide
    /// it). Retryable: the home may still have accepted it; a retry with the same
    /// idempotency key finds out. Never accepted here instead.
    #[error("the home region {home} of this account is unreachable; retry later with the same idempotency key")]
    HomeUnreachable {
        /// The home.
        home: RegionId,
    },
    /// Home mode: this region is not the home (an admin home move must be made there).
    #[error("this region is not the home of the account; its home is {home}")]
    NotHome {
        /// The current home.
        home: RegionId,
    },
    /// Escrow: this region's spending rights on the account stay short of the debit after
    /// asking the members (fallback `refuse`), or beyond its share of the risk limit
    /// (fallback `optimistic`). Distinct from `InsufficientFunds`: the account may hold the
    /// money at other regions.
    #[error("insufficient rights: this region may spend {available} {currency} of the account, requested {requested}")]
    InsufficientRights {
        /// This region's rights, rendered (zero if none).
        available: String,
        /// The amount asked for, rendered.
        requested: String,
        /// Currency.
        currency: Currency,
    },
    /// A home move for an account whose policy rule is not in home mode.
    #[error("the account is not in home mode")]
    NotHomeMode,
}

/// The result of an accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new event.
    New(EventId),
    /// A retry of an event already known (maybe from another region).
    Existing(EventId),
    /// Not decided yet (a debit forwarded to its home): the decision comes as
    /// [`Output::Decided`] with this request id. The host only waits.
    Pending {
        /// The request id.
        request: u64,
    },
}

impl Submitted {
    /// The event id, once decided.
    pub fn id(self) -> Option<EventId> {
        match self {
            Submitted::New(i) | Submitted::Existing(i) => Some(i),
            Submitted::Pending { .. } => None,
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    /// Account.
    pub account: AccountId,
    /// Kind.
    pub kind: Kind,
    /// Amount (already scale-checked for `currency`).
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Reference.
    pub reference: Option<String>,
}
