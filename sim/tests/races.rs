//! Scripted race scenarios for narrow windows that random faults almost never hit
//! (sim/scenarios/slow-fsync-pull-crash.txt, heartbeat-before-events.txt,
//! heal-during-restore.txt). Each test first stops the run inside the window and checks that
//! the window is really open (so a change of timing cannot turn the test into a no-op), then
//! runs to the end: every invariant, those checked during the run included, must hold.

use wallet_core::{AccountId, Currency, EventId, Report};
use wallet_sim::check::{check, CheckResult};
use wallet_sim::config::SimConfig;
use wallet_sim::engine::Sim;

const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;

fn scenario_text(name: &str) -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{dir}/scenarios/{name}")).expect("scenario")
}

/// `regions` regions, no random faults (5 ms links, 1 ms fsyncs), detection in 500 ms and
/// reconnection in 250 ms, the zero policy unless a test says otherwise.
fn config(text: &str, regions: usize) -> SimConfig {
    let mut cfg = SimConfig::scripted(regions, text, 500, 250).expect("valid scenario");
    // The replica's own self-check after every input: these runs are short.
    cfg.self_check_every = 1;
    cfg
}

fn finish(sim: &mut Sim) -> CheckResult {
    sim.run();
    let c = check(sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    c
}

fn reports(sim: &Sim, kind: &str) -> u64 {
    let k = Report::KINDS
        .iter()
        .position(|x| *x == kind)
        .expect("report kind");
    sim.counters.reports[k]
}

fn id(origin: &str, seq: u64) -> EventId {
    EventId::parse(&format!("{origin}:{seq}")).expect("id")
}

fn key_of(sim: &Sim, node: usize, e: EventId) -> Option<String> {
    sim.nodes[node]
        .replica
        .event(e)
        .and_then(|e| e.tx())
        .and_then(|t| t.idempotency_key.as_deref().map(str::to_string))
}

/// The slow-fsync scenario with us's crash moved to `crash_at`.
fn slow_fsync(crash_at: &str) -> SimConfig {
    let text = scenario_text("slow-fsync-pull-crash.txt").replace("t=4280ms crash", crash_at);
    config(&text, 2)
}

#[test]
fn slow_fsync_with_pulls_in_flight_then_a_crash_loses_only_the_unacked_event() {
    let mut sim = Sim::new(slow_fsync("t=4280ms crash"));
    // Just before the crash: us:2 is written at us but not durable (its fsync is slow), the
    // pulls on reconnect have crossed, eu's events are written at us and not durable either.
    sim.run_until(4_279);
    let us_id = sim.nodes[US].id;
    let eu_id = sim.nodes[EU].id;
    let us = &sim.nodes[US];
    assert_eq!(us.replica.version_vector().get(&us_id), 2, "us:2 written");
    assert_eq!(us.disk.durable[US], 1, "us:2 not durable yet");
    assert_eq!(us.replica.version_vector().get(&eu_id), 2, "eu:2 pulled");
    assert_eq!(
        us.disk.durable[EU], 1,
        "eu:2 written at us, not durable yet"
    );
    let eu = &sim.nodes[EU];
    assert_eq!(
        eu.replica.version_vector().get(&us_id),
        1,
        "eu holds us:1 only"
    );
    assert!(
        eu.replica.pull_stats().answered >= 1 || eu.replica.pull_stats().sent >= 1,
        "eu pulled us on reconnect"
    );
    let c = finish(&mut sim);
    assert!(c.invariants.restart_monotonic);
    assert_eq!(sim.counters.crashes, 1);
    assert!(sim.during.counts.restarts >= 1);
    assert_eq!(reports(&sim, "equivocation"), 0);
    assert_eq!(reports(&sim, "rejected"), 0);
    // The lost purchase was never acknowledged and is nowhere; us:2 is the later one.
    for n in 0..2 {
        assert_eq!(key_of(&sim, n, id("us", 2)).as_deref(), Some("buy-2"));
        assert!(sim.nodes[n].replica.event(id("us", 3)).is_none());
    }
    let alice = AccountId::new("alice").expect("id");
    let b = sim.nodes[EU].replica.balance(&alice, Currency::USD);
    assert_eq!(Currency::USD.render(b.settled), "135.00");
}

#[test]
fn a_crash_while_the_reconnect_pulls_are_in_flight_clears_them() {
    // The link is back at 4.25 s and both pulls arrive at 4.255 s: crash us at 4.252 s.
    let mut sim = Sim::new(slow_fsync("t=4252ms crash"));
    sim.run_until(4_251);
    assert!(
        sim.nodes[EU].replica.pull_stats().sent >= 1,
        "eu's pull on reconnect is out"
    );
    finish(&mut sim);
    let p = sim.nodes[EU].replica.pull_stats();
    assert!(
        p.cleared_on_disconnect + p.timed_out + p.given_up >= 1,
        "eu's pull to the crashed us was lost and dealt with: {p:?}"
    );
    assert_eq!(reports(&sim, "equivocation"), 0);
    for n in 0..2 {
        assert_eq!(key_of(&sim, n, id("us", 2)).as_deref(), Some("buy-2"));
    }
}

#[test]
fn a_heartbeat_before_the_events_it_covers_does_not_move_the_watermark_past_them() {
    let cfg = config(&scenario_text("heartbeat-before-events.txt"), 3);
    let mut sim = Sim::new(cfg);
    // At 3 s us's purchase (us:1, at 2.1 s) is still held back on its way to eu, while us
    // has announced heartbeats past it.
    sim.run_until(3_000);
    let us_id = sim.nodes[US].id;
    let first_missing = sim.nodes[US]
        .replica
        .event(id("us", 1))
        .expect("us:1 issued")
        .hlc;
    assert_eq!(sim.nodes[EU].replica.version_vector().get(&us_id), 0);
    assert!(
        sim.during.announced(US) > first_missing,
        "us announced a heartbeat covering us:1"
    );
    assert!(
        sim.nodes[AP].replica.watermark() >= first_missing,
        "ap, which holds us:1, settled past it"
    );
    assert!(
        sim.nodes[EU].replica.watermark() < first_missing,
        "eu's watermark {:?} passed us:1 at {:?}, which it does not hold",
        sim.nodes[EU].replica.watermark(),
        first_missing
    );
    let c = finish(&mut sim);
    assert!(c.invariants.watermark_complete && c.invariants.watermark_promised);
    assert!(sim.during.counts.watermark_advances > 0 && sim.during.counts.heartbeats > 0);
    for n in 0..3 {
        assert!(sim.nodes[n].replica.event(id("us", 2)).is_some());
    }
}

#[test]
fn a_partition_heals_during_a_restore_and_the_history_comes_back() {
    let cfg = config(&scenario_text("heal-during-restore.txt"), 3);
    let mut sim = Sim::new(cfg);
    // After the restore started, before the heal: us has its own history back from ap but
    // has not heard from eu, so it still restores and accepts nothing.
    sim.run_until(5_900);
    assert!(sim.nodes[US].up);
    assert!(
        sim.nodes[US].replica.is_restoring(),
        "us restores until it heard every peer"
    );
    let us_id = sim.nodes[US].id;
    assert_eq!(sim.nodes[US].replica.version_vector().get(&us_id), 2);
    assert_eq!(
        sim.counters.refused_other, 1,
        "the purchase during the restore"
    );
    let c = finish(&mut sim);
    assert!(!sim.nodes[US].replica.is_restoring());
    assert_eq!(reports(&sim, "equivocation"), 0);
    assert!(c.invariants.no_loss);
    // us's first two events survived the lost disk; us:3 is the seal of its old epoch
    // (docs/protocol.md §12), and the purchase after the restore is us:4.
    for n in 0..3 {
        assert_eq!(key_of(&sim, n, id("us", 1)).as_deref(), Some("dep-1"));
        assert_eq!(key_of(&sim, n, id("us", 2)).as_deref(), Some("buy-1"));
        let seal = sim.nodes[n]
            .replica
            .event(id("us", 3))
            .and_then(|e| e.change().cloned());
        assert_eq!(seal, Some(wallet_core::Change::Seal { epoch: 2, cut: 2 }));
        assert_eq!(
            key_of(&sim, n, id("us", 4)).as_deref(),
            Some("after-restore")
        );
    }
}

/// A region restores its history from peers on a slow disk and crashes before the pulled-back
/// events are on it. Found by `watermark_promised`: the core counted its own events pulled back
/// as durable before they were persisted, so a heartbeat covered seqs the disk did not hold
/// (`us announced heartbeat (1008000.0, seq 2): it covers own seq 2 but only 0 are durable`).
#[test]
fn a_restored_history_counts_as_durable_only_once_it_is_on_disk() {
    let text = scenario_text("restore-crash-before-fsync.txt");
    let mut sim = Sim::new(config(&text, 3));
    let c = finish(&mut sim);
    assert!(c.invariants.watermark_promised);
    assert!(c.invariants.no_loss);
    assert_eq!(reports(&sim, "equivocation"), 0);
    for n in 0..3 {
        assert_eq!(key_of(&sim, n, id("us", 1)).as_deref(), Some("dep-1"));
        assert_eq!(key_of(&sim, n, id("us", 2)).as_deref(), Some("buy-1"));
    }
}
