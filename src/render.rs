//! The JSON views of the API: events, compensations, balances, history pages, the feed, the
//! region status, evidence and errors, and the opaque cursors. Pure functions of the replica's
//! read side (and what the host adds to the status); the actor wraps them in replies.
//!
//! Amounts are strings with the currency's minor units (`Currency::render`); HLCs are strings
//! (`<ms>.<logical>`), so no JSON number ever loses precision.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use wallet_core::{
    AccountId, Balance, Compensation, Entry, EntryKey, Event, EventId, Evidence, Hlc, Policy,
    PolicyHash, RegionId, Replica, Status,
};

use crate::openapi::{
    AccountId as AccountIdText, Amount, CompensationId, CurrencyCode, Cursor,
    EventId as EventIdText, Hlc as HlcText, PolicyDocument, RegionId as RegionIdText, Sha256Hex,
    SignatureHex, SignedAmount,
};

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// Every error body: `{"error":{"code":..,"message":..}}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// The code (stable, for programs) and message (for humans, may change) of an error.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail<'a> {
    /// Stable code.
    #[schema(value_type = ErrorCode)]
    pub code: &'a str,
    /// Human-readable message.
    pub message: &'a str,
}

/// Every error code the API sends (docs/api.md#error-codes).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ErrorCode {
    InvalidJson,
    InvalidAmount,
    AmountScale,
    UnknownCurrency,
    InvalidType,
    InvalidAccount,
    InvalidReference,
    InvalidIdempotencyKey,
    InvalidCursor,
    InvalidLimit,
    InvalidQuery,
    InvalidTransactionId,
    InvalidRegion,
    InvalidPolicy,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Compacted,
    ArchivedExpired,
    ArchiveUnavailable,
    IdempotencyConflict,
    AccountFrozen,
    BalanceOverflow,
    PolicyRefused,
    RegionRetired,
    NotAMember,
    MembershipRefused,
    NotSealing,
    InvalidPeerId,
    InvalidKey,
    InvalidAddress,
    AlreadyMember,
    RegionWasRetired,
    PeerIdInUse,
    Joining,
    PeerAckTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    InsufficientFunds,
    InsufficientRights,
    NotHome,
    NotHomeMode,
    HomeUnreachable,
    RateLimited,
    Restoring,
    StorageUnavailable,
    Unavailable,
    Timeout,
    Overloaded,
    NotReady,
    Internal,
}

/// `{"error":{"code":..,"message":..}}`.
pub fn error_body(code: &str, message: &str) -> String {
    to_json(&ErrorBody {
        error: ErrorDetail { code, message },
    })
}

/// A balance of one (account, currency).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceView {
    /// Every event this region holds.
    #[schema(value_type = SignedAmount)]
    pub provisional: String,
    /// The settled prefix only.
    #[schema(value_type = SignedAmount)]
    pub settled: String,
}

/// The `201` body of a new (or replayed) transaction.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionCreated {
    /// `<origin region>:<seq>`.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// The account.
    #[schema(value_type = AccountIdText)]
    pub account: String,
    /// The transaction type.
    #[serde(rename = "type")]
    pub kind: TxType,
    /// The amount, with the currency's minor units.
    #[schema(value_type = Amount)]
    pub amount: String,
    /// The currency.
    #[schema(value_type = CurrencyCode)]
    pub currency: String,
    /// The event's HLC.
    #[schema(value_type = HlcText)]
    pub hlc: String,
    /// As submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reference: Option<String>,
    /// This (account, currency) right after the event.
    pub balance: BalanceView,
}

/// A client transaction type.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum TxType {
    Deposit,
    Purchase,
    Withdrawal,
    Refund,
}

impl TxType {
    fn of(k: wallet_core::Kind) -> TxType {
        match k {
            wallet_core::Kind::Deposit => TxType::Deposit,
            wallet_core::Kind::Purchase => TxType::Purchase,
            wallet_core::Kind::Withdrawal => TxType::Withdrawal,
            wallet_core::Kind::Refund => TxType::Refund,
        }
    }
}

/// The type of an event: a client transaction, a policy change, or a membership change.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EventType {
    Deposit,
    Purchase,
    Withdrawal,
    Refund,
    Policy,
    Membership,
    /// Home mode: the account's home moved (docs/modes.md).
    HomeMove,
    /// Escrow mode: spending rights moved between regions (docs/modes.md).
    RightsTransfer,
}

/// The status of an event.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum TxStatus {
    Provisional,
    Settled,
    Reversed,
}

/// The type of a compensation.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CompensationType {
    OverdraftFee,
    Reversal,
    IdempotencyConflict,
}

/// `201 Created`.
pub fn created_body(event: &Event, bal: Balance) -> String {
    let Some(tx) = event.tx() else {
        return "{}".into();
    };
    let c = tx.currency;
    to_json(&TransactionCreated {
        id: event.id.to_string(),
        account: tx.account.to_string(),
        kind: TxType::of(tx.kind),
        amount: c.render(tx.amount.value()),
        currency: c.to_string(),
        hlc: event.hlc.to_string(),
        reference: tx.reference.as_ref().map(|r| r.to_string()),
        balance: BalanceView {
            provisional: c.render(bal.provisional),
            settled: c.render(bal.settled),
        },
    })
}

/// Status name.
pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Provisional => "provisional",
        Status::Settled => "settled",
        Status::Reversed => "reversed",
    }
}

fn tx_status(s: Status) -> TxStatus {
    match s {
        Status::Provisional => TxStatus::Provisional,
        Status::Settled => TxStatus::Settled,
        Status::Reversed => TxStatus::Reversed,
    }
}

/// A view of an event: the fields that do not depend on this region's view of it, then
/// `$extra`; and `$name::new(fields, extra..)`. Two closed schemas (no other property), which
/// JSON Schema composition (`allOf`) could not keep closed.
macro_rules! event_view {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Serialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// `<origin region>:<seq>`.
            #[schema(value_type = EventIdText)]
            pub id: String,
            /// The account (not in an account's own history; none for a policy event).
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(value_type = Option<AccountIdText>, nullable = false)]
            pub account: Option<String>,
            /// The type.
            #[serde(rename = "type")]
            pub kind: EventType,
            /// The amount (client transactions only).
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(value_type = Option<Amount>, nullable = false)]
            pub amount: Option<String>,
            /// The currency (client transactions only).
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(value_type = Option<CurrencyCode>, nullable = false)]
            pub currency: Option<String>,
            /// As submitted.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(nullable = false)]
            pub reference: Option<String>,
            /// As submitted.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(nullable = false)]
            pub idempotency_key: Option<String>,
            /// The event's HLC: its place in the total order.
            #[schema(value_type = HlcText)]
            pub hlc: String,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            fn new(f: EventFields, $($field: $ty,)*) -> $name {
                $name {
                    id: f.id,
                    account: f.account,
                    kind: f.kind,
                    amount: f.amount,
                    currency: f.currency,
                    reference: f.reference,
                    idempotency_key: f.idempotency_key,
                    hlc: f.hlc,
                    $($field,)*
                }
            }
        }
    };
}

event_view!(
    /// An event (a client transaction or a policy change) in an account's history or by id.
    EventView {
        /// In the settled prefix.
        settled: bool,
        /// `provisional`, `settled`, or `reversed`.
        status: TxStatus,
        /// On a reversed event: the reversal's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<CompensationId>, nullable = false)]
        reversed_by: Option<String>,
        /// On a settled event that caused a fee: the fee's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<CompensationId>, nullable = false)]
        compensation: Option<String>,
    }
);

event_view!(
    /// An event as an item of evidence: its fields and the origin's signature, no status.
    SignedEventView {
        /// The origin's ed25519 signature.
        #[schema(value_type = SignatureHex)]
        signature: String,
    }
);

/// The fields of an event that do not depend on this region's view of it.
struct EventFields {
    id: String,
    account: Option<String>,
    kind: EventType,
    amount: Option<String>,
    currency: Option<String>,
    reference: Option<String>,
    idempotency_key: Option<String>,
    hlc: String,
}

fn event_fields(event: &Event, with_account: bool) -> EventFields {
    let mut f = EventFields {
        id: event.id.to_string(),
        account: None,
        kind: match &event.body {
            wallet_core::Body::Membership(_) => EventType::Membership,
            _ => EventType::Policy,
        },
        amount: None,
        currency: None,
        reference: None,
        idempotency_key: None,
        hlc: event.hlc.to_string(),
    };
    if let wallet_core::Body::Tx(tx) = &event.body {
        if with_account {
            f.account = Some(tx.account.to_string());
        }
        f.kind = match TxType::of(tx.kind) {
            TxType::Deposit => EventType::Deposit,
            TxType::Purchase => EventType::Purchase,
            TxType::Withdrawal => EventType::Withdrawal,
            TxType::Refund => EventType::Refund,
        };
        f.amount = Some(tx.currency.render(tx.amount.value()));
        f.currency = Some(tx.currency.to_string());
        f.reference = tx.reference.as_ref().map(|r| r.to_string());
        f.idempotency_key = tx.idempotency_key.as_ref().map(|k| k.to_string());
    }
    if let wallet_core::Body::Account(op) = &event.body {
        let (account, currency) = op.pair();
        if with_account {
            f.account = Some(account.to_string());
        }
        f.currency = Some(currency.to_string());
        f.kind = match &**op {
            wallet_core::AccountOp::HomeMove { .. } => EventType::HomeMove,
            wallet_core::AccountOp::RightsTransfer { amount, .. } => {
                f.amount = Some(currency.render(amount.value()));
                EventType::RightsTransfer
            }
        };
    }
    f
}

/// A client event in a list or by id.
pub fn event_view(
    event: &Event,
    status: Option<(Status, Option<&Compensation>)>,
    with_account: bool,
) -> EventView {
    let (st, comp) = status.unwrap_or((Status::Provisional, None));
    let (reversed_by, compensation) = match comp {
        Some(c) if st == Status::Reversed => (Some(c.id()), None),
        Some(c) => (None, Some(c.id())),
        None => (None, None),
    };
    EventView::new(
        event_fields(event, with_account),
        st != Status::Provisional,
        tx_status(st),
        reversed_by,
        compensation,
    )
}

/// A client event in a list or by id, as JSON text.
pub fn event_json(
    event: &Event,
    status: Option<(Status, Option<&Compensation>)>,
    with_account: bool,
) -> String {
    to_json(&event_view(event, status, with_account))
}

fn signed_event(event: &Event) -> SignedEventView {
    SignedEventView::new(event_fields(event, true), hex::encode(&event.sig))
}

/// One piece of evidence that a member broke the protocol.
#[derive(Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EvidenceView {
    /// Two different events under one id.
    ConflictingEvents {
        /// The member the proof is against.
        #[schema(value_type = RegionIdText)]
        origin: String,
        /// The id both events carry.
        #[schema(value_type = EventIdText)]
        id: String,
        /// Both events, each signed by the origin.
        #[schema(min_items = 2, max_items = 2)]
        events: Vec<SignedEventView>,
    },
    /// A signed heartbeat promising no event above `seq` at or below `hlc`, and an event
    /// that breaks it.
    BrokenPromise {
        /// The member the proof is against.
        #[schema(value_type = RegionIdText)]
        origin: String,
        /// The event's id.
        #[schema(value_type = EventIdText)]
        id: String,
        /// The signed promise.
        heartbeat: HeartbeatView,
        /// The event that breaks it.
        #[schema(value_type = SignedEventView)]
        event: Box<SignedEventView>,
    },
}

/// A signed heartbeat.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatView {
    /// The member that signed it.
    #[schema(value_type = RegionIdText)]
    pub origin: String,
    /// Promised: no event above `seq` at or below this HLC.
    #[schema(value_type = HlcText)]
    pub hlc: String,
    /// The highest seq the origin had issued.
    pub seq: u64,
    /// The origin's ed25519 signature.
    #[schema(value_type = SignatureHex)]
    pub signature: String,
}

/// One piece of evidence (`GET /v1/admin/evidence`).
pub fn evidence_view(ev: &Evidence) -> EvidenceView {
    match ev {
        Evidence::Conflicting(a, b) => EvidenceView::ConflictingEvents {
            origin: ev.origin().to_string(),
            id: ev.id().to_string(),
            events: vec![signed_event(a), signed_event(b)],
        },
        Evidence::BrokenPromise { heartbeat, event } => EvidenceView::BrokenPromise {
            origin: ev.origin().to_string(),
            id: ev.id().to_string(),
            heartbeat: HeartbeatView {
                origin: heartbeat.hb.origin.to_string(),
                hlc: heartbeat.hb.hlc.to_string(),
                seq: heartbeat.hb.seq,
                signature: hex::encode(&heartbeat.sig),
            },
            event: Box::new(signed_event(event)),
        },
    }
}

/// A compensation (or conflict report) in a list, by id, or in the feed.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationView {
    /// `fee:`, `rev:` or `conflict:` and the cause's id.
    #[schema(value_type = CompensationId)]
    pub id: String,
    /// The account (in the feed and by id; not in an account's own history).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<AccountIdText>, nullable = false)]
    pub account: Option<String>,
    /// The type.
    #[serde(rename = "type")]
    pub kind: CompensationType,
    /// The magnitude.
    #[schema(value_type = Amount)]
    pub amount: String,
    /// The signed effect on the balance.
    #[schema(value_type = SignedAmount)]
    pub delta: String,
    /// The currency.
    #[schema(value_type = CurrencyCode)]
    pub currency: String,
    /// The cause's HLC.
    #[schema(value_type = HlcText)]
    pub hlc: String,
    /// Always true: compensations come from the settled prefix.
    pub settled: bool,
    /// Always `settled`.
    pub status: TxStatus,
    /// The event that caused it.
    #[schema(value_type = EventIdText)]
    pub cause: String,
    /// The policy version that produced it.
    pub policy_version: u32,
    /// Its position in the feed.
    pub position: u64,
    /// Conflicts: the other event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EventIdText>, nullable = false)]
    pub related: Option<String>,
}

/// A compensation (or conflict report) in a list, by id, or in the feed.
pub fn comp_view(c: &Compensation, with_account: bool) -> CompensationView {
    CompensationView {
        id: c.id(),
        account: with_account.then(|| c.account.to_string()),
        kind: match c.kind {
            wallet_core::CompKind::OverdraftFee => CompensationType::OverdraftFee,
            wallet_core::CompKind::Reversal => CompensationType::Reversal,
            wallet_core::CompKind::IdempotencyConflict => CompensationType::IdempotencyConflict,
        },
        amount: c.amount_str(),
        delta: c.currency.render(c.delta),
        currency: c.currency.to_string(),
        hlc: c.hlc.to_string(),
        settled: true,
        status: TxStatus::Settled,
        cause: c.cause.to_string(),
        policy_version: c.policy_version,
        position: c.position,
        related: c.related.map(|r| r.to_string()),
    }
}

/// A compensation as JSON text.
pub fn comp_json(c: &Compensation, with_account: bool) -> String {
    to_json(&comp_view(c, with_account))
}

/// A transaction or a compensation (`GET /v1/transactions/{id}`, account history).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EntryView {
    /// An event with its status.
    Event(EventView),
    /// A compensation.
    Compensation(CompensationView),
}

/// The balances of an account.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalancesBody {
    /// The account.
    #[schema(value_type = AccountIdText)]
    pub account: String,
    /// One per currency the account has events in, by currency code.
    pub balances: Vec<CurrencyBalance>,
}

/// The balance of an account in one currency.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrencyBalance {
    /// The currency.
    #[schema(value_type = CurrencyCode)]
    pub currency: String,
    /// Every event this region holds.
    #[schema(value_type = SignedAmount)]
    pub provisional: String,
    /// The settled prefix only.
    #[schema(value_type = SignedAmount)]
    pub settled: String,
    /// The account's consistency mode in this currency under the latest policy
    /// (docs/modes.md).
    #[schema(value_type = String, pattern = "^(optimistic|escrow|home)$")]
    pub mode: &'static str,
    /// Escrow mode only: spending rights as this region derives them from the events.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub rights: Option<RightsView>,
    /// Home mode only: the region that decides the account's debits, and its epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub home: Option<HomeView>,
}

/// Escrow spending rights of an account in one currency (SPEC §8): what each region may debit
/// with no coordination. Once everything is settled they sum to the settled balance.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RightsView {
    /// Every region's rights, by region (this one's is what it may debit alone). The same
    /// on every region once they hold the same events.
    #[schema(value_type = BTreeMap<String, SignedAmount>)]
    pub regions: BTreeMap<String, String>,
    /// Credits with an idempotency key not settled yet: they grant rights once settled.
    #[schema(value_type = SignedAmount)]
    pub unspendable: String,
}

/// The home of an account in one currency (home mode).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeView {
    /// The home region.
    #[schema(value_type = RegionIdText)]
    pub region: String,
    /// The fencing epoch: 0 for the policy's home, then one per home move.
    pub epoch: u64,
}

/// `GET /v1/accounts/{id}/balances`.
pub fn balances_body(r: &mut Replica, account: &AccountId) -> String {
    let balances = r
        .balances(account)
        .into_iter()
        .map(|(c, b)| {
            let mode = r.current_policy().1.applied(account.as_str(), c).mode;
            let rights = matches!(mode, wallet_core::Mode::Escrow { .. }).then(|| {
                let (all, unspendable) = r.all_rights(account, c);
                RightsView {
                    regions: all
                        .into_iter()
                        .map(|(g, d)| (g.to_string(), c.render(d)))
                        .collect(),
                    unspendable: c.render(unspendable),
                }
            });
            let home = r.home(account, c).map(|(h, epoch)| HomeView {
                region: h.to_string(),
                epoch,
            });
            CurrencyBalance {
                currency: c.to_string(),
                provisional: c.render(b.provisional),
                settled: c.render(b.settled),
                mode: mode.name(),
                rights,
                home,
            }
        })
        .collect();
    to_json(&BalancesBody {
        account: account.to_string(),
        balances,
    })
}

/// An entry of an account's history: an event with its status, or a compensation.
pub fn entry_view(r: &Replica, e: &Entry<'_>, with_account: bool) -> EntryView {
    match e {
        Entry::Event { event, .. } => {
            EntryView::Event(event_view(event, r.status(event.id), with_account))
        }
        Entry::Compensation(c) => EntryView::Compensation(comp_view(c, with_account)),
    }
}

/// A page of an account's history.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionsPage {
    /// The account.
    #[schema(value_type = AccountIdText)]
    pub account: String,
    /// Events in the total order, each compensation right after its cause.
    pub transactions: Vec<EntryView>,
    /// The cursor of the next page; null on the last page.
    #[schema(value_type = Option<Cursor>, required = true)]
    pub next: Option<String>,
}

/// A page of the compensation feed.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationsPage {
    /// Feed items in feed order.
    pub compensations: Vec<CompensationView>,
    /// Always a cursor to resume from (the feed only grows).
    #[schema(value_type = Cursor)]
    pub next: String,
}

/// A member as this region sees it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberView {
    /// The member.
    #[schema(value_type = RegionIdText)]
    pub region: String,
    /// This region.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Connected over the transport (always true for this region).
    pub connected: bool,
    /// Events held from it without gaps (its version-vector entry here).
    pub held: u64,
    /// How far it has covered the watermark.
    #[schema(value_type = HlcText)]
    pub watermark_contribution: String,
    /// A heartbeat from it was received.
    pub heard: bool,
    /// Its seed policy matches ours; null until its first heartbeat.
    pub policy_matches: Option<bool>,
    /// Evidence holds that it equivocated.
    pub equivocated: bool,
    /// Events received from it and waiting for a gap to fill.
    pub pending: u64,
}

/// The hashes when the policy file was ignored for the recorded seed.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFileIgnored {
    /// The config's policy file.
    #[schema(value_type = Sha256Hex)]
    pub file_hash: String,
    /// The seed recorded at the first start.
    #[schema(value_type = Sha256Hex)]
    pub recorded_hash: String,
}

/// `GET /v1/status`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    /// This region.
    #[schema(value_type = RegionIdText)]
    pub region: String,
    /// The cluster id.
    pub cluster: String,
    /// Every member, this region included.
    pub members: Vec<MemberView>,
    /// Region to the events held from it without gaps.
    pub version_vector: BTreeMap<String, u64>,
    /// Everything at or below it is settled.
    #[schema(value_type = HlcText)]
    pub watermark: String,
    /// This region's clock.
    #[schema(value_type = HlcText)]
    pub clock: String,
    /// The clock minus the watermark.
    pub settlement_lag_ms: u64,
    /// After a policy mismatch or an equivocation.
    pub settlement_blocked: bool,
    /// The hash of this region's seed policy (version 1).
    #[schema(value_type = Sha256Hex)]
    pub policy_hash: String,
    /// The policy version in force at the end of the settled prefix.
    pub policy_version: u32,
    /// Restoring its own history from its peers.
    pub restoring: bool,
    /// Joining the cluster: waiting for its own join event (`walletd join`).
    pub joining: bool,
    /// Events held.
    pub events: u64,
    /// Feed length.
    pub compensations: u64,
    /// The disk failed.
    pub storage_failed: bool,
    /// Set when the config's policy file differs from the recorded seed.
    #[schema(required = true)]
    pub policy_file_ignored: Option<PolicyFileIgnored>,
    /// The consistency modes' counters (docs/modes.md): debits forwarded to a home and their
    /// answers and time-outs, escrow rights requests and transfers, and `parked`, the client
    /// requests waiting for a decision now.
    pub modes: BTreeMap<String, u64>,
}

fn ignored_view(ignored: Option<(PolicyHash, PolicyHash)>) -> Option<PolicyFileIgnored> {
    ignored.map(|(file, recorded)| PolicyFileIgnored {
        file_hash: hex::encode(file.0),
        recorded_hash: hex::encode(recorded.0),
    })
}

/// `GET /v1/status`: the replica's view, with what the host knows (cluster id, members
/// connected over the transport, storage failure).
pub fn status_body(
    r: &Replica,
    cluster: &str,
    connected: &BTreeSet<RegionId>,
    storage_failed: bool,
    policy_file_ignored: Option<(PolicyHash, PolicyHash)>,
    parked: usize,
) -> String {
    let me = r.region();
    let all = r.members();
    let members = all
        .iter()
        .map(|m| MemberView {
            region: m.region.to_string(),
            is_self: m.region == me,
            connected: m.region == me || connected.contains(&m.region),
            held: m.held,
            watermark_contribution: m.covered.to_string(),
            heard: m.heard,
            policy_matches: m.policy_matches,
            equivocated: m.equivocated,
            pending: m.pending,
        })
        .collect();
    let version_vector = all
        .iter()
        .map(|m| (m.region.to_string(), r.version_vector().get(&m.region)))
        .collect();
    to_json(&StatusBody {
        region: me.to_string(),
        cluster: cluster.to_string(),
        members,
        version_vector,
        watermark: r.watermark().to_string(),
        clock: r.clock().to_string(),
        settlement_lag_ms: r.settlement_lag_ms(),
        settlement_blocked: r.settlement_blocked(),
        policy_hash: hex::encode(r.policy_hash().0),
        policy_version: r.current_policy().0,
        restoring: r.is_restoring(),
        joining: r.is_joining(),
        events: r.event_count(),
        compensations: r.feed_len(),
        storage_failed,
        policy_file_ignored: ignored_view(policy_file_ignored),
        modes: crate::metrics::mode_counters(&r.mode_stats())
            .into_iter()
            .chain([("parked", parked as u64)])
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    })
}

/// A policy as JSON: the policy file's fields (`default`, `rule`, `tiers`), every field of
/// every rule explicit; a body `POST /v1/admin/policy` accepts back.
pub fn policy_json(p: &Policy) -> Value {
    serde_json::to_value(p.to_document()).unwrap_or(Value::Null)
}

/// A version of the policy history.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersionView {
    /// From 1 (the seed).
    pub version: u32,
    /// The policy's hash.
    #[schema(value_type = Sha256Hex)]
    pub hash: String,
    /// The policy event's HLC (null for the seed).
    #[schema(value_type = Option<HlcText>, required = true)]
    pub hlc: Option<String>,
    /// The region it was posted at (null for the seed).
    #[schema(value_type = Option<RegionIdText>, required = true)]
    pub origin: Option<String>,
    /// The policy event's id (null for the seed).
    #[schema(value_type = Option<EventIdText>, required = true)]
    pub event: Option<String>,
}

/// `GET /v1/policy`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// The version in force at the end of the settled prefix.
    #[schema(required = true)]
    pub version: Option<u32>,
    /// Its hash.
    #[schema(value_type = Option<Sha256Hex>, required = true)]
    pub hash: Option<String>,
    /// The policy, every field of every rule explicit.
    #[schema(value_type = Option<PolicyDocument>, required = true)]
    pub policy: Option<Value>,
    /// Every version, from the seed.
    pub history: Vec<PolicyVersionView>,
    /// Set when the config's policy file differs from the recorded seed.
    #[schema(required = true)]
    pub policy_file_ignored: Option<PolicyFileIgnored>,
}

/// `GET /v1/policy`: the version in force and the history (version 1 = the seed).
pub fn policy_body(r: &Replica, policy_file_ignored: Option<(PolicyHash, PolicyHash)>) -> String {
    let history = r.policy_history();
    let list = history
        .iter()
        .map(|v| PolicyVersionView {
            version: v.version,
            hash: hex::encode(v.hash.0),
            hlc: v.hlc.map(|h| h.to_string()),
            origin: v.event.map(|e| e.origin.to_string()),
            event: v.event.map(|e| e.to_string()),
        })
        .collect();
    let current = history.last();
    to_json(&PolicyBody {
        version: current.map(|v| v.version),
        hash: current.map(|v| hex::encode(v.hash.0)),
        policy: current.map(|v| policy_json(v.policy)),
        history: list,
        policy_file_ignored: ignored_view(policy_file_ignored),
    })
}

/// `201` of `POST /v1/admin/policy`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySubmitted {
    /// The policy event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// This region.
    #[schema(value_type = RegionIdText)]
    pub origin: String,
    /// The policy's hash.
    #[schema(value_type = Sha256Hex)]
    pub hash: String,
    /// The event's HLC.
    #[schema(value_type = Option<HlcText>, required = true)]
    pub hlc: Option<String>,
    /// Always `provisional`: it applies once settled.
    pub status: TxStatus,
}

/// `POST /v1/admin/policy`: the policy event, once durable here.
pub fn policy_submitted_body(id: EventId, hash: PolicyHash, hlc: Option<Hlc>) -> String {
    to_json(&PolicySubmitted {
        id: id.to_string(),
        origin: id.origin.to_string(),
        hash: hex::encode(hash.0),
        hlc: hlc.map(|h| h.to_string()),
        status: TxStatus::Provisional,
    })
}

/// A retire as this region knows it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireView {
    /// The retire event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// Its HLC.
    #[schema(value_type = HlcText)]
    pub hlc: String,
    /// The regions retired.
    #[schema(value_type = Vec<RegionIdText>)]
    pub regions: Vec<String>,
    /// The members that must acknowledge it (named by the issuer).
    #[schema(value_type = Vec<RegionIdText>)]
    pub remaining: Vec<String>,
    /// Why.
    pub reason: String,
    /// Acknowledgements held: acknowledging member -> retired region -> the seq it held.
    pub acks: BTreeMap<String, BTreeMap<String, u64>>,
    /// Members whose acknowledgement is still missing (the cut waits for them).
    #[schema(value_type = Vec<RegionIdText>)]
    pub missing: Vec<String>,
    /// Retired region -> its last seq in history, once every acknowledgement is held.
    #[schema(required = true)]
    pub cut: Option<BTreeMap<String, u64>>,
}

fn retire_view(i: &wallet_core::RetireInfo) -> RetireView {
    let names = |v: &[RegionId]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let seqs = |m: &BTreeMap<RegionId, u64>| {
        m.iter()
            .map(|(r, s)| (r.to_string(), *s))
            .collect::<BTreeMap<_, _>>()
    };
    RetireView {
        id: i.id.to_string(),
        hlc: i.hlc.to_string(),
        regions: names(&i.regions),
        remaining: names(&i.remaining),
        reason: i.reason.clone(),
        acks: i
            .acks
            .iter()
            .map(|(r, m)| (r.to_string(), seqs(m)))
            .collect(),
        missing: names(&i.missing),
        cut: i.cut.as_ref().map(seqs),
    }
}

/// `GET /v1/admin/members`: membership as this region has applied it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    /// Members in force (not retired), this region included.
    #[schema(value_type = Vec<RegionIdText>)]
    pub in_force: Vec<String>,
    /// Retired region -> its cut (last seq in history).
    pub cuts: BTreeMap<String, u64>,
    /// Every retire held, in id order.
    pub retires: Vec<RetireView>,
    /// This region has been retired (it accepts no more transactions).
    pub retired: bool,
    /// Every join applied here (regions added after the cluster was created).
    pub joins: Vec<JoinView>,
}

/// A join as `GET /v1/admin/members` shows it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinView {
    /// The join event.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// Its HLC.
    #[schema(value_type = HlcText)]
    pub hlc: String,
    /// The region joined.
    #[schema(value_type = RegionIdText)]
    pub region: String,
    /// Its peer id and addresses, as the join named them (null if not walletd's).
    #[schema(required = true)]
    pub peer_id: Option<String>,
    /// Where the members dial it.
    pub addrs: Vec<String>,
}

/// `GET /v1/admin/members`.
pub fn members_body(r: &Replica) -> String {
    let cuts = r
        .members()
        .iter()
        .filter_map(|m| r.cut(m.region).map(|c| (m.region.to_string(), c)))
        .collect();
    to_json(&MembersBody {
        in_force: r.members_in_force().iter().map(|m| m.to_string()).collect(),
        cuts,
        retires: r.retires().iter().map(retire_view).collect(),
        retired: r.is_retired(),
        joins: r
            .joins()
            .iter()
            .map(|j| {
                let m = crate::join::JoinMeta::member(j.region, &j.meta);
                JoinView {
                    id: j.id.to_string(),
                    hlc: j.hlc.to_string(),
                    region: j.region.to_string(),
                    peer_id: m.as_ref().map(|m| m.peer_id.to_string()),
                    addrs: m
                        .map(|m| m.addrs.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect(),
    })
}

/// `201` of `DELETE /v1/admin/members/{region}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireSubmitted {
    /// The retire event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// The retire with its acknowledgements so far (null if this region does not hold it).
    #[schema(required = true)]
    pub retire: Option<RetireView>,
}

/// `DELETE /v1/admin/members/{region}`: the retire, once durable here.
pub fn retire_submitted_body(r: &Replica, id: EventId) -> String {
    to_json(&RetireSubmitted {
        id: id.to_string(),
        retire: r.retires().iter().find(|i| i.id == id).map(retire_view),
    })
}

/// `201` of `POST /v1/admin/members`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinSubmitted {
    /// The join event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// Its HLC: the new region's events are above it.
    #[schema(value_type = Option<HlcText>, required = true)]
    pub hlc: Option<String>,
    /// The region joined.
    #[schema(value_type = RegionIdText)]
    pub region: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its public key (hex of its protobuf encoding).
    pub public_key: String,
    /// Where the members dial it.
    pub addrs: Vec<String>,
}

/// `POST /v1/admin/members`: the join event, once durable here.
pub fn join_submitted_body(
    id: EventId,
    hlc: Option<Hlc>,
    req: &crate::join::JoinRequest,
) -> String {
    to_json(&JoinSubmitted {
        id: id.to_string(),
        hlc: hlc.map(|h| h.to_string()),
        region: req.region.to_string(),
        peer_id: req.peer_id.to_string(),
        public_key: hex::encode(&req.key),
        addrs: req.addrs.iter().map(|a| a.to_string()).collect(),
    })
}

/// `201` of `POST /v1/admin/key`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRotated {
    /// The rotation event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// Its HLC: this region's events above it are signed with the new key.
    #[schema(value_type = Option<HlcText>, required = true)]
    pub hlc: Option<String>,
    /// The new public key (hex of its protobuf encoding).
    pub key: String,
}

/// `200` of `POST /v1/admin/seal/waive`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SealWaived {
    /// The member waived.
    #[schema(value_type = RegionIdText)]
    pub waived: String,
    /// The members whose answer the seal still waits for.
    #[schema(value_type = Vec<RegionIdText>)]
    pub missing: Vec<String>,
    /// The epoch this region is in now (still the old one until the seal is issued).
    pub epoch: u32,
    /// Still restoring (the seal waits for answers, or for its own history to come back).
    pub restoring: bool,
}

/// `POST /v1/admin/seal/waive`: what the seal still waits for.
pub fn seal_waived_body(r: &Replica, waived: RegionId) -> String {
    to_json(&SealWaived {
        waived: waived.to_string(),
        missing: r.seal_missing().iter().map(|m| m.to_string()).collect(),
        epoch: r.epoch(),
        restoring: r.is_restoring(),
    })
}

/// `POST /v1/admin/key`: the rotation event, once durable here.
pub fn key_rotated_body(id: EventId, hlc: Option<Hlc>, key: &[u8]) -> String {
    to_json(&KeyRotated {
        id: id.to_string(),
        hlc: hlc.map(|h| h.to_string()),
        key: hex::encode(key),
    })
}

/// `POST /v1/admin/accounts/{account}/home`: the home move event, once durable here.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeMoved {
    /// The move event's id.
    #[schema(value_type = EventIdText)]
    pub id: String,
    /// Its HLC.
    #[schema(value_type = Option<HlcText>, required = true)]
    pub hlc: Option<String>,
    /// The account.
    #[schema(value_type = AccountIdText)]
    pub account: String,
    /// The currency.
    #[schema(value_type = CurrencyCode)]
    pub currency: String,
    /// The new home.
    #[schema(value_type = RegionIdText)]
    pub home: String,
    /// The new fencing epoch (the previous home's plus one).
    pub epoch: u64,
}

/// `GET /v1/admin/evidence`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBody {
    /// In the order this region recorded it.
    pub evidence: Vec<EvidenceView>,
    /// True while any evidence is held.
    pub settlement_blocked: bool,
}

/// `GET /v1/admin/evidence`.
pub fn evidence_body(r: &Replica) -> String {
    to_json(&EvidenceBody {
        evidence: r.evidence().iter().map(evidence_view).collect(),
        settlement_blocked: r.settlement_blocked(),
    })
}

/// `200` of `POST /v1/admin/faults`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsBody {
    /// The regions now cut off.
    #[schema(value_type = Vec<RegionIdText>)]
    pub isolated: Vec<String>,
}

/// `POST /v1/admin/faults`: the regions now cut off.
pub fn faults_body(isolated: &[String]) -> String {
    to_json(&FaultsBody {
        isolated: isolated.to_vec(),
    })
}

/// `200` of `/healthz`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// `200` of `/readyz`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyBody {
    /// Always true.
    pub ready: bool,
}

/// Account-history cursor: the entry key, opaque (hex of `hlc.origin.seq.sub`).
pub fn entry_cursor(k: &EntryKey) -> String {
    let ((hlc, origin, seq), sub) = k;
    hex::encode(format!("e1.{}.{}.{}.{}", hlc.0, origin, seq, sub))
}

/// Parses an account-history cursor.
pub fn parse_entry_cursor(s: &str) -> Option<EntryKey> {
    let bytes = hex::decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut it = text.split('.');
    if it.next()? != "e1" {
        return None;
    }
    let hlc: u64 = it.next()?.parse().ok()?;
    let origin = RegionId::new(it.next()?).ok()?;
    let seq: u64 = it.next()?.parse().ok()?;
    let sub: u8 = it.next()?.parse().ok()?;
    if it.next().is_some() || sub > 2 {
        return None;
    }
    Some(((Hlc(hlc), origin, seq), sub))
}

/// Feed cursor: a feed position, opaque.
pub fn feed_cursor(position: u64) -> String {
    hex::encode(format!("f1.{position}"))
}

/// Parses a feed cursor.
pub fn parse_feed_cursor(s: &str) -> Option<u64> {
    let bytes = hex::decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("f1.")?.parse().ok()
}

/// Parses a compensation id `fee:<region>:<seq>` / `rev:..` / `conflict:..` into its prefix and cause.
pub fn parse_comp_id(s: &str) -> Option<(&str, EventId)> {
    let (prefix, rest) = s.split_once(':')?;
    if !matches!(prefix, "fee" | "rev" | "conflict") {
        return None;
    }
    Some((prefix, EventId::parse(rest).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let k = ((Hlc(123456), RegionId::new("eu").unwrap(), 7), 1);
        assert_eq!(parse_entry_cursor(&entry_cursor(&k)), Some(k));
        assert_eq!(parse_feed_cursor(&feed_cursor(42)), Some(42));
        for bad in [
            "",
            "zz",
            "00",
            &hex::encode("e1.1.EU.1.0"),
            &hex::encode("f1.x"),
        ] {
            assert_eq!(parse_entry_cursor(bad), None, "{bad}");
            assert_eq!(parse_feed_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_body_escapes() {
        let b = error_body("invalid_json", "bad \"x\"\n");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["message"], "bad \"x\"\n");
    }
}
