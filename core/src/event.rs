//! Events: the immutable facts every region replicates (SPEC §2), and the compensations the
//! settled fold derives from them (SPEC §5).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::id::{check_idempotency_key, check_reference, AccountId, EventId, Hlc, RegionId};
pub use crate::kind::Kind;
use crate::money::{Amount, Currency};
use crate::policy::Policy;

/// A client transaction on one account in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    /// The account.
    pub account: AccountId,
    /// What kind of transaction.
    pub kind: Kind,
    /// Magnitude; the sign comes from `kind`.
    pub amount: Amount,
    /// Currency of `amount`.
    pub currency: Currency,
    /// Client idempotency key, scoped to the account.
    pub idempotency_key: Option<Box<str>>,
    /// Free text from the client.
    pub reference: Option<Box<str>>,
}

impl Tx {
    /// The signed effect on the balance.
    pub fn delta(&self) -> Decimal {
        self.kind.signed(self.amount.value())
    }

    /// True if `other` has the same body as far as idempotency is concerned: same kind,
    /// amount, currency and reference.
    pub fn same_body(&self, other: &Tx) -> bool {
        self.kind == other.kind
            && self.amount == other.amount
            && self.currency == other.currency
            && self.reference == other.reference
    }
}

/// What an event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A client transaction.
    Tx(Tx),
    /// A new overdraft policy, in force for events after this one in the total order.
    Policy(Box<Policy>),
    /// A membership change (SPEC §10, docs/design/membership.md). Added after `Policy`, so
    /// the bytes of the earlier variants are unchanged. Boxed: rare, and larger than a
    /// transaction, it must not make every event bigger.
    Membership(Box<Change>),
    /// Coordination of one account under a strict consistency mode (SPEC §8): a home move
    /// or a transfer of spending rights. Added after `Membership`; boxed like it.
    Account(Box<AccountOp>),
}

/// Highest home epoch of an account: a bound on what a peer may send, not a practical limit.
pub const HOME_EPOCH_MAX: u64 = 1 << 40;

/// An account-level coordination event (SPEC §8, docs/modes.md). Moves no money: the settled
/// fold passes over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountOp {
    /// Home mode: the issuer, the account's home at `epoch - 1`, hands the account to `to`.
    /// From this event on the issuer refuses (forwards) the account's debits; `to` decides
    /// them only once it holds every move of the account up to this one.
    HomeMove {
        /// The account.
        account: AccountId,
        /// The currency: an account's homes are per currency, as its rules are.
        currency: Currency,
        /// The new home.
        to: RegionId,
        /// 1 for the first move of the account, then one more per move.
        epoch: u64,
    },
    /// Escrow mode: the issuer gives `amount` of its spending rights on (account, currency)
    /// to `to`. Its rights drop when it issues the event, `to`'s rise when it holds it: the
    /// union of logs applies it exactly once everywhere.
    RightsTransfer {
        /// The account.
        account: AccountId,
        /// The currency.
        currency: Currency,
        /// How much, positive, at the currency's scale.
        amount: Amount,
        /// The receiving region.
        to: RegionId,
    },
}

impl AccountOp {
    /// The account and currency.
    pub fn pair(&self) -> (&AccountId, Currency) {
        match self {
            AccountOp::HomeMove {
                account, currency, ..
            }
            | AccountOp::RightsTransfer {
                account, currency, ..
            } => (account, *currency),
        }
    }

    /// Checks the fields that need no replica state.
    pub fn validate(&self, origin: RegionId) -> Result<(), InvalidEvent> {
        let bad = |s: &str| Err(InvalidEvent::AccountOp(s.into()));
        if !self.pair().0.is_valid() {
            return bad("account id is not valid");
        }
        match self {
            AccountOp::HomeMove {
                to,
                epoch,
                currency,
                ..
            } => {
                if !currency.is_known() {
                    return Err(InvalidEvent::Currency);
                }
                if !to.is_valid() || *to == origin {
                    return bad("a home move names another valid region");
                }
                if *epoch == 0 || *epoch > HOME_EPOCH_MAX {
                    return bad("a home move's epoch is 1 or more");
                }
                Ok(())
            }
            AccountOp::RightsTransfer {
                currency,
                amount,
                to,
                ..
            } => {
                if !to.is_valid() || *to == origin {
                    return bad("a rights transfer names another valid region");
                }
                if !currency.is_known() {
                    return Err(InvalidEvent::Currency);
                }
                check_amount(*amount, *currency)
            }
        }
    }
}

/// A positive amount within the limit, at exactly the currency's scale.
fn check_amount(amount: Amount, currency: Currency) -> Result<(), InvalidEvent> {
    let a =
        Amount::new(amount.value(), currency).map_err(|e| InvalidEvent::Amount(e.to_string()))?;
    if a.value().scale() == amount.value().scale() {
        Ok(())
    } else {
        Err(InvalidEvent::Amount("not in canonical scale".into()))
    }
}

/// Most regions one retire names, and most regions an acknowledgement or a remaining set
/// lists.
pub const MEMBERSHIP_REGIONS_MAX: usize = 64;
/// Longest key a join or a rotation carries, in bytes.
pub const MEMBERSHIP_KEY_MAX: usize = 256;
/// Longest opaque `meta` of a join (walletd: peer id and addresses), in bytes.
pub const MEMBERSHIP_META_MAX: usize = 4096;
/// Longest retire reason, in bytes.
pub const MEMBERSHIP_REASON_MAX: usize = 512;

/// A membership change: a signed, replicated event that applies from its HLC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// `region` becomes a member. Its events must have an HLC above this event's; its
    /// contribution to the watermark starts at this event's HLC.
    Join {
        /// The new region.
        region: RegionId,
        /// Its public key, valid for its events above this event's HLC.
        key: Box<[u8]>,
        /// Opaque to the core (walletd: peer id and addresses).
        meta: Box<[u8]>,
    },
    /// Retires `regions`. Every region of `remaining` acknowledges it with a
    /// [`Change::RetireAck`]; the cut of each retired region is the highest seq any of them
    /// held.
    Retire {
        /// The regions retired.
        regions: BTreeSet<RegionId>,
        /// The members that must acknowledge: the issuer's members in force when it issued
        /// the retire, less `regions` (the issuer included).
        remaining: BTreeSet<RegionId>,
        /// Free text for operators.
        reason: Box<str>,
    },
    /// A remaining member's acknowledgement of a retire: how far it held each retired
    /// region's log, gap-free and without contested seqs. It applies no event of those
    /// regions above `held` until the cut is known.
    RetireAck {
        /// The retire acknowledged.
        retire: EventId,
        /// Per retired region, the seq held.
        held: BTreeMap<RegionId, u64>,
    },
    /// The issuing region's own new key: its events above this event's HLC verify against
    /// it.
    RotateKey {
        /// The new public key.
        key: Box<[u8]>,
    },
    /// The issuing region, rebuilt after a lost disk, starts origin epoch `epoch`: its
    /// previous epoch is sealed at `cut` (the highest seq of it any member held when asked),
    /// and this event is seq `cut + 1`, the first of the new epoch. Events of the region
    /// above `cut` that a member held from the old epoch are voided there (like a retire's
    /// above its cut). Added after `RotateKey` (docs/protocol.md §12).
    Seal {
        /// The new epoch: 2 for the first rebuild, one more per rebuild.
        epoch: u32,
        /// The last seq of the previous epochs.
        cut: u64,
    },
}

/// Highest origin epoch a seal may name: a bound on what a peer may send.
pub const EPOCH_MAX: u32 = 1 << 20;

impl Change {
    /// Checks the fields that need no replica state.
    pub fn validate(&self, origin: RegionId) -> Result<(), InvalidEvent> {
        let bad = |s: &str| Err(InvalidEvent::Membership(s.into()));
        fn names_ok<'a>(mut set: impl Iterator<Item = &'a RegionId>) -> bool {
            set.all(|r| r.is_valid())
        }
        match self {
            Change::Join { region, key, meta } => {
                if !region.is_valid() || *region == origin {
                    return bad("a join names another valid region");
                }
                if key.is_empty() || key.len() > MEMBERSHIP_KEY_MAX {
                    return bad("join key is empty or too long");
                }
                if meta.len() > MEMBERSHIP_META_MAX {
                    return bad("join meta is too long");
                }
                Ok(())
            }
            Change::Retire {
                regions,
                remaining,
                reason,
            } => {
                if regions.is_empty() || regions.len() > MEMBERSHIP_REGIONS_MAX {
                    return bad("a retire names 1 to 64 regions");
                }
                if remaining.len() > MEMBERSHIP_REGIONS_MAX {
                    return bad("too many remaining members");
                }
                if !names_ok(regions.iter()) || !names_ok(remaining.iter()) {
                    return bad("region name is not valid");
                }
                if !remaining.contains(&origin) || regions.contains(&origin) {
                    return bad("the issuer of a retire is a remaining member");
                }
                if regions.iter().any(|r| remaining.contains(r)) {
                    return bad("a region is both retired and remaining");
                }
                if reason.len() > MEMBERSHIP_REASON_MAX {
                    return bad("retire reason is too long");
                }
                Ok(())
            }
            Change::RetireAck { retire, held } => {
                if retire.seq == 0 || !retire.origin.is_valid() {
                    return bad("acknowledges no valid retire");
                }
                if held.is_empty() || held.len() > MEMBERSHIP_REGIONS_MAX {
                    return bad("an acknowledgement lists 1 to 64 regions");
                }
                if !names_ok(held.keys()) {
                    return bad("region name is not valid");
                }
                Ok(())
            }
            Change::RotateKey { key } => {
                if key.is_empty() || key.len() > MEMBERSHIP_KEY_MAX {
                    return bad("rotated key is empty or too long");
                }
                Ok(())
            }
            Change::Seal { epoch, .. } => {
                if *epoch < 2 || *epoch > EPOCH_MAX {
                    return bad("a seal starts epoch 2 or more");
                }
                Ok(())
            }
        }
    }
}

/// An immutable event, as issued by its origin and replicated to every region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `(origin, seq)`.
    pub id: EventId,
    /// Assigned at the origin; strictly increasing with `seq` per origin.
    pub hlc: Hlc,
    /// The content.
    pub body: Body,
    /// The origin's signature over [`Event::signing_bytes`]; empty where no signer is used
    /// (the simulator).
    pub sig: Box<[u8]>,
}

/// Position of an event in the total order `(hlc, origin, seq)`.
pub type OrderKey = (Hlc, crate::id::RegionId, u64);

/// Why an event's content is invalid (the peer lied or the bytes are corrupt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// seq is 0.
    #[error("seq must start at 1")]
    ZeroSeq,
    /// Region name bytes are not a valid name.
    #[error("origin is not a valid region name")]
    Origin,
    /// Account id is not valid.
    #[error("account id is not valid")]
    Account,
    /// An account operation (home move, rights transfer) that does not validate.
    #[error("account operation is not valid: {0}")]
    AccountOp(String),
    /// Unknown currency code.
    #[error("unknown currency")]
    Currency,
    /// Amount not positive, over scale or over the limit.
    #[error("amount is not valid for its currency: {0}")]
    Amount(String),
    /// Idempotency key or reference malformed.
    #[error("idempotency key or reference is not valid")]
    Text,
    /// A policy that does not validate.
    #[error("policy is not valid: {0}")]
    Policy(String),
    /// A membership change that does not validate.
    #[error("membership change is not valid: {0}")]
    Membership(String),
}

impl Event {
    /// The order key `(hlc, origin, seq)`.
    pub fn key(&self) -> OrderKey {
        (self.hlc, self.id.origin, self.id.seq)
    }

    /// The transaction, if this is one.
    pub fn tx(&self) -> Option<&Tx> {
        match &self.body {
            Body::Tx(t) => Some(t),
            Body::Policy(_) | Body::Membership(_) | Body::Account(_) => None,
        }
    }

    /// The account operation, if this is one.
    pub fn account_op(&self) -> Option<&AccountOp> {
        match &self.body {
            Body::Account(op) => Some(op),
            _ => None,
        }
    }

    /// The membership change, if this is one.
    pub fn change(&self) -> Option<&Change> {
        match &self.body {
            Body::Membership(c) => Some(c),
            _ => None,
        }
    }

    /// Canonical bytes a signature covers: a domain tag, the cluster id and every field
    /// of the event but the signature.
    pub fn signing_bytes(&self, cluster: &str) -> Vec<u8> {
        let mut out = b"wallet-event-v1\0".to_vec();
        // Serializing plain data into a Vec cannot fail.
        let body =
            postcard::to_stdvec(&(cluster, &self.id, &self.hlc, &self.body)).unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    /// Checks every field of an event decoded from untrusted bytes.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        if self.id.seq == 0 {
            return Err(InvalidEvent::ZeroSeq);
        }
        if !self.id.origin.is_valid() {
            return Err(InvalidEvent::Origin);
        }
        match &self.body {
            Body::Tx(tx) => {
                if !tx.account.is_valid() {
                    return Err(InvalidEvent::Account);
                }
                if !tx.currency.is_known() {
                    return Err(InvalidEvent::Currency);
                }
                check_amount(tx.amount, tx.currency)?;
                if let Some(k) = &tx.idempotency_key {
                    check_idempotency_key(k).map_err(|_| InvalidEvent::Text)?;
                }
                if let Some(r) = &tx.reference {
                    check_reference(r).map_err(|_| InvalidEvent::Text)?;
                }
                Ok(())
            }
            Body::Policy(p) => p
                .validate()
                .map_err(|e| InvalidEvent::Policy(e.to_string())),
            Body::Membership(c) => {
                if let Change::Seal { cut, .. } = **c {
                    if cut.checked_add(1) != Some(self.id.seq) {
                        return Err(InvalidEvent::Membership(
                            "a seal is the event right after its cut".into(),
                        ));
                    }
                }
                c.validate(self.id.origin)
            }
            Body::Account(op) => op.validate(self.id.origin),
        }
    }
}

/// What a feed entry does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CompKind {
    /// An overdraft fee (−) charged because of `cause`.
    OverdraftFee,
    /// Cancels `cause` with the opposite sign.
    Reversal,
    /// Not a compensation: the same idempotency key with a different body was accepted in
    /// two regions; both stand and this entry reports it (amount zero).
    IdempotencyConflict,
}

impl CompKind {
    /// API name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompKind::OverdraftFee => "overdraft_fee",
            CompKind::Reversal => "reversal",
            CompKind::IdempotencyConflict => "idempotency_conflict",
        }
    }

    /// Prefix of the derived id.
    pub fn id_prefix(self) -> &'static str {
        match self {
            CompKind::OverdraftFee => "fee",
            CompKind::Reversal => "rev",
            CompKind::IdempotencyConflict => "conflict",
        }
    }
}

impl fmt::Debug for CompKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compensation (or conflict report) derived by the settled fold. Every region derives the
/// same ones, in the same order, with the same ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensation {
    /// What it does.
    pub kind: CompKind,
    /// The event that caused it; the id is derived from it.
    pub cause: EventId,
    /// The cause's HLC: a compensation sits right after its cause in the total order.
    pub hlc: Hlc,
    /// The account.
    pub account: AccountId,
    /// The currency.
    pub currency: Currency,
    /// Signed effect on the balance (zero for a conflict report).
    pub delta: Decimal,
    /// The policy version that produced it.
    pub policy_version: u32,
    /// For conflicts: the earlier event with the same key.
    pub related: Option<EventId>,
    /// Position in the feed, from 0.
    pub position: u64,
}

impl Compensation {
    /// The derived id, e.g. `fee:eu:12`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.kind.id_prefix(), self.cause)
    }

    /// Magnitude of the effect, rendered in the currency's minor units.
    pub fn amount_str(&self) -> String {
        self.currency.render(self.delta.abs())
    }
}
