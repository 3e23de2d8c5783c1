//! # walletd: the region node of the multi-region wallet
//!
//! A region is one long-running process wrapping the sans-IO replica (`wallet_core::Replica`)
//! with durable storage (an append-only log, or redb), an HTTP API (axum), metrics, and the libp2p transport
//! (`wallet_p2p`). The modules are usable as a library so other front-ends (a `walletd demo`
//! launcher, the benchmarks, the tests) reuse configuration, `init`, the node and the local
//! cluster harness.
//!
//! ```text
//!   HTTP (axum) ──Command──┐                          ┌──> storage writer (group commit, fsync)
//!   NetEvent (p2p) ────────┼──> actor (owns Replica) ──┼──> NetHandle::broadcast / send
//!   timers (poll_timeout,  ┤     drains poll_output()  └──> metrics, tracing reports
//!     idempotency expiry)  │
//!   DiskDone (writer) ─────┘
//! ```
//!
//! Modules by job: [`node`] wires a process (start, run, signals); [`actor`] owns the replica
//! and moves bytes, time and connection events between it and the world; [`command`] holds the
//! actor's requests and replies (imported by [`http`] and [`actor`], which do not import each
//! other); [`waiters`] holds replies until their commit is durable; [`idempotency`] is the HTTP
//! response cache for retries; [`render`] the JSON views; [`metrics`] the Prometheus text;
//! [`storage`] the storage interface, the redb store and the writer thread; [`logstore`] the append-only log store (the default); [`cluster`] the local cluster harness
//! (real region processes) used by [`demo`], the benchmarks and the tests; [`netns`] runs
//! its regions in network namespaces for faults injected from outside; [`bank`] a
//! Jepsen-bank-style workload and checker over the HTTP API; [`console`] the operator console
//! page (`GET /ui`).
//!
//! Architecture invariants:
//! - Exactly one task (the actor in [`actor`]) touches the `Replica`; everything else talks to
//!   it with messages on bounded channels.
//! - A client is answered `201` only after the storage writer reported its event durable.
//! - Only the host reads the wall clock ([`clock`]); the replica gets time as an argument.
//! - walletd makes no replication decision: whom to pull from and when is the core's.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actor;
pub mod archive;
pub mod archiver;
pub mod backfill;
pub mod bank;
pub mod chaos;
pub mod clock;
pub mod cluster;
pub mod command;
pub mod config;
pub mod console;
pub mod defects;
pub mod demo;
pub mod history;
pub mod http;
pub mod idempotency;
pub mod init;
pub mod join;
pub mod keygen;
pub mod latency;
pub mod logstore;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod openapi;
pub mod policycheck;
pub mod procstat;
pub mod render;
pub mod secret;
pub mod serve;
pub mod storage;
pub mod waiters;
