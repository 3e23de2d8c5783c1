//! The actor's requests and answers: what the HTTP layer (and the process) send the actor,
//! and the ready-made HTTP answer it sends back. Both sides import this module; neither
//! imports the other.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

use axum::body::Bytes;
use tokio::sync::oneshot;
use wallet_core::{AccountId, EntryKey, RegionId, TxRequest};

use crate::render;

/// Capacity of the command channel from HTTP handlers to the actor.
pub const COMMAND_QUEUE_MAX: usize = 8_192;
/// Most transactions per list page.
pub const PAGE_LIMIT_MAX: usize = 1_000;

/// An HTTP answer produced by the actor.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Bytes,
    /// An idempotent retry answered with the original result.
    pub replayed: bool,
    /// `Retry-After` in seconds (a retryable 503 such as `home_unreachable`).
    pub retry_after: Option<u64>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: body.into(),
            replayed: false,
            retry_after: None,
        }
    }

    /// An error reply.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, render::error_body(code, message))
    }
}

/// A transaction submission.
#[derive(Debug)]
pub struct SubmitCmd {
    /// The request, validated.
    pub req: TxRequest,
    /// SHA-256 of the canonical body, for idempotency.
    pub fingerprint: [u8; 32],
    /// Where to answer.
    pub reply: oneshot::Sender<Reply>,
}

/// What the actor is asked to do: the HTTP layer's requests, and the process's shutdown.
#[derive(Debug)]
pub enum Command {
    /// POST a transaction.
    Submit(SubmitCmd),
    /// Balances of an account.
    Balances {
        /// Account.
        account: AccountId,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// An account's history page.
    Transactions {
        /// Account.
        account: AccountId,
        /// Cursor.
        after: Option<EntryKey>,
        /// Page size.
        limit: usize,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// One transaction (or compensation) by id.
    Transaction {
        /// The id as given.
        id: String,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// The compensation feed.
    Compensations {
        /// Feed position to start at.
        after: u64,
        /// Page size.
        limit: usize,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Region status.
    Status {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Evidence that members broke the protocol (admin).
    Evidence {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// A policy change (admin): a replicated policy event, answered once durable.
    SubmitPolicy {
        /// The policy, parsed and validated.
        policy: wallet_core::Policy,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// The policy in force and its history.
    Policy {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Add a member (admin): a replicated join event, answered once durable here.
    JoinMember {
        /// The new region, its peer id, key and addresses, checked.
        req: crate::join::JoinRequest,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Retire members (admin): one replicated retire event, answered once durable here.
    RetireMember {
        /// The regions to retire (one event: two unreachable regions must go together).
        regions: BTreeSet<RegionId>,
        /// Why (recorded in the event).
        reason: String,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Rotate this region's signing key (admin): a new key, kept 0600 next to the identity
    /// key, bound by a replicated rotation event, answered once durable here.
    RotateKey {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Seal without waiting for `region`'s answer (admin; a member down for good while this
    /// region is rebuilt after a lost disk: `Replica::waive_seal_answer`).
    WaiveSeal {
        /// The member waived.
        region: RegionId,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Members in force, retires with their acknowledgements, cuts (admin).
    Members {
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Fault injection: isolate regions (empty heals).
    Faults {
        /// Regions to cut off.
        isolate: BTreeSet<RegionId>,
        /// Answer.
        reply: oneshot::Sender<Reply>,
    },
    /// Moves an account's home (home mode) to another member.
    MoveHome {
        /// The account.
        account: AccountId,
        /// The currency.
        currency: wallet_core::Currency,
        /// The new home.
        to: RegionId,
        /// Where the answer goes.
        reply: oneshot::Sender<Reply>,
    },
    /// Stop: take no more commands, finish the commits in flight, answer their waiters, exit.
    /// Queued behind the commands sent before it.
    Shutdown,
}

/// The policy file differs from the seed policy recorded in storage: the recorded one is in
/// force as version 1 (shown in `/v1/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyFileIgnored {
    /// Hash of the policy file of the config.
    pub file_hash: wallet_core::PolicyHash,
    /// Hash of the seed policy recorded at the first start (in force as version 1).
    pub recorded_hash: wallet_core::PolicyHash,
}

/// State shared with the HTTP layer (read-only there).
#[derive(Debug, Default)]
pub struct Shared {
    /// Storage loaded and actor running.
    pub ready: AtomicBool,
    /// Restoring own history from peers.
    pub restoring: AtomicBool,
    /// Joining the cluster: waiting for its own join event (`walletd join`).
    pub joining: AtomicBool,
    /// Storage failed: nothing more is acknowledged.
    pub storage_failed: AtomicBool,
}
