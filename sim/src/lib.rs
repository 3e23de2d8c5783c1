//! # wallet-sim: a deterministic partition simulator for the multi-region wallet
//!
//! It drives the real replica core ([`wallet_core::Replica`], the code the node runs) through
//! a simulated network, disk and clock, all driven by one seed (TigerBeetle VOPR style):
//! message delay, loss, duplication and reordering; scripted and random partitions; region
//! crashes that lose whatever was not yet durable, and restarts from the durable disk; clock
//! skew per region; connections that partitions and crashes cut (each end told after a
//! detection delay) and that reconnect when the link is back. The replicas' own anti-entropy
//! (the core's pull scheduler) does the repair: the simulator only moves bytes, time and
//! connection events. After the workload it heals everything, lets anti-entropy and
//! heartbeats settle every event, and checks the SPEC §9 invariants on every region.
//!
//! Same seed, same run, same bytes: one PRNG per concern derived from the seed, one binary
//! heap of timed events ordered by `(time, sequence)`, only ordered maps, no wall clock in
//! anything that affects results.
//!
//! ```
//! use wallet_sim::{config::SimConfig, run::run};
//! let mut cfg = SimConfig::new(7);
//! cfg.workload.transactions = 200;
//! cfg.workload.accounts = 10;
//! let r = run(cfg, false);
//! assert!(r.check.invariants.all(), "{:?}", r.check.failures);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
pub mod check;
pub mod cli;
pub mod config;
pub mod engine;
pub mod history;
pub mod liveness;
pub mod policygen;
pub mod prefix;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod workload;
