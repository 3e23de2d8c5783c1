//! One run end to end: simulate, check, measure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::analysis::{analyse, CurrencyFigures, FeeCases, FloorDebits};
use crate::check::{check, CheckResult, Invariants};
use crate::config::SimConfig;
use crate::engine::{Counters, Series, Sim};
use crate::workload::{Attempt, CURRENCY};

/// Figures of one run (the JSON `metrics` object).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Client transactions (logical requests).
    pub transactions: u64,
    /// Acknowledged to the client.
    pub accepted: u64,
    /// Refused by the replica and never acknowledged.
    pub refused: u64,
    /// Neither: sent to a down region, or lost in a crash before durable (and not retried).
    pub unacked: u64,
    /// Submissions including retries and second-region copies.
    pub submissions: u64,
    /// Client retries (same key, same region).
    pub retries: u64,
    /// Same key sent to a second region.
    pub second_region: u64,
    /// Same key sent with another body to a region across a partition.
    pub conflicting_bodies: u64,
    /// Those second bodies retried at a third region.
    pub conflict_retries: u64,
    /// Debits that took the settled balance below the floor.
    pub overdrafts: u64,
    /// Overdraft fees.
    pub fees: u64,
    /// Sum of the USD overdraft fees (every currency: `currencies`).
    pub fee_total: String,
    /// Overdrawing debits reversed.
    pub reversals: u64,
    /// Duplicates reversed.
    pub duplicate_reversals: u64,
    /// Idempotency conflicts reported.
    pub conflicts: u64,
    /// Money owed: sum of negative USD settled balances (every currency: `currencies`).
    pub debt: String,
    /// Accounts with a negative settled balance (any currency).
    pub debt_accounts: u64,
    /// Fees, fee total and debt per currency.
    pub currencies: BTreeMap<String, CurrencyFigures>,
    /// How the fees came out: ties at half a minor unit, minimums and caps that bound.
    pub fee_cases: FeeCases,
    /// Debits sent to the floor and where they settled.
    pub floor_debits: FloorDebits,
    /// Policy versions in the settled history (1: no change settled).
    pub policy_versions: u32,
    /// Feed entries produced under a policy version above 1.
    pub compensations_after_change: u64,
    /// Median ms from submission to settled at the origin.
    pub settle_lag_p50_ms: u64,
    /// 99th percentile of the same.
    pub settle_lag_p99_ms: u64,
    /// Largest.
    pub settle_lag_max_ms: u64,
    /// Bytes sent between regions (real wire encoding, every copy).
    pub bytes_replicated: u64,
    /// Messages sent between regions.
    pub messages: u64,
    /// Messages lost by the fault model.
    pub messages_lost: u64,
    /// Events delivered between regions (every copy, push and anti-entropy).
    pub events_delivered: u64,
    /// Of those, already held by the receiver (in flight twice, duplicated, re-pulled).
    pub events_duplicate: u64,
    /// Partitions.
    pub partitions: u64,
    /// Crashes.
    pub crashes: u64,
    /// Of those, `crash-after-pull` crashes that found their window (a pull answered while
    /// own events were written and not yet durable).
    pub crashes_after_pull: u64,
    /// Of those, crashes that lost the disk (`--lost-disk`, drawn, or scripted `wipe`).
    pub lost_disks: u64,
    /// The run's durability level: `ack = "peer"`.
    pub ack_peer: bool,
    /// Retire acknowledgements not waited for, summed over the regions at the end: the
    /// acknowledger was retired itself with its log up to its cut held
    /// (`MembershipStats::acks_excused`).
    pub acks_excused: u64,
    /// Retired regions that learned their cut from a peer's snapshot they refused
    /// (`MembershipStats::cuts_from_snapshot`, summed over the regions at the end).
    pub cuts_from_snapshot: u64,
    /// Home mode: client requests left pending by the region that took them (forwarded to
    /// the home).
    pub forwarded: u64,
    /// Of those, refused because the home did not answer in time (`home_unreachable`).
    pub refused_home_unreachable: u64,
    /// Home moves issued.
    pub home_moves: u64,
    /// Accept latency (send to acknowledgement, simulated ms), median.
    pub accept_p50_ms: u64,
    /// Accept latency, 99th percentile.
    pub accept_p99_ms: u64,
    /// Client debits refused for funds.
    pub refused_funds: u64,
    /// Escrow debits refused for rights.
    pub refused_rights: u64,
    /// Escrow debits that had to ask for rights (the synchronous path).
    pub rights_waits: u64,
    /// Of those, accepted after the wait (rights came in, or the hybrid's fallback).
    pub rights_waits_served: u64,
    /// Client debits that reached a region.
    pub debits: u64,
    /// Rights transfers in the final history (asked for and rebalancing).
    pub rights_transfers: u64,
    /// Money at risk: the largest settled USD overdraft (floor minus the balance right after a
    /// client debit).
    pub max_overdraft: String,
    /// Credits sent to the floor that found an account in an episode to bring back to it.
    pub floor_credits: u64,
    /// Overdraft episodes that closed on a balance without their fees exactly at the floor
    /// (by the reference model of the first region).
    pub episodes_closed_at_floor: u64,
    /// Events created and lost in a crash before durable (never acknowledged).
    pub lost_before_durable: u64,
    /// Reports raised by replicas: rejected events, clock skew, equivocation.
    pub reports: u64,
    /// The replicas' anti-entropy counters (`Replica::pull_stats`), summed over regions and
    /// incarnations.
    pub anti_entropy: AntiEntropy,
    /// Connections: links cut, and `handle_disconnected` / `handle_connected` calls.
    pub connections: Connections,
    /// Restarts after which the watermark was lower than before the crash (the durable
    /// watermark lags the one in memory by an fsync).
    pub restart_watermark_regressions: u64,
    /// Compensations a region had emitted before a crash and did not show right after its
    /// restart (derived again, same ids, once settlement catches up).
    pub restart_feed_entries_hidden: u64,
    /// How many checks ran during the run (restarts, self-checks, heartbeats, watermarks).
    pub checks_during_run: crate::check::DuringCounts,
    /// Compaction during the run (issue 13; `--compact-every`).
    pub compaction: CompactionMetrics,
    /// The Byzantine member of a Byzantine seed (null otherwise).
    pub byzantine: Option<ByzantineMetrics>,
    /// Simulated ms until every region converged after the final heal (None: never).
    pub quiesce_ms: Option<u64>,
    /// Events asked for in one pull (`Config::pull_batch_events`: `--pull-limit`, or drawn
    /// per seed).
    pub pull_limit: u32,
    /// Simulated duration, ms.
    pub simulated_ms: u64,
    /// Wall-clock seconds (null unless --timing: the only non-deterministic field).
    pub wall_seconds: Option<f64>,
}

/// What the Byzantine member of a run did and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct ByzantineMetrics {
    /// The region.
    pub region: String,
    /// `equivocate` or `break-promise`.
    pub behaviour: &'static str,
    /// When it started, simulated ms.
    pub at_ms: u64,
    /// The forged item exists (the member had an event to contradict).
    pub forged: bool,
    /// Forged messages sent and delivered.
    pub forged_sent: u64,
    /// Of those, delivered.
    pub forged_delivered: u64,
    /// Honest regions handed a forged item or evidence.
    pub regions_handed: u64,
    /// Regions holding evidence against the member at the end.
    pub regions_with_evidence: u64,
    /// Crashes added right after an honest region wrote evidence.
    pub bias_crashes: u32,
}

/// The replicas' pull scheduler counters, summed over regions and restarts.
pub type AntiEntropy = wallet_core::replica::pull::PullStats;

/// Connection events of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Connections {
    /// Links cut by partitions and crashes (per pair of regions).
    pub cuts: u64,
    /// `handle_disconnected` calls (one per end that noticed a cut).
    pub disconnects: u64,
    /// `handle_connected` calls (both ends, at start and at every reconnect).
    pub connects: u64,
}

/// The result of one run.
pub struct RunResult {
    /// Seed.
    pub seed: u64,
    /// Policy label.
    pub policy: String,
    /// Invariants and outcome.
    pub check: CheckResult,
    /// Figures.
    pub metrics: Metrics,
    /// Raw counters.
    pub counters: Counters,
    /// Report series (if recorded).
    pub series: Option<Series>,
    /// Wall time.
    pub wall: Duration,
    /// Of which checking the invariants.
    pub check_wall: Duration,
    /// Digest of the request stream.
    pub workload_digest: u64,
    /// Region names.
    pub regions: Vec<String>,
    /// The seed policy's hash.
    pub policy_hash: String,
    /// The drawn policy's TOML.
    pub policy_toml: Option<String>,
    /// Policy changes.
    pub policy_changes: Vec<JsonChange>,
    /// Membership changes.
    pub membership_changes: Vec<JsonMembership>,
}

/// A membership change of a run, in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct JsonMembership {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// `retire eu ap`, `rotate-key us`, `join eu sa` (issuer first, as a scenario line).
    pub change: String,
    /// `scenario`, `random` or `byzantine` (the retire that ends a Byzantine seed).
    pub source: &'static str,
    /// `issued <event id>` or why not.
    pub outcome: String,
    /// For a retire: the cut of each retired region at the end, as the first remaining
    /// region holds it (`ap:12`), or `none` when it never became known.
    pub cut: Option<String>,
}

/// A policy change of a run, in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct JsonChange {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// The region that issued it.
    pub region: String,
    /// `drawn-<hash>`, or the file name and hash.
    pub policy: String,
    /// `scenario` or `random`.
    pub source: &'static str,
    /// `issued <event id>`, `region down`, `refused: ...`, `not reached`.
    pub outcome: String,
    /// The TOML text of a drawn policy.
    pub toml: Option<String>,
}

/// The JSON object of one run.
#[derive(Serialize)]
pub struct JsonRun<'a> {
    /// Seed.
    pub seed: u64,
    /// Policy label: the file name, `zero`, or `drawn-<hash>` (the first 8 bytes of the
    /// policy's hash).
    pub policy: &'a str,
    /// The seed policy's hash (`Policy::hash`, first 8 bytes).
    pub policy_hash: String,
    /// The drawn policy's TOML text (null for a file or the zero policy).
    pub policy_toml: Option<&'a str>,
    /// Policy changes issued during the run.
    pub policy_changes: &'a [JsonChange],
    /// Membership changes tried during the run.
    pub membership_changes: &'a [JsonMembership],
    /// Workload digest (hex): equal digests, identical request streams.
    pub workload: String,
    /// Invariants.
    pub invariants: Invariants,
    /// Failures, "invariant: detail".
    pub failures: Vec<String>,
    /// Figures.
    pub metrics: &'a Metrics,
}

impl RunResult {
    /// The JSON object (`wall_seconds` already decided by the caller).
    pub fn json(&self) -> JsonRun<'_> {
        JsonRun {
            seed: self.seed,
            policy: &self.policy,
            policy_hash: self.policy_hash.clone(),
            policy_toml: self.policy_toml.as_deref(),
            policy_changes: &self.policy_changes,
            membership_changes: &self.membership_changes,
            workload: format!("{:016x}", self.workload_digest),
            invariants: self.check.invariants,
            failures: self
                .check
                .failures
                .iter()
                .map(|(n, d)| format!("{n}: {d}"))
                .collect(),
            metrics: &self.metrics,
        }
    }

    /// Simulated transactions per wall second.
    pub fn tx_per_wall_second(&self) -> u64 {
        let us = self.wall.as_micros().max(1);
        (u128::from(self.metrics.transactions) * 1_000_000 / us) as u64
    }
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = (sorted.len() - 1) * p / 100;
    sorted[i]
}

/// Compaction during a run (issue 13).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactionMetrics {
    /// Events in memory that make a region compact (0: never).
    pub compact_every: u64,
    /// Compactions made.
    pub compactions: u64,
    /// Events they dropped from memory.
    pub compacted_events: u64,
    /// Restarts from a durable snapshot plus the events after it.
    pub restarts_from_snapshot: u64,
    /// Snapshots installed from a peer (bootstraps).
    pub snapshots_installed: u64,
    /// Snapshots sent to peers that pulled below a fold.
    pub snapshots_sent: u64,
    /// The last compaction of the run.
    pub last: Option<LastCompaction>,
}

/// The figures of one compaction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastCompaction {
    /// Accounts in the snapshot.
    pub accounts: u64,
    /// The snapshot's encoded size.
    pub snapshot_bytes: u64,
    /// Bytes per account held after compaction (the snapshot over its accounts).
    pub bytes_per_account: u64,
    /// Events the region held in memory before, and after.
    pub events_in_memory_before: u64,
    /// After.
    pub events_in_memory_after: u64,
}

/// Runs one seed.
pub fn run(cfg: SimConfig, timing: bool) -> RunResult {
    let started = Instant::now();
    let seed = cfg.seed;
    let policy = cfg.policy_name.clone();
    let policy_hash = cfg.policy.hash().to_string();
    let policy_toml = cfg.policy_toml.clone();
    let record = cfg.record_series;
    let regions = cfg.regions.iter().map(|r| r.to_string()).collect();
    let mut sim = Sim::new(cfg);
    sim.run();
    // Read before the checks, which put never-compacted shadows in place of the regions.
    let membership_stats: Vec<_> = sim
        .nodes
        .iter()
        .map(|n| n.replica.membership_stats())
        .collect();
    let check_started = Instant::now();
    let check = check(&mut sim);
    let check_wall = check_started.elapsed();
    let analysis = analyse(&sim);
    let policy_changes: Vec<JsonChange> = sim
        .policy_plan
        .iter()
        .zip(&sim.policy_outcomes)
        .map(|(c, o)| JsonChange {
            at_ms: c.at_ms,
            region: sim
                .cfg
                .regions
                .get(c.region)
                .map(|r| r.to_string())
                .unwrap_or_default(),
            policy: c.name.clone(),
            source: if c.scripted { "scenario" } else { "random" },
            outcome: o.to_string(),
            toml: c.toml.clone(),
        })
        .collect();
    let membership_changes = membership_json(&sim);
    let wall = started.elapsed();
    let w = &sim.workload;
    let transactions = u64::from(w.logical);
    let accepted = sim.logical_acked.iter().filter(|a| **a).count() as u64;
    let refused = sim
        .logical_acked
        .iter()
        .zip(&sim.logical_refused)
        .filter(|(a, r)| !**a && **r)
        .count() as u64;
    let mut lags = std::mem::take(&mut sim.lags);
    lags.sort_unstable();
    let mut accept = std::mem::take(&mut sim.accept_latencies);
    accept.sort_unstable();
    let c = &sim.counters;
    let render = |d: Decimal| CURRENCY.render(d);
    let metrics = Metrics {
        transactions,
        accepted,
        refused,
        unacked: transactions - accepted - refused,
        submissions: c.submissions,
        retries: w
            .submissions
            .iter()
            .filter(|s| s.attempt == Attempt::Retry)
            .count() as u64,
        second_region: w
            .submissions
            .iter()
            .filter(|s| s.attempt == Attempt::SecondRegion)
            .count() as u64,
        conflicting_bodies: w
            .submissions
            .iter()
            .filter(|s| s.attempt == Attempt::Conflict)
            .count() as u64,
        conflict_retries: w
            .submissions
            .iter()
            .filter(|s| s.attempt == Attempt::ConflictRetry)
            .count() as u64,
        overdrafts: check.outcome.overdrafts,
        fees: check.outcome.fees,
        fee_total: analysis
            .currencies
            .get(CURRENCY.as_str())
            .map(|c| c.fee_total.clone())
            .unwrap_or_else(|| render(Decimal::ZERO)),
        reversals: check.outcome.reversals,
        duplicate_reversals: check.outcome.duplicate_reversals,
        conflicts: check.outcome.conflicts,
        debt: analysis
            .currencies
            .get(CURRENCY.as_str())
            .map(|c| c.debt.clone())
            .unwrap_or_else(|| render(Decimal::ZERO)),
        debt_accounts: check.outcome.debt_accounts,
        currencies: analysis.currencies.clone(),
        fee_cases: analysis.fee_cases,
        floor_debits: analysis.floor,
        policy_versions: analysis.policy_versions,
        compensations_after_change: analysis.compensations_after_change,
        settle_lag_p50_ms: percentile(&lags, 50),
        settle_lag_p99_ms: percentile(&lags, 99),
        settle_lag_max_ms: lags.last().copied().unwrap_or(0),
        bytes_replicated: c.bytes,
        messages: c.messages,
        messages_lost: c.messages_lost,
        events_delivered: c.events_delivered,
        events_duplicate: c.events_duplicate,
        partitions: c.partitions,
        crashes: c.crashes,
        crashes_after_pull: c.crashes_after_pull,
        lost_disks: sim.wipes.len() as u64,
        ack_peer: sim.cfg.ack_peer,
        acks_excused: membership_stats.iter().map(|m| m.acks_excused).sum(),
        cuts_from_snapshot: membership_stats.iter().map(|m| m.cuts_from_snapshot).sum(),
        forwarded: c.pending,
        refused_home_unreachable: c.refused_home,
        home_moves: c.home_moves,
        refused_funds: c.refused_funds,
        refused_rights: c.refused_rights,
        rights_waits: c.rights_waits,
        rights_waits_served: c.rights_waits_served,
        debits: c.debits,
        rights_transfers: sim.nodes.first().map_or(0, |n| {
            sim.cfg
                .regions
                .iter()
                .flat_map(|o| n.replica.origin_events(*o, 0))
                .filter(|e| {
                    matches!(
                        e.account_op(),
                        Some(wallet_core::event::AccountOp::RightsTransfer { .. })
                    )
                })
                .count() as u64
        }),
        max_overdraft: check.outcome.max_overdraft.normalize().to_string(),
        accept_p50_ms: percentile(&accept, 50),
        accept_p99_ms: percentile(&accept, 99),
        floor_credits: c.floor_credits,
        episodes_closed_at_floor: check.outcome.closed_at_floor,
        lost_before_durable: c.lost_unacked,
        reports: c.reports.iter().sum(),
        anti_entropy: c.pull,
        connections: Connections {
            cuts: c.link_cuts,
            disconnects: c.disconnects,
            connects: c.connects,
        },
        restart_watermark_regressions: c.restart_watermark_regressions,
        restart_feed_entries_hidden: c.restart_feed_entries_hidden,
        checks_during_run: sim.during.counts,
        compaction: CompactionMetrics {
            compact_every: sim.cfg.compact_every(),
            compactions: c.compactions,
            compacted_events: c.compacted_events,
            restarts_from_snapshot: c.restarts_from_snapshot,
            snapshots_installed: c.snapshots_installed,
            snapshots_sent: c.snapshots_sent,
            last: c
                .last_compaction
                .map(|(accounts, bytes, before, after)| LastCompaction {
                    accounts,
                    snapshot_bytes: bytes,
                    bytes_per_account: bytes.checked_div(accounts).unwrap_or(0),
                    events_in_memory_before: before,
                    events_in_memory_after: after,
                }),
        },
        byzantine: sim.byz.as_ref().map(|b| {
            let r = b.plan.region;
            ByzantineMetrics {
                region: sim.cfg.regions[r].to_string(),
                behaviour: b.plan.behaviour.as_str(),
                at_ms: b.plan.at_ms,
                forged: b.forged_event.is_some() || b.forged_promise.is_some(),
                forged_sent: b.forged_sent,
                forged_delivered: b.forged_delivered,
                regions_handed: b.handed.iter().filter(|h| **h).count() as u64,
                regions_with_evidence: (0..sim.nodes.len())
                    .filter(|i| sim.holds_evidence(*i, r))
                    .count() as u64,
                bias_crashes: b.bias_crashes,
            }
        }),
        quiesce_ms: sim.converged_at.map(|t| t - sim.quiesce_start),
        pull_limit: sim.cfg.pull_limit,
        simulated_ms: sim.now,
        wall_seconds: timing.then_some(wall.as_secs_f64()),
    };
    let counters = sim.counters.clone();
    let series = record.then(|| std::mem::take(&mut sim.series));
    let workload_digest = sim.workload.digest;
    // Freeing millions of small allocations takes a while: let another thread do it.
    let _ = std::thread::Builder::new()
        .name("wallet-sim-drop".into())
        .spawn(move || drop(sim));
    RunResult {
        seed,
        policy,
        check,
        metrics,
        counters,
        series,
        wall,
        check_wall,
        workload_digest,
        regions,
        policy_hash,
        policy_toml,
        policy_changes,
        membership_changes,
    }
}

/// The membership changes of a run, for the JSON and the summary.
fn membership_json(sim: &crate::engine::Sim) -> Vec<JsonMembership> {
    use crate::scenario::Action;
    let names = &sim.cfg.regions;
    let name = |i: &usize| names.get(*i).map(|r| r.to_string()).unwrap_or_default();
    let retired = sim.retired_regions();
    let witness = (0..sim.nodes.len()).find(|i| !retired.contains(i));
    sim.membership
        .iter()
        .map(|c| {
            let (change, cut) = match &c.action {
                Action::Retire(i, rs) => {
                    let list: Vec<String> = rs.iter().map(name).collect();
                    let lost = c
                        .outcome
                        .as_ref()
                        .is_ok_and(|id| !sim.retire_survived(*id, rs));
                    let cut = witness.filter(|_| c.outcome.is_ok()).map(|w| {
                        if lost {
                            // Lost in its issuer's crash before it was durable.
                            return "lost".to_string();
                        }
                        rs.iter()
                            .map(|r| {
                                let cut =
                                    names.get(*r).and_then(|id| sim.nodes[w].replica.cut(*id));
                                match cut {
                                    Some(k) => format!("{}:{k}", name(r)),
                                    None => format!("{}:none", name(r)),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    (format!("retire {} {}", name(i), list.join(",")), cut)
                }
                Action::RotateKey(i) => (format!("rotate-key {}", name(i)), None),
                Action::Join(i, j) => (format!("join {} {}", name(i), name(j)), None),
                other => (format!("{other:?}"), None),
            };
            JsonMembership {
                at_ms: c.at_ms,
                change,
                source: c.source,
                outcome: match &c.outcome {
                    Ok(id) => format!("issued {id}"),
                    Err(e) => e.clone(),
                },
                cut,
            }
        })
        .collect()
}
