//! # walletd: the region node of the multi-region wallet
//!
//! A region is one long-running process wrapping the sans-IO replica (`wallet_core::Replica`)
//! with durable storage (redb), an HTTP API (axum), metrics, and the libp2p transport
//! (`wallet_p2p`). The modules are usable as a library so other front-ends (a `walletd demo`
//! launcher, the benchmark) reuse configuration, `init` and the node itself.
//!
//! ```text
//!   HTTP (axum) ──Command──┐                          ┌──> storage writer (group commit, fsync)
//!   NetEvent (p2p) ────────┼──> actor (owns Replica) ──┼──> NetHandle::broadcast / send
//!   timer (poll_timeout) ──┤     drains poll_output()  └──> metrics, tracing reports
//!   DiskDone (writer) ─────┘
//! ```
//!
//! Architecture invariants:
//! - Exactly one task (the actor in [`node`]) touches the `Replica`; everything else talks to
//!   it with messages on bounded channels.
//! - A client is answered `201` only after the storage writer reported its event durable.
//! - Only the node reads the wall clock; the replica gets time as an argument.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod demo;
pub mod http;
pub mod init;
pub mod metrics;
pub mod node;
pub mod render;
pub mod storage;
