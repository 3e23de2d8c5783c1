//! # wallet-core: the replica state machine of a multi-region wallet
//!
//! Deterministic and sans-IO: this crate opens no sockets, touches no disk, never reads the
//! operating system clock, starts no threads and draws no random numbers. Time, peer messages,
//! client commands and durability acknowledgements are inputs; records to persist, messages to
//! send, compensations and reports are outputs. The region node (`walletd`) wraps it with
//! storage, HTTP and libp2p; the simulator (`wallet-sim`) wraps it with a simulated network,
//! disk and clock. Both run exactly this code.
//!
//! ```text
//!   submit(now, TxRequest) ──┐                       ┌──> Output::Persist { index, Record }
//!   handle_message(now, ..) ─┼──>  Replica  ──poll──>┼──> Output::Broadcast(Message)
//!   handle_persisted(index) ─┤   (events, VV,        ├──> Output::Compensation(..)
//!   handle_timeout(now) ─────┘    balances, fold)    └──> Output::Report(..)
//! ```
//!
//! Same inputs, same bytes: all state is in ordered maps (`BTreeMap`/`BTreeSet`), money is
//! `rust_decimal` with checked arithmetic, and the settled fold runs in the total order
//! `(hlc, origin, seq)`, which every region agrees on.
//!
//! What it deliberately leaves out: network I/O, storage, signatures' key handling (an
//! [`Authenticator`] is passed in), and wall-clock time.
//!
//! ## Two replicas
//! ```
//! use wallet_core::*;
//!
//! let eu = RegionId::new("eu").unwrap();
//! let us = RegionId::new("us").unwrap();
//! let mk = |me| Replica::new(Config::new(me, vec![eu, us], Policy::zero()), Hlc::ZERO);
//! let (mut a, mut b) = (mk(eu), mk(us));
//! let alice = AccountId::new("alice").unwrap();
//! let usd = Currency::USD;
//! let req = |kind, amt| TxRequest {
//!     account: alice.clone(), kind, amount: Amount::parse(amt, usd).unwrap(),
//!     currency: usd, idempotency_key: None, reference: None,
//! };
//! a.submit(1_000, req(Kind::Deposit, "100")).unwrap();
//! // Ship every output of `a` to `b` (a host would persist first).
//! while let Some(out) = a.poll_output() {
//!     match out {
//!         Output::Persist { index, .. } => a.handle_persisted(index),
//!         Output::Broadcast(m) => b.handle_message(1_001, eu, m),
//!         _ => {}
//!     }
//! }
//! assert_eq!(b.balance(&alice, usd).provisional.to_string(), "100.00");
//! assert!(b.submit(1_002, req(Kind::Purchase, "100.00")).is_ok());
//! assert!(b.submit(1_003, req(Kind::Purchase, "0.01")).is_err());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod event;
pub mod id;
pub mod kind;
pub mod message;
pub mod money;
pub mod policy;
pub mod replica;
pub mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use crdts::VClock;
pub use event::{AccountOp, Body, Change, CompKind, Compensation, Event, Kind, OrderKey, Tx};
pub use id::{AccountId, Clock, EventId, Hlc, IdError, RegionId};
pub use money::{Amount, AmountError, Currency};
pub use policy::{
    Action, Fallback, FeePer, Mode, Overdraft, Policy, PolicyDocument, PolicyError, PolicyHash,
};
pub use replica::{
    comp_entry_key, Authenticator, Balance, Config, Entry, EntryKey, Evidence, Heartbeat, JoinInfo,
    KeyHistory, MemberStatus, MembershipError, MembershipStats, Message, NoAuth, Output,
    PolicyVersionInfo, Record, Replica, Report, RestoreError, RetireInfo, SignedHeartbeat,
    Snapshot, SnapshotBody, Stats, Status, SubmitError, Submitted, TxRequest,
};
